//! `client`: the Go demo's client, one call pattern per subcommand, plus the
//! route guide demo and `load`. Stdout carries one line per message received
//! (`load`: the summary); failures print one line `error: <CODE>: <message>`
//! to stderr and exit non-zero.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand};
use futures::executor::block_on;
use greet::client::channel::{Keepalive, DEFAULT_RETRIES};
use greet::client::chat::{self, ChatOptions, Output};
use greet::client::load::{self, LoadConfig, Workload};
use greet::client::CliError;
use greet::client::{route_guide, Client, Connector, LbPolicy};
use greet::duration;
use greet::telemetry::{self, TraceSettings, Tracing};
use greet::tls::ClientTls;
use grpcio::Metadata;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser, Debug)]
#[command(version, about = "gRPC greeter client (drop-in for the Go demo's client)")]
struct Args {
    /// Server address(es): host:port, a comma-separated list of them (the
    /// later ones are backups under pick_first), or a URI such as dns:///host:port.
    #[arg(long, default_value = "localhost:8080", global = true)]
    addr: String,
    /// Load balancing over the addresses: pick_first (the default) or
    /// round_robin (which also health-checks every server and skips those
    /// NOT_SERVING). Not with an xds: address, whose control plane chooses.
    #[arg(long, global = true)]
    lb: Option<LbPolicy>,
    /// Retries of a call that failed with UNAVAILABLE (exponential backoff,
    /// by the C core's retry policy; default 3); 0 turns retrying off. Not
    /// with an xds: address, whose routes carry their own retry policy.
    #[arg(long, global = true)]
    retries: Option<u32>,
    /// Calls wait for a server to become reachable (up to --timeout) instead of failing at once.
    #[arg(long, global = true)]
    wait_for_ready: bool,
    /// Connections to open (each a channel of its own); calls are spread over them.
    #[arg(long, default_value_t = 1, global = true)]
    connections: usize,
    /// Send keepalive pings after this long without activity (e.g. 30s); off by default.
    #[arg(long, value_parser = duration::parse, global = true)]
    keepalive: Option<Duration>,
    /// Close the connection if a keepalive ping is not answered within this.
    #[arg(long, default_value = "20s", value_parser = duration::parse, global = true)]
    keepalive_timeout: Duration,
    /// Connect over TLS, trusting the CA certificate(s) in this PEM file.
    #[arg(long, global = true)]
    tls_ca: Option<PathBuf>,
    /// Name to expect in the server's TLS certificate instead of the host of --addr.
    #[arg(long, global = true, requires = "tls_ca")]
    tls_server_name: Option<String>,
    /// Mutual TLS: present this PEM certificate chain to the server (needs
    /// --tls-ca and --tls-key).
    #[arg(long, global = true, requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, global = true, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Send `authorization: Bearer <token>` with every call, the token read
    /// from this file.
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Deadline of each call, e.g. 30s, 500ms.
    #[arg(long, default_value = "30s", value_parser = duration::parse, global = true)]
    timeout: Duration,
    /// Names to send, comma separated.
    #[arg(long, default_value = "Akhil,Alice,Bob", value_delimiter = ',', global = true)]
    names: Vec<String>,
    /// Wait between sends on client and bidirectional streams.
    #[arg(long, default_value = "2s", value_parser = duration::parse, global = true)]
    interval: Duration,
    /// Export a client span per call (OpenTelemetry, OTLP over HTTP/protobuf)
    /// to the collector at this base URL, e.g. http://127.0.0.1:4318; each
    /// call carries its span's `traceparent`. Default:
    /// $OTEL_EXPORTER_OTLP_ENDPOINT, else no tracing. A trace given in
    /// $TRACEPARENT (and $TRACESTATE) is continued; OTEL_SERVICE_NAME
    /// (default greet-client) and OTEL_TRACES_SAMPLER(_ARG) apply.
    #[arg(long, global = true, value_name = "URL")]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// SayHello (unary).
    Unary,
    /// SayHelloServerStreaming: one greeting per name.
    ServerStream,
    /// SayHelloClientStreaming: sends the names, prints the list returned.
    ClientStream,
    /// SayHelloBidirectionalStreaming: greetings printed as they arrive.
    Bidi,
    /// The four patterns above, in order.
    All,
    /// helloworld.Greeter/SayHello, like grpc-go's greeter_client.
    Greet {
        /// Name to greet.
        #[arg(long, default_value = "world")]
        name: String,
    },
    /// routeguide.RouteGuide: GetFeature, ListFeatures, RecordRoute and
    /// RouteChat, like grpc-go's route_guide client.
    RouteGuide,
    /// chat.v1.Chat: says each line of stdin in the room and prints the
    /// room's messages as `[HH:MM:SS] user: text` (UTC); Ctrl-D leaves. With
    /// --addr a,b the client resumes on the next server when one goes away.
    Chat {
        /// Room to join.
        #[arg(long)]
        room: String,
        /// Name to chat as.
        #[arg(long)]
        user: String,
        /// Recent messages to show on joining; default: the server's choice.
        #[arg(long)]
        history: Option<u32>,
    },
    /// Many calls at once over the connections; prints a summary (calls by
    /// status and by serving instance, latency percentiles, rate).
    Load(LoadArgs),
}

