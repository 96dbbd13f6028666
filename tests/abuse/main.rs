//! The tests that flood or abuse a server and measure it under attack: a
//! binary of their own, so that no functional test (`tests/it/`) runs beside
//! them and skews what they measure. They share `tests/it/common/`.

#[path = "../it/common/mod.rs"]
mod common;

mod abusive_peers;
mod envoy_flood;
mod hostile_connections;
