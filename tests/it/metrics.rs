//! Prometheus metrics with go-grpc-prometheus's names: calls of each pattern
//! with known outcomes, then the exact counts scraped from the server.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::process::{http_get, ServerProcess};
use crate::common::*;
use futures::executor::block_on;
use greet::client::Client;
use greet::proto::empty::Empty;
use greet::proto::test_grpc::TestServiceClient;
use greet::server::{RunningServer, ServerConfig};
use grpcio::RpcStatusCode;

/// Samples of a text exposition, keyed `name{labels}` exactly as printed.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line:?}"));
            (key.to_string(), value.parse().unwrap_or_else(|_| panic!("not a number: {line:?}")))
        })
        .collect()
}

/// `name{grpc_method=..,grpc_service=..,grpc_type=..}` (labels sorted, as
/// the encoder prints them), with `grpc_code` first when given.
fn key(name: &str, grpc_type: &str, method: &str, code: Option<&str>) -> String {
    let (service, method) = method.split_once('/').unwrap();
    let code = code.map_or(String::new(), |c| format!("grpc_code=\"{c}\","));
    format!("{name}{{{code}grpc_method=\"{method}\",grpc_service=\"{service}\",grpc_type=\"{grpc_type}\"}}")
}

/// A server with the interop service (for UNIMPLEMENTED) and an admin port;
/// its metrics are its own, whatever else runs in this process.
fn start() -> RunningServer {
    greet::server::start(&ServerConfig {
        addr: "127.0.0.1:0".to_string(),
        stream_interval: Duration::ZERO,
        completion_queues: 2,
        interop: true,
        admin_addr: Some("127.0.0.1:0".to_string()),
        ..Default::default()
    })
    .unwrap()
}

/// `GET /metrics` on the server's admin port.
fn scrape(server: &RunningServer) -> String {
    let admin = server.admin_addr().expect("started with an admin port").to_string();
    let (status, body) = http_get(&admin, "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

fn code(error: grpcio::Error) -> RpcStatusCode {
    code_of(error).0
}

/// OK, INVALID_ARGUMENT and UNIMPLEMENTED outcomes of every pattern.
fn make_known_calls(server: &RunningServer) {
    let client = Client::new(greet::client::connect(server.addr()), Duration::from_secs(10));
    let long = "x".repeat(1025);
    let (ok, bad) = (names(&["Akhil", "Alice", "Bob"]), vec!["Akhil".to_string(), long.clone()]);

    block_on(client.say_hello()).unwrap();
    block_on(client.say_hello()).unwrap();
    assert_eq!(code(block_on(client.greet(&long)).unwrap_err()), RpcStatusCode::INVALID_ARGUMENT);
    let test = TestServiceClient::new(greet::client::connect(server.addr()));
    assert_eq!(code(test.unimplemented_call(&Empty::default()).unwrap_err()), RpcStatusCode::UNIMPLEMENTED);

    block_on(client.server_stream(&ok, |_| {})).unwrap();
    assert_eq!(code(block_on(client.server_stream(&bad, |_| {})).unwrap_err()), RpcStatusCode::INVALID_ARGUMENT);

    block_on(client.client_stream(&ok, Duration::ZERO)).unwrap();
    assert_eq!(
        code(block_on(client.client_stream(&bad, Duration::ZERO)).unwrap_err()),
        RpcStatusCode::INVALID_ARGUMENT
    );

    block_on(client.bidi(&ok, Duration::ZERO, |_| {})).unwrap();
    assert_eq!(code(block_on(client.bidi(&bad, Duration::ZERO, |_| {})).unwrap_err()), RpcStatusCode::INVALID_ARGUMENT);
}

/// What the calls above must have counted: (type, method, started,
/// received, sent, [(code, handled)]).
type Expected = (&'static str, &'static str, u32, u32, u32, &'static [(&'static str, u32)]);
const EXPECTED: &[Expected] = &[
    ("unary", "greet_service.GreetService/SayHello", 2, 2, 2, &[("OK", 2)]),
    ("unary", "helloworld.Greeter/SayHello", 1, 1, 0, &[("InvalidArgument", 1)]),
    ("unary", "grpc.testing.TestService/UnimplementedCall", 1, 1, 0, &[("Unimplemented", 1)]),
    // One request each; 3 greetings for the good list, none for the bad (checked first).
    (
        "server_stream",
        "greet_service.GreetService/SayHelloServerStreaming",
        2,
        2,
        3,
        &[("OK", 1), ("InvalidArgument", 1)],
    ),
    // 3 names, then 2 (the second too long); one list back for the good call.
    (
        "client_stream",
        "greet_service.GreetService/SayHelloClientStreaming",
        2,
        5,
        1,
        &[("OK", 1), ("InvalidArgument", 1)],
    ),
    // 3 names and 3 greetings, then 2 names and 1 greeting before the long name.
    (
        "bidi_stream",
        "greet_service.GreetService/SayHelloBidirectionalStreaming",
        2,
        5,
        4,
        &[("OK", 1), ("InvalidArgument", 1)],
    ),
];

