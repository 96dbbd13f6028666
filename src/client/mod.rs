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
