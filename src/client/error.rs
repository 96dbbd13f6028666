//! How a failed call becomes one line on the command line:
//! `error: <CODE>: <message>`.

use std::fmt;

use grpcio::Error;

use crate::wire::code_name;

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
