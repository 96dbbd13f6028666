//! A peer that misbehaves stalls only its own calls: other clients keep
//! getting every answer, and the server frees the bad calls once they end.

use std::thread;
use std::time::Duration;

use crate::common::*;
use futures::executor::block_on;
use futures::prelude::*;
use greet::proto::greet::{HelloRequest, NamesList};
use greet::proto::greet_grpc::GreetServiceClient;
use grpcio::{CallOption, WriteFlags};

fn opt() -> CallOption {
    CallOption::default().timeout(Duration::from_secs(60))
}

/// Requests the hog tries to send, ~3 MB: far more than the HTTP/2 windows
/// between it and the server hold while nobody reads the answers.
const MANY: usize = 200_000;

#[test]
fn a_bidi_peer_that_never_reads_stalls_only_itself() {
    let _alone = crate::alone();
    let server = start_server(Duration::ZERO);
    let hog = GreetServiceClient::new(greet::client::connect(server.addr()));
    let (mut sink, mut receiver) = hog.say_hello_bidirectional_streaming_opt(opt()).unwrap();
    // Sends far more than the windows hold and never reads an answer: the
    // server's writes block on flow control, then its reads, then ours.
    let sender = thread::spawn(move || {
        block_on(async {
            for i in 0..MANY {
                let req = HelloRequest { name: format!("hog-{i}"), ..Default::default() };
                if sink.send((req, WriteFlags::default())).await.is_err() {
                    return i;
                }
            }
            MANY
        })
    });
    assert!(server.tracker().wait_started(1, Duration::from_secs(10)));

    // Another client, on its own connection, is served in full meanwhile.
    let client = client_for(&server);
    let names: Vec<String> = (0..2_000).map(|i| format!("ok-{i}")).collect();
    let mut got = Vec::new();
    block_on(client.bidi(&names, Duration::ZERO, |m| got.push(m))).unwrap();
    assert_eq!(got, greetings(&names));
    let mut got = Vec::new();
    block_on(client.server_stream(&names, |m| got.push(m))).unwrap();
    assert_eq!(got, greetings(&names));
    assert_eq!(block_on(client.say_hello()).unwrap(), "Hello");

    // The hog gives up; its call ends on the server too.
    receiver.cancel();
    let sent = sender.join().unwrap();
    assert!(sent < MANY, "flow control never pushed back: all {MANY} requests were accepted unread");
    assert!(server.tracker().wait_idle(Duration::from_secs(10)), "the cancelled call still runs");
}

#[test]
fn a_server_stream_reader_that_stops_reading_stalls_only_itself() {
    let _alone = crate::alone();
    let server = start_server(Duration::ZERO);
    let hog = GreetServiceClient::new(greet::client::connect(server.addr()));
    let names: Vec<String> = (0..20_000).map(|i| format!("a-fairly-long-name-to-fill-the-window-{i}")).collect();
    let mut stream = hog.say_hello_server_streaming_opt(&NamesList { names, ..Default::default() }, opt()).unwrap();
    // Read one answer, then stop reading.
    let first = block_on(stream.try_next()).unwrap().unwrap();
    assert_eq!(first.message, "Hello a-fairly-long-name-to-fill-the-window-0");

    let client = client_for(&server);
    let names: Vec<String> = (0..2_000).map(|i| format!("ok-{i}")).collect();
    let mut got = Vec::new();
    block_on(client.server_stream(&names, |m| got.push(m))).unwrap();
    assert_eq!(got, greetings(&names));
    assert_eq!(block_on(client.client_stream(&names, Duration::ZERO)).unwrap(), greetings(&names));

    stream.cancel();
    drop(stream);
    assert!(server.tracker().wait_idle(Duration::from_secs(10)), "the cancelled stream still runs");
}
