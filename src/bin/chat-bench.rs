//! `chat-bench`: measures a running chat (see `greet::client::chat_bench`):
//! deliveries per second to the subscribers of one room, and latency.
//! Prints one JSON object.

use std::process::ExitCode;

use clap::Parser;
use greet::client::chat_bench::{self, BenchOptions};

#[derive(Parser, Debug)]
#[command(version, about = "Measures chat.v1.Chat fan-out: messages/s to N subscribers and latency")]
struct Args {
    /// Servers, comma separated; subscribers are spread over them (replicas sharing a broker).
    #[arg(long, default_value = "localhost:8080", value_delimiter = ',')]
    addr: Vec<String>,
    /// Members of the room that only listen.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Messages sent at --rate, for latency.
    #[arg(long, default_value_t = 500)]
    paced: usize,
    /// Messages per second in the paced phase.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Messages sent back to back, for throughput.
    #[arg(long, default_value_t = 2000)]
    burst: usize,
    /// Receiving threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let options = BenchOptions {
        addrs: args.addr,
        subscribers: args.subscribers,
        paced: args.paced,
        rate: args.rate,
        burst: args.burst,
        threads: args.threads,
    };
    match chat_bench::run(&options) {
        Ok(r) => {
            let json = serde_json::json!({
                "subscribers": r.subscribers,
                "replicas": r.replicas,
                "deliveries_per_sec": r.deliveries_per_sec.round(),
                "messages_per_sec": r.messages_per_sec.round(),
                "latency_p50_ms": (r.latency_p50_ms * 1000.0).round() / 1000.0,
                "latency_p99_ms": (r.latency_p99_ms * 1000.0).round() / 1000.0,
                "latency_max_ms": (r.latency_max_ms * 1000.0).round() / 1000.0,
            });
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
