//! Fan-out of events to subscribers, one bounded `async-channel` each.
//!
//! [`Fanout::publish`] never waits: it `try_send`s a clone to every
//! subscriber. What happens when a subscriber's queue is full is the owner's
//! choice ([`WhenFull`]): the chat cuts such a subscriber off (it fell behind;
//! nobody else waits for it), the health service's Watch drops the event (its
//! events are wake-ups, and a full queue already holds one).
//!
//! A `Fanout` is plain data: its owner decides what protects it (the chat hub
//! owns its fan-outs on one thread; the health service keeps them under its
//! mutex, which `publish` holds only for the `try_send`s, never across an
//! await or a blocking send).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::channel::oneshot;

/// Identifies a subscriber within its [`Fanout`].
pub type SubscriberId = u64;

/// What `publish` does for a subscriber whose queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Close its queue and tell it [`Ended::Lagged`]; it is gone from the fan-out.
    Disconnect,
    /// Drop this event for it and keep it subscribed.
    Skip,
}

/// Why a subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Its queue held `bound` events it had not taken: it was cut off.
    Lagged { bound: usize },
    /// The owner unsubscribed it or closed the fan-out.
    Closed,
}

struct Slot<T> {
    events: async_channel::Sender<T>,
    ended: Option<oneshot::Sender<Ended>>,
}

impl<T> Slot<T> {
    fn end(mut self, why: Ended) {
        if let Some(ended) = self.ended.take() {
            // The subscription may be gone already; then nobody needs to know.
            let _ = ended.send(why);
        }
        self.events.close();
    }
}

/// The subscribers of one event source.
pub struct Fanout<T> {
    slots: HashMap<SubscriberId, Slot<T>>,
    bound: usize,
    when_full: WhenFull,
}

/// Subscriber ids are unique in the process, never per fan-out: a chat room
/// is freed when it empties and made anew on the next join, and a late
/// unsubscribe for a subscriber of the old room must not find a subscriber of
/// the new one under a reused id (it did: a member cut off as "the server is
/// shutting down" in about one run in ten of the join/leave cycle test).
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// One subscriber's end: its queue of events, and why it ended.
pub struct Subscription<T> {
    pub id: SubscriberId,
    /// Events in publish order; closed when the subscription ends.
    pub events: async_channel::Receiver<T>,
    /// Resolves once, when the fan-out ends the subscription (cut off,
    /// unsubscribed or closed); a receiver can wait on it while it is busy
    /// elsewhere, e.g. stuck sending to a slow peer.
    pub ended: oneshot::Receiver<Ended>,
}

impl<T: Clone> Fanout<T> {
    /// An empty fan-out whose subscribers each queue at most `bound` events.
    pub fn new(bound: usize, when_full: WhenFull) -> Self {
        Fanout { slots: HashMap::new(), bound: bound.max(1), when_full }
    }

    /// Adds a subscriber; it gets every event published from now on.
    pub fn subscribe(&mut self) -> Subscription<T> {
        let (events, receiver) = async_channel::bounded(self.bound);
        let (ended, ended_receiver) = oneshot::channel();
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        self.slots.insert(id, Slot { events, ended: Some(ended) });
        Subscription { id, events: receiver, ended: ended_receiver }
    }

    /// Removes a subscriber (ending it with [`Ended::Closed`]); true if it was there.
    pub fn unsubscribe(&mut self, id: SubscriberId) -> bool {
        match self.slots.remove(&id) {
            Some(slot) => {
                slot.end(Ended::Closed);
                true
            }
            None => false,
        }
    }

    /// Sends `event` to every subscriber without waiting. Returns the
    /// subscribers that left the fan-out, and why: those cut off for
    /// lagging, and those whose receiving end was dropped (`Closed`).
    pub fn publish(&mut self, event: &T) -> Vec<(SubscriberId, Ended)> {
        let mut gone = Vec::new();
        for (&id, slot) in &self.slots {
            match slot.events.try_send(event.clone()) {
                Ok(()) => {}
                Err(async_channel::TrySendError::Full(_)) if self.when_full == WhenFull::Skip => {}
                Err(_) => gone.push(id),
            }
        }
        let mut left = Vec::with_capacity(gone.len());
        for id in gone {
            if let Some(slot) = self.slots.remove(&id) {
                let why = if slot.events.is_closed() { Ended::Closed } else { Ended::Lagged { bound: self.bound } };
                slot.end(why);
                left.push((id, why));
            }
        }
        left
    }

