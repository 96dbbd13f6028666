//! Proxyless: our client dials `xds:///greet` and the gRPC C core's own xDS
//! resolver (bootstrap from `GRPC_XDS_BOOTSTRAP`) gets the replicas from a
//! control plane, with no proxy in the path. The control plane is
//! `tests/xds/controlplane` (on github.com/envoyproxy/go-control-plane
//! v0.14.0), built with the Go toolchain through the Go module proxy and
//! build cache; it serves the endpoints of a file (one line per cluster) and
//! rereads it on SIGHUP; by its flags the route splits calls over clusters
//! by weight (`-weights`) and a fault filter aborts some (`-abort-percent`).
//! `tests/xds/client` is grpc-go's own xDS client, for a cross-check.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::go_build;
use crate::common::process::{Process, ServerProcess};

/// Replicas, the endpoints file naming them, the control plane serving it
/// and the bootstrap a client reads to find the control plane; all in one
/// temp dir, every process stopped on drop.
struct Mesh {
    replicas: Vec<ServerProcess>,
    endpoints: PathBuf,
    control_plane: Process,
    bootstrap: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mesh {
    /// Starts one replica per id of `clusters` (each inner list one
    /// cluster, one line of the endpoints file) and the control plane with
    /// `flags`; `replicas` are in the order of their ids.
    fn start(clusters: &[&[&str]], flags: &[&str]) -> Mesh {
        let replicas: Vec<ServerProcess> =
            clusters.iter().flat_map(|ids| ids.iter()).map(|id| ServerProcess::start(id, &[])).collect();
        let dir = tempfile::tempdir().unwrap();
        let endpoints = dir.path().join("endpoints");
        let mut addrs = replicas.iter().map(|r| r.addr.as_str());
        let lines: Vec<String> =
            clusters.iter().map(|ids| addrs.by_ref().take(ids.len()).collect::<Vec<_>>().join(",")).collect();
        std::fs::write(&endpoints, lines.join("\n")).unwrap();

        let mut command = Command::new(go_build("tests/xds/controlplane", ".", "xds-controlplane"));
        command.arg("-endpoints-file").arg(&endpoints).args([
            "-addr",
            "127.0.0.1:0",
            "-name",
            "greet",
            "-node",
            "greet-client",
        ]);
        command.args(flags);
        let control_plane = Process::spawn(command);
        let line = control_plane.wait_for_line("listening on ", Duration::from_secs(20));
        let addr = line.rsplit_once("listening on ").unwrap().1.trim().to_string();

        // What an xDS client reads (`GRPC_XDS_BOOTSTRAP`): the control
        // plane's address and this client's node id.
        let bootstrap = dir.path().join("bootstrap.json");
        let text = serde_json::json!({
            "xds_servers": [{"server_uri": addr, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
            "node": {"id": "greet-client"},
        });
        std::fs::write(&bootstrap, text.to_string()).unwrap();
        Mesh { replicas, endpoints, control_plane, bootstrap, _dir: dir }
    }

    /// The control plane names only `addrs` from now on (one cluster); waits
    /// until it has set the new version.
    fn name_only(&mut self, addrs: &str) {
        std::fs::write(&self.endpoints, addrs).unwrap();
        self.control_plane.signal("HUP");
        self.control_plane.wait_for_line("version 2:", Duration::from_secs(10));
    }

    /// `client --addr xds:///greet load --calls N --json` (the route has no
    /// retry policy, so a call is tried once): whether
    /// it exited 0 (no call failed) and its JSON summary.
    fn load(&self, calls: u32) -> (bool, Value) {
        self.spawn_load(&["--calls", &calls.to_string(), "--concurrency", "8"]).summary()
    }

    /// `client --addr xds:///greet load ARGS --json` started in the
    /// background, its output piped (read it with [`finish`]).
    fn spawn_load(&self, args: &[&str]) -> Reaped {
        Reaped(
            Command::new(env!("CARGO_BIN_EXE_client"))
                .args(["--addr", "xds:///greet", "--timeout", "10s", "load", "--json"])
                .args(args)
                .env("GRPC_XDS_BOOTSTRAP", &self.bootstrap)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("client runs"),
        )
    }

    /// [`Mesh::load`] that every call must pass.
    fn load_ok(&self, calls: u32) -> Value {
        let (ok, summary) = self.load(calls);
        assert!(ok && summary["ok"] == calls, "client through xDS: {summary}");
        summary
    }
}

fn served(summary: &Value, instance: &str) -> u64 {
    summary["instances"][instance].as_u64().unwrap_or(0)
}

#[test]
fn a_proxyless_client_follows_the_replicas_an_xds_control_plane_names() {
    let mut mesh = Mesh::start(&[&["r1", "r2"]], &[]);

    // Round robin (the Cluster's lb_policy) over both replicas.
    let both = mesh.load_ok(1000);
    for id in ["r1", "r2"] {
        assert!(served(&both, id) >= 300, "{id} served {} of 1000 through xDS: {both}", served(&both, id));
    }

    // The control plane drops r1: new clients send it nothing.
    let r2 = mesh.replicas[1].addr.clone();
    mesh.name_only(&r2);
    let one = mesh.load_ok(500);
    assert_eq!(served(&one, "r2"), 500, "only r2 is named now: {one}");
}

#[test]
fn xds_round_robin_spreads_calls_evenly_over_three_replicas() {
    let mesh = Mesh::start(&[&["r1", "r2", "r3"]], &[]);
    let summary = mesh.load_ok(3000);
    println!("xDS round robin over 3 replicas: {}", summary["instances"]);
    for id in ["r1", "r2", "r3"] {
        let n = served(&summary, id);
        assert!((850..=1150).contains(&n), "{id} served {n} of 3000, not 1000 +- 15%: {summary}");
    }
}

#[test]
fn an_xds_route_weighted_80_20_splits_calls_80_20_between_two_clusters() {
    // Cluster 1 holds r1 and r2 (round robin inside it), cluster 2 holds r3.
    // Without the weights the same three replicas get a third each
    // (`xds_round_robin_spreads_calls_evenly_over_three_replicas`).
    let mesh = Mesh::start(&[&["r1", "r2"], &["r3"]], &["-weights", "80,20"]);
    let summary = mesh.load_ok(2000);
    let first = served(&summary, "r1") + served(&summary, "r2");
    let second = served(&summary, "r3");
    println!("xDS weighted 80/20: cluster 1 {first}, cluster 2 {second} of 2000: {}", summary["instances"]);
    // 80% +- 5 points of 2,000 calls (a binomial standard deviation is 18 calls).
    assert!((1500..=1700).contains(&first), "cluster 1 (r1, r2) took {first} of 2000, not 80% +- 5: {summary}");
    assert!((300..=500).contains(&second), "cluster 2 (r3) took {second} of 2000, not 20% +- 5: {summary}");
    for id in ["r1", "r2"] {
        assert!(served(&summary, id) >= first * 2 / 5, "round robin inside cluster 1 skipped {id}: {summary}");
    }
}

/// 1,000 calls through xDS to r1 and r2, the control plane started with
/// `flags`: whether the client exited 0, its summary, and the SayHello calls
/// the replicas say they handled.
fn load_with_control_plane_flags(flags: &[&str]) -> (bool, Value, u64) {
    let mesh = Mesh::start(&[&["r1", "r2"]], flags);
    let (ok, summary) = mesh.load(1000);
    // A replica counts a call once it has sent the answer: wait (a bounded
    // while) for its count to reach the calls the client saw answered.
    let answered = summary["ok"].as_u64().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let handled = mesh.replicas.iter().map(say_hello_handled).sum();
        if handled >= answered || Instant::now() >= deadline {
            return (ok, summary, handled);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_xds_fault_filter_aborting_50_percent_fails_about_half_the_calls_with_unavailable() {
    let (ok, summary, handled) = load_with_control_plane_flags(&["-abort-percent", "50"]);
    println!("xDS fault abort 50%: {}; the replicas handled {handled}", summary["codes"]);
    assert!(!ok, "the client reports the failed calls: {summary}");
    let unavailable = summary["codes"]["UNAVAILABLE"].as_u64().unwrap_or(0);
    let answered = summary["ok"].as_u64().unwrap_or(0);
    assert_eq!(unavailable + answered, 1000, "every call either passed or was aborted with UNAVAILABLE: {summary}");
    // Binomial(1000, 0.5): a standard deviation of 16 calls; 400-600 is +- 6 of them.
    assert!((400..=600).contains(&unavailable), "{unavailable} of 1000 aborted, not about half: {summary}");
    // The client's filter aborts them: they never reach a replica.
    assert_eq!(handled, answered, "the replicas handled only the calls that passed: {summary}");
}

#[test]
fn without_the_fault_filter_the_same_xds_route_fails_no_call() {
    let (ok, summary, handled) = load_with_control_plane_flags(&[]);
    assert!(ok && summary["ok"] == 1000 && summary["failed"] == 0, "{summary}");
    assert_eq!(handled, 1000, "{summary}");
}

#[test]
fn grpc_gos_own_xds_client_reaches_every_replica_the_control_plane_names() {
    let mesh = Mesh::start(&[&["r1", "r2", "r3"]], &[]);
    let client = go_build("tests/xds/client", ".", "xds-client");
    let out = Command::new(client)
        .args(["-target", "xds:///greet", "-calls", "900", "-concurrency", "8", "-timeout", "10s"])
        .env("GRPC_XDS_BOOTSTRAP", &mesh.bootstrap)
        .output()
        .expect("the grpc-go xDS client runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}; stderr: {stderr}", String::from_utf8_lossy(&out.stdout)));
    println!("grpc-go through xDS: {summary}");
    assert!(out.status.success(), "grpc-go's xDS client: {summary}; stderr: {stderr}");
    assert_eq!(summary["ok"], 900, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    for id in ["r1", "r2", "r3"] {
        assert!(served(&summary, id) >= 200, "grpc-go sent {id} {} of 900: {summary}", served(&summary, id));
    }
}

#[test]
fn the_xds_control_plane_refuses_bad_flags_and_files_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let endpoints = dir.path().join("endpoints");
    std::fs::write(&endpoints, "127.0.0.1:1\n127.0.0.1:2").unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["-weights", "80"], "a split needs at least two weights"),
        (&["-weights", "80,x"], "\"x\" is not a positive integer"),
        (&["-weights", "50,30,20"], "2 line(s) of endpoints for 3 weights: one line per cluster"),
        (&["-abort-percent", "150"], "-abort-percent 150: must be between 0 and 100"),
        (&["-retries", "11"], "-retries 11: must be between 0 and 10"),
    ];
    for (flags, error) in cases {
        let mut command = Command::new(go_build("tests/xds/controlplane", ".", "xds-controlplane"));
        command.arg("-endpoints-file").arg(&endpoints).args(flags);
        let mut process = Process::spawn(command);
        process.wait_for_line(error, Duration::from_secs(10));
        let status = process.wait_exit(Duration::from_secs(10)).expect("it exits");
        assert_eq!(status.code(), Some(1), "{flags:?}: {status}");
    }

    // A file it cannot use on SIGHUP is refused; it keeps serving the last one.
    let mut mesh = Mesh::start(&[&["r1"]], &[]);
    std::fs::write(&mesh.endpoints, "127.0.0.1:notaport").unwrap();
    mesh.control_plane.signal("HUP");
    mesh.control_plane.wait_for_line("version 2 rejected: line 1: \"127.0.0.1:notaport\"", Duration::from_secs(10));
    let summary = mesh.load_ok(100);
    assert_eq!(served(&summary, "r1"), 100, "{summary}");
}

/// SayHello calls a replica has answered, from its admin port's `/metrics`.
fn say_hello_handled(replica: &ServerProcess) -> u64 {
    replica.counter("grpc_server_handled_total", &["grpc_method=\"SayHello\""]) as u64
}

/// Waits for `child` (its stdout and stderr piped); both read whole.
fn finish(child: &mut std::process::Child) -> (ExitStatus, String, String) {
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let errors = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut stdout = String::new();
    child.stdout.take().expect("stdout is piped").read_to_string(&mut stdout).unwrap();
    let status = child.wait().expect("the client exits");
    (status, stdout, errors.join().unwrap())
}

/// A child process killed and reaped on drop (a test that panics mid-load
/// leaves nothing running).
struct Reaped(std::process::Child);

impl Reaped {
    /// Waits for a `client load --json` to end: whether it exited 0 (no
    /// call failed) and its JSON summary.
    fn summary(mut self) -> (bool, Value) {
        let (status, stdout, stderr) = finish(&mut self.0);
        let summary = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout} {stderr}"));
        (status.success(), summary)
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_running_proxyless_client_moves_off_a_replica_the_control_plane_drops() {
    let mut mesh = Mesh::start(&[&["r1", "r2"]], &[]);

    // 4,000 calls at 500/s (8 s) over one channel, each tried once (the
    // route has no retry policy).
    let client = mesh.spawn_load(&["--calls", "4000", "--concurrency", "8", "--rps", "500"]);
    // Both replicas serve it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while say_hello_handled(&mesh.replicas[0]) < 200 || say_hello_handled(&mesh.replicas[1]) < 200 {
        assert!(Instant::now() < deadline, "the load did not reach both replicas");
        thread::sleep(Duration::from_millis(20));
    }

    // Mid-load, the control plane drops r1.
    let r2 = mesh.replicas[1].addr.clone();
    mesh.name_only(&r2);
    let r1_at_update = say_hello_handled(&mesh.replicas[0]);

    let (ok, summary) = client.summary();
    assert!(ok, "client through xDS: {summary}");
    let r1_after = say_hello_handled(&mesh.replicas[0]) - r1_at_update;
    println!("xDS update mid-load: {summary}; r1 answered {r1_after} call(s) after the control plane dropped it");
    assert_eq!(summary["ok"], 4000, "no call fails while the client moves off r1: {summary}");
    // The rest of the load (several seconds at 500/s) goes to r2; r1 only
    // answers what was in flight or sent before the update arrived.
    assert!(r1_after < 50, "r1 answered {r1_after} calls after the update: {summary}");
    assert!(served(&summary, "r2") > served(&summary, "r1") + 1000, "r2 took over: {summary}");
}

/// 20,000 calls through `xds:///greet` over 3 replicas, 32 in flight;
/// r2 is SIGKILLed once a quarter of them are answered. The control plane
/// runs with `flags`.
fn load_through_a_kill(flags: &[&str]) -> Value {
    let mut mesh = Mesh::start(&[&["r1", "r2", "r3"]], flags);
    let client = mesh.spawn_load(&["--calls", "20000", "--concurrency", "32"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while mesh.replicas.iter().map(say_hello_handled).sum::<u64>() < 5000 {
        assert!(Instant::now() < deadline, "the load did not reach 5,000 calls");
        thread::sleep(Duration::from_millis(5));
    }
    mesh.replicas[1].process.kill();
    let (_, summary) = client.summary();
    println!("xDS, control plane {flags:?}, r2 killed mid-load: {summary}");
    assert!(served(&summary, "r2") > 0, "r2 served calls before it died: {summary}");
    assert_eq!(summary["calls"], 20000, "{summary}");
    summary
}

#[test]
fn an_xds_route_retry_policy_carries_every_call_through_a_replica_killed_mid_load() {
    let summary = load_through_a_kill(&["-retries", "3"]);
    assert_eq!(summary["ok"], 20000, "the route retries what the dead replica never answered: {summary}");
}

/// Runs of `load_through_a_kill` without a retry policy until one fails
/// calls. Whether a SIGKILL finds calls in flight on r2 depends on timing:
/// one CI dry run (2026-12-06) saw a run whose 20,000 calls all succeeded
/// (r2 had answered 1,665), so one run with failures in three shows it.
const KILL_ATTEMPTS: usize = 3;

#[test]
fn without_a_retry_policy_on_the_xds_route_the_same_kill_fails_calls() {
    let mut runs = Vec::new();
    for _ in 0..KILL_ATTEMPTS {
        let summary = load_through_a_kill(&[]);
        let codes = summary["codes"].as_object().expect("codes");
        assert!(codes.keys().all(|c| c == "OK" || c == "UNAVAILABLE"), "{summary}");
        if summary["failed"].as_u64().unwrap_or(0) > 0 {
            return;
        }
        runs.push(summary);
    }
    panic!("the calls in flight on the killed replica never failed in {KILL_ATTEMPTS} runs: {runs:#?}");
}
