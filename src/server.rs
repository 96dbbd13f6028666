//! Builds, starts and stops the server. [`start`] is the one way in: the
//! `server` binary, the tests and the benchmarks all use it.

use std::ffi::CString;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::executor::block_on;
use futures::future::{self, Either};
use futures_timer::Delay;
use grpcio::{ChannelBuilder, EnvBuilder, Environment, ResourceQuota, Server, ServerBuilder, ServerCredentials};
use log::{info, warn};

use crate::auth::Authenticator;
use crate::limits;
use crate::proto::health::health_check_response::ServingStatus;
use crate::proto::{greet_grpc, health_grpc, helloworld_grpc, route_guide_grpc, test_grpc};
use crate::services::greet::Greeter;
use crate::services::health::HealthService;
use crate::services::helloworld::HelloWorld;
use crate::services::interop::InteropService;
use crate::services::route_guide::{self, RouteGuideService};
use crate::services::CallTracker;
use crate::tls::ServerTls;

/// Full names of the services a server hosts, as the health service reports them.
pub const SERVICE_NAMES: &[&str] = &["greet_service.GreetService", "helloworld.Greeter", "routeguide.RouteGuide"];
/// Full name of the interop suite's service, hosted when [`ServerConfig::interop`] is set.
pub const INTEROP_SERVICE_NAME: &str = "grpc.testing.TestService";

/// How to build a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `host:port` to listen on; port 0 picks a free one.
    pub addr: String,
    /// Wait after each server-stream send (the demo's is 2 s).
    pub stream_interval: Duration,
    /// Completion queues, each with its own polling thread.
    pub completion_queues: usize,
    /// The route guide's feature database (grpc-go's JSON format); `None`
    /// serves a small built-in one.
    pub route_db: Option<PathBuf>,
    /// Serve over TLS with this identity; `None` is plaintext.
    pub tls: Option<ServerTls>,
    /// Also serve `grpc.testing.TestService`, the interop suite's service.
    pub interop: bool,
    /// Require a bearer token on every call (except health and reflection);
    /// `None` lets anyone call.
    pub auth: Option<Authenticator>,
    /// Calls each completion queue has requested from the core ahead of time
    /// (grpcio's `requests_slot_per_cq`).
    pub request_slots_per_cq: usize,
    /// Memory the core may use for this server's connections and calls
    /// (a `ResourceQuota`); `None` for no limit.
    pub memory_quota: Option<usize>,
    /// Extra integer channel arguments for the C core (`grpc.…` keys), for
    /// tuning without a rebuild; applied after ours, so they win.
    pub core_args: Vec<(String, i32)>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            addr: "[::]:8080".to_string(),
            stream_interval: Duration::from_secs(2),
            completion_queues: std::thread::available_parallelism().map_or(1, |n| n.get()),
            route_db: None,
            tls: None,
            interop: false,
            auth: None,
            request_slots_per_cq: 1024,
            memory_quota: None,
            core_args: Vec::new(),
        }
    }
}

