//! The tests that flood or abuse a server, or break what it stands on (a
//! Redis primary killed or paused), and measure what it does then: a binary
//! of their own, so that no functional test (`tests/it/`) runs beside them
//! and skews what they measure. They share `tests/it/common/`.

#[path = "../it/common/mod.rs"]
mod common;

mod abusive_peers;
mod chat_ha;
mod hostile_connections;
