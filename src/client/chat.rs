//! `client chat`: one user in one room. Lines come in (stdin for the
//! binary), each is said in the room; the room's events go out through a
//! callback. When its server goes away the client reconnects by itself —
//! to the next address of its list — and resumes with `resume_after`, so
//! it misses nothing and sees nothing twice; messages it had said whose
//! echo it never saw are said again unless the resumed backlog shows they
//! were stored. If the room's history was reset meanwhile (the server
//! answers the resume with OUT_OF_RANGE: another epoch), it says so and
//! joins afresh.

use std::collections::VecDeque;
use std::pin::pin;
use std::time::{Duration, Instant};

use futures::future::{self, Either};
use futures::prelude::*;
use futures_timer::Delay;
use grpcio::{CallOption, Channel, Metadata, RpcStatusCode, WriteFlags};

use super::channel::{Connector, Keepalive};

use super::CliError;
use crate::proto::chat::{client_frame, server_event, ClientFrame, Join, Message, Say, ServerEvent};
use crate::proto::chat_grpc::ChatClient;

/// What the client reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Someone else's message (or one of ours from before this run).
    Message(Message),
    /// One of this run's own messages, stored: its echo.
    Sent(Message),
    Joined(String),
    Left(String),
    /// About the connection: connected, lost, reconnecting (stderr for the binary).
    Notice(String),
}

/// How to chat.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    /// Servers to try, in order; after losing one the client goes on to the next.
    pub addrs: Vec<String>,
    pub room: String,
    pub user: String,
    /// Messages a fresh join replays; `None`: the server's default.
    pub history: Option<u32>,
    /// Give up after failing to reach any server for this long.
    pub give_up_after: Duration,
    /// Metadata sent with every Connect call (e.g. a bearer token).
    pub headers: Option<Metadata>,
}

/// `[HH:MM:SS] user: text` (UTC), `* user joined`, `* user left`; `None`
/// for what a person does not need to see on stdout.
pub fn format_output(output: &Output) -> Option<String> {
    match output {
        Output::Message(m) => {
            let secs = m.time_unix_ms.div_euclid(1000).rem_euclid(86_400);
            Some(format!("[{:02}:{:02}:{:02}] {}: {}", secs / 3600, secs / 60 % 60, secs % 60, m.user, m.text))
        }
        Output::Joined(user) => Some(format!("* {user} joined")),
        Output::Left(user) => Some(format!("* {user} left")),
        Output::Sent(_) | Output::Notice(_) => None,
    }
}

/// Keepalive of chat channels unless the caller sets its own: a peer that
/// went silent is noticed even between heartbeats.
pub const KEEPALIVE: Keepalive = Keepalive { time: Duration::from_secs(10), timeout: Duration::from_secs(5) };

/// The connector for one address of the list: the caller's settings (TLS,
/// keepalive...) with retries off, since the chat client moves on to the
/// next address itself instead of waiting for the core to retry a dead one.
pub fn connector(addr: &str, configure: impl Fn(Connector) -> Connector) -> Result<Connector, String> {
    Ok(configure(Connector::new(addr)?.keepalive(Some(KEEPALIVE))).retries(0))
}

/// Plaintext channels, one address each.
pub fn plaintext(addr: &str) -> Result<Channel, String> {
    connector(addr, |c| c).map(|c| c.channel())
}

/// A message said but not yet seen stored.
struct Pending {
    client_id: String,
    text: String,
    /// Sent on the current connection.
    sent: bool,
}

/// What survives a reconnection.
struct State {
    /// The last sequence number seen: where a resume starts.
    last_seq: Option<u64>,
    /// The room's epoch that `last_seq` belongs to.
    epoch: Option<String>,
    pending: VecDeque<Pending>,
    /// Prefix of this run's client ids: tells its own echoes from the
    /// same user's messages of another run.
    run_id: String,
    said: u64,
    input_done: bool,
}

/// Why a connection ended.
enum Ended {
    /// The client left: input ended and every message was stored.
    Left,
    /// Worth another connection (the server went away, or cut us off).
    Lost(CliError),
    /// The room's history was reset: join again, afresh, at once.
    Reset,
}

fn retryable(e: &grpcio::Error) -> bool {
    match e {
        grpcio::Error::RpcFailure(s) | grpcio::Error::RpcFinished(Some(s)) => matches!(
            s.code(),
            RpcStatusCode::UNAVAILABLE
                | RpcStatusCode::RESOURCE_EXHAUSTED
                | RpcStatusCode::CANCELLED
                | RpcStatusCode::DEADLINE_EXCEEDED
                | RpcStatusCode::ABORTED
                | RpcStatusCode::UNKNOWN
                | RpcStatusCode::INTERNAL
        ),
        grpcio::Error::RemoteStopped | grpcio::Error::RpcFinished(None) => true,
        _ => false,
    }
}

