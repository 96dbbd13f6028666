//! What the chat's parts share: its configuration, its errors, the events
//! its rooms fan out, and its counters. The chat's handle and its hub both
//! use them; this file uses neither.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};

use crate::proto::chat::ServerEvent;

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

/// Why a chat operation failed; the service turns it into a status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatError {
    /// What the peer sent breaks a limit (the chat's limits); the message says which.
    InvalidArgument(String),
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
            ChatError::InvalidArgument(why) | ChatError::Unavailable(why) | ChatError::OutOfRange(why) => {
                f.write_str(why)
            }
            ChatError::ShuttingDown => f.write_str("the server is shutting down; reconnect to resume"),
        }
    }
}

/// Counters of the chat, for tests, logs and the admin port's `/metrics`
/// (registered by the chat's handle); the hub updates them.
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
    pub(super) fn new() -> Result<Stats, prometheus::Error> {
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
