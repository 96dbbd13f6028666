//! The `server` and `client` binaries as a user runs them.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::common::process::{ReadyFile, READY_TIMEOUT};
use crate::common::*;

const CLIENT: &str = env!("CARGO_BIN_EXE_client");
const SERVER: &str = env!("CARGO_BIN_EXE_server");

/// Kills the child if a test fails before it exits.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback address nothing listens on: bound, then released.
fn closed_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr.to_string()
}

#[test]
fn client_against_nothing_listening_prints_one_unavailable_line_and_fails() {
    let out = Command::new(CLIENT)
        .args(["--addr", &closed_addr(), "--timeout", "5s", "unary"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "stdout: {}", String::from_utf8_lossy(&out.stdout));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr: {stderr}");
    assert!(lines[0].starts_with("error: UNAVAILABLE: "), "stderr: {stderr}");
}

#[test]
fn client_rejects_a_bad_flag_with_a_usage_error() {
    let out = Command::new(CLIENT).args(["--timeout", "soon", "unary"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid duration \"soon\""), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

#[test]
fn client_all_prints_one_line_per_message_in_pattern_order() {
    let server = start_server(Duration::ZERO);
    let out = Command::new(CLIENT).args(["--addr", server.addr(), "--interval", "0", "all"]).output().unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let greetings = "Hello Akhil\nHello Alice\nHello Bob\n";
    assert_eq!(stdout, format!("Hello\n{greetings}{greetings}{greetings}"));
}

#[test]
fn client_greet_prints_the_helloworld_reply() {
    let server = start_server(Duration::ZERO);
    let out = Command::new(CLIENT).args(["--addr", server.addr(), "greet", "--name", "Rust"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "Hello Rust\n");
}

/// Starts the server binary on a free port; returns it, its address (from
/// its `--ready-file`) and its log lines.
fn spawn_server(extra: &[&str]) -> (Reaper, String, mpsc::Receiver<String>) {
    let ready = ReadyFile::new();
    let child = Command::new(SERVER)
        .args(["--addr", "127.0.0.1:0"])
        .args(extra)
        .arg("--ready-file")
        .arg(ready.path())
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reaper = Reaper(child);
    let stderr = reaper.0.stderr.take().unwrap();
    let (lines_tx, lines_rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let addr = match ready.wait(READY_TIMEOUT, || !matches!(reaper.0.try_wait(), Ok(None))) {
        Ok(ready) => ready.grpc,
        Err(why) => panic!("the server did not start: {why}; it logged: {:?}", lines_rx.try_iter().collect::<Vec<_>>()),
    };
    (reaper, addr, lines_rx)
}

#[test]
fn server_logs_each_name_received() {
    let (_server, addr, lines) = spawn_server(&["--stream-interval", "0"]);
    let out = Command::new(CLIENT).args(["--addr", &addr, "--names", "Zed", "server-stream"]).output().unwrap();
    assert!(out.status.success());
    let logged = lines.iter().find(|l| l.contains("Got request with name")).expect("a log line");
    assert!(logged.ends_with("Got request with name : Zed"), "{logged}");
}

#[test]
fn server_finishes_an_in_flight_stream_on_sigterm_and_exits_zero() {
    let (mut server, addr, _lines) = spawn_server(&["--stream-interval", "300ms"]);
    let mut client =
        Command::new(CLIENT).args(["--addr", &addr, "server-stream"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdout = BufReader::new(client.stdout.take().unwrap()).lines();
    // The stream is in flight once its first message is out.
    assert_eq!(stdout.next().unwrap().unwrap(), "Hello Akhil");

    let pid = server.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());

    let rest: Vec<String> = stdout.map_while(Result::ok).collect();
    assert_eq!(rest, ["Hello Alice", "Hello Bob"]);
    assert!(client.wait().unwrap().success());
    let status = server.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "server exit: {status:?}");

    // It no longer accepts calls.
    let out = Command::new(CLIENT).args(["--addr", &addr, "--timeout", "2s", "unary"]).output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn server_rejects_a_core_arg_that_is_not_a_grpc_integer_argument() {
    for (arg, expected) in [
        ("foo=1", "is not a gRPC core channel argument"),
        ("grpc.max_concurrent_streams=many", "is not a 32-bit integer"),
        ("grpc.minimal_stack", "expected KEY=VALUE"),
    ] {
        let out = Command::new(SERVER).args(["--addr", "127.0.0.1:0", "--core-arg", arg]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{arg}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{arg}: {stderr}");
        assert!(!stderr.contains("panicked"), "{arg}: {stderr}");
    }
}

#[test]
fn client_load_prints_a_json_summary_with_calls_per_instance() {
    let (a, b) = (start_instance("a"), start_instance("b"));
    let addrs = format!("{},{}", a.addr(), b.addr());
    let out = Command::new(CLIENT)
        .args(["--addr", &addrs, "--lb", "round_robin", "load", "--calls", "200", "--concurrency", "4", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    assert_eq!(summary["workload"], "unary");
    assert_eq!(summary["calls"], 200);
    assert_eq!(summary["ok"], 200);
    assert_eq!(summary["failed"], 0);
    assert_eq!(summary["codes"], serde_json::json!({ "OK": 200 }));
    let (on_a, on_b) = (summary["instances"]["a"].as_u64().unwrap(), summary["instances"]["b"].as_u64().unwrap());
    assert_eq!(on_a + on_b, 200, "{summary}");
    assert!(on_a > 0 && on_b > 0, "round_robin used both: {summary}");
    for p in ["p50", "p90", "p99", "max"] {
        assert!(summary["latency_ms"][p].as_f64().unwrap() > 0.0, "{p} in {summary}");
    }
}

#[test]
fn client_load_over_bidi_streams_counts_streams() {
    let server = start_instance("only");
    let out = Command::new(CLIENT)
        .args(["--addr", server.addr(), "load", "--streams", "20", "--messages", "5", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["workload"], "bidi");
    assert_eq!(summary["codes"], serde_json::json!({ "OK": 20 }));
    assert_eq!(summary["instances"], serde_json::json!({ "only": 20 }));
}

#[test]
fn client_load_against_nothing_reports_failures_and_exits_1() {
    let out = Command::new(CLIENT)
        .args(["--addr", &closed_addr(), "--retries", "0", "load", "--calls", "5", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["codes"], serde_json::json!({ "UNAVAILABLE": 5 }));
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "error: LOAD: 5 of 5 calls failed");
}

#[test]
fn client_refuses_a_bad_address_list_or_policy_in_one_line() {
    let out = Command::new(CLIENT).args(["--addr", "127.0.0.1:1,[::1]:2", "unary"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: ") && stderr.contains("mixes IPv4 and IPv6"), "{stderr}");

    let out = Command::new(CLIENT).args(["--lb", "random", "unary"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "clap refuses it");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown load-balancing policy \"random\""));
}

#[test]
fn client_refuses_lb_or_retries_with_an_xds_address_in_one_line() {
    // An xds: channel takes its balancing and retries from the control
    // plane; the flags would be silently ignored, so they are refused.
    for flags in [["--lb", "round_robin"], ["--retries", "0"]] {
        let out = Command::new(CLIENT).args(["--addr", "xds:///greet"]).args(flags).arg("unary").output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{flags:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("--lb and --retries do not apply to xds:///greet"), "{stderr}");
    }
    // The same flags on a plain address are taken (nothing listens: UNAVAILABLE, not a usage error).
    let out = Command::new(CLIENT)
        .args(["--addr", &closed_addr(), "--lb", "round_robin", "--retries", "0", "--timeout", "2s", "unary"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: UNAVAILABLE"), "{stderr}");
}
