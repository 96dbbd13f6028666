//! Unknown methods, input over the documented limits and undecodable bytes
//! each get a clear status, and the server keeps serving.

use std::time::Duration;

use crate::common::raw;
use crate::common::*;
use futures::executor::block_on;
use futures::prelude::*;
use greet::limits::{MAX_NAMES, MAX_NAME_BYTES};
use greet::proto::greet::{HelloRequest, HelloResponse, NamesList, NoParam};
use greet::proto::greet_grpc::GreetServiceClient;
use grpcio::{CallOption, MethodType, RpcStatusCode, WriteFlags};

fn opt() -> CallOption {
    CallOption::default().timeout(Duration::from_secs(10))
}

/// Calls `method` with `payload` as its one request message.
fn call_raw(
    client: &grpcio::Client,
    method: &'static str,
    ty: MethodType,
    payload: &[u8],
) -> Result<Vec<Vec<u8>>, (RpcStatusCode, String)> {
    raw::call(client, method, ty, vec![payload.to_vec()])
}

/// Field 2, as `depth` nested groups that are never closed: the shape of
/// RUSTSEC-2024-0437 (unbounded recursion on unknown groups).
fn nested_groups(depth: usize) -> Vec<u8> {
    vec![(2 << 3) | 3; depth]
}

#[test]
fn unknown_method_gets_unimplemented() {
    let server = start_server(Duration::ZERO);
    let client = grpcio::Client::new(greet::client::connect(server.addr()));
    let err = client.unary_call(&raw_method("/greet_service.GreetService/NoSuchMethod"), &vec![], opt()).unwrap_err();
    assert_eq!(code_of(err).0, RpcStatusCode::UNIMPLEMENTED);
    let err = client.unary_call(&raw_method("/no.Such/Service"), &vec![], opt()).unwrap_err();
    assert_eq!(code_of(err).0, RpcStatusCode::UNIMPLEMENTED);
}

#[test]
fn undecodable_request_gets_a_status_and_the_server_survives() {
    let server = start_server(Duration::ZERO);
    let client = grpcio::Client::new(greet::client::connect(server.addr()));
    // Field 1 as a length-delimited string claiming 100 bytes, then 1 byte.
    let garbage = vec![0x0a, 0x64, 0xff];
    let err = client.unary_call(&raw_method("/helloworld.Greeter/SayHello"), &garbage, opt()).unwrap_err();
    let (code, _) = code_of(err);
    assert!(code == RpcStatusCode::INTERNAL || code == RpcStatusCode::INVALID_ARGUMENT, "unexpected code {code:?}");
    // Invalid UTF-8 in a proto3 string.
    let bad_utf8 = vec![0x0a, 0x02, 0xc3, 0x28];
    assert!(client.unary_call(&raw_method("/helloworld.Greeter/SayHello"), &bad_utf8, opt()).is_err());
    assert_eq!(block_on(client_for(&server).say_hello()).unwrap(), "Hello");
}

#[test]
fn too_many_names_in_a_list_get_invalid_argument() {
    let server = start_server(Duration::ZERO);
    let names = vec![String::from("x"); MAX_NAMES + 1];
    let err = block_on(client_for(&server).server_stream(&names, |_| panic!("no message expected"))).unwrap_err();
    assert_eq!(
        code_of(err),
        (
            RpcStatusCode::INVALID_ARGUMENT,
            format!("{} names sent; at most {MAX_NAMES} names are accepted in one call", MAX_NAMES + 1)
        )
    );
}

