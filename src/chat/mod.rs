//! Chat rooms behind `chat.v1.Chat` (served by the chat service): who is in
//! which room, the per-room message sequence, history, and fan-out.
//!
//! # How it fits together
//! - [`hub`]: one thread, `chat-hub`, owns every room of this server (its
//!   [`crate::fanout::Fanout`] of subscribers, its members, its last sequence
//!   number) and the history cache. Handlers talk to it through [`Chat`], a
//!   cloneable handle that sends commands over an `async-channel` and awaits
//!   the answer on a oneshot; nothing blocks a completion-queue thread, and
//!   the hub being the only owner means no lock at all around the rooms.
//! - Embedded mode (the default): the hub numbers messages itself and keeps
//!   them in SQLite ([`store`], a file under `--data-dir`, or in memory).
//! - Broker mode (`--broker redis://...`, [`broker`]): Redis numbers the
//!   messages (one Lua script: `INCR` the room's sequence and `XADD` the
//!   message to the room's stream with the sequence as its id), so the order
//!   is global across replicas; the stream, capped with `MAXLEN ~`, is the
//!   shared history. A reader thread per replica follows, with `XREAD BLOCK`,
//!   the streams of the rooms that have members here and hands what it reads
//!   to the hub, which fans it out locally.
//!   With Sentinels (`--broker redis+sentinel://...`) the broker follows a
//!   failover, and a message is acknowledged only once a Redis replica has
//!   it (`WAIT`), so that it survives the primary's loss.
//!   With an etcd cluster (`--broker etcd://...`, [`broker::etcd`]) one
//!   transaction numbers a batch after comparing the room's last number,
//!   and a message is acknowledged once a quorum committed it: no single
//!   fault, a partition included, takes it away or renumbers it.
//!   Both sit behind one interface ([`broker`]: jobs in, deliveries out).
//! - Every room has an epoch, minted when its numbering starts: a join that
//!   resumes from another epoch (the room's history was reset) is refused.
//! - [`cache`]: the recent messages of each room, in front of the store:
//!   joins and `History` calls for that window are served from it; its hits
//!   and misses are counted ([`ChatStats`]) and misses are logged.
//! - [`mention`]: who a message notifies, and where: each user's
//!   notifications are the messages of an inbox room of their own, stored
//!   with the message that mentions them (same transaction or script) and
//!   followed like any room (`Notifications`).
//! - [`limits`]: what a peer may send.
//! - `types`: what the parts share (config, errors, events, counters), so
//!   that the hub and the handle here never import each other.

pub mod broker;
pub mod cache;
mod hub;
pub mod limits;
pub mod mention;
pub mod store;
mod types;

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use futures::channel::oneshot;

use crate::fanout::{SubscriberId, Subscription};
use crate::proto::chat::{Message, RoomInfo};
use crate::telemetry::Span;
use crate::wire::now_unix_ms;
pub use types::{default_data_dir, ChatConfig, ChatError, ChatStats, Event, Stats};

/// A join that took effect.
pub struct Joined {
    /// The room's last sequence number when the join took effect.
    pub last_seq: u64,
    /// The messages the client asked for, up to `last_seq`, oldest first.
    pub backlog: Vec<Message>,
    /// The room's epoch: a client resuming later presents it.
    pub epoch: String,
    /// Every event after `last_seq`.
    pub subscription: Subscription<Event>,
    /// Leaves the room when dropped, however the call ends.
    pub membership: Membership,
}

/// A member's place in a room: dropping it leaves the room.
pub struct Membership {
    commands: async_channel::Sender<hub::Command>,
    room: String,
    id: SubscriberId,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let leave = hub::Command::Leave { room: std::mem::take(&mut self.room), id: self.id };
        // The command channel is unbounded, so this never waits; it fails
        // only when the hub is gone, and then there is no room to leave.
        let _ = self.commands.try_send(leave);
    }
}