    /// Ends every subscription with [`Ended::Closed`]; events already queued
    /// can still be received.
    pub fn close(&mut self) {
        for (_, slot) in self.slots.drain() {
            slot.end(Ended::Closed);
        }
    }

    /// Forgets the subscribers whose receiving end was dropped (their calls
    /// ended) without waiting for the next `publish` to notice.
    pub fn remove_gone(&mut self) {
        self.slots.retain(|_, slot| !slot.events.is_closed());
    }

    /// Subscribers now.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

impl<T> Drop for Fanout<T> {
    fn drop(&mut self) {
        for (_, slot) in self.slots.drain() {
            slot.end(Ended::Closed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    fn drain<T>(sub: &Subscription<T>) -> Vec<T> {
        std::iter::from_fn(|| sub.events.try_recv().ok()).collect()
    }

    #[test]
    fn every_subscriber_gets_every_event_in_order() {
        let mut fanout = Fanout::new(8, WhenFull::Disconnect);
        let a = fanout.subscribe();
        let b = fanout.subscribe();
        for i in 0..5 {
            assert!(fanout.publish(&i).is_empty());
        }
        assert_eq!(drain(&a), vec![0, 1, 2, 3, 4]);
        assert_eq!(drain(&b), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_subscriber_that_falls_behind_is_cut_off_and_the_others_keep_receiving() {
        let mut fanout = Fanout::new(3, WhenFull::Disconnect);
        let slow = fanout.subscribe();
        let fast = fanout.subscribe();
        let mut fast_got = Vec::new();
        let mut cut = Vec::new();
        for i in 0..10 {
            cut.extend(fanout.publish(&i));
            fast_got.extend(drain(&fast));
        }
        assert_eq!(cut, vec![(slow.id, Ended::Lagged { bound: 3 })], "only the slow subscriber is cut off, once");
        assert_eq!(fast_got, (0..10).collect::<Vec<_>>());
        assert_eq!(fanout.len(), 1);
        // What it had queued before the cut is still there, then the queue ends.
        assert_eq!(drain(&slow), vec![0, 1, 2]);
        assert!(slow.events.is_closed());
        assert_eq!(block_on(slow.ended), Ok(Ended::Lagged { bound: 3 }));
    }

    #[test]
    fn skip_keeps_a_full_subscriber_and_drops_the_event() {
        let mut fanout = Fanout::new(1, WhenFull::Skip);
        let sub = fanout.subscribe();
        assert!(fanout.publish(&1).is_empty());
        assert!(fanout.publish(&2).is_empty());
        assert_eq!(drain(&sub), vec![1]);
        assert!(fanout.publish(&3).is_empty());
        assert_eq!(drain(&sub), vec![3]);
        assert_eq!(fanout.len(), 1);
    }

    #[test]
    fn a_dropped_receiver_leaves_at_the_next_publish_as_closed() {
        let mut fanout = Fanout::new(4, WhenFull::Skip);
        let sub = fanout.subscribe();
        let id = sub.id;
        drop(sub);
        assert_eq!(fanout.publish(&1), vec![(id, Ended::Closed)]);
        assert!(fanout.is_empty());
    }

    #[test]
    fn unsubscribe_and_close_end_subscriptions_as_closed() {
        let mut fanout = Fanout::new(4, WhenFull::Disconnect);
        let a = fanout.subscribe();
        let b = fanout.subscribe();
        assert!(fanout.unsubscribe(a.id));
        assert!(!fanout.unsubscribe(a.id), "a second unsubscribe is a no-op");
        assert_eq!(block_on(a.ended), Ok(Ended::Closed));
        fanout.publish(&7);
        fanout.close();
        assert_eq!(block_on(b.ended), Ok(Ended::Closed));
        assert_eq!(block_on(b.events.recv()), Ok(7), "queued events survive the close");
        assert!(block_on(b.events.recv()).is_err());
        assert!(fanout.is_empty());
    }
}