/// Why a server could not start.
#[derive(Debug)]
pub enum StartError {
    /// The address is not `host:port`.
    BadAddress(String),
    /// The address is taken, or not ours to bind.
    Bind(String),
    /// A `--core-arg` key that cannot be passed to the core.
    BadCoreArg(String),
    /// The core refused to build the server.
    Build(grpcio::Error),
    /// The route guide's feature database cannot be read or parsed.
    RouteDb(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::BadAddress(addr) => write!(f, "invalid address {addr:?}: expected host:port, like [::]:8080"),
            StartError::Bind(addr) => write!(f, "cannot listen on {addr}: address in use or not available"),
            StartError::BadCoreArg(key) => write!(f, "invalid channel argument key {key:?}"),
            StartError::Build(e) => write!(f, "cannot build the server: {e}"),
            StartError::RouteDb(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for StartError {}

/// A started server. Dropping it stops it at once; [`RunningServer::shutdown`]
/// stops it gracefully.
pub struct RunningServer {
    server: Server,
    addr: String,
    tracker: Arc<CallTracker>,
    health: HealthService,
}

/// How a graceful shutdown ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Every in-flight call finished within the grace period.
    Drained,
    /// The grace period ran out; the calls still running were cancelled.
    Forced,
}

fn split_addr(addr: &str) -> Result<(&str, u16), StartError> {
    let bad = || StartError::BadAddress(addr.to_string());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    if host.is_empty() || host.contains('\0') {
        return Err(bad());
    }
    Ok((host, port))
}

/// Builds the server for `config`, binds it and starts serving.
pub fn start(config: &ServerConfig) -> Result<RunningServer, StartError> {
    let (host, _) = split_addr(&config.addr)?;
    let env = Arc::new(EnvBuilder::new().cq_count(config.completion_queues.max(1)).name_prefix("grpc-server").build());
    let tracker = CallTracker::new();
    let health = HealthService::default();
    let mut server = build(env, config, tracker.clone(), health.clone())?;
    let credentials = config.tls.as_ref().map_or_else(ServerCredentials::insecure, ServerTls::credentials);
    let port = server
        .add_listening_port(config.addr.clone(), credentials)
        .map_err(|_| StartError::Bind(config.addr.clone()))?;
    server.start();
    let interop: &[&str] = if config.interop { &[INTEROP_SERVICE_NAME] } else { &[] };
    for name in SERVICE_NAMES.iter().chain(interop).chain(&[""]) {
        health.set_status(name, ServingStatus::SERVING);
    }
    Ok(RunningServer { server, addr: format!("{host}:{port}"), tracker, health })
}

fn build(
    env: Arc<Environment>,
    config: &ServerConfig,
    tracker: Arc<CallTracker>,
    health: HealthService,
) -> Result<Server, StartError> {
    let features = match &config.route_db {
        Some(path) => route_guide::load_features(path).map_err(StartError::RouteDb)?,
        None => route_guide::default_features(),
    };
    // 4 MiB also covers the interop suite's largest message (314,159 bytes).
    let mut args = ChannelBuilder::new(env.clone()).max_receive_message_len(limits::MAX_RECEIVE_MESSAGE_BYTES as i32);
    if let Some(bytes) = config.memory_quota {
        args = args.set_resource_quota(ResourceQuota::new(Some("greet-server")).resize_memory(bytes));
    }
    for (key, value) in &config.core_args {
        let key = CString::new(key.as_str()).map_err(|_| StartError::BadCoreArg(key.clone()))?;
        args = args.raw_cfg_int(key, *value);
    }
    let args = args.build_args();
    let mut builder = ServerBuilder::new(env)
        .channel_args(args)
        .requests_slot_per_cq(config.request_slots_per_cq.max(1))
        .register_service(greet_grpc::create_greet_service(Greeter::new(config.stream_interval, tracker)))
        .register_service(helloworld_grpc::create_greeter(HelloWorld))
        .register_service(route_guide_grpc::create_route_guide(RouteGuideService::new(features)))
        .register_service(health_grpc::create_health(health));
    if config.interop {
        builder = builder.register_service(test_grpc::create_test_service(InteropService::default()));
    }
    if let Some(auth) = &config.auth {
        builder = builder.add_checker(auth.checker());
    }
    builder.build().map_err(StartError::Build)
}

impl RunningServer {
    /// The address it listens on, with the bound port (`127.0.0.1:39041`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        // `addr` was formatted from a u16 in `start`.
        self.addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(0)
    }

    /// Counts the streaming calls running now.
    pub fn tracker(&self) -> &Arc<CallTracker> {
        &self.tracker
    }

    /// The health service, to mark services (not) serving.
    pub fn health(&self) -> &HealthService {
        &self.health
    }

    /// Stops accepting calls, reports NOT_SERVING, lets the calls in flight
    /// finish for up to `grace`, then cancels whatever is left.
    pub fn shutdown(mut self, grace: Duration) -> Shutdown {
        self.health.shutdown();
        let drained = self.server.shutdown();
        let outcome = block_on(future::select(drained, Delay::new(grace)));
        match outcome {
            Either::Left((result, _)) => {
                if let Err(e) = result {
                    warn!("shutdown: {e}");
                }
                Shutdown::Drained
            }
            Either::Right((_, drained)) => {
                warn!("shutdown: {} call(s) still running after {grace:?}; cancelling them", self.tracker.active());
                self.server.cancel_all_calls();
                if let Err(e) = block_on(drained) {
                    warn!("shutdown: {e}");
                }
                Shutdown::Forced
            }
        }
    }
}

impl Drop for RunningServer {
    /// A dropped server stops at once; Watch calls wait on our own channel,
    /// not on the core, so they are ended here or the core would wait for them.
    fn drop(&mut self) {
        self.health.shutdown();
    }
}

/// Resolves at the first SIGINT or SIGTERM: what the binaries pass to [`run`].
/// Waiting blocks the thread that polls it (the binary's main thread), never
/// a completion-queue thread.
pub fn termination_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    Ok(async move {
        if let Some(sig) = signals.forever().next() {
            info!("received signal {sig}");
        }
    })
}

/// Runs a server until `signal` resolves, then shuts it down gracefully
/// within `grace`. The binary passes SIGINT/SIGTERM; tests pass a channel.
pub fn run(
    config: &ServerConfig,
    signal: impl std::future::Future<Output = ()>,
    grace: Duration,
) -> Result<Shutdown, StartError> {
    let server = start(config)?;
    info!("Server started at {}", server.addr());
    block_on(signal);
    info!("shutting down: draining calls for up to {grace:?}");
    let outcome = server.shutdown(grace);
    info!("server stopped ({outcome:?})");
    Ok(outcome)
}
