//! The Redis broker: rooms across replicas through one Redis, alone or
//! behind Sentinels.
//!
//! # Keys
//! | key | what |
//! |---|---|
//! | `chat:seq:<room>` | the last sequence number handed out in the room (`INCR`) |
//! | `chat:committed:<room>` | the last sequence number acknowledged: stored on the primary and (with `replicas_to_ack` > 0) confirmed by that many replicas (`WAIT`) |
//! | `chat:epoch:<room>` | the room's epoch: an id minted when its numbering starts; a room whose keys are lost (Redis lost its data) gets a new one |
//! | `chat:log:<room>` | the room's stream, capped with `MAXLEN ~`: message `n` has the id `n-0`; a join, a leave or a commit mark after message `n` has an id `n-k`, `k > 0`, so one stream orders them all |
//! | `chat:cid:<room>:<user>:<client_id>` | the sequence number of a message said with that client id, for an hour: a resent message is stored once |
//! | `chat:resets` | a stream of `(room, epoch)`: every epoch minted, so that replicas drop what they hold of the room's previous epoch |
//! | `chat:members:<replica>` | hash: room → distinct users on that replica; expires unless the replica refreshes it, so a killed replica's members vanish |
//! | `chat:wake:<replica>` | a stream the replica's reader also blocks on, so that the hub can make it read a room it just started to follow |
//!
//! Numbering and appending happen in one Lua script, so two replicas can
//! never append out of order and the sequence is global and gap-free.
//!
//! # Acknowledgements
//! A message is fanned out (its sender's echo is the acknowledgement) only
//! once committed: after the script stored it, the writer waits for
//! `replicas_to_ack` replicas (`WAIT`), then appends a commit mark to the
//! stream. Readers hold back a room's entries after the first uncommitted
//! message until a mark covers it, so that a message the primary's loss
//! could take away is never seen. When no replica confirms in time the Say
//! fails (UNAVAILABLE); the client resends it, and its client id makes the
//! resend find the stored copy instead of storing it twice.
//!
//! # Threads
//! Nothing here runs on the hub thread: [`Broker`] is the hub's handle on
//! two threads of its own: the writer (`chat-broker`), which runs the
//! [`Job`]s the hub sends and answers each through its callback, and the
//! reader (`chat-broker-reader`), which follows the rooms the hub tells it
//! to and hands it what it reads. Both find the primary through the
//! Sentinels with a `redis+sentinel://` URL, and find it again after a
//! failover.

use std::collections::{HashMap, VecDeque};
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use redis::{Connection, Value};

use super::types::{
    new_epoch, rand_suffix, run_batch, BrokerConfig, Delivery, Entry, Follow, Job, Loaded, Queues, Said, StreamId,
    Writes,
};
use crate::chat::mention;
use crate::proto::chat::{Message, RoomInfo};

/// A member hash not refreshed for this long is a dead replica's.
const MEMBERS_TTL: Duration = Duration::from_secs(30);
/// How long the reader blocks in one XREAD when nothing arrives.
const READ_BLOCK: Duration = Duration::from_secs(5);
/// Waits between attempts to reach a Redis that is down.
const RECONNECT_DELAY: Duration = Duration::from_millis(200);
/// A Sentinel, or the primary it names, that does not answer within this is skipped.
const SENTINEL_TIMEOUT: Duration = Duration::from_millis(500);
/// A reply slower than this is a broken connection.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client id is remembered: a message resent within it is stored once.
const REPLAY_WINDOW_SECS: u64 = 3600;

const RESETS_KEY: &str = "chat:resets";

fn seq_key(room: &str) -> String {
    format!("chat:seq:{room}")
}

fn committed_key(room: &str) -> String {
    format!("chat:committed:{room}")
}

fn epoch_key(room: &str) -> String {
    format!("chat:epoch:{room}")
}

fn log_key(room: &str) -> String {
    format!("chat:log:{room}")
}

fn client_id_key(room: &str, user: &str, client_id: &str) -> String {
    format!("chat:cid:{room}:{user}:{client_id}")
}

fn members_key(replica: &str) -> String {
    format!("chat:members:{replica}")
}

fn wake_key(replica: &str) -> String {
    format!("chat:wake:{replica}")
}

