//! `chat.v1.Chat`: rooms over bidirectional streams, history, room list.
//! The rooms themselves live in [`crate::chat`]; this file is the gRPC side.

use std::pin::pin;
use std::time::{Duration, Instant};

use futures::future::{self, Either};
use futures::prelude::*;
use futures_timer::Delay;
use grpcio::{RpcStatusCode, WriteFlags};

use crate::auth::Authenticator;
use crate::chat::limits::{self, check_history, check_name, check_text};
use crate::chat::{Chat, ChatError, Event};
use crate::fanout::Ended;
use crate::proto::chat::{
    client_frame, server_event, ClientFrame, Heartbeat, HistoryRequest, RoomsRequest, RoomsResponse, ServerEvent,
    Welcome,
};
use crate::rpc::api::chat as api;
use crate::rpc::{Call, CallError, DuplexSink, RequestStream, ServerStreamingSink};
use crate::wire::now_unix_ms;

/// Serves `chat.v1.Chat`; clones share one [`Chat`].
#[derive(Clone)]
pub struct ChatService {
    chat: Chat,
    /// With `--auth-tokens`, a member is its token's principal.
    auth: Option<Authenticator>,
}

impl ChatService {
    pub fn new(chat: Chat, auth: Option<Authenticator>) -> Self {
        ChatService { chat, auth }
    }
}

impl From<ChatError> for CallError {
    fn from(e: ChatError) -> Self {
        let code = match e {
            ChatError::InvalidArgument(_) => RpcStatusCode::INVALID_ARGUMENT,
            ChatError::Unavailable(_) | ChatError::ShuttingDown => RpcStatusCode::UNAVAILABLE,
            ChatError::OutOfRange(_) => RpcStatusCode::OUT_OF_RANGE,
        };
        CallError::new(code, e.to_string())
    }
}

/// Who a join speaks as. Without tokens, the name it chose. With tokens,
/// its token's principal: a join naming nobody takes it, a join naming
/// anyone else is refused.
fn member_name(requested: &str, principal: Option<&str>) -> Result<String, CallError> {
    match principal {
        None => {
            check_name("user", requested)?;
            Ok(requested.to_string())
        }
        Some(principal) if requested.is_empty() || requested == principal => {
            check_name("user", principal)?;
            Ok(principal.to_string())
        }
        Some(principal) => Err(CallError::new(
            RpcStatusCode::PERMISSION_DENIED,
            format!("this call's token is {principal:?}'s; it cannot join as {requested:?} (leave user empty or give {principal:?})"),
        )),
    }
}

fn server_event(event: server_event::Event) -> ServerEvent {
    ServerEvent { event: Some(event), ..Default::default() }
}

/// Sends one event; `more` hints that another follows at once, so the
/// core may coalesce them into fewer writes.
async fn send(sink: &mut DuplexSink<ServerEvent>, event: ServerEvent, more: bool) -> Result<(), CallError> {
    sink.send((event, WriteFlags::default().buffer_hint(more))).await?;
    Ok(())
}

/// The events of a subscription, and a heartbeat whenever none was sent
/// for `heartbeat`. Ends when the subscription's queue is closed and drained.
async fn forward(
    sink: &mut DuplexSink<ServerEvent>,
    events: &async_channel::Receiver<Event>,
    heartbeat: Duration,
) -> Result<(), CallError> {
    let mut last_sent = Instant::now();
    let mut timer = Delay::new(heartbeat);
    loop {
        match future::select(pin!(events.recv()), &mut timer).await {
            Either::Left((Ok(event), _)) => {
                send(sink, (*event).clone(), !events.is_empty()).await?;
                last_sent = Instant::now();
            }
            Either::Left((Err(_closed), _)) => return Ok(()),
            Either::Right(((), _)) => {
                let idle = last_sent.elapsed();
                if idle >= heartbeat {
                    let beat = Heartbeat { time_unix_ms: now_unix_ms(), ..Default::default() };
                    send(sink, server_event(server_event::Event::Heartbeat(beat)), false).await?;
                    last_sent = Instant::now();
                    timer.reset(heartbeat);
                } else {
                    timer.reset(heartbeat - idle);
                }
            }
        }
    }
}

