//! Peers that abuse the connection itself rather than a call: garbage for a
//! preface, silence, half a frame, PING and SETTINGS floods, and thousands
//! of streams at once. Each test ends with a well-behaved client served,
//! and most check one is served while the abuse goes on.

use std::time::Duration;

use crate::common::h2::*;
use crate::common::*;
use futures::executor::block_on;
use futures::future::join_all;
use futures::prelude::*;
use greet::proto::greet::HelloRequest;
use greet::proto::greet_grpc::GreetServiceClient;
use greet::server::{self, RunningServer, ServerConfig, ServerLimits};
use grpcio::{CallOption, RpcStatusCode, WriteFlags};

/// A server whose handshake deadline is short, so tests that wait for it
/// to drop a silent peer wait 2 s, not the default 10 s.
fn start_server_with_handshake_timeout(timeout: Duration) -> RunningServer {
    server::start(&ServerConfig {
        addr: "127.0.0.1:0".to_string(),
        stream_interval: Duration::ZERO,
        completion_queues: 2,
        limits: ServerLimits { handshake_timeout: timeout, ..Default::default() },
        ..Default::default()
    })
    .expect("a server starts on a free loopback port")
}

fn assert_served(server: &RunningServer) {
    assert_eq!(block_on(client_for(server).say_hello()).unwrap(), "Hello", "a well-behaved client is served");
}

#[test]
fn garbage_instead_of_the_preface_gets_the_connection_closed() {
    let _alone = crate::alone();
    let server = start_server(Duration::ZERO);
    for garbage in
        [&b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"[..], &[0xff; 64][..], b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"]
    {
        let mut conn = RawConnection::open(server.addr());
        conn.send(garbage).unwrap();
        conn.wait_closed(Duration::from_secs(10)).unwrap();
        assert_served(&server);
    }
}

#[test]
fn silent_connections_do_not_hurt_others_and_are_closed_at_the_handshake_deadline() {
    let _alone = crate::alone();
    let server = start_server_with_handshake_timeout(Duration::from_secs(2));
    let silent: Vec<RawConnection> = (0..50).map(|_| RawConnection::open(server.addr())).collect();
    assert_served(&server);
    for conn in &silent {
        conn.wait_closed(Duration::from_secs(15)).unwrap();
    }
    assert_served(&server);
}

#[test]
fn a_partial_frame_then_silence_is_closed_at_the_handshake_deadline() {
    let _alone = crate::alone();
    let server = start_server_with_handshake_timeout(Duration::from_secs(2));
    let mut conn = RawConnection::open(server.addr());
    // The preface, then 5 of the 9 header bytes of the client's SETTINGS.
    conn.send(&[PREFACE, &frame(SETTINGS, 0, 0, &[])[..5]].concat()).unwrap();
    assert_served(&server);
    conn.wait_closed(Duration::from_secs(15)).unwrap();
    assert_served(&server);
}

#[test]
fn a_partial_frame_after_a_good_start_stalls_only_its_connection() {
    let _alone = crate::alone();
    let server = start_server(Duration::ZERO);
    let mut conn = RawConnection::open(server.addr());
    // A proper start, then half of a HEADERS frame, then nothing.
    let headers = frame(HEADERS, END_HEADERS, 1, &request_headers("/greet_service.GreetService/SayHello"));
    conn.send(&[PREFACE, &frame(SETTINGS, 0, 0, &[]), &headers[..headers.len() / 2]].concat()).unwrap();
    assert!(conn.next_frame(SETTINGS, Duration::from_secs(10)).is_some(), "the server answers the preface");
    for _ in 0..20 {
        assert_served(&server);
    }
}

/// Sends `count` copies of `one` after the preface in batches, stopping
/// early if the server closes the connection; returns how many were sent.
fn flood(conn: &mut RawConnection, one: &[u8], count: usize) -> usize {
    conn.send(&[PREFACE, &frame(SETTINGS, 0, 0, &[])].concat()).unwrap();
    let batch = one.repeat(100);
    for sent in (0..count).step_by(100) {
        if conn.send(&batch).is_err() {
            return sent;
        }
    }
    count
}

#[test]
fn a_ping_flood_gets_goaway_too_many_pings_and_others_are_served() {
    let _alone = crate::alone();
    let server = start_server(Duration::ZERO);
    let mut conn = RawConnection::open(server.addr());
    let sent = flood(&mut conn, &frame(PING, 0, 0, &[0; 8]), 20_000);
    let goaway = conn.wait_closed(Duration::from_secs(10)).unwrap();
    assert_eq!(goaway, Some((ENHANCE_YOUR_CALM, "too_many_pings".to_string())), "after {sent} pings");
    assert_served(&server);
}

