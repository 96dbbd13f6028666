//! `chat.v1.Chat`: rooms over bidirectional streams, history, room list.
//! The rooms themselves live in [`crate::chat`]; this file is the gRPC side.

use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{self, Either};
use futures::prelude::*;
use futures_timer::Delay;
use grpcio::{RpcContext, RpcStatus, RpcStatusCode, WriteFlags};

use crate::call::{DuplexSink, RequestStream, ServerStreamingSink, UnarySink};

use crate::chat::limits::{self, check_history, check_name, check_text};
use crate::chat::{now_unix_ms, Chat, ChatError, Event};
use crate::fanout::Ended;
use crate::proto::chat::{
    client_frame, server_event, ClientFrame, Heartbeat, HistoryRequest, RoomsRequest, RoomsResponse, ServerEvent,
    Welcome,
};
use crate::proto::chat_grpc;
use crate::services::CallTracker;
use crate::status::{finish_stream, invalid_argument, log_transport_error, reply, CallError};

/// Serves `chat.v1.Chat`; clones share one [`Chat`].
#[derive(Clone)]
pub struct ChatService {
    chat: Chat,
    /// Counts Connect calls, so that tests and shutdown can wait for them.
    tracker: Arc<CallTracker>,
}

impl ChatService {
    pub fn new(chat: Chat, tracker: Arc<CallTracker>) -> Self {
        ChatService { chat, tracker }
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
        frames: &mut RequestStream<ClientFrame>,
        sink: &mut DuplexSink<ServerEvent>,
    ) -> Result<(), CallError> {
        let join = match frames.try_next().await? {
            None => return Ok(()),
            Some(ClientFrame { frame: Some(client_frame::Frame::Join(join)), .. }) => join,
            Some(_) => return Err(invalid_argument("the first frame of Connect must be a join (room and user)").into()),
        };
        check_name("room", &join.room)?;
        check_name("user", &join.user)?;
        let history = match join.history {
            Some(n) => check_history(n)?,
            None => self.chat.config().join_history as usize,
        };
        let (room, user) = (join.room, join.user);
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
                            return Err(invalid_argument(format!(
                                "client_id is {} bytes long; at most {} bytes",
                                say.client_id.len(),
                                limits::MAX_NAME_BYTES
                            ))
                            .into());
                        }
                        chat.say(&room, &user, say.text, say.client_id).await?;
                    }
                    Some(client_frame::Frame::Join(_)) => {
                        return Err(invalid_argument(format!(
                            "already joined {room:?}; one Connect call is one room, open another call for another room"
                        ))
                        .into())
                    }
                    None => return Err(invalid_argument("empty frame: send a join or a say").into()),
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
            Either::Left((bound, _)) => Err(RpcStatus::with_message(
                RpcStatusCode::RESOURCE_EXHAUSTED,
                format!(
                    "disconnected: fell behind the room by {bound} events (not reading fast enough); reconnect with resume_after to catch up"
                ),
            )
            .into()),
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

impl chat_grpc::Chat for ChatService {
    /// Joins a room, then relays the client's messages to it and its
    /// events to the client; see `protos/chat.proto`.
    fn connect(&mut self, ctx: RpcContext, mut frames: RequestStream<ClientFrame>, mut sink: DuplexSink<ServerEvent>) {
        let service = self.clone();
        let call = self.tracker.enter();
        ctx.spawn(async move {
            let result = service.serve_connect(&mut frames, &mut sink).await;
            // The membership was dropped (its leave queued) inside serve_connect.
            drop(call);
            match result {
                Ok(()) => {
                    if let Err(e) = sink.close().await {
                        log_transport_error("Chat/Connect", &e);
                    }
                }
                Err(e) => finish_stream("Chat/Connect", Err(e), |status| sink.fail(status)).await,
            }
        });
    }

    /// The last messages of a room, oldest first.
    fn history(&mut self, ctx: RpcContext, req: HistoryRequest, mut sink: ServerStreamingSink<ServerEvent>) {
        let checked = check_name("room", &req.room).and_then(|()| check_history(req.limit));
        let chat = self.chat.clone();
        ctx.spawn(async move {
            let result = async {
                let limit = match checked? {
                    0 => limits::DEFAULT_HISTORY_LIMIT,
                    n => n,
                };
                let messages = chat.history(&req.room, limit, req.before_seq).await?;
                let count = messages.len();
                for (i, message) in messages.into_iter().enumerate() {
                    let flags = WriteFlags::default().buffer_hint(i + 1 < count);
                    sink.send((server_event(server_event::Event::Message(message)), flags)).await?;
                }
                sink.close().await?;
                Ok::<(), CallError>(())
            }
            .await;
            finish_stream("Chat/History", result, |status| sink.fail(status)).await;
        });
    }

    /// The rooms with members, and how many.
    fn rooms(&mut self, ctx: RpcContext, _req: RoomsRequest, sink: UnarySink<RoomsResponse>) {
        let chat = self.chat.clone();
        ctx.spawn(async move {
            let answer =
                chat.rooms().await.map(|rooms| RoomsResponse { rooms, ..Default::default() }).map_err(CallError::from);
            reply("Chat/Rooms", sink, answer).await;
        });
    }
}
