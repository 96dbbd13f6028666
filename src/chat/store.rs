//! Chat history in SQLite (embedded mode): one table, one row a message,
//! keyed by room and sequence number. Only the hub thread uses it, so its
//! blocking calls never run on a completion-queue thread.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection};

use crate::proto::chat::Message;

/// File name of the history under `--data-dir`.
pub const FILE_NAME: &str = "chat.sqlite3";

/// The SQLite history.
pub struct Store {
    conn: Connection,
    path: Option<PathBuf>,
    /// Minted when the history was created: every room's numbering starts
    /// with it, so it is every room's epoch.
    epoch: String,
}

fn describe(path: Option<&Path>) -> String {
    path.map_or_else(|| "the in-memory chat history".to_string(), |p| format!("chat history {}", p.display()))
}

impl Store {
    /// Opens (creating if needed) `dir/chat.sqlite3`, or an in-memory
    /// history for `None`. The file is locked for this server alone: a
    /// second server on the same data dir fails here, not at its first write.
    pub fn open(dir: Option<&Path>) -> Result<Store, String> {
        let path = dir.map(|d| d.join(FILE_NAME));
        let conn = match (dir, &path) {
            (Some(dir), Some(path)) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create the data dir {}: {e}", dir.display()))?;
                Connection::open(path)
            }
            _ => Connection::open_in_memory(),
        }
        .map_err(|e| format!("cannot open {}: {e}", describe(path.as_deref())))?;
        let mut store = Store { conn, path, epoch: String::new() };
        store.init().map_err(|e| {
            format!(
                "cannot use {}: {e} (is another server using the same --data-dir?)",
                describe(store.path.as_deref())
            )
        })?;
        Ok(store)
    }

    fn init(&mut self) -> rusqlite::Result<()> {
        self.conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        self.conn.pragma_update(None, "journal_mode", "WAL")?;
        // A crash loses at most the last transactions, never the file.
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        self.conn.execute_batch(
            "BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS messages (
                 room TEXT NOT NULL,
                 seq INTEGER NOT NULL,
                 user TEXT NOT NULL,
                 text TEXT NOT NULL,
                 time_unix_ms INTEGER NOT NULL,
                 client_id TEXT NOT NULL,
                 PRIMARY KEY (room, seq)
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
             COMMIT;",
        )?;
        self.conn
            .execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?1)", [super::broker::new_epoch()])?;
        self.epoch = self.conn.query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |row| row.get(0))?;
        Ok(())
    }

    /// The epoch of every room in this history.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Stores `messages` in one transaction: all or none.
    pub fn append(&mut self, messages: &[Message]) -> Result<(), String> {
        let mut write = || -> rusqlite::Result<()> {
            let tx = self.conn.transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO messages (room, seq, user, text, time_unix_ms, client_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for m in messages {
                    insert.execute(params![m.room, m.seq as i64, m.user, m.text, m.time_unix_ms, m.client_id])?;
                }
            }
            tx.commit()
        };
        write().map_err(|e| format!("cannot store messages in {}: {e}", describe(self.path.as_deref())))
    }

    /// The last `n` messages of `room`, oldest first, and the room's last
    /// sequence number (0 for a room without messages).
    pub fn recent(&mut self, room: &str, n: usize) -> Result<(Vec<Message>, u64), String> {
        let read = || -> rusqlite::Result<(Vec<Message>, u64)> {
            let last: Option<i64> =
                self.conn.query_row("SELECT MAX(seq) FROM messages WHERE room = ?1", [room], |row| row.get(0))?;
            let last = last.unwrap_or(0) as u64;
            let messages = self.select(room, last.saturating_sub(n as u64), last)?;
            Ok((messages, last))
        };
        read().map_err(|e| self.read_error(e))
    }

    /// The messages of `room` with `after < seq <= upto`, oldest first.
    pub fn range(&mut self, room: &str, after: u64, upto: u64) -> Result<Vec<Message>, String> {
        self.select(room, after, upto).map_err(|e| self.read_error(e))
    }

    fn select(&self, room: &str, after: u64, upto: u64) -> rusqlite::Result<Vec<Message>> {
        let mut query = self.conn.prepare_cached(
            "SELECT seq, user, text, time_unix_ms, client_id FROM messages
             WHERE room = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq",
        )?;
        let rows = query.query_map(params![room, after as i64, upto as i64], |row| {
            Ok(Message {
                room: room.to_string(),
                seq: row.get::<_, i64>(0)? as u64,
                user: row.get(1)?,
                text: row.get(2)?,
                time_unix_ms: row.get(3)?,
                client_id: row.get(4)?,
                ..Default::default()
            })
        })?;
        rows.collect()
    }

    fn read_error(&self, e: rusqlite::Error) -> String {
        format!("cannot read {}: {e}", describe(self.path.as_deref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(room: &str, seq: u64) -> Message {
        Message { room: room.into(), seq, user: "u".into(), text: format!("m{seq}"), ..Default::default() }
    }

    #[test]
    fn messages_survive_reopening_and_rooms_stay_apart() {
        let dir = std::env::temp_dir().join(format!("greet-store-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let epoch;
        {
            let mut store = Store::open(Some(&dir)).unwrap();
            epoch = store.epoch().to_string();
            store.append(&(1..=5).map(|s| message("a", s)).collect::<Vec<_>>()).unwrap();
            store.append(&[message("b", 1)]).unwrap();
            assert!(Store::open(Some(&dir)).is_err(), "a second server cannot share the history");
        }
        let mut store = Store::open(Some(&dir)).unwrap();
        assert_eq!(store.epoch(), epoch, "the epoch is kept with the history");
        let (recent, last) = store.recent("a", 2).unwrap();
        assert_eq!(last, 5);
        assert_eq!(recent.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![4, 5]);
        assert_eq!(store.range("a", 1, 3).unwrap().iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), ["m2", "m3"]);
        assert_eq!(store.recent("b", 10).unwrap().1, 1);
        assert_eq!(store.recent("none", 10).unwrap(), (Vec::new(), 0));
        assert!(store.append(&[message("a", 5)]).is_err(), "a sequence number is stored once");
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
