//! HTTP/2 rapid reset (CVE-2023-44487) and what an attacker tries next,
//! against the supported deployments: two replicas behind HAProxy with the
//! shipped `deploy/haproxy/haproxy.cfg`, and behind Envoy with the shipped
//! `deploy/envoy/envoy.yaml`; each case runs behind both (`NAME::haproxy`,
//! `NAME::envoy`). Every flood (`scripts/h2flood.py`, Debian's python3-h2)
//! is bounded in connections and seconds and stays on 127.0.0.x, while a
//! well-behaved client calls SayHello at 500 calls/s from 127.0.0.1. The bar
//! for each: at least 99% of that client's calls OK during the flood, every
//! replica under 64 MiB (and the proxy under PROXY_MIB). The bare server
//! falls to a much smaller flood: the gRPC C core 1.56.2 that grpcio 0.13
//! bundles predates the core's fix, which is why a proxy is the supported
//! deployment.
//!
//! What holds behind HAProxy is `http-request wait-for-body time 1s
//! at-least 5`: a request goes to a replica only once its body has begun,
//! so a stream reset before that never reaches one; and `maxconn 64` per
//! replica for unary calls, the rest queued at the proxy, where a stream
//! reset just after its whole request is dropped (that one holds the
//! replicas' memory, not the client's calls). Behind Envoy: the buffer
//! filter (a unary request goes on only once whole), a bound of 64 unary
//! calls per replica (the rest waiting at Envoy), and the premature-reset
//! limit, which closes connections that reset most of their streams.
//! Sibling tests show each can fail: what the HAProxy config it replaced (a
//! per-address request-rate cap) did, a flood spread over 16 addresses
//! walking through it and a busy legitimate client failed by it; and each
//! config with a defence taken out.

#[path = "it/common/mod.rs"]
mod common;

use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use common::envoy::Envoy;
use common::process::{repo_root, Backend, Haproxy, ServerProcess};
use greet::client::load::{self, LoadConfig, Workload};
use greet::client::Connector;
use serde_json::Value;

/// One flooding test at a time, from before its servers start until after
/// they stop: two at once would measure each other.
static FLOODS: Mutex<()> = Mutex::new(());

fn one_flood_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    // A test that panicked while holding it left nothing behind to protect.
    FLOODS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The config shipped before, whose frontend capped each client address at
/// 5,000 requests a second (connections of an address over it closed and refused).
const OLD_PER_ADDRESS_CAP: &str = "tests/fixtures/haproxy-per-address-cap.cfg";

/// 16 connections, one from each of 127.0.0.10..25, each paced to 4,000
/// streams/s (under the old cap of 5,000 per address): 64,000 streams/s for 6 s.
const SIXTEEN_ADDRESSES: [&str; 8] =
    ["--sources", "127.0.0.10-127.0.0.25", "--connections", "16", "--rate", "4000", "--seconds", "6"];

/// The proxy in front of the replicas: each case runs behind both, with
/// its shipped config (`deploy/haproxy/haproxy.cfg`, `deploy/envoy/envoy.yaml`).
#[derive(Clone, Copy, Debug)]
enum Proxy {
    Haproxy,
    Envoy,
}

/// A started proxy, stopped on drop.
enum Front {
    Haproxy(Haproxy),
    Envoy(Envoy),
}

impl Front {
    fn addr(&self) -> &str {
        match self {
            Front::Haproxy(h) => &h.addr,
            Front::Envoy(e) => &e.addr,
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Front::Haproxy(h) => h.process.pid(),
            Front::Envoy(e) => e.process.pid(),
        }
    }
}

/// Two replicas behind a proxy; everything stopped on drop.
struct Deployment {
    // Dropped first: the proxy stops before the replicas.
    proxy: Front,
    replicas: Vec<ServerProcess>,
}

impl Deployment {
    fn shipped(proxy: Proxy) -> Deployment {
        Self::edited(proxy, &[])
    }