/// Numbers and appends a batch of messages, and each stored message's
/// notifications to its mentioned users' inboxes (rooms of their own).
/// KEYS: per message (seq, log, epoch, committed, client id), then per
/// mention (the inbox's seq, log, committed); ARGV: the cap, "1" to commit
/// at once (no replica to wait for), the client ids' lifetime, the inboxes'
/// cap, the number of messages, then per message (epoch, user, text, time,
/// client id, room, mentions). Answers per message its sequence number:
/// the stored copy's when the client id was seen (then nobody is notified
/// again), -1 when the room's epoch is not the one given (the room was
/// reset); then per mention the notification's sequence number, 0 when
/// none was stored.
const SAY: &str = r"
local out = {}
local notes = {}
local n = tonumber(ARGV[5])
local mk = 5 * n
for i = 1, n do
  local k = 5 * (i - 1)
  local a = 5 + 7 * (i - 1)
  local stored = false
  local epoch = redis.call('GET', KEYS[k + 3])
  if epoch ~= ARGV[a + 1] then
    out[i] = -1
  else
    local seen = false
    if ARGV[a + 5] ~= '' then seen = redis.call('GET', KEYS[k + 5]) end
    if seen then
      out[i] = tonumber(seen)
    else
      local seq = redis.call('INCR', KEYS[k + 1])
      local fields = {'k', 'm', 'u', ARGV[a + 2], 't', ARGV[a + 3], 'ts', ARGV[a + 4], 'c', ARGV[a + 5]}
      if ARGV[2] == '1' then
        table.insert(fields, 'a')
        table.insert(fields, '1')
        redis.call('SET', KEYS[k + 4], seq)
      end
      redis.call('XADD', KEYS[k + 2], 'MAXLEN', '~', ARGV[1], seq .. '-0', unpack(fields))
      if ARGV[a + 5] ~= '' then redis.call('SET', KEYS[k + 5], seq, 'EX', ARGV[3]) end
      out[i] = seq
      stored = seq
    end
  end
  for j = 1, tonumber(ARGV[a + 7]) do
    local note = 0
    if stored then
      note = redis.call('INCR', KEYS[mk + 1])
      local fields = {'k', 'm', 'u', ARGV[a + 2], 't', ARGV[a + 3], 'ts', ARGV[a + 4], 'c', stored .. ':' .. ARGV[a + 6]}
      if ARGV[2] == '1' then
        table.insert(fields, 'a')
        table.insert(fields, '1')
        redis.call('SET', KEYS[mk + 3], note)
      end
      redis.call('XADD', KEYS[mk + 2], 'MAXLEN', '~', ARGV[4], note .. '-0', unpack(fields))
    end
    table.insert(notes, note)
    mk = mk + 3
  end
end
for _, note in ipairs(notes) do table.insert(out, note) end
return out
";

/// Marks messages acknowledged. KEYS: per room (seq, log, committed);
/// ARGV: the cap, then per room the sequence number now acknowledged.
const COMMIT: &str = r"
for i = 1, #KEYS / 3 do
  local c = tonumber(ARGV[i + 1])
  local was = tonumber(redis.call('GET', KEYS[3 * i]) or '0')
  if c > was then
    redis.call('SET', KEYS[3 * i], c)
    local top = redis.call('GET', KEYS[3 * i - 2]) or '0'
    redis.call('XADD', KEYS[3 * i - 1], 'MAXLEN', '~', ARGV[1], top .. '-*', 'k', 'c', 's', c)
  end
end
return 1
";

/// The room's epoch, minted (ARGV[1]) and announced on `chat:resets` if it
/// has none. KEYS: epoch, resets; ARGV: the candidate, the room.
const EPOCH: &str = r"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', 1000, '*', 'r', ARGV[2], 'e', epoch)
end
return epoch
";

/// A reader's check after a reconnection. KEYS: committed, log, epoch,
/// resets; ARGV: the last message the reader delivered, the epoch it knows,
/// a new epoch, the room. Answers the primary's last acknowledged message,
/// the id of the last entry up to it, and the room's epoch, changed here to
/// the new one when the primary has less than was delivered and the epoch
/// is still the one the reader knows.
const RECHECK: &str = r"
local c = tonumber(redis.call('GET', KEYS[1]) or '0')
local epoch = redis.call('GET', KEYS[3]) or ''
if c >= tonumber(ARGV[1]) then return {c, '', epoch} end
local last = redis.call('XREVRANGE', KEYS[2], c .. '-18446744073709551615', '-', 'COUNT', 1)
local last_id = '0-0'
if #last > 0 then last_id = last[1][1] end
if epoch == ARGV[2] then
  epoch = ARGV[3]
  redis.call('SET', KEYS[3], epoch)
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', 1000, '*', 'r', ARGV[4], 'e', epoch)
end
return {c, last_id, epoch}
";

/// Appends a join or leave after the room's last message.
const PRESENCE: &str = r"
local seq = redis.call('GET', KEYS[1]) or '0'
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], seq .. '-*', 'k', ARGV[2], 'u', ARGV[3], 'ts', ARGV[4])
";

