//! The etcd broker: rooms across replicas through an etcd cluster, spoken
//! to through grpcio itself (`protos/etcd/etcdserverpb.proto`).
//!
//! # Why etcd
//! etcd commits a write once a quorum of its members has it in its log on
//! disk (Raft, fsync before acknowledging), and reads and transactions are
//! linearizable. A Say is acknowledged only after its transaction
//! committed, so under any single fault (a member killed, paused, or cut
//! off, one way or both) an acknowledged message stays, once, under the
//! number it was acknowledged with. A server whose etcd member is on the
//! minority side of a partition cannot commit: its Says fail (UNAVAILABLE),
//! never acknowledged.
//!
//! # Keys
//! A room's name is hex-encoded (`<room>` below), so that no room's keys are
//! a prefix of another's.
//! | key | what |
//! |---|---|
//! | `chat/r/<room>/e` | the room's epoch, minted by the first load of the room |
//! | `chat/r/<room>/l` | the room's last sequence number |
//! | `chat/r/<room>/m/<seq>` | message `seq` (20 digits, so keys sort by number): a `chat.v1.Message`; the last `cap` are kept |
//! | `chat/r/<room>/p` | the room's last join or leave: a `chat.v1.ServerEvent`; every put is an event to watchers |
//! | `chat/c/<room>/<user>/<client_id>` | the sequence number of the message said with that client id, for one to two hours (a lease) |
//! | `chat/members/<replica>` | this replica's rooms and member counts (a `chat.v1.RoomsResponse`), on a lease that ends with the replica |
//!
//! # Numbering
//! One transaction per batch of a room's messages compares the room's epoch
//! and last sequence number with what the writer believes, checks that no
//! client id of the batch was stored, and then puts the messages, the new
//! last number, the client ids and trims the oldest message; when a
//! comparison fails it reads what changed instead, and the writer tries
//! again. Two replicas can therefore never give one number to two messages,
//! and numbers stay gap-free. Every message carries a client id (the
//! client's, else one the writer makes), so a transaction whose outcome is
//! unknown (a timeout) is simply tried again: its client id finds the copy
//! if it was stored.
//!
//! # Reading
//! The reader watches every followed room's keys from the revision after
//! the one it last delivered, on one Watch stream that asks etcd to end it
//! when its member loses the leader (`hasleader`), and moves to the next
//! endpoint on any failure: a member cut off from the quorum stops
//! delivering rather than deliver a history the quorum may not have.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::pin::pin;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use futures::executor::block_on;
use futures::future::{self, Either};
use futures::prelude::*;
use futures_timer::Delay;
use grpcio::{
    CallOption, ChannelBuilder, ClientDuplexReceiver, ClientDuplexSender, EnvBuilder, Environment, Metadata,
    MetadataBuilder, RpcStatusCode, WriteFlags,
};
use log::{debug, info, warn};
use protobuf::{EnumOrUnknown, Message as _};

use super::types::{
    new_epoch, rand_suffix, run_batch, BrokerConfig, Delivery, Entry, Follow, Job, Loaded, Queues, Said, StreamId,
    Writes,
};
use crate::chat::mention;
use crate::proto::chat::{server_event, Message, Presence, RoomInfo, RoomsResponse, ServerEvent};
use crate::proto::etcdserverpb::watch_request::Request_union as Union;
use crate::proto::etcdserverpb::{
    compare, event, range_request, request_op, response_op, Compare, DeleteRangeRequest, KeyValue, LeaseGrantRequest,
    LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest, RangeRequest, RangeResponse, RequestOp, ResponseOp,
    TxnRequest, TxnResponse, WatchCancelRequest, WatchCreateRequest, WatchRequest, WatchResponse,
};
use crate::proto::etcdserverpb_grpc::{KVClient, LeaseClient, WatchClient};

/// How long a client id is remembered at least: its lease lives one to two of these.
const REPLAY_WINDOW: Duration = Duration::from_secs(3600);
/// A replica's member counts outlive it by at most this much.
const MEMBERS_TTL: Duration = Duration::from_secs(30);
/// Messages numbered in one transaction (etcd allows 128 operations in one).
const TXN_MESSAGES: usize = 32;
/// Operations of one transaction at most, notifications included.
const TXN_OPS: usize = 120;
/// Attempts at one batch while other replicas take the numbers first.
const CONTENDED_ATTEMPTS: usize = 50;
/// Waits between attempts to reach a cluster that answers nothing.
const RECONNECT_DELAY: Duration = Duration::from_millis(200);
/// A read or an administrative call slower than this moves to the next endpoint.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether `url` names an etcd cluster.
pub(super) fn is_etcd_url(url: &str) -> bool {
    url.starts_with("etcd://")
}

