//! `interop-server`: serves `grpc.testing.TestService` for gRPC's interop
//! suite (plus everything the main server serves) until SIGINT or SIGTERM.
//! Flags follow the suite's conventions: `--port=10000 --use_tls=true`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Parser};
use greet::server::{self, DrainPolicy, ServerConfig};
use greet::tls::ServerTls;

#[derive(Parser, Debug)]
#[command(version, about = "gRPC interop test server (grpc.testing.TestService)")]
struct Args {
    /// Port to listen on, on all interfaces (0 picks a free one).
    #[arg(long, default_value_t = 10000)]
    port: u16,
    /// Serve over TLS (needs --tls_cert_file and --tls_key_file: no test
    /// certificate is bundled).
    #[arg(long = "use_tls", action = ArgAction::Set, default_value_t = false, num_args = 0..=1,
          default_missing_value = "true")]
    use_tls: bool,
    /// PEM certificate chain for TLS.
    #[arg(long = "tls_cert_file")]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long = "tls_key_file")]
    tls_key_file: Option<PathBuf>,
    /// Once serving, write the bound addresses to PATH as JSON,
    /// {"grpc": "HOST:PORT", "admin": null} (atomically: PATH.tmp, then a rename).
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
}

fn config(args: &Args) -> Result<ServerConfig, String> {
    let tls = match (args.use_tls, &args.tls_cert_file, &args.tls_key_file) {
        (false, _, _) => None,
        (true, Some(cert), Some(key)) => Some(ServerTls::from_files(cert, key)?),
        (true, _, _) => return Err("--use_tls needs --tls_cert_file and --tls_key_file".to_string()),
    };
    Ok(ServerConfig {
        addr: format!("[::]:{}", args.port),
        stream_interval: Duration::ZERO,
        tls,
        interop: true,
        ready_file: args.ready_file.clone(),
        ..Default::default()
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = match config(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let signal = match server::termination_signal() {
        Ok(signal) => signal,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match server::run(&config, signal, DrainPolicy { delay: Duration::ZERO, grace: Duration::from_secs(5) }) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