    /// Behind `proxy` with each `(text, replacement)` of `edits` replaced in
    /// its shipped config (a sibling test that takes a defence out to show
    /// it is what holds); panics if the shipped config lacks one of the texts.
    fn edited(proxy: Proxy, edits: &[(&str, &str)]) -> Deployment {
        let edit = |config: String| {
            edits.iter().fold(config, |config, (text, replacement)| {
                let edited = config.replace(text, replacement);
                assert_ne!(edited, config, "the shipped {proxy:?} config has {text:?}");
                edited
            })
        };
        Self::start(|replicas| match proxy {
            Proxy::Haproxy => Front::Haproxy(Haproxy::start_edited(&backends(replicas), edit)),
            Proxy::Envoy => {
                let list: Vec<(&str, &str)> =
                    REPLICAS.iter().zip(replicas).map(|(n, r)| (*n, r.addr.as_str())).collect();
                Front::Envoy(Envoy::start_edited(&list, edit))
            }
        })
    }

    /// The HAProxy config shipped before, with its per-address cap.
    fn with_the_old_per_address_cap() -> Deployment {
        Self::start(|replicas| {
            Front::Haproxy(Haproxy::start_template(&repo_root().join(OLD_PER_ADDRESS_CAP), &backends(replicas)))
        })
    }

    fn start(proxy: impl FnOnce(&[ServerProcess]) -> Front) -> Deployment {
        let replicas: Vec<ServerProcess> = REPLICAS.iter().map(|id| ServerProcess::start(id, &[])).collect();
        let proxy = proxy(&replicas);
        Deployment { proxy, replicas }
    }

    fn pids(&self) -> Vec<u32> {
        self.replicas.iter().map(|r| r.process.pid()).collect()
    }

    /// Runs h2flood against the proxy with `args`, sampling every replica's
    /// RSS and the proxy's.
    fn flood(&self, args: &[&str]) -> Flood {
        Flood::run(self.proxy.addr(), &self.pids(), Some(self.proxy.pid()), args)
    }

    /// Asserts that no stream of a flood on helloworld's SayHello (the
    /// well-behaved client's method) started a call on a replica: they
    /// started no more SayHello calls than that client made.
    fn assert_none_of_the_flood_reached_them(&self, flood: &Flood) {
        let started = self.calls_started(("helloworld.Greeter", "SayHello"));
        let made = flood.probe_calls();
        eprintln!("the replicas started {started} SayHello calls, the well-behaved client made {made}");
        assert!(
            started <= made,
            "streams of the flood reached the replicas: {started} SayHello calls started there, {made} made by the \
             well-behaved client"
        );
    }

    /// Calls of `service`'s `method` (e.g. `helloworld.Greeter`, `SayHello`)
    /// whose handler started on any replica: what reached them, from their
    /// `grpc_server_started_total` on `/metrics`.
    fn calls_started(&self, (service, method): (&str, &str)) -> f64 {
        let labels = [&format!("grpc_service=\"{service}\"")[..], &format!("grpc_method=\"{method}\"")];
        self.replicas.iter().map(|replica| replica.counter("grpc_server_started_total", &labels)).sum()
    }
}

const REPLICAS: [&str; 2] = ["r1", "r2"];

fn backends(replicas: &[ServerProcess]) -> Vec<Backend<'_>> {
    replicas
        .iter()
        .zip(REPLICAS)
        .map(|(r, name)| Backend { name, addr: &r.addr, admin_port: r.admin_port(), backup: false })
        .collect()
}

/// What the proxy itself may reach under a flood it holds, MiB: Envoy
/// starts at 65 and reached 69-126 in the floods here (HAProxy 17-64);
/// without its premature-reset limit, 205-730.
const PROXY_MIB: f64 = 160.0;

/// One h2flood run's JSON report, the replicas it sampled and the proxy.
struct Flood {
    report: Value,
    pids: Vec<u32>,
    proxy_pid: Option<u32>,
}

