//! Scale-out and fault tolerance, each proven against the C core's own
//! machinery and real processes: round-robin spread, pick_first backups,
//! retries through a SIGKILL (and failures without them), a graceful drain
//! under round_robin with health checking, and connection pooling.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::common::process::{http_get_status, ServerProcess};
use crate::common::start_instance;
use futures::executor::block_on;
use futures::prelude::*;
use greet::client::load::{self, LoadConfig, Summary, Workload};
use greet::client::{half_close, Connector, LbPolicy};
use greet::proto::greet::HelloRequest;
use greet::proto::greet_grpc::GreetServiceClient;
use greet::proto::health::health_check_response::ServingStatus;
use greet::proto::health::HealthCheckRequest;
use greet::proto::health_grpc::HealthClient;
use greet::server::RunningServer;
use grpcio::{CallOption, WriteFlags};

fn unary_load(calls: usize, concurrency: usize) -> LoadConfig {
    LoadConfig {
        workload: Workload::Unary { calls },
        concurrency,
        rps: None,
        timeout: Duration::from_secs(10),
        headers: None,
    }
}

fn run_load(connector: &Connector, config: &LoadConfig) -> Summary {
    block_on(load::run(&connector.pool(), config, &|_, _| {}))
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn round_robin_spreads_calls_evenly_over_three_servers() {
    let servers: Vec<RunningServer> = ["a", "b", "c"].into_iter().map(start_instance).collect();
    let addrs: Vec<&str> = servers.iter().map(|s| s.addr()).collect();
    let connector = Connector::new(&addrs.join(",")).unwrap().lb(LbPolicy::RoundRobin);
    let summary = run_load(&connector, &unary_load(3000, 8));
    assert_eq!(summary.codes, counts(&[("OK", 3000)]), "{}", summary.to_text());
    for instance in ["a", "b", "c"] {
        let served = summary.instances.get(instance).copied().unwrap_or(0);
        assert!(
            (850..=1150).contains(&served),
            "{instance} served {served} of 3000, want 1000 ± 15%: {:?}",
            summary.instances
        );
    }
}

#[test]
fn pick_first_stays_on_the_first_server_until_it_dies_then_uses_the_backup() {
    let first = start_instance("first");
    let backup = start_instance("backup");
    let connector = Connector::new(&format!("{},{}", first.addr(), backup.addr())).unwrap();
    let summary = run_load(&connector, &unary_load(300, 4));
    assert_eq!(summary.instances, counts(&[("first", 300)]), "{}", summary.to_text());

    drop(first);
    let summary = run_load(&connector, &unary_load(300, 4));
    assert_eq!(summary.codes, counts(&[("OK", 300)]), "no call fails over to the backup: {}", summary.to_text());
    assert_eq!(summary.instances, counts(&[("backup", 300)]));
}

/// 20,000 unary calls over 3 replicas (round_robin); one replica is
/// SIGKILLed a third of the way in. Returns the summary and the victim's id.
fn load_through_a_kill(retries: u32) -> Summary {
    let replicas: Vec<ServerProcess> = ["r1", "r2", "r3"].iter().map(|id| ServerProcess::start(id, &[])).collect();
    let addrs: Vec<&str> = replicas.iter().map(|r| r.addr.as_str()).collect();
    let connector = Connector::new(&addrs.join(",")).unwrap().lb(LbPolicy::RoundRobin).retries(retries);
    let mut replicas = replicas;
    // The others stay alive (owned here) until the load is over.
    let victim = Mutex::new(replicas.remove(1));
    let killed = AtomicBool::new(false);
    let calls = 20_000;
    let summary = block_on(load::run(&connector.pool(), &unary_load(calls, 32), &|done, _| {
        if done as usize == calls / 3 && !killed.swap(true, Ordering::SeqCst) {
            victim.lock().unwrap().process.kill();
        }
    }));
    assert!(killed.load(Ordering::SeqCst));
    assert!(summary.instances.get("r2").copied().unwrap_or(0) > 0, "the victim served calls before it died");
    println!("retries {retries}: {}", summary.to_text());
    summary
}

#[test]
fn retries_carry_every_call_through_a_replica_killed_mid_load() {
    let summary = load_through_a_kill(3);
    assert_eq!(summary.codes, counts(&[("OK", 20_000)]), "{}", summary.to_text());
}

#[test]
fn without_retries_the_same_kill_fails_calls() {
    let summary = load_through_a_kill(0);
    assert!(
        summary.failed() > 0,
        "with retries off, the calls in flight on the killed replica fail: {}",
        summary.to_text()
    );
    assert_eq!(summary.ok() + summary.failed(), 20_000);
    assert!(summary.codes.keys().all(|code| code == "OK" || code == "UNAVAILABLE"), "{:?}", summary.codes);
}

fn bidi_round_trip(
    sink: &mut grpcio::ClientDuplexSender<HelloRequest>,
    receiver: &mut grpcio::ClientDuplexReceiver<greet::proto::greet::HelloResponse>,
    name: &str,
) -> String {
    block_on(async {
        sink.send((HelloRequest { name: name.to_string(), ..Default::default() }, WriteFlags::default())).await?;
        receiver.try_next().await.map(|m| m.expect("an answer").message)
    })
    .expect("the stream answers")
}

fn health_of(channel: &grpcio::Channel) -> ServingStatus {
    let client = HealthClient::new(channel.clone());
    let opt = CallOption::default().timeout(Duration::from_secs(5));
    client.check_opt(&HealthCheckRequest::default(), opt).expect("health answers").status.enum_value_or_default()
}

#[test]
fn a_drained_replica_finishes_its_streams_while_round_robin_moves_to_the_other() {
    let mut draining = ServerProcess::start("draining", &["--drain-delay", "3s", "--grace", "10s"]);
    let staying = ServerProcess::start("staying", &[]);

    // A round_robin client over both, health checking them; it uses both.
    let balanced = Connector::new(&format!("{},{}", draining.addr, staying.addr)).unwrap().lb(LbPolicy::RoundRobin);
    let pool = balanced.pool();
    let before = block_on(load::run(&pool, &unary_load(200, 4), &|_, _| {}));
    assert_eq!(before.ok(), 200);
    assert!(before.instances.len() == 2, "both replicas serve before the drain: {:?}", before.instances);

    // 50 bidi streams open on the replica about to drain.
    let direct = Connector::new(&draining.addr).unwrap().retries(0).channel();
    let stub = GreetServiceClient::new(direct.clone());
    let mut streams: Vec<_> = (0..50)
        .map(|i| {
            let opt = CallOption::default().timeout(Duration::from_secs(30));
            let (mut sink, mut receiver) = stub.say_hello_bidirectional_streaming_opt(opt).unwrap();
            assert_eq!(bidi_round_trip(&mut sink, &mut receiver, &format!("before-{i}")), format!("Hello before-{i}"));
            (sink, receiver)
        })
        .collect();
    assert_eq!(health_of(&direct), ServingStatus::SERVING);
    assert_eq!(http_get_status(&draining.admin, "/healthz"), 200);

    let signalled = Instant::now();
    draining.process.signal("TERM");
    draining.process.wait_for_line("draining: NOT_SERVING", Duration::from_secs(5));
    assert_eq!(health_of(&direct), ServingStatus::NOT_SERVING, "gRPC health says NOT_SERVING during the drain");
    assert_eq!(http_get_status(&draining.admin, "/healthz"), 503, "/healthz says 503 during the drain");

    // The client's health watch takes the draining replica out: new calls go
    // to the other one while the draining replica still serves (drain delay).
    let moved = Instant::now();
    let mut streak = 0;
    while streak < 50 {
        assert!(moved.elapsed() < Duration::from_secs(3), "round_robin did not leave the draining replica");
        let one = block_on(load::run(&pool, &unary_load(1, 1), &|_, _| {}));
        assert_eq!(one.ok(), 1, "no call fails during the drain");
        streak = if one.instances.contains_key("staying") { streak + 1 } else { 0 };
    }

    // Once it stops accepting calls, the streams it has still complete.
    draining.process.wait_for_line("draining: no new calls", Duration::from_secs(10));
    for (i, (sink, receiver)) in streams.iter_mut().enumerate() {
        assert_eq!(bidi_round_trip(sink, receiver, &format!("after-{i}")), format!("Hello after-{i}"));
        block_on(half_close(sink)).unwrap();
        assert!(block_on(receiver.try_next()).unwrap().is_none(), "stream {i} ends OK");
    }
    let status = draining.process.wait_exit(Duration::from_secs(15)).expect("the drained replica exits");
    assert!(status.success(), "exit status {status:?}");
    assert!(signalled.elapsed() < Duration::from_secs(3 + 10), "it exits within drain delay + grace");
}

/// Server-side ESTABLISHED TCP connections on `port` (from /proc/net/tcp{,6}).
fn established_to(port: u16) -> usize {
    let local = format!(":{port:04X} ");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|text| text.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is field 1, state field 3 ("01" = ESTABLISHED).
            fields.len() > 3 && format!("{} ", fields[1]).ends_with(&local) && fields[3] == "01"
        })
        .count()
}

#[test]
fn a_pool_of_four_opens_four_connections_and_one_opens_one() {
    for connections in [4, 1] {
        let server = start_instance("pooled");
        let pool = Connector::new(server.addr()).unwrap().connections(connections).pool();
        let summary = block_on(load::run(&pool, &unary_load(40, 4), &|_, _| {}));
        assert_eq!(summary.ok(), 40);
        assert_eq!(
            established_to(server.port()),
            connections,
            "server-side connections with --connections {connections}"
        );
    }
}
