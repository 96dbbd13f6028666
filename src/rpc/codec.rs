//! The server's receive-size limit, enforced where requests are decoded.
//!
//! The C core's message-size filter is the costliest part of its per-message
//! path in grpcio 0.13's core 1.56 (about a quarter of the instructions of a
//! streamed message, bench/README.md), so the server leaves it out
//! (`grpc.max_receive_message_length = -1`) and the generated stubs decode
//! requests through [`de_request`] and [`de_stream_request`] instead of
//! `grpcio::pb_de`. Both compare the message's length with the limit before
//! decoding a byte; the length is the one the core hands over, after any
//! decompression, so a small compressed message that inflates past the limit
//! is refused too. The message has already been received whole by then, as it
//! had been when the core's filter checked it.
//!
//! The limit is per server: each server's environment sets it on its own
//! completion-queue threads ([`set_receive_limit`]), where grpcio decodes
//! requests; any other thread decodes with the default, 4 MiB.

use std::cell::Cell;
use std::fmt;

use grpcio::{MessageReader, RpcStatus, RpcStatusCode};
use protobuf::Message;

use crate::limits::MAX_RECEIVE_MESSAGE_BYTES;

thread_local! {
    /// The receive limit of the server whose completion-queue thread this is.
    static RECEIVE_LIMIT: Cell<usize> = const { Cell::new(MAX_RECEIVE_MESSAGE_BYTES) };
    /// An oversized request that [`de_request`] decoded as empty, for the
    /// call runtime to fail (it runs right after, on this thread).
    static REJECTED: Cell<Option<MessageTooLarge>> = const { Cell::new(None) };
}

/// A received message over the receive limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageTooLarge {
    /// Its length in bytes, decompressed.
    pub len: usize,
    /// The limit it broke.
    pub limit: usize,
}

impl fmt::Display for MessageTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "received a message of {} bytes; this server accepts at most {} bytes", self.len, self.limit)
    }
}

impl std::error::Error for MessageTooLarge {}

impl MessageTooLarge {
    /// The status the call ends with: RESOURCE_EXHAUSTED, as gRPC answers it.
    pub fn status(&self) -> RpcStatus {
        RpcStatus::with_message(RpcStatusCode::RESOURCE_EXHAUSTED, self.to_string())
    }
}

/// Sets the receive limit of the calling thread; a server's environment
/// calls it on each of its completion-queue threads as they start.
pub fn set_receive_limit(bytes: usize) {
    RECEIVE_LIMIT.with(|limit| limit.set(bytes));
}

fn check(reader: &MessageReader) -> Result<(), MessageTooLarge> {
    let limit = RECEIVE_LIMIT.with(Cell::get);
    match reader.len() {
        len if len > limit => Err(MessageTooLarge { len, limit }),
        _ => Ok(()),
    }
}

/// Decodes the request of a unary or server-streaming call. grpcio ends a
/// call whose single request fails to decode with INTERNAL, so an oversized
/// one is decoded as an empty message instead and left for the generated
/// runtime to fail with RESOURCE_EXHAUSTED ([`take_rejected`]) before the
/// handler sees it.
pub fn de_request<T: Message>(reader: MessageReader) -> grpcio::Result<T> {
    match check(&reader) {
        Ok(()) => grpcio::pb_de(reader),
        Err(too_large) => {
            REJECTED.with(|rejected| rejected.set(Some(too_large)));
            Ok(T::new())
        }
    }
}

/// Decodes a request of a client-streaming or bidi call: an oversized one is
/// an error from the request stream, which the call runtime turns
/// into RESOURCE_EXHAUSTED.
pub fn de_stream_request<T: Message>(reader: MessageReader) -> grpcio::Result<T> {
    check(&reader).map_err(|too_large| grpcio::Error::Codec(Box::new(too_large)))?;
    grpcio::pb_de(reader)
}

/// The status for the request [`de_request`] just refused on this thread, if
/// it refused one; clears it.
pub fn take_rejected() -> Option<RpcStatus> {
    REJECTED.with(Cell::take).map(|too_large| too_large.status())
}