impl Flood {
    fn run(target: &str, pids: &[u32], proxy_pid: Option<u32>, args: &[&str]) -> Flood {
        let mut command = Command::new("/usr/bin/python3");
        command.arg(repo_root().join("scripts/h2flood.py")).args(["--target", target, "--after", "2"]).args(args);
        for pid in pids.iter().chain(&proxy_pid) {
            command.args(["--server-pid", &pid.to_string()]);
        }
        let out = command.output().expect("/usr/bin/python3 runs (scripts/ensure-deps.sh installs python3-h2)");
        assert!(out.status.success(), "h2flood failed: {}", String::from_utf8_lossy(&out.stderr));
        let report = serde_json::from_slice(&out.stdout).expect("h2flood prints one JSON object");
        Flood { report, pids: pids.to_vec(), proxy_pid }
    }

    fn number(&self, path: &[&str]) -> f64 {
        let mut v = &self.report;
        for key in path {
            v = &v[*key];
        }
        v.as_f64().unwrap_or_else(|| panic!("{path:?} is not a number in {}", self.report))
    }

    fn streams(&self) -> f64 {
        self.number(&["flood", "streams_opened"])
    }

    /// The well-behaved client's calls, before, during and after the flood.
    fn probe_calls(&self) -> f64 {
        ["before", "during", "after"].iter().map(|window| self.number(&["probe", window, "calls"])).sum()
    }

    /// The well-behaved client's OK ratio during the flood.
    fn ok_ratio(&self) -> f64 {
        self.number(&["probe", "during", "ok_ratio"])
    }

    /// The largest RSS any replica reached, MiB.
    fn peak_mib(&self) -> f64 {
        self.pids.iter().map(|pid| self.number(&["rss_mib", &pid.to_string(), "peak"])).fold(0.0, f64::max)
    }

    /// The proxy's peak RSS, MiB (0 for a bare server).
    fn proxy_peak_mib(&self) -> f64 {
        self.proxy_pid.map_or(0.0, |pid| self.number(&["rss_mib", &pid.to_string(), "peak"]))
    }

    fn summary(&self) -> String {
        let proxy = match self.proxy_pid {
            Some(_) => format!(", the proxy at {} MiB", self.proxy_peak_mib()),
            None => String::new(),
        };
        format!(
            "{} streams sent ({}/s), client {} OK during the flood (p99 {} ms), replicas peaked at {} MiB{proxy}",
            self.streams(),
            self.report["flood"]["streams_per_s"],
            self.ok_ratio(),
            self.report["probe"]["during"]["p99_ms"],
            self.peak_mib()
        )
    }

    /// The memory half of the bar alone: every replica under 64 MiB, the
    /// proxy under PROXY_MIB (for floods whose streams share the proxy's
    /// queue with the client's calls).
    fn assert_memory_held(&self, what: &str, min_streams: f64) {
        eprintln!("{what}: {}", self.summary());
        assert!(self.streams() >= min_streams, "{what}: the flood was too weak to prove anything: {}", self.report);
        assert!(
            self.peak_mib() < 64.0 && self.proxy_peak_mib() < PROXY_MIB,
            "{what}: the replicas or the proxy grew: {}: {}",
            self.summary(),
            self.report
        );
    }

    /// The bar: >= 99% of the client's calls OK, every replica under
    /// 64 MiB; and the proxy under PROXY_MIB.
    fn assert_held(&self, what: &str, min_streams: f64) {
        eprintln!("{what}: {}", self.summary());
        assert!(self.streams() >= min_streams, "{what}: the flood was too weak to prove anything: {}", self.report);
        assert!(
            self.ok_ratio() >= 0.99 && self.peak_mib() < 64.0 && self.proxy_peak_mib() < PROXY_MIB,
            "{what}: {}; the bar is >= 0.99 OK, < 64 MiB per replica and < {PROXY_MIB} MiB for the proxy: {}",
            self.summary(),
            self.report
        );
    }
}

