//! Rooms across replicas through Redis (broker mode).
//!
//! # Keys
//! | key | what |
//! |---|---|
//! | `chat:seq:<room>` | the room's last sequence number (`INCR`) |
//! | `chat:log:<room>` | the room's stream, capped with `MAXLEN ~`: message `n` has the id `n-0`; a join or leave after message `n` has an id `n-k`, `k > 0`, so one stream orders both |
//! | `chat:members:<replica>` | hash: room → distinct users on that replica; expires unless the replica refreshes it, so a killed replica's members vanish |
//! | `chat:wake:<replica>` | a stream the replica's reader also blocks on, so that the hub can make it read a room it just started to follow |
//!
//! Numbering and appending happen in one Lua script, so two replicas can
//! never append out of order and the sequence is global and gap-free.
//!
//! [`Broker`] is used by the hub thread only; [`spawn_reader`] starts the
//! replica's reader thread. Both block on Redis, on their own threads.

use std::collections::HashMap;
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use redis::{Connection, Value};

use crate::proto::chat::{Message, RoomInfo};

/// A stream entry id, `ms-seq`.
pub type StreamId = (u64, u64);

/// A stream entry the reader read.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Message(Message),
    Joined { user: String, time_unix_ms: i64 },
    Left { user: String, time_unix_ms: i64 },
}

/// What the hub tells the reader.
#[derive(Debug)]
pub enum Follow {
    /// Read `room` after this entry.
    Start(String, StreamId),
    Stop(String),
    /// End the reader.
    Quit,
}

/// A member hash not refreshed for this long is a dead replica's.
const MEMBERS_TTL: Duration = Duration::from_secs(30);
/// How long the reader blocks in one XREAD when nothing arrives.
const READ_BLOCK: Duration = Duration::from_secs(5);
/// Waits between attempts to reach a Redis that is down.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);
/// A reply slower than this is a broken connection.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

fn seq_key(room: &str) -> String {
    format!("chat:seq:{room}")
}

fn log_key(room: &str) -> String {
    format!("chat:log:{room}")
}

fn members_key(replica: &str) -> String {
    format!("chat:members:{replica}")
}

fn wake_key(replica: &str) -> String {
    format!("chat:wake:{replica}")
}

/// Numbers and appends a batch of messages, atomically per message; KEYS
/// are (seq, log) pairs, ARGV the cap then (user, text, time, client id)
/// per message. Answers the sequence numbers.
const SAY: &str = r"
local seqs = {}
for i = 1, #KEYS / 2 do
  local seq = redis.call('INCR', KEYS[2 * i - 1])
  local a = 1 + 4 * (i - 1)
  redis.call('XADD', KEYS[2 * i], 'MAXLEN', '~', ARGV[1], seq .. '-0',
    'k', 'm', 'u', ARGV[a + 1], 't', ARGV[a + 2], 'ts', ARGV[a + 3], 'c', ARGV[a + 4])
  seqs[i] = seq
end
return seqs
";

/// Appends a join or leave after the room's last message.
const PRESENCE: &str = r"
local seq = redis.call('GET', KEYS[1]) or '0'
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], seq .. '-*', 'k', ARGV[2], 'u', ARGV[3], 'ts', ARGV[4])
";

/// The room's last sequence number, the last entry id of its stream (where
/// a reader starts following it) and its last ARGV[1] messages, in one
/// atomic step.
const LOAD: &str = r"
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local last_id = '0-0'
if #last > 0 then last_id = last[1][1] end
local entries = {}
if seq > 0 then
  local from = math.max(1, seq - tonumber(ARGV[1]) + 1)
  entries = redis.call('XRANGE', KEYS[2], string.format('%d-0', from), string.format('%d-0', seq))
end
return {seq, last_id, entries}
";

fn connect(url: &str) -> redis::RedisResult<Connection> {
    let client = redis::Client::open(url)?;
    let conn = client.get_connection_with_timeout(REPLY_TIMEOUT)?;
    conn.set_read_timeout(Some(REPLY_TIMEOUT))?;
    conn.set_write_timeout(Some(REPLY_TIMEOUT))?;
    Ok(conn)
}

/// Checks that `url` is a Redis URL the client understands, for a clear
/// start-up error instead of a failing first call.
pub fn check_url(url: &str) -> Result<(), String> {
    redis::Client::open(url)
        .map(drop)
        .map_err(|e| format!("invalid --broker {url:?}: {e} (expected redis://host:port or redis+unix:///path)"))
}

/// The hub's side of the broker.
pub struct Broker {
    url: String,
    replica: String,
    conn: Option<Connection>,
    cap: usize,
    follows: async_channel::Sender<Follow>,
}

