//! The functional integration tests, one module per concern, linked into one
//! binary (each test binary links the whole gRPC C core). The tests that flood
//! or abuse the machine are in `tests/abuse/`, so that they never run beside
//! these; `tests/rapid_reset.rs` is a binary of its own. Shared helpers are in
//! `common/`.

mod common;

mod auth;
mod bad_input;
mod chat_cli;
mod chat_cluster;
mod chat_etcd;
mod chat_fanout;
mod chat_history;
mod chat_identity;
mod chat_notifications;
mod chat_subscribe;
mod cli;
mod decode_props;
mod default_front;
mod envoy;
mod envoy_web;
mod greet_patterns;
mod health;
mod health_probe;
mod image;
mod interop_cases;
mod k8s;
mod large_messages;
mod layers;
mod metrics;
mod proxy;
mod ready_file;
mod receive_limit;
mod reflection;
mod route_guide;
mod scale_out;
mod stream_timing;
mod tls;
mod tracing;
mod web_chat;
mod xds;
