//! chat.v1.Chat on a highly available Redis (primary, replica, three
//! Sentinels): the primary killed mid-conversation, the acknowledgement
//! rule (a replica must have a message), room epochs after Redis lost its
//! data, and a paused Redis that stalls no other call.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::chat::*;
use futures::executor::block_on;
use greet::chat::ChatConfig;
use greet::client::chat::{self as chat_client, ChatOptions, Output};
use greet::client::{self as greet_client, Client};
use greet::proto::chat::{server_event, Message, ServerEvent};
use greet::proto::health::HealthCheckRequest;
use greet::proto::health_grpc::HealthClient;
use grpcio::{CallOption, RpcStatusCode};

/// A `client chat` user on a thread: lines in, outputs out.
struct User {
    lines: async_channel::Sender<String>,
    outputs: mpsc::Receiver<Output>,
    seen: Vec<Output>,
    thread: Option<JoinHandle<Result<(), greet::client::CliError>>>,
}

impl User {
    fn start(addr: &str, room: &str, name: &str) -> User {
        let options = ChatOptions {
            addrs: vec![addr.to_string()],
            room: room.to_string(),
            user: name.to_string(),
            history: Some(0),
            give_up_after: Duration::from_secs(60),
            headers: None,
        };
        let (lines, input) = async_channel::unbounded::<String>();
        let (tx, outputs) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            block_on(chat_client::run(&options, chat_client::plaintext, input, |o| {
                if let Output::Notice(n) = &o {
                    eprintln!("({n})");
                }
                let _ = tx.send(o);
            }))
        });
        let mut user = User { lines, outputs, seen: Vec::new(), thread: Some(thread) };
        user.until(|seen| seen.iter().any(|o| matches!(o, Output::Notice(n) if n.starts_with("joined "))));
        user
    }

    fn say(&self, text: &str) {
        self.lines.send_blocking(text.to_string()).unwrap();
    }

    /// Takes outputs until `done` says so.
    fn until(&mut self, mut done: impl FnMut(&[Output]) -> bool) {
        while !done(&self.seen) {
            self.seen.push(self.outputs.recv_timeout(DEADLINE).expect("the chat client keeps reporting"));
        }
    }

    fn messages(&self) -> Vec<Message> {
        messages_in(&self.seen)
    }

    fn sent(&self) -> Vec<Message> {
        self.seen.iter().filter_map(|o| if let Output::Sent(m) = o { Some(m.clone()) } else { None }).collect()
    }

    fn wait_messages(&mut self, count: usize) {
        self.until(|seen| messages_in(seen).len() >= count);
    }

    /// Ends its input and waits for it to leave.
    fn leave(mut self) {
        self.lines.close();
        let thread = self.thread.take().unwrap();
        thread.join().unwrap().expect("the user leaves cleanly");
    }
}

fn ha_config(ha: &RedisHa) -> ChatConfig {
    ChatConfig { broker: Some(ha.url()), ..Default::default() }
}

/// History, retried until the server's broker answers (it may be finding the new primary).
fn history_when_ready(client: &greet::proto::chat_grpc::ChatClient, room: &str, limit: u32) -> Vec<Message> {
    poll("History to answer", Duration::from_secs(30), || history(client, room, limit, None).ok())
}