#[derive(ClapArgs, Debug)]
struct LoadArgs {
    /// Unary SayHello calls to make.
    #[arg(long, default_value_t = 10_000, conflicts_with = "streams")]
    calls: usize,
    /// Bidi streams to open instead of unary calls.
    #[arg(long)]
    streams: Option<usize>,
    /// Request/answer round trips on each bidi stream.
    #[arg(long, default_value_t = 10, requires = "streams")]
    messages: usize,
    /// Calls (or streams) in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Start calls at this fixed rate per second instead of as fast as possible.
    #[arg(long)]
    rps: Option<f64>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Prints one received message. A reader that went away (`client ... | head`)
/// ends the program quietly, as it would any Unix filter.
fn print(line: String) {
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{line}").and_then(|()| stdout.flush()).is_err() {
        std::process::exit(0);
    }
}

/// The connector the flags describe; the error is one line.
fn connector(args: &Args) -> Result<Connector, String> {
    if args.addr.starts_with("xds:") && (args.lb.is_some() || args.retries.is_some()) {
        return Err(format!(
            "--lb and --retries do not apply to {}: the control plane's routes and clusters set its retries and balancing",
            args.addr
        ));
    }
    let mut connector = Connector::new(&args.addr)?
        .lb(args.lb.unwrap_or(LbPolicy::PickFirst))
        .retries(args.retries.unwrap_or(DEFAULT_RETRIES))
        .wait_for_ready(args.wait_for_ready)
        .connections(args.connections)
        .keepalive(args.keepalive.map(|time| Keepalive { time, timeout: args.keepalive_timeout }));
    if let Some(tls) = client_tls(args)? {
        connector = connector.tls(tls);
    }
    Ok(connector)
}

/// The TLS settings of --tls-ca (with --tls-cert/--tls-key), if any.
fn client_tls(args: &Args) -> Result<Option<ClientTls>, String> {
    let Some(ca) = &args.tls_ca else { return Ok(None) };
    let mut tls = ClientTls::from_file(ca, args.tls_server_name.clone())?;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        tls = tls.with_identity(cert, key)?;
    }
    Ok(Some(tls))
}

/// The tracer of --otlp-endpoint and the OTEL_* variables, if any.
fn tracing(args: &Args) -> Result<Option<Tracing>, String> {
    let settings = TraceSettings::from_env(args.otlp_endpoint.as_deref(), |v| std::env::var(v).ok(), "greet-client")?;
    settings.as_ref().map(Tracing::start).transpose()
}

/// The metadata every call carries: the bearer token of --token-file.
fn headers(args: &Args) -> Result<Option<Metadata>, String> {
    let Some(path) = &args.token_file else { return Ok(None) };
    greet::client::bearer_metadata(&greet::client::read_token_file(path)?).map(Some)
}

async fn run(
    args: &Args,
    connector: &Connector,
    headers: Option<Metadata>,
    tracing: Option<Tracing>,
) -> Result<(), CliError> {
    let channel = connector.channel();
    let mut client = Client::new(channel.clone(), args.timeout);
    if let Some(headers) = &headers {
        client = client.with_headers(headers.clone());
    }
    if let Some(tracing) = tracing {
        let env = |name| std::env::var(name).ok();
        client = client.with_tracing(tracing, telemetry::context_from(env("TRACEPARENT"), env("TRACESTATE")));
    }
    let names = &args.names;
    match &args.command {
        Command::Unary => print(client.say_hello().await?),
        Command::ServerStream => client.server_stream(names, print).await?,
        Command::ClientStream => client.client_stream(names, args.interval).await?.into_iter().for_each(print),
        Command::Bidi => client.bidi(names, args.interval, print).await?,
        Command::All => {
            print(client.say_hello().await?);
            client.server_stream(names, print).await?;
            client.client_stream(names, args.interval).await?.into_iter().for_each(print);
            client.bidi(names, args.interval, print).await?;
        }
        Command::Greet { name } => print(client.greet(name).await?),
        Command::RouteGuide => {
            let mut client = route_guide::Client::new(channel, args.timeout);
            if let Some(headers) = headers {
                client = client.with_headers(headers);
            }
            client.run_demo(print).await?
        }
        Command::Load(load_args) => run_load(args, load_args, connector, headers).await?,
        Command::Chat { room, user, history } => run_chat(args, room, user, *history, headers).await?,
    }
    Ok(())
}

