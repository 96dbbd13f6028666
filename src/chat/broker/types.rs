//! What the hub and both brokers share: the jobs, follows and deliveries
//! that cross between their threads, and the writers' batching.

use std::time::Duration;

use crate::proto::chat::{Message, RoomInfo};

/// A stream entry id, `ms-seq`.
pub type StreamId = (u64, u64);

/// A stream entry the reader read.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Message(Message),
    Joined {
        user: String,
        time_unix_ms: i64,
    },
    Left {
        user: String,
        time_unix_ms: i64,
    },
    /// Messages up to this sequence number are acknowledged (the reader
    /// consumes these; the hub never sees one).
    Committed(u64),
}

/// What the hub tells the reader.
#[derive(Debug)]
pub enum Follow {
    /// Read `room` after `position`; messages up to `committed` are acknowledged.
    Start {
        room: String,
        position: StreamId,
        committed: u64,
        /// The room's epoch as loaded.
        epoch: String,
    },
    Stop(String),
    /// End the reader.
    Quit,
}

/// What the reader hands the hub.
#[derive(Debug)]
pub enum Delivery {
    /// New acknowledged entries of a followed room, in stream order.
    Entries(String, Vec<(StreamId, Entry)>),
    /// The room's numbering (re)started under this epoch.
    Reset { room: String, epoch: String },
}

/// How a job answers: called once, on the writer thread.
pub type Done<T> = Box<dyn FnOnce(Result<T, String>) + Send>;

/// A message to store, in the room's epoch as the hub knows it.
pub struct Said {
    pub message: Message,
    pub epoch: String,
    /// The users it notifies: their notifications (see
    /// [`crate::chat::mention`]) are stored with it, atomically, and only
    /// when it is stored (not on a resend that finds the stored copy).
    pub mentions: Vec<String>,
    pub done: Done<u64>,
}

/// What the hub asks the writer thread to do.
pub enum Job {
    /// Number, store and (once acknowledged) answer the message's sequence number.
    Say(Said),
    /// A join or leave, and this replica's member count of the room.
    Presence { room: String, user: String, joined: bool, members: usize },
    /// The room as a replica starts following it; see [`Loaded`].
    Load { room: String, window: usize, done: Done<Loaded> },
    /// The messages `after < seq <= upto` still in the room's stream.
    Range { room: String, after: u64, upto: u64, done: Done<Vec<Message>> },
    /// At most `limit` acknowledged messages before `before_seq` (the newest when `None`).
    History { room: String, limit: usize, before_seq: Option<u64>, done: Done<Vec<Message>> },
    /// Every room with members on a live replica.
    Rooms { done: Done<Vec<RoomInfo>> },
    /// Makes the reader take a follow change into account now.
    Wake,
    /// Removes this replica's keys and ends the writer.
    Stop,
}

impl Job {
    /// Answers the job's callback with an error.
    pub fn fail(self, why: &str) {
        let why = why.to_string();
        match self {
            Job::Say(said) => (said.done)(Err(why)),
            Job::Load { done, .. } => done(Err(why)),
            Job::Range { done, .. } | Job::History { done, .. } => done(Err(why)),
            Job::Rooms { done } => done(Err(why)),
            Job::Presence { .. } | Job::Wake | Job::Stop => {}
        }
    }
}

/// How the broker stores and acknowledges.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `redis://...`, `redis+unix://...`, `redis+sentinel://HOST:PORT[,...]/MASTER`
    /// or `etcd://HOST:PORT[,...]`.
    pub url: String,
    /// Messages kept per room (the Redis stream's `MAXLEN ~`; etcd's last `cap` keys).
    pub cap: usize,
    /// Redis: replicas that must confirm a message (`WAIT`) before it is
    /// acknowledged. etcd acknowledges once a quorum has it, always.
    pub replicas_to_ack: u32,
    /// How long to wait for them; then the Say fails.
    pub ack_timeout: Duration,
}

