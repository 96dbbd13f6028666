//! The health of a server: the serving status of each service it hosts,
//! and the watchers to wake when one changes. `grpc.health.v1.Health`
//! (the health service) and the admin port's `/healthz` read it; the
//! server's drain flips it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::fanout::{Fanout, Subscription, WhenFull};
use crate::proto::health::health_check_response::ServingStatus;

#[derive(Default)]
struct State {
    statuses: HashMap<String, ServingStatus>,
    /// Per service, its Watch calls. Their events are wake-ups: a watcher
    /// reads the status table when woken, so one queued wake-up is enough
    /// and a full queue skips the event ([`WhenFull::Skip`]).
    watchers: HashMap<String, Fanout<()>>,
    shut_down: bool,
}

/// The serving status of each service (`""` is the whole server) and who
/// watches it; cheap to clone, shared by whoever flips a status (the
/// server's drain), the health service and the admin port.
#[derive(Clone, Default)]
pub struct HealthReporter {
    /// Protects the status table and the watchers; never held across an
    /// await (publishing to watchers only `try_send`s).
    state: Arc<Mutex<State>>,
}

impl HealthReporter {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every
        // update is a single insert or retain.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets a service's status (`""` is the whole server) and tells its watchers.
    pub fn set_status(&self, service: &str, status: ServingStatus) {
        let mut state = self.lock();
        state.statuses.insert(service.to_string(), status);
        if let Some(watchers) = state.watchers.get_mut(service) {
            watchers.publish(&());
            if watchers.is_empty() {
                state.watchers.remove(service);
            }
        }
    }

    /// Sets every known service (the whole server included) to `status`.
    pub fn set_all(&self, status: ServingStatus) {
        let services: Vec<String> = self.lock().statuses.keys().cloned().collect();
        for service in &services {
            self.set_status(service, status);
        }
    }

    /// Marks every service NOT_SERVING and ends every Watch call once it has
    /// been told, so that a graceful shutdown is not held up by watchers.
    pub fn shutdown(&self) {
        self.set_all(ServingStatus::NOT_SERVING);
        let mut state = self.lock();
        state.shut_down = true;
        for (_, mut watchers) in state.watchers.drain() {
            watchers.close();
        }
    }

    /// Watch calls running now.
    pub fn watchers(&self) -> usize {
        self.lock().watchers.values().map(Fanout::len).sum()
    }

    /// The status of a service, if the server knows it.
    pub fn status(&self, service: &str) -> Option<ServingStatus> {
        self.lock().statuses.get(service).copied()
    }

    /// A wake-up each time `service`'s status changes; `None` once the
    /// server is shutting down. Ends when the server shuts down.
    pub fn watch(&self, service: &str) -> Option<Subscription<()>> {
        let mut state = self.lock();
        // Calls that ended while no status changed are still listed; drop them here.
        state.watchers.retain(|_, watchers| {
            watchers.remove_gone();
            !watchers.is_empty()
        });
        (!state.shut_down).then(|| {
            state.watchers.entry(service.to_string()).or_insert_with(|| Fanout::new(1, WhenFull::Skip)).subscribe()
        })
    }
}
