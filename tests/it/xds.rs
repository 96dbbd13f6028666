//! Proxyless: our client dials `xds:///greet` and the gRPC C core's own xDS
//! resolver (bootstrap from `GRPC_XDS_BOOTSTRAP`) gets the replicas from a
//! control plane, with no proxy in the path. The control plane is
//! `tests/xds/controlplane` (on github.com/envoyproxy/go-control-plane
//! v0.14.0), built with the Go toolchain through the Go module proxy and
//! build cache; it serves the endpoints of a file and rereads it on SIGHUP.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::process::{http_get, repo_root, Process, ServerProcess};

fn control_plane_binary() -> PathBuf {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go-programs").join("xds-controlplane");
    let go = ["/usr/local/go/bin/go", "/usr/bin/go"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("Go is installed (/usr/local/go/bin/go): it builds the xDS control plane");
    let status = Command::new(go)
        .args(["build", "-buildvcs=false", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(repo_root().join("tests/xds/controlplane"))
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .status()
        .expect("go runs");
    assert!(status.success(), "go build tests/xds/controlplane failed");
    out
}

/// The control plane serving the endpoints in `file`; returns it and its address.
fn start_control_plane(file: &Path) -> (Process, String) {
    let mut command = Command::new(control_plane_binary());
    command.arg("-endpoints-file").arg(file).args(["-addr", "127.0.0.1:0", "-name", "greet", "-node", "greet-client"]);
    let process = Process::spawn(command);
    let line = process.wait_for_line("listening on ", Duration::from_secs(20));
    let addr = line.rsplit_once("listening on ").unwrap().1.trim().to_string();
    (process, addr)
}

/// What the C core's xDS client reads (`GRPC_XDS_BOOTSTRAP`): the control
/// plane's address and this client's node id.
fn write_bootstrap(dir: &Path, control_plane: &str) -> PathBuf {
    let bootstrap = dir.join("bootstrap.json");
    let text = serde_json::json!({
        "xds_servers": [{"server_uri": control_plane, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
        "node": {"id": "greet-client"},
    });
    std::fs::write(&bootstrap, text.to_string()).unwrap();
    bootstrap
}

/// `client --addr xds:///greet load --calls N --json` with the bootstrap
/// naming the control plane at `control_plane`; its JSON summary.
fn load_through_xds(bootstrap: &Path, calls: u32) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_client"))
        .args(["--addr", "xds:///greet", "--retries", "0", "--timeout", "10s"])
        .args(["load", "--calls", &calls.to_string(), "--concurrency", "8", "--json"])
        .env("GRPC_XDS_BOOTSTRAP", bootstrap)
        .output()
        .expect("client runs");
    assert!(out.status.success(), "client through xDS: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn served(summary: &Value, instance: &str) -> u64 {
    summary["instances"][instance].as_u64().unwrap_or(0)
}

#[test]
fn a_proxyless_client_follows_the_replicas_an_xds_control_plane_names() {
    let r1 = ServerProcess::start("r1", &[]);
    let r2 = ServerProcess::start("r2", &[]);
    let dir = tempfile::tempdir().unwrap();
    let endpoints = dir.path().join("endpoints");
    std::fs::write(&endpoints, format!("{},{}", r1.addr, r2.addr)).unwrap();
    let (mut control_plane, addr) = start_control_plane(&endpoints);

    let bootstrap = write_bootstrap(dir.path(), &addr);

    // Round robin (the Cluster's lb_policy) over both replicas.
    let both = load_through_xds(&bootstrap, 1000);
    assert_eq!(both["ok"], 1000, "{both}");
    for id in ["r1", "r2"] {
        assert!(served(&both, id) >= 300, "{id} served {} of 1000 through xDS: {both}", served(&both, id));
    }

    // The control plane drops r1: new clients send it nothing.
    std::fs::write(&endpoints, r2.addr.clone()).unwrap();
    control_plane.signal("HUP");
    control_plane.wait_for_line("version 2:", Duration::from_secs(10));
    let one = load_through_xds(&bootstrap, 500);
    assert_eq!(one["ok"], 500, "{one}");
    assert_eq!(served(&one, "r2"), 500, "only r2 is named now: {one}");
}

/// SayHello calls a replica has answered, from its admin port's `/metrics`.
fn say_hello_handled(replica: &ServerProcess) -> u64 {
    let (_, metrics) = http_get(&replica.admin, "/metrics");
    metrics
        .lines()
        .filter(|l| l.starts_with("grpc_server_handled_total{") && l.contains("grpc_method=\"SayHello\""))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, n)| n.parse::<u64>().ok()))
        .sum()
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

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_running_proxyless_client_moves_off_a_replica_the_control_plane_drops() {
    let r1 = ServerProcess::start("r1", &[]);
    let r2 = ServerProcess::start("r2", &[]);
    let dir = tempfile::tempdir().unwrap();
    let endpoints = dir.path().join("endpoints");
    std::fs::write(&endpoints, format!("{},{}", r1.addr, r2.addr)).unwrap();
    let (mut control_plane, addr) = start_control_plane(&endpoints);
    let bootstrap = write_bootstrap(dir.path(), &addr);

    // 4,000 calls at 500/s (8 s), no client retries, over one channel.
    let mut client = Reaped(
        Command::new(env!("CARGO_BIN_EXE_client"))
            .args(["--addr", "xds:///greet", "--retries", "0", "--timeout", "10s"])
            .args(["load", "--calls", "4000", "--concurrency", "8", "--rps", "500", "--json"])
            .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("client runs"),
    );
    // Both replicas serve it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while say_hello_handled(&r1) < 200 || say_hello_handled(&r2) < 200 {
        assert!(Instant::now() < deadline, "the load did not reach both replicas");
        thread::sleep(Duration::from_millis(20));
    }

    // Mid-load, the control plane drops r1.
    std::fs::write(&endpoints, r2.addr.clone()).unwrap();
    control_plane.signal("HUP");
    control_plane.wait_for_line("version 2:", Duration::from_secs(10));
    let r1_at_update = say_hello_handled(&r1);

    let (status, stdout, stderr) = finish(&mut client.0);
    assert!(status.success(), "client through xDS: {stderr}");
    let summary: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let r1_after = say_hello_handled(&r1) - r1_at_update;
    println!("xDS update mid-load: {summary}; r1 answered {r1_after} call(s) after the control plane dropped it");
    assert_eq!(summary["ok"], 4000, "no call fails while the client moves off r1: {summary}");
    // The rest of the load (several seconds at 500/s) goes to r2; r1 only
    // answers what was in flight or sent before the update arrived.
    assert!(r1_after < 50, "r1 answered {r1_after} calls after the update: {summary}");
    assert!(served(&summary, "r2") > served(&summary, "r1") + 1000, "r2 took over: {summary}");
}