#[test]
fn acknowledged_messages_survive_the_primary_being_killed_with_members_on_two_replicas() {
    let _alone = crate::alone();
    // Two replicas, as docs/chat-ha.md asks: the promoted one still has a
    // replica to confirm writes. (With one, the window also waits for the
    // old primary to come back and resync as a replica: 8 to 19 s seen.)
    let mut ha = RedisHa::start_with_spares(1);
    let a = start_chat_server(ha_config(&ha));
    let b = start_chat_server(ha_config(&ha));
    let mut ann = User::start(a.addr(), "ops", "ann");
    let mut bob = User::start(b.addr(), "ops", "bob");
    for i in 0..5 {
        ann.say(&format!("ann {i}"));
        bob.say(&format!("bob {i}"));
    }
    ann.wait_messages(10);
    bob.wait_messages(10);

    let killed = Instant::now();
    ha.kill_primary();
    ann.say("ann after the kill");
    // Once the Sentinels have promoted the replica, a supervisor starts the
    // old primary again as its replica, which acknowledgements need (one
    // replica must confirm).
    ha.wait_for_failover(Duration::from_secs(15));
    eprintln!("failover: the Sentinels promoted the replica {:?} after the kill", killed.elapsed());
    ha.restart_old_primary_as_replica();
    ann.until(|seen| seen.iter().any(|o| matches!(o, Output::Sent(m) if m.text == "ann after the kill")));
    let window = killed.elapsed();
    eprintln!("failover: the first message after the primary was killed was acknowledged {window:?} after the kill");
    for i in 0..5 {
        ann.say(&format!("ann later {i}"));
        bob.say(&format!("bob later {i}"));
    }
    ann.wait_messages(21);
    bob.wait_messages(21);
    let (ann_got, bob_got) = (ann.messages(), bob.messages());
    let acknowledged: Vec<Message> = ann.sent().into_iter().chain(bob.sent()).collect();
    ann.leave();
    bob.leave();

    assert!(window < Duration::from_secs(15), "acknowledged {window:?} after the kill; at most 15 s");
    assert_eq!(seqs(&ann_got), (1..=21).collect::<Vec<_>>(), "ann: gap-free, nothing twice");
    assert_eq!(seqs(&bob_got), seqs(&ann_got), "bob saw the same sequence");
    assert_eq!(texts(&bob_got), texts(&ann_got), "both replicas' members saw one conversation");
    let stored = history_when_ready(&client(b.addr()), "ops", 100);
    assert_eq!(seqs(&stored), (1..=21).collect::<Vec<_>>(), "History: gap-free");
    assert_eq!(acknowledged.len(), 21);
    for m in &acknowledged {
        let copies = stored.iter().filter(|s| s.text == m.text).count();
        assert_eq!(copies, 1, "{:?} (acknowledged as {}) is in History once", m.text, m.seq);
        assert!(stored.iter().any(|s| s.seq == m.seq && s.text == m.text), "{:?} keeps its number", m.text);
    }
}

/// What happened to messages said while the replica was stalled, and what
/// History holds after the primary's loss.
struct Stalled {
    /// Said while the replica was stopped, and echoed (acknowledged).
    acknowledged_while_stalled: Vec<String>,
    /// The status the Say got instead, if any.
    refused: Option<(RpcStatusCode, String)>,
    history: Vec<String>,
}

/// 3 messages acknowledged; the replica SIGSTOPped (replication stalls);
/// 3 more said; the primary SIGKILLed, then the replica too (what the
/// kernel held for it is gone) and restarted from its appendonly file, so
/// that it is promoted without what it missed.
fn stall_replication_then_kill_the_primary(replicas_to_ack: u32) -> Stalled {
    let mut ha = RedisHa::start();
    let config = |ha: &RedisHa| ChatConfig {
        replicas_to_ack: Some(replicas_to_ack),
        ack_timeout: Duration::from_millis(500),
        ..ha_config(ha)
    };
    let a = start_chat_server(config(&ha));
    let b = start_chat_server(config(&ha));
    let mut ann = block_on(Member::join(&client(a.addr()), "log", "ann", None, Some(0))).unwrap();
    for i in 0..3 {
        block_on(ann.say(&format!("before {i}"))).unwrap();
    }
    assert_eq!(texts(&block_on(ann.messages(3)).unwrap()), ["before 0", "before 1", "before 2"]);
    // The replica is killed and started again from its file below: what it
    // confirmed must be in the file first (CI once saw all three gone).
    ha.wait_replica_on_disk();

    signal(ha.replica.pid(), libc::SIGSTOP);
    let mut acknowledged_while_stalled = Vec::new();
    let mut refused = None;
    for i in 0..3 {
        let text = format!("while stalled {i}");
        if block_on(ann.say(&text)).is_err() {
            break;
        }
        match block_on(ann.next()) {
            Ok(Some(ServerEvent { event: Some(server_event::Event::Message(m)), .. })) => {
                assert_eq!(m.text, text);
                acknowledged_while_stalled.push(text);
            }
            Ok(other) => panic!("expected the echo of {text:?}, got {other:?}"),
            Err(e) => {
                refused = Some(status_of(e));
                break;
            }
        }
    }
    ha.kill_primary();
    ha.replica.restart();
    ha.wait_for_failover(Duration::from_secs(30));
    drop(ann);
    // B never held the room: its History reads what the new primary has.
    let history = texts(&history_when_ready(&client(b.addr()), "log", 100));
    Stalled { acknowledged_while_stalled, refused, history }
}

