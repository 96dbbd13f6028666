//! `server`: serves the greeter demo's GreetService (and helloworld.Greeter,
//! routeguide.RouteGuide, grpc.health.v1.Health) until SIGINT or SIGTERM,
//! then drains gracefully.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use greet::auth::{self, Authenticator};
use greet::duration;
use greet::server::{self, DrainPolicy, ServerConfig, ServerLimits};
use greet::telemetry::{TraceSettings, Tracing};
use greet::tls::ServerTls;

#[derive(Parser, Debug)]
#[command(version, about = "gRPC greeter server (drop-in for the Go demo's server)")]
struct Args {
    /// Address to listen on, host:port (port 0 picks a free one).
    #[arg(long, default_value = "[::]:8080")]
    addr: String,
    /// Wait after each server-stream send, e.g. 2s, 500ms, 0.
    #[arg(long, default_value = "2s", value_parser = duration::parse)]
    stream_interval: Duration,
    /// Completion queues (polling threads); default: one per CPU.
    #[arg(long)]
    threads: Option<usize>,
    /// On SIGINT/SIGTERM, how long in-flight calls may take to finish
    /// before they are cancelled (after --drain-delay).
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    grace: Duration,
    /// On SIGINT/SIGTERM, how long to keep serving while health reports
    /// NOT_SERVING, so that balancers take this replica out first.
    #[arg(long, default_value = "0", value_parser = duration::parse)]
    drain_delay: Duration,
    /// Sent as the `x-served-by` header on every response; default: the bound host:port.
    #[arg(long)]
    instance_id: Option<String>,
    /// Serve the admin HTTP port (/healthz) here, host:port; off by default.
    #[arg(long)]
    admin_addr: Option<String>,
    /// Streams one connection may have open at once.
    #[arg(long, default_value_t = ServerLimits::default().max_concurrent_streams)]
    max_concurrent_streams: u32,
    /// Largest message accepted, in bytes (larger: RESOURCE_EXHAUSTED).
    #[arg(long, default_value_t = ServerLimits::default().max_receive_bytes)]
    max_recv_bytes: usize,
    /// Longest name GreetService and helloworld accept, in bytes (longer: INVALID_ARGUMENT).
    #[arg(long, default_value_t = ServerLimits::default().max_name_bytes)]
    max_name_bytes: usize,
    /// Keepalive enforcement: clients may ping no more often than this while idle.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    min_ping_interval: Duration,
    /// Close connections gracefully after this long so clients rebalance (e.g. 30m); 0: never.
    #[arg(long, default_value = "0", value_parser = duration::parse)]
    max_connection_age: Duration,
    /// Time calls still have on a connection closed for its age.
    #[arg(long, default_value = "30s", value_parser = duration::parse)]
    max_connection_age_grace: Duration,
    /// Feature database of routeguide.RouteGuide, in grpc-go's
    /// route_guide_db.json format; default: a few built-in features.
    #[arg(long)]
    route_db: Option<PathBuf>,
    /// Serve over TLS with this PEM certificate chain (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: require client certificates signed by the CA(s) in this
    /// PEM file (needs --tls-cert).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Require `authorization: Bearer <token>` on every call except health
    /// and reflection; FILE has lines `TOKEN PRINCIPAL` (# comments allowed)
    /// and is reread on SIGHUP.
    #[arg(long, value_name = "FILE")]
    auth_tokens: Option<PathBuf>,
    /// How long a new connection has to finish its handshake (TLS and the
    /// client's HTTP/2 SETTINGS) before it is closed.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    handshake_timeout: Duration,
    /// Calls each completion queue requests from the core ahead of time.
    #[arg(long, default_value_t = ServerLimits::default().request_slots_per_cq)]
    request_slots: usize,
    /// Memory the core may use for connections and calls, in MiB (a
    /// resource quota); default: no limit.
    #[arg(long, value_name = "MIB")]
    memory_quota_mib: Option<usize>,
    /// An integer channel argument for the gRPC C core, KEY=VALUE (e.g.
    /// grpc.max_concurrent_streams=100); repeatable. For tuning.
    #[arg(long = "core-arg", value_parser = parse_core_arg)]
    core_args: Vec<(String, i32)>,
    /// Do not serve gRPC server reflection (grpc.reflection.v1 and v1alpha).
    #[arg(long)]
    no_reflection: bool,
    /// chat.v1.Chat: directory of the SQLite chat history (chat.sqlite3);
    /// default: $XDG_DATA_HOME/greet or ~/.local/share/greet (in memory,
    /// with a warning, if another server holds it).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// chat.v1.Chat: share rooms and history with every replica using this
    /// Redis, e.g. redis://127.0.0.1:6379 or redis+unix:///run/redis.sock,
    /// or the primary the Redis Sentinels name, following its failovers:
    /// redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER_NAME (docs/chat-ha.md);
    /// or an etcd cluster, etcd://HOST:PORT[,HOST:PORT...] (its members'
    /// client endpoints, nearest first), where a message is acknowledged
    /// once a quorum has it.
    #[arg(long)]
    broker: Option<String>,
    /// chat.v1.Chat with a broker: Redis replicas that must have a message
    /// (WAIT) before it is acknowledged; a Say none confirms in time fails
    /// with UNAVAILABLE. Default: 1 with redis+sentinel://, else 0.
    #[arg(long)]
    broker_ack_replicas: Option<u32>,
    /// chat.v1.Chat with a broker: how long to wait for those replicas.
    #[arg(long, default_value = "1s", value_parser = greet::duration::parse)]
    broker_ack_timeout: Duration,
    /// chat.v1.Chat: send a heartbeat on a chat stream idle this long.
    #[arg(long, default_value = "15s", value_parser = parse_heartbeat)]
    heartbeat: Duration,
    /// chat.v1.Chat: recent messages a join replays when the client does not say.
    #[arg(long, default_value_t = 20)]
    join_history: u32,
    /// chat.v1.Chat: events a chat stream may have waiting before it is cut off.
    #[arg(long, default_value_t = 1024)]
    subscriber_queue: usize,
    /// Once serving, write the bound addresses to PATH as JSON,
    /// {"grpc": "HOST:PORT", "admin": "HOST:PORT" or null} (atomically: PATH.tmp, then a rename).
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
    /// Export a span per call (OpenTelemetry, OTLP over HTTP/protobuf) to the
    /// collector at this base URL, e.g. http://127.0.0.1:4318 (/v1/traces is
    /// appended); default: $OTEL_EXPORTER_OTLP_ENDPOINT, else no tracing.
    /// OTEL_SERVICE_NAME (default greet-server), OTEL_TRACES_SAMPLER and
    /// OTEL_TRACES_SAMPLER_ARG apply.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
}

