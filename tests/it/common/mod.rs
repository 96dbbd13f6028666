//! Shared test set-up: a server on a free loopback port and a client for it.
#![allow(dead_code)]

use std::time::Duration;

use greet::client::{self, Client};
use greet::server::{self, RunningServer, ServerConfig};

/// A server on 127.0.0.1:0 whose server streams wait `interval` after each send.
pub fn start_server(interval: Duration) -> RunningServer {
    let config = ServerConfig {
        addr: "127.0.0.1:0".to_string(),
        stream_interval: interval,
        completion_queues: 2,
        ..Default::default()
    };
    server::start(&config).expect("a server starts on a free loopback port")
}

/// A server on 127.0.0.1:0 with one completion queue that names itself
/// `instance` in every response's `x-served-by` header.
pub fn start_instance(instance: &str) -> RunningServer {
    let config = ServerConfig {
        addr: "127.0.0.1:0".to_string(),
        stream_interval: Duration::ZERO,
        completion_queues: 1,
        instance_id: Some(instance.to_string()),
        ..Default::default()
    };
    server::start(&config).expect("a server starts on a free loopback port")
}

/// A client for `server` with a generous deadline.
pub fn client_for(server: &RunningServer) -> Client {
    Client::new(client::connect(server.addr()), Duration::from_secs(30))
}

pub fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

pub fn demo_names() -> Vec<String> {
    names(client::DEMO_NAMES)
}

/// "Hello <name>" for each name.
pub fn greetings(names: &[String]) -> Vec<String> {
    names.iter().map(|n| format!("Hello {n}")).collect()
}

/// The code of a failed call.
pub fn code_of(error: grpcio::Error) -> (grpcio::RpcStatusCode, String) {
    match error {
        grpcio::Error::RpcFailure(status) => (status.code(), status.message().to_string()),
        other => panic!("expected a status from the server, got {other:?}"),
    }
}

/// A unary method that sends and receives raw bytes: any path, any payload.
pub fn raw_method(name: &'static str) -> grpcio::Method<Vec<u8>, Vec<u8>> {
    raw::method(grpcio::MethodType::Unary, name)
}

mod certs;
pub mod chat;
pub mod envoy;
pub mod etcd;
mod gotools;
pub mod h2;
pub mod process;
pub mod raw;

// Each test file uses some of these.
#[allow(unused_imports)]
pub use certs::*;
#[allow(unused_imports)]
pub use gotools::*;
