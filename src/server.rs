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

use crate::admin::Admin;
use crate::admin::Reply;
use crate::auth::Authenticator;
use crate::chat::{Chat, ChatConfig};
use crate::health::HealthReporter;
use crate::limits;
use crate::proto;
use crate::proto::health::health_check_response::ServingStatus;
use crate::ready;
use crate::rpc::api::{chat, greet, health, helloworld, route_guide as route_guide_api, test};
use crate::rpc::metrics::ServerMetrics;
use crate::rpc::{codec, CallTracker, Runtime};
use crate::services::chat::ChatService;
use crate::services::greet::Greeter;
use crate::services::health::HealthService;
use crate::services::helloworld::HelloWorld;
use crate::services::interop::InteropService;
use crate::services::reflection;
use crate::services::route_guide::{self, RouteGuideService};
use crate::telemetry::Tracing;
use crate::tls::ServerTls;

/// Full name of the interop suite's service, hosted when [`ServerConfig::interop`] is set.
pub const INTEROP_SERVICE_NAME: &str = test::TEST_SERVICE_FULL_NAME;

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
    /// Serve gRPC server reflection (v1 and v1alpha) for every hosted service.
    pub reflection: bool,
    /// Sent as `x-served-by` on every response; `None`: the bound `host:port`.
    pub instance_id: Option<String>,
    /// Where the admin HTTP port (`/healthz`) listens; `None`: no admin port.
    pub admin_addr: Option<String>,
    /// Limits a peer runs into, passed to the core as channel arguments.
    pub limits: ServerLimits,
    /// Require a bearer token on every call (except health and reflection);
    /// `None` lets anyone call.
    pub auth: Option<Authenticator>,
    /// Extra integer channel arguments for the C core (`grpc.…` keys), for
    /// tuning without a rebuild; applied after ours, so they win.
    pub core_args: Vec<(String, i32)>,
    /// `chat.v1.Chat`: where history lives, the broker, heartbeats.
    pub chat: ChatConfig,
    /// [`run`] writes the bound addresses here once serving (see
    /// [`crate::ready`]); `None`: no file.
    pub ready_file: Option<PathBuf>,
    /// A span per call (and per chat message's steps), exported to a
    /// collector; `None`: no tracing, at no cost to a call.
    pub tracing: Option<Tracing>,
}

