//! Mentions: which users a message notifies, and the notifications
//! themselves, kept as messages of a per-user inbox room.
//!
//! A user's notifications are the messages of the room [`inbox`] names: a
//! name no client can give (it starts with a control character, which
//! [`super::limits::check_name`] refuses), so only the store writes there.
//! Being a room, an inbox gets everything rooms have on every backend: a
//! gap-free sequence of its own, an epoch, a capped history, resume, and
//! live delivery across replicas through the broker's reader.
//! The rule is spelled out in `protos/chat.proto` (`Notifications`).

use super::limits::{check_name, MAX_NAME_BYTES};
use super::types::ChatError;
use crate::proto::chat::Message;

/// Most distinct users one message may mention.
pub const MAX_MENTIONS: usize = 8;
/// Notifications kept per user (older ones are trimmed).
pub const KEPT: usize = 1000;

/// What starts an inbox's room name.
const INBOX: &str = "\u{1}inbox:";

/// Characters a mention's name never ends with: the punctuation after it.
const TRAILING: &[char] = &['.', ',', ':', ';', '!', '?', ')', '\'', '"'];

/// The room that holds `user`'s notifications.
pub fn inbox(user: &str) -> String {
    format!("{INBOX}{user}")
}

/// Whether `room` is an inbox (its history is then capped at [`KEPT`]).
pub fn is_inbox(room: &str) -> bool {
    room.starts_with(INBOX)
}

/// The distinct users `text`, written by `author`, mentions, in the order
/// of their first mention; more than [`MAX_MENTIONS`] is refused.
pub fn mentions(text: &str, author: &str) -> Result<Vec<String>, ChatError> {
    let mut names: Vec<String> = Vec::new();
    let mut previous: Option<char> = None;
    for (i, c) in text.char_indices() {
        let starts = c == '@' && previous.map_or(true, char::is_whitespace);
        previous = Some(c);
        if !starts {
            continue;
        }
        let rest = &text[i + 1..];
        let word = rest.split(char::is_whitespace).next().unwrap_or("");
        let name = word.trim_end_matches(TRAILING);
        if name == author || name.len() > MAX_NAME_BYTES || check_name("user", name).is_err() {
            continue;
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    if names.len() > MAX_MENTIONS {
        return Err(ChatError::InvalidArgument(format!(
            "the message mentions {} users; at most {MAX_MENTIONS} per message",
            names.len()
        )));
    }
    Ok(names)
}

/// The notification of `message` (stored, with its seq) for the inbox's
/// owner: the author and text as they are, and where it was said in
/// `client_id` (`<seq>:<room>`), which [`source`] reads back.
pub fn notification(message: &Message, mentioned: &str) -> Message {
    Message {
        room: inbox(mentioned),
        seq: 0,
        user: message.user.clone(),
        text: message.text.clone(),
        time_unix_ms: message.time_unix_ms,
        client_id: source_id(message.seq, &message.room),
        ..Default::default()
    }
}

/// How a notification names the message it is about.
pub fn source_id(seq: u64, room: &str) -> String {
    format!("{seq}:{room}")
}

/// The room and seq of the message a notification (an inbox's message) is about.
pub fn source(notification: &Message) -> Option<(String, u64)> {
    let (seq, room) = notification.client_id.split_once(':')?;
    Some((room.to_string(), seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<String> {
        mentions(text, "ann").unwrap()
    }

    #[test]
    fn a_mention_is_an_at_sign_at_a_word_start_and_ends_before_whitespace_or_trailing_punctuation() {
        assert_eq!(names("@bob hi"), ["bob"]);
        assert_eq!(names("hi @bob, @cy! (@dee) @bob"), ["bob", "cy"], "a mention after \"(\" does not start a word");
        assert_eq!(names("@bob.smith and @bob."), ["bob.smith", "bob"]);
        assert_eq!(names("mail@bob and @ alone"), Vec::<String>::new());
        assert_eq!(names("@Bob @bob"), ["Bob", "bob"], "names are case-sensitive");
        assert_eq!(names("@ann talks to herself"), Vec::<String>::new(), "no self-mention");
        assert_eq!(names("line\n@bob\t@cy"), ["bob", "cy"]);
    }

    #[test]
    fn too_many_distinct_mentions_are_refused_and_repeats_count_once() {
        let eight: String = (0..MAX_MENTIONS).map(|i| format!("@u{i} @u{i} ")).collect();
        assert_eq!(names(&eight).len(), MAX_MENTIONS);
        let nine = format!("{eight} @u99");
        assert_eq!(
            mentions(&nine, "ann").unwrap_err().to_string(),
            "the message mentions 9 users; at most 8 per message"
        );
    }

    #[test]
    fn a_notification_names_its_message_and_inboxes_are_not_valid_room_names() {
        let message =
            Message { room: "r:1".into(), seq: 7, user: "ann".into(), text: "@bob".into(), ..Default::default() };
        let note = notification(&message, "bob");
        assert_eq!(note.room, inbox("bob"));
        assert!(is_inbox(&note.room) && !is_inbox("bob"));
        assert_eq!(source(&note), Some(("r:1".to_string(), 7)));
        assert!(check_name("room", &inbox("bob")).is_err());
    }
}
