//! The hub: one thread that owns every room of this server.
//!
//! Handlers send it [`Command`]s; it takes them in batches, so that the
//! messages said in one batch are stored in one SQLite transaction (or
//! numbered in one Redis round trip) before they are fanned out. Being the
//! only owner of the rooms, it needs no lock, and a join sees a consistent
//! cut: its backlog ends exactly where its subscription starts.
//!
//! In broker mode the hub never waits on Redis: what needs Redis is a
//! [`broker::Job`] for the broker's writer thread, which answers the
//! caller itself or, when the hub needs the answer (a room to load), sends
//! it back as a [`Command`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::thread;

use futures::channel::oneshot;
use log::{debug, info, warn};

use super::broker::{self, Broker, BrokerConfig, Delivery, Entry, Follow, Job, Loaded, Said, StreamId};
use super::cache::{Window, WindowCache};
use super::limits::MAX_RESUME;
use super::mention;
use super::store::Store;
use super::types::{ChatConfig, ChatError, Event, Stats};
use crate::fanout::{Ended, Fanout, SubscriberId, Subscription, WhenFull};
use crate::proto::chat::{server_event, Message, Presence, RoomInfo, ServerEvent};
use crate::telemetry::Span;
use crate::wire::now_unix_ms;

type Reply<T> = oneshot::Sender<Result<T, ChatError>>;

/// What a join answers.
pub(super) struct JoinAnswer {
    /// The room's last sequence number.
    pub last_seq: u64,
    /// The backlog, up to `last_seq`.
    pub backlog: Vec<Message>,
    /// What follows `last_seq`.
    pub subscription: Subscription<Event>,
    /// The room's epoch.
    pub epoch: String,
}

/// A join, as asked.
pub(super) struct JoinRequest {
    pub room: String,
    pub user: String,
    pub resume_after: Option<u64>,
    /// The epoch the client saw `resume_after` in.
    pub epoch: Option<String>,
    pub history: usize,
    /// A Post's hold on the room while it says there: not a member, so no
    /// presence is announced and the room's member counts do not change.
    pub quiet: bool,
    pub reply: Reply<JoinAnswer>,
}

pub(super) enum Command {
    Join(JoinRequest),
    Say {
        message: Message,
        /// The users it notifies (see [`super::mention`]).
        mentions: Vec<String>,
        reply: Reply<u64>,
        /// The span of the call that says it, when traced.
        span: Option<Span>,
    },
    Leave {
        room: String,
        id: SubscriberId,
    },
    History {
        room: String,
        limit: usize,
        before_seq: Option<u64>,
        reply: Reply<Vec<Message>>,
    },
    Rooms {
        reply: Reply<Vec<RoomInfo>>,
    },
    /// New entries of a followed room's stream, from the broker reader.
    Delivered {
        room: String,
        entries: Vec<(StreamId, Entry)>,
    },
    /// A room's numbering (re)started under this epoch, from the broker reader.
    Reset {
        room: String,
        epoch: String,
    },
    /// A room loaded by the broker's writer, for the joins waiting for it.
    Loaded {
        room: String,
        loaded: Result<Loaded, String>,
    },
    Stop,
}

/// A room with members on this server.
struct Room {
    fanout: Fanout<Event>,
    /// Connections per user.
    members: HashMap<String, usize>,
    /// The user of each subscriber.
    subscribers: HashMap<SubscriberId, String>,
    /// The subscribers that are a Post's quiet hold, not members.
    quiet: HashSet<SubscriberId>,
    /// The last message fanned out here.
    last_seq: u64,
    /// Broker mode: the last stream entry fanned out here.
    position: StreamId,
    /// Its epoch: joins that resume must present it.
    epoch: String,
}

enum Backend {
    Local(Store),
    Broker(Broker),
}

struct Hub {
    rooms: HashMap<String, Room>,
    cache: WindowCache,
    backend: Backend,
    stats: Arc<Stats>,
    subscriber_queue: usize,
    /// Messages said in the current batch, not yet stored, with the reply
    /// their sender waits for (none for a notification) and their spans.
    pending: Vec<(Message, Option<Reply<u64>>, Option<Traced>)>,
    /// Broker mode: the traced messages said here, until the broker's
    /// reader hands them back to be fanned out (at most [`MAX_TRACED`]).
    traced: HashMap<MessageKey, Span>,
    /// Broker mode: rooms being loaded, with the joins waiting for them.
    opening: HashMap<String, Vec<JoinRequest>>,
    /// The hub's own command channel, for answers from the broker's writer.
    me: async_channel::WeakSender<Command>,
    /// While the joins that waited for a room's load are answered: a
    /// refused one leaves the room open for the others.
    holding_open: bool,
}

