//! chat.v1.Chat across two replicas sharing a broker (Redis, or an etcd
//! cluster): one room, one global order; and a member whose replica is
//! killed resumes on the other without losing or repeating a message.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::chat::*;
use crate::common::etcd::EtcdCluster;
use crate::common::process::{ReadyFile, READY_TIMEOUT};
use futures::executor::block_on;
use futures::future::join_all;
use futures::prelude::*;
use greet::chat::ChatConfig;
use greet::client::chat::{self as chat_client, ChatOptions, Output};
use greet::proto::chat::Message;
use grpcio::WriteFlags;

fn broker_config(redis: &Redis) -> ChatConfig {
    ChatConfig { broker: Some(redis.url.clone()), ..Default::default() }
}

#[test]
fn members_on_two_replicas_see_each_others_messages_in_one_global_order() {
    let redis = Redis::start();
    one_global_order(broker_config(&redis));
}

#[test]
fn members_on_two_replicas_over_etcd_see_each_others_messages_in_one_global_order() {
    let etcd = EtcdCluster::start(3);
    one_global_order(ChatConfig { broker: Some(etcd.url()), ..Default::default() });
}

/// Six members, three on each of two replicas, say 20 messages each at once.
fn one_global_order(config: ChatConfig) {
    const EACH: usize = 20;
    let a = start_chat_server(config.clone());
    let b = start_chat_server(config);
    let (on_a, on_b) = (client(a.addr()), client(b.addr()));
    let mut members: Vec<Member> = (0..6)
        .map(|i| Member::join_blocking(if i % 2 == 0 { &on_a } else { &on_b }, "hall", &format!("user{i}")))
        .collect();
    let total = members.len() * EACH;

    let runs = members.iter_mut().enumerate().map(|(i, member)| async move {
        for n in 0..EACH {
            member
                .sink
                .send((say_frame(&format!("user{i} {n}")), WriteFlags::default().buffer_hint(n + 1 < EACH)))
                .await
                .unwrap();
        }
        member.messages(total).await.unwrap()
    });
    let received: Vec<Vec<Message>> = block_on(join_all(runs));

    let order = texts(&received[0]);
    for (i, messages) in received.iter().enumerate() {
        assert_eq!(seqs(messages), (1..=total as u64).collect::<Vec<_>>(), "user{i}: one gap-free global sequence");
        assert_eq!(
            texts(messages),
            order,
            "user{i} (replica {}) sees the same order",
            if i % 2 == 0 { "A" } else { "B" }
        );
        let mut next_of: HashMap<&str, usize> = HashMap::new();
        for m in messages {
            let (sender, n) = m.text.split_once(' ').unwrap();
            let next = next_of.entry(sender).or_default();
            assert_eq!(n.parse::<usize>().unwrap(), *next, "{sender}'s order is kept");
            *next += 1;
        }
        assert_eq!(next_of.len(), 6, "user{i} heard from all six, on both replicas");
    }
    // Both replicas answer for the whole room, and share its history.
    assert_eq!(rooms(&on_a), vec![("hall".to_string(), 6)]);
    assert_eq!(rooms(&on_b), vec![("hall".to_string(), 6)]);
    let last = history(&on_b, "hall", 10, None).unwrap();
    assert_eq!(texts(&last), order[total - 10..].to_vec());
    // A join on either replica continues the same sequence.
    let mut late = block_on(Member::join(&on_a, "hall", "late", None, Some(0))).unwrap();
    assert_eq!(late.welcome.last_seq, total as u64);
    block_on(late.say("hello from late")).unwrap();
    let seen_on_b = block_on(members[1].messages(1)).unwrap();
    assert_eq!((seen_on_b[0].seq, seen_on_b[0].text.as_str()), (total as u64 + 1, "hello from late"));
}

/// A `server` process, killed and reaped on drop.
struct ServerProcess {
    child: Child,
    addr: String,
}

impl ServerProcess {
    fn start(args: &[&str]) -> ServerProcess {
        let ready = ReadyFile::new();
        let mut child = Command::new(env!("CARGO_BIN_EXE_server"))
            .args(["--addr", "127.0.0.1:0", "--grace", "1s"])
            .args(args)
            .arg("--ready-file")
            .arg(ready.path())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = match ready.wait(READY_TIMEOUT, || !matches!(child.try_wait(), Ok(None))) {
            Ok(ready) => ready.grpc,
            Err(why) => panic!("the server did not start: {why}"),
        };
        ServerProcess { child, addr }
    }

