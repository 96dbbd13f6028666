//! chat.v1.Chat's Notifications: a user's mentions from every room (joined
//! or not), across replicas, resumable without a gap or a duplicate, on
//! every backend (embedded, Redis with two replicas, etcd with two
//! replicas, and Redis behind Sentinels acknowledging after a replica); a
//! resend by client_id notifies nobody twice; the mention rule
//! (self, duplicates, word starts); bad input and limits; identity with tokens.

use crate::common::chat::*;
use crate::common::etcd::EtcdCluster;
use futures::executor::block_on;
use futures::prelude::*;
use greet::chat::ChatConfig;
use greet::proto::chat::{notification_event, Notification, NotificationEvent, NotificationsRequest, PostRequest};
use greet::proto::chat_grpc::ChatClient;
use grpcio::{CallOption, ClientSStreamReceiver, RpcStatusCode};

/// One Notifications call, past its Welcome.
struct Inbox {
    events: ClientSStreamReceiver<NotificationEvent>,
    last_seq: u64,
    epoch: String,
    backlog: u32,
}

fn request(user: &str, resume_after: Option<u64>, epoch: Option<&str>) -> NotificationsRequest {
    NotificationsRequest {
        user: user.to_string(),
        resume_after,
        epoch: epoch.map(str::to_string),
        ..Default::default()
    }
}

fn open_opt(chat: &ChatClient, options: CallOption, request: NotificationsRequest) -> grpcio::Result<Inbox> {
    // Shorter than DEADLINE: a notification that never comes fails the test in 30 s.
    let mut events = chat.notifications_opt(&request, options.timeout(std::time::Duration::from_secs(30)))?;
    match block_on(events.try_next())? {
        Some(NotificationEvent { event: Some(notification_event::Event::Welcome(w)), .. }) => {
            Ok(Inbox { events, last_seq: w.last_seq, epoch: w.epoch, backlog: w.backlog })
        }
        other => panic!("expected a welcome, got {other:?}"),
    }
}

fn open(chat: &ChatClient, request: NotificationsRequest) -> grpcio::Result<Inbox> {
    open_opt(chat, CallOption::default(), request)
}

impl Inbox {
    /// The next `count` notifications (heartbeats skipped).
    fn next(&mut self, count: usize) -> Vec<Notification> {
        let mut seen = Vec::new();
        while seen.len() < count {
            match block_on(self.events.try_next()).expect("the call goes on") {
                Some(NotificationEvent { event: Some(notification_event::Event::Heartbeat(_)), .. }) => {}
                Some(NotificationEvent { event: Some(notification_event::Event::Notification(n)), .. }) => seen.push(n),
                other => panic!("expected a notification, got {other:?}"),
            }
        }
        seen
    }
}

fn post_opt(
    chat: &ChatClient,
    options: CallOption,
    room: &str,
    user: &str,
    text: &str,
    id: &str,
) -> grpcio::Result<u64> {
    let request = PostRequest {
        room: room.to_string(),
        user: user.to_string(),
        text: text.to_string(),
        client_id: id.to_string(),
        ..Default::default()
    };
    chat.post_opt(&request, options.timeout(DEADLINE)).map(|answer| answer.seq)
}

fn post(chat: &ChatClient, room: &str, user: &str, text: &str, id: &str) -> u64 {
    post_opt(chat, CallOption::default(), room, user, text, id).expect("the post is stored")
}

/// (seq, room, message_seq, from, text) of each notification.
fn summary(notes: &[Notification]) -> Vec<(u64, &str, u64, &str, &str)> {
    notes.iter().map(|n| (n.seq, n.room.as_str(), n.message_seq, n.from.as_str(), n.text.as_str())).collect()
}

/// The whole contract on two replicas `a` and `b` (the same server for the
/// embedded backend): bob never joins any room.
fn mentions_reach_the_user_once_and_resume_without_gap_or_duplicate(a: &ChatClient, b: &ChatClient) {
    let mut bob = open(b, request("bob", None, None)).unwrap();
    assert_eq!((bob.last_seq, bob.backlog), (0, 0), "a user never mentioned has no notification");
    assert!(!bob.epoch.is_empty(), "the inbox has an epoch to resume in");

    assert_eq!(post(a, "r1", "ann", "hi @bob, welcome", "c1"), 1);
    assert_eq!(summary(&bob.next(1)), [(1, "r1", 1, "ann", "hi @bob, welcome")]);
    // The same message again, through the other replica: the stored copy,
    // and no second notification (the next one is r2's, numbered 2).
    assert_eq!(post(b, "r1", "ann", "hi @bob, welcome", "c1"), 1, "a resend answers the stored copy");
    assert_eq!(post(a, "r2", "cy", "@bob @bob: twice in one message", "c2"), 1);
    let second = bob.next(1);
    assert_eq!(summary(&second), [(2, "r2", 1, "cy", "@bob @bob: twice in one message")]);
    assert_eq!(second[0].kind, "mention");
    drop(bob);

    // Away: two mentions, and messages that mention nobody.
    post(a, "r1", "ann", "@bob three", "c3");
    post(a, "r1", "bob", "@bob talking to myself", "c4");
    post(a, "r1", "ann", "mail@bob is not a mention", "c5");
    post(b, "r3", "dee", "(x) @bob! four", "c6");

    let mut bob = open(a, request("bob", Some(2), Some(&epoch_of(b)))).unwrap();
    assert_eq!((bob.last_seq, bob.backlog), (4, 2), "exactly the two missed ones");
    assert_eq!(summary(&bob.next(2)), [(3, "r1", 2, "ann", "@bob three"), (4, "r3", 1, "dee", "(x) @bob! four")]);
    post(b, "r2", "cy", "@bob live again", "c7");
    assert_eq!(summary(&bob.next(1)), [(5, "r2", 2, "cy", "@bob live again")]);

    let (code, message) = status_of(open(a, request("bob", Some(2), Some("another"))).err().unwrap());
    assert_eq!(code, RpcStatusCode::OUT_OF_RANGE);
    assert_eq!(
        message,
        "the history of the notifications of \"bob\" was reset (another epoch): its numbering started again; join afresh without resume_after"
    );
    let (code, _) = status_of(open(b, request("bob", Some(9), Some(&bob.epoch))).err().unwrap());
    assert_eq!(code, RpcStatusCode::OUT_OF_RANGE, "a resume past the last notification");
}

