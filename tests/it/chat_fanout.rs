//! chat.v1.Chat on one replica: fan-out to many members, a stalled reader
//! cut off, membership cleaned up however a call ends, rooms kept apart,
//! heartbeats, and input checks.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::chat::*;
use futures::executor::block_on;
use futures::future::join_all;
use futures::prelude::*;
use greet::chat::ChatConfig;
use greet::proto::chat::{server_event, ClientFrame, ServerEvent};
use grpcio::{CallOption, RpcStatusCode, WriteFlags};

#[test]
fn fifty_members_each_get_all_4950_others_messages_in_one_gap_free_order() {
    const MEMBERS: usize = 50;
    const EACH: usize = 100;
    // A queue long enough that no member is cut off on a busy machine: this
    // test is about delivery; the next one is about cut-offs.
    let server = start_chat_server(ChatConfig { subscriber_queue: 8192, ..Default::default() });
    // A few connections, each carrying several members' calls.
    let clients: Vec<_> = (0..5).map(|_| client(server.addr())).collect();
    let mut members: Vec<Member> = (0..MEMBERS)
        .map(|i| Member::join_blocking(&clients[i % clients.len()], "lobby", &format!("user{i:02}")))
        .collect();

    let runs = members.iter_mut().enumerate().map(|(i, member)| async move {
        let Member { sink, events, .. } = member;
        let send = async {
            for n in 0..EACH {
                let flags = WriteFlags::default().buffer_hint(n + 1 < EACH);
                sink.send((say_frame(&format!("user{i:02} {n}")), flags)).await?;
            }
            Ok::<(), grpcio::Error>(())
        };
        let receive = async {
            let mut messages = Vec::new();
            while messages.len() < MEMBERS * EACH {
                match events.try_next().await? {
                    Some(ServerEvent { event: Some(server_event::Event::Message(m)), .. }) => messages.push(m),
                    Some(_) => {}
                    None => panic!("user{i:02}'s call ended early"),
                }
            }
            Ok::<_, grpcio::Error>(messages)
        };
        let (sent, received) = future::join(send, receive).await;
        sent.unwrap();
        received.unwrap()
    });
    let received: Vec<_> = block_on(join_all(runs));

    let all: Vec<u64> = (1..=(MEMBERS * EACH) as u64).collect();
    for (i, messages) in received.iter().enumerate() {
        let me = format!("user{i:02}");
        assert_eq!(seqs(messages), all, "{me} sees every message once, in sequence order, without gaps");
        let others = messages.iter().filter(|m| m.user != me).count();
        assert_eq!(others, MEMBERS * EACH - EACH, "{me} gets all 4,950 others' messages");
        let mut next_of: HashMap<&str, usize> = HashMap::new();
        for m in messages {
            let (sender, n) = m.text.split_once(' ').unwrap();
            assert_eq!(sender, m.user);
            let next = next_of.entry(sender).or_default();
            assert_eq!(n.parse::<usize>().unwrap(), *next, "{sender}'s messages reach {me} in the order sent");
            *next += 1;
        }
    }
    // Everyone saw one and the same order.
    let first = texts(&received[0]);
    assert!(received.iter().all(|messages| texts(messages) == first));
    for member in members {
        block_on(member.leave()).unwrap();
    }
}

#[test]
fn a_stalled_reader_is_cut_off_with_resource_exhausted_while_the_others_keep_receiving() {
    const QUEUE: usize = 16;
    const MAX_MESSAGES: usize = 20_000;
    let server = start_chat_server(ChatConfig { subscriber_queue: QUEUE, ..Default::default() });
    // Its own connection, so its unread messages fill only its own window.
    let stalled_client = client(server.addr());
    let mut stalled = Member::join_blocking(&stalled_client, "hall", "sleepy");
    let others = client(server.addr());
    let mut reader = Member::join_blocking(&others, "hall", "reader");
    let mut sender = Member::join_blocking(&others, "hall", "sender");
    assert_eq!(rooms(&others), vec![("hall".to_string(), 3)]);

    // The reader drains everything on its own thread while the sender
    // floods, until the sender's last word.
    let reading = std::thread::spawn(move || {
        let mut got = Vec::new();
        loop {
            match block_on(reader.next()).unwrap() {
                Some(ServerEvent { event: Some(server_event::Event::Message(m)), .. }) if m.text == "end" => break,
                Some(ServerEvent { event: Some(server_event::Event::Message(m)), .. }) => got.push(m),
                Some(_) => {}
                None => panic!("the reader's call ended"),
            }
        }
        (got, reader)
    });
    let text = "x".repeat(4000);
    let mut sent = 0;
    while server.chat().stats().cut_off == 0 {
        assert!(sent < MAX_MESSAGES, "the stalled reader was never cut off");
        // Each say is acknowledged by its echo: reading it paces the sender
        // (and keeps it from falling behind itself).
        block_on(sender.say(&format!("{sent} {text}"))).unwrap();
        block_on(sender.messages(1)).unwrap();
        sent += 1;
    }
    block_on(sender.say("end")).unwrap();
    let (got, _reader) = reading.join().unwrap();
    eprintln!("the stalled member was cut off after {sent} messages of 4 kB");
    assert_eq!(got.len(), sent, "the reader got every message although another member stalled");
    assert_eq!(seqs(&got), (1..=sent as u64).collect::<Vec<_>>());
    assert_eq!(rooms(&others), vec![("hall".to_string(), 2)], "the stalled member left the room");
    assert_eq!(server.chat().stats().cut_off, 1);

    // When it reads again it gets what was queued before the cut, then the status.
    let (code, message) = status_of(block_on(stalled.failure()));
    assert_eq!(code, RpcStatusCode::RESOURCE_EXHAUSTED);
    assert_eq!(
        message,
        format!(
            "disconnected: fell behind the room by {QUEUE} events (not reading fast enough); reconnect with resume_after to catch up"
        )
    );
}

