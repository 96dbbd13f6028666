//! HTTP/2 rapid reset (CVE-2023-44487) against the supported deployment: a
//! replica behind HAProxy with the shipped `deploy/haproxy/haproxy.cfg`. The
//! flood (`scripts/h2flood.py`, Debian's python3-h2) is bounded: 4
//! connections x 5 s, from 127.0.0.2, while a well-behaved client calls
//! SayHello at 500 calls/s from 127.0.0.1. The bare server falls to a much
//! smaller flood: the gRPC C core 1.56.2 that grpcio 0.13 bundles predates
//! the core's fix, which is why the proxy is the supported deployment.

#[path = "it/common/mod.rs"]
mod common;

use std::process::Command;
use std::sync::Mutex;

use common::process::{repo_root, Backend, Haproxy, ServerProcess};
use serde_json::Value;

/// One flooding test at a time, from before its servers start until after
/// they stop: two at once would measure each other.
static FLOODS: Mutex<()> = Mutex::new(());

fn one_flood_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    // A test that panicked while holding it left nothing behind to protect.
    FLOODS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the flood against `target`, sampling the RSS of `server_pid`; its JSON report.
fn flood(target: &str, server_pid: u32, connections: u32, seconds: u32) -> Value {
    let out = Command::new("/usr/bin/python3")
        .arg(repo_root().join("scripts/h2flood.py"))
        .args(["--target", target, "--attack", "rapid-reset", "--after", "2"])
        .args(["--connections", &connections.to_string(), "--seconds", &seconds.to_string()])
        .args(["--server-pid", &server_pid.to_string()])
        .output()
        .expect("/usr/bin/python3 runs (scripts/ensure-deps.sh installs python3-h2)");
    assert!(out.status.success(), "h2flood failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("h2flood prints one JSON object")
}

fn number(report: &Value, path: &[&str]) -> f64 {
    let mut v = report;
    for key in path {
        v = &v[*key];
    }
    v.as_f64().unwrap_or_else(|| panic!("{path:?} is not a number in {report}"))
}

/// Floods this many times at most. On this 2-core machine shared with other
/// work, a neighbour's build can make the client's calls miss their 1 s
/// deadline, and, starving HAProxy, let a burst of the flood through before
/// its rate limit acts (one flood in about ten took the replica past 64 MB).
/// So every flood must keep the replica far below what the bare server
/// reaches (600 MB to 5 GB), and one of three must meet the bar: at
/// least 99% of the calls OK and the replica under 64 MB. The p99 is printed,
/// not asserted: it ranged from 9 ms to over 1 s during floods under other
/// load (5-9 ms before them), HAProxy spending the CPU on the flood.
const ATTEMPTS: usize = 3;

#[test]
fn the_proxied_deployment_serves_a_well_behaved_client_through_a_rapid_reset_flood() {
    let _flood = one_flood_at_a_time();
    let mut misses = Vec::new();
    for _ in 0..ATTEMPTS {
        let replica = ServerProcess::start("r1", &[]);
        let proxy = Haproxy::start(&[Backend {
            name: "r1",
            addr: &replica.addr,
            admin_port: replica.admin_port(),
            backup: false,
        }]);
        let report = flood(&proxy.addr, replica.process.pid(), 4, 5);
        let streams = number(&report, &["flood", "streams_opened"]);
        assert!(streams > 50_000.0, "the flood was too weak to prove anything: {report}");
        let rss = number(&report, &["rss_mib", &replica.process.pid().to_string(), "peak"]);
        assert!(rss < 256.0, "the replica grew to {rss} MiB: {report}");
        let during = &report["probe"]["during"];
        let (ok_ratio, p99) = (number(during, &["ok_ratio"]), number(during, &["p99_ms"]));
        eprintln!(
            "during the flood: {ok_ratio} OK, p99 {p99} ms, replica {rss} MiB; before it: {}",
            report["probe"]["before"]
        );
        if ok_ratio >= 0.99 && rss < 64.0 {
            return;
        }
        misses.push((ok_ratio, rss));
    }
    panic!("(OK ratio, replica MiB) missed >= 0.99 and < 64 in every one of {ATTEMPTS} floods: {misses:?}");
}

#[test]
fn the_bare_server_falls_to_a_small_rapid_reset_flood() {
    // Kept as proof of why the proxy is needed: if a future core resists,
    // this fails and the README's Security section needs updating.
    let _flood = one_flood_at_a_time();
    let server = ServerProcess::start("bare", &[]);
    let report = flood(&server.addr, server.process.pid(), 1, 1);
    // It falls either way: its calls stop being answered (the backlog of
    // cancelled calls outlasts the flood), or it keeps the memory they took
    // (a weaker flood, on a busy machine, gets drained sooner).
    let ok_ratio = number(&report["probe"]["after"], &["ok_ratio"]);
    let rss = &report["rss_mib"][server.process.pid().to_string()];
    let (before, peak) = (number(rss, &["before"]), number(rss, &["peak"]));
    assert!(
        ok_ratio < 0.5 || peak > 10.0 * before,
        "the bare server served {ok_ratio} of the calls after the flood, at {peak} MiB (from {before}): {report}"
    );
}