/// A case run behind each proxy: `fn NAME(proxy: Proxy)` becomes the tests
/// `NAME::haproxy` and `NAME::envoy`.
/// `behind_each_proxy!(NAME, envoy_ignored = "why")` ignores the Envoy case.
macro_rules! behind_each_proxy {
    ($name:ident $(, envoy_ignored = $why:literal)?) => {
        mod $name {
            #[test]
            fn haproxy() {
                super::$name(super::Proxy::Haproxy)
            }

            #[test]
            $(#[ignore = $why])?
            fn envoy() {
                super::$name(super::Proxy::Envoy)
            }
        }
    };
}

behind_each_proxy!(a_rapid_reset_flood_from_sixteen_addresses_does_not_reach_the_replicas);
fn a_rapid_reset_flood_from_sixteen_addresses_does_not_reach_the_replicas(proxy: Proxy) {
    let _flood = one_flood_at_a_time();
    let deployment = Deployment::shipped(proxy);
    let flood = deployment.flood(&[&["--attack", "rapid-reset"][..], &SIXTEEN_ADDRESSES].concat());
    flood.assert_held(
        "HEADERS + RST_STREAM from 16 addresses",
        // Paced to 384,000; on 2 shared cores it sends fewer, but far more
        // than the 5,000 a second the old cap let each address have.
        100_000.0,
    );
    deployment.assert_none_of_the_flood_reached_them(&flood);
}

behind_each_proxy!(a_rapid_reset_flood_with_a_data_frame_before_each_reset_does_not_reach_the_replicas);
fn a_rapid_reset_flood_with_a_data_frame_before_each_reset_does_not_reach_the_replicas(proxy: Proxy) {
    let _flood = one_flood_at_a_time();
    let deployment = Deployment::shipped(proxy);
    let flood = deployment.flood(&[&["--attack", "rapid-reset-data"][..], &SIXTEEN_ADDRESSES].concat());
    flood.assert_held("HEADERS + 5-byte DATA + RST_STREAM from 16 addresses", 100_000.0);
    deployment.assert_none_of_the_flood_reached_them(&flood);
}

/// Attempts at making a config without a defence fall. Whether the
/// replicas fall behind a flood the proxy lets through depends on the CPU
/// they get on these 2 shared cores; one fall in six attempts shows the
/// config does not hold, and the shipped one must hold every time; the
/// attempts stop at the first fall. (Behind Envoy without its premature-reset
/// limit, one CI run saw three floods in a row held, the proxy at 99.8-131.6
/// MiB: three attempts were too few.) (The
/// per-address cap this config replaced held the plain 16-address flood on
/// a quiet machine and fell to it on a busy one, 580-720 MB with 7-8% of the
/// client's calls OK: HAProxy drops a stream whose HEADERS and RST_STREAM it
/// reads together, so what gets through depends on its load. The floods
/// below pause between the two.)
const ATTEMPTS_TO_FALL: usize = 6;

/// `attack` on `path`, each stream reset 2 ms after what it sends, 50
/// streams at a time per connection, 16 connections from 16 addresses, 6 s.
fn reset_2ms_later(attack: &'static str, path: &'static str) -> [&'static str; 12] {
    [
        "--attack",
        attack,
        "--reset-after-ms",
        "2",
        "--path",
        path,
        "--sources",
        "127.0.0.10-127.0.0.25",
        "--connections",
        "16",
        "--seconds",
        "6",
    ]
}

/// The streaming method the floods of streams reset before their body call.
const BIDI: (&str, &str) = ("greet_service.GreetService", "SayHelloBidirectionalStreaming");
const BIDI_PATH: &str = "/greet_service.GreetService/SayHelloBidirectionalStreaming";

/// Streams of HEADERS alone, each reset 2 ms later, on a streaming method
/// (no per-replica bound there), 50 at a time per connection, from 16
/// addresses, 6 s: the pause lets a proxy that forwards requests before
/// their body pass them on. Paced to 4,000 streams/s per connection (64,000/s
/// in all): unpaced, some 140,000/s on this 2-core machine, the flood starves
/// every process of CPU, the client's included, whatever the proxy does
/// (CI once saw 96.9% of the client's calls within their 1 s deadline, the
/// replicas at 18 MiB).
fn reset_after_headers() -> Vec<&'static str> {
    let mut args = reset_2ms_later("reset-after-headers", BIDI_PATH).to_vec();
    args.extend(["--rate", "4000"]);
    args
}