/// What one peer may use of a server; each is a C-core channel argument.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Streams one connection may have open at once (`grpc.max_concurrent_streams`).
    pub max_concurrent_streams: u32,
    /// Largest message the server accepts, in bytes (decompressed); larger ones
    /// get RESOURCE_EXHAUSTED. Enforced by [`crate::codec`] as requests are
    /// decoded, not by the core's message-size filter, which stays out of the
    /// channel stack because of its per-message cost.
    pub max_receive_bytes: usize,
    /// Longest name `GreetService` and `helloworld.Greeter` accept, in bytes;
    /// longer ones get INVALID_ARGUMENT. The benchmark raises it to stream
    /// 64 KiB and 1 MiB messages; the demo's names are short.
    pub max_name_bytes: usize,
    /// Keepalive enforcement: a client may ping no more often than this when it
    /// has no call running; one that does is sent GOAWAY (`too_many_pings`).
    pub min_ping_interval: Duration,
    /// Connections are closed gracefully (GOAWAY) after this long, so that
    /// long-lived clients reconnect and rebalance onto new replicas; `None`: never.
    pub max_connection_age: Option<Duration>,
    /// How long calls may run on a connection after its age GOAWAY.
    pub max_connection_age_grace: Duration,
    /// How long a new connection has to finish its handshake (TLS, and the
    /// client's HTTP/2 SETTINGS) before it is closed: bounds what silent or
    /// half-open peers hold (`grpc.server_handshake_timeout_ms`).
    pub handshake_timeout: Duration,
    /// Memory the core may use for connections and calls (a `ResourceQuota`);
    /// `None`: no limit. Measured against the rapid-reset flood: no help
    /// (README, "Security").
    pub memory_quota: Option<usize>,
    /// Calls each completion queue has requested from the core ahead of
    /// time (grpcio's `requests_slot_per_cq`); default [`REQUEST_SLOTS_PER_CQ`].
    pub request_slots_per_cq: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_concurrent_streams: 1000,
            max_receive_bytes: limits::MAX_RECEIVE_MESSAGE_BYTES,
            max_name_bytes: limits::MAX_NAME_BYTES,
            min_ping_interval: Duration::from_secs(10),
            max_connection_age: None,
            max_connection_age_grace: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            memory_quota: None,
            request_slots_per_cq: REQUEST_SLOTS_PER_CQ,
        }
    }
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
            reflection: true,
            instance_id: None,
            admin_addr: None,
            limits: ServerLimits::default(),
            auth: None,
            core_args: Vec::new(),
            chat: ChatConfig::default(),
            ready_file: None,
            tracing: None,
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
    /// The instance id cannot be sent as a header value.
    InstanceId(String),
    /// The admin HTTP port cannot listen.
    Admin(String),
    /// The chat's store or broker cannot be used.
    Chat(String),
    /// The descriptors of the hosted services cannot be indexed.
    Reflection(String),
    /// The ready file cannot be written.
    ReadyFile(String),
    /// The tracing counters cannot be registered.
    Tracing(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::BadAddress(addr) => write!(f, "invalid address {addr:?}: expected host:port, like [::]:8080"),
            StartError::Bind(addr) => write!(f, "cannot listen on {addr}: address in use or not available"),
            StartError::BadCoreArg(key) => write!(f, "invalid channel argument key {key:?}"),
            StartError::Build(e) => write!(f, "cannot build the server: {e}"),
            StartError::RouteDb(why)
            | StartError::InstanceId(why)
            | StartError::Admin(why)
            | StartError::Reflection(why)
            | StartError::ReadyFile(why)
            | StartError::Tracing(why)
            | StartError::Chat(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for StartError {}

/// A started server. Dropping it stops it at once; [`RunningServer::shutdown`]
/// stops it gracefully.
pub struct RunningServer {
    server: Server,
    addr: String,
    runtime: Runtime,
    health: HealthReporter,
    chat: Chat,
    /// Stops with the server (dropped after it).
    admin: Option<Admin>,
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
    // Requests are decoded on these threads; each enforces this server's receive limit (src/codec.rs).
    let receive_limit = config.limits.max_receive_bytes;
    let env = Arc::new(
        EnvBuilder::new()
            .cq_count(config.completion_queues.max(1))
            .name_prefix("grpc-server")
            .after_start(move || codec::set_receive_limit(receive_limit))
            .build(),
    );
    // The route database is read first: a bad one stops the start before
    // anything (the chat's store above all) is opened.
    let features = match &config.route_db {
        Some(path) => route_guide::load_features(path).map_err(StartError::RouteDb)?,
        None => route_guide::default_features(),
    };
    let runtime = Runtime::new(CallTracker::new()).with_tracing(config.tracing.clone());
    if let Some(tracing) = &config.tracing {
        tracing.register_metrics(runtime.metrics().registry()).map_err(StartError::Tracing)?;
    }
    let health = HealthReporter::default();
    let chat = Chat::start(&config.chat).map_err(StartError::Chat)?;
    chat.register_metrics(runtime.metrics().registry()).map_err(StartError::Chat)?;
    let hosted = hosted_services(config, features, health.clone(), chat.clone(), &runtime)?;
    let names: Vec<&'static str> = hosted.iter().map(|h| h.name).collect();
    let mut server = build(env, config, hosted)?;
    let credentials = config.tls.as_ref().map_or_else(ServerCredentials::insecure, ServerTls::credentials);
    let port = server
        .add_listening_port(config.addr.clone(), credentials)
        .map_err(|_| StartError::Bind(config.addr.clone()))?;
    let addr = format!("{host}:{port}");
    runtime.set_served_by(config.instance_id.as_deref().unwrap_or(&addr)).map_err(StartError::InstanceId)?;
    server.start();
    for name in names.iter().chain(&[""]) {
        health.set_status(name, ServingStatus::SERVING);
    }
    let admin = match &config.admin_addr {
        Some(admin_addr) => {
            let reporter = health.clone();
            let serving = move || reporter.status("") == Some(ServingStatus::SERVING);
            let admin = Admin::start(admin_addr, serving).map_err(StartError::Admin)?;
            let metrics = runtime.metrics().clone();
            admin.route(
                "/metrics",
                Arc::new(move || Reply { status: 200, content_type: prometheus::TEXT_FORMAT, body: metrics.render() }),
            );
            Some(admin)
        }
        None => None,
    };
    Ok(RunningServer { server, addr, runtime, health, chat, admin })
}

/// One service a server hosts: its full name (what health checking and
/// reflection call it), the file that declares it, and the handlers to
/// register. The server's list of these is the one place a service is added.
pub struct Hosted {
    pub name: &'static str,
    pub file: &'static protobuf::reflect::FileDescriptor,
    pub service: grpcio::Service,
}

/// Every service the server hosts: the one list that registration, health
/// and reflection read. Adding a service is one entry here.
fn hosted_services(
    config: &ServerConfig,
    features: Vec<crate::proto::route_guide::Feature>,
    health: HealthReporter,
    chat: Chat,
    runtime: &Runtime,
) -> Result<Vec<Hosted>, StartError> {
    let mut hosted = vec![
        Hosted {
            name: greet::GREET_SERVICE_FULL_NAME,
            file: proto::greet::file_descriptor(),
            service: greet::register_greet_service(
                Greeter::new(config.stream_interval, config.limits.max_name_bytes),
                runtime,
            ),
        },
        Hosted {
            name: helloworld::GREETER_FULL_NAME,
            file: proto::helloworld::file_descriptor(),
            service: helloworld::register_greeter(HelloWorld::new(config.limits.max_name_bytes), runtime),
        },
        Hosted {
            name: route_guide_api::ROUTE_GUIDE_FULL_NAME,
            file: proto::route_guide::file_descriptor(),
            service: route_guide_api::register_route_guide(RouteGuideService::new(features), runtime),
        },
        Hosted {
            name: health::HEALTH_FULL_NAME,
            file: proto::health::file_descriptor(),
            service: health::register_health(HealthService::new(health), runtime),
        },
        Hosted {
            name: chat::CHAT_FULL_NAME,
            file: proto::chat::file_descriptor(),
            service: chat::register_chat(ChatService::new(chat, config.auth.clone()), runtime),
        },
    ];
    if config.interop {
        hosted.push(Hosted {
            name: test::TEST_SERVICE_FULL_NAME,
            file: proto::test::file_descriptor(),
            service: test::register_test_service(InteropService::default(), runtime),
        });
    }
    if config.reflection {
        let reflected: Vec<_> = hosted.iter().map(|h| (h.name, h.file)).collect();
        for (name, file, service) in reflection::services(&reflected, runtime).map_err(StartError::Reflection)? {
            hosted.push(Hosted { name, file, service });
        }
    }
    Ok(hosted)
}

/// The core's channel arguments for `config`: our limits, then `--core-arg`s.
fn channel_args(env: &Arc<Environment>, config: &ServerConfig) -> Result<ChannelBuilder, StartError> {
    let limits = &config.limits;
    let millis = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
    // -1: no receive limit in the core, so no message-size filter in the stack
    // (the send limit is unset already); src/codec.rs enforces ours.
    let mut args = ChannelBuilder::new(env.clone())
        .max_receive_message_len(-1)
        // Deadlines stay enforced by the core even under `--core-arg grpc.minimal_stack=1`.
        .raw_cfg_int(c"grpc.enable_deadline_checking".into(), 1)
        .max_concurrent_stream(i32::try_from(limits.max_concurrent_streams).unwrap_or(i32::MAX))
        .http2_min_recv_ping_interval_without_data(limits.min_ping_interval)
        .keepalive_permit_without_calls(true)
        .raw_cfg_int(c"grpc.server_handshake_timeout_ms".into(), millis(limits.handshake_timeout));
    if let Some(bytes) = limits.memory_quota {
        args = args.set_resource_quota(ResourceQuota::new(Some("greet-server")).resize_memory(bytes));
    }
    if let Some(age) = limits.max_connection_age {
        args = args
            .raw_cfg_int(c"grpc.max_connection_age_ms".into(), millis(age))
            .raw_cfg_int(c"grpc.max_connection_age_grace_ms".into(), millis(limits.max_connection_age_grace));
    }
    for (key, value) in &config.core_args {
        let key = CString::new(key.as_str()).map_err(|_| StartError::BadCoreArg(key.clone()))?;
        args = args.raw_cfg_int(key, *value);
    }
    Ok(args)
}

/// The default of [`ServerLimits::request_slots_per_cq`] (`--request-slots`):
/// calls each completion queue keeps requested from the core ahead of their
/// arrival (grpcio's default is 1,024). Each slot holds memory while idle; 256
/// take 0.3 MiB less per queue (bench/README.md) and still cover a burst of 256
/// new calls at once. Calls beyond that wait in the core's queue until a slot is
/// requested again, which happens as each call starts: none is refused.
pub const REQUEST_SLOTS_PER_CQ: usize = 256;

fn build(env: Arc<Environment>, config: &ServerConfig, hosted: Vec<Hosted>) -> Result<Server, StartError> {
    let mut builder = ServerBuilder::new(env.clone())
        .channel_args(channel_args(&env, config)?.build_args())
        .requests_slot_per_cq(config.limits.request_slots_per_cq.max(1));
    for service in hosted {
        builder = builder.register_service(service.service);
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

    /// Counts the calls running now.
    pub fn tracker(&self) -> &Arc<CallTracker> {
        self.runtime.tracker()
    }

    /// The server's health, to mark services (not) serving.
    pub fn health(&self) -> &HealthReporter {
        &self.health
    }

    /// The chat's rooms, for their counters ([`Chat::stats`]).
    pub fn chat(&self) -> &Chat {
        &self.chat
    }

    /// The server's metrics (what the admin port's `/metrics` serves).
    pub fn metrics(&self) -> &Arc<ServerMetrics> {
        self.runtime.metrics()
    }

    /// Where the admin HTTP port listens, if the server has one.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin.as_ref().map(Admin::addr)
    }

    /// The first step of a drain: every service (gRPC health and `/healthz`)
    /// reports NOT_SERVING while calls are still served, so that balancers
    /// (client-side health checking, HAProxy's checks) take the replica out of
    /// rotation before it stops accepting calls.
    pub fn begin_drain(&self) {
        self.health.set_all(ServingStatus::NOT_SERVING);
    }

    /// [`begin_drain`](Self::begin_drain), keep serving for `delay` so that
    /// balancers notice, then [`shutdown`](Self::shutdown) within `grace`.
    pub fn drain(self, delay: Duration, grace: Duration) -> Shutdown {
        self.begin_drain();
        if !delay.is_zero() {
            info!("draining: NOT_SERVING, still serving for {delay:?} so balancers notice");
            block_on(Delay::new(delay));
        }
        info!("draining: no new calls; in-flight calls have up to {grace:?}");
        self.shutdown(grace)
    }

    /// Stops accepting calls, reports NOT_SERVING, lets the calls in flight
    /// finish for up to `grace`, then cancels whatever is left.
    pub fn shutdown(mut self, grace: Duration) -> Shutdown {
        self.health.shutdown();
        // Chat streams never end by themselves: end them now, so that their
        // clients resume on another replica instead of waiting out the grace.
        self.chat.shutdown();
        info!("chat at shutdown: {:?}", self.chat.stats());
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
                warn!("shutdown: {} call(s) still running after {grace:?}; cancelling them", self.tracker().active());
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
        self.chat.shutdown();
    }
}

/// Below this size glibc's malloc serves a block from its heaps (set by
/// [`keep_freed_memory_for_reuse`]): twice the default receive limit, so a
/// message of any size the server accepts by default, and its reply, come
/// from memory a call before freed.
pub const MALLOC_MMAP_THRESHOLD: usize = 2 * limits::MAX_RECEIVE_MESSAGE_BYTES;

/// Freed memory glibc's malloc keeps at the top of each of its heaps before
/// it returns the rest to the system (set by [`keep_freed_memory_for_reuse`]).
pub const MALLOC_TRIM_THRESHOLD: usize = 2 * MALLOC_MMAP_THRESHOLD;

/// Keeps the memory a call frees for the next calls: the `server` binary
/// calls it first. By default glibc gives a heap's free top back to the system
/// once it passes 128 KiB, so a call that parses and answers large messages
/// (a server stream of 64 KiB names: 3 MiB of strings) frees its memory at its
/// end and the next call faults every page in again, 1,000 to 2,300 page
/// faults a call. With blocks up to [`MALLOC_MMAP_THRESHOLD`] served from the
/// heaps and up to [`MALLOC_TRIM_THRESHOLD`] of free memory kept at each
/// heap's top, the next call reuses it. The cost: after a burst of large
/// messages each malloc arena may hold up to that much free memory. Setting
/// either bound also ends glibc's own adjustment of them (which only reacts
/// to blocks above the first bound). An operator's own choice wins: with
/// either bound set in `GLIBC_TUNABLES` (`glibc.malloc.mmap_threshold`,
/// `glibc.malloc.trim_threshold`) this does nothing. Not glibc: nothing to do.
pub fn keep_freed_memory_for_reuse() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        if tunables.contains("glibc.malloc.mmap_threshold") || tunables.contains("glibc.malloc.trim_threshold") {
            return;
        }
        let bound = |bytes: usize| libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets malloc's parameters; called before the
        // server's threads start, as glibc's manual asks.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, bound(MALLOC_MMAP_THRESHOLD));
            libc::mallopt(libc::M_TRIM_THRESHOLD, bound(MALLOC_TRIM_THRESHOLD));
        }
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

/// How a server leaves when its signal comes: see [`RunningServer::drain`].
#[derive(Debug, Clone, Copy)]
pub struct DrainPolicy {
    /// How long it keeps serving while reporting NOT_SERVING.
    pub delay: Duration,
    /// How long in-flight calls then have before they are cancelled.
    pub grace: Duration,
}

/// Runs a server until `signal` resolves, then drains it (see
/// [`RunningServer::drain`]). The binary passes SIGINT/SIGTERM; tests pass a channel.
/// Once serving, it writes [`ServerConfig::ready_file`] (a path it cannot
/// write is an error before the server starts).
pub fn run(
    config: &ServerConfig,
    signal: impl std::future::Future<Output = ()>,
    drain: DrainPolicy,
) -> Result<Shutdown, StartError> {
    if let Some(path) = &config.ready_file {
        ready::check_writable(path).map_err(StartError::ReadyFile)?;
    }
    let server = start(config)?;
    info!("Server started at {}", server.addr());
    let admin = server.admin_addr().map(|admin| admin.to_string());
    if let Some(admin) = &admin {
        info!("Admin HTTP port at {admin}");
    }
    if let Some(path) = &config.ready_file {
        ready::write(path, server.addr(), admin.as_deref()).map_err(StartError::ReadyFile)?;
    }
    block_on(signal);
    let outcome = server.drain(drain.delay, drain.grace);
    info!("server stopped ({outcome:?})");
    if let Some(tracing) = &config.tracing {
        // The last calls' spans; a dead collector holds the exit up to this long.
        tracing.shutdown(Duration::from_secs(5));
    }
    Ok(outcome)
}