/// A room as loaded when a replica starts following it.
pub struct Loaded {
    pub last_seq: u64,
    /// Where the reader starts: every entry after it is new.
    pub position: StreamId,
    /// The last messages, oldest first (fewer when the stream was trimmed).
    pub messages: Vec<Message>,
}

impl Broker {
    /// Connects (failing now if Redis cannot be reached) and names this replica.
    pub fn connect(url: &str, cap: usize, follows: async_channel::Sender<Follow>) -> Result<Broker, String> {
        check_url(url)?;
        let conn = connect(url).map_err(|e| format!("cannot reach the broker at {url}: {e}"))?;
        let replica = format!("{}-{}-{}", std::process::id(), crate::chat::now_unix_ms(), rand_suffix());
        info!("chat: broker {url}, replica {replica}");
        Ok(Broker { url: url.to_string(), replica, conn: Some(conn), cap: cap.max(1), follows })
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs `f` on the connection, reconnecting first if the last call broke it.
    fn with<T>(&mut self, f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>) -> Result<T, String> {
        if self.conn.is_none() {
            self.conn =
                Some(connect(&self.url).map_err(|e| format!("the broker at {} is unreachable: {e}", self.url))?);
        }
        let conn = self.conn.as_mut().expect("set just above");
        f(conn).map_err(|e| {
            if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                self.conn = None;
            }
            format!("broker {}: {e}", self.url)
        })
    }

    /// Numbers and appends `messages`; answers their sequence numbers.
    pub fn say(&mut self, messages: &[Message]) -> Result<Vec<u64>, String> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SAY).arg(messages.len() * 2);
        for m in messages {
            cmd.arg(seq_key(&m.room)).arg(log_key(&m.room));
        }
        cmd.arg(self.cap);
        for m in messages {
            cmd.arg(&m.user).arg(&m.text).arg(m.time_unix_ms).arg(&m.client_id);
        }
        self.with(|conn| cmd.query(conn))
    }

    /// Appends a join (`joined`) or a leave to the room's stream.
    pub fn presence(&mut self, room: &str, user: &str, joined: bool) -> Result<(), String> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(PRESENCE).arg(2).arg(seq_key(room)).arg(log_key(room));
        cmd.arg(self.cap).arg(if joined { "j" } else { "l" }).arg(user).arg(crate::chat::now_unix_ms());
        self.with(|conn| cmd.query::<Value>(conn)).map(drop)
    }

    /// Loads a room to follow it: see [`Loaded`].
    pub fn load(&mut self, room: &str, window: usize) -> Result<Loaded, String> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(LOAD).arg(2).arg(seq_key(room)).arg(log_key(room)).arg(window.max(1));
        let value: Value = self.with(|conn| cmd.query(conn))?;
        let bad = || format!("broker {}: unexpected answer to the load script", self.url);
        let Value::Array(parts) = value else { return Err(bad()) };
        let [Value::Int(last_seq), last_id, entries] = &parts[..] else { return Err(bad()) };
        let position = text(last_id).and_then(|id| parse_id(&id)).ok_or_else(bad)?;
        let messages = parse_entries(room, entries).into_iter().filter_map(|(_, e)| message_of(e)).collect();
        Ok(Loaded { last_seq: *last_seq as u64, position, messages })
    }

    /// The room's last sequence number.
    pub fn last_seq(&mut self, room: &str) -> Result<u64, String> {
        let seq: Option<u64> = self.with(|conn| redis::cmd("GET").arg(seq_key(room)).query(conn))?;
        Ok(seq.unwrap_or(0))
    }

    /// The messages of `room` with `after < seq <= upto` still in its stream.
    pub fn range(&mut self, room: &str, after: u64, upto: u64) -> Result<Vec<Message>, String> {
        if after >= upto {
            return Ok(Vec::new());
        }
        let value: Value = self.with(|conn| {
            redis::cmd("XRANGE").arg(log_key(room)).arg(format!("{}-0", after + 1)).arg(format!("{upto}-0")).query(conn)
        })?;
        Ok(parse_entries(room, &value).into_iter().filter_map(|(_, e)| message_of(e)).collect())
    }

    /// Starts or stops reading a room's stream, and wakes the reader so it
    /// takes the change into account at once.
    pub fn follow(&mut self, change: Follow) -> Result<(), String> {
        self.follows.try_send(change).map_err(|_| "the broker reader has stopped".to_string())?;
        let key = wake_key(&self.replica);
        self.with(|conn| {
            redis::pipe()
                .cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg(16)
                .arg("*")
                .arg("w")
                .arg(1)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(MEMBERS_TTL.as_millis() as u64 * 4)
                .ignore()
                .query::<()>(conn)
        })
    }

    /// Publishes how many distinct users this replica has in `room`.
    pub fn set_members(&mut self, room: &str, count: usize) -> Result<(), String> {
        let key = members_key(&self.replica);
        self.with(|conn| {
            let mut pipe = redis::pipe();
            if count == 0 {
                pipe.cmd("HDEL").arg(&key).arg(room).ignore();
            } else {
                pipe.cmd("HSET").arg(&key).arg(room).arg(count).ignore();
            }
            pipe.cmd("PEXPIRE").arg(&key).arg(MEMBERS_TTL.as_millis() as u64).ignore().query::<()>(conn)
        })
    }

    /// Every room with members on any live replica, with the sum of its
    /// replicas' member counts.
    pub fn rooms(&mut self) -> Result<Vec<RoomInfo>, String> {
        self.with(|conn| {
            let keys: Vec<String> =
                redis::cmd("SCAN").cursor_arg(0).arg("MATCH").arg("chat:members:*").clone().iter(conn)?.collect();
            let mut totals: HashMap<String, u32> = HashMap::new();
            for key in keys {
                let counts: HashMap<String, u32> = redis::cmd("HGETALL").arg(&key).query(conn)?;
                for (room, count) in counts {
                    *totals.entry(room).or_default() += count;
                }
            }
            let mut rooms: Vec<RoomInfo> =
                totals.into_iter().map(|(room, members)| RoomInfo { room, members, ..Default::default() }).collect();
            rooms.sort_by(|a, b| a.room.cmp(&b.room));
            Ok(rooms)
        })
    }

    /// Stops the reader and removes this replica's keys.
    pub fn shutdown(&mut self) {
        let _ = self.follows.try_send(Follow::Quit);
        let (members, wake) = (members_key(&self.replica), wake_key(&self.replica));
        let result = self.with(|conn| {
            redis::pipe()
                .cmd("DEL")
                .arg(&members)
                .ignore()
                .cmd("XADD")
                .arg(&wake)
                .arg("*")
                .arg("w")
                .arg(1)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&wake)
                .arg(1000)
                .ignore()
                .query::<()>(conn)
        });
        if let Err(e) = result {
            debug!("chat: broker shutdown: {e}");
        }
    }
}

