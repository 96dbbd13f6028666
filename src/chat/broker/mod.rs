//! Rooms across replicas through a broker: the one interface the hub talks
//! to, and its two implementations.
//!
//! - [`redis`]: Redis, alone or behind Sentinels. Simple and fast; what an
//!   acknowledgement survives depends on the fault (docs/chat-ha.md's table).
//! - [`etcd`]: an etcd cluster (Raft). A message is acknowledged once a
//!   quorum has it on disk, so no single fault — a crash, a pause, a
//!   partition of any one node — takes it away or renumbers it.
//!
//! Both run on threads of their own (never a completion-queue thread, never
//! the hub's): a writer that runs the [`Job`]s the hub sends and answers
//! each through its callback, and a reader that follows the rooms the hub
//! tells it to ([`Follow`]) and hands it what it reads ([`Delivery`]).

pub mod etcd;
pub mod redis;
mod types;

use std::thread;

pub use types::*;

/// The hub's handle on the broker's threads, whichever the broker.
pub struct Broker {
    /// `redis` or `etcd`, as traces name the store.
    name: &'static str,
    jobs: async_channel::Sender<Job>,
    follows: async_channel::Sender<Follow>,
    writer: Option<thread::JoinHandle<()>>,
}

impl Broker {
    /// Checks that the broker answers (failing now if it cannot be
    /// reached), then starts its writer and reader; the reader hands what
    /// it reads to `deliver` until that answers false.
    pub fn start(
        config: &BrokerConfig,
        deliver: impl FnMut(Delivery) -> bool + Send + 'static,
    ) -> Result<Broker, String> {
        let (jobs, queued) = async_channel::unbounded();
        let (follows, followed) = async_channel::unbounded();
        let queues = Queues { jobs: queued, follows: followed };
        let (name, writer) = if etcd::is_etcd_url(&config.url) {
            ("etcd", etcd::start(config, queues, deliver)?)
        } else {
            ("redis", redis::start(config, queues, deliver)?)
        };
        Ok(Broker { name, jobs, follows, writer: Some(writer) })
    }

    /// `redis` or `etcd`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Queues a job; never waits.
    pub fn send(&self, job: Job) {
        if let Err(e) = self.jobs.try_send(job) {
            e.into_inner().fail("the broker has stopped");
        }
    }

    /// Starts or stops reading a room, and wakes the reader so it takes the
    /// change into account at once.
    pub fn follow(&self, change: Follow) {
        if self.follows.try_send(change).is_err() {
            log::warn!("chat: the broker reader has stopped");
        }
        self.send(Job::Wake);
    }

    /// Stops the reader, removes this replica's keys and waits for the writer.
    pub fn shutdown(&mut self) {
        let _ = self.follows.try_send(Follow::Quit);
        self.send(Job::Stop);
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                log::error!("chat: the broker writer panicked");
            }
        }
    }
}

/// Checks that `url` is a broker URL we understand, for a clear start-up
/// error instead of a failing first call.
pub fn check_url(url: &str) -> Result<(), String> {
    if etcd::is_etcd_url(url) {
        etcd::parse_endpoints(url).map(drop)
    } else {
        redis::check_url(url)
    }
}

/// Whether `url` names an etcd cluster (`etcd://`).
pub fn is_etcd_url(url: &str) -> bool {
    etcd::is_etcd_url(url)
}

/// Whether `url` names Redis Sentinels (then a replica confirms each message by default).
pub fn is_sentinel_url(url: &str) -> bool {
    redis::is_sentinel_url(url)
}