#[test]
fn a_thousand_join_and_leave_cycles_leave_no_room_or_subscriber_behind() {
    let server = start_chat_server(ChatConfig::default());
    let client = client(server.addr());
    let cycles = (0..1000).map(|i| {
        let client = client.clone();
        let addr = server.addr().to_string();
        async move {
            let room = format!("room{}", i % 7);
            match i % 5 {
                // Leaves cleanly.
                0 => {
                    let member = Member::join(&client, &room, &format!("u{i}"), None, None).await.unwrap();
                    member.leave().await.unwrap();
                }
                // Cancels the call.
                1 => {
                    let member = Member::join(&client, &room, &format!("u{i}"), None, None).await.unwrap();
                    drop(member);
                }
                // Breaks the protocol: a second join ends the call.
                2 => {
                    let mut member = Member::join(&client, &room, &format!("u{i}"), None, None).await.unwrap();
                    // The server may end the call before this send completes.
                    let _ = member.sink.send((join_frame(&room, "again", None, None), WriteFlags::default())).await;
                    let (code, message) = status_of(member.failure().await);
                    assert_eq!(code, RpcStatusCode::INVALID_ARGUMENT, "{message}");
                }
                // Drops its whole connection (a channel of its own).
                3 => {
                    let own = greet::client::Connector::new(&addr).unwrap().own_connections(true).channel();
                    let own = greet::proto::chat_grpc::ChatClient::new(own);
                    let member = Member::join(&own, &room, &format!("u{i}"), None, None).await.unwrap();
                    drop((member, own));
                }
                // Says something, then the deadline ends the call.
                _ => {
                    let opt = CallOption::default().timeout(Duration::from_millis(100));
                    let (mut sink, mut events) = client.connect_opt(opt).unwrap();
                    // On a loaded machine the 100 ms may pass before the join is sent.
                    let _ =
                        sink.send((join_frame(&room, &format!("u{i}"), None, Some(0)), WriteFlags::default())).await;
                    let _ = sink.send((say_frame("bye"), WriteFlags::default())).await;
                    while events.try_next().await.is_ok_and(|e| e.is_some()) {}
                }
            }
        }
    });
    // Twenty at a time.
    let mut cycles = cycles.collect::<Vec<_>>();
    while !cycles.is_empty() {
        let batch: Vec<_> = cycles.drain(..cycles.len().min(20)).collect();
        block_on(join_all(batch));
    }
    assert!(server.tracker().wait_idle(Duration::from_secs(60)), "every Connect call ended");
    // The leaves are queued before the calls end; Rooms is answered after them.
    assert_eq!(rooms(&client), Vec::<(String, u32)>::new());
    let stats = server.chat().stats();
    assert_eq!((stats.rooms, stats.subscribers), (0, 0), "{stats:?}");
}

#[test]
fn two_rooms_never_see_each_others_messages() {
    let server = start_chat_server(ChatConfig::default());
    let client = client(server.addr());
    let mut red = Member::join_blocking(&client, "red", "ann");
    let mut blue = Member::join_blocking(&client, "blue", "bob");
    block_on(async {
        for i in 0..20 {
            red.say(&format!("red {i}")).await.unwrap();
            blue.say(&format!("blue {i}")).await.unwrap();
        }
    });
    let red_got = block_on(red.messages(20)).unwrap();
    let blue_got = block_on(blue.messages(20)).unwrap();
    assert!(red_got.iter().all(|m| m.room == "red" && m.text.starts_with("red ")), "{red_got:?}");
    assert!(blue_got.iter().all(|m| m.room == "blue" && m.text.starts_with("blue ")), "{blue_got:?}");
    assert_eq!(seqs(&red_got), (1..=20).collect::<Vec<_>>(), "each room has its own sequence");
    assert_eq!(seqs(&blue_got), (1..=20).collect::<Vec<_>>());
    // Nothing else is waiting for either: leaving returns no stray message.
    for member in [red, blue] {
        let rest = block_on(member.leave()).unwrap();
        assert!(rest.iter().all(|e| !matches!(e.event, Some(server_event::Event::Message(_)))), "{rest:?}");
    }
}