#[test]
fn without_the_acknowledgement_rule_a_message_acknowledged_while_replication_stalled_is_lost() {
    let _alone = crate::alone();
    let stalled = stall_replication_then_kill_the_primary(0);
    eprintln!(
        "replicas_to_ack 0: acknowledged while stalled {:?}; History after the failover {:?}",
        stalled.acknowledged_while_stalled, stalled.history
    );
    assert_eq!(stalled.acknowledged_while_stalled.len(), 3, "without the rule, every Say is acknowledged");
    let lost: Vec<&String> =
        stalled.acknowledged_while_stalled.iter().filter(|t| !stalled.history.contains(t)).collect();
    assert!(!lost.is_empty(), "the failure mode the rule prevents: an acknowledged message is lost");
}

#[test]
fn with_the_acknowledgement_rule_a_say_no_replica_confirms_fails_and_nothing_acknowledged_is_lost() {
    let _alone = crate::alone();
    let stalled = stall_replication_then_kill_the_primary(1);
    eprintln!(
        "replicas_to_ack 1: refused with {:?}; History after the failover {:?}",
        stalled.refused, stalled.history
    );
    assert!(stalled.acknowledged_while_stalled.is_empty(), "no replica confirmed: nothing acknowledged");
    let (code, message) = stalled.refused.expect("the Say failed");
    assert_eq!(code, RpcStatusCode::UNAVAILABLE, "{message}");
    assert!(message.contains("replica"), "{message}");
    assert_eq!(stalled.history, ["before 0", "before 1", "before 2"], "every acknowledged message, once");
}

#[test]
fn a_room_whose_redis_data_is_flushed_refuses_a_resume_and_client_chat_rejoins_afresh() {
    let _alone = crate::alone();
    let redis = Redis::start();
    let server = start_chat_server(ChatConfig { broker: Some(redis.url.clone()), ..Default::default() });
    let chat = client(server.addr());

    let mut ann = User::start(server.addr(), "news", "ann");
    ann.say("one");
    ann.say("two");
    ann.wait_messages(2);
    let mut old = block_on(Member::join(&chat, "news", "bob", None, Some(0))).unwrap();
    let epoch = old.welcome.epoch.clone();
    assert!(!epoch.is_empty(), "the Welcome carries the room's epoch");
    assert_eq!(old.welcome.last_seq, 2);

    let _: () = redis::cmd("FLUSHALL").query(&mut redis.conn()).unwrap();
    // ann goes on talking: her client is told the history was reset, and joins afresh.
    ann.say("three");
    ann.until(|seen| seen.iter().any(|o| matches!(o, Output::Sent(m) if m.text == "three")));
    let notices: Vec<String> =
        ann.seen.iter().filter_map(|o| if let Output::Notice(n) = o { Some(n.clone()) } else { None }).collect();
    assert_eq!(
        notices.iter().filter(|n| n.starts_with("the history of news was reset")).count(),
        1,
        "one line says so: {notices:?}"
    );
    let three = ann.sent().into_iter().find(|m| m.text == "three").unwrap();
    assert_eq!(three.seq, 1, "numbering started again");
    ann.leave();

    // bob's stream was ended with the old epoch; resuming from it is refused.
    block_on(old.failure());
    let err = block_on(async {
        let mut m = Member::join_with_epoch(&chat, "news", "bob", Some(2), Some(&epoch)).await?;
        m.next().await
    })
    .unwrap_err();
    let (code, message) = status_of(err);
    assert_eq!(code, RpcStatusCode::OUT_OF_RANGE, "{message}");
    assert!(message.contains("reset"), "{message}");
    // Without an epoch, a resume beyond the room's last message is refused too.
    let err = block_on(Member::join(&chat, "news", "bob", Some(1_000_000_000_000), None)).err();
    let (code, message) = status_of(err.expect("refused"));
    assert_eq!(code, RpcStatusCode::OUT_OF_RANGE, "{message}");
    let fresh = block_on(Member::join(&chat, "news", "bob", None, Some(10))).unwrap();
    assert_ne!(fresh.welcome.epoch, epoch);
    assert_eq!(fresh.welcome.last_seq, 1);
}