#[test]
fn a_settings_flood_is_acknowledged_or_cut_off_and_others_are_served() {
    let _alone = crate::alone();
    let server = start_server(Duration::ZERO);
    let mut conn = RawConnection::open(server.addr());
    let client = client_for(&server);
    let sent = flood(&mut conn, &frame(SETTINGS, 0, 0, &[]), 20_000);
    assert_eq!(block_on(client.say_hello()).unwrap(), "Hello", "served while {sent} SETTINGS frames were sent");
    // Whatever the server did with them, it still answers this connection's
    // next PING, or has closed it.
    conn.send(&frame(PING, 0, 0, b"12345678")).ok();
    match conn.next_frame(PING, Duration::from_secs(10)) {
        Some(Received::Frame { flags, payload, .. }) => assert_eq!((flags, &payload[..]), (ACK, &b"12345678"[..])),
        Some(Received::Closed) => {}
        None => panic!("neither a PING ACK nor a close within 10 s"),
    }
    assert_served(&server);
}

#[test]
fn two_thousand_streams_from_twenty_connections_are_all_served() {
    let _alone = crate::alone();
    const CONNECTIONS: usize = 20;
    const PER_CONNECTION: usize = 100;
    let server = start_server(Duration::ZERO);
    // A pool's channels never share a connection.
    let pool = greet::client::Connector::new(server.addr()).unwrap().connections(CONNECTIONS).pool();
    let clients: Vec<GreetServiceClient> = pool.channels().iter().cloned().map(GreetServiceClient::new).collect();
    let opt = || CallOption::default().timeout(Duration::from_secs(60));
    let request = |name: String| (HelloRequest { name, ..Default::default() }, WriteFlags::default());

    // Every stream makes one round trip and stays open, so all 2,000 are open at once.
    let opened =
        block_on(join_all(clients.iter().flat_map(|client| (0..PER_CONNECTION).map(move |_| client)).enumerate().map(
            |(i, client)| async move {
                let (mut sink, mut receiver) = client.say_hello_bidirectional_streaming_opt(opt())?;
                sink.send(request(format!("s{i}"))).await?;
                let reply = receiver.try_next().await?.map(|r| r.message);
                assert_eq!(reply.as_deref(), Some(format!("Hello s{i}").as_str()));
                Ok::<_, grpcio::Error>((sink, receiver))
            },
        )));
    let mut streams = Vec::new();
    for result in opened {
        match result {
            Ok(stream) => streams.push(stream),
            Err(e) => panic!("a stream failed: {e:?}"),
        }
    }
    assert_eq!(server.tracker().active(), streams.len());
    assert_served(&server);

    let closed = block_on(join_all(streams.into_iter().map(|(mut sink, mut receiver)| async move {
        greet::client::half_close(&mut sink).await?;
        receiver.try_next().await
    })));
    assert!(closed.iter().all(|r| matches!(r, Ok(None))), "every stream ends with OK");
    assert!(server.tracker().wait_idle(Duration::from_secs(10)));
    assert_served(&server);
}

#[test]
fn a_stream_refused_for_too_many_streams_gets_a_status_not_a_hang() {
    let _alone = crate::alone();
    let config = ServerConfig {
        addr: "127.0.0.1:0".to_string(),
        stream_interval: Duration::ZERO,
        completion_queues: 2,
        limits: ServerLimits { max_concurrent_streams: 2, ..Default::default() },
        ..Default::default()
    };
    let server = server::start(&config).unwrap();
    let client = GreetServiceClient::new(greet::client::connect(server.addr()));
    let opt = CallOption::default().timeout(Duration::from_secs(3));
    let held: Vec<_> = (0..2).map(|_| client.say_hello_bidirectional_streaming_opt(opt.clone()).unwrap()).collect();
    assert!(server.tracker().wait_started(2, Duration::from_secs(10)));
    // A third stream on the same connection waits for a free slot; its
    // deadline ends it with a status, never a hang.
    let (_sink, mut receiver) = client.say_hello_bidirectional_streaming_opt(opt).unwrap();
    let err = block_on(receiver.try_next()).unwrap_err();
    assert_eq!(code_of(err).0, RpcStatusCode::DEADLINE_EXCEEDED);
    drop(held);
    assert_served(&server);
}

#[test]
fn a_server_out_of_file_descriptors_recovers_once_the_idle_connections_close() {
    let _alone = crate::alone();
    // The server binary under a 256-descriptor limit, then 400 idle
    // connections: the shape of CVE-2023-4785 (accept failing with EMFILE).
    let mut command = std::process::Command::new("sh");
    command.args(["-c", "ulimit -n 256 && exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_server"), "--addr", "127.0.0.1:0"]);
    command.args(["--stream-interval", "0"]);
    let (mut server, addr) = crate::common::process::start_server_command(command);
    let idle: Vec<std::net::TcpStream> = (0..400)
        .filter_map(|_| std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).ok())
        .collect();
    assert!(idle.len() > 256, "only {} connections opened", idle.len());
    drop(idle);
    // Poll on the real outcome: calls until one succeeds, within a bound.
    let client = greet::client::Client::new(greet::client::connect(&addr), Duration::from_secs(1));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let recovered = loop {
        match block_on(client.say_hello()) {
            Ok(reply) => break reply,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "not serving 30 s after the connections closed: {e:?}")
            }
        }
    };
    assert_eq!(recovered, "Hello");
    assert_eq!(server.wait_exit(Duration::ZERO), None, "the server is still running");
}
