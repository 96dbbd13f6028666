//! gRPC services, one file a service.

pub mod greet;
pub mod health;
pub mod helloworld;
pub mod interop;
pub mod reflection;
pub mod route_guide;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use grpcio::{
    ClientStreamingSink, DuplexSink, Metadata, MetadataBuilder, RpcContext, ServerStreamingSink, Service, UnarySink,
};
use protobuf::reflect::FileDescriptor;

use crate::metrics::ServerMetrics;

/// One service a server hosts: its full name (what health checking and
/// reflection call it), the file that declares it, and the handlers to
/// register. The server's list of these is the one place a service is added.
pub struct Hosted {
    pub name: &'static str,
    pub file: &'static FileDescriptor,
    pub service: Service,
}

/// Runs before every handler of every hosted service (the generated
/// `create_<service>_with` calls it), so that what each call needs is set in
/// one place: the `x-served-by` response header naming the instance, and the
/// metrics every call is counted in (by the `crate::call` wrappers).
#[derive(Clone, Default)]
pub struct CallHooks {
    /// Sent as the initial metadata of every call once set (the instance id
    /// defaults to the bound address, known only after the services are built).
    headers: Arc<OnceLock<Metadata>>,
    /// The server's metrics; each server has its own.
    metrics: Arc<ServerMetrics>,
}

/// The response header that names the instance that served a call.
pub const SERVED_BY_HEADER: &str = "x-served-by";

impl CallHooks {
    /// Answers every call from now on with `x-served-by: <instance>`.
    pub fn set_served_by(&self, instance: &str) -> Result<(), String> {
        let mut headers = MetadataBuilder::new();
        headers
            .add_str(SERVED_BY_HEADER, instance)
            .map_err(|e| format!("instance id {instance:?} cannot be sent as a header: {e}"))?;
        self.headers.set(headers.build()).map_err(|_| "the instance id is already set".to_string())
    }

    /// The metrics the calls of these services are counted in.
    pub fn metrics(&self) -> &Arc<ServerMetrics> {
        &self.metrics
    }

    /// Called by the generated handler wrappers before the service's method.
    pub fn on_call<S: ResponseHeaders>(&self, _ctx: &RpcContext, sink: &mut S) {
        if let Some(headers) = self.headers.get() {
            sink.set_response_headers(headers.clone());
        }
    }
}

/// A server-side sink whose initial metadata can be set before its first send.
pub trait ResponseHeaders {
    fn set_response_headers(&mut self, headers: Metadata);
}

macro_rules! response_headers {
    ($($sink:ident),*) => {$(
        impl<T> ResponseHeaders for $sink<T> {
            fn set_response_headers(&mut self, headers: Metadata) {
                self.set_headers(headers);
            }
        }
    )*};
}
response_headers!(UnarySink, ClientStreamingSink, ServerStreamingSink, DuplexSink);

/// Counts the calls a server is running, so that shutdown and tests can wait
/// for them to end instead of guessing with sleeps.
#[derive(Debug, Default)]
pub struct CallTracker {
    active: AtomicUsize,
    started: AtomicUsize,
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
        let deadline = Instant::now() + timeout;
        // A poisoned lock only means a waiter panicked; the counter is atomic.
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        while self.active() > n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            guard = self.idle.wait_timeout(guard, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }

    /// Blocks until at least `n` calls have started, or `timeout` passes.
    pub fn wait_started(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        while self.started() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            guard = self.idle.wait_timeout(guard, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }

    fn notify(&self) {
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
