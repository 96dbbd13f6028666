//! `client`: the Go demo's client, one call pattern per subcommand.
//! Stdout carries one line per message received; failures print one line
//! `error: <CODE>: <message>` to stderr and exit non-zero.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use greet::chat_client::{self, ChatOptions, Output};
use greet::client::{self, Client};
use greet::duration;
use greet::route_guide_client;
use greet::status::CliError;
use greet::tls::{self, ClientTls};
use grpcio::Channel;

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
    /// chat.v1.Chat: says each line of stdin in the room and prints the
    /// room's messages; Ctrl-D leaves. --addr may list several servers
    /// (a,b): when one goes away the client resumes on the next.
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
            let tls = ClientTls::from_file(ca, args.tls_server_name.clone())?;
            Ok(tls::channel(&args.addr, Some(&tls)))
        }
        None => Ok(client::connect(&args.addr)),
    }
}

fn run(args: &Args, channel: Channel) -> Result<(), CliError> {
    let client = Client::new(channel.clone(), args.timeout);
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
        Command::Chat { room, user, history } => chat(args, room, user, *history)?,
        Command::RouteGuide => route_guide_client::Client::new(channel, args.timeout).run_demo(print)?,
    }
    Ok(())
}

/// `chat`: stdin lines in, room events out; reconnects over the --addr list.
fn chat(args: &Args, room: &str, user: &str, history: Option<u32>) -> Result<(), CliError> {
    let options = ChatOptions {
        addrs: args.addr.split(',').map(str::trim).filter(|a| !a.is_empty()).map(String::from).collect(),
        room: room.to_string(),
        user: user.to_string(),
        history,
        give_up_after: args.timeout,
    };
    let tls = match &args.tls_ca {
        Some(ca) => Some(
            ClientTls::from_file(ca, args.tls_server_name.clone()).map_err(|e| CliError::new("INVALID_ARGUMENT", e))?,
        ),
        None => None,
    };
    let plaintext = chat_client::plaintext();
    let connect = move |addr: &str| match &tls {
        Some(tls) => tls::channel(addr, Some(tls)),
        None => plaintext(addr),
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
    chat_client::run(&options, connect, input, |output| match chat_client::format_output(&output) {
        Some(line) => print(line),
        None => {
            if let Output::Notice(notice) = output {
                eprintln!("chat: {notice}");
            }
        }
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let channel = match channel(&args) {
        Ok(channel) => channel,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(&args, channel) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
