//! chat.v1.Chat on the etcd broker (`--broker etcd://...`), beyond what it
//! shares with Redis (chat_cluster.rs): a resend that reaches another
//! replica finds the stored copy (echoed once; a resume's backlog carries
//! it to a member that joined after it), a resume from another epoch is refused,
//! and the Redis-only acknowledgement flag is refused with etcd. What it
//! keeps under faults is tests/abuse/nemesis.rs's.

use std::process::Command;

use crate::common::chat::*;
use crate::common::etcd::EtcdCluster;
use futures::executor::block_on;
use futures::SinkExt;
use greet::chat::ChatConfig;
use greet::proto::chat::{client_frame, ClientFrame, Say};
use greet::proto::chat_grpc::ChatClient;
use greet::server::RunningServer;
use grpcio::{RpcStatusCode, WriteFlags};

fn say(text: &str, client_id: &str) -> (ClientFrame, WriteFlags) {
    let say = Say { text: text.into(), client_id: client_id.into(), ..Default::default() };
    (ClientFrame { frame: Some(client_frame::Frame::Say(say)), ..Default::default() }, WriteFlags::default())
}

/// Two chat servers on one three-member etcd cluster, each with a client.
struct TwoReplicas {
    on_a: ChatClient,
    on_b: ChatClient,
    // Dropped after the clients: the servers, then etcd.
    _servers: [RunningServer; 2],
    _etcd: EtcdCluster,
}

impl TwoReplicas {
    fn start() -> TwoReplicas {
        let etcd = EtcdCluster::start(3);
        let a = start_chat_server(ChatConfig { broker: Some(etcd.url_from(0)), ..Default::default() });
        let b = start_chat_server(ChatConfig { broker: Some(etcd.url_from(1)), ..Default::default() });
        TwoReplicas { on_a: client(a.addr()), on_b: client(b.addr()), _servers: [a, b], _etcd: etcd }
    }
}

#[test]
fn a_say_resent_to_another_replica_with_the_same_client_id_is_stored_once() {
    let replicas = TwoReplicas::start();
    let (on_a, on_b) = (&replicas.on_a, &replicas.on_b);
    let mut ann_on_a = block_on(Member::join(on_a, "once", "ann", None, Some(0))).unwrap();
    let mut ann_on_b = block_on(Member::join(on_b, "once", "ann", None, Some(0))).unwrap();
    block_on(ann_on_a.sink.send(say("hello", "c1"))).unwrap();
    assert_eq!(seqs(&block_on(ann_on_a.messages(1)).unwrap()), [1]);
    // The same message again, through the other replica: its echo is the stored copy's.
    block_on(ann_on_b.sink.send(say("hello", "c1"))).unwrap();
    block_on(ann_on_b.sink.send(say("next", "c2"))).unwrap();
    // Both replicas' History holds each message once, numbered 1 and 2.
    for chat in [on_a, on_b] {
        let stored = poll("the history to hold both messages", std::time::Duration::from_secs(10), || {
            let h = history(chat, "once", 10, None).ok()?;
            (h.len() >= 2).then_some(h)
        });
        assert_eq!(texts(&stored), ["hello", "next"]);
        assert_eq!(seqs(&stored), [1, 2], "no second copy took a number");
    }
}

#[test]
fn a_resend_of_a_message_stored_before_the_join_is_not_echoed_again_and_a_resume_finds_its_first_copy() {
    // What a Connect client whose server died between storing its Say and
    // echoing it meets on the other replica (the nemesis's kill-server run).
    let replicas = TwoReplicas::start();
    let (on_a, on_b) = (&replicas.on_a, &replicas.on_b);
    let mut ann_on_a = block_on(Member::join(on_a, "stored", "ann", None, Some(0))).unwrap();
    block_on(ann_on_a.sink.send(say("hello", "c1"))).unwrap();
    assert_eq!(seqs(&block_on(ann_on_a.messages(1)).unwrap()), [1]);
    // A fresh join on B after the store: its stream starts after seq 1.
    let mut ann_on_b = block_on(Member::join(on_b, "stored", "ann", None, Some(0))).unwrap();
    assert_eq!(ann_on_b.welcome.last_seq, 1);
    block_on(ann_on_b.sink.send(say("hello", "c1"))).unwrap();
    block_on(ann_on_b.sink.send(say("next", "c2"))).unwrap();
    // The resend takes no number and brings no echo: the next message is c2's, numbered 2.
    let next = block_on(ann_on_b.messages(1)).unwrap();
    assert_eq!((next[0].client_id.as_str(), next[0].seq), ("c2", 2), "{next:?}");
    // A resume from before the store carries the first copy, once.
    let epoch = ann_on_b.welcome.epoch.clone();
    let mut resumed = block_on(Member::join_with_epoch(on_b, "stored", "ann", Some(0), Some(&epoch))).unwrap();
    assert_eq!(resumed.welcome.backlog, 2);
    let backlog = block_on(resumed.messages(2)).unwrap();
    let ids: Vec<(&str, u64)> = backlog.iter().map(|m| (m.client_id.as_str(), m.seq)).collect();
    assert_eq!(ids, [("c1", 1), ("c2", 2)]);
}

#[test]
fn a_resume_from_another_epoch_is_refused_over_etcd() {
    let etcd = EtcdCluster::start(3);
    let server = start_chat_server(ChatConfig { broker: Some(etcd.url()), ..Default::default() });
    let chat = client(server.addr());
    let mut ann = block_on(Member::join(&chat, "epochs", "ann", None, Some(0))).unwrap();
    block_on(ann.sink.send(say("one", "c1"))).unwrap();
    block_on(ann.messages(1)).unwrap();
    let welcome_epoch = ann.welcome.epoch.clone();
    assert!(!welcome_epoch.is_empty(), "the room has an epoch");
    let refused = block_on(Member::join_with_epoch(&chat, "epochs", "bob", Some(1), Some("not-this-room's")))
        .err()
        .map(status_of)
        .expect("a resume from another epoch is refused");
    assert_eq!(refused.0, RpcStatusCode::OUT_OF_RANGE, "{}", refused.1);
    let resumed = block_on(Member::join_with_epoch(&chat, "epochs", "bob", Some(1), Some(&welcome_epoch))).unwrap();
    assert_eq!(resumed.welcome.last_seq, 1);
}

#[test]
fn the_redis_acknowledgement_flag_is_refused_with_an_etcd_broker() {
    let out = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--addr", "127.0.0.1:0", "--broker", "etcd://127.0.0.1:1", "--broker-ack-replicas", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "--broker-ack-replicas is for Redis: etcd acknowledges a message once a quorum of its members has it"
        ),
        "{stderr}"
    );
}