behind_each_proxy!(streams_reset_a_moment_after_their_headers_are_held);
fn streams_reset_a_moment_after_their_headers_are_held(proxy: Proxy) {
    let _flood = one_flood_at_a_time();
    let deployment = Deployment::shipped(proxy);
    let flood = deployment.flood(&reset_after_headers());
    flood.assert_held("HEADERS, RST_STREAM 2 ms later, from 16 addresses", 50_000.0);
    let reached = deployment.calls_started(BIDI);
    eprintln!("{reached} of the flood's {} streams started a call on a replica", flood.streams());
    // HAProxy's wait-for-body drops every stream reset before its body.
    // Envoy forwards a streaming call on its headers (53,220 of 124,000
    // streams started a call on a replica in one run), and what holds there
    // is the bar above, with the premature-reset limit closing the flooding
    // connections.
    if let Proxy::Haproxy = proxy {
        assert_eq!(reached, 0.0, "streams reset before their body reached the replicas behind HAProxy");
    }
}

/// Floods a deployment behind `proxy` whose shipped config has each
/// `(text, replacement)` of `edits` replaced, until one flood makes `fell`
/// true, at most ATTEMPTS_TO_FALL times; panics, with every flood's summary,
/// if none did.
fn falls_without(proxy: Proxy, edits: &[(&str, &str)], flood_args: &[&str], fell: impl Fn(&Flood) -> bool) {
    let mut held = Vec::new();
    for _ in 0..ATTEMPTS_TO_FALL {
        let deployment = Deployment::edited(proxy, edits);
        let flood = deployment.flood(flood_args);
        eprintln!("without {edits:?}: {}", flood.summary());
        if fell(&flood) {
            return;
        }
        held.push(flood.summary());
    }
    panic!("the replicas held without {edits:?} in {ATTEMPTS_TO_FALL} floods: {held:#?}");
}

#[test]
fn without_wait_for_body_those_streams_reach_the_replicas() {
    // Shows the HAProxy case above can fail: without the frontend's
    // wait-for-body, HAProxy forwards each request on its headers, and the
    // flood's streams start calls on the replicas. Whether that also takes
    // the client under 99% or a replica over 64 MiB depends on the CPU the
    // replicas get against the flood: 13-19% OK and 107-141 MiB in earlier
    // runs, while in one CI run six floods in a row left the client at 100%
    // and the replicas at 22-37 MiB. So what is asserted is the streams
    // reaching the replicas, which the shipped config keeps at none.
    let _flood = one_flood_at_a_time();
    let deployment = Deployment::edited(Proxy::Haproxy, &[("    http-request wait-for-body time 1s at-least 5\n", "")]);
    let flood = deployment.flood(&reset_after_headers());
    let reached = deployment.calls_started(BIDI);
    eprintln!("without wait-for-body: {}; {reached} streams started a call on a replica", flood.summary());
    assert!(
        reached >= flood.streams() * 0.1,
        "without wait-for-body only {reached} of {} streams reached the replicas",
        flood.streams()
    );
}

