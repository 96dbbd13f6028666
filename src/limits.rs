//! What a peer may send. Beyond these limits a call fails with
//! INVALID_ARGUMENT and a message that says which limit, by how much, so a
//! person can fix the request; nothing a peer sends can panic the server.
//!
//! | limit | value | why |
//! |---|---|---|
//! | bytes in one name | 1,024 (`--max-name-bytes`) | a greeting is for a name, not a payload; the benchmark's large-message rows raise it |
//! | names in one `NamesList` | 100,000 | bounds one server-stream's work |
//! | names in one client stream | 100,000 | bounds the `MessagesList` the server keeps in memory |
//! | bytes in one received message | 4 MiB | gRPC's default; larger messages get RESOURCE_EXHAUSTED where the call runtime decodes requests |
//!
//! Bidirectional streams have no count limit: each answer is sent as its
//! request arrives, so the server keeps nothing per name.

use grpcio::{RpcStatus, RpcStatusCode};

fn invalid_argument(message: String) -> RpcStatus {
    RpcStatus::with_message(RpcStatusCode::INVALID_ARGUMENT, message)
}

/// Longest accepted name by default, in UTF-8 bytes (`ServerLimits::max_name_bytes`).
pub const MAX_NAME_BYTES: usize = 1024;
/// Most names accepted in one `NamesList` or one client stream.
pub const MAX_NAMES: usize = 100_000;
/// Largest message the server accepts, in bytes.
pub const MAX_RECEIVE_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Checks one name against `max_bytes`; `index` is its position in the call, for the message.
pub fn check_name(name: &str, index: usize, max_bytes: usize) -> Result<(), RpcStatus> {
    if name.len() > max_bytes {
        return Err(invalid_argument(format!(
            "name #{} is {} bytes long; names are limited to {max_bytes} bytes",
            index + 1,
            name.len()
        )));
    }
    Ok(())
}

/// Checks the count of names in a call.
pub fn check_count(count: usize) -> Result<(), RpcStatus> {
    if count > MAX_NAMES {
        return Err(invalid_argument(format!(
            "{count} names sent; at most {MAX_NAMES} names are accepted in one call"
        )));
    }
    Ok(())
}

/// Checks a whole list of names before any work is done on it.
pub fn check_names(names: &[String], max_name_bytes: usize) -> Result<(), RpcStatus> {
    check_count(names.len())?;
    names.iter().enumerate().try_for_each(|(i, name)| check_name(name, i, max_name_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use grpcio::RpcStatusCode;

    #[test]
    fn names_at_the_limit_pass_and_over_it_fail() {
        assert!(check_name(&"a".repeat(MAX_NAME_BYTES), 0, MAX_NAME_BYTES).is_ok());
        let status = check_name(&"a".repeat(MAX_NAME_BYTES + 1), 2, MAX_NAME_BYTES).unwrap_err();
        assert_eq!(status.code(), RpcStatusCode::INVALID_ARGUMENT);
        assert_eq!(status.message(), "name #3 is 1025 bytes long; names are limited to 1024 bytes");
    }

    #[test]
    fn counts_over_the_limit_fail() {
        assert!(check_count(MAX_NAMES).is_ok());
        assert_eq!(check_count(MAX_NAMES + 1).unwrap_err().code(), RpcStatusCode::INVALID_ARGUMENT);
    }
}
