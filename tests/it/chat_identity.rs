//! Who a chat member is. With `--auth-tokens` a member is its token's
//! principal: a join naming nobody takes it, a join naming anyone else is
//! PERMISSION_DENIED, and presence, echoes and History carry the principal.
//! Without tokens, names stay as chosen.

use crate::common::chat::*;
use futures::executor::block_on;
use futures::prelude::*;
use greet::chat::ChatConfig;
use greet::proto::chat::{server_event, HistoryRequest, ServerEvent};
use greet::proto::chat_grpc::ChatClient;
use greet::server::RunningServer;
use grpcio::{CallOption, RpcStatusCode};

const TOKENS: &str = "token-bob bob\ntoken-eve eve\n";

fn start_server_with_tokens() -> RunningServer {
    start_chat_server_with_tokens(TOKENS)
}

fn as_token(token: &str) -> CallOption {
    CallOption::default().headers(greet::client::bearer_metadata(token).unwrap())
}

/// The next presence or message event, skipping heartbeats.
async fn next_event(member: &mut Member) -> server_event::Event {
    loop {
        match member.next().await.expect("the call goes on") {
            Some(ServerEvent { event: Some(server_event::Event::Heartbeat(_)), .. }) => {}
            Some(ServerEvent { event: Some(event), .. }) => return event,
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

#[test]
fn a_join_naming_another_user_is_refused_and_says_whose_token_it_is() {
    let server = start_server_with_tokens();
    let client = client(server.addr());
    block_on(async {
        let err = match Member::join_opt(&client, as_token("token-eve"), "lobby", "bob", None, None).await {
            Ok(_) => panic!("eve's token joined as bob"),
            Err(e) => e,
        };
        assert_eq!(
            status_of(err),
            (
                RpcStatusCode::PERMISSION_DENIED,
                "this call's token is \"eve\"'s; it cannot join as \"bob\" (leave user empty or give \"eve\")"
                    .to_string()
            )
        );
    });
    let mut bob = block_on(Member::join_opt(&client, as_token("token-bob"), "lobby", "bob", None, None)).unwrap();
    block_on(async {
        bob.say("only bob speaks as bob").await.unwrap();
        bob.messages(1).await.unwrap();
    });
    assert_eq!(history_as(&client, "token-eve", "lobby"), [("bob".to_string(), "only bob speaks as bob".to_string())]);
}

#[test]
fn a_join_naming_nobody_speaks_as_its_tokens_principal_in_presence_echoes_and_history() {
    let server = start_server_with_tokens();
    let client = client(server.addr());
    block_on(async {
        let mut bob = Member::join_opt(&client, as_token("token-bob"), "lobby", "bob", None, None).await.unwrap();
        let mut eve = Member::join_opt(&client, as_token("token-eve"), "lobby", "", None, None).await.unwrap();
        // Bob is told of his own join first, then of the next member's.
        for want in ["bob", "eve"] {
            match next_event(&mut bob).await {
                server_event::Event::Joined(p) => assert_eq!(p.user, want),
                other => panic!("expected {want}'s presence, got {other:?}"),
            }
        }
        eve.say("hello from eve").await.unwrap();
        for member in [&mut bob, &mut eve] {
            let got = member.messages(1).await.unwrap();
            assert_eq!((got[0].user.as_str(), got[0].text.as_str()), ("eve", "hello from eve"));
        }
    });
    let stored = history_as(&client, "token-bob", "lobby");
    assert_eq!(stored, [("eve".to_string(), "hello from eve".to_string())]);
}

/// `(user, text)` of a room's stored messages, read with `token`.
fn history_as(client: &ChatClient, token: &str, room: &str) -> Vec<(String, String)> {
    let req = HistoryRequest { room: room.to_string(), limit: 10, ..Default::default() };
    let mut stream = client.history_opt(&req, as_token(token).timeout(DEADLINE)).unwrap();
    block_on(async {
        let mut stored = Vec::new();
        while let Some(event) = stream.try_next().await.unwrap() {
            if let Some(server_event::Event::Message(m)) = event.event {
                stored.push((m.user, m.text));
            }
        }
        stored
    })
}

#[test]
fn without_tokens_a_member_is_the_name_it_chose_and_must_choose_one() {
    let server = start_chat_server(ChatConfig::default());
    let client = client(server.addr());
    block_on(async {
        let err = match Member::join(&client, "lobby", "", None, None).await {
            Ok(_) => panic!("a join with no user was accepted"),
            Err(e) => e,
        };
        assert_eq!(status_of(err), (RpcStatusCode::INVALID_ARGUMENT, "user is empty; give a user name".to_string()));
        let mut bob = Member::join(&client, "lobby", "bob", None, None).await.unwrap();
        bob.say("hi").await.unwrap();
        assert_eq!(bob.messages(1).await.unwrap()[0].user, "bob");
    });
}
