//! chat.v1.Chat history on one replica: SQLite across restarts, the cache
//! in front of it, History paging, and resume.

use std::time::Duration;

use crate::common::chat::*;
use futures::executor::block_on;
use greet::chat::{ChatConfig, ChatStats};
use grpcio::RpcStatusCode;

fn in_dir(dir: &TempDir) -> ChatConfig {
    ChatConfig { data_dir: Some(dir.path().to_path_buf()), ..Default::default() }
}

/// Says `texts` as `user` and waits for their echoes (their acknowledgement).
fn say_all(member: &mut Member, texts: impl IntoIterator<Item = String>) -> Vec<greet::proto::chat::Message> {
    let texts: Vec<String> = texts.into_iter().collect();
    block_on(async {
        for text in &texts {
            member.say(text).await.unwrap();
        }
        member.messages(texts.len()).await.unwrap()
    })
}

#[test]
fn history_survives_a_restart_and_a_join_after_it_gets_the_last_messages() {
    let dir = TempDir::new("chat-history");
    {
        let server = start_chat_server(in_dir(&dir));
        let client = client(server.addr());
        let mut ann = Member::join_blocking(&client, "book", "ann");
        say_all(&mut ann, (1..=30).map(|i| format!("line {i}")));
        block_on(ann.leave()).unwrap();
        server.shutdown(Duration::from_secs(5));
    }
    let server = start_chat_server(in_dir(&dir));
    let client = client(server.addr());
    let mut bob = block_on(Member::join(&client, "book", "bob", None, Some(10))).unwrap();
    assert_eq!(bob.welcome.last_seq, 30);
    assert_eq!(bob.welcome.backlog, 10);
    let backlog = block_on(bob.messages(10)).unwrap();
    assert_eq!(seqs(&backlog), (21..=30).collect::<Vec<_>>());
    assert_eq!(texts(&backlog), (21..=30).map(|i| format!("line {i}")).collect::<Vec<_>>());
    assert!(backlog.iter().all(|m| m.user == "ann" && m.room == "book" && m.time_unix_ms > 0));
    // The sequence goes on where it was.
    let next = say_all(&mut bob, ["after the restart".to_string()]);
    assert_eq!(seqs(&next), vec![31]);

    assert_eq!(seqs(&history(&client, "book", 5, None).unwrap()), (27..=31).collect::<Vec<_>>());
    assert_eq!(seqs(&history(&client, "book", 5, Some(10)).unwrap()), (5..=9).collect::<Vec<_>>());
    assert_eq!(seqs(&history(&client, "book", 0, None).unwrap()).len(), 31, "the default limit is 50");
    assert!(history(&client, "no such room", 5, None).unwrap().is_empty());
}

#[test]
fn repeated_joins_to_a_room_read_the_store_once_then_the_cache() {
    let dir = TempDir::new("chat-cache");
    {
        let server = start_chat_server(in_dir(&dir));
        let client = client(server.addr());
        let mut ann = Member::join_blocking(&client, "cached", "ann");
        say_all(&mut ann, (1..=5).map(|i| format!("m{i}")));
    }
    // A fresh server: nothing cached yet.
    let server = start_chat_server(in_dir(&dir));
    let client = client(server.addr());
    for i in 0..10 {
        let mut member = block_on(Member::join(&client, "cached", &format!("u{i}"), None, Some(3))).unwrap();
        assert_eq!(seqs(&block_on(member.messages(3)).unwrap()), vec![3, 4, 5]);
        block_on(member.leave()).unwrap();
    }
    let stats = server.chat().stats();
    assert_eq!(
        (stats.cache_misses, stats.cache_hits, stats.store_reads),
        (1, 9, 1),
        "only the first join reads the store: {stats:?}"
    );
    // History within the cached window is a hit too; beyond it, a miss.
    assert_eq!(seqs(&history(&client, "cached", 2, None).unwrap()), vec![4, 5]);
    assert_eq!(server.chat().stats().cache_hits, 10);
    let small = ChatConfig { cache_window: 2, ..in_dir(&dir) };
    drop(server);
    let server = start_chat_server(small);
    let client = crate::common::chat::client(server.addr());
    assert_eq!(seqs(&history(&client, "cached", 2, None).unwrap()), vec![4, 5]);
    assert_eq!(seqs(&history(&client, "cached", 4, None).unwrap()), vec![2, 3, 4, 5]);
    let ChatStats { cache_hits, cache_misses, store_reads, .. } = server.chat().stats();
    assert_eq!((cache_misses, cache_hits, store_reads), (2, 0, 2), "the window holds 2 messages; 4 needs the store");
}

