//! Measures a running chat (the `chat-bench` binary): messages per second
//! delivered to the subscribers of one room, and send-to-receive latency
//! at a fixed rate. One sender, `subscribers` members spread over the
//! given servers (one replica, or several sharing a broker).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::executor::block_on;
use futures::future::join_all;
use futures::prelude::*;
use futures_timer::Delay;
use grpcio::{CallOption, ChannelBuilder, EnvBuilder, WriteFlags};

use crate::proto::chat::{client_frame, server_event, ClientFrame, Join, Say};
use crate::proto::chat_grpc::ChatClient;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub addrs: Vec<String>,
    pub subscribers: usize,
    /// Messages sent at `rate` per second, for latency.
    pub paced: usize,
    pub rate: u32,
    /// Messages sent back to back, for throughput.
    pub burst: usize,
    /// Threads receiving (the subscribers are split among them).
    pub threads: usize,
}

/// What was measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub subscribers: usize,
    pub replicas: usize,
    /// Deliveries per second during the burst (messages × subscribers / time).
    pub deliveries_per_sec: f64,
    /// Messages per second the burst was sent at, as the room accepted them.
    pub messages_per_sec: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
}

fn frame(frame: client_frame::Frame) -> ClientFrame {
    ClientFrame { frame: Some(frame), ..Default::default() }
}

fn join(room: &str, user: &str) -> ClientFrame {
    let join = Join { room: room.into(), user: user.into(), history: Some(0), ..Default::default() };
    frame(client_frame::Frame::Join(join))
}

fn say(text: String) -> ClientFrame {
    frame(client_frame::Frame::Say(Say { text, ..Default::default() }))
}

/// One subscriber: joins, signals it is in, then records each message's
/// latency (paced phase) and when the burst's last message arrived.
async fn subscribe(
    client: ChatClient,
    room: String,
    user: String,
    start: Instant,
    expect: usize,
    paced: usize,
    joined: async_channel::Sender<()>,
) -> Result<(Vec<Duration>, Instant), String> {
    let (mut sink, mut events) = client.connect_opt(CallOption::default()).map_err(|e| e.to_string())?;
    sink.send((join(&room, &user), WriteFlags::default())).await.map_err(|e| e.to_string())?;
    let mut latencies = Vec::with_capacity(paced);
    let mut got = 0;
    let mut welcomed = false;
    let mut last = Instant::now();
    while got < expect {
        let event = events.try_next().await.map_err(|e| format!("{user}: {e}"))?;
        match event.and_then(|e| e.event) {
            Some(server_event::Event::Welcome(_)) if !welcomed => {
                welcomed = true;
                let _ = joined.send(()).await;
            }
            Some(server_event::Event::Message(m)) => {
                last = Instant::now();
                got += 1;
                if got <= paced {
                    let sent: u64 = m.text.split(' ').nth(1).and_then(|t| t.parse().ok()).unwrap_or(0);
                    latencies.push(start.elapsed().saturating_sub(Duration::from_nanos(sent)));
                }
            }
            Some(_) => {}
            None => return Err(format!("{user}: the call ended after {got} messages")),
        }
    }
    let _ = super::half_close(&mut sink).await;
    Ok((latencies, last))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// Runs both phases once.
pub fn run(options: &BenchOptions) -> Result<Report, String> {
    if options.addrs.is_empty() || options.subscribers == 0 {
        return Err("need at least one address and one subscriber".into());
    }
    let env = Arc::new(EnvBuilder::new().cq_count(options.threads.max(1)).name_prefix("grpc-bench").build());
    // A few connections per server, so that one connection's window is not the limit.
    let clients: Vec<ChatClient> = options
        .addrs
        .iter()
        .flat_map(|addr| (0..4).map(move |_| addr))
        .map(|addr| ChatClient::new(ChannelBuilder::new(env.clone()).connect(addr)))
        .collect();
    let room = format!("bench-{}", crate::wire::now_unix_ms());
    let start = Instant::now();
    let expect = options.paced + options.burst;
    let (joined_tx, joined_rx) = async_channel::unbounded();

    let threads = options.threads.clamp(1, options.subscribers);
    let mut receivers = Vec::new();
    for t in 0..threads {
        let mine: Vec<usize> = (t..options.subscribers).step_by(threads).collect();
        let work: Vec<_> = mine
            .into_iter()
            .map(|i| {
                // Members alternate between servers first, then connections.
                let client = clients[(i % options.addrs.len()) * 4 + (i / options.addrs.len()) % 4].clone();
                subscribe(client, room.clone(), format!("sub{i}"), start, expect, options.paced, joined_tx.clone())
            })
            .collect();
        receivers.push(std::thread::spawn(move || block_on(join_all(work))));
    }
    drop(joined_tx);
    for _ in 0..options.subscribers {
        block_on(joined_rx.recv()).map_err(|_| "a subscriber failed to join".to_string())?;
    }

    let sender = clients[0].clone();
    let (mut sink, mut echoes) = sender.connect_opt(CallOption::default()).map_err(|e| e.to_string())?;
    let sent_burst = block_on(async {
        sink.send((join(&room, "sender"), WriteFlags::default())).await?;
        // The sender's own echoes must be read, or it would be cut off.
        let drain = async {
            while echoes.try_next().await?.is_some() {}
            Ok::<(), grpcio::Error>(())
        };
        let send = async {
            let interval = Duration::from_secs_f64(1.0 / f64::from(options.rate.max(1)));
            for n in 0..options.paced {
                let due = interval * n as u32;
                let now = start.elapsed();
                if due > now {
                    Delay::new(due - now).await;
                }
                sink.send((say(format!("p {}", start.elapsed().as_nanos())), WriteFlags::default())).await?;
            }
            let burst_start = Instant::now();
            for n in 0..options.burst {
                let flags = WriteFlags::default().buffer_hint(n + 1 < options.burst);
                sink.send((say(format!("b {}", start.elapsed().as_nanos())), flags)).await?;
            }
            super::half_close(&mut sink).await?;
            Ok::<Instant, grpcio::Error>(burst_start)
        };
        let (sent, drained) = future::join(send, drain).await;
        drained?;
        sent
    })
    .map_err(|e| format!("sender: {e}"))?;

    let mut latencies = Vec::new();
    let mut last = sent_burst;
    for receiver in receivers {
        for result in receiver.join().map_err(|_| "a receiving thread panicked".to_string())? {
            let (mut l, at) = result?;
            latencies.append(&mut l);
            last = last.max(at);
        }
    }
    latencies.sort();
    let burst_secs = last.duration_since(sent_burst).as_secs_f64().max(1e-9);
    Ok(Report {
        subscribers: options.subscribers,
        replicas: options.addrs.len(),
        deliveries_per_sec: (options.burst * options.subscribers) as f64 / burst_secs,
        messages_per_sec: options.burst as f64 / burst_secs,
        latency_p50_ms: percentile(&latencies, 0.50),
        latency_p99_ms: percentile(&latencies, 0.99),
        latency_max_ms: latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
    })
}