/// A few bits to tell apart replicas started in the same millisecond by
/// the same process (tests start several).
fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn parse_id(id: &str) -> Option<StreamId> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Parses an XRANGE-style array of `[id, [field, value, ...]]`; entries
/// it cannot read are skipped with a warning (another program may write
/// to the key).
fn parse_entries(room: &str, value: &Value) -> Vec<(StreamId, Entry)> {
    let Value::Array(items) = value else { return Vec::new() };
    let mut entries = Vec::with_capacity(items.len());
    for item in items {
        match parse_entry(room, item) {
            Some(entry) => entries.push(entry),
            None => warn!("chat: skipping an unreadable entry of {}", log_key(room)),
        }
    }
    entries
}

fn parse_entry(room: &str, item: &Value) -> Option<(StreamId, Entry)> {
    let Value::Array(pair) = item else { return None };
    let [id, Value::Array(fields)] = &pair[..] else { return None };
    let id = parse_id(&text(id)?)?;
    let mut map = HashMap::new();
    for kv in fields.chunks(2) {
        if let [k, v] = kv {
            map.insert(text(k)?, text(v)?);
        }
    }
    let user = map.remove("u")?;
    let time_unix_ms = map.get("ts").and_then(|t| t.parse().ok()).unwrap_or(0);
    let entry = match map.get("k").map(String::as_str) {
        Some("m") => Entry::Message(Message {
            room: room.to_string(),
            seq: id.0,
            user,
            text: map.remove("t")?,
            time_unix_ms,
            client_id: map.remove("c").unwrap_or_default(),
            ..Default::default()
        }),
        Some("j") => Entry::Joined { user, time_unix_ms },
        Some("l") => Entry::Left { user, time_unix_ms },
        _ => return None,
    };
    Some((id, entry))
}

fn message_of(entry: Entry) -> Option<Message> {
    match entry {
        Entry::Message(m) => Some(m),
        _ => None,
    }
}