impl ChatService {
    /// One Connect call: the join, then the client's messages and the
    /// room's events concurrently, until the client closes its side, the
    /// call fails, or the room cuts this subscriber off.
    async fn serve_connect(
        &self,
        principal: Option<&str>,
        frames: &mut RequestStream<ClientFrame>,
        sink: &mut DuplexSink<ServerEvent>,
    ) -> Result<(), CallError> {
        let join = match frames.try_next().await? {
            None => return Ok(()),
            Some(ClientFrame { frame: Some(client_frame::Frame::Join(join)), .. }) => join,
            Some(_) => {
                return Err(CallError::invalid_argument("the first frame of Connect must be a join (room and user)"))
            }
        };
        check_name("room", &join.room)?;
        let user = member_name(&join.user, principal)?;
        let history = match join.history {
            Some(n) => check_history(n)?,
            None => self.chat.config().join_history as usize,
        };
        let room = join.room;
        let joined = self.chat.join(&room, &user, join.resume_after, join.epoch.as_deref(), history).await?;
        // Leaves the room when this function returns, however it returns.
        let _membership = joined.membership;
        // A zero interval would spin; the binary refuses below 10 ms too.
        let heartbeat = self.chat.config().heartbeat.max(Duration::from_millis(10));
        let welcome = Welcome {
            room: room.clone(),
            last_seq: joined.last_seq,
            heartbeat_ms: heartbeat.as_millis().min(u32::MAX as u128) as u32,
            backlog: joined.backlog.len() as u32,
            epoch: joined.epoch.clone(),
            ..Default::default()
        };
        send(sink, server_event(server_event::Event::Welcome(welcome)), !joined.backlog.is_empty()).await?;
        let count = joined.backlog.len();
        for (i, message) in joined.backlog.into_iter().enumerate() {
            send(sink, server_event(server_event::Event::Message(message)), i + 1 < count).await?;
        }

        let chat = &self.chat;
        let inbound = async {
            while let Some(frame) = frames.try_next().await? {
                match frame.frame {
                    Some(client_frame::Frame::Say(say)) => {
                        check_text(&say.text)?;
                        if say.client_id.len() > limits::MAX_NAME_BYTES {
                            return Err(CallError::invalid_argument(format!(
                                "client_id is {} bytes long; at most {} bytes",
                                say.client_id.len(),
                                limits::MAX_NAME_BYTES
                            )));
                        }
                        chat.say(&room, &user, say.text, say.client_id).await?;
                    }
                    Some(client_frame::Frame::Join(_)) => {
                        return Err(CallError::invalid_argument(format!(
                            "already joined {room:?}; one Connect call is one room, open another call for another room"
                        )))
                    }
                    None => return Err(CallError::invalid_argument("empty frame: send a join or a say")),
                }
            }
            Ok::<(), CallError>(())
        };
        let events = joined.subscription.events;
        let outbound = forward(sink, &events, heartbeat);
        let ended = joined.subscription.ended.map(|why| why.unwrap_or(Ended::Closed));
        // A subscriber cut off while stuck sending must not wait for its
        // send: the cut-off ends the call at once.
        let cut_off = ended.then(|why| async move {
            match why {
                Ended::Lagged { bound } => bound,
                Ended::Closed => future::pending().await,
            }
        });
        // The cut-off is polled first: it resolves before the queue closes,
        // so a subscriber cut off is never mistaken for a server shutdown.
        // (Bound to a name, so that the futures borrowing `room`, `user` and
        // `events` are dropped before those are.)
        let ended = match future::select(pin!(cut_off), future::select(pin!(inbound), pin!(outbound))).await {
            Either::Left((bound, _)) => Err(CallError::new(
                RpcStatusCode::RESOURCE_EXHAUSTED,
                format!(
                    "disconnected: fell behind the room by {bound} events (not reading fast enough); reconnect with resume_after to catch up"
                ),
            )),
            // The client closed its side: it left the room.
            Either::Right((Either::Left((result, _)), _)) => result,
            // The room closed this subscription: the server is shutting down.
            Either::Right((Either::Right((result, _)), _)) => {
                result?;
                Err(ChatError::ShuttingDown.into())
            }
        };
        ended
    }
}

impl api::Chat for ChatService {
    /// The bearer token names the member.
    const READS_REQUEST_HEADERS: bool = true;

    /// Joins a room, then relays the client's messages to it and its
    /// events to the client; see `protos/chat.proto`.
    async fn connect(
        &self,
        call: &mut Call,
        frames: &mut RequestStream<ClientFrame>,
        sink: &mut DuplexSink<ServerEvent>,
    ) -> Result<(), CallError> {
        // Behind the token checker every Connect carries a valid token.
        let principal = match &self.auth {
            None => None,
            Some(auth) => Some(auth.authenticate(call.request_headers())?),
        };
        self.serve_connect(principal.as_deref(), frames, sink).await
    }

    /// The last messages of a room, oldest first.
    async fn history(
        &self,
        _call: &mut Call,
        request: HistoryRequest,
        sink: &mut ServerStreamingSink<ServerEvent>,
    ) -> Result<(), CallError> {
        check_name("room", &request.room)?;
        let limit = match check_history(request.limit)? {
            0 => limits::DEFAULT_HISTORY_LIMIT,
            n => n,
        };
        let messages = self.chat.history(&request.room, limit, request.before_seq).await?;
        let count = messages.len();
        for (i, message) in messages.into_iter().enumerate() {
            let flags = WriteFlags::default().buffer_hint(i + 1 < count);
            sink.send((server_event(server_event::Event::Message(message)), flags)).await?;
        }
        Ok(())
    }

    /// The rooms with members, and how many.
    async fn rooms(&self, _call: &mut Call, _request: RoomsRequest) -> Result<RoomsResponse, CallError> {
        Ok(RoomsResponse { rooms: self.chat.rooms().await?, ..Default::default() })
    }
}