#[test]
fn too_long_name_gets_invalid_argument_in_every_pattern() {
    let server = start_server(Duration::ZERO);
    let client = client_for(&server);
    let long = "é".repeat(MAX_NAME_BYTES / 2 + 1); // 1,026 bytes
    let names = vec!["ok".to_string(), long];
    let expected = (
        RpcStatusCode::INVALID_ARGUMENT,
        format!("name #2 is 1026 bytes long; names are limited to {MAX_NAME_BYTES} bytes"),
    );

    assert_eq!(code_of(block_on(client.server_stream(&names, |_| ())).unwrap_err()), expected);
    assert_eq!(code_of(block_on(client.client_stream(&names, Duration::ZERO)).unwrap_err()), expected);
    assert_eq!(code_of(block_on(client.bidi(&names, Duration::ZERO, |_| ())).unwrap_err()), expected);

    // Names before the bad one are answered. (Step by step: grpcio's client
    // reports an error status as soon as it arrives, even ahead of messages
    // the server sent before it.)
    let raw = GreetServiceClient::new(greet::client::connect(server.addr()));
    let (mut sink, mut receiver) = raw.say_hello_bidirectional_streaming_opt(opt()).unwrap();
    block_on(async {
        let ok = HelloRequest { name: names[0].clone(), ..Default::default() };
        sink.send((ok, WriteFlags::default())).await.unwrap();
        assert_eq!(receiver.try_next().await.unwrap().unwrap().message, "Hello ok");
        let bad = HelloRequest { name: names[1].clone(), ..Default::default() };
        // The send may itself report the call finished: the status can beat
        // the write's completion back.
        let _ = sink.send((bad, WriteFlags::default())).await;
        assert_eq!(code_of(receiver.try_next().await.unwrap_err()), expected);
    });

    let (code, message) = code_of(block_on(client.greet(&names[1])).unwrap_err());
    assert_eq!(code, RpcStatusCode::INVALID_ARGUMENT);
    assert_eq!(message, format!("name #1 is 1026 bytes long; names are limited to {MAX_NAME_BYTES} bytes"));
    assert_eq!(block_on(client.say_hello()).unwrap(), "Hello", "the server keeps serving");
}

#[test]
fn oversized_message_gets_resource_exhausted_and_others_are_unaffected() {
    let server = start_server(Duration::ZERO);
    let client = GreetServiceClient::new(greet::client::connect(server.addr()));
    // 5 MiB of names, over the 4 MiB receive limit.
    let req = NamesList { names: vec!["n".repeat(1000); 5 * 1024], ..Default::default() };
    let err = block_on(client.say_hello_server_streaming_opt(&req, opt()).unwrap().try_next()).unwrap_err();
    assert_eq!(code_of(err).0, RpcStatusCode::RESOURCE_EXHAUSTED);
    let ok: HelloResponse = client.say_hello_opt(&NoParam::default(), opt()).unwrap();
    assert_eq!(ok.message, "Hello");
}

#[test]
fn a_failing_call_does_not_disturb_a_concurrent_stream() {
    let server = start_server(Duration::ZERO);
    let client = GreetServiceClient::new(greet::client::connect(server.addr()));
    let (mut sink, mut receiver) = client.say_hello_bidirectional_streaming_opt(opt()).unwrap();
    block_on(async {
        let req = HelloRequest { name: "first".into(), ..Default::default() };
        sink.send((req, WriteFlags::default())).await.unwrap();
        assert_eq!(receiver.try_next().await.unwrap().unwrap().message, "Hello first");
    });
    // A bad call on the same connection, mid-stream.
    let bad = NamesList { names: vec!["x".repeat(MAX_NAME_BYTES + 1)], ..Default::default() };
    let err = block_on(client.say_hello_server_streaming_opt(&bad, opt()).unwrap().try_next()).unwrap_err();
    assert_eq!(code_of(err).0, RpcStatusCode::INVALID_ARGUMENT);
    block_on(async {
        let req = HelloRequest { name: "second".into(), ..Default::default() };
        sink.send((req, WriteFlags::default())).await.unwrap();
        assert_eq!(receiver.try_next().await.unwrap().unwrap().message, "Hello second");
        greet::client::half_close(&mut sink).await.unwrap();
        assert!(receiver.try_next().await.unwrap().is_none());
    });
}

/// Each payload must end every call with INTERNAL (grpcio's status for a
/// request it cannot decode before the handler runs) or INVALID_ARGUMENT
/// (ours, for a stream's request), on every method; the server keeps serving.
fn assert_every_method_refuses(server: &greet::server::RunningServer, what: &str, payload: &[u8], skip: &[&str]) {
    let client = grpcio::Client::new(greet::client::connect(server.addr()));
    for &(method, ty) in raw::METHODS.iter().filter(|(m, _)| !skip.contains(m)) {
        match call_raw(&client, method, ty, payload) {
            Err((RpcStatusCode::INTERNAL, _)) | Err((RpcStatusCode::INVALID_ARGUMENT, _)) => {}
            other => panic!("{what} to {method}: want INTERNAL or INVALID_ARGUMENT, got {other:?}"),
        }
    }
    assert_eq!(block_on(client_for(server).say_hello()).unwrap(), "Hello", "the server keeps serving after {what}");
}

