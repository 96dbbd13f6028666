//! Clients. Channels are built in one place, [`channel`] (one [`Connector`]
//! for targets, TLS, balancing, retries, health checking, keepalive and
//! pooling); each file here is the client of one service or tool.
//!
//! - [`greet`]: `greet_service.GreetService` and `helloworld.Greeter`, one `async fn` per call pattern.
//! - [`route_guide`]: the four `routeguide.RouteGuide` calls, like grpc-go's client.
//! - [`interop`]: the interop suite's test cases, one function each.
//! - [`load`]: `client load`, concurrent unary calls or bidi streams over a pool, with a summary.

pub mod channel;
pub mod greet;
pub mod interop;
pub mod load;
pub mod route_guide;

pub use channel::{connect, Connector, LbPolicy, Pool, RetryPolicy, ServiceConfig};
pub use greet::{half_close, settle, Client, DEMO_NAMES};