#[test]
fn members_see_joins_and_leaves_of_others() {
    let server = start_chat_server(ChatConfig::default());
    let client = client(server.addr());
    let mut ann = Member::join_blocking(&client, "r", "ann");
    let joined = |e: Option<ServerEvent>| match e.and_then(|e| e.event) {
        Some(server_event::Event::Joined(p)) => format!("+{}", p.user),
        Some(server_event::Event::Left(p)) => format!("-{}", p.user),
        other => panic!("expected presence, got {other:?}"),
    };
    assert_eq!(joined(block_on(ann.next()).unwrap()), "+ann");
    let bob = Member::join_blocking(&client, "r", "bob");
    assert_eq!(joined(block_on(ann.next()).unwrap()), "+bob");
    block_on(bob.leave()).unwrap();
    assert_eq!(joined(block_on(ann.next()).unwrap()), "-bob");
}

#[test]
fn an_idle_stream_gets_heartbeats() {
    let server = start_chat_server(ChatConfig { heartbeat: Duration::from_millis(100), ..Default::default() });
    let client = client(server.addr());
    let mut member = Member::join_blocking(&client, "quiet", "ann");
    assert_eq!(member.welcome.heartbeat_ms, 100);
    let mut beats = 0;
    while beats < 3 {
        match block_on(member.next()).unwrap().and_then(|e| e.event) {
            Some(server_event::Event::Heartbeat(beat)) => {
                assert!(beat.time_unix_ms > 0);
                beats += 1;
            }
            Some(server_event::Event::Joined(_)) => {}
            other => panic!("an idle room sends only heartbeats, got {other:?}"),
        }
    }
}

fn first_status(client: &greet::proto::chat_grpc::ChatClient, frames: Vec<ClientFrame>) -> (RpcStatusCode, String) {
    let (mut sink, mut events) = client.connect_opt(CallOption::default().timeout(DEADLINE)).unwrap();
    block_on(async {
        for frame in frames {
            // The server may end the call before reading every frame.
            if sink.send((frame, WriteFlags::default())).await.is_err() {
                break;
            }
        }
        status_of(failure(&mut events).await)
    })
}

#[test]
fn bad_input_gets_invalid_argument_with_a_message_that_says_what_to_fix() {
    let server = start_chat_server(ChatConfig::default());
    let client = client(server.addr());
    let cases = [
        (vec![say_frame("hi")], "the first frame of Connect must be a join (room and user)"),
        (vec![join_frame("", "ann", None, None)], "room is empty; give a room name"),
        (vec![join_frame("r", "  ", None, None)], "user is empty; give a user name"),
        (
            vec![join_frame(&"r".repeat(65), "ann", None, None)],
            "room name is 65 bytes long; room names are limited to 64 bytes",
        ),
        (
            vec![join_frame("r", "a\nb", None, None)],
            "user name \"a\\nb\" contains the control character '\\n'; use printable characters",
        ),
        (vec![join_frame("r", "ann", None, Some(1001))], "1001 messages of history asked for; at most 1000"),
        (vec![join_frame("r", "ann", None, None), say_frame("")], "message text is empty"),
        (
            vec![join_frame("r", "ann", None, None), say_frame(&"x".repeat(4097))],
            "message text is 4097 bytes long; messages are limited to 4096 bytes",
        ),
        (vec![join_frame("r", "ann", None, None), ClientFrame::default()], "empty frame: send a join or a say"),
    ];
    for (frames, expected) in cases {
        assert_eq!(first_status(&client, frames), (RpcStatusCode::INVALID_ARGUMENT, expected.to_string()));
    }
    let (code, message) = status_of(history(&client, "", 10, None).unwrap_err());
    assert_eq!((code, message.as_str()), (RpcStatusCode::INVALID_ARGUMENT, "room is empty; give a room name"));
    // Nothing was said, and nobody is left in a room.
    assert!(server.tracker().wait_idle(Duration::from_secs(30)));
    assert_eq!(rooms(&client), Vec::<(String, u32)>::new());
    assert!(history(&client, "r", 10, None).unwrap().is_empty());
}