fn parse_core_arg(text: &str) -> Result<(String, i32), String> {
    let (key, value) = text.split_once('=').ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))?;
    let value = value.parse().map_err(|_| format!("{key}: {value:?} is not a 32-bit integer"))?;
    if !key.starts_with("grpc.") {
        return Err(format!("{key:?} is not a gRPC core channel argument (they start with \"grpc.\")"));
    }
    Ok((key.to_string(), value))
}

fn parse_heartbeat(text: &str) -> Result<Duration, String> {
    let heartbeat = duration::parse(text)?;
    if heartbeat < Duration::from_millis(10) {
        return Err(format!("a heartbeat every {heartbeat:?} is too often; at least 10ms"));
    }
    Ok(heartbeat)
}

/// The server's configuration from its flags; the error is one line.
fn config(args: Args) -> Result<ServerConfig, String> {
    let mut config = ServerConfig { addr: args.addr, stream_interval: args.stream_interval, ..Default::default() };
    config.route_db = args.route_db;
    config.core_args = args.core_args;
    config.reflection = !args.no_reflection;
    config.chat.data_dir_is_default = args.data_dir.is_none();
    config.chat.data_dir = Some(args.data_dir.unwrap_or_else(greet::chat::default_data_dir));
    config.chat.broker = args.broker;
    if args.broker_ack_replicas.is_some() && config.chat.broker.as_deref().is_some_and(greet::chat::broker::is_etcd_url)
    {
        return Err(
            "--broker-ack-replicas is for Redis: etcd acknowledges a message once a quorum of its members has it"
                .into(),
        );
    }
    config.chat.replicas_to_ack = args.broker_ack_replicas;
    config.chat.ack_timeout = args.broker_ack_timeout;
    config.chat.heartbeat = args.heartbeat;
    config.chat.join_history = args.join_history.min(greet::chat::limits::MAX_HISTORY as u32);
    config.chat.subscriber_queue = args.subscriber_queue.max(1);
    config.instance_id = args.instance_id;
    config.admin_addr = args.admin_addr;
    config.ready_file = args.ready_file;
    let tracing = TraceSettings::from_env(args.otlp_endpoint.as_deref(), |v| std::env::var(v).ok(), "greet-server")?;
    config.tracing = tracing.as_ref().map(Tracing::start).transpose()?;
    config.limits = ServerLimits {
        max_concurrent_streams: args.max_concurrent_streams,
        max_receive_bytes: args.max_recv_bytes,
        max_name_bytes: args.max_name_bytes,
        min_ping_interval: args.min_ping_interval,
        max_connection_age: (!args.max_connection_age.is_zero()).then_some(args.max_connection_age),
        max_connection_age_grace: args.max_connection_age_grace,
        handshake_timeout: args.handshake_timeout,
        memory_quota: args.memory_quota_mib.map(|mib| mib << 20),
        request_slots_per_cq: args.request_slots,
    };
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let mut tls = ServerTls::from_files(cert, key)?;
        if let Some(ca) = &args.tls_client_ca {
            tls = tls.require_client_certs(ca)?;
        }
        config.tls = Some(tls);
    }
    if let Some(path) = &args.auth_tokens {
        config.auth = Some(Authenticator::from_file(path)?);
    }
    auth::reload_on_sighup(config.auth.clone())?;
    if let Some(threads) = args.threads {
        config.completion_queues = threads.max(1);
    }
    Ok(config)
}

fn main() -> ExitCode {
    server::keep_freed_memory_for_reuse();
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let drain = DrainPolicy { delay: args.drain_delay, grace: args.grace };
    let started = config(args).and_then(|config| Ok((config, server::termination_signal()?)));
    let (config, signal) = match started {
        Ok(started) => started,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match server::run(&config, signal, drain) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