/// Starts the replica's reader thread: it follows the rooms the hub tells
/// it to (through `follows`), blocking in XREAD on their streams and on the
/// replica's wake-up stream, and hands each room's new entries to
/// `deliver`. It ends on [`Follow::Quit`], when `follows` is closed, or
/// when `deliver` answers false (the hub is gone).
pub fn spawn_reader(
    url: String,
    replica: String,
    follows: async_channel::Receiver<Follow>,
    mut deliver: impl FnMut(String, Vec<(StreamId, Entry)>) -> bool + Send + 'static,
) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new().name("chat-broker-reader".to_string()).spawn(move || {
        let wake = wake_key(&replica);
        let members = members_key(&replica);
        let mut wake_position = "0-0".to_string();
        let mut rooms: HashMap<String, StreamId> = HashMap::new();
        let mut conn: Option<Connection> = None;
        let mut refreshed = Instant::now();
        loop {
            loop {
                match follows.try_recv() {
                    Ok(Follow::Start(room, from)) => {
                        rooms.insert(room, from);
                    }
                    Ok(Follow::Stop(room)) => {
                        rooms.remove(&room);
                    }
                    Ok(Follow::Quit) | Err(async_channel::TryRecvError::Closed) => return,
                    Err(async_channel::TryRecvError::Empty) => break,
                }
            }
            let connection = match conn.as_mut() {
                Some(c) => c,
                None => match connect(&url).and_then(|c| {
                    c.set_read_timeout(Some(READ_BLOCK + REPLY_TIMEOUT))?;
                    Ok(c)
                }) {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        warn!("chat: broker reader cannot reach {url}: {e}; retrying");
                        // A dedicated thread, not a completion-queue thread: waiting here blocks no call.
                        thread::sleep(RECONNECT_DELAY);
                        continue;
                    }
                },
            };
            if refreshed.elapsed() > MEMBERS_TTL / 3 {
                let _ = redis::cmd("PEXPIRE").arg(&members).arg(MEMBERS_TTL.as_millis() as u64).query::<()>(connection);
                refreshed = Instant::now();
            }
            let names: Vec<&String> = rooms.keys().collect();
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT").arg(1000).arg("BLOCK").arg(READ_BLOCK.as_millis() as u64).arg("STREAMS").arg(&wake);
            for room in &names {
                cmd.arg(log_key(room));
            }
            cmd.arg(&wake_position);
            for room in &names {
                let (ms, seq) = rooms[*room];
                cmd.arg(format!("{ms}-{seq}"));
            }
            let reply: Value = match cmd.query(connection) {
                Ok(reply) => reply,
                Err(e) => {
                    warn!("chat: broker reader: {e}; reconnecting");
                    conn = None;
                    continue;
                }
            };
            for (key, entries) in xread_streams(reply) {
                if key == wake {
                    if let Some(last) = entries.last().and_then(|e| match e {
                        Value::Array(pair) => pair.first().and_then(text),
                        _ => None,
                    }) {
                        wake_position = last;
                    }
                    continue;
                }
                let Some(room) = key.strip_prefix("chat:log:") else { continue };
                let entries = parse_entries(room, &Value::Array(entries));
                let Some(&(last, _)) = entries.last() else { continue };
                if let Some(position) = rooms.get_mut(room) {
                    *position = last;
                }
                if !deliver(room.to_string(), entries) {
                    return;
                }
            }
        }
    })
}

/// The (key, entries) pairs of an XREAD reply, in either RESP2 or RESP3 shape.
fn xread_streams(reply: Value) -> Vec<(String, Vec<Value>)> {
    let pairs: Vec<(Value, Value)> = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => {
                    let entries = kv.pop()?;
                    Some((kv.pop()?, entries))
                }
                _ => None,
            })
            .collect(),
        Value::Map(map) => map,
        _ => Vec::new(),
    };
    pairs
        .into_iter()
        .filter_map(|(key, entries)| match entries {
            Value::Array(entries) => Some((text(&key)?, entries)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn entries_parse_into_messages_and_presence() {
        let raw = Value::Array(vec![
            Value::Array(vec![
                bulk("7-0"),
                Value::Array(["k", "m", "u", "ann", "t", "hi", "ts", "12", "c", "x1"].map(bulk).to_vec()),
            ]),
            Value::Array(vec![bulk("7-1"), Value::Array(["k", "j", "u", "bob", "ts", "13"].map(bulk).to_vec())]),
            Value::Array(vec![bulk("8-0"), Value::Array(["k", "?"].map(bulk).to_vec())]),
        ]);
        let entries = parse_entries("r", &raw);
        assert_eq!(entries.len(), 2, "the unreadable entry is skipped");
        assert_eq!(entries[0].0, (7, 0));
        let Entry::Message(m) = &entries[0].1 else { panic!("{:?}", entries[0]) };
        assert_eq!((m.seq, m.user.as_str(), m.text.as_str(), m.client_id.as_str()), (7, "ann", "hi", "x1"));
        assert_eq!(entries[1], ((7, 1), Entry::Joined { user: "bob".into(), time_unix_ms: 13 }));
    }
}
