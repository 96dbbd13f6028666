//! Counts the calls a server is running, so that shutdown and tests can wait
//! for them to end instead of guessing with sleeps.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Counts the calls a server is running, so that shutdown and tests can wait
/// for them to end instead of guessing with sleeps.
#[derive(Debug, Default)]
pub struct CallTracker {
    active: AtomicUsize,
    started: AtomicUsize,
    /// Threads in a `wait_*` call: a call's start and end take the lock and
    /// wake them only when there are any, so that counting costs a call two
    /// atomic increments and nothing more when nobody waits.
    waiters: AtomicUsize,
    /// Paired with `idle`; protects nothing but the wake-up.
    lock: Mutex<()>,
    idle: Condvar,
}

impl CallTracker {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Marks a call as running until the returned guard is dropped.
    pub fn enter(self: &Arc<Self>) -> CallGuard {
        self.active.fetch_add(1, Ordering::SeqCst);
        self.started.fetch_add(1, Ordering::SeqCst);
        self.notify();
        CallGuard(self.clone())
    }

    /// Calls running now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Calls started since the server started.
    pub fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }

    /// Blocks until no call is running, or `timeout` passes; true if idle.
    /// Meant for tests and shutdown, never for a completion-queue thread.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        self.wait_active_at_most(0, timeout)
    }

    /// Blocks until at most `n` calls are running, or `timeout` passes.
    pub fn wait_active_at_most(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(|| self.active() <= n, timeout)
    }

    /// Blocks until at least `n` calls have started, or `timeout` passes.
    pub fn wait_started(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(|| self.started() >= n, timeout)
    }

    fn wait_until(&self, done: impl Fn() -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        // Counted before the first check: a change made after that check
        // sees the waiter and wakes it (both sides are SeqCst).
        self.waiters.fetch_add(1, Ordering::SeqCst);
        // A poisoned lock only means a waiter panicked; the counters are atomic.
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let met = loop {
            if done() {
                break true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            guard = self.idle.wait_timeout(guard, left).unwrap_or_else(|e| e.into_inner()).0;
        };
        drop(guard);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        met
    }

    fn notify(&self) {
        if self.waiters.load(Ordering::SeqCst) == 0 {
            return;
        }
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.idle.notify_all();
    }
}

/// Keeps a call counted as running; see [`CallTracker::enter`].
#[derive(Debug)]
pub struct CallGuard(Arc<CallTracker>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
        self.0.notify();
    }
}
