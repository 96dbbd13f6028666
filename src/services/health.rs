//! `grpc.health.v1.Health`: the standard health checking protocol, over the
//! server's [`HealthReporter`].
//!
//! (grpcio-health 0.13's protobuf-3 code was generated for rust-protobuf 3.2
//! and does not build against 3.7, the first version without
//! RUSTSEC-2024-0437, so the service is implemented here.)

use futures::prelude::*;
use grpcio::{RpcStatusCode, WriteFlags};

use crate::health::HealthReporter;
use crate::proto::health::health_check_response::ServingStatus;
use crate::proto::health::{HealthCheckRequest, HealthCheckResponse};
use crate::rpc::api::health::Health;
use crate::rpc::{Call, CallError, ServerStreamingSink};

/// Serves `grpc.health.v1.Health` from a [`HealthReporter`].
#[derive(Clone)]
pub struct HealthService {
    reporter: HealthReporter,
}

impl HealthService {
    pub fn new(reporter: HealthReporter) -> Self {
        HealthService { reporter }
    }
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse { status: status.into(), ..Default::default() }
}

impl Health for HealthService {
    /// The status now; NOT_FOUND for a service the server does not know.
    async fn check(&self, _call: &mut Call, request: HealthCheckRequest) -> Result<HealthCheckResponse, CallError> {
        match self.reporter.status(&request.service) {
            Some(status) => Ok(response(status)),
            None => Err(CallError::new(RpcStatusCode::NOT_FOUND, format!("unknown service {:?}", request.service))),
        }
    }

    /// Sends the status now (SERVICE_UNKNOWN for an unknown service), then
    /// each change, until the client leaves or the server shuts down.
    async fn watch(
        &self,
        _call: &mut Call,
        request: HealthCheckRequest,
        sink: &mut ServerStreamingSink<HealthCheckResponse>,
    ) -> Result<(), CallError> {
        let service = request.service;
        // After shutdown: send the status once and end.
        let changes = self.reporter.watch(&service);
        let mut sent = None;
        loop {
            let now = self.reporter.status(&service).unwrap_or(ServingStatus::SERVICE_UNKNOWN);
            if sent != Some(now) {
                sink.send((response(now), WriteFlags::default())).await?;
                sent = Some(now);
            }
            let woken = match &changes {
                Some(changes) => changes.events.recv().await.is_ok(),
                None => false,
            };
            // Not woken: the server is shutting down; its last word was sent above.
            if !woken {
                return Ok(());
            }
        }
    }
}
