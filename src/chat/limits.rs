//! What a chat peer may send. Beyond a limit the operation fails with
//! [`ChatError::InvalidArgument`] and a message that says what to change.
//!
//! | limit | value |
//! |---|---|
//! | room and user names | 1 to 64 bytes of printable UTF-8 (no control characters, not only spaces) |
//! | message text | 1 to 4,096 bytes, no control characters but newline and tab |
//! | messages replayed by a fresh join, or returned by `History` | 1,000 |
//! | messages a resume may replay | 10,000 (more: OUT_OF_RANGE, join afresh) |

use super::types::ChatError;

fn invalid_argument(message: impl Into<String>) -> ChatError {
    ChatError::InvalidArgument(message.into())
}

/// Longest room or user name, in UTF-8 bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Longest message text, in UTF-8 bytes.
pub const MAX_TEXT_BYTES: usize = 4096;
/// Most messages a fresh join replays or a `History` call returns.
pub const MAX_HISTORY: usize = 1000;
/// Most messages a resume replays.
pub const MAX_RESUME: u64 = 10_000;
/// Messages a `History` call returns when it does not say.
pub const DEFAULT_HISTORY_LIMIT: usize = 50;

/// Checks a room or user name; `what` is "room" or "user".
pub fn check_name(what: &str, name: &str) -> Result<(), ChatError> {
    if name.trim().is_empty() {
        return Err(invalid_argument(format!("{what} is empty; give a {what} name")));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(invalid_argument(format!(
            "{what} name is {} bytes long; {what} names are limited to {MAX_NAME_BYTES} bytes",
            name.len()
        )));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(invalid_argument(format!(
            "{what} name {name:?} contains the control character {:?}; use printable characters",
            c
        )));
    }
    Ok(())
}

/// Checks a message's text.
pub fn check_text(text: &str) -> Result<(), ChatError> {
    if text.is_empty() {
        return Err(invalid_argument("message text is empty"));
    }
    if text.len() > MAX_TEXT_BYTES {
        return Err(invalid_argument(format!(
            "message text is {} bytes long; messages are limited to {MAX_TEXT_BYTES} bytes",
            text.len()
        )));
    }
    if let Some(c) = text.chars().find(|&c| c.is_control() && c != '\n' && c != '\t') {
        return Err(invalid_argument(format!(
            "message text contains the control character {c:?}; only newline and tab are allowed"
        )));
    }
    Ok(())
}

/// Checks how many messages a join or a History call asks for.
pub fn check_history(count: u32) -> Result<usize, ChatError> {
    let count = count as usize;
    if count > MAX_HISTORY {
        return Err(invalid_argument(format!("{count} messages of history asked for; at most {MAX_HISTORY}")));
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_printable_non_empty_and_bounded() {
        assert!(check_name("room", "lobby").is_ok());
        assert!(check_name("user", "Zoë Ω").is_ok());
        assert_eq!(check_name("room", " ").unwrap_err().to_string(), "room is empty; give a room name");
        let long = "r".repeat(MAX_NAME_BYTES + 1);
        assert_eq!(
            check_name("room", &long).unwrap_err().to_string(),
            "room name is 65 bytes long; room names are limited to 64 bytes"
        );
        let error = check_name("user", "a\u{7}b").unwrap_err();
        assert!(matches!(error, ChatError::InvalidArgument(_)), "{error:?}");
        assert_eq!(
            error.to_string(),
            "user name \"a\\u{7}b\" contains the control character '\\u{7}'; use printable characters"
        );
    }

    #[test]
    fn texts_must_be_non_empty_bounded_and_without_control_characters() {
        assert!(check_text("hi\tthere\nsecond line").is_ok());
        assert!(check_text(&"x".repeat(MAX_TEXT_BYTES)).is_ok());
        assert_eq!(check_text("").unwrap_err().to_string(), "message text is empty");
        assert_eq!(
            check_text(&"x".repeat(MAX_TEXT_BYTES + 1)).unwrap_err().to_string(),
            "message text is 4097 bytes long; messages are limited to 4096 bytes"
        );
        assert!(check_text("bell\u{7}").is_err());
    }

    #[test]
    fn history_counts_are_bounded() {
        assert_eq!(check_history(1000).unwrap(), 1000);
        assert!(check_history(1001).is_err());
    }
}