behind_each_proxy!(a_rapid_reset_flood_from_the_clients_own_address_does_not_reach_the_replicas);
fn a_rapid_reset_flood_from_the_clients_own_address_does_not_reach_the_replicas(proxy: Proxy) {
    let _flood = one_flood_at_a_time();
    let deployment = Deployment::shipped(proxy);
    let flood =
        deployment.flood(&["--attack", "rapid-reset", "--source", "127.0.0.1", "--connections", "4", "--seconds", "5"]);
    flood.assert_held("HEADERS + RST_STREAM from 127.0.0.1, the client's address", 50_000.0);
    deployment.assert_none_of_the_flood_reached_them(&flood);
}

/// What an attacker tries once resets before the body die at the proxy: a
/// whole SayHello request on each stream, reset 2 ms later, 50 streams at a
/// time per connection, 16 connections from 16 addresses, 6 s.
fn reset_after_body() -> [&'static str; 12] {
    reset_2ms_later("reset-after-body", "/helloworld.Greeter/SayHello")
}

behind_each_proxy!(
    streams_reset_just_after_a_whole_request_do_not_grow_the_replicas,
    envoy_ignored = "not held reliably behind Envoy: one CI dry run had the replicas at 99.7 MiB (docs/security.md)"
);
fn streams_reset_just_after_a_whole_request_do_not_grow_the_replicas(proxy: Proxy) {
    let _flood = one_flood_at_a_time();
    let deployment = Deployment::shipped(proxy);
    let flood = deployment.flood(&reset_after_body());
    // Only the replicas' memory holds, not the client's calls: behind
    // either proxy they share the per-replica queue (and the two cores)
    // with the flood. Behind HAProxy 20%, 67% and 100% of them answered
    // within their 1 s deadline in three runs. Behind Envoy, which also
    // closes the flooding connections: 100% in ten runs here, replicas at
    // 20-37 MiB; but in CI dry runs 98.7% (replicas 62.4 MiB) and once 73%
    // with the replicas at 99.7 MiB (46,242 streams/s), so its case is
    // ignored: not held reliably.
    flood.assert_memory_held("whole requests reset 2 ms later, from 16 addresses", 50_000.0);
}

#[test]
fn without_the_per_replica_bound_those_resets_reach_the_replicas() {
    // Shows the test above can fail: these requests are whole, so
    // wait-for-body lets them through; only the 64 calls at once per replica
    // (`maxconn 64`), with the rest queued at the proxy, keeps them off.
    // How far the replicas grow depends on the CPU they get against the
    // flood (46 MiB to 764 MiB seen), hence the attempts.
    let _flood = one_flood_at_a_time();
    falls_without(Proxy::Haproxy, &[(" maxconn 64\n", "\n")], &reset_after_body(), |flood| flood.peak_mib() > 64.0);
}

/// Envoy's bound on the unary calls a replica runs at once: 32 streams on a
/// connection, one connection per replica and worker. Lifted: as many as
/// the streaming cluster allows.
const ENVOY_PER_REPLICA_BOUND: [(&str, &str); 2] = [
    ("              max_concurrent_streams: 32\n", "              max_concurrent_streams: 1000\n"),
    ("            max_connections: 1\n", "            max_connections: 1024\n"),
];

#[test]
#[ignore = "not reliably shown on this machine: without the bound the replicas held 17 of 20 floods (docs/security.md)"]
fn without_envoys_per_replica_bound_those_resets_reach_the_replicas() {
    // Meant to show the Envoy case above can fail: the buffer filter lets
    // whole requests through, and the bound, with the rest waiting at Envoy,
    // keeps them off the replicas. Measured without it, 2026-12-04: 6 of 7
    // floods fell (replicas at 46-142 MiB, 24-92% of the client's calls OK).
    // 2026-12-05, on the builds before and after that day's changes alike:
    // 3 of 20 fell (replicas at 125.9-194.9 MiB, the client at 47-87% OK),
    // 17 held (18-50.9 MiB, 100% OK), and four runs of three attempts held
    // throughout; without the premature-reset limit as well, 12 of 12 held
    // (the replicas at 17-36 MiB; Envoy itself grew). Ignored, as a test
    // that fails half its runs shows nothing; the bound stays in the shipped
    // config as defence in depth.
    let _flood = one_flood_at_a_time();
    falls_without(Proxy::Envoy, &ENVOY_PER_REPLICA_BOUND, &reset_after_body(), |flood| {
        flood.ok_ratio() < 0.99 || flood.peak_mib() > 64.0
    });
}

