//! chat.v1.Chat's browser-shaped calls: Subscribe (Connect's receiving
//! half) and Post (one Say as a unary call), on the same hub as Connect.
//! Ordering across replicas, Post idempotence by client_id, OUT_OF_RANGE
//! on a bad resume, bad input with exact statuses, identity with tokens,
//! and a cancelled Subscribe leaving its room.

use std::time::Duration;

use crate::common::chat::*;
use futures::executor::block_on;
use futures::prelude::*;
use greet::chat::ChatConfig;
use greet::proto::chat::{server_event, Message, PostRequest, PostResponse, ServerEvent, SubscribeRequest, Welcome};
use greet::proto::chat_grpc::ChatClient;
use grpcio::{CallOption, ClientSStreamReceiver, RpcStatusCode};

/// One Subscribe call, past its Welcome.
struct Subscriber {
    events: ClientSStreamReceiver<ServerEvent>,
    welcome: Welcome,
}

fn subscribe_request(room: &str, user: &str) -> SubscribeRequest {
    SubscribeRequest { room: room.to_string(), user: user.to_string(), ..Default::default() }
}

async fn subscribe_opt(
    client: &ChatClient,
    options: CallOption,
    request: SubscribeRequest,
) -> grpcio::Result<Subscriber> {
    let mut events = client.subscribe_opt(&request, options.timeout(DEADLINE))?;
    match events.try_next().await? {
        Some(ServerEvent { event: Some(server_event::Event::Welcome(welcome)), .. }) => {
            Ok(Subscriber { events, welcome })
        }
        other => panic!("expected a welcome, got {other:?}"),
    }
}

async fn subscribe(client: &ChatClient, request: SubscribeRequest) -> grpcio::Result<Subscriber> {
    subscribe_opt(client, CallOption::default(), request).await
}

impl Subscriber {
    /// Every event but heartbeats until `count` messages arrived.
    async fn until_messages(&mut self, count: usize) -> Vec<server_event::Event> {
        let mut seen = Vec::new();
        let mut messages = 0;
        while messages < count {
            match self.events.try_next().await.expect("the call goes on") {
                Some(ServerEvent { event: Some(server_event::Event::Heartbeat(_)), .. }) => {}
                Some(ServerEvent { event: Some(event), .. }) => {
                    messages += matches!(event, server_event::Event::Message(_)) as usize;
                    seen.push(event);
                }
                other => panic!("expected an event, got {other:?}"),
            }
        }
        seen
    }

    async fn messages(&mut self, count: usize) -> Vec<Message> {
        let events = self.until_messages(count).await;
        events
            .into_iter()
            .filter_map(|e| match e {
                server_event::Event::Message(m) => Some(m),
                _ => None,
            })
            .collect()
    }
}

fn post_request(room: &str, user: &str, text: &str, client_id: &str) -> PostRequest {
    PostRequest {
        room: room.to_string(),
        user: user.to_string(),
        text: text.to_string(),
        client_id: client_id.to_string(),
        ..Default::default()
    }
}

fn post_opt(client: &ChatClient, options: CallOption, request: &PostRequest) -> grpcio::Result<PostResponse> {
    client.post_opt(request, options.timeout(DEADLINE))
}

fn post(client: &ChatClient, room: &str, user: &str, text: &str, client_id: &str) -> grpcio::Result<PostResponse> {
    post_opt(client, CallOption::default(), &post_request(room, user, text, client_id))
}

fn broker_config(redis: &Redis) -> ChatConfig {
    ChatConfig { broker: Some(redis.url.clone()), ..Default::default() }
}