/// In one atomic step: the room's epoch (minted if it has none), its last
/// acknowledged sequence number, the id of the last entry up to that
/// message (where a reader starts following it) and the last ARGV[1]
/// messages. KEYS: committed, log, epoch, resets; ARGV: window, candidate
/// epoch, room.
const LOAD: &str = r"
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[3], epoch)
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', 1000, '*', 'r', ARGV[3], 'e', epoch)
end
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local last = redis.call('XREVRANGE', KEYS[2], seq .. '-18446744073709551615', '-', 'COUNT', 1)
local last_id = '0-0'
if #last > 0 then last_id = last[1][1] end
local entries = {}
if seq > 0 then
  local from = math.max(1, seq - tonumber(ARGV[1]) + 1)
  entries = redis.call('XRANGE', KEYS[2], string.format('%d-0', from), string.format('%d-0', seq))
end
return {seq, last_id, entries, epoch}
";

/// Where the broker is.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    Url(String),
    /// The primary named `master`, as the Sentinels at `nodes` know it.
    Sentinel {
        nodes: Vec<String>,
        master: String,
    },
}

fn parse_target(url: &str) -> Result<Target, String> {
    if let Some(rest) = url.strip_prefix("redis+sentinel://") {
        let usage =
            || format!("invalid --broker {url:?}: expected redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER_NAME");
        let (hosts, master) = rest.split_once('/').ok_or_else(usage)?;
        let master = master.trim_end_matches('/');
        let nodes: Vec<String> = hosts.split(',').filter(|h| !h.is_empty()).map(|h| format!("redis://{h}")).collect();
        if master.is_empty() || master.contains('/') || nodes.is_empty() {
            return Err(usage());
        }
        for node in &nodes {
            redis::Client::open(node.as_str()).map_err(|e| format!("invalid --broker {url:?}: {node}: {e}"))?;
        }
        return Ok(Target::Sentinel { nodes, master: master.to_string() });
    }
    redis::Client::open(url).map(drop).map_err(|e| {
        format!(
            "invalid --broker {url:?}: {e} (expected redis://host:port, redis+unix:///path or redis+sentinel://host:port,.../master)"
        )
    })?;
    Ok(Target::Url(url.to_string()))
}

/// Checks that `url` is a broker URL we understand, for a clear start-up
/// error instead of a failing first call.
pub fn check_url(url: &str) -> Result<(), String> {
    parse_target(url).map(drop)
}

/// Whether `url` names Sentinels (then a replica confirms each message by default).
pub fn is_sentinel_url(url: &str) -> bool {
    url.starts_with("redis+sentinel://")
}

/// Asks each Sentinel in turn, within [`SENTINEL_TIMEOUT`] (an unreachable
/// one costs that much, not a hang), which node is the primary, and takes
/// the first answer whose node says it is one (`ROLE`): a Sentinel cut off
/// from the others may still name a demoted primary.
fn primary_from_sentinels(nodes: &[String], master: &str) -> redis::RedisResult<redis::Client> {
    let mut last = redis::RedisError::from((redis::ErrorKind::IoError, "no Sentinel given"));
    for node in nodes {
        let asked = (|| {
            let mut sentinel = redis::Client::open(node.as_str())?.get_connection_with_timeout(SENTINEL_TIMEOUT)?;
            sentinel.set_read_timeout(Some(SENTINEL_TIMEOUT))?;
            sentinel.set_write_timeout(Some(SENTINEL_TIMEOUT))?;
            let (host, port): (String, u16) =
                redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(master).query(&mut sentinel)?;
            let host = if host.contains(':') { format!("[{host}]") } else { host };
            let client = redis::Client::open(format!("redis://{host}:{port}"))?;
            let mut primary = client.get_connection_with_timeout(SENTINEL_TIMEOUT)?;
            primary.set_read_timeout(Some(SENTINEL_TIMEOUT))?;
            let role: Value = redis::cmd("ROLE").query(&mut primary)?;
            match role {
                Value::Array(parts) if parts.first().and_then(text).as_deref() == Some("master") => Ok(client),
                _ => Err(redis::RedisError::from((
                    redis::ErrorKind::ResponseError,
                    "the node a Sentinel names is not a primary",
                    format!("{host}:{port}, named by {node}"),
                ))),
            }
        })();
        match asked {
            Ok(client) => return Ok(client),
            Err(e) => {
                debug!("chat: Sentinel {node}: {e}");
                last = e;
            }
        }
    }
    Err(last)
}

/// One connection to the primary, made again (through the Sentinels, which
/// name the primary after a failover) after any failure.
struct Link {
    target: Target,
    url: String,
    conn: Option<Connection>,
}

impl Link {
    fn new(url: &str) -> Result<Link, String> {
        Ok(Link { target: parse_target(url)?, url: url.to_string(), conn: None })
    }

