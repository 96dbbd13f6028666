//! `client`: the Go demo's client, one call pattern per subcommand.
//! Stdout carries one line per message received; failures print one line
//! `error: <CODE>: <message>` to stderr and exit non-zero.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use greet::client::{self, Client};
use greet::duration;
use greet::status::CliError;

#[derive(Parser, Debug)]
#[command(version, about = "gRPC greeter client (drop-in for the Go demo's client)")]
struct Args {
    /// Server address, host:port (plaintext).
    #[arg(long, default_value = "localhost:8080", global = true)]
    addr: String,
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
}

fn print(line: String) {
    println!("{line}");
}

fn run(args: &Args) -> Result<(), CliError> {
    let client = Client::new(client::connect(&args.addr), args.timeout);
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
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
