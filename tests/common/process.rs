//! Server binaries started by a test, always stopped when the test ends.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

pub const SERVER: &str = env!("CARGO_BIN_EXE_server");

/// Kills the child if a test fails before it exits.
pub struct Reaper(pub Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the server binary on a free port; returns it and its address,
/// read from its "Server started at" log line.
pub fn spawn_server(extra: &[&str]) -> (Reaper, String, mpsc::Receiver<String>) {
    let mut child = Command::new(SERVER)
        .args(["--addr", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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