#[test]
fn posts_on_one_replica_reach_a_subscriber_on_the_other_in_seq_order_without_presence_for_the_poster() {
    let redis = Redis::start();
    let a = start_chat_server(broker_config(&redis));
    let b = start_chat_server(broker_config(&redis));
    let (on_a, on_b) = (client(a.addr()), client(b.addr()));
    let mut alice = block_on(subscribe(&on_a, subscribe_request("web", "alice"))).unwrap();
    assert_eq!(alice.welcome.last_seq, 0);
    let epoch = alice.welcome.epoch.clone();
    for n in 1..=5u64 {
        let answer = post(&on_b, "web", "bob", &format!("bob {n}"), &format!("bob-{n}")).unwrap();
        assert_eq!((answer.seq, answer.epoch.as_str()), (n, epoch.as_str()), "Post answers the stored seq and epoch");
    }
    let events = block_on(alice.until_messages(5));
    let messages: Vec<(u64, String, String, String)> = events
        .iter()
        .filter_map(|e| match e {
            server_event::Event::Message(m) => Some((m.seq, m.user.clone(), m.text.clone(), m.client_id.clone())),
            _ => None,
        })
        .collect();
    let want: Vec<_> = (1..=5u64).map(|n| (n, "bob".to_string(), format!("bob {n}"), format!("bob-{n}"))).collect();
    assert_eq!(messages, want);
    // Presence travels in the room's stream between its messages: a
    // poster announced as a member would show up before its message.
    for event in &events {
        if let server_event::Event::Joined(p) | server_event::Event::Left(p) = event {
            assert_eq!(p.user, "alice", "only the subscriber is a member; a Post announces nobody: {event:?}");
        }
    }
    assert_eq!(rooms(&on_b), vec![("web".to_string(), 1)], "the poster is not counted as a member");
}

#[test]
fn a_post_resent_with_its_client_id_is_stored_once_and_answers_the_first_seq() {
    // Embedded: the hub finds the resend in the room's cached window.
    let server = start_chat_server(ChatConfig::default());
    let on = client(server.addr());
    let first = post(&on, "once", "ann", "hello", "c-1").unwrap();
    post(&on, "once", "ann", "something else", "c-2").unwrap();
    let again = post(&on, "once", "ann", "hello", "c-1").unwrap();
    assert_eq!((first.seq, again.seq), (1, 1));
    let texts: Vec<String> = history(&on, "once", 0, None).unwrap().into_iter().map(|m| m.text).collect();
    assert_eq!(texts, ["hello", "something else"]);
    assert_eq!(rooms(&on), vec![], "a Post leaves no room open with members");

    // Over Redis, the resend may reach another replica.
    let redis = Redis::start();
    let a = start_chat_server(broker_config(&redis));
    let b = start_chat_server(broker_config(&redis));
    let (on_a, on_b) = (client(a.addr()), client(b.addr()));
    let first = post(&on_a, "once", "ann", "hello", "c-1").unwrap();
    let again = post(&on_b, "once", "ann", "hello", "c-1").unwrap();
    let next = post(&on_b, "once", "ann", "next", "c-2").unwrap();
    assert_eq!((first.seq, again.seq, next.seq), (1, 1, 2));
    let texts: Vec<String> = history(&on_a, "once", 0, None).unwrap().into_iter().map(|m| m.text).collect();
    assert_eq!(texts, ["hello", "next"]);
}

#[test]
fn a_subscribe_resumes_exactly_after_its_seq_and_a_bad_resume_gets_out_of_range() {
    let server = start_chat_server(ChatConfig::default());
    let on = client(server.addr());
    for n in 1..=3 {
        post(&on, "resume", "ann", &format!("m{n}"), "").unwrap();
    }
    let epoch = block_on(subscribe(&on, subscribe_request("resume", "bob"))).unwrap().welcome.epoch;

    let resumed =
        SubscribeRequest { resume_after: Some(1), epoch: Some(epoch.clone()), ..subscribe_request("resume", "bob") };
    let mut bob = block_on(subscribe(&on, resumed)).unwrap();
    assert_eq!((bob.welcome.last_seq, bob.welcome.backlog), (3, 2));
    post(&on, "resume", "ann", "m4", "").unwrap();
    let seen: Vec<(u64, String)> = block_on(bob.messages(3)).into_iter().map(|m| (m.seq, m.text)).collect();
    assert_eq!(seen, [(2, "m2".to_string()), (3, "m3".to_string()), (4, "m4".to_string())]);

    let beyond = SubscribeRequest { resume_after: Some(9), epoch: Some(epoch), ..subscribe_request("resume", "bob") };
    let err = block_on(subscribe(&on, beyond)).err().expect("a resume beyond the room fails");
    assert_eq!(
        status_of(err),
        (
            RpcStatusCode::OUT_OF_RANGE,
            "the history of room \"resume\" was reset (it is at message 4, not 9): its numbering started again; join afresh without resume_after".to_string()
        )
    );
    let other_epoch = SubscribeRequest {
        resume_after: Some(1),
        epoch: Some("not-this-one".into()),
        ..subscribe_request("resume", "bob")
    };
    let err = block_on(subscribe(&on, other_epoch)).err().expect("a resume from another epoch fails");
    assert_eq!(
        status_of(err),
        (
            RpcStatusCode::OUT_OF_RANGE,
            "the history of room \"resume\" was reset (another epoch): its numbering started again; join afresh without resume_after".to_string()
        )
    );
}