#[test]
fn a_paused_redis_stalls_no_other_call_and_the_room_goes_on_without_gap_or_duplicate() {
    let _alone = crate::alone();
    let redis = Redis::start();
    let server = start_chat_server(ChatConfig { broker: Some(redis.url.clone()), ..Default::default() });
    let chat = client(server.addr());
    let mut ann = block_on(Member::join(&chat, "live", "ann", None, Some(0))).unwrap();
    let mut bob = block_on(Member::join(&chat, "live", "bob", None, Some(0))).unwrap();
    for i in 0..5 {
        block_on(ann.say(&format!("before {i}"))).unwrap();
    }
    assert_eq!(seqs(&block_on(bob.messages(5)).unwrap()), [1, 2, 3, 4, 5]);
    assert_eq!(seqs(&block_on(ann.messages(5)).unwrap()), [1, 2, 3, 4, 5]);

    let greeter = Client::new(greet_client::connect(server.addr()), Duration::from_secs(10));
    let health = HealthClient::new(greet_client::connect(server.addr()));
    // Warm the channels up, so that what is measured is the call alone.
    assert_eq!(block_on(greeter.say_hello()).unwrap(), "Hello");
    health.check_opt(&HealthCheckRequest::default(), CallOption::default().timeout(DEADLINE)).unwrap();

    signal(redis.pid(), libc::SIGSTOP);
    let paused = Instant::now();
    for i in 0..3 {
        block_on(ann.say(&format!("paused {i}"))).unwrap();
    }
    let timed = |what: &str, call: &mut dyn FnMut()| {
        let started = Instant::now();
        call();
        let took = started.elapsed();
        eprintln!("while Redis is paused: {what} answered in {took:?}");
        took
    };
    let took = [
        timed("health Check", &mut || {
            health.check_opt(&HealthCheckRequest::default(), CallOption::default().timeout(DEADLINE)).unwrap();
        }),
        timed("greet SayHello", &mut || assert_eq!(block_on(greeter.say_hello()).unwrap(), "Hello")),
        timed("chat History (local)", &mut || {
            assert_eq!(seqs(&history(&chat, "live", 5, None).unwrap()), [1, 2, 3, 4, 5])
        }),
    ];
    let measured_within_pause = paused.elapsed();
    // The pause lasts 3 s: what is measured is Redis being stopped that long.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(paused.elapsed()));
    signal(redis.pid(), libc::SIGCONT);
    assert!(measured_within_pause < Duration::from_secs(3), "measured while paused ({measured_within_pause:?})");
    for t in took {
        assert!(t < Duration::from_millis(100), "answered in {t:?} while Redis was paused; at most 100 ms");
    }

    let after = block_on(bob.messages(3)).unwrap();
    assert_eq!(seqs(&after), [6, 7, 8]);
    assert_eq!(texts(&after), ["paused 0", "paused 1", "paused 2"]);
    assert_eq!(seqs(&block_on(ann.messages(3)).unwrap()), [6, 7, 8]);
    block_on(ann.say("after")).unwrap();
    assert_eq!(seqs(&block_on(bob.messages(1)).unwrap()), [9], "no gap, no duplicate");
    let stored = history(&chat, "live", 100, None).unwrap();
    assert_eq!(seqs(&stored), (1..=9).collect::<Vec<_>>());
}