/// bob's inbox epoch, from a fresh call.
fn epoch_of(chat: &ChatClient) -> String {
    open(chat, request("bob", None, Some(""))).unwrap().epoch
}

#[test]
fn notifications_on_the_embedded_store() {
    let server = start_chat_server(ChatConfig::default());
    let chat = client(server.addr());
    mentions_reach_the_user_once_and_resume_without_gap_or_duplicate(&chat, &chat);
}

#[test]
fn notifications_across_two_replicas_over_redis() {
    let redis = Redis::start();
    let config = || ChatConfig { broker: Some(redis.url.clone()), ..Default::default() };
    let (a, b) = (start_chat_server(config()), start_chat_server(config()));
    mentions_reach_the_user_once_and_resume_without_gap_or_duplicate(&client(a.addr()), &client(b.addr()));
}

/// With Sentinels a message (and its notifications) is acknowledged only once
/// a Redis replica has it: notifications wait for their inbox's commit mark.
#[test]
fn notifications_across_two_replicas_over_redis_sentinels_acknowledged_by_a_replica() {
    let ha = RedisHa::start();
    let config = || ChatConfig { broker: Some(ha.url()), ..Default::default() };
    let (a, b) = (start_chat_server(config()), start_chat_server(config()));
    mentions_reach_the_user_once_and_resume_without_gap_or_duplicate(&client(a.addr()), &client(b.addr()));
}

#[test]
fn notifications_across_two_replicas_over_etcd() {
    let etcd = EtcdCluster::start(3);
    let a = start_chat_server(ChatConfig { broker: Some(etcd.url_from(0)), ..Default::default() });
    let b = start_chat_server(ChatConfig { broker: Some(etcd.url_from(1)), ..Default::default() });
    mentions_reach_the_user_once_and_resume_without_gap_or_duplicate(&client(a.addr()), &client(b.addr()));
}

#[test]
fn bad_notification_requests_and_too_many_mentions_get_exact_statuses() {
    let server =
        start_chat_server(ChatConfig { heartbeat: std::time::Duration::from_millis(50), ..Default::default() });
    let chat = client(server.addr());
    let too_many: String = (1..=9).map(|i| format!("@u{i} ")).collect();
    let refused = post_opt(&chat, CallOption::default(), "r", "ann", &too_many, "x").unwrap_err();
    assert_eq!(
        status_of(refused),
        (RpcStatusCode::INVALID_ARGUMENT, "the message mentions 9 users; at most 8 per message".to_string())
    );
    assert_eq!(history(&chat, "r", 10, None).unwrap().len(), 0, "the refused message was not stored");
    assert_eq!(open(&chat, request("u1", None, None)).unwrap().last_seq, 0, "nobody was notified");

    let refused = |request| status_of(open(&chat, request).err().expect("refused"));
    assert_eq!(
        refused(request("", None, None)),
        (RpcStatusCode::INVALID_ARGUMENT, "user is empty; give a user name".to_string())
    );
    assert_eq!(
        refused(NotificationsRequest { history: Some(1001), ..request("bob", None, None) }),
        (RpcStatusCode::INVALID_ARGUMENT, "1001 messages of history asked for; at most 1000".to_string())
    );

    let mut open_calls: Vec<Inbox> = (0..4).map(|_| open(&chat, request("bob", None, None)).unwrap()).collect();
    assert_eq!(
        refused(request("bob", None, None)),
        (
            RpcStatusCode::RESOURCE_EXHAUSTED,
            "\"bob\" already has 4 Notifications calls open on this server; close one first".to_string()
        )
    );
    assert!(open(&chat, request("ann", None, None)).is_ok(), "the limit is per user");
    open_calls.pop();
    // The server notices the cancelled call at its next heartbeat at the latest.
    poll("a closed call to free its place", std::time::Duration::from_secs(10), || {
        open(&chat, request("bob", None, None)).ok()
    });
}

#[test]
fn with_tokens_notifications_are_the_tokens_principals() {
    let server = start_chat_server_with_tokens("token-bob bob\ntoken-eve eve\n");
    let chat = client(server.addr());
    let as_token = |token: &str| CallOption::default().headers(greet::client::bearer_metadata(token).unwrap());
    let mut bob = open_opt(&chat, as_token("token-bob"), request("", None, None)).unwrap();
    post_opt(&chat, as_token("token-eve"), "r", "", "@bob from eve, and @eve myself", "e1").unwrap();
    assert_eq!(summary(&bob.next(1)), [(1, "r", 1, "eve", "@bob from eve, and @eve myself")]);
    let eve = open_opt(&chat, as_token("token-eve"), request("eve", None, None)).unwrap();
    assert_eq!(eve.last_seq, 0, "eve's own mention did not notify her");
    let refused = open_opt(&chat, as_token("token-eve"), request("bob", None, None)).err().unwrap();
    assert_eq!(
        status_of(refused),
        (
            RpcStatusCode::PERMISSION_DENIED,
            "this call's token is \"eve\"'s; it cannot join as \"bob\" (leave user empty or give \"eve\")".to_string()
        )
    );
}