/// Envoy's premature-reset limit (see deploy/envoy/envoy.yaml), out of reach.
const ENVOY_PREMATURE_RESET_LIMIT: [(&str, &str); 1] = [(
    "overload.premature_reset_total_stream_count: 20\n",
    "overload.premature_reset_total_stream_count: 1000000000\n",
)];

/// A chat Connect request, whole, on each stream, reset 2 ms later, from
/// 16 addresses: the variant HAProxy 2.6 does not hold (docs/security.md).
fn reset_after_chat_connect() -> [&'static str; 12] {
    reset_2ms_later("reset-after-body", "/chat.v1.Chat/Connect")
}

#[test]
fn streams_reset_just_after_a_chat_connect_request_do_not_reach_the_replicas_behind_envoy() {
    // Envoy only: streaming calls have no per-replica bound on either
    // proxy, and HAProxy 2.6 lets these through (552/3,000 of the client's
    // calls OK, replicas at 155 MB); Envoy closes the connections.
    let _flood = one_flood_at_a_time();
    let deployment = Deployment::shipped(Proxy::Envoy);
    deployment
        .flood(&reset_after_chat_connect())
        .assert_held("whole chat Connect requests reset 2 ms later, from 16 addresses", 50_000.0);
}

#[test]
fn without_envoys_premature_reset_limit_chat_connect_resets_reach_the_replicas() {
    // Shows the test above can fail: without the limit Envoy keeps the
    // flooding connections and grows (205-726 MiB measured, against 90-95
    // with it); the replicas and the client held in most of those runs (the
    // client at 95.8% once). The same limit is what keeps Envoy small under
    // the other reset floods.
    let _flood = one_flood_at_a_time();
    falls_without(Proxy::Envoy, &ENVOY_PREMATURE_RESET_LIMIT, &reset_after_chat_connect(), |flood| {
        flood.ok_ratio() < 0.99 || flood.peak_mib() > 64.0 || flood.proxy_peak_mib() > PROXY_MIB
    });
}

behind_each_proxy!(short_connections_of_a_few_whole_requests_do_not_grow_the_replicas);
fn short_connections_of_a_few_whole_requests_do_not_grow_the_replicas(proxy: Proxy) {
    // Whole requests, cancelled when their connection closes: like a reset
    // after the body, the replicas' memory holds (the 64 slots), the
    // client's calls share the queue: 98.2% and 100% OK within 1 s in two
    // runs under other load, so only the memory is asserted.
    let _flood = one_flood_at_a_time();
    let deployment = Deployment::shipped(proxy);
    deployment
        .flood(&["--attack", "short-connections", "--sources", "16", "--connections", "16", "--seconds", "5"])
        .assert_memory_held("connections of 5 whole requests each, closed at once, from 16 addresses", 10_000.0);
}

/// 8 connections x 90 streams whose bodies come 1 byte per 100 ms, 5 s.
const SLOW_BODIES: [&str; 6] = ["--attack", "slow-body", "--connections", "8", "--seconds", "5"];

behind_each_proxy!(slow_bodies_do_not_hold_the_replicas_slots);
fn slow_bodies_do_not_hold_the_replicas_slots(proxy: Proxy) {
    let _flood = one_flood_at_a_time();
    let deployment = Deployment::shipped(proxy);
    // 8 connections x 90 streams whose bodies come 1 byte per 100 ms: 720
    // unary calls that never finish, against 2 x 64 slots.
    deployment.flood(&SLOW_BODIES).assert_held("720 streams sending 1 byte per 100 ms", 720.0);
}

