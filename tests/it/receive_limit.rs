//! The receive-size limit (`--max-recv-bytes`) holds for every call pattern,
//! per server and after decompression, although the C core's message-size
//! filter is left out of the stack: src/codec.rs enforces it where requests
//! are decoded. Each test sends a message that the server would otherwise
//! accept (its names are within the name limit), so it fails without the
//! check.

use std::sync::Arc;
use std::time::Duration;

use crate::common::code_of;
use futures::executor::block_on;
use futures::prelude::*;
use greet::proto::greet::{HelloRequest, NamesList};
use greet::proto::greet_grpc::GreetServiceClient;
use greet::proto::helloworld;
use greet::proto::helloworld_grpc::GreeterClient;
use greet::server::{self, RunningServer, ServerConfig, ServerLimits};
use grpcio::{CallOption, ChannelBuilder, CompressionAlgorithms, EnvBuilder, RpcStatusCode, WriteFlags};

/// Small enough that a valid name (at most 1,024 bytes) can break it.
const LIMIT: usize = 100;

fn start(max_receive_bytes: usize) -> RunningServer {
    let config = ServerConfig {
        addr: "127.0.0.1:0".to_string(),
        stream_interval: Duration::ZERO,
        completion_queues: 1,
        limits: ServerLimits { max_receive_bytes, ..Default::default() },
        ..Default::default()
    };
    server::start(&config).expect("a server starts on a free loopback port")
}

fn opt() -> CallOption {
    CallOption::default().timeout(Duration::from_secs(10))
}

/// A `HelloRequest` whose encoding is exactly `bytes` long (1 tag byte, a
/// 1-byte length while the name is under 128 bytes, 2 bytes from there on).
fn request_of(bytes: usize) -> HelloRequest {
    let name_len = if bytes - 2 < 128 { bytes - 2 } else { bytes - 3 };
    HelloRequest { name: "n".repeat(name_len), ..Default::default() }
}

fn too_large(len: usize, limit: usize) -> (RpcStatusCode, String) {
    (
        RpcStatusCode::RESOURCE_EXHAUSTED,
        format!("received a message of {len} bytes; this server accepts at most {limit} bytes"),
    )
}

fn greeter(server: &RunningServer) -> GreeterClient {
    GreeterClient::new(greet::client::connect(server.addr()))
}

fn hello(name: String) -> helloworld::HelloRequest {
    helloworld::HelloRequest { name, ..Default::default() }
}

#[test]
fn unary_request_over_the_limit_gets_resource_exhausted_and_one_at_it_is_served() {
    let server = start(LIMIT);
    let client = greeter(&server);
    let at_limit = hello("n".repeat(LIMIT - 2));
    assert_eq!(client.say_hello_opt(&at_limit, opt()).unwrap().message, format!("Hello {}", at_limit.name));
    let over = hello("n".repeat(LIMIT - 1));
    assert_eq!(code_of(client.say_hello_opt(&over, opt()).unwrap_err()), too_large(LIMIT + 1, LIMIT));
    assert_eq!(client.say_hello_opt(&at_limit, opt()).unwrap().message, format!("Hello {}", at_limit.name));
}

#[test]
fn server_streaming_request_over_the_limit_gets_resource_exhausted() {
    let server = start(LIMIT);
    let client = GreetServiceClient::new(greet::client::connect(server.addr()));
    // 20 names of 5 bytes: 20 * (1 + 1 + 5) = 140 bytes.
    let req = NamesList { names: vec!["abcde".to_string(); 20], ..Default::default() };
    let err = block_on(client.say_hello_server_streaming_opt(&req, opt()).unwrap().try_next()).unwrap_err();
    assert_eq!(code_of(err), too_large(140, LIMIT));
}

#[test]
fn client_streaming_request_over_the_limit_gets_resource_exhausted() {
    let server = start(LIMIT);
    let client = GreetServiceClient::new(greet::client::connect(server.addr()));
    let (mut sink, receiver) = client.say_hello_client_streaming_opt(opt()).unwrap();
    let err = block_on(async {
        sink.send((request_of(LIMIT), WriteFlags::default())).await.unwrap();
        // The status may beat this write's completion back.
        let _ = sink.send((request_of(LIMIT + 50), WriteFlags::default())).await;
        receiver.await.unwrap_err()
    });
    assert_eq!(code_of(err), too_large(LIMIT + 50, LIMIT));
}

#[test]
fn bidi_request_over_the_limit_gets_resource_exhausted_after_the_answers_before_it() {
    let server = start(LIMIT);
    let client = GreetServiceClient::new(greet::client::connect(server.addr()));
    let (mut sink, mut receiver) = client.say_hello_bidirectional_streaming_opt(opt()).unwrap();
    block_on(async {
        let ok = request_of(LIMIT);
        sink.send((ok.clone(), WriteFlags::default())).await.unwrap();
        assert_eq!(receiver.try_next().await.unwrap().unwrap().message, format!("Hello {}", ok.name));
        let _ = sink.send((request_of(LIMIT + 200), WriteFlags::default())).await;
        assert_eq!(code_of(receiver.try_next().await.unwrap_err()), too_large(LIMIT + 200, LIMIT));
    });
}

#[test]
fn each_server_enforces_its_own_limit() {
    let strict = start(LIMIT);
    let default = start(ServerLimits::default().max_receive_bytes);
    let name = "n".repeat(500);
    let err = greeter(&strict).say_hello_opt(&hello(name.clone()), opt()).unwrap_err();
    assert_eq!(code_of(err), too_large(503, LIMIT));
    assert_eq!(greeter(&default).say_hello_opt(&hello(name.clone()), opt()).unwrap().message, format!("Hello {name}"));
}

#[test]
fn the_limit_counts_decompressed_bytes() {
    let server = start(LIMIT);
    // gzip shrinks 1,000 identical bytes to a few dozen: under the limit on the
    // wire, ten times over it once decompressed.
    let env = Arc::new(EnvBuilder::new().cq_count(1).build());
    let channel = ChannelBuilder::new(env)
        .default_compression_algorithm(CompressionAlgorithms::GRPC_COMPRESS_GZIP)
        .connect(server.addr());
    let err = GreeterClient::new(channel).say_hello_opt(&hello("n".repeat(1000)), opt()).unwrap_err();
    assert_eq!(code_of(err), too_large(1003, LIMIT));
}