/// `etcd://HOST:PORT[,HOST:PORT...]`: the members' client endpoints, tried
/// in this order (put the nearest first).
pub(super) fn parse_endpoints(url: &str) -> Result<Vec<String>, String> {
    let usage = || format!("invalid --broker {url:?}: expected etcd://HOST:PORT[,HOST:PORT...]");
    let rest = url.strip_prefix("etcd://").ok_or_else(usage)?.trim_end_matches('/');
    let endpoints: Vec<String> = rest.split(',').map(str::trim).map(str::to_string).collect();
    for endpoint in &endpoints {
        let port = endpoint.rsplit_once(':').map(|(host, port)| (host, port.parse::<u16>()));
        match port {
            Some((host, Ok(port))) if !host.is_empty() && port > 0 && !host.contains('/') => {}
            _ => return Err(format!("{}: {endpoint:?} is not HOST:PORT", usage())),
        }
    }
    Ok(endpoints)
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn room_prefix(room: &str) -> String {
    format!("chat/r/{}/", hex(room))
}

fn epoch_key(room: &str) -> Vec<u8> {
    format!("{}e", room_prefix(room)).into_bytes()
}

fn last_key(room: &str) -> Vec<u8> {
    format!("{}l", room_prefix(room)).into_bytes()
}

fn presence_key(room: &str) -> Vec<u8> {
    format!("{}p", room_prefix(room)).into_bytes()
}

fn message_key(room: &str, seq: u64) -> Vec<u8> {
    format!("{}m/{seq:020}", room_prefix(room)).into_bytes()
}

fn client_id_key(room: &str, user: &str, client_id: &str) -> Vec<u8> {
    format!("chat/c/{}/{}/{client_id}", hex(room), hex(user)).into_bytes()
}

fn members_key(replica: &str) -> Vec<u8> {
    format!("chat/members/{replica}").into_bytes()
}

/// The end of the range of every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn put(key: Vec<u8>, value: Vec<u8>, lease: i64) -> RequestOp {
    let put = PutRequest { key, value, lease, ..Default::default() };
    RequestOp { request: Some(request_op::Request::RequestPut(put)), ..Default::default() }
}

fn get(key: Vec<u8>) -> RequestOp {
    let range = RangeRequest { key, ..Default::default() };
    RequestOp { request: Some(request_op::Request::RequestRange(range)), ..Default::default() }
}

/// The newest `limit` keys of `[from, to)`, newest first.
fn newest(from: Vec<u8>, to: Vec<u8>, limit: usize) -> RangeRequest {
    RangeRequest {
        key: from,
        range_end: to,
        limit: limit as i64,
        sort_order: EnumOrUnknown::new(range_request::SortOrder::DESCEND),
        sort_target: EnumOrUnknown::new(range_request::SortTarget::KEY),
        ..Default::default()
    }
}

fn ranged(range: RangeRequest) -> RequestOp {
    RequestOp { request: Some(request_op::Request::RequestRange(range)), ..Default::default() }
}

/// Deletes the messages of `room` before the last `cap` of `top`, if any.
fn trim(room: &str, top: u64, cap: u64) -> Option<RequestOp> {
    let trim = DeleteRangeRequest {
        key: message_key(room, 0),
        range_end: message_key(room, top.checked_sub(cap).filter(|&old| old > 0)? + 1),
        ..Default::default()
    };
    Some(RequestOp { request: Some(request_op::Request::RequestDeleteRange(trim)), ..Default::default() })
}

fn compare_value(key: Vec<u8>, value: Vec<u8>) -> Compare {
    Compare {
        result: EnumOrUnknown::new(compare::CompareResult::EQUAL),
        target: EnumOrUnknown::new(compare::CompareTarget::VALUE),
        key,
        target_union: Some(compare::Target_union::Value(value)),
        ..Default::default()
    }
}

/// True when `key` does not exist.
fn compare_absent(key: Vec<u8>) -> Compare {
    Compare {
        result: EnumOrUnknown::new(compare::CompareResult::EQUAL),
        target: EnumOrUnknown::new(compare::CompareTarget::CREATE),
        key,
        target_union: Some(compare::Target_union::CreateRevision(0)),
        ..Default::default()
    }
}

/// The key-values of a transaction's `i`th answer, if it was a read.
fn kvs_of(responses: &[ResponseOp], i: usize) -> &[KeyValue] {
    match responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(response_op::Response::ResponseRange(range)) => &range.kvs,
        _ => &[],
    }
}