fn assert_counts(text: &str) {
    let samples = samples(text);
    let value = |k: String| *samples.get(&k).unwrap_or_else(|| panic!("no sample {k} in\n{text}"));
    for &(grpc_type, method, started, received, sent, handled) in EXPECTED {
        let at = |name| key(name, grpc_type, method, None);
        assert_eq!(value(at("grpc_server_started_total")), f64::from(started), "{method} started");
        assert_eq!(value(at("grpc_server_msg_received_total")), f64::from(received), "{method} received");
        assert_eq!(value(at("grpc_server_msg_sent_total")), f64::from(sent), "{method} sent");
        assert_eq!(value(at("grpc_server_handling_seconds_count")), f64::from(started), "{method} timed");
        for &(code, n) in handled {
            let k = key("grpc_server_handled_total", grpc_type, method, Some(code));
            assert_eq!(value(k), f64::from(n), "{method} {code}");
        }
        let codes = samples.keys().filter(|k| {
            k.starts_with("grpc_server_handled_total{") && k.ends_with(&key("", grpc_type, method, None)[1..])
        });
        assert_eq!(codes.count(), handled.len(), "{method}: only the expected codes");
    }
}

#[test]
fn calls_of_every_pattern_are_counted_with_their_codes() {
    let server = start();
    make_known_calls(&server);
    assert_counts(&scrape(&server));
}

#[test]
fn a_method_the_server_does_not_have_is_not_counted() {
    // The core answers it UNIMPLEMENTED before any handler (go-grpc-prometheus
    // does not see such calls either).
    let server = start();
    let raw = raw_method("/greet_service.GreetService/NoSuchMethod");
    let client = grpcio::Client::new(greet::client::connect(server.addr()));
    let error = client.unary_call(&raw, &vec![], grpcio::CallOption::default()).unwrap_err();
    assert_eq!(code(error), RpcStatusCode::UNIMPLEMENTED);
    let text = scrape(&server);
    assert!(!text.contains("NoSuchMethod"), "{text}");
    assert!(!text.contains("grpc_server_handled_total{"), "{text}");
}

#[test]
fn every_method_is_listed_at_zero_before_its_first_call() {
    // As go-grpc-prometheus's InitializeMetrics does, so that rate() sees a series from the start.
    let server = start();
    let samples = samples(&scrape(&server));
    for (grpc_type, method) in [
        ("unary", "greet_service.GreetService/SayHello"),
        ("bidi_stream", "grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
        ("server_stream", "grpc.health.v1.Health/Watch"),
    ] {
        let started = key("grpc_server_started_total", grpc_type, method, None);
        assert_eq!(samples.get(&started), Some(&0.0), "{started}");
    }
    assert!(!samples.keys().any(|k| k.starts_with("grpc_server_handled_total")), "no call, no code");
}

#[test]
fn process_metrics_are_exported() {
    let server = start();
    let samples = samples(&scrape(&server));
    for name in ["process_resident_memory_bytes", "process_open_fds", "process_max_fds", "process_threads"] {
        assert!(samples.get(name).is_some_and(|v| *v > 0.0), "{name}: {:?}", samples.get(name));
    }
    // Whole seconds of CPU: a young process has 0.
    assert!(samples.contains_key("process_cpu_seconds_total"));
}

#[test]
fn the_server_binary_serves_metrics_on_its_admin_port() {
    let server = ServerProcess::start("metrics", &[]);
    let client = Client::new(greet::client::connect(&server.addr), Duration::from_secs(10));
    block_on(client.say_hello()).unwrap();
    let (status, body) = http_get(&server.admin, "/metrics");
    assert_eq!(status, 200);
    let samples = samples(&body);
    let ok = key("grpc_server_handled_total", "unary", "greet_service.GreetService/SayHello", Some("OK"));
    assert_eq!(samples.get(&ok), Some(&1.0), "{body}");
    assert!(samples.get("process_resident_memory_bytes").is_some_and(|rss| *rss > 0.0), "{body}");
}
