//! `client load`: many calls at once over a [`Pool`], then a summary — calls
//! by status code, calls by the instance that served them (its `x-served-by`
//! header), latency percentiles and the rate achieved. It is what the
//! scale-out tests drive and what a user runs for a capacity check.
//!
//! The calls run as `concurrency` futures on the calling thread (one
//! `block_on` at the top); the client's completion-queue threads wake them.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::prelude::*;
use futures_timer::Delay;
use grpcio::{CallOption, Metadata, WriteFlags};

use super::greet::call_option;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::channel::Pool;
use super::CliError;
use crate::proto::greet::{HelloRequest, NoParam};
use crate::proto::greet_grpc::GreetServiceClient;
use crate::wire::SERVED_BY_HEADER;

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// `calls` unary `SayHello` calls.
    Unary { calls: usize },
    /// `streams` bidi streams, each `messages` request/answer round trips.
    Bidi { streams: usize, messages: usize },
}

impl Workload {
    /// Calls (unary) or streams (bidi) in all.
    pub fn calls(self) -> usize {
        match self {
            Workload::Unary { calls } => calls,
            Workload::Bidi { streams, .. } => streams,
        }
    }
}

/// How to run a [`Workload`].
#[derive(Clone)]
pub struct LoadConfig {
    pub workload: Workload,
    /// Calls (or streams) in flight at once.
    pub concurrency: usize,
    /// Start calls at this fixed rate (per second); `None`: as fast as they complete.
    pub rps: Option<f64>,
    /// Deadline of each call (of each stream, for bidi).
    pub timeout: Duration,
    /// Sent with every call (e.g. the bearer token of `--token-file`).
    pub headers: Option<Metadata>,
}

/// How one call (or stream) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `OK`, or the status code's name.
    pub code: String,
    /// The `x-served-by` header of the answer, if one came.
    pub instance: Option<String>,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    pub workload: Workload,
    /// Calls (or streams) by status code name.
    pub codes: BTreeMap<String, u64>,
    /// Calls (or streams) by the instance that answered; calls that got no
    /// answer header are not counted here.
    pub instances: BTreeMap<String, u64>,
    /// Latency of each call (unary) or of each round trip (bidi), in microseconds.
    pub latency: Histogram<u64>,
    pub elapsed: Duration,
}

impl Summary {
    /// Calls (or streams) that ended OK.
    pub fn ok(&self) -> u64 {
        self.codes.get("OK").copied().unwrap_or(0)
    }

    /// Calls (or streams) that did not.
    pub fn failed(&self) -> u64 {
        self.codes.iter().filter(|(code, _)| *code != "OK").map(|(_, n)| n).sum()
    }

    /// Calls (or streams) completed per second.
    pub fn rate(&self) -> f64 {
        (self.ok() + self.failed()) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn millis(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    /// The summary as one JSON object (what `client load --json` prints).
    pub fn to_json(&self) -> Value {
        let (kind, messages) = match self.workload {
            Workload::Unary { .. } => ("unary", Value::Null),
            Workload::Bidi { messages, .. } => ("bidi", json!(messages)),
        };
        json!({
            "workload": kind,
            "calls": self.ok() + self.failed(),
            "messages_per_stream": messages,
            "ok": self.ok(),
            "failed": self.failed(),
            "codes": self.codes,
            "instances": self.instances,
            "latency_ms": {
                "p50": self.millis(0.50),
                "p90": self.millis(0.90),
                "p99": self.millis(0.99),
                "max": self.latency.max() as f64 / 1000.0,
            },
            "elapsed_s": self.elapsed.as_secs_f64(),
            "rate_per_s": self.rate(),
        })
    }

    /// The summary as a few lines for a person.
    pub fn to_text(&self) -> String {
        let what = match self.workload {
            Workload::Unary { .. } => "calls",
            Workload::Bidi { .. } => "streams",
        };
        let list =
            |map: &BTreeMap<String, u64>| map.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ");
        format!(
            "{} {what} in {:.2} s ({:.0}/s): {} ok, {} failed\nby status: {}\nby instance: {}\n\
             latency ms: p50 {:.2}, p90 {:.2}, p99 {:.2}, max {:.2}",
            self.ok() + self.failed(),
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.ok(),
            self.failed(),
            list(&self.codes),
            list(&self.instances),
            self.millis(0.50),
            self.millis(0.90),
            self.millis(0.99),
            self.latency.max() as f64 / 1000.0,
        )
    }
}

/// The `x-served-by` value in `headers`.
pub fn served_by(headers: &Metadata) -> Option<String> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(SERVED_BY_HEADER))
        .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
}

fn code_of(error: grpcio::Error) -> String {
    CliError::from(error).code
}

