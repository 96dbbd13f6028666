//! The `server` and `client` binaries as a user runs them.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const CLIENT: &str = env!("CARGO_BIN_EXE_client");
const SERVER: &str = env!("CARGO_BIN_EXE_server");

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