#[test]
fn a_say_resent_with_the_same_client_id_is_stored_once() {
    let _alone = crate::alone();
    let redis = Redis::start();
    let server = start_chat_server(ChatConfig { broker: Some(redis.url.clone()), ..Default::default() });
    let chat = client(server.addr());
    let mut ann = block_on(Member::join(&chat, "once", "ann", None, Some(0))).unwrap();
    let say = |text: &str, client_id: &str| {
        let say = greet::proto::chat::Say { text: text.into(), client_id: client_id.into(), ..Default::default() };
        let frame = greet::proto::chat::ClientFrame {
            frame: Some(greet::proto::chat::client_frame::Frame::Say(say)),
            ..Default::default()
        };
        (frame, grpcio::WriteFlags::default())
    };
    use futures::SinkExt;
    block_on(ann.sink.send(say("hello", "c1"))).unwrap();
    block_on(ann.sink.send(say("hello", "c1"))).unwrap();
    block_on(ann.sink.send(say("next", "c2"))).unwrap();
    let got = block_on(ann.messages(2)).unwrap();
    assert_eq!(seqs(&got), [1, 2]);
    assert_eq!(texts(&got), ["hello", "next"], "the resend found the stored copy");
    assert_eq!(texts(&history(&chat, "once", 10, None).unwrap()), ["hello", "next"]);
}

/// Two joins wait for one room's load (Redis paused holds it): the first
/// resumes from an epoch the room does not have and is refused. The room
/// stays open for the second, which joins; the hub goes on serving. (A
/// refused join used to close the room under the joins behind it, and the
/// next one panicked the hub thread: every later chat call failed. The
/// nemesis's Redis partition run found it: two readers resuming at once
/// after an epoch change.)
#[test]
fn a_refused_join_leaves_the_room_open_for_the_joins_that_waited_with_it() {
    use futures::FutureExt;
    use std::task::{Context, Poll};
    let _alone = crate::alone();
    let redis = Redis::start();
    let server = start_chat_server(ChatConfig { broker: Some(redis.url.clone()), ..Default::default() });
    let chat = server.chat().clone();
    signal(redis.pid(), libc::SIGSTOP);
    let mut stale = Box::pin(chat.join("waiting", "ann", Some(5), Some("an-epoch-this-room-never-had"), 0));
    let mut fresh = Box::pin(chat.join("waiting", "bob", None, None, 0));
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    // One poll each hands the hub its Join, in this order; the load they
    // both wait for cannot finish while Redis is stopped.
    assert!(matches!(stale.poll_unpin(&mut cx), Poll::Pending));
    assert!(matches!(fresh.poll_unpin(&mut cx), Poll::Pending));
    signal(redis.pid(), libc::SIGCONT);
    let refused = block_on(stale).err().expect("a resume from another epoch is refused");
    assert!(matches!(refused, greet::chat::ChatError::OutOfRange(_)), "{refused:?}");
    let joined = block_on(fresh).expect("the join that waited behind it joins the room");
    assert_eq!(joined.last_seq, 0);
    let history = block_on(chat.history("waiting", 10, None)).expect("the hub still serves");
    assert!(history.is_empty());
}

/// The first Sentinel of the list is frozen (SIGSTOP: it still accepts
/// connections, and never answers): the broker asks it, gives up after its
/// 500 ms bound, asks the next, and the server starts and acknowledges a
/// message. (The `redis` crate's Sentinel client has no read timeout: a
/// server whose first Sentinel froze waited for it forever.)
#[test]
fn a_frozen_first_sentinel_costs_its_timeout_not_a_hang() {
    let _alone = crate::alone();
    let ha = RedisHa::start();
    let frozen = ha.sentinels[0].pid();
    signal(frozen, libc::SIGSTOP);
    let url = ha.url();
    let (started_tx, started_rx) = mpsc::channel();
    let began = Instant::now();
    std::thread::spawn(move || {
        let server = start_chat_server(ChatConfig { broker: Some(url), ..Default::default() });
        let _ = started_tx.send(server);
    });
    let server = started_rx.recv_timeout(Duration::from_secs(20)).expect("the server starts past a frozen Sentinel");
    let chat = client(server.addr());
    let mut ann = block_on(Member::join(&chat, "frozen", "ann", None, Some(0))).unwrap();
    block_on(ann.say("past the frozen one")).unwrap();
    let echo = block_on(ann.messages(1)).unwrap();
    assert_eq!((echo[0].seq, echo[0].text.as_str()), (1, "past the frozen one"));
    eprintln!("started and acknowledged past a frozen Sentinel in {:?}", began.elapsed());
    assert!(began.elapsed() < Duration::from_secs(10), "took {:?}", began.elapsed());
    signal(frozen, libc::SIGCONT);
}