/// `client load`: the run, a progress bar on stderr (shown on a terminal
/// only), the summary on stdout. Fails if any call failed.
async fn run_load(
    args: &Args,
    load_args: &LoadArgs,
    connector: &Connector,
    headers: Option<Metadata>,
) -> Result<(), CliError> {
    let workload = match load_args.streams {
        Some(streams) => Workload::Bidi { streams, messages: load_args.messages },
        None => Workload::Unary { calls: load_args.calls },
    };
    if let Some(rps) = load_args.rps {
        if !(rps.is_finite() && rps > 0.0) {
            return Err(CliError::new("INVALID_ARGUMENT", format!("--rps must be a positive number, got {rps}")));
        }
    }
    let config =
        LoadConfig { workload, concurrency: load_args.concurrency, rps: load_args.rps, timeout: args.timeout, headers };
    let bar = ProgressBar::new(workload.calls() as u64);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta} {msg}") {
        bar.set_style(style);
    }
    let pool = connector.pool();
    let summary = load::run(&pool, &config, &|done, _| bar.set_position(done)).await;
    bar.finish_and_clear();
    if load_args.json {
        print(summary.to_json().to_string());
    } else {
        print(summary.to_text());
    }
    match summary.failed() {
        0 => Ok(()),
        failed => Err(CliError::new("LOAD", format!("{failed} of {} calls failed", workload.calls()))),
    }
}

/// `client chat`: stdin lines in, room events out. Each address of --addr
/// gets a channel with the flags' settings; the chat client moves between them.
async fn run_chat(
    args: &Args,
    room: &str,
    user: &str,
    history: Option<u32>,
    headers: Option<Metadata>,
) -> Result<(), CliError> {
    let options = ChatOptions {
        addrs: args.addr.split(',').map(str::trim).filter(|a| !a.is_empty()).map(String::from).collect(),
        room: room.to_string(),
        user: user.to_string(),
        history,
        give_up_after: args.timeout,
        headers,
    };
    let tls = client_tls(args).map_err(|e| CliError::new("INVALID_ARGUMENT", e))?;
    let keepalive = args.keepalive.map(|time| Keepalive { time, timeout: args.keepalive_timeout });
    let connect = |addr: &str| {
        let connector = chat::connector(addr, |mut c| {
            if let Some(tls) = &tls {
                c = c.tls(tls.clone());
            }
            if keepalive.is_some() {
                c = c.keepalive(keepalive);
            }
            c
        })?;
        Ok(connector.channel())
    };
    let (lines, input) = async_channel::bounded(64);
    // Stdin blocks, so it gets its own thread; dropping `lines` at EOF is the Ctrl-D.
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if !line.trim().is_empty() && lines.send_blocking(line).is_err() {
                break;
            }
        }
    });
    chat::run(&options, connect, input, |output| match chat::format_output(&output) {
        Some(line) => print(line),
        None => {
            if let Output::Notice(notice) = output {
                eprintln!("chat: {notice}");
            }
        }
    })
    .await
}

fn main() {
    greet::client::exit(run_main())
}

/// The process's exit code: 0, or 1 on a failure (reported on stderr).
fn run_main() -> u8 {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let set_up = connector(&args).and_then(|connector| Ok((connector, headers(&args)?, tracing(&args)?)));
    let (connector, headers, tracing) = match set_up {
        Ok(set_up) => set_up,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    // The one place the client blocks.
    let result = block_on(run(&args, &connector, headers, tracing.clone()));
    if let Some(tracing) = tracing {
        // The process ends without exit handlers: export the spans first
        // (bounded: a dead collector refuses at once, a silent one times out).
        tracing.shutdown(Duration::from_secs(5));
    }
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}
