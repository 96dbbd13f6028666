//! Where errors become gRPC statuses (server side) and one-line CLI errors
//! (client side).

use std::fmt;
use std::future::Future;

use grpcio::{ClientStreamingSinkResult, Error, RpcStatus, RpcStatusCode, UnarySinkResult};
use log::{debug, warn};

use crate::call::{ClientStreamingSink, UnarySink};
use crate::codec::MessageTooLarge;

/// Why a handler stopped early.
#[derive(Debug)]
pub enum CallError {
    /// The call must end with this status (bad input, a limit, ...).
    Status(RpcStatus),
    /// The transport failed: the peer went away, the deadline passed, or the
    /// call was cancelled. Nothing can be sent back any more.
    Transport(Error),
}

impl From<Error> for CallError {
    /// A request over the receive limit (src/codec.rs) ends the call with
    /// RESOURCE_EXHAUSTED; any other request on a stream that does not decode
    /// is the peer's mistake, and the call can still say so; anything else
    /// ended the transport. (Unary and server-streaming requests are decoded
    /// before the handler runs: grpcio ends an undecodable one with INTERNAL,
    /// the generated wrapper an oversized one with RESOURCE_EXHAUSTED.)
    fn from(e: Error) -> Self {
        match e {
            Error::Codec(why) => match why.downcast_ref::<MessageTooLarge>() {
                Some(too_large) => CallError::Status(too_large.status()),
                None => CallError::Status(invalid_argument(format!("cannot decode the request: {why}"))),
            },
            other => CallError::Transport(other),
        }
    }
}

impl From<RpcStatus> for CallError {
    fn from(s: RpcStatus) -> Self {
        CallError::Status(s)
    }
}

impl From<crate::chat::ChatError> for CallError {
    fn from(e: crate::chat::ChatError) -> Self {
        use crate::chat::ChatError;
        let code = match e {
            ChatError::Unavailable(_) | ChatError::ShuttingDown => RpcStatusCode::UNAVAILABLE,
            ChatError::OutOfRange(_) => RpcStatusCode::OUT_OF_RANGE,
        };
        CallError::Status(RpcStatus::with_message(code, e.to_string()))
    }
}

/// INVALID_ARGUMENT with a message a person can act on.
pub fn invalid_argument(message: impl Into<String>) -> RpcStatus {
    RpcStatus::with_message(RpcStatusCode::INVALID_ARGUMENT, message.into())
}

/// The canonical name of a status code, e.g. `UNAVAILABLE`.
pub fn code_name(code: RpcStatusCode) -> String {
    // grpcio formats codes as "14-UNAVAILABLE".
    let text = format!("{code:?}");
    match text.split_once('-') {
        Some((_, name)) => name.to_string(),
        None => text,
    }
}

/// Logs how a call that could no longer report its outcome ended.
/// A peer that went away is routine (debug); anything else is a warning.
pub fn log_transport_error(method: &str, error: &Error) {
    match error {
        Error::RemoteStopped | Error::RpcFinished(_) => debug!("{method}: peer went away: {error}"),
        Error::RpcFailure(s)
            if s.code() == RpcStatusCode::CANCELLED || s.code() == RpcStatusCode::DEADLINE_EXCEEDED =>
        {
            debug!("{method}: call ended by the peer: {}", code_name(s.code()))
        }
        other => warn!("{method}: {other}"),
    }
}

/// A sink that ends its call with one message or a status: the unary and
/// client-streaming sinks.
pub trait ReplySink<T> {
    type Sent: Future<Output = grpcio::Result<()>>;
    fn succeed(self, message: T) -> Self::Sent;
    fn fail_with(self, status: RpcStatus) -> Self::Sent;
}

impl<T> ReplySink<T> for UnarySink<T> {
    type Sent = UnarySinkResult;
    fn succeed(self, message: T) -> Self::Sent {
        self.success(message)
    }
    fn fail_with(self, status: RpcStatus) -> Self::Sent {
        self.fail(status)
    }
}

impl<T> ReplySink<T> for ClientStreamingSink<T> {
    type Sent = ClientStreamingSinkResult;
    fn succeed(self, message: T) -> Self::Sent {
        self.success(message)
    }
    fn fail_with(self, status: RpcStatus) -> Self::Sent {
        self.fail(status)
    }
}

/// Ends a unary or client-streaming call with `result`: the message, or the
/// status; a transport error (nothing can be sent any more) is only logged.
pub async fn reply<T, S: ReplySink<T>>(method: &str, sink: S, result: Result<T, CallError>) {
    let sent = match result {
        Ok(message) => sink.succeed(message).await,
        Err(CallError::Status(status)) => {
            debug!("{method}: ending with {}: {}", code_name(status.code()), status.message());
            sink.fail_with(status).await
        }
        Err(CallError::Transport(e)) => Err(e),
    };
    if let Err(e) = sent {
        log_transport_error(method, &e);
    }
}

/// Ends a call whose responses are streamed, after its handler returned
/// `result`: a status goes back through `fail`, a transport error is only logged.
pub async fn finish_stream<F>(method: &str, result: Result<(), CallError>, fail: impl FnOnce(RpcStatus) -> F)
where
    F: Future<Output = grpcio::Result<()>>,
{
    match result {
        Ok(()) => {}
        Err(CallError::Status(status)) => {
            debug!("{method}: ending with {}: {}", code_name(status.code()), status.message());
            if let Err(e) = fail(status).await {
                log_transport_error(method, &e);
            }
        }
        Err(CallError::Transport(e)) => log_transport_error(method, &e),
    }
}

/// A client-side failure, printed as one line: `error: <CODE>: <message>`.
#[derive(Debug)]
pub struct CliError {
    pub code: String,
    pub message: String,
}

impl CliError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        CliError { code: code.into(), message: message.into() }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keep it to one line whatever the peer put in its message.
        let message = self.message.replace(['\n', '\r'], " ");
        write!(f, "error: {}: {}", self.code, message)
    }
}

impl std::error::Error for CliError {}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        match e {
            Error::RpcFailure(s) => {
                let message = if s.message().is_empty() { "(no message)".to_string() } else { s.message().to_string() };
                CliError::new(code_name(s.code()), message)
            }
            Error::RpcFinished(Some(s)) => CliError::new(code_name(s.code()), s.message().to_string()),
            Error::RemoteStopped | Error::RpcFinished(None) => {
                CliError::new("UNAVAILABLE", "the server closed the call")
            }
            Error::Codec(e) => CliError::new("INTERNAL", format!("cannot decode a message: {e}")),
            other => CliError::new("INTERNAL", other.to_string()),
        }
    }
}
