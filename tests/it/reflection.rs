//! Server reflection as grpcurl (pinned, built by scripts/gotools.py) uses
//! it: list, describe and a call of each GreetService pattern with no .proto
//! file, in plaintext and over TLS; v1alpha answers as v1 does; and
//! `--no-reflection` turns it off.

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use crate::common::process::ServerProcess;
use crate::common::*;
use futures::executor::block_on;
use futures::prelude::*;
use greet::proto::reflection_v1alpha::server_reflection_request::Message_request;
use greet::proto::reflection_v1alpha::server_reflection_response::Message_response;
use greet::proto::reflection_v1alpha::ServerReflectionRequest;
use greet::proto::reflection_v1alpha_grpc::ServerReflectionClient;
use grpcio::{CallOption, WriteFlags};
use protobuf::descriptor::FileDescriptorProto;
use protobuf::Message;
use serde_json::{json, Value};

const HOSTED: [&str; 7] = [
    "chat.v1.Chat",
    "greet_service.GreetService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "helloworld.Greeter",
    "routeguide.RouteGuide",
];

/// How grpcurl reaches a server: plaintext, or TLS trusting a CA.
enum Transport<'a> {
    Plaintext,
    Tls(&'a Certs),
}

/// Runs `grpcurl <flags> <addr> <words>`; its stdout if it succeeds, else its stderr.
fn grpcurl(transport: &Transport, addr: &str, flags: &[&str], words: &[&str]) -> Result<String, String> {
    let ca;
    let mut argv = vec!["-connect-timeout", "10", "-max-time", "20"];
    match transport {
        Transport::Plaintext => argv.push("-plaintext"),
        Transport::Tls(certs) => {
            ca = certs.path("ca.pem").display().to_string();
            argv.extend(["-cacert", &ca, "-authority", SERVER_NAME]);
        }
    }
    argv.extend(flags);
    argv.push(addr);
    argv.extend(words);
    let out = run_tool("grpcurl", &argv);
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("grpcurl prints UTF-8");
    if out.status.success() {
        Ok(text(out.stdout))
    } else {
        Err(text(out.stderr))
    }
}

