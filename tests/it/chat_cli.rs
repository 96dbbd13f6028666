//! `client chat` and the server's chat flags, as a person uses them.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::chat::*;
use futures::executor::block_on;
use greet::chat::ChatConfig;
use greet::proto::chat::server_event;

/// Kills the child if a test fails before it exits.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn presence(member: &mut Member) -> String {
    loop {
        match block_on(member.next()).unwrap().and_then(|e| e.event) {
            Some(server_event::Event::Joined(p)) => return format!("+{}", p.user),
            Some(server_event::Event::Left(p)) => return format!("-{}", p.user),
            Some(server_event::Event::Heartbeat(_)) => {}
            other => panic!("expected a join or leave, got {other:?}"),
        }
    }
}

#[test]
fn client_chat_prints_others_messages_says_its_lines_and_leaves_at_end_of_input() {
    let server = start_chat_server(ChatConfig::default());
    let client = client(server.addr());
    let mut bob = Member::join_blocking(&client, "den", "bob");
    assert_eq!(presence(&mut bob), "+bob");

    let mut ann = Reaper(
        Command::new(env!("CARGO_BIN_EXE_client"))
            .args(["--addr", server.addr(), "chat", "--room", "den", "--user", "ann", "--history", "0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert_eq!(presence(&mut bob), "+ann");
    let mut stdout = BufReader::new(ann.0.stdout.take().unwrap()).lines();
    block_on(bob.say("hi ann")).unwrap();
    let line = stdout.next().unwrap().unwrap();
    let (time, rest) = line.split_once(' ').unwrap();
    assert_eq!(rest, "bob: hi ann");
    assert!(
        time.len() == 10
            && time.starts_with('[')
            && time.ends_with(']')
            && time[1..9].chars().filter(|c| *c == ':').count() == 2,
        "a [HH:MM:SS] time stamp: {line:?}"
    );

    let mut stdin = ann.0.stdin.take().unwrap();
    writeln!(stdin, "hello bob").unwrap();
    let heard = block_on(bob.messages(2)).unwrap();
    assert_eq!((heard[1].user.as_str(), heard[1].text.as_str()), ("ann", "hello bob"));
    // Ctrl-D: ann leaves cleanly.
    drop(stdin);
    assert!(ann.0.wait().unwrap().success());
    assert_eq!(presence(&mut bob), "-ann");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut ann.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.starts_with("chat: joined den on "), "stderr: {stderr}");
    assert!(stdout.next().is_none(), "ann printed nothing of her own");
}

#[test]
fn client_chat_with_no_server_reachable_gives_up_with_one_error_line() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let out = Command::new(env!("CARGO_BIN_EXE_client"))
        .args(["--addr", &addr, "--timeout", "1s", "chat", "--room", "r", "--user", "u"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap();
    assert!(last.starts_with("error: UNAVAILABLE: "), "stderr: {stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn client_chat_rejects_a_bad_room_with_invalid_argument() {
    let server = start_chat_server(ChatConfig::default());
    let out = Command::new(env!("CARGO_BIN_EXE_client"))
        .args(["--addr", server.addr(), "chat", "--room", " ", "--user", "u"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "error: INVALID_ARGUMENT: room is empty; give a room name"
    );
}

#[test]
fn a_server_whose_broker_is_unreachable_fails_to_start_with_one_line() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let out = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--addr", "127.0.0.1:0", "--broker", &format!("redis://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with(&format!("error: cannot reach the broker at redis://127.0.0.1:{port}: ")),
        "stderr: {stderr}"
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_server")).args(["--broker", "http://nope"]).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid --broker \"http://nope\""));
}

#[test]
fn a_graceful_shutdown_ends_chat_streams_at_once_with_unavailable() {
    let server = start_chat_server(ChatConfig::default());
    let client = client(server.addr());
    let mut member = Member::join_blocking(&client, "r", "ann");
    let stopping = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let outcome = server.shutdown(Duration::from_secs(30));
        (outcome, started.elapsed())
    });
    assert_eq!(
        status_of(block_on(member.failure())),
        (grpcio::RpcStatusCode::UNAVAILABLE, "the server is shutting down; reconnect to resume".to_string())
    );
    let (outcome, took) = stopping.join().unwrap();
    assert_eq!(outcome, greet::server::Shutdown::Drained);
    assert!(took < Duration::from_secs(30), "an open chat stream did not hold the shutdown for its grace");
}

#[test]
fn client_chat_sends_the_token_of_token_file_on_a_server_that_requires_one() {
    let dir = TempDir::new("chat-auth");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "s3cret ann\n").unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let config = greet::server::ServerConfig {
        addr: "127.0.0.1:0".to_string(),
        auth: Some(greet::auth::Authenticator::from_file(&tokens).unwrap()),
        ..Default::default()
    };
    let server = greet::server::start(&config).unwrap();
    let chat = |token_file: Option<&std::path::Path>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_client"));
        command.args(["--addr", server.addr(), "--timeout", "5s"]);
        if let Some(token_file) = token_file {
            command.arg("--token-file").arg(token_file);
        }
        let mut child = command
            .args(["chat", "--room", "vault", "--user", "ann", "--history", "0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "behind the door").unwrap();
        child.wait_with_output().unwrap()
    };

    let refused = chat(None);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.lines().last().unwrap().starts_with("error: UNAUTHENTICATED: "), "stderr: {stderr}");

    let allowed = chat(Some(&token));
    assert!(allowed.status.success(), "stderr: {}", String::from_utf8_lossy(&allowed.stderr));
    let stored = block_on(server.chat().history("vault", 10, None)).unwrap();
    assert_eq!(texts(&stored), vec!["behind the door".to_string()]);
}
