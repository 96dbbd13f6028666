//! Replicas behind Envoy with the shipped config (`deploy/envoy/envoy.yaml`),
//! the proxy beside HAProxy: the official grpc-go greeter_client and our load
//! tool reach every replica through it; a replica SIGKILLed mid-load costs no
//! call, with no retries in the client, because Envoy retries (and costs
//! calls with its retries off); a SIGTERMed replica leaves the rotation
//! through Envoy's gRPC health checks while it still serves (and stays in it
//! without them).

use futures::executor::block_on;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::envoy::Envoy;
use crate::common::process::ServerProcess;
use crate::proxy::go_program;
use greet::client::load::{self, LoadConfig, Summary, Workload};
use greet::client::Connector;

fn named(replicas: &[ServerProcess], names: &[&'static str]) -> Vec<(&'static str, String)> {
    names.iter().zip(replicas).map(|(name, r)| (*name, r.addr.clone())).collect()
}

fn refs<'a>(list: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    list.iter().map(|(n, a)| (*n, a.as_str())).collect()
}

fn paced(calls: usize, rps: f64) -> LoadConfig {
    LoadConfig {
        workload: Workload::Unary { calls },
        concurrency: 32,
        rps: Some(rps),
        timeout: Duration::from_secs(10),
        headers: None,
    }
}

#[test]
fn the_official_greeter_client_and_our_load_reach_both_replicas_through_envoy() {
    let names = ["r1", "r2"];
    let replicas: Vec<ServerProcess> = names.iter().map(|id| ServerProcess::start(id, &[])).collect();
    let proxy = Envoy::start(&refs(&named(&replicas, &names)));

    let greeter_client = go_program("google.golang.org/grpc/examples/helloworld/greeter_client", "greeter_client");
    let output = Command::new(greeter_client)
        .arg(format!("-addr={}", proxy.addr))
        .arg("-name=envoy")
        .output()
        .expect("greeter_client runs");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "greeter_client through Envoy: {log}");
    assert!(log.contains("Greeting: Hello envoy"), "greeter_client output: {log}");

    let connector = Connector::new(&proxy.addr).unwrap().retries(0);
    let config = LoadConfig { rps: None, concurrency: 8, ..paced(2000, 1.0) };
    let summary = block_on(load::run(&connector.pool(), &config, &|_, _| {}));
    assert_eq!(summary.ok(), 2000, "{}", summary.to_text());
    for id in names {
        let served = summary.instances.get(id).copied().unwrap_or(0);
        assert!(served >= 500, "{id} served {served} of 2000 through Envoy: {:?}", summary.instances);
    }
}

/// 10,000 calls at 2,000/s through Envoy to 3 replicas, no client retries;
/// one replica is SIGKILLed 2 s in. Returns (failures, summary text, Envoy's
/// count of retries).
fn kill_behind_envoy(envoy_retries: bool) -> (u64, String, u64) {
    let names = ["r1", "r2", "r3"];
    let mut replicas: Vec<ServerProcess> = names.iter().map(|id| ServerProcess::start(id, &[])).collect();
    let proxy = Envoy::start_edited(&refs(&named(&replicas, &names)), |config| {
        if envoy_retries {
            return config;
        }
        let edited = config.replace("num_retries: 3", "num_retries: 0");
        assert_ne!(edited, config, "the shipped config has the retry line this test turns off");
        edited
    });
    let connector = Connector::new(&proxy.addr).unwrap().retries(0);
    // The others stay alive (owned here) until the load is over.
    let victim = Mutex::new(replicas.remove(1));
    let killed = AtomicBool::new(false);
    let calls = 10_000;
    let summary = block_on(load::run(&connector.pool(), &paced(calls, 2000.0), &|done, _| {
        if done as usize == calls / 5 && !killed.swap(true, Ordering::SeqCst) {
            victim.lock().unwrap().process.kill();
        }
    }));
    assert!(killed.into_inner(), "the replica was killed");
    let text = summary.to_text();
    let retries = proxy.stat("cluster.greet_replicas.upstream_rq_retry");
    println!(
        "through Envoy (its retries {}), no client retries, replica killed after {} calls: {text}; \
         Envoy retried {retries} request(s)",
        if envoy_retries { "on" } else { "off" },
        calls / 5
    );
    assert_eq!(summary.ok() + summary.failed(), calls as u64);
    (summary.failed(), text, retries)
}

#[test]
fn a_replica_killed_behind_envoy_costs_no_call_without_client_retries() {
    let (failed, text, retries) = kill_behind_envoy(true);
    assert_eq!(failed, 0, "Envoy's retries carry every call through the kill: {text}");
    assert!(retries > 0, "the calls the dead replica had were retried by Envoy: {text}");
}

#[test]
fn with_envoy_retries_off_the_same_kill_fails_calls() {
    let (failed, text, retries) = kill_behind_envoy(false);
    assert!(failed > 0, "without Envoy's retries (and none in the client), calls are lost: {text}");
    assert_eq!(retries, 0, "num_retries 0: Envoy retried nothing");
}

