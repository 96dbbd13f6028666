//! Pacing, deadlines and cancellation of server streams.

use std::time::{Duration, Instant};

use crate::common::*;
use futures::executor::block_on;
use futures::prelude::*;
use greet::client::Client;
use greet::proto::greet::NamesList;
use greet::proto::greet_grpc::GreetServiceClient;
use grpcio::{CallOption, RpcStatusCode};

#[test]
fn server_stream_waits_the_interval_between_sends() {
    let interval = Duration::from_millis(300);
    let server = start_server(interval);
    let started = Instant::now();
    let mut got = Vec::new();
    block_on(client_for(&server).server_stream(&names(&["Akhil", "Alice"]), |m| got.push(m))).unwrap();
    assert_eq!(got, ["Hello Akhil", "Hello Alice"]);
    assert!(started.elapsed() >= interval, "a 2-name stream took {:?}, less than one interval", started.elapsed());
}

#[test]
fn deadline_shorter_than_the_stream_gives_deadline_exceeded() {
    let server = start_server(Duration::from_secs(1));
    let client = Client::new(greet::client::connect(server.addr()), Duration::from_millis(500));
    let mut got = Vec::new();
    let err = block_on(client.server_stream(&demo_names(), |m| got.push(m))).unwrap_err();
    assert_eq!(code_of(err).0, RpcStatusCode::DEADLINE_EXCEEDED);
    assert_eq!(got, ["Hello Akhil"], "only the first send fits in the deadline");
    assert!(server.tracker().wait_idle(Duration::from_secs(5)), "the server call ends after the deadline");
}

#[test]
fn client_cancelling_mid_stream_frees_the_server_call() {
    // 50 names 100 ms apart: a call left running would last ~5 s.
    let server = start_server(Duration::from_millis(100));
    let client = GreetServiceClient::new(greet::client::connect(server.addr()));
    let names: Vec<String> = (0..50).map(|i| format!("n{i}")).collect();
    let req = NamesList { names, ..Default::default() };
    let opt = CallOption::default().timeout(Duration::from_secs(30));
    let mut stream = client.say_hello_server_streaming_opt(&req, opt).unwrap();
    let first = block_on(stream.try_next()).unwrap().expect("a first message");
    assert_eq!(first.message, "Hello n0");
    assert_eq!(server.tracker().active(), 1);

    let cancelled_at = Instant::now();
    stream.cancel();
    drop(stream);
    assert!(server.tracker().wait_idle(Duration::from_secs(2)), "the server still runs the cancelled call");
    assert!(cancelled_at.elapsed() < Duration::from_secs(2));
}