/// A handle on the chat; clones share one hub.
#[derive(Clone)]
pub struct Chat {
    commands: async_channel::Sender<hub::Command>,
    stats: Arc<Stats>,
    config: Arc<ChatConfig>,
    /// The hub thread, joined by the first `shutdown`.
    hub: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Chat {
    /// Opens the store (or connects to the broker) and starts the hub.
    pub fn start(config: &ChatConfig) -> Result<Chat, String> {
        // The names are constants: only a bad name could fail here.
        let stats = Arc::new(Stats::new().map_err(|e| format!("chat metrics: {e}"))?);
        let (commands, hub) = hub::start(config, stats.clone())?;
        Ok(Chat { commands, stats, config: Arc::new(config.clone()), hub: Arc::new(Mutex::new(Some(hub))) })
    }

    pub fn config(&self) -> &ChatConfig {
        &self.config
    }

    pub fn stats(&self) -> ChatStats {
        self.stats.snapshot()
    }

    /// Adds the chat's counters to `registry` (the server's `/metrics`).
    pub fn register_metrics(&self, registry: &prometheus::Registry) -> Result<(), String> {
        let s = &self.stats;
        let gauges = [&s.rooms, &s.subscribers];
        let counters = [&s.cache_hits, &s.cache_misses, &s.store_reads, &s.cut_off];
        gauges
            .into_iter()
            .try_for_each(|g| registry.register(Box::new(g.clone())))
            .and_then(|()| counters.into_iter().try_for_each(|c| registry.register(Box::new(c.clone()))))
            .map_err(|e| format!("chat metrics: {e}"))
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, ChatError>>) -> hub::Command,
    ) -> Result<T, ChatError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(command(reply)).await.map_err(|_| ChatError::ShuttingDown)?;
        answer.await.unwrap_or(Err(ChatError::ShuttingDown))
    }

    /// Joins `room` as `user`: the backlog (what was missed after
    /// `resume_after`, else the last `history` messages), then live events.
    /// A resume from another `epoch` than the room's, or after a message
    /// the room has not reached, is [`ChatError::OutOfRange`]: the room's
    /// history was reset.
    pub async fn join(
        &self,
        room: &str,
        user: &str,
        resume_after: Option<u64>,
        epoch: Option<&str>,
        history: usize,
    ) -> Result<Joined, ChatError> {
        self.enter(room, user, resume_after, epoch, history, false).await
    }

    /// A join; `quiet`: a hold on the room that is not a membership (no
    /// presence, no member count).
    async fn enter(
        &self,
        room: &str,
        user: &str,
        resume_after: Option<u64>,
        epoch: Option<&str>,
        history: usize,
        quiet: bool,
    ) -> Result<Joined, ChatError> {
        let (room, user, epoch) = (room.to_string(), user.to_string(), epoch.map(str::to_string));
        let joined = self
            .ask(|reply| {
                hub::Command::Join(hub::JoinRequest {
                    room: room.clone(),
                    user,
                    resume_after,
                    epoch,
                    history,
                    quiet,
                    reply,
                })
            })
            .await?;
        let hub::JoinAnswer { last_seq, backlog, subscription, epoch } = joined;
        let membership = Membership { commands: self.commands.clone(), room, id: subscription.id };
        Ok(Joined { last_seq, backlog, epoch, subscription, membership })
    }

    /// Stores a message (and the notifications of the users it mentions,
    /// [`mention`]) and fans it out; answers its sequence number. With
    /// `span` (the saying call's, when traced), its `chat.store` and
    /// `chat.fanout` spans are children of it.
    pub async fn say(
        &self,
        room: &str,
        user: &str,
        text: String,
        client_id: String,
        span: Option<Span>,
    ) -> Result<u64, ChatError> {
        let mentions = mention::mentions(&text, user)?;
        let message = Message {
            room: room.to_string(),
            user: user.to_string(),
            text,
            client_id,
            time_unix_ms: now_unix_ms(),
            ..Default::default()
        };
        self.ask(|reply| hub::Command::Say { message, mentions, reply, span }).await
    }

    /// Says `text` in `room` as `user` without being a member of it (no
    /// presence, no member count): the room is held open here for the
    /// Say (in broker mode, loaded and followed as for a join) and let go
    /// after it. Answers the message's sequence number and the room's epoch
    /// once it is stored, as [`Chat::say`]; a resend with the same
    /// `client_id` answers the stored copy's number.
    pub async fn post(
        &self,
        room: &str,
        user: &str,
        text: String,
        client_id: String,
        span: Option<Span>,
    ) -> Result<(u64, String), ChatError> {
        // Lets the room go when this function returns, however it returns.
        let held = self.enter(room, user, None, None, 0, true).await?;
        let seq = self.say(room, user, text, client_id, span).await?;
        Ok((seq, held.epoch.clone()))
    }

    /// Follows `user`'s notifications: their inbox ([`mention::inbox`]),
    /// joined as a Post holds a room (no presence), with its backlog and
    /// resume exactly as a room's.
    pub async fn notifications(
        &self,
        user: &str,
        resume_after: Option<u64>,
        epoch: Option<&str>,
        history: usize,
    ) -> Result<Joined, ChatError> {
        self.enter(&mention::inbox(user), user, resume_after, epoch, history, true).await
    }

    /// At most `limit` messages of `room` before `before_seq` (the newest
    /// when `None`), oldest first.
    pub async fn history(&self, room: &str, limit: usize, before_seq: Option<u64>) -> Result<Vec<Message>, ChatError> {
        let room = room.to_string();
        self.ask(|reply| hub::Command::History { room, limit, before_seq, reply }).await
    }

    /// The rooms with members, and how many.
    pub async fn rooms(&self) -> Result<Vec<RoomInfo>, ChatError> {
        self.ask(|reply| hub::Command::Rooms { reply }).await
    }

    /// Ends every Connect stream (their clients get UNAVAILABLE and resume
    /// elsewhere), stops the hub and waits for it to close the store, so
    /// that another server can open the same data dir at once. Blocks: for
    /// the thread that stops the server, never a completion-queue thread.
    pub fn shutdown(&self) {
        // Unbounded: never waits. Fails only if the hub is already gone.
        let _ = self.commands.try_send(hub::Command::Stop);
        let hub = self.hub.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(hub) = hub {
            if hub.join().is_err() {
                log::error!("chat: the hub thread panicked");
            }
        }
    }
}
