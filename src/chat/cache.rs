//! The recent messages of each room, in front of the store.
//!
//! A [`Window`] is the tail of a room's history: contiguous messages ending
//! at the room's last sequence number. The hub keeps the window of a room it
//! follows up to date as messages arrive, so a join or a `History` call for
//! recent messages is answered without reading the store. Rooms are evicted
//! least recently used first ([`lru`]).

use std::collections::VecDeque;
use std::num::NonZeroUsize;

use lru::LruCache;

use crate::proto::chat::Message;

/// The last messages of a room.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// The room's last sequence number (0: no message yet).
    pub last_seq: u64,
    /// Messages `last_seq - len + 1 ..= last_seq`, oldest first.
    pub messages: VecDeque<Message>,
}

impl Window {
    /// A window of `messages`, the tail of a history that ends at `last_seq`.
    pub fn new(last_seq: u64, messages: Vec<Message>) -> Self {
        Window { last_seq, messages: messages.into() }
    }

    /// The messages with `after < seq <= upto`, if the window holds all of them.
    pub fn range(&self, after: u64, upto: u64) -> Option<Vec<Message>> {
        if upto > self.last_seq {
            return None;
        }
        if after >= upto {
            return Some(Vec::new());
        }
        let first = self.last_seq + 1 - self.messages.len() as u64;
        if after + 1 < first {
            return None;
        }
        let skip = (after + 1 - first) as usize;
        let take = (upto - after) as usize;
        Some(self.messages.iter().skip(skip).take(take).cloned().collect())
    }

    /// Appends the next message, keeping at most `cap`.
    pub fn push(&mut self, message: Message, cap: usize) {
        self.last_seq = message.seq;
        self.messages.push_back(message);
        while self.messages.len() > cap {
            self.messages.pop_front();
        }
    }
}

/// Windows by room, least recently used evicted first.
pub struct WindowCache {
    rooms: LruCache<String, Window>,
    /// Messages kept per room.
    pub window: usize,
}

impl WindowCache {
    pub fn new(rooms: usize, window: usize) -> Self {
        let rooms = NonZeroUsize::new(rooms).unwrap_or(NonZeroUsize::MIN);
        WindowCache { rooms: LruCache::new(rooms), window: window.max(1) }
    }

    pub fn get(&mut self, room: &str) -> Option<&Window> {
        self.rooms.get(room)
    }

    pub fn insert(&mut self, room: &str, window: Window) {
        self.rooms.put(room.to_string(), window);
    }

    /// Records a new message of a room whose window is cached. A message
    /// that does not follow the window (one was missed) drops the window.
    pub fn append(&mut self, message: &Message) {
        let window = self.window;
        if let Some(cached) = self.rooms.peek_mut(&message.room) {
            if message.seq == cached.last_seq + 1 {
                cached.push(message.clone(), window);
            } else {
                self.rooms.pop(&message.room);
            }
        }
    }

    pub fn invalidate(&mut self, room: &str) {
        self.rooms.pop(room);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64) -> Message {
        Message { room: "r".into(), seq, text: format!("m{seq}"), ..Default::default() }
    }

    fn seqs(messages: &[Message]) -> Vec<u64> {
        messages.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn a_window_answers_only_ranges_it_holds_whole() {
        let window = Window::new(10, (6..=10).map(message).collect());
        assert_eq!(seqs(&window.range(7, 10).unwrap()), vec![8, 9, 10]);
        assert_eq!(seqs(&window.range(5, 8).unwrap()), vec![6, 7, 8]);
        assert!(window.range(4, 10).is_none(), "message 5 is not in the window");
        assert!(window.range(8, 11).is_none(), "message 11 is not known yet");
        assert_eq!(window.range(10, 10).unwrap().len(), 0);
        let empty = Window::new(0, Vec::new());
        assert_eq!(empty.range(0, 0).unwrap().len(), 0);
    }

    #[test]
    fn appending_follows_the_room_and_a_gap_drops_the_window() {
        let mut cache = WindowCache::new(4, 3);
        cache.insert("r", Window::new(2, vec![message(1), message(2)]));
        cache.append(&message(3));
        cache.append(&message(4));
        let window = cache.get("r").unwrap();
        assert_eq!(window.last_seq, 4);
        assert_eq!(seqs(&window.messages.iter().cloned().collect::<Vec<_>>()), vec![2, 3, 4]);
        cache.append(&message(6));
        assert!(cache.get("r").is_none());
    }

    #[test]
    fn the_least_recently_used_room_is_evicted() {
        let mut cache = WindowCache::new(2, 3);
        for room in ["a", "b"] {
            cache.insert(room, Window::default());
        }
        cache.get("a");
        cache.insert("c", Window::default());
        assert!(cache.get("b").is_none());
        assert!(cache.get("a").is_some() && cache.get("c").is_some());
    }
}