#[test]
fn the_chat_counters_are_on_the_admin_ports_metrics_page() {
    let config = greet::server::ServerConfig {
        addr: "127.0.0.1:0".to_string(),
        admin_addr: Some("127.0.0.1:0".to_string()),
        ..Default::default()
    };
    let server = greet::server::start(&config).unwrap();
    let client = client(server.addr());
    for user in ["ann", "bob", "cat"] {
        let member = Member::join_blocking(&client, "metered", user);
        block_on(member.leave()).unwrap();
    }
    let _stays = Member::join_blocking(&client, "metered", "dan");
    let admin = server.admin_addr().unwrap().to_string();
    let (status, body) = crate::common::process::http_get(&admin, "/metrics");
    assert_eq!(status, 200);
    for line in ["chat_cache_misses_total 1", "chat_cache_hits_total 3", "chat_rooms 1", "chat_subscribers 1"] {
        assert!(body.lines().any(|l| l == line), "{line:?} is not on the page:\n{body}");
    }
}

#[test]
fn a_member_that_resumes_gets_exactly_the_messages_it_missed_then_live_ones() {
    let server = start_chat_server(ChatConfig::default());
    let client = client(server.addr());
    let mut ann = Member::join_blocking(&client, "r", "ann");
    let mut bob = Member::join_blocking(&client, "r", "bob");
    say_all(&mut ann, (1..=5).map(|i| format!("a{i}")));
    let seen = block_on(bob.messages(5)).unwrap();
    let last = seen.last().unwrap().seq;
    drop(bob);
    say_all(&mut ann, (6..=12).map(|i| format!("a{i}")));

    let mut bob = block_on(Member::join(&client, "r", "bob", Some(last), None)).unwrap();
    assert_eq!((bob.welcome.last_seq, bob.welcome.backlog), (12, 7));
    say_all(&mut ann, ["live".to_string()]);
    let got = block_on(bob.messages(8)).unwrap();
    assert_eq!(seqs(&got), (6..=13).collect::<Vec<_>>(), "no gap, no duplicate");
    assert_eq!(got.last().unwrap().text, "live");

    // Resuming from the newest message replays nothing.
    let caught_up = block_on(Member::join(&client, "r", "cat", Some(13), None)).unwrap();
    assert_eq!(caught_up.welcome.backlog, 0);
}

#[test]
fn a_resume_beyond_what_is_replayed_gets_out_of_range() {
    let server = start_chat_server(ChatConfig::default());
    let client = client(server.addr());
    let mut ann = Member::join_blocking(&client, "big", "ann");
    // 10,001 missed messages is one more than a resume replays.
    block_on(async {
        for chunk in 0..41 {
            let n = if chunk == 40 { 10_002 - 40 * 250 } else { 250 };
            for i in 0..n {
                ann.say(&format!("{chunk}/{i}")).await.unwrap();
            }
            ann.messages(n).await.unwrap();
        }
    });
    let error = block_on(Member::join(&client, "big", "bob", Some(1), None)).err().unwrap();
    let (code, message) = status_of(error);
    assert_eq!(code, RpcStatusCode::OUT_OF_RANGE);
    assert_eq!(
        message,
        "cannot resume after message 1: 10001 messages were missed, at most 10000 are replayed; join without resume_after"
    );
    let ok = block_on(Member::join(&client, "big", "bob", Some(2), Some(0))).unwrap();
    assert_eq!(ok.welcome.backlog, 10_000);
}
