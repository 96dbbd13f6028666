//! Shared test set-up: a server on a free loopback port and a client for it.
#![allow(dead_code)]

pub mod h2;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use greet::client::{self, Client};
use greet::server::{self, RunningServer, ServerConfig};

/// A server on 127.0.0.1:0 whose server streams wait `interval` after each send.
pub fn start_server(interval: Duration) -> RunningServer {
    let config = ServerConfig {
        addr: "127.0.0.1:0".to_string(),
        stream_interval: interval,
        completion_queues: 2,
        ..Default::default()
    };
    server::start(&config).expect("a server starts on a free loopback port")
}

/// A client for `server` with a generous deadline.
pub fn client_for(server: &RunningServer) -> Client {
    Client::new(client::connect(server.addr()), Duration::from_secs(30))
}

pub fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

pub fn demo_names() -> Vec<String> {
    names(client::DEMO_NAMES)
}

/// "Hello <name>" for each name.
pub fn greetings(names: &[String]) -> Vec<String> {
    names.iter().map(|n| format!("Hello {n}")).collect()
}

/// The code of a failed call.
pub fn code_of(error: grpcio::Error) -> (grpcio::RpcStatusCode, String) {
    match error {
        grpcio::Error::RpcFailure(status) => (status.code(), status.message().to_string()),
        other => panic!("expected a status from the server, got {other:?}"),
    }
}

/// Kills and reaps the child whatever happens to the test.
pub struct Reaper(pub Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the `server` binary on a free loopback port with `extra` flags;
/// returns it, its address (read from its "Server started at" log line) and
/// the rest of its log lines.
pub fn spawn_server<I, S>(extra: I) -> (Reaper, String, mpsc::Receiver<String>)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(env!("CARGO_BIN_EXE_server"));
    command.args(["--addr", "127.0.0.1:0"]).args(extra);
    spawn_server_command(command)
}

/// Runs `command`, which starts the `server` binary (perhaps through a
/// wrapper) on a free port; returns what [`spawn_server`] does.
pub fn spawn_server_command(mut command: Command) -> (Reaper, String, mpsc::Receiver<String>) {
    let mut child = command.env("RUST_LOG", "info").stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines_rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let reaper = Reaper(child);
    loop {
        let line = lines_rx.recv_timeout(Duration::from_secs(20)).expect("the server logs its address");
        if let Some((_, addr)) = line.split_once("Server started at ") {
            return (reaper, addr.trim().to_string(), lines_rx);
        }
    }
}