    /// SIGKILL: no goodbye to its clients, no cleanup in Redis.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Takes a chat client's outputs until `done` says so.
fn outputs_until(outputs: &mpsc::Receiver<Output>, seen: &mut Vec<Output>, mut done: impl FnMut(&[Output]) -> bool) {
    while !done(seen) {
        seen.push(outputs.recv_timeout(DEADLINE).expect("the chat client keeps reporting"));
    }
}

#[test]
fn a_member_whose_replica_is_killed_resumes_on_the_other_with_the_whole_conversation() {
    let redis = Redis::start();
    let data = TempDir::new("chat-failover");
    let data_dir = data.path().to_str().unwrap();
    let mut a = ServerProcess::start(&["--broker", &redis.url, "--data-dir", data_dir]);
    let b = start_chat_server(broker_config(&redis));
    let on_b = client(b.addr());

    // ann talks through the chat client, A first then B; bob and cat are on B.
    let options = ChatOptions {
        addrs: vec![a.addr.clone(), b.addr().to_string()],
        room: "ops".to_string(),
        user: "ann".to_string(),
        history: Some(0),
        give_up_after: Duration::from_secs(30),
        headers: None,
    };
    let (lines, input) = async_channel::unbounded::<String>();
    let (output_tx, outputs) = mpsc::channel();
    let (resumed_tx, resumed_at) = mpsc::channel();
    let ann = std::thread::spawn(move || {
        block_on(chat_client::run(&options, chat_client::plaintext, input, |o| {
            if matches!(&o, Output::Notice(n) if n.starts_with("resumed ")) {
                resumed_tx.send(Instant::now()).unwrap();
            }
            output_tx.send(o).unwrap()
        }))
    });
    let mut ann_seen = Vec::new();
    outputs_until(&outputs, &mut ann_seen, |seen| {
        seen.iter().any(|o| matches!(o, Output::Notice(n) if n.starts_with("joined ops on")))
    });
    let mut bob = block_on(Member::join(&on_b, "ops", "bob", None, Some(0))).unwrap();
    let mut cat = block_on(Member::join(&on_b, "ops", "cat", None, Some(0))).unwrap();
    // dan, also on A, shows what happens without resuming: he rejoins afresh.
    let on_a = client(&a.addr);
    let mut dan = block_on(Member::join(&on_a, "ops", "dan", None, Some(0))).unwrap();

    let talk = |bob: &mut Member, cat: &mut Member, from: usize| {
        for i in from..from + 5 {
            lines.send_blocking(format!("ann {i}")).unwrap();
            block_on(bob.say(&format!("bob {i}"))).unwrap();
            block_on(cat.say(&format!("cat {i}"))).unwrap();
        }
    };
    talk(&mut bob, &mut cat, 0);
    let mut bob_got = block_on(bob.messages(15)).unwrap();
    outputs_until(&outputs, &mut ann_seen, |seen| messages_in(seen).len() >= 15);

    // Mid-conversation, ann's replica dies; the others go on talking, and
    // so does ann, whose lines wait for the client to resume on B.
    let dan_before = block_on(dan.messages(15)).unwrap();
    let killed = Instant::now();
    a.kill();
    talk(&mut bob, &mut cat, 5);
    bob_got.extend(block_on(bob.messages(15)).unwrap());
    // dan's call died with replica A.
    block_on(dan.failure());
    let dan_again = block_on(Member::join(&on_b, "ops", "dan", None, Some(0))).unwrap();
    assert_eq!((dan_again.welcome.last_seq, dan_again.welcome.backlog), (30, 0));
    assert_eq!(seqs(&dan_before), (1..=15).collect::<Vec<_>>(), "without resume_after, 16..=30 are lost to dan");
    outputs_until(&outputs, &mut ann_seen, |seen| messages_in(seen).len() >= 30);
    let resumed_after = ann_seen
        .iter()
        .position(|o| matches!(o, Output::Notice(n) if n.starts_with("resumed ops on")))
        .expect("ann's client resumed");
    let resumed = resumed_at.recv().unwrap().duration_since(killed);
    eprintln!("failover: ann resumed on the other replica {resumed:?} after hers was killed");
    lines.close();
    ann.join().unwrap().expect("ann leaves cleanly");

    let ann_got = messages_in(&ann_seen);
    assert_eq!(seqs(&ann_got), (1..=30).collect::<Vec<_>>(), "ann: nothing lost, nothing twice");
    assert_eq!(texts(&ann_got), texts(&bob_got), "ann and bob saw one conversation");
    let mut all = texts(&ann_got);
    all.sort();
    let mut expected: Vec<String> =
        ["ann", "bob", "cat"].iter().flat_map(|u| (0..10).map(move |i| format!("{u} {i}"))).collect();
    expected.sort();
    assert_eq!(all, expected, "every line of the three users, once");
    assert!(resumed_after > 0);
    drop(cat);
}