#[test]
fn subscribe_and_post_with_bad_input_get_invalid_argument_with_a_message_that_says_what_to_fix() {
    let server = start_chat_server(ChatConfig::default());
    let on = client(server.addr());
    let invalid = |message: &str| (RpcStatusCode::INVALID_ARGUMENT, message.to_string());
    let long = "x".repeat(65);
    let cases = [
        (post_request("", "ann", "hi", ""), invalid("room is empty; give a room name")),
        (post_request("r", "", "hi", ""), invalid("user is empty; give a user name")),
        (post_request("r", "ann", "", ""), invalid("message text is empty")),
        (
            post_request("r", "ann", &"y".repeat(4097), ""),
            invalid("message text is 4097 bytes long; messages are limited to 4096 bytes"),
        ),
        (post_request("r", "ann", "hi", &long), invalid("client_id is 65 bytes long; at most 64 bytes")),
        (
            post_request(&long, "ann", "hi", ""),
            invalid("room name is 65 bytes long; room names are limited to 64 bytes"),
        ),
    ];
    for (request, want) in cases {
        let err = post_opt(&on, CallOption::default(), &request).expect_err("a bad Post fails");
        assert_eq!(status_of(err), want, "{request:?}");
    }
    let subscribes = [
        (subscribe_request("", "ann"), invalid("room is empty; give a room name")),
        (subscribe_request("r", ""), invalid("user is empty; give a user name")),
        (
            SubscribeRequest { history: Some(1001), ..subscribe_request("r", "ann") },
            invalid("1001 messages of history asked for; at most 1000"),
        ),
    ];
    for (request, want) in subscribes {
        let err = block_on(subscribe(&on, request.clone())).err().expect("a bad Subscribe fails");
        assert_eq!(status_of(err), want, "{request:?}");
    }
}

#[test]
fn with_tokens_subscribe_and_post_speak_as_the_tokens_principal() {
    let server = start_chat_server_with_tokens("token-bob bob\ntoken-eve eve\n");
    let on = client(server.addr());
    let as_token = |token: &str| CallOption::default().headers(greet::client::bearer_metadata(token).unwrap());

    let mut eve = block_on(subscribe_opt(&on, as_token("token-eve"), subscribe_request("lobby", ""))).unwrap();
    let err = post_opt(&on, as_token("token-eve"), &post_request("lobby", "bob", "I am bob", "")).err().unwrap();
    assert_eq!(
        status_of(err),
        (
            RpcStatusCode::PERMISSION_DENIED,
            "this call's token is \"eve\"'s; it cannot join as \"bob\" (leave user empty or give \"eve\")".to_string()
        )
    );
    let err = block_on(subscribe_opt(&on, as_token("token-eve"), subscribe_request("lobby", "bob"))).err().unwrap();
    assert_eq!(status_of(err).0, RpcStatusCode::PERMISSION_DENIED);
    post_opt(&on, as_token("token-bob"), &post_request("lobby", "", "from bob's token", "")).unwrap();
    let events = block_on(eve.until_messages(1));
    let joined: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            server_event::Event::Joined(p) => Some(p.user.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(joined, ["eve"], "the subscriber with no user name joined as its principal");
    match events.last() {
        Some(server_event::Event::Message(m)) => {
            assert_eq!((m.user.as_str(), m.text.as_str()), ("bob", "from bob's token"))
        }
        other => panic!("expected bob's message, got {other:?}"),
    }
}

#[test]
fn a_cancelled_subscribe_leaves_its_room() {
    let config = ChatConfig { heartbeat: Duration::from_millis(50), ..Default::default() };
    let server = start_chat_server(config);
    let on = client(server.addr());
    let ann = block_on(subscribe(&on, subscribe_request("brief", "ann"))).unwrap();
    assert_eq!(rooms(&on), vec![("brief".to_string(), 1)]);
    // Dropping the receiving half cancels the call; the server notices at
    // its next send (a heartbeat at the latest) and the member leaves.
    drop(ann);
    poll("the cancelled subscriber to leave", Duration::from_secs(10), || rooms(&on).is_empty().then_some(()));
}