/// Most commands taken in one batch.
const BATCH: usize = 512;

/// Broker mode: most traced messages waiting for their fan-out; past it
/// (messages the broker never handed back) the oldest links are forgotten.
const MAX_TRACED: usize = 1024;

/// A message as the broker hands it back: who said it, where, when.
type MessageKey = (String, String, i64, String);

fn key_of(message: &Message) -> MessageKey {
    (message.room.clone(), message.user.clone(), message.time_unix_ms, message.client_id.clone())
}

/// The spans of a traced message: the call's (parent of the fan-out) and
/// the store's, which ends once the message is stored (embedded mode) or
/// acknowledged (broker mode, replicas and quorum included).
struct Traced {
    call: Span,
    store: Span,
}

impl Traced {
    fn start(span: Option<Span>, message: &Message, backend: &'static str) -> Option<Traced> {
        let call = span?;
        let attributes = vec![
            opentelemetry::KeyValue::new("chat.room", message.room.clone()),
            opentelemetry::KeyValue::new("chat.backend", backend),
        ];
        let store = call.child("chat.store", attributes)?;
        Some(Traced { call, store })
    }

    /// Ends the store span with the message's number, or the error.
    fn stored(&self, stored: &Result<u64, String>) {
        match stored {
            Ok(seq) => self.store.set_attribute(opentelemetry::KeyValue::new("chat.seq", *seq as i64)),
            Err(why) => self.store.set_error(why.clone()),
        }
        self.store.end();
    }
}

/// Opens the backend and starts the hub thread (and, with a broker, the
/// reader thread); answers the hub's command channel.
pub(super) fn start(
    config: &ChatConfig,
    stats: Arc<Stats>,
) -> Result<(async_channel::Sender<Command>, thread::JoinHandle<()>), String> {
    let (commands, receiver) = async_channel::unbounded();
    let backend = match &config.broker {
        Some(url) => {
            // Weak: the reader must not keep the hub alive once every handle is gone.
            let hub = commands.downgrade();
            let deliver = move |delivery| {
                let command = match delivery {
                    Delivery::Entries(room, entries) => Command::Delivered { room, entries },
                    Delivery::Reset { room, epoch } => Command::Reset { room, epoch },
                };
                hub.upgrade().is_some_and(|hub| hub.try_send(command).is_ok())
            };
            let broker_config = BrokerConfig {
                url: url.clone(),
                cap: config.stream_cap.max(1),
                replicas_to_ack: config.replicas_to_ack.unwrap_or(if broker::is_sentinel_url(url) { 1 } else { 0 }),
                ack_timeout: config.ack_timeout,
            };
            Backend::Broker(Broker::start(&broker_config, deliver)?)
        }
        None => match Store::open(config.data_dir.as_deref()) {
            Ok(store) => Backend::Local(store),
            Err(e) if config.data_dir_is_default => {
                warn!("chat: {e}; keeping the chat history in memory instead (pass --data-dir to choose)");
                Backend::Local(Store::open(None)?)
            }
            Err(e) => return Err(e),
        },
    };
    let hub = Hub {
        rooms: HashMap::new(),
        cache: WindowCache::new(config.cache_rooms, config.cache_window),
        backend,
        stats,
        subscriber_queue: config.subscriber_queue,
        pending: Vec::new(),
        traced: HashMap::new(),
        opening: HashMap::new(),
        me: commands.downgrade(),
        holding_open: false,
    };
    let thread = thread::Builder::new()
        .name("chat-hub".to_string())
        .spawn(move || hub.run(receiver))
        .map_err(|e| format!("cannot start the chat hub: {e}"))?;
    Ok((commands, thread))
}

fn event(event: server_event::Event) -> Event {
    Arc::new(ServerEvent { event: Some(event), ..Default::default() })
}

fn message_event(message: Message) -> Event {
    event(server_event::Event::Message(message))
}

fn presence_event(room: &str, user: &str, time_unix_ms: i64, joined: bool) -> Event {
    let presence = Presence { room: room.to_string(), user: user.to_string(), time_unix_ms, ..Default::default() };
    event(if joined { server_event::Event::Joined(presence) } else { server_event::Event::Left(presence) })
}

