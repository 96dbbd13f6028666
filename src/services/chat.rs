//! `chat.v1.Chat`: rooms over bidirectional streams, history, room list.
//! The rooms themselves live in [`crate::chat`]; this file is the gRPC side.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::future::{self, Either};
use futures::prelude::*;
use futures_timer::Delay;
use grpcio::{RpcStatusCode, WriteFlags};

use crate::auth::Authenticator;
use crate::chat::limits::{self, check_history, check_name, check_text};
use crate::chat::mention;
use crate::chat::Joined;
use crate::chat::{Chat, ChatError, Event};
use crate::fanout::Ended;
use crate::proto::chat::{
    client_frame, notification_event, server_event, ClientFrame, Heartbeat, HistoryRequest, Message, Notification,
    NotificationEvent, NotificationsRequest, PostRequest, PostResponse, RoomsRequest, RoomsResponse, ServerEvent,
    SubscribeRequest, Welcome,
};
use crate::rpc::api::chat as api;
use crate::rpc::{Call, CallError, DuplexSink, RequestStream, ServerStreamingSink};
use crate::telemetry::Span;
use opentelemetry::KeyValue;

/// The join a Connect's first frame or a Subscribe request asks for.
struct JoinAsked {
    room: String,
    user: String,
    resume_after: Option<u64>,
    epoch: Option<String>,
    history: Option<u32>,
}

fn check_client_id(client_id: &str) -> Result<(), CallError> {
    if client_id.len() > limits::MAX_NAME_BYTES {
        return Err(CallError::invalid_argument(format!(
            "client_id is {} bytes long; at most {} bytes",
            client_id.len(),
            limits::MAX_NAME_BYTES
        )));
    }
    Ok(())
}

/// Resolves only when the room cuts its subscriber off for lagging, with
/// the RESOURCE_EXHAUSTED that ends the call; a subscription closed with its
/// room (the server stops) ends the forwarding instead, so this never
/// resolves then. Polled before the forwarding, so that a cut-off is never
/// mistaken for a shutdown, and a subscriber stuck sending is not waited for.
async fn cut_off(ended: oneshot::Receiver<Ended>) -> CallError {
    match ended.await.unwrap_or(Ended::Closed) {
        Ended::Lagged { bound } => CallError::new(
            RpcStatusCode::RESOURCE_EXHAUSTED,
            format!(
                "disconnected: fell behind the room by {bound} events (not reading fast enough); reconnect with resume_after to catch up"
            ),
        ),
        Ended::Closed => future::pending().await,
    }
}
use crate::wire::now_unix_ms;

/// Most Notifications calls one user may have open at once on a replica.
pub const MAX_NOTIFICATION_STREAMS: usize = 4;

/// Serves `chat.v1.Chat`; clones share one [`Chat`].
#[derive(Clone)]
pub struct ChatService {
    chat: Chat,
    /// With `--auth-tokens`, a member is its token's principal.
    auth: Option<Authenticator>,
    /// Open Notifications calls per user; the mutex protects the map and is
    /// never held across an await.
    following: Arc<Mutex<HashMap<String, usize>>>,
}

impl ChatService {
    pub fn new(chat: Chat, auth: Option<Authenticator>) -> Self {
        ChatService { chat, auth, following: Arc::default() }
    }
}

/// One open Notifications call of a user, counted until dropped.
struct Following {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    user: String,
}

