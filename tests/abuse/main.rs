//! The tests that flood or abuse a server, or break what it stands on (a
//! Redis primary killed or paused), and measure what it does then: a binary
//! of their own, so that no functional test (`tests/it/`) runs beside them
//! and skews what they measure. They share `tests/it/common/`.

#[path = "../it/common/mod.rs"]
mod common;

mod abusive_peers;
mod chat_ha;
mod envoy_flood;
mod hostile_connections;
mod nemesis;

/// Runs the tests of this binary one at a time: each measures a server under
/// a flood or a fault, and a neighbour's CPU use would skew it (a Redis
/// failover measured at 8 s alone took 17 s beside the floods).
pub(crate) fn alone() -> std::sync::MutexGuard<'static, ()> {
    static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that panicked while holding it left nothing to protect.
    ALONE.lock().unwrap_or_else(|e| e.into_inner())
}