/// Keeps the contiguous tail of `messages` that ends at `last_seq`.
fn contiguous_tail(last_seq: u64, mut messages: Vec<Message>) -> Vec<Message> {
    let mut expected = last_seq;
    let mut keep = 0;
    for m in messages.iter().rev() {
        if m.seq != expected {
            break;
        }
        keep += 1;
        expected = expected.saturating_sub(1);
    }
    messages.drain(..messages.len() - keep);
    messages
}

fn reply<T>(reply: Reply<T>, result: Result<T, ChatError>) {
    // The handler may have gone (its call ended); then nobody waits.
    let _ = reply.send(result);
}

impl Hub {
    fn run(mut self, commands: async_channel::Receiver<Command>) {
        'serve: while let Ok(first) = commands.recv_blocking() {
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(command) = next.take() {
                if matches!(command, Command::Stop) {
                    break 'serve;
                }
                self.handle(command);
                taken += 1;
                if taken < BATCH {
                    next = commands.try_recv().ok();
                }
            }
            self.flush();
        }
        commands.close();
        self.flush();
        for (_, joins) in std::mem::take(&mut self.opening) {
            for join in joins {
                reply(join.reply, Err(ChatError::ShuttingDown));
            }
        }
        self.stop();
        // Commands that were queued behind the stop get their answer.
        while let Ok(command) = commands.try_recv() {
            self.refuse(command);
        }
    }

    fn refuse(&mut self, command: Command) {
        match command {
            Command::Join(join) => reply(join.reply, Err(ChatError::ShuttingDown)),
            Command::Say { reply: r, .. } => reply(r, Err(ChatError::ShuttingDown)),
            Command::History { reply: r, .. } => reply(r, Err(ChatError::ShuttingDown)),
            Command::Rooms { reply: r } => reply(r, Err(ChatError::ShuttingDown)),
            Command::Leave { .. }
            | Command::Delivered { .. }
            | Command::Reset { .. }
            | Command::Loaded { .. }
            | Command::Stop => {}
        }
    }

    fn stop(&mut self) {
        for (_, mut room) in self.rooms.drain() {
            room.fanout.close();
        }
        if let Backend::Broker(broker) = &mut self.backend {
            broker.shutdown();
        }
        self.update_counts();
        debug!("chat: stopped ({:?})", self.stats.snapshot());
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Say { message, mentions, reply: r, span } => self.say(message, mentions, r, span),
            Command::Join(join) => {
                self.flush();
                self.join(join);
            }
            Command::Leave { room, id } => {
                self.flush();
                if let Some(left) = self.detach(&room, id) {
                    self.fan_out(&room, left);
                }
            }
            Command::History { room, limit, before_seq, reply: r } => {
                self.flush();
                self.history(&room, limit, before_seq, r);
            }
            Command::Rooms { reply: r } => self.list_rooms(r),
            Command::Delivered { room, entries } => {
                self.flush();
                self.delivered(&room, entries);
            }
            Command::Reset { room, epoch } => {
                self.flush();
                self.reset(&room, &epoch);
            }
            Command::Loaded { room, loaded } => {
                self.flush();
                self.loaded(&room, loaded);
            }
            Command::Stop => self.refuse(command),
        }
    }

    /// Rooms and their subscribers; inboxes (Notifications calls) are not rooms to a reader of these.
    fn update_counts(&self) {
        let rooms = || self.rooms.iter().filter(|(name, _)| !mention::is_inbox(name)).map(|(_, r)| r);
        self.stats.rooms.set(rooms().count() as i64);
        let subscribers: usize = rooms().map(|r| r.fanout.len()).sum();
        self.stats.subscribers.set(subscribers as i64);
    }

    fn count_lookup(&self, room: &str, missed: bool) {
        if missed {
            self.stats.cache_misses.inc();
            let (hits, misses) = (self.stats.cache_hits.get(), self.stats.cache_misses.get());
            info!("chat: cache miss for room {room:?}: read the store ({hits} hits, {misses} misses so far)");
        } else {
            self.stats.cache_hits.inc();
        }
    }

    /// Embedded mode: the cached window of `room`, loaded from SQLite if
    /// it is not cached (which sets `missed`).
    fn local_window(&mut self, room: &str, missed: &mut bool) -> Result<u64, ChatError> {
        if let Some(window) = self.cache.get(room) {
            return Ok(window.last_seq);
        }
        let Backend::Local(store) = &mut self.backend else { unreachable!("local_window is for embedded mode") };
        *missed = true;
        self.stats.store_reads.inc();
        let (messages, last_seq) = store.recent(room, self.cache.window).map_err(ChatError::Unavailable)?;
        self.cache.insert(room, Window::new(last_seq, messages));
        Ok(last_seq)
    }

    fn new_room(&self, last_seq: u64, position: StreamId, epoch: String) -> Room {
        let fanout = Fanout::new(self.subscriber_queue, WhenFull::Disconnect);
        Room {
            fanout,
            members: HashMap::new(),
            subscribers: HashMap::new(),
            quiet: HashSet::new(),
            last_seq,
            position,
            epoch,
        }
    }

    /// A join: at once if its room is live here (or in embedded mode),
    /// else once the broker's writer has loaded the room.
    fn join(&mut self, join: JoinRequest) {
        let mut missed = false;
        if !self.rooms.contains_key(&join.room) {
            match &self.backend {
                Backend::Local(store) => {
                    let epoch = store.epoch().to_string();
                    let last_seq = match self.local_window(&join.room, &mut missed) {
                        Ok(last_seq) => last_seq,
                        Err(e) => return reply(join.reply, Err(e)),
                    };
                    let room = self.new_room(last_seq, (0, 0), epoch);
                    self.rooms.insert(join.room.clone(), room);
                }
                Backend::Broker(broker) => {
                    if let Some(waiting) = self.opening.get_mut(&join.room) {
                        waiting.push(join);
                        return;
                    }
                    self.stats.store_reads.inc();
                    let me = self.me.clone();
                    let room = join.room.clone();
                    let done = Box::new(move |loaded| {
                        if let Some(hub) = me.upgrade() {
                            let _ = hub.try_send(Command::Loaded { room, loaded });
                        }
                    });
                    broker.send(Job::Load { room: join.room.clone(), window: self.cache.window, done });
                    self.opening.insert(join.room.clone(), vec![join]);
                    return;
                }
            }
        }
        self.join_live_room(join, missed);
    }

    /// Broker mode: the room the joins waiting for it asked for is loaded.
    fn loaded(&mut self, name: &str, loaded: Result<Loaded, String>) {
        let joins = self.opening.remove(name).unwrap_or_default();
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                for join in joins {
                    reply(join.reply, Err(ChatError::Unavailable(e.clone())));
                }
                return;
            }
        };
        if self.rooms.contains_key(name) {
            for join in joins {
                self.join_live_room(join, true);
            }
            return;
        }
        if joins.is_empty() {
            return;
        }
        if let Backend::Broker(broker) = &self.backend {
            let (position, committed) = (loaded.position, loaded.last_seq);
            let epoch = loaded.epoch.clone();
            broker.follow(Follow::Start { room: name.to_string(), position, committed, epoch });
        }
        let messages = contiguous_tail(loaded.last_seq, loaded.messages);
        self.cache.insert(name, Window::new(loaded.last_seq, messages));
        let room = self.new_room(loaded.last_seq, loaded.position, loaded.epoch);
        self.rooms.insert(name.to_string(), room);
        // A join refused here (a resume from another epoch) must not close
        // the room under the joins behind it: it closes below if nobody stayed.
        self.holding_open = true;
        for join in joins {
            self.join_live_room(join, true);
        }
        self.holding_open = false;
        if self.rooms.get(name).is_some_and(|r| r.subscribers.is_empty()) {
            self.close_room(name);
        }
        self.update_counts();
    }

    /// Broker mode: a room's numbering (re)started. If this replica holds
    /// the room under another epoch, its members are cut off: resuming
    /// tells them the history was reset.
    fn reset(&mut self, name: &str, epoch: &str) {
        if self.rooms.get(name).is_some_and(|r| r.epoch != epoch) {
            warn!(
                "chat: the history of room {name:?} was reset (new epoch {epoch}); its members here must join afresh"
            );
            if let Some(mut room) = self.rooms.remove(name) {
                room.fanout.close();
            }
            self.cache.invalidate(name);
            if let Backend::Broker(broker) = &self.backend {
                broker.follow(Follow::Stop(name.to_string()));
            }
            self.update_counts();
        }
    }

    /// A join of a room live on this server.
    fn join_live_room(&mut self, join: JoinRequest, mut missed: bool) {
        let JoinRequest { room, user, resume_after, epoch, history, quiet, reply: r } = join;
        let Some(state) = self.rooms.get(&room) else {
            return reply(r, Err(ChatError::Unavailable(format!("room {room:?} is not open here; join again"))));
        };
        let (last_seq, room_epoch) = (state.last_seq, state.epoch.clone());
        let reset = |why: String| {
            Err(ChatError::OutOfRange(format!(
                "the history of room {room:?} was reset ({why}): its numbering started again; join afresh without resume_after"
            )))
        };
        let after = match resume_after {
            Some(_) if epoch.as_ref().is_some_and(|e| *e != room_epoch) => {
                return self.refuse_join(&room, r, reset("another epoch".to_string()));
            }
            Some(seen) if seen > last_seq => {
                return self.refuse_join(&room, r, reset(format!("it is at message {last_seq}, not {seen}")));
            }
            Some(seen) if last_seq - seen > MAX_RESUME => {
                let why = format!(
                    "cannot resume after message {seen}: {} messages were missed, at most {MAX_RESUME} are replayed; join without resume_after",
                    last_seq - seen
                );
                return self.refuse_join(&room, r, Err(ChatError::OutOfRange(why)));
            }
            Some(seen) => seen,
            None => last_seq.saturating_sub(history as u64),
        };
        let cached = self.cache.get(&room).and_then(|w| w.range(after, last_seq));
        if cached.is_none() {
            missed = true;
            self.stats.store_reads.inc();
        }
        let backlog = match (cached, &mut self.backend) {
            (Some(backlog), _) => Some(backlog),
            (None, Backend::Local(store)) => match store.range(&room, after, last_seq) {
                Ok(backlog) => Some(backlog),
                Err(e) => return self.refuse_join(&room, r, Err(ChatError::Unavailable(e))),
            },
            (None, Backend::Broker(_)) => None,
        };
        if let Some(backlog) = &backlog {
            if let Err(e) = check_backlog(resume_after, after, last_seq, backlog) {
                return self.refuse_join(&room, r, Err(e));
            }
        }
        self.count_lookup(&room, missed);
        let state = self.rooms.get_mut(&room).expect("live");
        let subscription = state.fanout.subscribe();
        let id = subscription.id;
        state.subscribers.insert(id, user.clone());
        if quiet {
            state.quiet.insert(id);
        } else {
            let connections = state.members.entry(user.clone()).or_insert(0);
            *connections += 1;
            if *connections == 1 {
                let members = state.members.len();
                self.announce(&room, &user, true, members);
            }
        }
        self.update_counts();
        let answer = move |backlog| JoinAnswer { last_seq, backlog, subscription, epoch: room_epoch };
        match (backlog, &self.backend) {
            (Some(backlog), _) => reply(r, Ok(answer(backlog))),
            (None, Backend::Local(_)) => unreachable!("embedded mode reads its backlog above"),
            (None, Backend::Broker(broker)) => {
                // The subscription already holds what follows last_seq; the
                // backlog up to it comes from Redis, off this thread.
                let me = self.me.clone();
                let name = room.clone();
                let done = Box::new(move |read: Result<Vec<Message>, String>| {
                    let checked = read
                        .map_err(ChatError::Unavailable)
                        .and_then(|backlog| check_backlog(resume_after, after, last_seq, &backlog).map(|()| backlog));
                    match checked {
                        Ok(backlog) => reply(r, Ok(answer(backlog))),
                        Err(e) => {
                            if let Some(hub) = me.upgrade() {
                                let _ = hub.try_send(Command::Leave { room: name, id });
                            }
                            reply(r, Err(e));
                        }
                    }
                });
                broker.send(Job::Range { room, after, upto: last_seq, done });
            }
        }
    }

    /// Answers a join that failed, and frees its room if nobody is in it.
    fn refuse_join(&mut self, room: &str, r: Reply<JoinAnswer>, answer: Result<JoinAnswer, ChatError>) {
        reply(r, answer);
        if !self.holding_open && self.rooms.get(room).is_some_and(|r| r.subscribers.is_empty()) {
            self.close_room(room);
        }
        self.update_counts();
    }

    /// Tells the room that `user` joined or left (`members` distinct users
    /// are left on this server).
    fn announce(&mut self, room: &str, user: &str, joined: bool, members: usize) {
        if let Backend::Broker(broker) = &self.backend {
            // The event comes back through the reader, to every replica.
            broker.send(Job::Presence { room: room.to_string(), user: user.to_string(), joined, members });
        } else {
            self.fan_out(room, presence_event(room, user, now_unix_ms(), joined));
        }
    }

    /// Removes a subscriber from its room; answers the leave event to fan
    /// out (embedded mode) when that was the user's last connection.
    fn detach(&mut self, room: &str, id: SubscriberId) -> Option<Event> {
        let state = self.rooms.get_mut(room)?;
        let user = state.subscribers.remove(&id)?;
        state.fanout.unsubscribe(id);
        let mut left = None;
        let member = !state.quiet.remove(&id);
        if let Some(connections) = state.members.get_mut(&user).filter(|_| member) {
            *connections -= 1;
            if *connections == 0 {
                state.members.remove(&user);
                let members = state.members.len();
                if matches!(self.backend, Backend::Local(_)) {
                    left = Some(presence_event(room, &user, now_unix_ms(), false));
                } else {
                    self.announce(room, &user, false, members);
                }
            }
        }
        if self.rooms.get(room).is_some_and(|r| r.subscribers.is_empty()) {
            self.close_room(room);
            left = None;
        }
        self.update_counts();
        left
    }

    /// Frees a room without members; with a broker, stops following it
    /// (and forgets its cached window, which nothing keeps current now).
    fn close_room(&mut self, room: &str) {
        self.rooms.remove(room);
        match &self.backend {
            Backend::Broker(broker) => {
                self.cache.invalidate(room);
                broker.follow(Follow::Stop(room.to_string()));
            }
            // Embedded mode keeps the window: the store does not change behind it.
            Backend::Local(_) => {}
        }
    }

    /// [`Hub::fan_out`] of a message, in a `chat.fanout` span under the
    /// call that said it when traced.
    fn fan_out_traced(&mut self, room: &str, event: Event, call: Option<&Span>) {
        let subscribers = self.rooms.get(room).map_or(0, |r| r.fanout.len());
        let attributes = vec![
            opentelemetry::KeyValue::new("chat.room", room.to_string()),
            opentelemetry::KeyValue::new("chat.subscribers", subscribers as i64),
        ];
        let span = call.and_then(|call| call.child("chat.fanout", attributes));
        self.fan_out(room, event);
        if let Some(span) = span {
            span.end();
        }
    }

    /// Publishes `event` to the room, then the leaves of those it cut off.
    fn fan_out(&mut self, room: &str, event: Event) {
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            let Some(state) = self.rooms.get_mut(room) else { return };
            for (id, why) in state.fanout.publish(&event) {
                if let Ended::Lagged { bound } = why {
                    self.stats.cut_off.inc();
                    let user = self.rooms.get(room).and_then(|r| r.subscribers.get(&id)).cloned().unwrap_or_default();
                    warn!("chat: {user:?} in {room:?} fell behind by {bound} events; disconnected");
                }
                queue.extend(self.detach(room, id));
            }
        }
    }

    fn say(&mut self, mut message: Message, mentions: Vec<String>, reply_to: Reply<u64>, span: Option<Span>) {
        if !self.rooms.contains_key(&message.room) {
            return reply(reply_to, Err(ChatError::Unavailable(format!("not in room {:?}", message.room))));
        }
        // A resend (same room, user and client id) within the cached window
        // answers the stored copy, as the brokers do.
        if matches!(self.backend, Backend::Local(_)) {
            if let Some(seq) = self.resent(&message) {
                return reply(reply_to, Ok(seq));
            }
        }
        match &self.backend {
            Backend::Local(_) => {
                // Every inbox first: a failure here must not leave a number unused.
                if let Err(e) = mentions.iter().try_for_each(|mentioned| self.open_inbox(mentioned)) {
                    let inboxes: Vec<String> = mentions.iter().map(|m| mention::inbox(m)).collect();
                    self.close_idle_inboxes(inboxes.iter().map(String::as_str));
                    return reply(reply_to, Err(e));
                }
                let state = self.rooms.get_mut(&message.room).expect("checked above");
                state.last_seq += 1;
                message.seq = state.last_seq;
                for mentioned in &mentions {
                    self.notify(&message, mentioned);
                }
                let traced = Traced::start(span, &message, "sqlite");
                self.pending.push((message, Some(reply_to), traced));
            }
            // The broker numbers it and stores its notifications with it;
            // the writer answers once it is acknowledged.
            Backend::Broker(broker) => {
                let epoch = self.rooms[&message.room].epoch.clone();
                let traced = Traced::start(span, &message, broker.name());
                if let Some(traced) = &traced {
                    if self.traced.len() >= MAX_TRACED {
                        self.traced.clear();
                    }
                    self.traced.insert(key_of(&message), traced.call.clone());
                }
                let done = Box::new(move |stored: Result<u64, String>| {
                    if let Some(traced) = &traced {
                        traced.stored(&stored);
                    }
                    reply(reply_to, stored.map_err(ChatError::Unavailable));
                });
                broker.send(Job::Say(Said { message, epoch, mentions, done }));
            }
        }
    }

    /// Embedded mode: holds `mentioned`'s inbox open here (until the batch
    /// is flushed), so that its notifications can be numbered.
    fn open_inbox(&mut self, mentioned: &str) -> Result<(), ChatError> {
        let inbox = mention::inbox(mentioned);
        if !self.rooms.contains_key(&inbox) {
            let Backend::Local(store) = &self.backend else { unreachable!("open_inbox is for embedded mode") };
            let epoch = store.epoch().to_string();
            let last_seq = self.local_window(&inbox, &mut false)?;
            let room = self.new_room(last_seq, (0, 0), epoch);
            self.rooms.insert(inbox, room);
        }
        Ok(())
    }

    /// Embedded mode: numbers `mentioned`'s notification of `message` in
    /// their inbox (opened by [`Hub::open_inbox`]), to be stored in the
    /// same transaction as the message.
    fn notify(&mut self, message: &Message, mentioned: &str) {
        let mut note = mention::notification(message, mentioned);
        let Some(state) = self.rooms.get_mut(&note.room) else { unreachable!("open_inbox opened it") };
        state.last_seq += 1;
        note.seq = state.last_seq;
        self.pending.push((note, None, None));
    }

    /// Embedded mode: the sequence number of an earlier message of the same
    /// room, user and non-empty client id, in this batch or the cached window.
    fn resent(&mut self, message: &Message) -> Option<u64> {
        if message.client_id.is_empty() {
            return None;
        }
        let same = |m: &&Message| m.room == message.room && m.user == message.user && m.client_id == message.client_id;
        if let Some(m) = self.pending.iter().map(|(m, _, _)| m).find(same) {
            return Some(m.seq);
        }
        let window = self.cache.get(&message.room)?;
        window.messages.iter().rev().find(same).map(|m| m.seq)
    }

    /// Embedded mode: stores the messages said in this batch in one
    /// transaction, then answers their senders and fans them out.
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut messages = Vec::with_capacity(self.pending.len());
        let mut replies = Vec::with_capacity(self.pending.len());
        for (message, r, traced) in std::mem::take(&mut self.pending) {
            messages.push(message);
            replies.push((r, traced));
        }
        let Backend::Local(store) = &mut self.backend else {
            unreachable!("only embedded mode keeps messages pending")
        };
        if let Err(why) = store.append(&messages) {
            warn!("chat: {} message(s) not stored: {why}", messages.len());
            // Give the numbers back, so the sequence stays gap-free.
            for m in &messages {
                if let Some(state) = self.rooms.get_mut(&m.room) {
                    state.last_seq = state.last_seq.min(m.seq - 1);
                }
            }
            for (r, traced) in replies {
                if let Some(traced) = traced {
                    traced.stored(&Err(why.to_string()));
                }
                let Some(r) = r else { continue };
                reply(r, Err(ChatError::Unavailable(format!("the message was not stored: {why}"))));
            }
            self.close_idle_inboxes(messages.iter().map(|m| m.room.as_str()));
            return;
        }
        for (message, (r, traced)) in messages.iter().zip(replies) {
            if let Some(traced) = &traced {
                traced.stored(&Ok(message.seq));
            }
            if let Some(r) = r {
                reply(r, Ok(message.seq));
            }
            self.cache.append(message);
            self.fan_out_traced(&message.room, message_event(message.clone()), traced.as_ref().map(|t| &t.call));
        }
        self.close_idle_inboxes(messages.iter().map(|m| m.room.as_str()));
    }

    /// Embedded mode: lets go of the inboxes a flush held open for its
    /// notifications and nobody follows.
    fn close_idle_inboxes<'a>(&mut self, rooms: impl Iterator<Item = &'a str>) {
        for room in rooms.filter(|room| mention::is_inbox(room)) {
            if self.rooms.get(room).is_some_and(|r| r.subscribers.is_empty()) {
                self.close_room(room);
            }
        }
    }

    /// Broker mode: fans out a followed room's new stream entries, each once.
    fn delivered(&mut self, room: &str, entries: Vec<(StreamId, Entry)>) {
        for (id, entry) in entries {
            let Some(state) = self.rooms.get_mut(room) else { return };
            // Re-following a room may read entries again; the id says which.
            if id <= state.position {
                continue;
            }
            state.position = id;
            let event = match entry {
                Entry::Message(message) => {
                    if message.seq != state.last_seq + 1 {
                        warn!(
                            "chat: room {room:?} jumped from message {} to {} (trimmed before it was read?)",
                            state.last_seq, message.seq
                        );
                    }
                    state.last_seq = message.seq;
                    self.cache.append(&message);
                    // Said here and traced: the fan-out joins the call's trace.
                    if let Some(call) = self.traced.remove(&key_of(&message)) {
                        self.fan_out_traced(room, message_event(message), Some(&call));
                        continue;
                    }
                    message_event(message)
                }
                Entry::Joined { user, time_unix_ms } => presence_event(room, &user, time_unix_ms, true),
                Entry::Left { user, time_unix_ms } => presence_event(room, &user, time_unix_ms, false),
                Entry::Committed(_) => continue,
            };
            self.fan_out(room, event);
        }
    }

    fn history(&mut self, room: &str, limit: usize, before_seq: Option<u64>, r: Reply<Vec<Message>>) {
        let mut missed = false;
        let live = self.rooms.get(room).map(|state| state.last_seq);
        let last_seq = match (live, &self.backend) {
            (Some(last_seq), _) => last_seq,
            (None, Backend::Broker(broker)) => {
                self.count_lookup(room, true);
                self.stats.store_reads.inc();
                let done = Box::new(move |read: Result<Vec<Message>, String>| {
                    reply(r, read.map_err(ChatError::Unavailable));
                });
                return broker.send(Job::History { room: room.to_string(), limit, before_seq, done });
            }
            (None, Backend::Local(_)) => match self.local_window(room, &mut missed) {
                Ok(last_seq) => last_seq,
                Err(e) => return reply(r, Err(e)),
            },
        };
        let upto = before_seq.map_or(last_seq, |before| before.saturating_sub(1).min(last_seq));
        let after = upto.saturating_sub(limit as u64);
        if let Some(messages) = self.cache.get(room).and_then(|w| w.range(after, upto)) {
            self.count_lookup(room, missed);
            return reply(r, Ok(messages));
        }
        self.count_lookup(room, true);
        self.stats.store_reads.inc();
        match &mut self.backend {
            Backend::Local(store) => reply(r, store.range(room, after, upto).map_err(ChatError::Unavailable)),
            Backend::Broker(broker) => {
                let done = Box::new(move |read: Result<Vec<Message>, String>| {
                    reply(r, read.map_err(ChatError::Unavailable));
                });
                broker.send(Job::Range { room: room.to_string(), after, upto, done });
            }
        }
    }

    fn list_rooms(&mut self, r: Reply<Vec<RoomInfo>>) {
        match &self.backend {
            Backend::Broker(broker) => {
                let done = Box::new(move |rooms: Result<Vec<RoomInfo>, String>| {
                    reply(r, rooms.map_err(ChatError::Unavailable));
                });
                broker.send(Job::Rooms { done });
            }
            Backend::Local(_) => {
                let mut rooms: Vec<RoomInfo> = self
                    .rooms
                    .iter()
                    .filter(|(name, _)| !mention::is_inbox(name))
                    .map(|(name, state)| RoomInfo {
                        room: name.clone(),
                        members: state.members.len() as u32,
                        ..Default::default()
                    })
                    .collect();
                rooms.sort_by(|a, b| a.room.cmp(&b.room));
                reply(r, Ok(rooms));
            }
        }
    }
}

/// A resumed backlog must hold every message after the resume point.
fn check_backlog(resume_after: Option<u64>, after: u64, last_seq: u64, backlog: &[Message]) -> Result<(), ChatError> {
    if resume_after.is_some() && backlog.len() as u64 != last_seq - after {
        let oldest = backlog.first().map_or(last_seq + 1, |m| m.seq);
        return Err(ChatError::OutOfRange(format!(
            "cannot resume after message {after}: the room's history now starts at message {oldest}; join without resume_after"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contiguous_tail_ends_at_the_last_sequence_number() {
        let messages = |seqs: &[u64]| seqs.iter().map(|&seq| Message { seq, ..Default::default() }).collect::<Vec<_>>();
        let seqs = |ms: Vec<Message>| ms.into_iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(seqs(contiguous_tail(5, messages(&[1, 2, 4, 5]))), vec![4, 5]);
        assert_eq!(seqs(contiguous_tail(5, messages(&[3, 4, 5]))), vec![3, 4, 5]);
        assert_eq!(seqs(contiguous_tail(6, messages(&[3, 4, 5]))), Vec::<u64>::new());
    }
}