#[test]
fn a_truncated_message_gets_a_status_on_every_method() {
    let server = start_server(Duration::ZERO);
    assert_every_method_refuses(&server, "a truncated field", &[0x0a, 0x64, 0xff], &[]);
}

#[test]
fn deeply_nested_unknown_groups_get_a_status_on_every_method() {
    let server = start_server(Duration::ZERO);
    for depth in [101, 10_000, 1_000_000] {
        assert_every_method_refuses(&server, &format!("{depth} nested groups"), &nested_groups(depth), &[]);
    }
}

#[test]
fn invalid_utf8_in_a_string_field_gets_a_status_on_every_method_with_one() {
    let server = start_server(Duration::ZERO);
    // A string field holding an invalid UTF-8 sequence: field 1 of
    // HelloRequest, NamesList and HealthCheckRequest, field 2 of RouteNote.
    // (NoParam, Point and Rectangle have no string: the bytes would be an
    // unknown field, which is fine.)
    let field_1 = [0x0a, 0x02, 0xc3, 0x28];
    let skip = [
        "/greet_service.GreetService/SayHello",
        "/routeguide.RouteGuide/GetFeature",
        "/routeguide.RouteGuide/ListFeatures",
        "/routeguide.RouteGuide/RecordRoute",
        "/routeguide.RouteGuide/RouteChat",
    ];
    assert_every_method_refuses(&server, "invalid UTF-8", &field_1, &skip);
    let client = grpcio::Client::new(greet::client::connect(server.addr()));
    let note = [0x12, 0x02, 0xc3, 0x28];
    let (code, _) = call_raw(&client, "/routeguide.RouteGuide/RouteChat", MethodType::Duplex, &note).unwrap_err();
    assert_eq!(code, RpcStatusCode::INVALID_ARGUMENT);
    let reply = call_raw(&client, "/greet_service.GreetService/SayHello", MethodType::Unary, &field_1).unwrap();
    assert_eq!(reply, vec![b"\x0a\x05Hello".to_vec()]);
}

#[test]
fn a_bad_request_on_a_stream_gets_invalid_argument_that_says_why() {
    let server = start_server(Duration::ZERO);
    let client = grpcio::Client::new(greet::client::connect(server.addr()));
    let (code, message) = call_raw(
        &client,
        "/greet_service.GreetService/SayHelloBidirectionalStreaming",
        MethodType::Duplex,
        &[0x0a, 0x02, 0xc3, 0x28],
    )
    .unwrap_err();
    assert_eq!(code, RpcStatusCode::INVALID_ARGUMENT);
    assert!(message.starts_with("cannot decode the request: "), "{message}");
    assert!(message.contains("UTF-8"), "{message}");
}

#[test]
fn an_oversized_message_fails_alone_while_a_stream_on_the_same_connection_goes_on() {
    let server = start_server(Duration::ZERO);
    let client = GreetServiceClient::new(greet::client::connect(server.addr()));
    let (mut sink, mut receiver) = client.say_hello_bidirectional_streaming_opt(opt()).unwrap();
    let say = |name: &str| (HelloRequest { name: name.into(), ..Default::default() }, WriteFlags::default());
    block_on(async {
        sink.send(say("before")).await.unwrap();
        assert_eq!(receiver.try_next().await.unwrap().unwrap().message, "Hello before");
    });
    for oversized in [greet::limits::MAX_RECEIVE_MESSAGE_BYTES + 1, 16 * 1024 * 1024] {
        let req = NamesList { names: vec!["n".repeat(oversized)], ..Default::default() };
        let err = block_on(client.say_hello_server_streaming_opt(&req, opt()).unwrap().try_next()).unwrap_err();
        assert_eq!(code_of(err).0, RpcStatusCode::RESOURCE_EXHAUSTED);
    }
    block_on(async {
        sink.send(say("after")).await.unwrap();
        assert_eq!(receiver.try_next().await.unwrap().unwrap().message, "Hello after");
        greet::client::half_close(&mut sink).await.unwrap();
        assert!(receiver.try_next().await.unwrap().is_none());
    });
}
