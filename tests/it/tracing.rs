//! Tracing against a real OTLP endpoint: `tests/otlp/receiver`, built from
//! pinned modules, decodes each export as the collector's own protobuf
//! message (`ExportTraceServiceRequest`) and writes one JSON line per span.
//! (The OpenTelemetry Collector itself takes ~6 minutes to build cold here;
//! this receiver ~10 s: docs/operations.md.)
//!
//! The servers and clients are the real binaries, with `--otlp-endpoint` and
//! the `OTEL_*` variables; `OTEL_BSP_SCHEDULE_DELAY=50` makes their batch
//! processors send within 50 ms instead of 5 s. Tests wait on the spans
//! arriving (polled with a deadline), never on a sleep.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::executor::block_on;
use greet::proto::chat::PostRequest;
use greet::proto::chat_grpc::ChatClient;
use grpcio::{CallOption, MetadataBuilder};
use serde_json::Value;

use crate::common::chat::{poll, Member, TempDir};
use crate::common::envoy::Envoy;
use crate::common::go_build;
use crate::common::process::{http_get, Process, ServerProcess};

/// How soon the servers' batch processors export (ms), through the standard variable.
const FAST_EXPORT: (&str, &str) = ("OTEL_BSP_SCHEDULE_DELAY", "50");

/// How long spans may take to arrive.
const ARRIVAL: Duration = Duration::from_secs(20);

/// The OTLP/HTTP receiver, listening on a free loopback port.
struct Collector {
    process: Process,
    addr: String,
    out: PathBuf,
    _dir: TempDir,
}

impl Collector {
    fn start() -> Collector {
        let dir = TempDir::new("otlp");
        let (out, ready) = (dir.path().join("spans.jsonl"), dir.path().join("ready"));
        let mut command = Command::new(go_build("tests/otlp/receiver", ".", "otlp-receiver"));
        command.arg("-out").arg(&out).arg("-ready").arg(&ready);
        let process = Process::spawn(command);
        let addr = poll("the OTLP receiver listens", ARRIVAL, || std::fs::read_to_string(&ready).ok());
        Collector { process, addr, out, _dir: dir }
    }

    /// The base URL `--otlp-endpoint` takes.
    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines().map(|line| serde_json::from_str(line).expect("the receiver writes JSON lines")).collect()
    }

    /// The spans of `trace_id` once `done` says they are all there.
    fn wait_for(&self, what: &str, trace_id: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + ARRIVAL;
        loop {
            let spans: Vec<Value> = self.spans().into_iter().filter(|s| s["trace_id"] == trace_id).collect();
            if done(&spans) {
                return spans;
            }
            assert!(Instant::now() < deadline, "gave up waiting for {what}; received: {:#?}", self.spans());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A server process exporting to `collector`, named `instance`.
fn traced_server(instance: &str, collector: &Collector, extra: &[&str], env: &[(&str, &str)]) -> ServerProcess {
    let endpoint = collector.endpoint();
    let mut args = vec!["--otlp-endpoint", endpoint.as_str()];
    args.extend_from_slice(extra);
    let mut vars = vec![FAST_EXPORT];
    vars.extend_from_slice(env);
    ServerProcess::start_with_env(instance, &args, &vars)
}

/// `client <args>`, which must succeed; its stdout.
fn client(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_client")).args(args).envs(env.iter().copied()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "client {args:?} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn named<'a>(spans: &'a [Value], name: &str, service: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name && s["service"] == service).collect()
}

/// A span's attribute, as the receiver wrote it.
fn attribute<'a>(span: &'a Value, key: &str) -> &'a str {
    span["attributes"][key].as_str().unwrap_or_default()
}

