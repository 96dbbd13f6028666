//! The hub: one thread that owns every room of this server.
//!
//! Handlers send it [`Command`]s; it takes them in batches, so that the
//! messages said in one batch are stored in one SQLite transaction (or
//! numbered in one Redis round trip) before they are fanned out. Being the
//! only owner of the rooms, it needs no lock, and a join sees a consistent
//! cut: its backlog ends exactly where its subscription starts.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::thread;

use futures::channel::oneshot;
use log::{debug, info, warn};

use super::broker::{self, Broker, Entry, Follow, StreamId};
use super::cache::{Window, WindowCache};
use super::limits::MAX_RESUME;
use super::store::Store;
use super::{now_unix_ms, ChatConfig, ChatError, Event, Stats};
use crate::fanout::{Ended, Fanout, SubscriberId, Subscription, WhenFull};
use crate::proto::chat::{server_event, Message, Presence, RoomInfo, ServerEvent};

type Reply<T> = oneshot::Sender<Result<T, ChatError>>;

/// What a join answers: the room's last sequence number, the backlog up to
/// it, and the subscription to what follows.
pub(super) type JoinAnswer = (u64, Vec<Message>, Subscription<Event>);

pub(super) enum Command {
    Join {
        room: String,
        user: String,
        resume_after: Option<u64>,
        history: usize,
        reply: Reply<JoinAnswer>,
    },
    Say {
        message: Message,
        reply: Reply<u64>,
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
    Stop,
}

/// A room with members on this server.
struct Room {
    fanout: Fanout<Event>,
    /// Connections per user.
    members: HashMap<String, usize>,
    /// The user of each subscriber.
    subscribers: HashMap<SubscriberId, String>,
    /// The last message fanned out here.
    last_seq: u64,
    /// Broker mode: the last stream entry fanned out here.
    position: StreamId,
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
    /// Messages said in the current batch, not yet stored.
    pending: Vec<(Message, Reply<u64>)>,
}

/// Most commands taken in one batch.
const BATCH: usize = 512;

/// Opens the backend and starts the hub thread (and, with a broker, the
/// reader thread); answers the hub's command channel.
pub(super) fn start(
    config: &ChatConfig,
    stats: Arc<Stats>,
) -> Result<(async_channel::Sender<Command>, thread::JoinHandle<()>), String> {
    let (commands, receiver) = async_channel::unbounded();
    let backend = match &config.broker {
        Some(url) => {
            let (follows, followed) = async_channel::unbounded();
            let broker = Broker::connect(url, config.stream_cap, follows)?;
            // Weak: the reader must not keep the hub alive once every handle is gone.
            let hub = commands.downgrade();
            let deliver = move |room, entries| {
                hub.upgrade().is_some_and(|hub| hub.send_blocking(Command::Delivered { room, entries }).is_ok())
            };
            broker::spawn_reader(broker.url().to_string(), broker.replica().to_string(), followed, deliver)
                .map_err(|e| format!("cannot start the broker reader: {e}"))?;
            Backend::Broker(broker)
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
        self.stop();
        // Commands that were queued behind the stop get their answer.
        while let Ok(command) = commands.try_recv() {
            self.refuse(command);
        }
    }

    fn refuse(&mut self, command: Command) {
        match command {
            Command::Join { reply: r, .. } => reply(r, Err(ChatError::ShuttingDown)),
            Command::Say { reply: r, .. } => reply(r, Err(ChatError::ShuttingDown)),
            Command::History { reply: r, .. } => reply(r, Err(ChatError::ShuttingDown)),
            Command::Rooms { reply: r } => reply(r, Err(ChatError::ShuttingDown)),
            Command::Leave { .. } | Command::Delivered { .. } | Command::Stop => {}
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
            Command::Say { message, reply: r } => self.say(message, r),
            Command::Join { room, user, resume_after, history, reply: r } => {
                self.flush();
                let answer = self.join(&room, &user, resume_after, history);
                reply(r, answer);
            }
            Command::Leave { room, id } => {
                self.flush();
                if let Some(left) = self.detach(&room, id) {
                    self.fan_out(&room, left);
                }
            }
            Command::History { room, limit, before_seq, reply: r } => {
                self.flush();
                let answer = self.history(&room, limit, before_seq);
                reply(r, answer);
            }
            Command::Rooms { reply: r } => {
                let answer = self.list_rooms();
                reply(r, answer);
            }
            Command::Delivered { room, entries } => {
                self.flush();
                self.delivered(&room, entries);
            }
            Command::Stop => self.refuse(command),
        }
    }

    fn update_counts(&self) {
        self.stats.rooms.set(self.rooms.len() as i64);
        let subscribers: usize = self.rooms.values().map(|r| r.fanout.len()).sum();
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

    /// Makes `room` live on this server: its last sequence number known
    /// and, with a broker, its stream followed from there.
    fn open_room(&mut self, room: &str, missed: &mut bool) -> Result<(), ChatError> {
        if self.rooms.contains_key(room) {
            return Ok(());
        }
        let (last_seq, position) = match &mut self.backend {
            Backend::Local(_) => (0, (0, 0)),
            Backend::Broker(broker) => {
                *missed = true;
                self.stats.store_reads.inc();
                let loaded = broker.load(room, self.cache.window).map_err(ChatError::Unavailable)?;
                broker.follow(Follow::Start(room.to_string(), loaded.position)).map_err(ChatError::Unavailable)?;
                let messages = contiguous_tail(loaded.last_seq, loaded.messages);
                self.cache.insert(room, Window::new(loaded.last_seq, messages));
                (loaded.last_seq, loaded.position)
            }
        };
        let last_seq = match self.backend {
            Backend::Local(_) => self.local_window(room, missed)?,
            Backend::Broker(_) => last_seq,
        };
        let fanout = Fanout::new(self.subscriber_queue, WhenFull::Disconnect);
        let room_state = Room { fanout, members: HashMap::new(), subscribers: HashMap::new(), last_seq, position };
        self.rooms.insert(room.to_string(), room_state);
        Ok(())
    }

    /// The messages `after < seq <= upto` of a room: from the cache when
    /// its window holds them, else from the store (which sets `missed`).
    fn read_range(&mut self, room: &str, after: u64, upto: u64, missed: &mut bool) -> Result<Vec<Message>, ChatError> {
        if let Some(messages) = self.cache.get(room).and_then(|w| w.range(after, upto)) {
            return Ok(messages);
        }
        *missed = true;
        self.stats.store_reads.inc();
        match &mut self.backend {
            Backend::Local(store) => store.range(room, after, upto),
            Backend::Broker(broker) => broker.range(room, after, upto),
        }
        .map_err(ChatError::Unavailable)
    }

    fn join(
        &mut self,
        room: &str,
        user: &str,
        resume_after: Option<u64>,
        history: usize,
    ) -> Result<JoinAnswer, ChatError> {
        let mut missed = false;
        self.open_room(room, &mut missed)?;
        let joined = self.join_open_room(room, user, resume_after, history, &mut missed);
        if joined.is_err() && self.rooms.get(room).is_some_and(|r| r.subscribers.is_empty()) {
            self.close_room(room);
        }
        let joined = joined?;
        self.count_lookup(room, missed);
        self.update_counts();
        Ok(joined)
    }

    fn join_open_room(
        &mut self,
        room: &str,
        user: &str,
        resume_after: Option<u64>,
        history: usize,
        missed: &mut bool,
    ) -> Result<JoinAnswer, ChatError> {
        let last_seq = self.rooms[room].last_seq;
        let after = match resume_after {
            Some(seen) if last_seq.saturating_sub(seen) > MAX_RESUME => {
                return Err(ChatError::OutOfRange(format!(
                    "cannot resume after message {seen}: {} messages were missed, at most {MAX_RESUME} are replayed; join without resume_after",
                    last_seq - seen
                )));
            }
            Some(seen) => seen.min(last_seq),
            None => last_seq.saturating_sub(history as u64),
        };
        let backlog = self.read_range(room, after, last_seq, missed)?;
        if resume_after.is_some() && backlog.len() as u64 != last_seq - after {
            let oldest = backlog.first().map_or(last_seq + 1, |m| m.seq);
            return Err(ChatError::OutOfRange(format!(
                "cannot resume after message {after}: the room's history now starts at message {oldest}; join without resume_after"
            )));
        }
        let state = self.rooms.get_mut(room).expect("opened above");
        let subscription = state.fanout.subscribe();
        state.subscribers.insert(subscription.id, user.to_string());
        let connections = state.members.entry(user.to_string()).or_insert(0);
        *connections += 1;
        if *connections == 1 {
            let members = state.members.len();
            self.announce(room, user, true, members);
        }
        Ok((last_seq, backlog, subscription))
    }

    /// Tells the room that `user` joined or left (`members` distinct users
    /// are left on this server).
    fn announce(&mut self, room: &str, user: &str, joined: bool, members: usize) {
        if let Backend::Broker(broker) = &mut self.backend {
            // The event comes back through the reader, to every replica.
            if let Err(e) = broker.presence(room, user, joined).and_then(|()| broker.set_members(room, members)) {
                warn!("chat: cannot announce {user:?} in {room:?}: {e}");
            }
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
        if let Some(connections) = state.members.get_mut(&user) {
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
        if let Backend::Broker(broker) = &mut self.backend {
            self.cache.invalidate(room);
            if let Err(e) = broker.follow(Follow::Stop(room.to_string())) {
                warn!("chat: {e}");
            }
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

    fn say(&mut self, mut message: Message, reply_to: Reply<u64>) {
        match &self.backend {
            Backend::Local(_) => {
                let Some(state) = self.rooms.get_mut(&message.room) else {
                    return reply(reply_to, Err(ChatError::Unavailable(format!("not in room {:?}", message.room))));
                };
                state.last_seq += 1;
                message.seq = state.last_seq;
            }
            // Redis numbers it at the flush.
            Backend::Broker(_) => {}
        }
        self.pending.push((message, reply_to));
    }

    /// Stores the messages said in this batch, then answers their senders
    /// and (embedded mode) fans them out; a broker fans them out when the
    /// reader reads them back.
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let (messages, replies): (Vec<Message>, Vec<Reply<u64>>) =
            std::mem::take(&mut self.pending).into_iter().unzip();
        let stored = match &mut self.backend {
            Backend::Local(store) => store.append(&messages).map(|()| messages.iter().map(|m| m.seq).collect()),
            Backend::Broker(broker) => broker.say(&messages),
        };
        let seqs: Vec<u64> = match stored {
            Ok(seqs) if seqs.len() == messages.len() => seqs,
            Ok(_) | Err(_) => {
                let why = match stored {
                    Err(e) => e,
                    Ok(_) => "the broker answered the wrong number of sequence numbers".to_string(),
                };
                warn!("chat: {} message(s) not stored: {why}", messages.len());
                if let Backend::Local(_) = self.backend {
                    // Give the numbers back, so the sequence stays gap-free.
                    for m in &messages {
                        if let Some(state) = self.rooms.get_mut(&m.room) {
                            state.last_seq = state.last_seq.min(m.seq - 1);
                        }
                    }
                }
                for r in replies {
                    reply(r, Err(ChatError::Unavailable(format!("the message was not stored: {why}"))));
                }
                return;
            }
        };
        let local = matches!(self.backend, Backend::Local(_));
        for ((message, r), seq) in messages.into_iter().zip(replies).zip(seqs) {
            reply(r, Ok(seq));
            if local {
                self.cache.append(&message);
                let room = message.room.clone();
                self.fan_out(&room, message_event(message));
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
                    message_event(message)
                }
                Entry::Joined { user, time_unix_ms } => presence_event(room, &user, time_unix_ms, true),
                Entry::Left { user, time_unix_ms } => presence_event(room, &user, time_unix_ms, false),
            };
            self.fan_out(room, event);
        }
    }

    fn history(&mut self, room: &str, limit: usize, before_seq: Option<u64>) -> Result<Vec<Message>, ChatError> {
        let mut missed = false;
        let live = self.rooms.get(room).map(|state| state.last_seq);
        let last_seq = if let Some(last_seq) = live {
            last_seq
        } else if let Backend::Broker(broker) = &mut self.backend {
            broker.last_seq(room).map_err(ChatError::Unavailable)?
        } else {
            self.local_window(room, &mut missed)?
        };
        let upto = before_seq.map_or(last_seq, |before| before.saturating_sub(1).min(last_seq));
        let messages = self.read_range(room, upto.saturating_sub(limit as u64), upto, &mut missed)?;
        self.count_lookup(room, missed);
        debug!("chat: history of {room:?}: {} message(s)", messages.len());
        Ok(messages)
    }

    fn list_rooms(&mut self) -> Result<Vec<RoomInfo>, ChatError> {
        match &mut self.backend {
            Backend::Broker(broker) => broker.rooms().map_err(ChatError::Unavailable),
            Backend::Local(_) => {
                let mut rooms: Vec<RoomInfo> = self
                    .rooms
                    .iter()
                    .map(|(name, state)| RoomInfo {
                        room: name.clone(),
                        members: state.members.len() as u32,
                        ..Default::default()
                    })
                    .collect();
                rooms.sort_by(|a, b| a.room.cmp(&b.room));
                Ok(rooms)
            }
        }
    }
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