/// Runs `config` over `pool` and summarises it. `on_done` is told of each
/// call (or stream) as it ends, with the number ended so far: the CLI's
/// progress bar, a test's trigger for a fault. Its workers are futures
/// polled by whoever awaits this one (the CLI blocks on it once, in `main`).
pub async fn run(pool: &Pool, config: &LoadConfig, on_done: &(dyn Fn(u64, &Outcome) + Sync)) -> Summary {
    let total = config.workload.calls();
    let next = AtomicUsize::new(0);
    // The workers run on this thread only, so plain cells are enough.
    let codes = RefCell::new(BTreeMap::<String, u64>::new());
    let instances = RefCell::new(BTreeMap::<String, u64>::new());
    // 1 µs to 1 h at 3 significant figures: the bounds are valid, so this cannot fail.
    let latency = RefCell::new(Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"));
    let ended = RefCell::new(0u64);
    let start = Instant::now();

    let worker = || async {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= total {
                break;
            }
            if let Some(rps) = config.rps {
                let due = start + Duration::from_secs_f64(i as f64 / rps);
                let now = Instant::now();
                if due > now {
                    Delay::new(due - now).await;
                }
            }
            let client = GreetServiceClient::new(pool.pick().clone());
            let option = call_option(config.timeout, config.headers.as_ref());
            let outcome = match config.workload {
                Workload::Unary { .. } => {
                    let began = Instant::now();
                    let outcome = unary(&client, option).await;
                    record(&latency, began.elapsed());
                    outcome
                }
                Workload::Bidi { messages, .. } => bidi(&client, option, messages, &latency).await,
            };
            *codes.borrow_mut().entry(outcome.code.clone()).or_default() += 1;
            if let Some(instance) = &outcome.instance {
                *instances.borrow_mut().entry(instance.clone()).or_default() += 1;
            }
            let count = {
                let mut ended = ended.borrow_mut();
                *ended += 1;
                *ended
            };
            on_done(count, &outcome);
        }
    };
    let workers: Vec<_> = (0..config.concurrency.clamp(1, total.max(1))).map(|_| worker()).collect();
    future::join_all(workers).await;
    Summary {
        workload: config.workload,
        codes: codes.into_inner(),
        instances: instances.into_inner(),
        latency: latency.into_inner(),
        elapsed: start.elapsed(),
    }
}

fn record(latency: &RefCell<Histogram<u64>>, elapsed: Duration) {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX).max(1);
    // Saturating: a value beyond the bounds is clamped, never an error.
    latency.borrow_mut().saturating_record(micros);
}

async fn unary(client: &GreetServiceClient, option: CallOption) -> Outcome {
    let mut receiver = match client.say_hello_async_opt(&NoParam::default(), option) {
        Ok(receiver) => receiver,
        Err(e) => return Outcome { code: code_of(e), instance: None },
    };
    match receiver.message().await {
        Ok(_) => {
            let instance = receiver.headers().await.ok().and_then(served_by);
            Outcome { code: "OK".to_string(), instance }
        }
        Err(e) => Outcome { code: code_of(e), instance: None },
    }
}

/// One bidi stream: `messages` round trips (send one name, read its answer),
/// then a clean close. Each round trip's latency is recorded.
async fn bidi(
    client: &GreetServiceClient,
    option: CallOption,
    messages: usize,
    latency: &RefCell<Histogram<u64>>,
) -> Outcome {
    let (mut sink, mut receiver) = match client.say_hello_bidirectional_streaming_opt(option) {
        Ok(call) => call,
        Err(e) => return Outcome { code: code_of(e), instance: None },
    };
    let mut instance = None;
    let result: grpcio::Result<()> = async {
        for i in 0..messages {
            let began = Instant::now();
            let req = HelloRequest { name: format!("load-{i}"), ..Default::default() };
            sink.send((req, WriteFlags::default())).await?;
            match receiver.try_next().await? {
                Some(_) => record(latency, began.elapsed()),
                None => return Err(grpcio::Error::RemoteStopped),
            }
            if instance.is_none() {
                instance = served_by(receiver.headers().await?);
            }
        }
        let closed = super::half_close(&mut sink).await;
        let end = receiver.try_next().await;
        match (closed, end) {
            (_, Err(e)) => Err(e),
            (_, Ok(Some(_))) => Err(grpcio::Error::RemoteStopped),
            (Err(e), Ok(None)) => Err(e),
            (Ok(()), Ok(None)) => Ok(()),
        }
    }
    .await;
    match result {
        Ok(()) => Outcome { code: "OK".to_string(), instance },
        Err(e) => Outcome { code: code_of(e), instance },
    }
}