/// What the drain of one of two replicas behind Envoy looked like.
struct Drain {
    summary: Summary,
    /// Calls the draining replica answered from 1.5 s after it reported
    /// NOT_SERVING (3 of Envoy's 500 ms checks) to the end of its drain delay.
    served_after_notice: u64,
    /// Whether Envoy flagged the draining replica as failing its active
    /// health check while the replica was still running.
    flagged_while_running: bool,
}

/// 7,000 calls at 1,000/s through Envoy to 2 replicas, no client retries;
/// 1 s in, one replica (`--drain-delay 4s --grace 5s`) gets SIGTERM.
fn drain_behind_envoy(health_checks: bool) -> Drain {
    let mut draining = ServerProcess::start("draining", &["--drain-delay", "4s", "--grace", "5s"]);
    let staying = ServerProcess::start("staying", &[]);
    let replicas = [("draining", draining.addr.clone()), ("staying", staying.addr.clone())];
    let proxy = Envoy::start_edited(&refs(&replicas), |config| {
        if health_checks {
            return config;
        }
        // Drop the cluster's health_checks block: its line and the deeper-indented ones after it.
        let mut out = String::new();
        let mut skipping = false;
        for line in config.lines() {
            skipping = line == "      health_checks:" || (skipping && line.starts_with("        "));
            if !skipping {
                out.push_str(line);
                out.push('\n');
            }
        }
        assert!(!out.contains("grpc_health_check"), "the health check is gone from the edited config");
        out
    });
    let connector = Connector::new(&proxy.addr).unwrap().retries(0);
    let pool = connector.pool();
    let done = AtomicU64::new(0);
    let window = Mutex::new(None::<(Instant, Instant)>);
    let served_after_notice = AtomicU64::new(0);
    let config = paced(7000, 1000.0);

    let (summary, flagged_while_running) = thread::scope(|scope| {
        let load = scope.spawn(|| {
            block_on(load::run(&pool, &config, &|n, outcome| {
                done.store(n, Ordering::SeqCst);
                if outcome.instance.as_deref() == Some("draining") {
                    if let Some((from, to)) = *window.lock().unwrap() {
                        let now = Instant::now();
                        if now >= from && now <= to {
                            served_after_notice.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            }))
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while done.load(Ordering::SeqCst) < 1000 {
            assert!(Instant::now() < deadline, "the load did not reach 1,000 calls");
            thread::sleep(Duration::from_millis(10));
        }
        let signalled = Instant::now();
        draining.process.signal("TERM");
        draining.process.wait_for_line("draining: NOT_SERVING", Duration::from_secs(5));
        let notice = Instant::now();
        *window.lock().unwrap() = Some((notice + Duration::from_millis(1500), signalled + Duration::from_secs(4)));
        // Envoy's view of the draining replica, until the drain delay ends.
        let mut flagged = false;
        while signalled.elapsed() < Duration::from_millis(3500) && !flagged {
            flagged = proxy.health_flags(&draining.addr).is_some_and(|f| f.contains("failed_active_hc"))
                && !draining.process.has_exited();
            thread::sleep(Duration::from_millis(50));
        }
        (load.join().expect("the load thread"), flagged)
    });
    let status = draining.process.wait_exit(Duration::from_secs(15)).expect("the drained replica exits");
    assert!(status.success(), "exit status {status:?}");
    println!(
        "drain behind Envoy (health checks {}): {}; served by the draining replica after the notice: {}; \
         flagged by Envoy while running: {flagged_while_running}",
        if health_checks { "on" } else { "off" },
        summary.to_text(),
        served_after_notice.load(Ordering::SeqCst)
    );
    Drain { summary, served_after_notice: served_after_notice.into_inner(), flagged_while_running }
}

#[test]
fn a_replica_drained_behind_envoy_leaves_by_grpc_health_with_no_failed_call() {
    let drain = drain_behind_envoy(true);
    let text = drain.summary.to_text();
    assert_eq!(drain.summary.failed(), 0, "no call fails during the drain: {text}");
    assert!(drain.flagged_while_running, "Envoy's gRPC health check took the replica out while it served: {text}");
    assert_eq!(
        drain.served_after_notice, 0,
        "once Envoy's checks saw NOT_SERVING, no call went to the draining replica: {text}"
    );
    assert!(drain.summary.instances.get("draining").copied().unwrap_or(0) > 0, "it served before the drain: {text}");
}

#[test]
fn without_envoys_health_check_the_draining_replica_stays_in_rotation() {
    let drain = drain_behind_envoy(false);
    let text = drain.summary.to_text();
    assert!(!drain.flagged_while_running, "no health check, no flag: {text}");
    assert!(
        drain.served_after_notice > 0,
        "without the gRPC health check Envoy keeps sending calls to the draining replica: {text}"
    );
}