fn frame(frame: client_frame::Frame) -> ClientFrame {
    ClientFrame { frame: Some(frame), ..Default::default() }
}

/// Chats until `lines` ends and every line said is stored; then leaves.
/// Errors: a status that reconnecting cannot fix, or no server reachable
/// for `give_up_after`.
/// `connect` makes the channel to one address (e.g. [`plaintext`], or
/// through [`connector`] with the caller's settings).
pub async fn run(
    options: &ChatOptions,
    connect: impl Fn(&str) -> Result<Channel, String>,
    lines: async_channel::Receiver<String>,
    mut output: impl FnMut(Output),
) -> Result<(), CliError> {
    if options.addrs.is_empty() {
        return Err(CliError::new("INVALID_ARGUMENT", "no server address given"));
    }
    let mut state = State {
        last_seq: None,
        epoch: None,
        pending: VecDeque::new(),
        run_id: format!("{:x}{:x}", std::process::id(), crate::wire::now_unix_ms()),
        said: 0,
        input_done: false,
    };
    let mut index = 0;
    let mut failing_since: Option<Instant> = None;
    let mut failures_in_a_row = 0;
    loop {
        let addr = &options.addrs[index % options.addrs.len()];
        let client = ChatClient::new(connect(addr).map_err(|e| CliError::new("INVALID_ARGUMENT", e))?);
        let mut connected = false;
        match session(&client, addr, options, &mut state, &lines, &mut output, &mut connected).await {
            Ok(Ended::Left) => return Ok(()),
            Ok(Ended::Reset) => {}
            Ok(Ended::Lost(e)) => {
                if connected {
                    failing_since = None;
                    failures_in_a_row = 0;
                }
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= options.give_up_after {
                    return Err(e);
                }
                failures_in_a_row += 1;
                index += 1;
                let next = &options.addrs[index % options.addrs.len()];
                let why = format!("{}: {}", e.code, e.message);
                output(Output::Notice(format!("lost {addr} ({why}); reconnecting to {next}")));
                // Try every address at once, then back off, up to 2 s.
                if failures_in_a_row >= options.addrs.len() {
                    let rounds = (failures_in_a_row / options.addrs.len()) as u32;
                    Delay::new(Duration::from_millis(100 * 2u64.pow(rounds.min(4)).min(20))).await;
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// One connection: join (resuming if anything was seen), then relay until
/// the client leaves or the connection is lost.
async fn session(
    client: &ChatClient,
    addr: &str,
    options: &ChatOptions,
    state: &mut State,
    lines: &async_channel::Receiver<String>,
    output: &mut impl FnMut(Output),
    connected: &mut bool,
) -> Result<Ended, CliError> {
    let lost = |e: grpcio::Error| if retryable(&e) { Ok(Ended::Lost(e.into())) } else { Err(CliError::from(e)) };
    let mut call = CallOption::default();
    if let Some(headers) = &options.headers {
        call = call.headers(headers.clone());
    }
    let (mut sink, mut events) = match client.connect_opt(call) {
        Ok(call) => call,
        Err(e) => return lost(e),
    };
    let join = Join {
        room: options.room.clone(),
        user: options.user.clone(),
        resume_after: state.last_seq,
        epoch: state.last_seq.and(state.epoch.clone()),
        history: options.history,
        ..Default::default()
    };
    let answer = match sink.send((frame(client_frame::Frame::Join(join)), WriteFlags::default())).await {
        // A send fails when the call has ended (the server may refuse the
        // join before the send completes); the receiving half has its status,
        // which is judged as if it had come instead of the Welcome.
        Err(e) => Err(events.try_next().await.err().unwrap_or(e)),
        Ok(()) => events.try_next().await,
    };
    let welcome = match answer {
        Ok(Some(ServerEvent { event: Some(server_event::Event::Welcome(welcome)), .. })) => welcome,
        Ok(Some(other)) => {
            return Err(CliError::new("INTERNAL", format!("expected a welcome from {addr}, got {other:?}")));
        }
        Ok(None) => return Ok(Ended::Lost(CliError::new("UNAVAILABLE", format!("{addr} ended the call")))),
        Err(grpcio::Error::RpcFailure(s))
            if s.code() == RpcStatusCode::OUT_OF_RANGE
                && state.last_seq.is_some()
                && s.message().contains("was reset") =>
        {
            output(Output::Notice(format!(
                "the history of {} was reset (seen up to message {} of another epoch): joining afresh; messages numbered anew follow",
                options.room,
                state.last_seq.unwrap_or(0)
            )));
            state.last_seq = None;
            state.epoch = None;
            return Ok(Ended::Reset);
        }
        Err(e) => return lost(e),
    };
    *connected = true;
    state.epoch = Some(welcome.epoch.clone()).filter(|e| !e.is_empty());
    let resumed = state.last_seq.is_some();
    output(Output::Notice(format!(
        "{} {} on {addr} at message {}",
        if resumed { "resumed" } else { "joined" },
        options.room,
        welcome.last_seq
    )));
    for p in state.pending.iter_mut() {
        p.sent = false;
    }
    // Until the backlog is in, our own unacknowledged messages may still
    // turn up in it: only then are the others said again.
    let mut backlog_left = welcome.backlog;
    let idle_limit = Duration::from_millis(u64::from(welcome.heartbeat_ms.max(1000)) * 3);
    let mut idle = Delay::new(idle_limit);
    let mut closed = false;

    loop {
        if backlog_left == 0 {
            for p in state.pending.iter_mut().filter(|p| !p.sent) {
                let say = Say { text: p.text.clone(), client_id: p.client_id.clone(), ..Default::default() };
                if let Err(e) = sink.send((frame(client_frame::Frame::Say(say)), WriteFlags::default())).await {
                    return lost(events.try_next().await.err().unwrap_or(e));
                }
                p.sent = true;
            }
            if state.input_done && state.pending.is_empty() && !closed {
                if let Err(e) = super::half_close(&mut sink).await {
                    return lost(e);
                }
                closed = true;
            }
        }
        enum Wake {
            Event(grpcio::Result<Option<ServerEvent>>),
            Line(Option<String>),
            Idle,
        }
        let event = events.try_next().map(Wake::Event);
        let line = if state.input_done {
            Either::Left(future::pending())
        } else {
            Either::Right(lines.recv().map(|line| Wake::Line(line.ok())))
        };
        let timer = (&mut idle).map(|()| Wake::Idle);
        let wake = future::select(pin!(event), future::select(pin!(line), pin!(timer)).map(|e| e.factor_first().0))
            .await
            .factor_first()
            .0;
        match wake {
            Wake::Line(Some(text)) => {
                state.said += 1;
                let client_id = format!("{}-{}", state.run_id, state.said);
                state.pending.push_back(Pending { client_id, text, sent: false });
            }
            Wake::Line(None) => state.input_done = true,
            Wake::Idle => {
                let why = format!("nothing from {addr} for {idle_limit:?}");
                return Ok(Ended::Lost(CliError::new("UNAVAILABLE", why)));
            }
            Wake::Event(Err(e)) => return lost(e),
            Wake::Event(Ok(None)) if closed => return Ok(Ended::Left),
            Wake::Event(Ok(None)) => {
                return Ok(Ended::Lost(CliError::new("UNAVAILABLE", format!("{addr} ended the call"))));
            }
            Wake::Event(Ok(Some(event))) => {
                idle.reset(idle_limit);
                match event.event {
                    Some(server_event::Event::Message(m)) => {
                        if m.seq <= welcome.last_seq {
                            backlog_left = backlog_left.saturating_sub(1);
                        }
                        if state.last_seq.is_some_and(|seen| m.seq <= seen) {
                            continue;
                        }
                        state.last_seq = Some(m.seq);
                        let ours = m.user == options.user && m.client_id.starts_with(&state.run_id);
                        if ours {
                            state.pending.retain(|p| p.client_id != m.client_id);
                            output(Output::Sent(m));
                        } else {
                            output(Output::Message(m));
                        }
                    }
                    Some(server_event::Event::Joined(p)) if p.user != options.user => output(Output::Joined(p.user)),
                    Some(server_event::Event::Left(p)) if p.user != options.user => output(Output::Left(p.user)),
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_print_as_a_person_reads_them() {
        let m = Message {
            user: "ann".into(),
            text: "hi".into(),
            time_unix_ms: 86_400_000 + 3_661_999,
            ..Default::default()
        };
        assert_eq!(format_output(&Output::Message(m.clone())).as_deref(), Some("[01:01:01] ann: hi"));
        assert_eq!(format_output(&Output::Joined("bob".into())).as_deref(), Some("* bob joined"));
        assert_eq!(format_output(&Output::Left("bob".into())).as_deref(), Some("* bob left"));
        assert_eq!(format_output(&Output::Sent(m)), None, "one's own lines are not echoed");
        assert_eq!(format_output(&Output::Notice("lost".into())), None, "notices go to stderr");
    }

    #[test]
    fn statuses_that_another_connection_can_fix_are_retried() {
        let status = |code| grpcio::Error::RpcFailure(grpcio::RpcStatus::new(code));
        assert!(retryable(&status(RpcStatusCode::UNAVAILABLE)));
        assert!(retryable(&status(RpcStatusCode::RESOURCE_EXHAUSTED)), "a member cut off resumes");
        assert!(retryable(&grpcio::Error::RemoteStopped));
        assert!(!retryable(&status(RpcStatusCode::INVALID_ARGUMENT)));
        assert!(!retryable(&status(RpcStatusCode::OUT_OF_RANGE)));
        let finished = grpcio::Error::RpcFinished(Some(grpcio::RpcStatus::new(RpcStatusCode::INVALID_ARGUMENT)));
        assert!(!retryable(&finished));
    }
}
