//! Clients. Channels are built in one place, [`channel`] (one [`Connector`]
//! for targets, TLS, balancing, retries, health checking, keepalive and
//! pooling); each file here is the client of one service or tool.
//!
//! - [`chat`]: `client chat`, one user in one `chat.v1.Chat` room, resuming
//!   on the next address when its server goes away.
//! - [`greet`]: `greet_service.GreetService` and `helloworld.Greeter`, one `async fn` per call pattern.
//! - [`route_guide`]: the four `routeguide.RouteGuide` calls, like grpc-go's client.
//! - [`interop`]: the interop suite's test cases, one function each.
//! - [`load`]: `client load`, concurrent unary calls or bidi streams over a pool, with a summary.
//! - [`chat_bench`]: `chat-bench`, fan-out throughput and latency of a running chat.

pub mod channel;
pub mod chat;
pub mod chat_bench;
mod error;
pub mod greet;
pub mod interop;
pub mod load;
pub mod route_guide;
mod token;

pub use channel::{connect, Connector, LbPolicy, Pool, RetryPolicy, ServiceConfig};
pub use error::CliError;
pub use greet::{half_close, settle, Client, DEMO_NAMES};
pub use token::{bearer_metadata, read_token_file};

/// Ends a client process with `code` at once, without the C library's exit
/// handlers. grpcio starts the gRPC C core (`grpc_init`) and never shuts it
/// down, so the core's threads may still be using OpenSSL when `exit` runs
/// OpenSSL's cleanup: the interop client over TLS once died of SIGSEGV there,
/// after its last case had passed. Standard output and error are flushed
/// first; nothing else needs running at that point.
pub fn exit(code: u8) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` takes no pointers and ends the process; nothing runs after it.
    unsafe { libc::_exit(i32::from(code)) }
}
