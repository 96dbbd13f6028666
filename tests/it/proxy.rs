//! The supported deployment: replicas behind HAProxy with the shipped config
//! (`deploy/haproxy/haproxy.cfg`). The official grpc-go greeter_client and our
//! load tool reach every replica through it, and a replica killed mid-load
//! costs no call once HAProxy's failover window has passed.

use futures::executor::block_on;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::common::go_build;
use crate::common::process::{Backend, Haproxy, ServerProcess};
use greet::client::load::{self, LoadConfig, Workload};
use greet::client::Connector;

fn backends(replicas: &[ServerProcess]) -> Vec<Backend<'_>> {
    replicas
        .iter()
        .enumerate()
        .map(|(i, r)| Backend { name: ["r1", "r2", "r3"][i], addr: &r.addr, admin_port: r.admin_port(), backup: false })
        .collect()
}

/// Builds a program of the pinned grpc-go examples module (tests/interop/go).
pub(crate) fn go_program(package: &str, name: &str) -> PathBuf {
    go_build("tests/interop/go", package, name)
}

#[test]
fn the_official_greeter_client_and_our_load_reach_both_replicas_through_haproxy() {
    let replicas: Vec<ServerProcess> = ["r1", "r2"].iter().map(|id| ServerProcess::start(id, &[])).collect();
    let proxy = Haproxy::start(&backends(&replicas));

    let greeter_client = go_program("google.golang.org/grpc/examples/helloworld/greeter_client", "greeter_client");
    let output = Command::new(greeter_client)
        .arg(format!("-addr={}", proxy.addr))
        .arg("-name=proxy")
        .output()
        .expect("greeter_client runs");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "greeter_client through HAProxy: {log}");
    assert!(log.contains("Greeting: Hello proxy"), "greeter_client output: {log}");

    let connector = Connector::new(&proxy.addr).unwrap();
    let config = LoadConfig {
        workload: Workload::Unary { calls: 2000 },
        concurrency: 8,
        rps: None,
        timeout: Duration::from_secs(10),
        headers: None,
    };
    let summary = block_on(load::run(&connector.pool(), &config, &|_, _| {}));
    assert_eq!(summary.ok(), 2000, "{}", summary.to_text());
    for id in ["r1", "r2"] {
        let served = summary.instances.get(id).copied().unwrap_or(0);
        assert!(served >= 500, "{id} served {served} of 2000 through HAProxy: {:?}", summary.instances);
    }
}

/// 10,000 calls at a fixed 2,000/s through HAProxy to 3 replicas; one is
/// SIGKILLed 2 s in. Returns (failures, how long after the kill the last one
/// happened, summary text).
fn kill_behind_haproxy(retries: u32, proxy_retries: bool) -> (u64, Option<Duration>, String) {
    let replicas: Vec<ServerProcess> = ["r1", "r2", "r3"].iter().map(|id| ServerProcess::start(id, &[])).collect();
    let proxy = Haproxy::start_edited(&backends(&replicas), |config| {
        if proxy_retries {
            return config;
        }
        let edited = config.replace("    retries 3\n", "    retries 0\n").replace("    retry-on ", "    # retry-on ");
        assert_ne!(edited, config, "the shipped config has the retry lines this test turns off");
        edited
    });
    let connector = Connector::new(&proxy.addr).unwrap().retries(retries);
    let mut replicas = replicas;
    // The others stay alive (owned here) until the load is over.
    let victim = Mutex::new(replicas.remove(1));
    let killed_at = Mutex::new(None::<Instant>);
    let last_failure = Mutex::new(None::<Instant>);
    let killed = AtomicBool::new(false);
    let calls = 10_000;
    let config = LoadConfig {
        workload: Workload::Unary { calls },
        concurrency: 32,
        rps: Some(2000.0),
        timeout: Duration::from_secs(10),
        headers: None,
    };
    let summary = block_on(load::run(&connector.pool(), &config, &|done, outcome| {
        if outcome.code != "OK" {
            *last_failure.lock().unwrap() = Some(Instant::now());
        }
        if done as usize == calls / 5 && !killed.swap(true, Ordering::SeqCst) {
            victim.lock().unwrap().process.kill();
            *killed_at.lock().unwrap() = Some(Instant::now());
        }
    }));
    let killed_at = killed_at.into_inner().unwrap().expect("the replica was killed");
    let window = last_failure.into_inner().unwrap().map(|t| t.saturating_duration_since(killed_at));
    let text = summary.to_text();
    println!(
        "through HAProxy (its retries {}), client retries {retries}, replica killed after {} calls: {text}; \
         last failure {window:?} after the kill",
        if proxy_retries { "on" } else { "off" },
        calls / 5
    );
    assert_eq!(summary.ok() + summary.failed(), calls as u64);
    (summary.failed(), window, text)
}

#[test]
fn a_replica_killed_behind_haproxy_costs_no_call_with_client_retries() {
    let (failed, window, text) = kill_behind_haproxy(3, true);
    assert_eq!(
        failed, 0,
        "with client retries, HAProxy's failover loses no call: {text}; last failure {window:?} after the kill"
    );
}

#[test]
fn behind_haproxy_without_client_retries_failures_stay_inside_the_failover_window() {
    let (_failed, window, text) = kill_behind_haproxy(0, true);
    // HAProxy retries connection failures itself (retry-on conn-failure
    // empty-response); calls in flight on the killed replica may still fail,
    // but only until its checks mark the replica down (fall 2 × inter 500 ms).
    if let Some(window) = window {
        assert!(
            window < Duration::from_secs(2),
            "a call failed {window:?} after the kill, past the failover window: {text}"
        );
    }
}

#[test]
fn with_haproxy_and_client_retries_off_the_same_kill_fails_calls() {
    let (failed, _window, text) = kill_behind_haproxy(0, false);
    assert!(failed > 0, "without HAProxy's retry-on and client retries, calls are lost: {text}");
}