/// A room as loaded when a replica starts following it.
pub struct Loaded {
    /// The last acknowledged message.
    pub last_seq: u64,
    /// Where the reader starts: every entry after it is new.
    pub position: StreamId,
    /// The last messages, oldest first (fewer when the stream was trimmed).
    pub messages: Vec<Message>,
    pub epoch: String,
}

/// A fresh epoch: unique enough across replicas and restarts.
pub fn new_epoch() -> String {
    format!("{:x}-{:x}-{:x}", crate::wire::now_unix_ms(), std::process::id(), rand_suffix())
}

/// The ends of a broker's channels its threads keep.
pub struct Queues {
    pub jobs: async_channel::Receiver<Job>,
    pub follows: async_channel::Receiver<Follow>,
}

/// What a broker's writer thread does with the jobs the hub sends; each
/// broker implements it once and [`run_batch`] dispatches the jobs.
pub trait Writes {
    /// Stores these messages (and their notifications), answering each once acknowledged.
    fn say(&mut self, says: Vec<Said>);
    /// Announces a join or leave and this replica's member count of the room.
    fn presence(&mut self, room: &str, user: &str, joined: bool, members: usize) -> Result<(), String>;
    /// The room as a replica starts following it.
    fn load(&mut self, room: &str, window: usize) -> Result<Loaded, String>;
    /// The messages `after < seq <= upto` still stored.
    fn range(&mut self, room: &str, after: u64, upto: u64) -> Result<Vec<Message>, String>;
    /// At most `limit` acknowledged messages before `before_seq` (the newest when `None`).
    fn history(&mut self, room: &str, limit: usize, before_seq: Option<u64>) -> Result<Vec<Message>, String>;
    /// Every room with members on a live replica.
    fn rooms(&mut self) -> Result<Vec<RoomInfo>, String>;
    /// Makes the reader take a follow change into account now; by default
    /// nothing (a reader that takes them as they come).
    fn wake(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// Removes this replica's traces before the writer ends.
    fn stop(&mut self);
}

/// Runs one job other than a Say or [`Job::Stop`] (which [`run_batch`] handles).
fn handle(writer: &mut impl Writes, job: Job) {
    match job {
        Job::Say(said) => writer.say(vec![said]),
        Job::Presence { room, user, joined, members } => {
            if let Err(e) = writer.presence(&room, &user, joined, members) {
                log::warn!("chat: cannot announce {user:?} in {room:?}: {e}");
            }
        }
        Job::Load { room, window, done } => done(writer.load(&room, window)),
        Job::Range { room, after, upto, done } => done(writer.range(&room, after, upto)),
        Job::History { room, limit, before_seq, done } => done(writer.history(&room, limit, before_seq)),
        Job::Rooms { done } => done(writer.rooms()),
        Job::Wake => {
            if let Err(e) = writer.wake() {
                log::warn!("chat: cannot wake the broker reader: {e}");
            }
        }
        Job::Stop => {}
    }
}

/// Jobs a writer takes in one batch.
pub const BATCH: usize = 512;

/// Runs `first` and the jobs queued behind it (up to [`BATCH`]): the Says
/// among them are stored together, in order with the other jobs. Answers
/// false once the writer must end ([`Job::Stop`]): then every job still
/// queued is refused.
pub fn run_batch(writer: &mut impl Writes, jobs: &async_channel::Receiver<Job>, first: Job) -> bool {
    let mut says = Vec::new();
    let mut next = Some(first);
    let mut taken = 0;
    while let Some(job) = next.take() {
        match job {
            Job::Say(said) => says.push(said),
            Job::Stop => {
                writer.say(std::mem::take(&mut says));
                writer.stop();
                jobs.close();
                while let Ok(job) = jobs.try_recv() {
                    job.fail("the broker has stopped");
                }
                return false;
            }
            other => {
                writer.say(std::mem::take(&mut says));
                handle(writer, other);
            }
        }
        taken += 1;
        if taken < BATCH {
            next = jobs.try_recv().ok();
        }
    }
    writer.say(says);
    true
}

/// A few bits to tell apart replicas started in the same millisecond by
/// the same process (tests start several).
pub(crate) fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
