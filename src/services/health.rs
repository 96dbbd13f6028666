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

use crate::proto::health::health_check_response::ServingStatus;
use crate::proto::health::{HealthCheckRequest, HealthCheckResponse};
use crate::proto::health_grpc::Health;
use crate::status::{log_transport_error, reply, CallError};

/// One Watch call: the status to send next, and a wake-up.
struct Watcher {
    service: String,
    latest: Arc<Mutex<ServingStatus>>,
    wake: async_channel::Sender<()>,
}

#[derive(Default)]
struct State {
    statuses: HashMap<String, ServingStatus>,
    watchers: Vec<Watcher>,
    shut_down: bool,
}

/// Serves `grpc.health.v1.Health`; clones share one status table.
#[derive(Clone, Default)]
pub struct HealthService {
    /// Protects the status table and the list of watchers; never held
    /// across an await or a send.
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
        state.watchers.retain(|w| !w.wake.is_closed());
        for watcher in state.watchers.iter().filter(|w| w.service == service) {
            *watcher.latest.lock().unwrap_or_else(|e| e.into_inner()) = status;
            // A full channel already holds a wake-up that will read `latest`.
            let _ = watcher.wake.try_send(());
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
        for watcher in state.watchers.drain(..) {
            watcher.wake.close();
        }
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
        let (wake, woken) = async_channel::bounded(1);
        let latest;
        {
            let mut state = self.lock();
            let now = state.statuses.get(&req.service).copied().unwrap_or(ServingStatus::SERVICE_UNKNOWN);
            latest = Arc::new(Mutex::new(now));
            if !state.shut_down {
                state.watchers.retain(|w| !w.wake.is_closed());
                state.watchers.push(Watcher { service: req.service.clone(), latest: latest.clone(), wake });
            }
        }
        ctx.spawn(async move {
            let result = async {
                let mut sent = None;
                loop {
                    let now = *latest.lock().unwrap_or_else(|e| e.into_inner());
                    if sent != Some(now) {
                        sink.send((response(now), WriteFlags::default())).await?;
                        sent = Some(now);
                    }
                    // Closed: the server is shutting down (or never registered us).
                    if woken.recv().await.is_err() {
                        let last = *latest.lock().unwrap_or_else(|e| e.into_inner());
                        if sent != Some(last) {
                            sink.send((response(last), WriteFlags::default())).await?;
                        }
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