/// A `greet-server` counter's value on the admin port's /metrics (0 if absent).
fn counter(server: &ServerProcess, line_prefix: &str) -> f64 {
    let (_, body) = http_get(&server.admin, "/metrics");
    body.lines().find_map(|l| l.strip_prefix(line_prefix).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

const SAY_HELLO: &str = "greet_service.GreetService/SayHello";

#[test]
fn a_client_call_through_envoy_is_one_trace_whose_server_span_is_the_client_spans_child() {
    let collector = Collector::start();
    let a = traced_server("replica-a", &collector, &[], &[]);
    let b = traced_server("replica-b", &collector, &[], &[]);
    let envoy = Envoy::start(&[("replica-a", &a.addr), ("replica-b", &b.addr)]);
    let endpoint = collector.endpoint();
    assert_eq!(client(&["--addr", &envoy.addr, "--otlp-endpoint", &endpoint, "unary"], &[]), "Hello\n");

    // The client flushes before it exits: its span is there.
    let client_spans: Vec<Value> = collector.spans().into_iter().filter(|s| s["service"] == "greet-client").collect();
    assert_eq!(client_spans.len(), 1, "one client span: {client_spans:?}");
    let client_span = &client_spans[0];
    assert_eq!(client_span["kind"], "SPAN_KIND_CLIENT");
    assert_eq!(client_span["parent_span_id"], "", "the client started the trace");
    let trace_id = client_span["trace_id"].as_str().unwrap();
    let spans = collector.wait_for("the replica's server span", trace_id, |spans| spans.len() == 2);
    let server = named(&spans, SAY_HELLO, "greet-server");
    assert_eq!(server.len(), 1, "{spans:?}");
    let server = server[0];
    assert_eq!(server["kind"], "SPAN_KIND_SERVER");
    assert_eq!(server["parent_span_id"], client_span["span_id"], "the server continued the client's span");
    assert_eq!(attribute(server, "rpc.grpc.status_code"), "0");
    assert_eq!(attribute(server, "rpc.system"), "grpc");
    assert_eq!(attribute(server, "rpc.service"), "greet_service.GreetService");
    assert_eq!(attribute(server, "rpc.method"), "SayHello");
    assert!(["replica-a", "replica-b"].contains(&attribute(server, "greet.replica")), "{server}");
    // Through Envoy, the peer is Envoy's side of the connection.
    assert!(attribute(server, "network.peer.address").starts_with("ipv4:127.0.0.1:"), "{server}");
    assert_eq!(attribute(client_span, "rpc.grpc.status_code"), "0");
}

#[test]
fn without_a_traceparent_the_server_span_starts_a_trace_of_its_own() {
    // The same call, from a client that does not trace (so sends no
    // traceparent): the server's span is a root, in a trace of its own.
    let collector = Collector::start();
    let server = traced_server("replica-a", &collector, &[], &[]);
    assert_eq!(client(&["--addr", &server.addr, "unary"], &[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]), "Hello\n");
    let span = poll("the server span", ARRIVAL, || collector.spans().into_iter().next());
    assert_eq!(span["name"], SAY_HELLO);
    assert_eq!(span["parent_span_id"], "", "no caller to continue: {span}");
    assert_eq!(collector.spans().len(), 1);
}

#[test]
fn the_client_continues_the_trace_its_traceparent_variable_names() {
    let collector = Collector::start();
    let server = traced_server("replica-a", &collector, &[], &[]);
    let (trace_id, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let traceparent = format!("00-{trace_id}-{parent}-01");
    let endpoint = collector.endpoint();
    client(
        &["--addr", &server.addr, "greet"],
        &[("TRACEPARENT", &traceparent), ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    let spans = collector.wait_for("the client's and the server's spans", trace_id, |spans| spans.len() == 2);
    let client_span = named(&spans, "helloworld.Greeter/SayHello", "greet-client")[0];
    let server_span = named(&spans, "helloworld.Greeter/SayHello", "greet-server")[0];
    assert_eq!(client_span["parent_span_id"], parent);
    assert_eq!(server_span["parent_span_id"], client_span["span_id"]);
}

/// Posts `text` to `room` on `addr` as a call carrying `traceparent`.
fn post(addr: &str, room: &str, text: &str, traceparent: &str) -> u64 {
    let mut headers = MetadataBuilder::new();
    headers.add_str("traceparent", traceparent).unwrap();
    let chat = ChatClient::new(greet::client::connect(addr));
    let request = PostRequest { room: room.into(), user: "poster".into(), text: text.into(), ..Default::default() };
    let option = CallOption::default().headers(headers.build()).timeout(Duration::from_secs(10));
    block_on(chat.post_async_opt(&request, option).unwrap()).unwrap().seq
}

/// A Post's trace: its server span, the store's child span (with the
/// message's number, on `backend`) and the fan-out's, to the room's member
/// and, when the hold is still there, the Post's own hold (`subscribers`:
/// the counts the fan-out span may carry).
fn check_post_trace(collector: &Collector, trace_id: &str, backend: &str, seq: u64, subscribers: &[&str]) {
    let spans = collector.wait_for("the Post's server, store and fan-out spans", trace_id, |spans| spans.len() >= 3);
    let call = named(&spans, "chat.v1.Chat/Post", "greet-server");
    assert_eq!(call.len(), 1, "{spans:?}");
    let store = named(&spans, "chat.store", "greet-server");
    let fanout = named(&spans, "chat.fanout", "greet-server");
    assert_eq!((store.len(), fanout.len()), (1, 1), "{spans:?}");
    assert_eq!(store[0]["parent_span_id"], call[0]["span_id"]);
    assert_eq!(fanout[0]["parent_span_id"], call[0]["span_id"]);
    assert_eq!(attribute(store[0], "chat.backend"), backend);
    assert_eq!(attribute(store[0], "chat.seq"), seq.to_string());
    let counted = attribute(fanout[0], "chat.subscribers");
    assert!(subscribers.contains(&counted), "fan-out to {counted} subscribers, not one of {subscribers:?}");
}

#[test]
fn a_chat_posts_trace_shows_its_store_and_fan_out() {
    let collector = Collector::start();
    let data = TempDir::new("trace-chat");
    let server = traced_server("replica-a", &collector, &["--data-dir", data.path().to_str().unwrap()], &[]);
    let chat = crate::common::chat::client(&server.addr);
    let mut member = Member::join_blocking(&chat, "ops", "watcher");
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let seq = post(&server.addr, "ops", "deploy done", &format!("00-{trace_id}-b7ad6b7169203331-01"));
    assert_eq!(block_on(member.messages(1)).unwrap()[0].text, "deploy done");
    // Embedded, the fan-out comes before the Post's answer: the member and
    // the Post's hold.
    check_post_trace(&collector, trace_id, "sqlite", seq, &["2"]);
}

#[test]
fn through_redis_a_posts_store_span_lasts_until_the_acknowledgement_and_the_fan_out_joins_the_trace() {
    let redis = crate::common::chat::Redis::start();
    let collector = Collector::start();
    let server = traced_server("replica-a", &collector, &["--broker", &redis.url], &[]);
    let chat = crate::common::chat::client(&server.addr);
    let mut member = Member::join_blocking(&chat, "ops", "watcher");
    let trace_id = "5b8efff798038103d269b633813fc60c";
    let seq = post(&server.addr, "ops", "via redis", &format!("00-{trace_id}-eee19b7ec3c1b174-01"));
    assert_eq!(block_on(member.messages(1)).unwrap()[0].text, "via redis");
    // Through Redis the Post is answered on the acknowledgement and the
    // fan-out comes when the entry is read back, so the Post's hold may
    // have left by then (1 in one CI run): the member, with or without it.
    check_post_trace(&collector, trace_id, "redis", seq, &["1", "2"]);
}

#[test]
fn with_the_collector_gone_calls_go_on_and_the_lost_spans_are_counted() {
    let mut collector = Collector::start();
    let server = traced_server("replica-a", &collector, &[], &[]);
    collector.process.kill();
    collector.process.wait_exit(Duration::from_secs(10)).expect("the receiver is gone");
    let client = greet::client::Client::new(greet::client::connect(&server.addr), Duration::from_secs(10));
    for _ in 0..50 {
        assert_eq!(block_on(client.say_hello()).unwrap(), "Hello");
    }
    let failed = r#"greet_trace_spans_dropped_total{reason="export_failed"} "#;
    poll("the 50 spans counted as dropped", ARRIVAL, || (counter(&server, failed) >= 50.0).then_some(()));
    assert_eq!(counter(&server, "greet_trace_spans_exported_total "), 0.0);
}

#[test]
fn a_collector_that_never_answers_does_not_hold_calls() {
    // Accepts connections (the kernel does, into the backlog) and never
    // answers: each export waits out its 5 s timeout. Calls have 1 s.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let server = ServerProcess::start_with_env("replica-a", &["--otlp-endpoint", &endpoint], &[FAST_EXPORT]);
    let client = greet::client::Client::new(greet::client::connect(&server.addr), Duration::from_secs(1));
    let started = Instant::now();
    for _ in 0..50 {
        assert_eq!(block_on(client.say_hello()).unwrap(), "Hello", "a call met its 1 s deadline");
    }
    // 50 calls within one export's timeout: none waited for one.
    assert!(started.elapsed() < Duration::from_secs(5), "50 calls took {:?}", started.elapsed());
    let failed = r#"greet_trace_spans_dropped_total{reason="export_failed"} "#;
    poll("the spans counted as dropped", Duration::from_secs(30), || (counter(&server, failed) >= 1.0).then_some(()));
}

#[test]
fn a_sampler_ratio_of_zero_exports_nothing() {
    let collector = Collector::start();
    let sampler = [("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0")];
    let mut server = traced_server("replica-a", &collector, &[], &sampler);
    let endpoint = collector.endpoint();
    // The client traces (and its span is exported: the receiver works); the
    // server, told to sample nothing, records nothing, sampled parent or not.
    for _ in 0..10 {
        client(&["--addr", &server.addr, "--otlp-endpoint", &endpoint, "unary"], &[]);
    }
    // A server flushes its spans as it stops.
    server.process.signal("TERM");
    server.process.wait_exit(Duration::from_secs(20)).expect("the server drains and exits");
    let spans = collector.spans();
    assert_eq!(spans.iter().filter(|s| s["service"] == "greet-client").count(), 10);
    let exported: Vec<_> = spans.iter().filter(|s| s["service"] == "greet-server").collect();
    assert!(exported.is_empty(), "exported {exported:?}");
}

#[test]
fn a_bad_endpoint_or_sampler_is_one_line_and_a_failure() {
    for (binary, args, env) in [
        (env!("CARGO_BIN_EXE_server"), vec!["--addr", "127.0.0.1:0", "--otlp-endpoint", "localhost:4318"], vec![]),
        (env!("CARGO_BIN_EXE_client"), vec!["--otlp-endpoint", "https://collector:4318", "unary"], vec![]),
        (
            env!("CARGO_BIN_EXE_client"),
            vec!["unary"],
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://h:4318"), ("OTEL_TRACES_SAMPLER", "half")],
        ),
    ] {
        let out = Command::new(binary).args(&args).envs(env).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("error: ") && !stderr.contains("panicked"), "{stderr}");
        assert!(stderr.contains("OTLP endpoint") || stderr.contains("OTEL_TRACES_SAMPLER"), "{stderr}");
    }
}
