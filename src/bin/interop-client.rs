//! `interop-client`: runs one test case of gRPC's interop suite against a
//! server. Flags follow the suite's conventions (`--test_case=large_unary
//! --server_port=10000 --use_tls=true`). Exit 0 on pass; on failure one
//! line `error: <case>: <why>` on stderr and exit 1.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser};
use greet::client::interop::{InteropClient, SoakConfig, Target};
use greet::tls::ClientTls;

#[derive(Parser, Debug)]
#[command(version, about = "gRPC interop test client")]
struct Args {
    /// Server host name or address.
    #[arg(long = "server_host", default_value = "localhost")]
    server_host: String,
    /// Server port.
    #[arg(long = "server_port", default_value_t = 10000)]
    server_port: u16,
    /// Name to expect in the server's TLS certificate (and to send as
    /// authority) instead of --server_host.
    #[arg(long = "server_host_override")]
    server_host_override: Option<String>,
    /// Test case to run, e.g. large_unary; `all` runs every case.
    #[arg(long = "test_case", default_value = "large_unary")]
    test_case: String,
    /// Connect over TLS.
    #[arg(long = "use_tls", action = ArgAction::Set, default_value_t = false, num_args = 0..=1,
          default_missing_value = "true")]
    use_tls: bool,
    /// Trust the test CA instead of the system roots; no test CA is bundled,
    /// so --ca_file must name it.
    #[arg(long = "use_test_ca", action = ArgAction::Set, default_value_t = false, num_args = 0..=1,
          default_missing_value = "true")]
    use_test_ca: bool,
    /// PEM file of the CA to trust.
    #[arg(long = "ca_file")]
    ca_file: Option<PathBuf>,
    /// Iterations of rpc_soak and channel_soak.
    #[arg(long = "soak_iterations", default_value_t = 10)]
    soak_iterations: usize,
    /// Soak iterations that may fail.
    #[arg(long = "soak_max_failures", default_value_t = 0)]
    soak_max_failures: usize,
    /// Slowest acceptable soak iteration, in milliseconds.
    #[arg(long = "soak_per_iteration_max_acceptable_latency_ms", default_value_t = 1000)]
    soak_per_iteration_max_acceptable_latency_ms: u64,
    /// Time the whole soak may take, in seconds.
    #[arg(long = "soak_overall_timeout_seconds", default_value_t = 10)]
    soak_overall_timeout_seconds: u64,
    /// Least time between the starts of two soak iterations, in milliseconds.
    #[arg(long = "soak_min_time_ms_between_rpcs", default_value_t = 0)]
    soak_min_time_ms_between_rpcs: u64,
}

fn target(args: &Args) -> Result<Target, String> {
    let tls = if !args.use_tls {
        None
    } else {
        let server_name = args.server_host_override.clone();
        match &args.ca_file {
            Some(ca) => Some(ClientTls::from_file(ca, server_name)?),
            None if args.use_test_ca => return Err("--use_test_ca needs --ca_file: no test CA is bundled".to_string()),
            None => Some(ClientTls { ca_pem: None, server_name, identity: None }),
        }
    };
    let host = &args.server_host;
    // A bare IPv6 address needs brackets before the port.
    let addr = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{}", args.server_port)
    } else {
        format!("{host}:{}", args.server_port)
    };
    Ok(Target { addr, tls })
}

fn main() {
    greet::client::exit(run_main())
}

/// The process's exit code: 0, or 1 on a failure (reported on stderr).
fn run_main() -> u8 {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let target = match target(&args) {
        Ok(target) => target,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let soak = SoakConfig {
        iterations: args.soak_iterations,
        max_failures: args.soak_max_failures,
        max_latency: Duration::from_millis(args.soak_per_iteration_max_acceptable_latency_ms),
        overall_timeout: Duration::from_secs(args.soak_overall_timeout_seconds),
        min_time_between_rpcs: Duration::from_millis(args.soak_min_time_ms_between_rpcs),
    };
    let client = InteropClient::new(target, soak);
    let cases: Vec<&str> = if args.test_case == "all" {
        greet::client::interop::TEST_CASES.to_vec()
    } else {
        vec![args.test_case.as_str()]
    };
    // `all` runs every case and reports each failure; any failure fails the run.
    // The one place the client blocks.
    let failed = futures::executor::block_on(async {
        let mut failed = false;
        for case in cases {
            match client.run(case).await {
                Ok(()) => log::info!("{case}: passed"),
                Err(why) => {
                    // One line, whatever a peer put in a status message.
                    eprintln!("error: {case}: {}", why.replace(['\n', '\r'], " "));
                    failed = true;
                }
            }
        }
        failed
    });
    if failed {
        return 1;
    }
    0
}