/// Envoy's buffer filter: unary requests wait at Envoy until whole.
const ENVOY_BUFFER_FILTER: [(&str, &str); 1] = [(
    "                  - name: envoy.filters.http.buffer
                    typed_config:
                      \"@type\": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
                      max_request_bytes: 4194309
",
    "",
)];

#[test]
fn without_envoys_buffer_filter_slow_bodies_hold_the_replicas_slots() {
    // Shows the Envoy case above can fail: without the buffer filter Envoy
    // passes each slow body on as it comes, and the replicas' call slots
    // fill (measured: 1.3% of the client's calls OK).
    let _flood = one_flood_at_a_time();
    falls_without(Proxy::Envoy, &ENVOY_BUFFER_FILTER, &SLOW_BODIES, |flood| flood.ok_ratio() < 0.99);
}

/// `client load`'s engine: 30,000 SayHello calls at 8,000 a second, 64 in
/// flight, from 127.0.0.1 through the proxy. The summary text and the failures.
fn busy_client(deployment: &Deployment) -> (u64, f64, String) {
    let connector = Connector::new(deployment.proxy.addr()).unwrap();
    let config = LoadConfig {
        workload: Workload::Unary { calls: 30_000 },
        concurrency: 64,
        rps: Some(8000.0),
        timeout: Duration::from_secs(10),
        headers: None,
    };
    let summary = futures::executor::block_on(load::run(&connector.pool(), &config, &|_, _| {}));
    assert_eq!(summary.ok() + summary.failed(), 30_000);
    (summary.failed(), summary.rate(), summary.to_text())
}

behind_each_proxy!(a_busy_legitimate_client_loses_no_call_through_the_shipped_config);
fn a_busy_legitimate_client_loses_no_call_through_the_shipped_config(proxy: Proxy) {
    let _flood = one_flood_at_a_time();
    let deployment = Deployment::shipped(proxy);
    let (failed, rate, text) = busy_client(&deployment);
    eprintln!("30,000 calls at up to 8,000/s through the shipped {proxy:?} config: {failed} failed, {rate:.0}/s");
    assert_eq!(failed, 0, "the shipped config failed a busy client: {text}");
}

#[test]
fn the_old_per_address_cap_failed_that_busy_client() {
    // Shows the test above can fail: a client over 5,000 calls a second had
    // its connections closed (measured: 500 of 30,000 calls failed).
    let _flood = one_flood_at_a_time();
    let deployment = Deployment::with_the_old_per_address_cap();
    let (failed, rate, text) = busy_client(&deployment);
    eprintln!("30,000 calls at up to 8,000/s through the old cap: {failed} failed, {rate:.0}/s");
    assert!(failed > 0, "the old per-address cap let a client at 8,000 calls/s through: {text}");
}

#[test]
fn the_bare_server_falls_to_a_small_rapid_reset_flood() {
    // Kept as proof of why the proxy is needed: if a future core resists,
    // this fails and the README's Security section needs updating.
    let _flood = one_flood_at_a_time();
    let server = ServerProcess::start("bare", &[]);
    let flood = Flood::run(&server.addr, &[server.process.pid()], None, &["--connections", "1", "--seconds", "1"]);
    // It falls either way: its calls stop being answered (the backlog of
    // cancelled calls outlasts the flood), or it keeps the memory they took
    // (a weaker flood, on a busy machine, gets drained sooner).
    let ok_ratio = flood.number(&["probe", "after", "ok_ratio"]);
    let pid = server.process.pid().to_string();
    let (before, peak) = (flood.number(&["rss_mib", &pid, "before"]), flood.number(&["rss_mib", &pid, "peak"]));
    assert!(
        ok_ratio < 0.5 || peak > 10.0 * before,
        "the bare server served {ok_ratio} of the calls after the flood, at {peak} MiB (from {before}): {}",
        flood.report
    );
}