    fn connect(&mut self) -> redis::RedisResult<Connection> {
        let client = match &self.target {
            Target::Url(url) => redis::Client::open(url.as_str())?,
            Target::Sentinel { nodes, master } => primary_from_sentinels(nodes, master)?,
        };
        let conn = client.get_connection_with_timeout(REPLY_TIMEOUT)?;
        conn.set_read_timeout(Some(REPLY_TIMEOUT))?;
        conn.set_write_timeout(Some(REPLY_TIMEOUT))?;
        Ok(conn)
    }

    fn conn(&mut self) -> Result<&mut Connection, String> {
        if self.conn.is_none() {
            let conn = self.connect().map_err(|e| format!("the broker {} is unreachable: {e}", self.url))?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("set just above"))
    }

    /// Runs `f` on the connection; any failure drops the connection, so the
    /// next call finds the primary again.
    fn run<T>(&mut self, f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>) -> Result<T, String> {
        let conn = self.conn()?;
        f(conn).map_err(|e| {
            self.conn = None;
            format!("broker {}: {e}", self.url)
        })
    }

    /// [`Link::run`], once more on a new connection if the first attempt
    /// failed: for reads and other calls that may safely run twice.
    fn retry<T>(&mut self, mut f: impl FnMut(&mut Connection) -> redis::RedisResult<T>) -> Result<T, String> {
        match self.run(&mut f) {
            Ok(answer) => Ok(answer),
            Err(e) => {
                debug!("chat: {e}; trying again on a new connection");
                self.run(f)
            }
        }
    }
}

/// Checks that Redis answers, then starts the writer (whose handle this
/// answers) and the reader.
pub(super) fn start(
    config: &BrokerConfig,
    queues: Queues,
    deliver: impl FnMut(Delivery) -> bool + Send + 'static,
) -> Result<thread::JoinHandle<()>, String> {
    let mut link = Link::new(&config.url)?;
    link.run(|conn| redis::cmd("PING").query::<()>(conn))
        .map_err(|e| format!("cannot reach the broker at {}: {e}", config.url))?;
    let replica = format!("{}-{}-{}", std::process::id(), crate::wire::now_unix_ms(), rand_suffix());
    info!("chat: broker {}, replica {replica}, acknowledging after {} replica(s)", config.url, config.replicas_to_ack);
    spawn_reader(Link::new(&config.url)?, replica.clone(), queues.follows, deliver)
        .map_err(|e| format!("cannot start the broker reader: {e}"))?;
    let writer = Writer { link, replica, config: config.clone() };
    let jobs = queues.jobs;
    thread::Builder::new()
        .name("chat-broker".to_string())
        .spawn(move || writer.run(jobs))
        .map_err(|e| format!("cannot start the broker writer: {e}"))
}

/// The writer thread's state.
struct Writer {
    link: Link,
    replica: String,
    config: BrokerConfig,
}

impl Writer {
    fn run(mut self, jobs: async_channel::Receiver<Job>) {
        while let Ok(first) = jobs.recv_blocking() {
            if !run_batch(&mut self, &jobs, first) {
                return;
            }
        }
    }

    /// Waits until enough replicas have what this connection wrote, then
    /// marks the batch's messages (and notifications) acknowledged:
    /// `stored` is each one's room and sequence number.
    fn commit(&mut self, stored: &[(&str, i64)]) -> Result<(), String> {
        let (wanted, timeout) = (self.config.replicas_to_ack, self.config.ack_timeout);
        let started = Instant::now();
        let confirmed: i64 =
            self.link.run(|conn| redis::cmd("WAIT").arg(wanted).arg(timeout.as_millis() as u64).query(conn))?;
        if confirmed < i64::from(wanted) {
            return Err(format!(
                "{confirmed} of {wanted} replica(s) confirmed it within {:?}",
                started.elapsed().max(timeout)
            ));
        }
        let mut last: Vec<(&str, i64)> = Vec::new();
        for &(room, seq) in stored {
            match last.iter_mut().find(|(r, _)| *r == room) {
                Some((_, top)) => *top = (*top).max(seq),
                None => last.push((room, seq)),
            }
        }
        last.retain(|&(_, seq)| seq > 0);
        if last.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(COMMIT).arg(last.len() * 3);
        for (room, _) in &last {
            cmd.arg(seq_key(room)).arg(log_key(room)).arg(committed_key(room));
        }
        cmd.arg(self.config.cap);
        for (_, seq) in &last {
            cmd.arg(*seq);
        }
        self.link.run(|conn| cmd.query::<Value>(conn)).map(drop)
    }

    fn epoch(&mut self, room: &str) -> Result<String, String> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(EPOCH).arg(2).arg(epoch_key(room)).arg(RESETS_KEY).arg(new_epoch()).arg(room);
        self.link.retry(|conn| cmd.query(conn))
    }
}

