//! Chat rooms behind `chat.v1.Chat` ([`crate::services::chat`]): who is in
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
//! - Every room has an epoch, minted when its numbering starts: a join that
//!   resumes from another epoch (the room's history was reset) is refused.
//! - [`cache`]: the recent messages of each room, in front of the store:
//!   joins and `History` calls for that window are served from it; its hits
//!   and misses are counted ([`ChatStats`]) and misses are logged.
//! - [`limits`]: what a peer may send.

pub mod bench;
pub mod broker;
pub mod cache;
mod hub;
pub mod limits;
pub mod store;

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::channel::oneshot;
use prometheus::{IntCounter, IntGauge};

use crate::fanout::{SubscriberId, Subscription};
use crate::proto::chat::{Message, RoomInfo, ServerEvent};

/// How the chat keeps its rooms.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// Where the SQLite history lives (`chat.sqlite3` in it); `None` keeps
    /// it in memory, for as long as the server runs. Unused with a broker.
    pub data_dir: Option<PathBuf>,
    /// When `data_dir` cannot be used (another server holds it), keep the
    /// history in memory with a warning instead of failing to start: for
    /// the default data dir, so that a second server started without
    /// `--data-dir` still runs.
    pub data_dir_is_default: bool,
    /// `redis://host:port` or `redis+unix:///path`: rooms span every replica
    /// using the same Redis, which also keeps the history.
    pub broker: Option<String>,
    /// An event is sent on a Connect stream that has been idle this long.
    pub heartbeat: Duration,
    /// Messages a fresh join replays when the client does not say.
    pub join_history: u32,
    /// Events a subscriber may have waiting before it is cut off.
    pub subscriber_queue: usize,
    /// Rooms whose recent messages the cache keeps.
    pub cache_rooms: usize,
    /// Recent messages kept per room in the cache.
    pub cache_window: usize,
    /// Broker mode: entries kept per room stream (`XADD MAXLEN ~`).
    pub stream_cap: usize,
    /// Broker mode: Redis replicas that must confirm a message (`WAIT`)
    /// before it is acknowledged; `None`: 1 with Sentinels
    /// (`redis+sentinel://`), else 0.
    pub replicas_to_ack: Option<u32>,
    /// Broker mode: how long to wait for them before the Say fails (UNAVAILABLE).
    pub ack_timeout: Duration,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            data_dir: None,
            data_dir_is_default: false,
            broker: None,
            heartbeat: Duration::from_secs(15),
            join_history: 20,
            subscriber_queue: 1024,
            cache_rooms: 1024,
            cache_window: 256,
            stream_cap: 100_000,
            replicas_to_ack: None,
            ack_timeout: Duration::from_secs(1),
        }
    }
}

/// The default `--data-dir`: `$XDG_DATA_HOME/greet`, else
/// `~/.local/share/greet`, else `./greet-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("greet");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/greet"),
        None => PathBuf::from("greet-data"),
    }
}

/// Why a chat operation failed; [`crate::status`] turns it into a status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatError {
    /// The store or the broker failed; the operation did not happen.
    Unavailable(String),
    /// A resume point whose messages are no longer kept.
    OutOfRange(String),
    /// The server is shutting down.
    ShuttingDown,
}

impl fmt::Display for ChatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChatError::Unavailable(why) | ChatError::OutOfRange(why) => f.write_str(why),
            ChatError::ShuttingDown => f.write_str("the server is shutting down; reconnect to resume"),
        }
    }
}

/// Counters of the chat, for tests, logs and the admin port's `/metrics`
/// ([`Chat::register_metrics`]); the hub updates them.
pub struct Stats {
    pub rooms: IntGauge,
    pub subscribers: IntGauge,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub store_reads: IntCounter,
    pub cut_off: IntCounter,
}

/// A snapshot of [`Stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChatStats {
    /// Rooms with members on this server.
    pub rooms: usize,
    /// Connect calls subscribed to a room on this server.
    pub subscribers: usize,
    /// Joins and History calls served from the cache.
    pub cache_hits: u64,
    /// Joins and History calls that read the store.
    pub cache_misses: u64,
    /// Reads of the store (SQLite or Redis) for history.
    pub store_reads: u64,
    /// Subscribers cut off for falling behind.
    pub cut_off: u64,
}

impl Stats {
    fn new() -> Result<Stats, prometheus::Error> {
        let gauge = |name: &str, help: &str| IntGauge::new(name, help);
        let counter = |name: &str, help: &str| IntCounter::new(name, help);
        Ok(Stats {
            rooms: gauge("chat_rooms", "Chat rooms with members on this server.")?,
            subscribers: gauge("chat_subscribers", "Chat streams subscribed to a room on this server.")?,
            cache_hits: counter(
                "chat_cache_hits_total",
                "Joins and History calls served from the recent-messages cache.",
            )?,
            cache_misses: counter("chat_cache_misses_total", "Joins and History calls that read the store.")?,
            store_reads: counter("chat_store_reads_total", "Reads of the history store (SQLite or Redis).")?,
            cut_off: counter("chat_cut_off_total", "Chat streams cut off for falling behind their room.")?,
        })
    }

    pub fn snapshot(&self) -> ChatStats {
        ChatStats {
            rooms: self.rooms.get().max(0) as usize,
            subscribers: self.subscribers.get().max(0) as usize,
            cache_hits: self.cache_hits.get(),
            cache_misses: self.cache_misses.get(),
            store_reads: self.store_reads.get(),
            cut_off: self.cut_off.get(),
        }
    }
}

/// What a fan-out delivers: one event, shared by every subscriber.
pub type Event = Arc<ServerEvent>;

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
        let (room, user, epoch) = (room.to_string(), user.to_string(), epoch.map(str::to_string));
        let joined = self
            .ask(|reply| {
                hub::Command::Join(hub::JoinRequest { room: room.clone(), user, resume_after, epoch, history, reply })
            })
            .await?;
        let hub::JoinAnswer { last_seq, backlog, subscription, epoch } = joined;
        let membership = Membership { commands: self.commands.clone(), room, id: subscription.id };
        Ok(Joined { last_seq, backlog, epoch, subscription, membership })
    }

    /// Stores a message and fans it out; answers its sequence number.
    pub async fn say(&self, room: &str, user: &str, text: String, client_id: String) -> Result<u64, ChatError> {
        let message = Message {
            room: room.to_string(),
            user: user.to_string(),
            text,
            client_id,
            time_unix_ms: now_unix_ms(),
            ..Default::default()
        };
        self.ask(|reply| hub::Command::Say { message, reply }).await
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

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
