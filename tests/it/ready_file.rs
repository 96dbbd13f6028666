//! `--ready-file`: the serving binaries write their bound addresses there
//! once they serve, and refuse a path they cannot write in one line.

use std::process::Command;
use std::time::Duration;

use crate::common::process::{http_get_status, Process, Ready, ReadyFile};
use futures::executor::block_on;
use greet::client::{self, Client};

/// Starts `program args --ready-file <path>` and waits for the file.
fn start(program: &str, args: &[&str]) -> (Process, Ready, ReadyFile) {
    let ready = ReadyFile::new();
    let mut command = Command::new(program);
    command.args(args).arg("--ready-file").arg(ready.path()).env("RUST_LOG", "info");
    let mut process = Process::spawn(command);
    let written = process.wait_ready(&ready);
    (process, written, ready)
}

/// The port of a `host:port`.
fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':').and_then(|(_, port)| port.parse().ok()).unwrap_or_else(|| panic!("{addr:?} is no host:port"))
}

fn say_hello(addr: &str) -> String {
    block_on(Client::new(client::connect(addr), Duration::from_secs(10)).say_hello()).unwrap()
}

#[test]
fn the_server_writes_its_grpc_address_and_a_null_admin_without_an_admin_port() {
    let (_server, written, ready) = start(env!("CARGO_BIN_EXE_server"), &["--addr", "127.0.0.1:0"]);
    assert!(written.grpc.starts_with("127.0.0.1:") && port_of(&written.grpc) != 0, "{written:?}");
    assert_eq!(written.admin, None);
    assert_eq!(say_hello(&written.grpc), "Hello", "the address it wrote answers a call");
    let text = std::fs::read_to_string(ready.path()).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json, serde_json::json!({ "grpc": written.grpc, "admin": null }), "{text}");
    let mut temp = ready.path().into_os_string();
    temp.push(".tmp");
    assert!(!std::path::Path::new(&temp).exists(), "the temp file was renamed into place");
}

#[test]
fn the_server_writes_its_admin_address_when_it_has_an_admin_port() {
    let args = ["--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"];
    let (_server, written, _ready) = start(env!("CARGO_BIN_EXE_server"), &args);
    let admin = written.admin.expect("an admin address");
    assert!(admin.starts_with("127.0.0.1:") && port_of(&admin) != 0, "{admin}");
    assert_eq!(http_get_status(&admin, "/healthz"), 200);
    assert_eq!(say_hello(&written.grpc), "Hello");
}

#[test]
fn the_interop_server_writes_its_address() {
    let (_server, written, _ready) = start(env!("CARGO_BIN_EXE_interop-server"), &["--port", "0"]);
    assert_eq!(written.admin, None);
    let port = port_of(&written.grpc);
    assert_ne!(port, 0, "{written:?}");
    // It listens on every interface, loopback among them.
    assert_eq!(say_hello(&format!("127.0.0.1:{port}")), "Hello");
}

#[test]
fn an_unwritable_ready_file_is_one_error_line_and_a_failed_exit_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    // Even root cannot create a file in a directory that does not exist.
    let path = dir.path().join("missing").join("ready.json");
    for (program, args) in [
        (env!("CARGO_BIN_EXE_server"), &["--addr", "127.0.0.1:0"][..]),
        (env!("CARGO_BIN_EXE_interop-server"), &["--port", "0"][..]),
    ] {
        let out = Command::new(program).args(args).arg("--ready-file").arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{program}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{program}: {stderr}");
        assert!(
            stderr.starts_with(&format!("error: cannot write the ready file {}: ", path.display())),
            "{program}: {stderr}"
        );
        assert!(!stderr.contains("Server started"), "{program} never served: {stderr}");
    }
}
