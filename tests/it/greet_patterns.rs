//! Each of the demo's four call patterns answers exactly as the Go demo does.

use std::time::Duration;

use crate::common::*;
use futures::executor::block_on;
use futures::prelude::*;
use greet::proto::greet::HelloRequest;
use greet::proto::greet_grpc::GreetServiceClient;
use grpcio::{CallOption, WriteFlags};

#[test]
fn unary_answers_hello() {
    let server = start_server(Duration::ZERO);
    assert_eq!(block_on(client_for(&server).say_hello()).unwrap(), "Hello");
}

#[test]
fn server_stream_greets_each_demo_name_in_order() {
    let server = start_server(Duration::ZERO);
    let mut got = Vec::new();
    block_on(client_for(&server).server_stream(&demo_names(), |m| got.push(m))).unwrap();
    assert_eq!(got, ["Hello Akhil", "Hello Alice", "Hello Bob"]);
}

#[test]
fn client_stream_answers_all_greetings_in_arrival_order() {
    let server = start_server(Duration::ZERO);
    let got = block_on(client_for(&server).client_stream(&demo_names(), Duration::ZERO)).unwrap();
    assert_eq!(got, ["Hello Akhil", "Hello Alice", "Hello Bob"]);
}

#[test]
fn bidi_greets_each_demo_name() {
    let server = start_server(Duration::ZERO);
    let mut got = Vec::new();
    block_on(client_for(&server).bidi(&demo_names(), Duration::ZERO, |m| got.push(m))).unwrap();
    assert_eq!(got, ["Hello Akhil", "Hello Alice", "Hello Bob"]);
}

#[test]
fn empty_list_and_empty_streams_succeed_with_nothing() {
    let server = start_server(Duration::ZERO);
    let client = client_for(&server);
    let mut got = Vec::new();
    block_on(client.server_stream(&[], |m| got.push(m))).unwrap();
    block_on(client.bidi(&[], Duration::ZERO, |m| got.push(m))).unwrap();
    assert!(got.is_empty(), "unexpected messages: {got:?}");
    assert!(block_on(client.client_stream(&[], Duration::ZERO)).unwrap().is_empty());
}

#[test]
fn ten_thousand_names_pass_through_every_streaming_pattern() {
    let server = start_server(Duration::ZERO);
    let client = client_for(&server);
    let names: Vec<String> = (0..10_000).map(|i| format!("name-{i}")).collect();
    let expected = greetings(&names);

    let mut got = Vec::with_capacity(names.len());
    block_on(client.server_stream(&names, |m| got.push(m))).unwrap();
    assert_eq!(got, expected);

    assert_eq!(block_on(client.client_stream(&names, Duration::ZERO)).unwrap(), expected);

    let mut got = Vec::with_capacity(names.len());
    block_on(client.bidi(&names, Duration::ZERO, |m| got.push(m))).unwrap();
    assert_eq!(got, expected);
}

#[test]
fn unicode_names_round_trip_unchanged() {
    let server = start_server(Duration::ZERO);
    let client = client_for(&server);
    let names = names(&["Zoë", "李雷", "Ñandú 🦤", "", "O'Brien \"quoted\""]);
    let expected = greetings(&names);
    let mut got = Vec::new();
    block_on(client.server_stream(&names, |m| got.push(m))).unwrap();
    assert_eq!(got, expected);
    assert_eq!(block_on(client.client_stream(&names, Duration::ZERO)).unwrap(), expected);
    let mut got = Vec::new();
    block_on(client.bidi(&names, Duration::ZERO, |m| got.push(m))).unwrap();
    assert_eq!(got, expected);
}

#[test]
fn bidi_answers_each_request_before_the_client_closes() {
    let server = start_server(Duration::ZERO);
    let client = GreetServiceClient::new(greet::client::connect(server.addr()));
    let opt = CallOption::default().timeout(Duration::from_secs(10));
    let (mut sink, mut receiver) = client.say_hello_bidirectional_streaming_opt(opt).unwrap();
    block_on(async {
        for name in ["Akhil", "Alice"] {
            let req = HelloRequest { name: name.to_string(), ..Default::default() };
            sink.send((req, WriteFlags::default())).await.unwrap();
            // The answer arrives while our side is still open.
            let resp = receiver.try_next().await.unwrap().expect("an answer before closing");
            assert_eq!(resp.message, format!("Hello {name}"));
        }
        greet::client::half_close(&mut sink).await.unwrap();
        assert!(receiver.try_next().await.unwrap().is_none(), "the call ends after the client closes");
    });
}

#[test]
fn helloworld_greeter_answers_hello_name() {
    let server = start_server(Duration::ZERO);
    assert_eq!(block_on(client_for(&server).greet("world")).unwrap(), "Hello world");
}

#[test]
fn more_streams_at_once_than_request_slots_are_all_served() {
    // One completion queue, so its request slots are all there are.
    let config = greet::server::ServerConfig {
        addr: "127.0.0.1:0".to_string(),
        stream_interval: Duration::ZERO,
        completion_queues: 1,
        ..Default::default()
    };
    let server = greet::server::start(&config).expect("a server starts on a free loopback port");
    let client = GreetServiceClient::new(greet::client::connect(server.addr()));
    let count = 2 * greet::server::REQUEST_SLOTS_PER_CQ + 10;
    let opt = || CallOption::default().timeout(Duration::from_secs(30));
    let mut streams: Vec<_> =
        (0..count).map(|_| client.say_hello_bidirectional_streaming_opt(opt()).unwrap()).collect();
    block_on(async {
        for (i, (sink, _)) in streams.iter_mut().enumerate() {
            let req = HelloRequest { name: format!("n{i}"), ..Default::default() };
            sink.send((req, WriteFlags::default())).await.unwrap();
        }
        for (i, (_, receiver)) in streams.iter_mut().enumerate() {
            assert_eq!(receiver.try_next().await.unwrap().unwrap().message, format!("Hello n{i}"));
        }
    });
    // Every call is running on the server at once, well past the slots.
    assert_eq!(server.tracker().active(), count);
    block_on(async {
        for (sink, receiver) in streams.iter_mut() {
            greet::client::half_close(sink).await.unwrap();
            assert!(receiver.try_next().await.unwrap().is_none());
        }
    });
}