impl Following {
    /// Counts a call of `user`, unless they have the most already.
    fn take(counts: &Arc<Mutex<HashMap<String, usize>>>, user: &str) -> Result<Following, CallError> {
        let mut open = counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(user.to_string()).or_insert(0);
        if *n >= MAX_NOTIFICATION_STREAMS {
            return Err(CallError::new(
                RpcStatusCode::RESOURCE_EXHAUSTED,
                format!(
                    "{user:?} already has {MAX_NOTIFICATION_STREAMS} Notifications calls open on this server; close one first"
                ),
            ));
        }
        *n += 1;
        Ok(Following { counts: counts.clone(), user: user.to_string() })
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        let mut open = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

/// A notification as the client sees it, from its inbox message.
fn notification_of(message: &Message) -> Option<NotificationEvent> {
    let (room, message_seq) = mention::source(message)?;
    let notification = Notification {
        seq: message.seq,
        kind: "mention".to_string(),
        room,
        message_seq,
        from: message.user.clone(),
        text: message.text.clone(),
        time_unix_ms: message.time_unix_ms,
        ..Default::default()
    };
    Some(NotificationEvent { event: Some(notification_event::Event::Notification(notification)), ..Default::default() })
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

/// Where a call's events go: Connect's duplex sink or Subscribe's
/// server-streaming one.
trait EventSink: Sink<(ServerEvent, WriteFlags), Error = grpcio::Error> + Unpin {}
impl<S: Sink<(ServerEvent, WriteFlags), Error = grpcio::Error> + Unpin> EventSink for S {}

/// Sends one event; `more` hints that another follows at once, so the
/// core may coalesce them into fewer writes.
async fn send<S: EventSink>(sink: &mut S, event: ServerEvent, more: bool) -> Result<(), CallError> {
    sink.send((event, WriteFlags::default().buffer_hint(more))).await?;
    Ok(())
}

/// The events of a subscription, and a heartbeat whenever none was sent
/// for `heartbeat`. Ends when the subscription's queue is closed and drained.
async fn forward<S: EventSink>(
    sink: &mut S,
    events: &async_channel::Receiver<Event>,
    heartbeat: Duration,
) -> Result<(), CallError> {
    let beat = |beat| server_event(server_event::Event::Heartbeat(beat));
    forward_as(sink, events, heartbeat, |event| Some((**event).clone()), beat).await
}

/// [`forward`], each event turned into what `sink` takes (`None`: skipped).
async fn forward_as<T, S: Sink<(T, WriteFlags), Error = grpcio::Error> + Unpin>(
    sink: &mut S,
    events: &async_channel::Receiver<Event>,
    heartbeat: Duration,
    convert: impl Fn(&Event) -> Option<T>,
    beat: impl Fn(Heartbeat) -> T,
) -> Result<(), CallError> {
    let mut last_sent = Instant::now();
    let mut timer = Delay::new(heartbeat);
    loop {
        match future::select(pin!(events.recv()), &mut timer).await {
            Either::Left((Ok(event), _)) => {
                if let Some(out) = convert(&event) {
                    sink.send((out, WriteFlags::default().buffer_hint(!events.is_empty()))).await?;
                    last_sent = Instant::now();
                }
            }
            Either::Left((Err(_closed), _)) => return Ok(()),
            Either::Right(((), _)) => {
                let idle = last_sent.elapsed();
                if idle >= heartbeat {
                    let now = Heartbeat { time_unix_ms: now_unix_ms(), ..Default::default() };
                    sink.send((beat(now), WriteFlags::default())).await?;
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
    /// The member a call speaks as: its token's principal with
    /// `--auth-tokens` (the call's token is checked), else the name asked.
    fn principal(&self, call: &Call) -> Result<Option<String>, CallError> {
        match &self.auth {
            None => Ok(None),
            Some(auth) => Ok(Some(auth.authenticate(call.request_headers())?)),
        }
    }

    /// Checks and performs a join, then sends the Welcome and the backlog.
    /// Answers the room, the member's name, the join (whose membership
    /// leaves the room when dropped) and the heartbeat interval.
    async fn join_and_welcome<S: EventSink>(
        &self,
        principal: Option<&str>,
        join: JoinAsked,
        sink: &mut S,
    ) -> Result<(String, String, Joined, Duration), CallError> {
        check_name("room", &join.room)?;
        let user = member_name(&join.user, principal)?;
        let history = match join.history {
            Some(n) => check_history(n)?,
            None => self.chat.config().join_history as usize,
        };
        let room = join.room;
        let mut joined = self.chat.join(&room, &user, join.resume_after, join.epoch.as_deref(), history).await?;
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
        let backlog = std::mem::take(&mut joined.backlog);
        let count = backlog.len();
        for (i, message) in backlog.into_iter().enumerate() {
            send(sink, server_event(server_event::Event::Message(message)), i + 1 < count).await?;
        }
        Ok((room, user, joined, heartbeat))
    }

    /// One Subscribe call: the join, then the room's events until the call
    /// is cancelled (its next send fails: at the latest the next
    /// heartbeat's), the room cuts this subscriber off, or the server stops.
    async fn serve_subscribe(
        &self,
        principal: Option<&str>,
        request: SubscribeRequest,
        sink: &mut ServerStreamingSink<ServerEvent>,
    ) -> Result<(), CallError> {
        let asked = JoinAsked {
            room: request.room,
            user: request.user,
            resume_after: request.resume_after,
            epoch: request.epoch,
            history: request.history,
        };
        let (_room, _user, joined, heartbeat) = self.join_and_welcome(principal, asked, sink).await?;
        // Leaves the room when this function returns, however it returns.
        let _membership = joined.membership;
        let events = joined.subscription.events;
        let cut_off = cut_off(joined.subscription.ended);
        let ended = match future::select(pin!(cut_off), pin!(forward(sink, &events, heartbeat))).await {
            Either::Left((status, _)) => Err(status),
            Either::Right((result, _)) => {
                result?;
                Err(ChatError::ShuttingDown.into())
            }
        };
        ended
    }

    /// One Notifications call: the user's inbox, joined (resumed) as a
    /// room, its messages sent as notifications, until the call is
    /// cancelled, the inbox cuts it off for lagging, or the server stops.
    async fn serve_notifications(
        &self,
        principal: Option<&str>,
        request: NotificationsRequest,
        sink: &mut ServerStreamingSink<NotificationEvent>,
    ) -> Result<(), CallError> {
        let user = member_name(&request.user, principal)?;
        let history = match request.history {
            Some(n) => check_history(n)?,
            None => self.chat.config().join_history as usize,
        };
        let _following = Following::take(&self.following, &user)?;
        let inbox = mention::inbox(&user);
        let joined = self.chat.notifications(&user, request.resume_after, request.epoch.as_deref(), history).await;
        // The errors name the inbox as a room; the client knows it as its notifications.
        let rename = |why: String| why.replace(&format!("room {inbox:?}"), &format!("the notifications of {user:?}"));
        let mut joined = joined.map_err(|e| match e {
            ChatError::OutOfRange(why) => ChatError::OutOfRange(rename(why)),
            ChatError::Unavailable(why) => ChatError::Unavailable(rename(why)),
            other => other,
        })?;
        let heartbeat = self.chat.config().heartbeat.max(Duration::from_millis(10));
        let welcome = Welcome {
            last_seq: joined.last_seq,
            heartbeat_ms: heartbeat.as_millis().min(u32::MAX as u128) as u32,
            backlog: joined.backlog.len() as u32,
            epoch: joined.epoch.clone(),
            ..Default::default()
        };
        let welcome =
            NotificationEvent { event: Some(notification_event::Event::Welcome(welcome)), ..Default::default() };
        let backlog: Vec<NotificationEvent> =
            std::mem::take(&mut joined.backlog).iter().filter_map(notification_of).collect();
        let more = !backlog.is_empty();
        sink.send((welcome, WriteFlags::default().buffer_hint(more))).await?;
        let count = backlog.len();
        for (i, note) in backlog.into_iter().enumerate() {
            sink.send((note, WriteFlags::default().buffer_hint(i + 1 < count))).await?;
        }
        // Leaves the inbox when this function returns, however it returns.
        let _membership = joined.membership;
        let events = joined.subscription.events;
        let convert = |event: &Event| match &event.event {
            Some(server_event::Event::Message(m)) => notification_of(m),
            _ => None,
        };
        let beat =
            |beat| NotificationEvent { event: Some(notification_event::Event::Heartbeat(beat)), ..Default::default() };
        let cut_off = cut_off(joined.subscription.ended);
        let ended = match future::select(pin!(cut_off), pin!(forward_as(sink, &events, heartbeat, convert, beat))).await
        {
            Either::Left((status, _)) => Err(status),
            Either::Right((result, _)) => {
                result?;
                Err(ChatError::ShuttingDown.into())
            }
        };
        ended
    }

    /// One Connect call: the join, then the client's messages and the
    /// room's events concurrently, until the client closes its side, the
    /// call fails, or the room cuts this subscriber off.
    async fn serve_connect(
        &self,
        span: Option<&Span>,
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
        let asked = JoinAsked {
            room: join.room,
            user: join.user,
            resume_after: join.resume_after,
            epoch: join.epoch,
            history: join.history,
        };
        let (room, user, joined, heartbeat) = self.join_and_welcome(principal, asked, sink).await?;
        // Leaves the room when this function returns, however it returns.
        let _membership = joined.membership;

        let chat = &self.chat;
        let inbound = async {
            while let Some(frame) = frames.try_next().await? {
                match frame.frame {
                    Some(client_frame::Frame::Say(say)) => {
                        check_text(&say.text)?;
                        check_client_id(&say.client_id)?;
                        // One span per message said, under the Connect call's.
                        let say_span =
                            span.and_then(|s| s.child("chat.say", vec![KeyValue::new("chat.room", room.clone())]));
                        let said = chat.say(&room, &user, say.text, say.client_id, say_span.clone()).await;
                        if let Some(say_span) = &say_span {
                            if let Err(e) = &said {
                                say_span.set_error(e.to_string());
                            }
                            say_span.end();
                        }
                        said?;
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
        let cut_off = cut_off(joined.subscription.ended);
        // (Bound to a name, so that the futures borrowing `room`, `user` and
        // `events` are dropped before those are.)
        let ended = match future::select(pin!(cut_off), future::select(pin!(inbound), pin!(outbound))).await {
            Either::Left((status, _)) => Err(status),
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
        let principal = self.principal(call)?;
        self.serve_connect(call.span(), principal.as_deref(), frames, sink).await
    }

    /// Joins a room and streams its events; see `protos/chat.proto`.
    async fn subscribe(
        &self,
        call: &mut Call,
        request: SubscribeRequest,
        sink: &mut ServerStreamingSink<ServerEvent>,
    ) -> Result<(), CallError> {
        let principal = self.principal(call)?;
        self.serve_subscribe(principal.as_deref(), request, sink).await
    }

    /// Says one message, answered once it is stored.
    async fn post(&self, call: &mut Call, request: PostRequest) -> Result<PostResponse, CallError> {
        let principal = self.principal(call)?;
        check_name("room", &request.room)?;
        let user = member_name(&request.user, principal.as_deref())?;
        check_text(&request.text)?;
        check_client_id(&request.client_id)?;
        let span = call.span().cloned();
        let (seq, epoch) = self.chat.post(&request.room, &user, request.text, request.client_id, span).await?;
        Ok(PostResponse { seq, epoch, ..Default::default() })
    }

    /// The caller's mentions from every room, resumable; see `protos/chat.proto`.
    async fn notifications(
        &self,
        call: &mut Call,
        request: NotificationsRequest,
        sink: &mut ServerStreamingSink<NotificationEvent>,
    ) -> Result<(), CallError> {
        let principal = self.principal(call)?;
        self.serve_notifications(principal.as_deref(), request, sink).await
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