impl Writes for Writer {
    /// Stores a batch of messages, waits for the replicas, marks them
    /// acknowledged, and only then answers their senders.
    fn say(&mut self, says: Vec<Said>) {
        if says.is_empty() {
            return;
        }
        let commit_now = self.config.replicas_to_ack == 0;
        let mut cmd = redis::cmd("EVAL");
        let mentions: usize = says.iter().map(|s| s.mentions.len()).sum();
        cmd.arg(SAY).arg(says.len() * 5 + mentions * 3);
        for s in &says {
            let m = &s.message;
            cmd.arg(seq_key(&m.room)).arg(log_key(&m.room)).arg(epoch_key(&m.room)).arg(committed_key(&m.room));
            cmd.arg(client_id_key(&m.room, &m.user, &m.client_id));
        }
        let inboxes: Vec<String> = says.iter().flat_map(|s| s.mentions.iter().map(|u| mention::inbox(u))).collect();
        for inbox in &inboxes {
            cmd.arg(seq_key(inbox)).arg(log_key(inbox)).arg(committed_key(inbox));
        }
        cmd.arg(self.config.cap).arg(if commit_now { "1" } else { "0" }).arg(REPLAY_WINDOW_SECS);
        cmd.arg(mention::KEPT).arg(says.len());
        for s in &says {
            let m = &s.message;
            cmd.arg(&s.epoch).arg(&m.user).arg(&m.text).arg(m.time_unix_ms).arg(&m.client_id);
            cmd.arg(&m.room).arg(s.mentions.len());
        }
        let mut seqs: Vec<i64> = match self.link.run(|conn| cmd.query::<Vec<i64>>(conn)) {
            Ok(seqs) if seqs.len() == says.len() + mentions => seqs,
            other => {
                let why = match other {
                    Err(e) => e,
                    Ok(_) => "the broker answered the wrong number of sequence numbers".to_string(),
                };
                warn!("chat: {} message(s) not stored: {why}", says.len());
                for s in says {
                    (s.done)(Err(format!("the message was not stored: {why}")));
                }
                return;
            }
        };
        let notes = seqs.split_off(says.len());
        if !commit_now {
            let rooms = says.iter().map(|s| s.message.room.as_str()).chain(inboxes.iter().map(String::as_str));
            let stored: Vec<(&str, i64)> = rooms.zip(seqs.iter().chain(&notes).copied()).collect();
            if let Err(why) = self.commit(&stored) {
                warn!("chat: {} message(s) not acknowledged: {why}", says.len());
                for s in says {
                    (s.done)(Err(format!("the message was not acknowledged: {why}; send it again")));
                }
                return;
            }
        }
        for (s, seq) in says.into_iter().zip(seqs) {
            if seq < 0 {
                let room = s.message.room.clone();
                if let Err(e) = self.epoch(&room) {
                    warn!("chat: {e}");
                }
                (s.done)(Err(format!("the history of room {room:?} was reset; join it afresh")));
            } else {
                (s.done)(Ok(seq as u64));
            }
        }
    }

    fn presence(&mut self, room: &str, user: &str, joined: bool, members: usize) -> Result<(), String> {
        let mut script = redis::cmd("EVAL");
        script.arg(PRESENCE).arg(2).arg(seq_key(room)).arg(log_key(room));
        script.arg(self.config.cap).arg(if joined { "j" } else { "l" }).arg(user).arg(crate::wire::now_unix_ms());
        let key = members_key(&self.replica);
        let mut pipe = redis::pipe();
        pipe.add_command(script).ignore();
        if members == 0 {
            pipe.cmd("HDEL").arg(&key).arg(room).ignore();
        } else {
            pipe.cmd("HSET").arg(&key).arg(room).arg(members).ignore();
        }
        pipe.cmd("PEXPIRE").arg(&key).arg(MEMBERS_TTL.as_millis() as u64).ignore();
        self.link.run(|conn| pipe.query::<()>(conn))
    }

