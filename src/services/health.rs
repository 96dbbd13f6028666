//! `grpc.health.v1.Health`: the standard health checking protocol.
//!
//! (grpcio-health 0.13's protobuf-3 code was generated for rust-protobuf 3.2
//! and does not build against 3.7, the first version without
//! RUSTSEC-2024-0437, so the service is implemented here.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::prelude::*;
use grpcio::{RpcContext, RpcStatus, RpcStatusCode, WriteFlags};

use crate::call::{ServerStreamingSink, UnarySink};

use crate::fanout::{Fanout, WhenFull};
use crate::proto::health::health_check_response::ServingStatus;
use crate::proto::health::{HealthCheckRequest, HealthCheckResponse};
use crate::proto::health_grpc::Health;
use crate::status::{log_transport_error, reply, CallError};

#[derive(Default)]
struct State {
    statuses: HashMap<String, ServingStatus>,
    /// Per service, its Watch calls. Their events are wake-ups: a watcher
    /// reads the status table when woken, so one queued wake-up is enough
    /// and a full queue skips the event ([`WhenFull::Skip`]).
    watchers: HashMap<String, Fanout<()>>,
    shut_down: bool,
}

/// Serves `grpc.health.v1.Health`; clones share one status table.
#[derive(Clone, Default)]
pub struct HealthService {
    /// Protects the status table and the watchers; never held across an
    /// await (publishing to watchers only `try_send`s).
    state: Arc<Mutex<State>>,
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse { status: status.into(), ..Default::default() }
}

impl HealthService {
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
}

impl Health for HealthService {
    /// The status now; NOT_FOUND for a service the server does not know.
    fn check(&mut self, ctx: RpcContext, req: HealthCheckRequest, sink: UnarySink<HealthCheckResponse>) {
        let status = self.status(&req.service);
        let answer = status.map(response).ok_or_else(|| {
            CallError::Status(RpcStatus::with_message(
                RpcStatusCode::NOT_FOUND,
                format!("unknown service {:?}", req.service),
            ))
        });
        ctx.spawn(reply("Health/Check", sink, answer));
    }

    /// Sends the status now (SERVICE_UNKNOWN for an unknown service), then
    /// each change, until the client leaves or the server shuts down.
    fn watch(&mut self, ctx: RpcContext, req: HealthCheckRequest, mut sink: ServerStreamingSink<HealthCheckResponse>) {
        let service = req.service;
        let subscription = {
            let mut state = self.lock();
            // Calls that ended while no status changed are still listed; drop them here.
            state.watchers.retain(|_, watchers| {
                watchers.remove_gone();
                !watchers.is_empty()
            });
            // After shutdown: send the status once and end.
            (!state.shut_down).then(|| {
                state.watchers.entry(service.clone()).or_insert_with(|| Fanout::new(1, WhenFull::Skip)).subscribe()
            })
        };
        let health = self.clone();
        ctx.spawn(async move {
            let result = async {
                let mut sent = None;
                loop {
                    let now = health.status(&service).unwrap_or(ServingStatus::SERVICE_UNKNOWN);
                    if sent != Some(now) {
                        sink.send((response(now), WriteFlags::default())).await?;
                        sent = Some(now);
                    }
                    let woken = match &subscription {
                        Some(subscription) => subscription.events.recv().await.is_ok(),
                        None => false,
                    };
                    // Not woken: the server is shutting down; its last word was sent above.
                    if !woken {
                        break;
                    }
                }
                sink.close().await
            }
            .await;
            if let Err(e) = result {
                log_transport_error("Health/Watch", &e);
            }
        });
    }
}