/// The JSON messages grpcurl printed, in order.
fn messages(stdout: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(stdout).into_iter::<Value>().map(|m| m.expect("grpcurl prints JSON")).collect()
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

/// list, describe and the four patterns through grpcurl, with no .proto file.
fn grpcurl_uses_everything_through_reflection(transport: Transport, addr: &str, hosted: &[&str]) {
    let listed = grpcurl(&transport, addr, &[], &["list"]).unwrap();
    assert_eq!(lines(&listed), hosted);

    let described = grpcurl(&transport, addr, &[], &["describe", "greet_service.GreetService"]).unwrap();
    assert_eq!(
        lines(&described),
        [
            "greet_service.GreetService is a service:",
            "service GreetService {",
            "  rpc SayHello ( .greet_service.NoParam ) returns ( .greet_service.HelloResponse );",
            "  rpc SayHelloBidirectionalStreaming ( stream .greet_service.HelloRequest ) returns ( stream .greet_service.HelloResponse );",
            "  rpc SayHelloClientStreaming ( stream .greet_service.HelloRequest ) returns ( .greet_service.MessagesList );",
            "  rpc SayHelloServerStreaming ( .greet_service.NamesList ) returns ( stream .greet_service.HelloResponse );",
            "}",
        ]
    );
    let message = grpcurl(&transport, addr, &[], &["describe", "greet_service.NamesList"]).unwrap();
    assert_eq!(
        lines(&message),
        ["greet_service.NamesList is a message:", "message NamesList {", "  repeated string names = 1;", "}"]
    );

    let method = grpcurl(&transport, addr, &[], &["describe", "greet_service.GreetService.SayHelloClientStreaming"]);
    assert_eq!(
        lines(&method.unwrap()),
        [
            "greet_service.GreetService.SayHelloClientStreaming is a method:",
            "rpc SayHelloClientStreaming ( stream .greet_service.HelloRequest ) returns ( .greet_service.MessagesList );",
        ]
    );
    let nested_enum = grpcurl(&transport, addr, &[], &["describe", "grpc.health.v1.HealthCheckResponse.ServingStatus"]);
    assert_eq!(lines(&nested_enum.unwrap())[0], "grpc.health.v1.HealthCheckResponse.ServingStatus is an enum:");

    let unary = grpcurl(&transport, addr, &["-d", "{}"], &["greet_service.GreetService/SayHello"]).unwrap();
    assert_eq!(messages(&unary), [json!({"message": "Hello"})]);

    let names = r#"{"names": ["Akhil", "Alice", "Bob"]}"#;
    let server_stream =
        grpcurl(&transport, addr, &["-d", names], &["greet_service.GreetService/SayHelloServerStreaming"]).unwrap();
    assert_eq!(
        messages(&server_stream),
        [json!({"message": "Hello Akhil"}), json!({"message": "Hello Alice"}), json!({"message": "Hello Bob"})]
    );

    let requests = r#"{"name": "Akhil"} {"name": "Alice"} {"name": "Bob"}"#;
    let client_stream =
        grpcurl(&transport, addr, &["-d", requests], &["greet_service.GreetService/SayHelloClientStreaming"]).unwrap();
    assert_eq!(messages(&client_stream), [json!({"messages": ["Hello Akhil", "Hello Alice", "Hello Bob"]})]);

    let bidi =
        grpcurl(&transport, addr, &["-d", requests], &["greet_service.GreetService/SayHelloBidirectionalStreaming"])
            .unwrap();
    assert_eq!(
        messages(&bidi),
        [json!({"message": "Hello Akhil"}), json!({"message": "Hello Alice"}), json!({"message": "Hello Bob"})]
    );
}

#[test]
fn grpcurl_lists_describes_and_calls_every_pattern_with_no_proto_file() {
    let server = start_server(Duration::ZERO);
    grpcurl_uses_everything_through_reflection(Transport::Plaintext, server.addr(), &HOSTED);
}

#[test]
fn grpcurl_does_the_same_over_tls() {
    let certs = Certs::new();
    let server = start_tls_server(&certs);
    // start_tls_server hosts the interop service too.
    let mut hosted = HOSTED.to_vec();
    hosted.push("grpc.testing.TestService");
    hosted.sort();
    grpcurl_uses_everything_through_reflection(Transport::Tls(&certs), server.addr(), &hosted);
}

#[test]
fn grpcurl_reports_an_unknown_symbol_as_not_found() {
    let server = start_server(Duration::ZERO);
    let error = grpcurl(&Transport::Plaintext, server.addr(), &[], &["describe", "no.Such"]).unwrap_err();
    assert!(error.contains("Symbol not found: no.Such"), "stderr: {error}");
}

#[test]
fn grpcurl_relays_a_status_from_a_call_made_through_reflection() {
    let server = start_server(Duration::ZERO);
    let long_name = format!(r#"{{"names": ["{}"]}}"#, "x".repeat(1025));
    let method = "greet_service.GreetService/SayHelloServerStreaming";
    let error = grpcurl(&Transport::Plaintext, server.addr(), &["-d", &long_name], &[method]).unwrap_err();
    assert!(error.contains("Code: InvalidArgument"), "stderr: {error}");
    assert!(error.contains("name #1 is 1025 bytes long; names are limited to 1024 bytes"), "stderr: {error}");
}

#[test]
fn without_reflection_grpcurl_cannot_list() {
    let server = ServerProcess::start("no-reflection", &["--no-reflection"]);
    let error = grpcurl(&Transport::Plaintext, &server.addr, &[], &["list"]).unwrap_err();
    assert!(error.contains("server does not support the reflection API"), "stderr: {error}");
    // The services themselves still answer.
    let out = Command::new(env!("CARGO_BIN_EXE_client")).args(["--addr", &server.addr, "unary"]).output();
    assert_eq!(String::from_utf8(out.unwrap().stdout).unwrap(), "Hello\n");
}

/// One v1alpha request on `stream`, and its answer.
fn ask(
    sink: &mut grpcio::ClientDuplexSender<ServerReflectionRequest>,
    responses: &mut grpcio::ClientDuplexReceiver<greet::proto::reflection_v1alpha::ServerReflectionResponse>,
    request: Message_request,
) -> Message_response {
    let request = ServerReflectionRequest { message_request: Some(request), ..Default::default() };
    block_on(sink.send((request, WriteFlags::default()))).unwrap();
    block_on(responses.try_next()).unwrap().expect("one response per request").message_response.unwrap()
}

#[test]
fn v1alpha_answers_like_v1_and_sends_each_import_once_per_stream() {
    let server = greet::server::start(&greet::server::ServerConfig {
        addr: "127.0.0.1:0".to_string(),
        completion_queues: 2,
        interop: true,
        ..Default::default()
    })
    .unwrap();
    let client = ServerReflectionClient::new(greet::client::connect(server.addr()));
    let (mut sink, mut responses) =
        client.server_reflection_info_opt(CallOption::default().timeout(Duration::from_secs(10))).unwrap();

    let Message_response::ListServicesResponse(list) =
        ask(&mut sink, &mut responses, Message_request::ListServices(String::new()))
    else {
        panic!("want the list of services")
    };
    let names: HashSet<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains("grpc.testing.TestService") && names.contains("greet_service.GreetService"), "{names:?}");

    let mut files = |request| match ask(&mut sink, &mut responses, request) {
        Message_response::FileDescriptorResponse(files) => files
            .file_descriptor_proto
            .iter()
            .map(|bytes| FileDescriptorProto::parse_from_bytes(bytes).unwrap().name().to_string())
            .collect::<Vec<_>>(),
        other => panic!("want files, got {other:?}"),
    };
    let symbol = |s: &str| Message_request::FileContainingSymbol(s.to_string());
    assert_eq!(
        files(symbol("grpc.testing.TestService.UnaryCall")),
        ["grpc/testing/test.proto", "grpc/testing/empty.proto", "grpc/testing/messages.proto"]
    );
    assert_eq!(files(symbol("grpc.testing.SimpleRequest")), ["grpc/testing/messages.proto"], "asked for: sent again");
    assert_eq!(files(symbol("grpc.testing.TestService")), ["grpc/testing/test.proto"], "its imports went out already");

    match ask(&mut sink, &mut responses, Message_request::FileByFilename("nothing.proto".to_string())) {
        Message_response::ErrorResponse(e) => {
            assert_eq!(
                (e.error_code, e.error_message.as_str()),
                (5, "file \"nothing.proto\" is not known to this server")
            )
        }
        other => panic!("want NOT_FOUND, got {other:?}"),
    }
    block_on(greet::client::half_close(&mut sink)).unwrap();
    assert!(block_on(responses.try_next()).unwrap().is_none(), "the stream ends OK after the client closes");
}