fn number(kv: Option<&KeyValue>) -> u64 {
    kv.and_then(|kv| std::str::from_utf8(&kv.value).ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn message_of(room: &str, kv: &KeyValue) -> Option<Message> {
    let mut message = Message::parse_from_bytes(&kv.value).ok()?;
    message.room = room.to_string();
    Some(message)
}

/// The endpoints, one channel each, and the one in use.
struct Cluster {
    env: Arc<Environment>,
    endpoints: Vec<String>,
    channels: Vec<Option<grpcio::Channel>>,
    current: usize,
}

impl Cluster {
    fn new(env: Arc<Environment>, endpoints: Vec<String>) -> Cluster {
        let channels = endpoints.iter().map(|_| None).collect();
        Cluster { env, endpoints, channels, current: 0 }
    }

    fn channel(&mut self) -> grpcio::Channel {
        let (env, endpoint) = (&self.env, &self.endpoints[self.current]);
        self.channels[self.current]
            .get_or_insert_with(|| {
                ChannelBuilder::new(env.clone())
                    // etcd refuses pings more often than every 5 s; a dead
                    // peer is noticed within 8 s even with no call running.
                    .keepalive_time(Duration::from_secs(5))
                    .keepalive_timeout(Duration::from_secs(3))
                    .keepalive_permit_without_calls(true)
                    .initial_reconnect_backoff(Duration::from_millis(100))
                    .max_reconnect_backoff(Duration::from_secs(1))
                    .max_receive_message_len(64 << 20)
                    // A connection attempt to a member cut off gives up after
                    // 1 s instead of the core's 20 s, so the next one is tried.
                    .raw_cfg_int(CString::new("grpc.min_reconnect_backoff_ms").expect("no NUL in it"), 1000)
                    .connect(endpoint)
            })
            .clone()
    }

    fn kv(&mut self) -> KVClient {
        KVClient::new(self.channel())
    }

    fn endpoint(&self) -> &str {
        &self.endpoints[self.current]
    }

    /// After a failure: the next endpoint, on a fresh channel.
    fn rotate(&mut self) {
        self.channels[self.current] = None;
        self.current = (self.current + 1) % self.endpoints.len();
    }
}

/// Calls fail at once on a member that has lost its leader, instead of
/// waiting out their deadline: the next endpoint may have one.
fn options(timeout: Duration) -> CallOption {
    CallOption::default().timeout(timeout).headers(require_leader())
}

fn require_leader() -> Metadata {
    let mut builder = MetadataBuilder::new();
    // Both are constant, valid ASCII: adding them cannot fail.
    builder.add_str("hasleader", "true").expect("a valid metadata key and value");
    builder.build()
}

/// Whether another endpoint might do better than this one.
fn worth_another_endpoint(e: &grpcio::Error) -> bool {
    match e {
        grpcio::Error::RpcFailure(s) => !matches!(
            s.code(),
            RpcStatusCode::INVALID_ARGUMENT | RpcStatusCode::PERMISSION_DENIED | RpcStatusCode::UNAUTHENTICATED
        ),
        _ => true,
    }
}

fn describe(e: &grpcio::Error) -> String {
    match e {
        grpcio::Error::RpcFailure(s) => format!("{:?}: {}", s.code(), s.message()),
        e => e.to_string(),
    }
}

/// Starts the writer (whose handle this answers) and the reader, once a
/// member answered a read.
pub(super) fn start(
    config: &BrokerConfig,
    queues: Queues,
    deliver: impl FnMut(Delivery) -> bool + Send + 'static,
) -> Result<thread::JoinHandle<()>, String> {
    let endpoints = parse_endpoints(&config.url)?;
    let env = Arc::new(EnvBuilder::new().cq_count(1).name_prefix("chat-etcd").build());
    let mut writer = Writer {
        cluster: Cluster::new(env.clone(), endpoints.clone()),
        replica: format!("{:x}-{:x}-{}", crate::wire::now_unix_ms(), std::process::id(), rand_suffix()),
        config: config.clone(),
        last: HashMap::new(),
        client_ids: None,
        lease: None,
        members: BTreeMap::new(),
        made_ids: 0,
    };
    writer
        .read(|kv| kv.range_opt(&RangeRequest { key: b"chat/".to_vec(), ..Default::default() }, options(CALL_TIMEOUT)))
        .map_err(|e| format!("cannot reach the broker at {}: {e}", config.url))?;
    info!(
        "chat: broker {} (etcd), replica {}; a message is acknowledged once a quorum has it",
        config.url, writer.replica
    );
    let reader = Reader {
        cluster: Cluster::new(env, endpoints),
        rooms: HashMap::new(),
        by_id: HashMap::new(),
        next_id: 1,
        unconfirmed: None,
    };
    let follows = queues.follows;
    thread::Builder::new()
        .name("chat-etcd-reader".to_string())
        .spawn(move || block_on(reader.run(follows, deliver)))
        .map_err(|e| format!("cannot start the broker reader: {e}"))?;
    let jobs = queues.jobs;
    thread::Builder::new()
        .name("chat-etcd".to_string())
        .spawn(move || writer.run(jobs))
        .map_err(|e| format!("cannot start the broker writer: {e}"))
}

/// The writer thread's state.
struct Writer {
    cluster: Cluster,
    replica: String,
    config: BrokerConfig,
    /// The last sequence number of each room, as last seen.
    last: HashMap<String, u64>,
    /// The lease client ids are put with, and when it was granted.
    client_ids: Option<(i64, Instant)>,
    /// This replica's lease (its member counts), kept alive while it runs.
    lease: Option<i64>,
    /// Distinct members here, per room.
    members: BTreeMap<String, u32>,
    /// Client ids made for messages that came without one.
    made_ids: u64,
}

/// A message of a batch, and the key that stores it once.
struct Pending {
    said: Said,
    client_id: Vec<u8>,
}

impl Writer {
    fn run(mut self, jobs: async_channel::Receiver<Job>) {
        let keepalive = MEMBERS_TTL / 3;
        let mut kept = Instant::now();
        loop {
            let wait = keepalive.saturating_sub(kept.elapsed());
            let first = block_on(async {
                match future::select(pin!(jobs.recv()), Delay::new(wait)).await {
                    Either::Left((job, _)) => Some(job),
                    Either::Right(_) => None,
                }
            });
            if kept.elapsed() >= keepalive {
                self.keep_alive();
                kept = Instant::now();
            }
            let Some(first) = first else { continue };
            let Ok(first) = first else { return };
            if !run_batch(&mut self, &jobs, first) {
                return;
            }
        }
    }

    /// Runs a call on the current endpoint, moving on to the next ones
    /// while it fails in a way another member might not: for reads and
    /// for writes that are safe to repeat.
    fn read<T>(&mut self, mut call: impl FnMut(&KVClient) -> grpcio::Result<T>) -> Result<T, String> {
        let mut last = String::new();
        for _ in 0..self.cluster.endpoints.len() {
            let kv = self.cluster.kv();
            match call(&kv) {
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    last = format!("{}: {}", self.cluster.endpoint(), describe(&e));
                    if !worth_another_endpoint(&e) {
                        break;
                    }
                    debug!("chat: etcd {last}; trying the next endpoint");
                    self.cluster.rotate();
                }
            }
        }
        Err(format!("etcd: {last}"))
    }

    fn txn(&mut self, txn: &TxnRequest, timeout: Duration) -> Result<TxnResponse, String> {
        self.read(|kv| kv.txn_opt(txn, options(timeout)))
    }

    /// The lease client ids are put with: granted anew every replay window,
    /// for two, so that each id lives one to two windows.
    fn client_id_lease(&mut self) -> Result<i64, String> {
        if let Some((id, granted)) = self.client_ids {
            if granted.elapsed() < REPLAY_WINDOW {
                return Ok(id);
            }
        }
        let ttl = 2 * REPLAY_WINDOW.as_secs() as i64;
        let lease = self.grant(ttl)?;
        self.client_ids = Some((lease, Instant::now()));
        Ok(lease)
    }

    fn grant(&mut self, ttl: i64) -> Result<i64, String> {
        let request = LeaseGrantRequest { TTL: ttl, ..Default::default() };
        let mut last = String::new();
        for _ in 0..self.cluster.endpoints.len() {
            let lease = LeaseClient::new(self.cluster.channel());
            match lease.lease_grant_opt(&request, options(CALL_TIMEOUT)) {
                Ok(granted) if granted.error.is_empty() => return Ok(granted.ID),
                Ok(granted) => return Err(format!("etcd refused a lease: {}", granted.error)),
                Err(e) => {
                    last = describe(&e);
                    self.cluster.rotate();
                }
            }
        }
        Err(format!("etcd: cannot grant a lease: {last}"))
    }

    fn say_in_room(&mut self, room: &str, epoch: &str, mut pending: Vec<Pending>) {
        let mut contended = 0;
        while !pending.is_empty() {
            // Within one transaction each client id once: a resend of a
            // message of this batch waits for the next round, where it
            // finds the first copy stored.
            let mut batch: Vec<Pending> = Vec::new();
            let mut later: Vec<Pending> = Vec::new();
            let mut ops = 3;
            for p in pending {
                // A message's puts, and at most a note, a last number and a trim per mention.
                let cost = 2 + 3 * p.said.mentions.len();
                if batch.len() < TXN_MESSAGES
                    && ops + cost <= TXN_OPS
                    && !batch.iter().any(|b| b.client_id == p.client_id)
                {
                    ops += cost;
                    batch.push(p);
                } else {
                    later.push(p);
                }
            }
            match self.store(room, epoch, &batch) {
                Ok(Stored::All(first)) => {
                    for (i, p) in batch.into_iter().enumerate() {
                        (p.said.done)(Ok(first + i as u64));
                    }
                }
                Ok(Stored::Conflict { reset, seen }) => {
                    if reset {
                        for p in batch.into_iter().chain(later) {
                            (p.said.done)(Err(format!("the history of room {room:?} was reset; join it afresh")));
                        }
                        return;
                    }
                    let mut again = Vec::new();
                    for (p, seen) in batch.into_iter().zip(seen) {
                        match seen {
                            Some(seq) => (p.said.done)(Ok(seq)),
                            None => again.push(p),
                        }
                    }
                    contended += 1;
                    if contended > CONTENDED_ATTEMPTS {
                        for p in again.into_iter().chain(later) {
                            (p.said.done)(Err(format!("room {room:?} is too busy: the message was not stored")));
                        }
                        return;
                    }
                    again.extend(later);
                    later = again;
                }
                Err(why) => {
                    warn!("chat: {} message(s) of {room:?} not stored: {why}", batch.len());
                    for p in batch.into_iter().chain(later) {
                        (p.said.done)(Err(format!("the message was not acknowledged: {why}; send it again")));
                    }
                    return;
                }
            }
            pending = later;
        }
    }

    /// One transaction: the batch numbered after the room's last message,
    /// if nothing changed since the writer last looked.
    fn store(&mut self, room: &str, epoch: &str, batch: &[Pending]) -> Result<Stored, String> {
        let lease = self.client_id_lease()?;
        let last = self.last.get(room).copied().unwrap_or(0);
        let top = last + batch.len() as u64;
        let mut compare = vec![compare_value(epoch_key(room), epoch.as_bytes().to_vec())];
        compare.push(if last == 0 {
            compare_absent(last_key(room))
        } else {
            compare_value(last_key(room), last.to_string().into_bytes())
        });
        let mut success = Vec::with_capacity(2 * batch.len() + 2);
        let mut failure = vec![get(epoch_key(room)), get(last_key(room))];
        // The mentioned users' inboxes: (name, last number as seen, last number after this batch).
        let mut inboxes: Vec<(String, u64, u64)> = Vec::new();
        for (i, p) in batch.iter().enumerate() {
            let seq = last + 1 + i as u64;
            let mut message = p.said.message.clone();
            message.seq = seq;
            for mentioned in &p.said.mentions {
                let mut note = mention::notification(&message, mentioned);
                let at = match inboxes.iter().position(|(name, _, _)| *name == note.room) {
                    Some(at) => at,
                    None => {
                        let seen = self.last.get(&note.room).copied().unwrap_or(0);
                        inboxes.push((note.room.clone(), seen, seen));
                        inboxes.len() - 1
                    }
                };
                inboxes[at].2 += 1;
                note.seq = inboxes[at].2;
                note.room.clear();
                let bytes = note.write_to_bytes().map_err(|e| format!("cannot encode a notification: {e}"))?;
                success.push(put(message_key(&inboxes[at].0, note.seq), bytes, 0));
            }
            message.room.clear();
            let bytes = message.write_to_bytes().map_err(|e| format!("cannot encode a message: {e}"))?;
            compare.push(compare_absent(p.client_id.clone()));
            success.push(put(message_key(room, seq), bytes, 0));
            success.push(put(p.client_id.clone(), seq.to_string().into_bytes(), lease));
            failure.push(get(p.client_id.clone()));
        }
        success.push(put(last_key(room), top.to_string().into_bytes(), 0));
        success.extend(trim(room, top, self.config.cap.max(1) as u64));
        for (inbox, seen, top) in &inboxes {
            compare.push(if *seen == 0 {
                compare_absent(last_key(inbox))
            } else {
                compare_value(last_key(inbox), seen.to_string().into_bytes())
            });
            success.push(put(last_key(inbox), top.to_string().into_bytes(), 0));
            success.extend(trim(inbox, *top, mention::KEPT as u64));
            failure.push(get(last_key(inbox)));
        }
        let txn = TxnRequest { compare, success, failure, ..Default::default() };
        let answer = match self.txn(&txn, self.config.ack_timeout) {
            Ok(answer) => answer,
            Err(e) if e.contains("lease not found") => {
                // The client ids' lease ran out while the writer could not reach etcd.
                self.client_ids = None;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if answer.succeeded {
            self.last.insert(room.to_string(), top);
            for (inbox, _, top) in inboxes {
                self.last.insert(inbox, top);
            }
            return Ok(Stored::All(last + 1));
        }
        for (j, (inbox, _, _)) in inboxes.into_iter().enumerate() {
            self.last.insert(inbox, number(kvs_of(&answer.responses, 2 + batch.len() + j).first()));
        }
        let now = kvs_of(&answer.responses, 0).first().map(|kv| kv.value.clone());
        let reset = now.as_deref() != Some(epoch.as_bytes());
        self.last.insert(room.to_string(), number(kvs_of(&answer.responses, 1).first()));
        let seen =
            (0..batch.len()).map(|i| kvs_of(&answer.responses, 2 + i).first().map(|kv| number(Some(kv)))).collect();
        Ok(Stored::Conflict { reset, seen })
    }

    fn members_value(&self) -> Result<Vec<u8>, String> {
        let rooms = self
            .members
            .iter()
            .map(|(room, &members)| RoomInfo { room: room.clone(), members, ..Default::default() })
            .collect();
        RoomsResponse { rooms, ..Default::default() }.write_to_bytes().map_err(|e| format!("cannot encode rooms: {e}"))
    }

    fn replica_lease(&mut self) -> Result<i64, String> {
        if let Some(lease) = self.lease {
            return Ok(lease);
        }
        let lease = self.grant(MEMBERS_TTL.as_secs() as i64)?;
        self.lease = Some(lease);
        Ok(lease)
    }

    /// Keeps this replica's lease alive; when it had expired (the writer
    /// could not reach etcd for too long), puts the member counts again
    /// on a new one.
    fn keep_alive(&mut self) {
        let Some(lease) = self.lease else { return };
        let alive = LeaseClient::new(self.cluster.channel())
            .lease_keep_alive_opt(options(CALL_TIMEOUT))
            .map_err(|e| describe(&e))
            .and_then(|(mut sink, mut answers)| {
                block_on(async {
                    let request = LeaseKeepAliveRequest { ID: lease, ..Default::default() };
                    sink.send((request, WriteFlags::default())).await.map_err(|e| describe(&e))?;
                    let answer = answers.next().await;
                    let _ = sink.close().await;
                    match answer {
                        Some(Ok(answer)) => Ok(answer.TTL > 0),
                        Some(Err(e)) => Err(describe(&e)),
                        None => Err("the keep-alive stream ended".to_string()),
                    }
                })
            });
        match alive {
            Ok(true) => {}
            Ok(false) => {
                info!("chat: this replica's etcd lease expired; putting its member counts again");
                self.lease = None;
                let put_again = self.replica_lease().and_then(|lease| {
                    let value = self.members_value()?;
                    let txn = TxnRequest {
                        success: vec![put(members_key(&self.replica), value, lease)],
                        ..Default::default()
                    };
                    self.txn(&txn, CALL_TIMEOUT).map(drop)
                });
                if let Err(e) = put_again {
                    warn!("chat: cannot put this replica's member counts again: {e}");
                }
            }
            Err(e) => {
                debug!("chat: etcd keep-alive on {}: {e}", self.cluster.endpoint());
                self.cluster.rotate();
            }
        }
    }
}

impl Writes for Writer {
    /// Stores a batch of messages, room by room; answers each sender once
    /// its message is committed (or why it is not).
    fn say(&mut self, says: Vec<Said>) {
        if says.is_empty() {
            return;
        }
        let mut rooms: Vec<(String, String, Vec<Pending>)> = Vec::new();
        for said in says {
            let client_id = if said.message.client_id.is_empty() {
                self.made_ids += 1;
                format!("~{}-{}", self.replica, self.made_ids)
            } else {
                said.message.client_id.clone()
            };
            let key = client_id_key(&said.message.room, &said.message.user, &client_id);
            let pending = Pending { said, client_id: key };
            let (room, epoch) = (&pending.said.message.room, &pending.said.epoch);
            match rooms.iter_mut().find(|(r, e, _)| r == room && e == epoch) {
                Some((_, _, batch)) => batch.push(pending),
                None => rooms.push((room.clone(), epoch.clone(), vec![pending])),
            }
        }
        for (room, epoch, pending) in rooms {
            self.say_in_room(&room, &epoch, pending);
        }
    }

    fn presence(&mut self, room: &str, user: &str, joined: bool, members: usize) -> Result<(), String> {
        if members == 0 {
            self.members.remove(room);
        } else {
            self.members.insert(room.to_string(), members as u32);
        }
        let presence = Presence {
            room: String::new(),
            user: user.to_string(),
            time_unix_ms: crate::wire::now_unix_ms(),
            ..Default::default()
        };
        let event = if joined { server_event::Event::Joined(presence) } else { server_event::Event::Left(presence) };
        let event = ServerEvent { event: Some(event), ..Default::default() };
        let bytes = event.write_to_bytes().map_err(|e| format!("cannot encode a presence: {e}"))?;
        let lease = self.replica_lease()?;
        let success =
            vec![put(presence_key(room), bytes, 0), put(members_key(&self.replica), self.members_value()?, lease)];
        let txn = TxnRequest { success, ..Default::default() };
        self.txn(&txn, CALL_TIMEOUT).map(drop)
    }

    /// The room's epoch (minted if it has none), last sequence number and
    /// last `window` messages, all at one revision: where the reader starts.
    fn load(&mut self, room: &str, window: usize) -> Result<Loaded, String> {
        let messages = || {
            let prefix = format!("{}m/", room_prefix(room)).into_bytes();
            ranged(newest(prefix.clone(), prefix_end(&prefix), window.max(1)))
        };
        let candidate = new_epoch();
        let txn = TxnRequest {
            compare: vec![compare_absent(epoch_key(room))],
            success: vec![put(epoch_key(room), candidate.clone().into_bytes(), 0), get(last_key(room)), messages()],
            failure: vec![get(epoch_key(room)), get(last_key(room)), messages()],
            ..Default::default()
        };
        let answer = self.txn(&txn, CALL_TIMEOUT)?;
        let epoch = if answer.succeeded {
            candidate
        } else {
            let kv = kvs_of(&answer.responses, 0).first();
            kv.and_then(|kv| String::from_utf8(kv.value.clone()).ok()).unwrap_or_default()
        };
        let last_seq = number(kvs_of(&answer.responses, 1).first());
        self.last.insert(room.to_string(), last_seq);
        let mut messages: Vec<Message> =
            kvs_of(&answer.responses, 2).iter().filter_map(|kv| message_of(room, kv)).collect();
        messages.reverse();
        let revision = answer.header.as_ref().map_or(0, |h| h.revision).max(0) as u64;
        Ok(Loaded { last_seq, position: (revision, u64::MAX), messages, epoch })
    }

    fn range(&mut self, room: &str, after: u64, upto: u64) -> Result<Vec<Message>, String> {
        if after >= upto {
            return Ok(Vec::new());
        }
        let request = RangeRequest {
            key: message_key(room, after + 1),
            range_end: message_key(room, upto + 1),
            ..Default::default()
        };
        let answer = self.read(|kv| kv.range_opt(&request, options(CALL_TIMEOUT)))?;
        Ok(answer.kvs.iter().filter_map(|kv| message_of(room, kv)).collect())
    }

    fn history(&mut self, room: &str, limit: usize, before_seq: Option<u64>) -> Result<Vec<Message>, String> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let prefix = format!("{}m/", room_prefix(room)).into_bytes();
        let end = before_seq.map_or_else(|| prefix_end(&prefix), |before| message_key(room, before));
        let request = newest(prefix, end, limit);
        let answer: RangeResponse = self.read(|kv| kv.range_opt(&request, options(CALL_TIMEOUT)))?;
        let mut messages: Vec<Message> = answer.kvs.iter().filter_map(|kv| message_of(room, kv)).collect();
        messages.reverse();
        Ok(messages)
    }

    /// Every room with members on a live replica, with the sum of its
    /// replicas' member counts.
    fn rooms(&mut self) -> Result<Vec<RoomInfo>, String> {
        let prefix = b"chat/members/".to_vec();
        let request = RangeRequest { range_end: prefix_end(&prefix), key: prefix, ..Default::default() };
        let answer = self.read(|kv| kv.range_opt(&request, options(CALL_TIMEOUT)))?;
        let mut totals: BTreeMap<String, u32> = BTreeMap::new();
        for kv in &answer.kvs {
            let Ok(rooms) = RoomsResponse::parse_from_bytes(&kv.value) else { continue };
            for info in rooms.rooms {
                *totals.entry(info.room).or_default() += info.members;
            }
        }
        Ok(totals.into_iter().map(|(room, members)| RoomInfo { room, members, ..Default::default() }).collect())
    }

    /// Ends this replica's lease, so its member counts go at once.
    fn stop(&mut self) {
        if let Some(lease) = self.lease.take() {
            let request = LeaseRevokeRequest { ID: lease, ..Default::default() };
            let revoked = LeaseClient::new(self.cluster.channel()).lease_revoke_opt(&request, options(CALL_TIMEOUT));
            if let Err(e) = revoked {
                debug!("chat: broker shutdown: {}", describe(&e));
            }
        }
    }
}

/// What one numbering transaction did.
enum Stored {
    /// Every message stored, numbered from this one.
    All(u64),
    /// Nothing stored: the room was reset (another epoch), or its last
    /// number moved; per message, the number of a copy already stored.
    Conflict { reset: bool, seen: Vec<Option<u64>> },
}

/// A room the reader follows.
struct Watched {
    /// The id of its watcher on the current stream.
    id: i64,
    /// The revision its watch starts from after a reconnection: the one
    /// after the last delivered.
    next: i64,
    /// The last message delivered.
    last_seq: u64,
}

/// What woke the reader.
enum Woken {
    Follow(Option<Follow>),
    Answer(Option<grpcio::Result<WatchResponse>>),
    Tick,
}

/// A watch etcd has not confirmed within this is on a member that cannot
/// answer (cut off, or still connecting): the reader tries the next one.
const CREATE_TIMEOUT: Duration = Duration::from_secs(3);

/// The reader thread's state.
struct Reader {
    cluster: Cluster,
    rooms: HashMap<String, Watched>,
    by_id: HashMap<i64, String>,
    next_id: i64,
    /// Since when a watch asked for is not confirmed.
    unconfirmed: Option<Instant>,
}

impl Reader {
    /// Follows the rooms the hub tells it to until [`Follow::Quit`], the
    /// channel closes, or `deliver` answers false.
    async fn run(mut self, follows: async_channel::Receiver<Follow>, mut deliver: impl FnMut(Delivery) -> bool) {
        let mut failing = false;
        loop {
            if failing {
                Delay::new(RECONNECT_DELAY).await;
            }
            let watch = WatchClient::new(self.cluster.channel());
            let (mut sink, mut answers) = match watch.watch_opt(CallOption::default().headers(require_leader())) {
                Ok(stream) => stream,
                Err(e) => {
                    warn!("chat: etcd reader: {}: {}", self.cluster.endpoint(), describe(&e));
                    self.cluster.rotate();
                    failing = true;
                    continue;
                }
            };
            match self.serve(&follows, &mut deliver, &mut sink, &mut answers).await {
                Ok(()) => return,
                Err(why) => {
                    if !failing {
                        warn!("chat: etcd reader: {}: {why}; trying the next endpoint", self.cluster.endpoint());
                    }
                    failing = true;
                    self.cluster.rotate();
                }
            }
        }
    }

    /// One Watch stream: (re)creates every room's watcher, then follows.
    /// `Ok` means the reader must end; `Err`, that the stream failed.
    async fn serve(
        &mut self,
        follows: &async_channel::Receiver<Follow>,
        deliver: &mut impl FnMut(Delivery) -> bool,
        sink: &mut ClientDuplexSender<WatchRequest>,
        answers: &mut ClientDuplexReceiver<WatchResponse>,
    ) -> Result<(), String> {
        self.by_id.clear();
        self.unconfirmed = None;
        let rooms: Vec<String> = self.rooms.keys().cloned().collect();
        for room in rooms {
            self.create(&room, sink).await?;
        }
        loop {
            let follow = pin!(follows.recv());
            let events = future::select(follow, answers.next());
            let woken = match future::select(events, Delay::new(Duration::from_secs(1))).await {
                Either::Left((Either::Left((follow, _)), _)) => Woken::Follow(follow.ok()),
                Either::Left((Either::Right((answer, _)), _)) => Woken::Answer(answer),
                Either::Right(_) => Woken::Tick,
            };
            match woken {
                Woken::Tick => {
                    if self.unconfirmed.is_some_and(|since| since.elapsed() > CREATE_TIMEOUT) {
                        return Err(format!("no watch confirmed within {CREATE_TIMEOUT:?}"));
                    }
                }
                Woken::Follow(None) | Woken::Follow(Some(Follow::Quit)) => {
                    let _ = sink.close().await;
                    return Ok(());
                }
                Woken::Follow(Some(Follow::Start { room, position, .. })) => {
                    let next = position.0 as i64 + 1;
                    if let Some(old) = self.rooms.insert(room.clone(), Watched { id: 0, next, last_seq: 0 }) {
                        self.by_id.remove(&old.id);
                        self.cancel(old.id, sink).await?;
                    }
                    self.create(&room, sink).await?;
                }
                Woken::Follow(Some(Follow::Stop(room))) => {
                    if let Some(watched) = self.rooms.remove(&room) {
                        self.by_id.remove(&watched.id);
                        self.cancel(watched.id, sink).await?;
                    }
                }
                Woken::Answer(None) => return Err("the watch stream ended".to_string()),
                Woken::Answer(Some(Err(e))) => return Err(describe(&e)),
                Woken::Answer(Some(Ok(answer))) => {
                    if !self.answered(answer, deliver, sink).await? {
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn cancel(&mut self, id: i64, sink: &mut ClientDuplexSender<WatchRequest>) -> Result<(), String> {
        let cancel = WatchCancelRequest { watch_id: id, ..Default::default() };
        let request = WatchRequest { request_union: Some(Union::CancelRequest(cancel)), ..Default::default() };
        sink.send((request, WriteFlags::default())).await.map_err(|e| describe(&e))
    }

    async fn create(&mut self, room: &str, sink: &mut ClientDuplexSender<WatchRequest>) -> Result<(), String> {
        let id = self.next_id;
        self.next_id += 1;
        let Some(watched) = self.rooms.get_mut(room) else { return Ok(()) };
        watched.id = id;
        self.unconfirmed.get_or_insert_with(Instant::now);
        self.by_id.insert(id, room.to_string());
        let prefix = room_prefix(room).into_bytes();
        let create = WatchCreateRequest {
            range_end: prefix_end(&prefix),
            key: prefix,
            start_revision: watched.next,
            watch_id: id,
            ..Default::default()
        };
        let request = WatchRequest { request_union: Some(Union::CreateRequest(create)), ..Default::default() };
        sink.send((request, WriteFlags::default())).await.map_err(|e| describe(&e))
    }

    /// Hands the hub what one watch answer holds. `Ok(false)`: the hub is gone.
    async fn answered(
        &mut self,
        answer: WatchResponse,
        deliver: &mut impl FnMut(Delivery) -> bool,
        sink: &mut ClientDuplexSender<WatchRequest>,
    ) -> Result<bool, String> {
        if answer.created {
            self.unconfirmed = None;
        }
        let Some(room) = self.by_id.get(&answer.watch_id).cloned() else { return Ok(true) };
        if answer.canceled {
            if answer.compact_revision > 0 {
                // Revisions this replica had not read were compacted away:
                // read the messages it missed, then watch from there.
                return self.catch_up(&room, deliver, sink).await;
            }
            return Err(format!("etcd ended the watch of room {room:?}: {}", answer.cancel_reason));
        }
        let mut entries = Vec::new();
        let mut epochs = Vec::new();
        let (mut revision, mut index) = (0, 0u64);
        for event in &answer.events {
            let Some(kv) = event.kv.as_ref() else { continue };
            if kv.mod_revision != revision {
                (revision, index) = (kv.mod_revision, 0);
            } else {
                index += 1;
            }
            let id: StreamId = (revision as u64, index);
            if event.type_.enum_value() != Ok(event::EventType::PUT) {
                continue;
            }
            let prefix_len = room_prefix(&room).len();
            let Some(kind) = kv.key.get(prefix_len..) else { continue };
            match kind {
                b"e" => epochs.push(String::from_utf8_lossy(&kv.value).into_owned()),
                b"p" => {
                    let Ok(presence) = ServerEvent::parse_from_bytes(&kv.value) else { continue };
                    let entry = match presence.event {
                        Some(server_event::Event::Joined(p)) => {
                            Entry::Joined { user: p.user, time_unix_ms: p.time_unix_ms }
                        }
                        Some(server_event::Event::Left(p)) => {
                            Entry::Left { user: p.user, time_unix_ms: p.time_unix_ms }
                        }
                        _ => continue,
                    };
                    entries.push((id, entry));
                }
                kind if kind.starts_with(b"m/") => {
                    let Some(message) = message_of(&room, kv) else {
                        warn!("chat: skipping an unreadable message of room {room:?}");
                        continue;
                    };
                    entries.push((id, Entry::Message(message)));
                }
                _ => {}
            }
        }
        if let Some(watched) = self.rooms.get_mut(&room) {
            if revision > 0 {
                watched.next = revision + 1;
            }
            for (_, entry) in &entries {
                if let Entry::Message(m) = entry {
                    watched.last_seq = m.seq;
                }
            }
        }
        for epoch in epochs {
            if !deliver(Delivery::Reset { room: room.clone(), epoch }) {
                return Ok(false);
            }
        }
        Ok(entries.is_empty() || deliver(Delivery::Entries(room, entries)))
    }

    /// After a compaction took revisions the watch still needed: delivers
    /// the messages after the last one delivered (joins and leaves of that
    /// stretch are not replayed), then watches from the read's revision.
    async fn catch_up(
        &mut self,
        room: &str,
        deliver: &mut impl FnMut(Delivery) -> bool,
        sink: &mut ClientDuplexSender<WatchRequest>,
    ) -> Result<bool, String> {
        let Some(last_seq) = self.rooms.get(room).map(|w| w.last_seq) else { return Ok(true) };
        let prefix = format!("{}m/", room_prefix(room)).into_bytes();
        let request =
            RangeRequest { key: message_key(room, last_seq + 1), range_end: prefix_end(&prefix), ..Default::default() };
        let answer = self
            .cluster
            .kv()
            .range_async_opt(&request, options(CALL_TIMEOUT))
            .map_err(|e| describe(&e))?
            .await
            .map_err(|e| describe(&e))?;
        let revision = answer.header.as_ref().map_or(0, |h| h.revision);
        warn!("chat: the watch of room {room:?} fell behind etcd's compaction; read its messages again at revision {revision}");
        let entries: Vec<(StreamId, Entry)> = answer
            .kvs
            .iter()
            .filter_map(|kv| message_of(room, kv))
            .enumerate()
            .map(|(i, m)| ((revision as u64, i as u64), Entry::Message(m)))
            .collect();
        if let Some(watched) = self.rooms.get_mut(room) {
            watched.next = revision + 1;
            if let Some((_, Entry::Message(m))) = entries.last() {
                watched.last_seq = m.seq;
            }
            self.by_id.remove(&watched.id);
        }
        if !entries.is_empty() && !deliver(Delivery::Entries(room.to_string(), entries)) {
            return Ok(false);
        }
        self.create(room, sink).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_bad_ones_are_refused_with_the_expected_form() {
        assert_eq!(parse_endpoints("etcd://a:1,b:2").unwrap(), ["a:1", "b:2"]);
        assert_eq!(parse_endpoints("etcd://127.0.0.1:2379/").unwrap(), ["127.0.0.1:2379"]);
        let e = parse_endpoints("etcd://a:1,b").unwrap_err();
        assert_eq!(
            e,
            "invalid --broker \"etcd://a:1,b\": expected etcd://HOST:PORT[,HOST:PORT...]: \"b\" is not HOST:PORT"
        );
        assert!(parse_endpoints("etcd://").is_err());
        assert!(parse_endpoints("etcd://a:0").is_err());
    }

    #[test]
    fn room_keys_are_prefix_free_and_messages_sort_by_number() {
        assert!(!message_key("a", 1).starts_with(room_prefix("a/b").as_bytes()));
        assert!(!room_prefix("ab").starts_with(&room_prefix("a")));
        assert!(message_key("r", 9) < message_key("r", 10));
        assert_eq!(hex("a/"), "612f");
        assert_eq!(prefix_end(b"chat/r/61/"), b"chat/r/610".to_vec());
    }
}