    fn load(&mut self, room: &str, window: usize) -> Result<Loaded, String> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(LOAD).arg(4).arg(committed_key(room)).arg(log_key(room)).arg(epoch_key(room)).arg(RESETS_KEY);
        cmd.arg(window.max(1)).arg(new_epoch()).arg(room);
        let value: Value = self.link.retry(|conn| cmd.query(conn))?;
        let bad = || format!("broker {}: unexpected answer to the load script", self.link.url);
        let Value::Array(parts) = value else { return Err(bad()) };
        let [Value::Int(last_seq), last_id, entries, epoch] = &parts[..] else { return Err(bad()) };
        let position = text(last_id).and_then(|id| parse_id(&id)).ok_or_else(bad)?;
        let epoch = text(epoch).ok_or_else(bad)?;
        let messages = parse_entries(room, entries).into_iter().filter_map(|(_, e)| message_of(e)).collect();
        Ok(Loaded { last_seq: *last_seq as u64, position, messages, epoch })
    }

    fn range(&mut self, room: &str, after: u64, upto: u64) -> Result<Vec<Message>, String> {
        if after >= upto {
            return Ok(Vec::new());
        }
        let (from, to) = (format!("{}-0", after + 1), format!("{upto}-0"));
        let value: Value =
            self.link.retry(|conn| redis::cmd("XRANGE").arg(log_key(room)).arg(&from).arg(&to).query(conn))?;
        Ok(parse_entries(room, &value).into_iter().filter_map(|(_, e)| message_of(e)).collect())
    }

    fn history(&mut self, room: &str, limit: usize, before_seq: Option<u64>) -> Result<Vec<Message>, String> {
        let last: Option<u64> = self.link.retry(|conn| redis::cmd("GET").arg(committed_key(room)).query(conn))?;
        let last = last.unwrap_or(0);
        let upto = before_seq.map_or(last, |before| before.saturating_sub(1).min(last));
        self.range(room, upto.saturating_sub(limit as u64), upto)
    }

    /// Every room with members on any live replica, with the sum of its
    /// replicas' member counts.
    fn rooms(&mut self) -> Result<Vec<RoomInfo>, String> {
        self.link.retry(|conn| {
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

    fn wake(&mut self) -> Result<(), String> {
        let key = wake_key(&self.replica);
        self.link.retry(|conn| {
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

    /// Removes this replica's keys, and wakes its reader so that it sees it must end.
    fn stop(&mut self) {
        let (members, wake) = (members_key(&self.replica), wake_key(&self.replica));
        let result = self.link.run(|conn| {
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
            Some((id, entry, acknowledged)) => {
                let seq = match &entry {
                    Entry::Message(m) if acknowledged => Some(m.seq),
                    _ => None,
                };
                entries.push((id, entry));
                // Stored acknowledged (no replica to wait for): as if a commit mark followed.
                entries.extend(seq.map(|seq| (id, Entry::Committed(seq))));
            }
            None => warn!("chat: skipping an unreadable entry of {}", log_key(room)),
        }
    }
    entries
}

/// An entry, and whether it was stored acknowledged.
fn parse_entry(room: &str, item: &Value) -> Option<(StreamId, Entry, bool)> {
    let Value::Array(pair) = item else { return None };
    let [id, Value::Array(fields)] = &pair[..] else { return None };
    let id = parse_id(&text(id)?)?;
    let mut map = HashMap::new();
    for kv in fields.chunks(2) {
        if let [k, v] = kv {
            map.insert(text(k)?, text(v)?);
        }
    }
    if map.get("k").map(String::as_str) == Some("c") {
        return Some((id, Entry::Committed(map.get("s")?.parse().ok()?), false));
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
    Some((id, entry, map.contains_key("a")))
}

fn message_of(entry: Entry) -> Option<Message> {
    match entry {
        Entry::Message(m) => Some(m),
        _ => None,
    }
}

/// A room the reader follows.
struct Followed {
    /// The last entry read.
    read: StreamId,
    /// The last entry handed to the hub: where reading starts again after
    /// a reconnection (the entries held back may not be on a new primary).
    delivered: StreamId,
    /// Messages up to this one are acknowledged.
    committed: u64,
    /// Entries read but held back behind an unacknowledged message.
    held: VecDeque<(StreamId, Entry)>,
    /// The room's epoch as the hub loaded it.
    epoch: String,
}

impl Followed {
    fn new(position: StreamId, committed: u64, epoch: String) -> Self {
        Followed { read: position, delivered: position, committed, held: VecDeque::new(), epoch }
    }

    /// After the store lost what was delivered: read on from where the
    /// primary is, not from an entry it may never reach (the reader would
    /// wait for it, deaf to every message until the numbering caught up).
    fn reposition(&mut self, position: StreamId, committed: u64) {
        (self.read, self.delivered, self.committed) = (position, position, committed);
        self.held.clear();
    }

    /// Takes in newly read entries; answers those now deliverable, in
    /// order: everything up to the first unacknowledged message.
    fn take(&mut self, entries: Vec<(StreamId, Entry)>) -> Vec<(StreamId, Entry)> {
        for (id, entry) in entries {
            self.read = self.read.max(id);
            match entry {
                Entry::Committed(seq) => self.committed = self.committed.max(seq),
                entry => self.held.push_back((id, entry)),
            }
        }
        let mut ready = Vec::new();
        while let Some((_, entry)) = self.held.front() {
            if matches!(entry, Entry::Message(m) if m.seq > self.committed) {
                break;
            }
            let (id, entry) = self.held.pop_front().expect("front exists");
            self.delivered = id;
            ready.push((id, entry));
        }
        if self.held.is_empty() {
            self.delivered = self.read;
        }
        ready
    }

    /// After a reconnection: read again from what was delivered.
    fn rewind(&mut self) {
        self.read = self.delivered;
        self.held.clear();
    }
}

/// Starts the replica's reader thread: it follows the rooms the hub tells
/// it to (through `follows`), blocking in XREAD on their streams, on the
/// replica's wake-up stream and on `chat:resets`, and hands `deliver` each
/// room's new acknowledged entries and each epoch minted. It ends on
/// [`Follow::Quit`], when `follows` is closed, or when `deliver` answers
/// false (the hub is gone).
fn spawn_reader(
    mut link: Link,
    replica: String,
    follows: async_channel::Receiver<Follow>,
    mut deliver: impl FnMut(Delivery) -> bool + Send + 'static,
) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new().name("chat-broker-reader".to_string()).spawn(move || {
        let wake = wake_key(&replica);
        let members = members_key(&replica);
        let mut wake_position = "0-0".to_string();
        let mut resets_position: Option<String> = None;
        let mut rooms: HashMap<String, Followed> = HashMap::new();
        let mut refreshed = Instant::now();
        let mut failing = false;
        loop {
            loop {
                match follows.try_recv() {
                    Ok(Follow::Start { room, position, committed, epoch }) => {
                        rooms.insert(room, Followed::new(position, committed, epoch));
                    }
                    Ok(Follow::Stop(room)) => {
                        rooms.remove(&room);
                    }
                    Ok(Follow::Quit) | Err(async_channel::TryRecvError::Closed) => return,
                    Err(async_channel::TryRecvError::Empty) => break,
                }
            }
            if failing {
                // A dedicated thread, not a completion-queue thread: waiting here blocks no call.
                thread::sleep(RECONNECT_DELAY);
            }
            let connected = link
                .conn()
                .and_then(|conn| conn.set_read_timeout(Some(READ_BLOCK + REPLY_TIMEOUT)).map_err(|e| e.to_string()));
            if let Err(e) = connected {
                if !failing {
                    warn!("chat: broker reader: {e}; retrying");
                }
                failing = true;
                continue;
            }
            if failing {
                info!("chat: broker reader: reconnected to {}", link.url);
                failing = false;
                match recheck(&mut link, &mut rooms) {
                    Ok(resets) => {
                        for (room, epoch) in resets {
                            if !deliver(Delivery::Reset { room, epoch }) {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        warn!("chat: broker reader: {e}; reconnecting");
                        failing = true;
                        continue;
                    }
                }
            }
            if resets_position.is_none() {
                // Epochs minted from now on; the hub loads a room's current one itself.
                let last: Result<Value, String> = link.run(|conn| {
                    redis::cmd("XREVRANGE").arg(RESETS_KEY).arg("+").arg("-").arg("COUNT").arg(1).query(conn)
                });
                match last {
                    Ok(last) => {
                        let id = parse_entries_ids(&last).pop().unwrap_or_else(|| "0-0".to_string());
                        resets_position = Some(id);
                    }
                    Err(e) => {
                        warn!("chat: broker reader: {e}; reconnecting");
                        failing = true;
                        for followed in rooms.values_mut() {
                            followed.rewind();
                        }
                        continue;
                    }
                }
            }
            if refreshed.elapsed() > MEMBERS_TTL / 3 {
                let _ = link.run(|conn| {
                    redis::cmd("PEXPIRE").arg(&members).arg(MEMBERS_TTL.as_millis() as u64).query::<()>(conn)
                });
                refreshed = Instant::now();
            }
            let names: Vec<String> = rooms.keys().cloned().collect();
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT").arg(1000).arg("BLOCK").arg(READ_BLOCK.as_millis() as u64).arg("STREAMS");
            cmd.arg(&wake).arg(RESETS_KEY);
            for room in &names {
                cmd.arg(log_key(room));
            }
            cmd.arg(&wake_position).arg(resets_position.as_deref().unwrap_or("0-0"));
            for room in &names {
                let (ms, seq) = rooms[room].read;
                cmd.arg(format!("{ms}-{seq}"));
            }
            let reply: Value = match link.run(|conn| cmd.query(conn)) {
                Ok(reply) => reply,
                Err(e) => {
                    warn!("chat: broker reader: {e}; reconnecting");
                    failing = true;
                    // What a new primary has is read again from what was delivered.
                    for followed in rooms.values_mut() {
                        followed.rewind();
                    }
                    resets_position = None;
                    continue;
                }
            };
            for (key, entries) in xread_streams(reply) {
                if key == wake {
                    if let Some(last) = parse_entries_ids(&Value::Array(entries)).pop() {
                        wake_position = last;
                    }
                    continue;
                }
                if key == RESETS_KEY {
                    for (id, fields) in raw_entries(&entries) {
                        resets_position = Some(id);
                        if let (Some(room), Some(epoch)) = (fields.get("r"), fields.get("e")) {
                            if !deliver(Delivery::Reset { room: room.clone(), epoch: epoch.clone() }) {
                                return;
                            }
                        }
                    }
                    continue;
                }
                let Some(room) = key.strip_prefix("chat:log:") else { continue };
                let Some(followed) = rooms.get_mut(room) else { continue };
                let ready = followed.take(parse_entries(room, &Value::Array(entries)));
                if !ready.is_empty() && !deliver(Delivery::Entries(room.to_string(), ready)) {
                    return;
                }
            }
        }
    })
}

/// After a reconnection, perhaps to a new primary: a followed room whose
/// primary has acknowledged fewer messages than this replica delivered has
/// lost acknowledged messages (a failover promoted a replica that never had
/// them, as after a partition), and its numbering will give their numbers
/// to other messages. Its epoch then changes (once, whichever replica sees
/// it first), so that every member is cut off and joins afresh instead of
/// taking a reused number for one it saw; and this reader goes on from the
/// primary's position. Answers the rooms whose epoch is no longer the one
/// the hub loaded, with the primary's: the hub must hear of those itself
/// (this reader reads `chat:resets` only from its newest entry on).
fn recheck(link: &mut Link, rooms: &mut HashMap<String, Followed>) -> Result<Vec<(String, String)>, String> {
    let mut resets = Vec::new();
    for (room, followed) in rooms.iter_mut() {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RECHECK).arg(4).arg(committed_key(room)).arg(log_key(room)).arg(epoch_key(room)).arg(RESETS_KEY);
        cmd.arg(followed.delivered.0).arg(&followed.epoch).arg(new_epoch()).arg(room);
        let (committed, last_id, epoch): (u64, String, String) = link.run(|conn| cmd.query(conn))?;
        if epoch != followed.epoch {
            resets.push((room.clone(), epoch.clone()));
        }
        if committed >= followed.delivered.0 {
            continue;
        }
        warn!(
            "chat: room {room:?}: the primary has acknowledged up to message {committed}, this replica delivered up to {}: acknowledged messages were lost; the room's epoch is now {epoch}",
            followed.delivered.0,
        );
        let position = parse_id(&last_id).unwrap_or((committed, 0));
        followed.reposition(position, committed);
        followed.epoch = epoch;
    }
    Ok(resets)
}

/// The ids of an XRANGE-style array.
fn parse_entries_ids(value: &Value) -> Vec<String> {
    let Value::Array(items) = value else { return Vec::new() };
    items
        .iter()
        .filter_map(|e| match e {
            Value::Array(pair) => pair.first().and_then(text),
            _ => None,
        })
        .collect()
}

/// The ids and fields of XRANGE-style entries.
fn raw_entries(items: &[Value]) -> Vec<(String, HashMap<String, String>)> {
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(pair) = item else { return None };
            let [id, Value::Array(fields)] = &pair[..] else { return None };
            let fields = fields.chunks(2).filter_map(|kv| Some((text(kv.first()?)?, text(kv.get(1)?)?))).collect();
            Some((text(id)?, fields))
        })
        .collect()
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

    fn message(seq: u64) -> (StreamId, Entry) {
        ((seq, 0), Entry::Message(Message { seq, ..Default::default() }))
    }

    #[test]
    fn entries_after_an_unacknowledged_message_are_held_back_until_a_mark_covers_it() {
        let joined = |k| ((2, k), Entry::Joined { user: "bob".into(), time_unix_ms: 0 });
        let mut room = Followed::new((1, 0), 1, "e".to_string());
        let ready = room.take(vec![joined(1), message(2), joined(2), message(3)]);
        assert_eq!(ready, vec![joined(1)], "the join before message 2 goes at once");
        assert_eq!(room.delivered, (2, 1));
        assert!(room.take(vec![((3, 1), Entry::Committed(2))]).len() == 2, "message 2 and the join after it");
        assert_eq!(room.read, (3, 1));
        room.rewind();
        assert_eq!(room.read, (2, 2), "message 3 is read again from a new primary");
        assert!(room.held.is_empty());
        let ready = room.take(vec![message(3), ((3, 0), Entry::Committed(3))]);
        assert_eq!(ready, vec![message(3)]);
        assert_eq!(room.delivered, (3, 0));
    }
}
