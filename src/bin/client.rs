//! `client`: the Go demo's client, one call pattern per subcommand.
//! Stdout carries one line per message received; failures print one line
//! `error: <CODE>: <message>` to stderr and exit non-zero.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use greet::auth;
use greet::client::{self, Client};
use greet::duration;
use greet::route_guide_client;
use greet::status::CliError;
use greet::tls::{self, ClientTls};
use grpcio::{Channel, Metadata};

#[derive(Parser, Debug)]
#[command(version, about = "gRPC greeter client (drop-in for the Go demo's client)")]
struct Args {
    /// Server address, host:port (plaintext unless --tls-ca is given).
    #[arg(long, default_value = "localhost:8080", global = true)]
    addr: String,
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
}

/// Prints one received message. A reader that went away (`client ... | head`)
/// ends the program quietly, as it would any Unix filter.
fn print(line: String) {
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{line}").and_then(|()| stdout.flush()).is_err() {
        std::process::exit(0);
    }
}

/// A plaintext channel, or a TLS one with --tls-ca; the error is one line.
fn channel(args: &Args) -> Result<Channel, String> {
    match &args.tls_ca {
        Some(ca) => {
            let mut tls = ClientTls::from_file(ca, args.tls_server_name.clone())?;
            if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
                tls = tls.with_identity(cert, key)?;
            }
            Ok(tls::channel(&args.addr, Some(&tls)))
        }
        None => Ok(client::connect(&args.addr)),
    }
}

/// The metadata every call carries: the bearer token of --token-file.
fn headers(args: &Args) -> Result<Option<Metadata>, String> {
    let Some(path) = &args.token_file else { return Ok(None) };
    auth::bearer_metadata(&auth::read_token_file(path)?).map(Some)
}

fn run(args: &Args, channel: Channel, headers: Option<Metadata>) -> Result<(), CliError> {
    let mut client = Client::new(channel.clone(), args.timeout);
    let mut route_guide = route_guide_client::Client::new(channel, args.timeout);
    if let Some(headers) = headers {
        client = client.with_headers(headers.clone());
        route_guide = route_guide.with_headers(headers);
    }
    let names = &args.names;
    let unary = || client.say_hello().map(print);
    let server_stream = || client.server_stream(names, print);
    let client_stream = || client.client_stream(names, args.interval).map(|list| list.into_iter().for_each(print));
    let bidi = || client.bidi(names, args.interval, print);
    match &args.command {
        Command::Unary => unary()?,
        Command::ServerStream => server_stream()?,
        Command::ClientStream => client_stream()?,
        Command::Bidi => bidi()?,
        Command::All => {
            unary()?;
            server_stream()?;
            client_stream()?;
            bidi()?;
        }
        Command::Greet { name } => print(client.greet(name)?),
        Command::RouteGuide => route_guide.run_demo(print)?,
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let (channel, headers) = match channel(&args).and_then(|channel| Ok((channel, headers(&args)?))) {
        Ok(set_up) => set_up,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(&args, channel, headers) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
