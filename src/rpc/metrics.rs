//! Prometheus metrics of a server, with the names dashboards already know
//! from go-grpc-prometheus, rendered in the text exposition format for the
//! admin port's `/metrics` ([`ServerMetrics::render`]).
//!
//! Every call is measured in one place: the call runtime ([`super`]) hands
//! handlers sinks and request streams that count the call's start, its
//! messages and its outcome against the [`MethodMetrics`] of its method. No
//! handler counts anything itself.
//!
//! Each server has its own [`Registry`], so servers started side by side (as
//! the tests do) never mix their counts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use grpcio::{MethodType, RpcStatusCode};
use log::warn;

use crate::telemetry::Span;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

/// Labels of every per-method metric, in go-grpc-prometheus's order.
const METHOD_LABELS: &[&str] = &["grpc_type", "grpc_service", "grpc_method"];

/// The counters and the histogram of one server.
pub struct ServerMetrics {
    registry: Registry,
    started: IntCounterVec,
    handled: IntCounterVec,
    received: IntCounterVec,
    sent: IntCounterVec,
    handling: HistogramVec,
}

impl ServerMetrics {
    /// A fresh registry with the gRPC server metrics and, on Linux, the
    /// process metrics (`process_resident_memory_bytes`, `process_open_fds`, ...).
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The metrics of one method, resolved once per service so that a call
    /// costs no label lookup until it ends.
    pub fn method<Req, Resp>(&self, method: &grpcio::Method<Req, Resp>) -> MethodMetrics {
        let labels = MethodLabels::of(method.ty, method.name);
        let values = [labels.grpc_type, labels.service.as_str(), labels.method.as_str()];
        MethodMetrics(Arc::new(MethodState {
            started: self.started.with_label_values(&values),
            received: self.received.with_label_values(&values),
            sent: self.sent.with_label_values(&values),
            handling: self.handling.with_label_values(&values),
            handled: Default::default(),
            handled_vec: self.handled.clone(),
            labels,
        }))
    }

    /// Everything registered, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            warn!("metrics: cannot encode: {e}");
        }
        // The text encoder writes UTF-8 only.
        String::from_utf8(out).unwrap_or_default()
    }

    /// The registry, to add more metrics (chat, cache) to the same page.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl Default for ServerMetrics {
    /// See [`ServerMetrics::new`].
    fn default() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let counter = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name and labels");
            registry.register(Box::new(counter.clone())).expect("each name is registered once");
            counter
        };
        let started = counter("grpc_server_started_total", "RPCs started on the server.", METHOD_LABELS);
        let handled = counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, whatever their status.",
            &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        );
        let received = counter(
            "grpc_server_msg_received_total",
            "Messages received from clients (streams: each one).",
            METHOD_LABELS,
        );
        let sent =
            counter("grpc_server_msg_sent_total", "Messages sent to clients (streams: each one).", METHOD_LABELS);
        let handling = HistogramVec::new(
            HistogramOpts::new(
                "grpc_server_handling_seconds",
                "Time from the start of an RPC to the status the server sent.",
            ),
            METHOD_LABELS,
        )
        .expect("valid metric name and labels");
        registry.register(Box::new(handling.clone())).expect("registered once");
        register_process_metrics(&registry);
        ServerMetrics { registry, started, handled, received, sent, handling }
    }
}

#[cfg(target_os = "linux")]
fn register_process_metrics(registry: &Registry) {
    let collector = prometheus::process_collector::ProcessCollector::for_self();
    if let Err(e) = registry.register(Box::new(collector)) {
        warn!("metrics: no process metrics: {e}");
    }
}

#[cfg(not(target_os = "linux"))]
fn register_process_metrics(_registry: &Registry) {}

/// `grpc_type`, `grpc_service`, `grpc_method` of a method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodLabels {
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    pub grpc_type: &'static str,
    /// Fully qualified service name, e.g. `greet_service.GreetService`.
    pub service: String,
    /// Method name, e.g. `SayHello`.
    pub method: String,
}

impl MethodLabels {
    /// From a method's type and path (`/greet_service.GreetService/SayHello`).
    pub fn of(ty: MethodType, path: &str) -> Self {
        let grpc_type = match ty {
            MethodType::Unary => "unary",
            MethodType::ClientStreaming => "client_stream",
            MethodType::ServerStreaming => "server_stream",
            MethodType::Duplex => "bidi_stream",
        };
        let path = path.trim_start_matches('/');
        let (service, method) = path.split_once('/').unwrap_or(("unknown", path));
        MethodLabels { grpc_type, service: service.to_string(), method: method.to_string() }
    }
}

/// The names grpc-go gives status codes 0 to 16 (`codes.Code.String()`),
/// which is what go-grpc-prometheus puts in `grpc_code`.
const GO_CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The index of `code` in [`GO_CODE_NAMES`]; a code outside 0 to 16 is Unknown (2).
fn code_index(code: RpcStatusCode) -> usize {
    usize::try_from(i32::from(code)).ok().filter(|i| *i < GO_CODE_NAMES.len()).unwrap_or(2)
}

/// The name grpc-go gives a status code: `OK`, `InvalidArgument`, ...
pub fn go_code_name(code: RpcStatusCode) -> &'static str {
    GO_CODE_NAMES[code_index(code)]
}

struct MethodState {
    started: IntCounter,
    received: IntCounter,
    sent: IntCounter,
    handling: Histogram,
    /// `grpc_server_handled_total` of this method by code index, each
    /// resolved at the first call that ends with it (so that only codes seen
    /// are exported) and lock-free after that.
    handled: [OnceLock<IntCounter>; GO_CODE_NAMES.len()],
    handled_vec: IntCounterVec,
    labels: MethodLabels,
}

/// The metrics of one method; cheap to clone.
#[derive(Clone)]
pub struct MethodMetrics(Arc<MethodState>);

impl MethodMetrics {
    /// Counts a call as started; its [`CallRecord`] counts the rest and
    /// ends its `span` (when the call is traced) with its status.
    pub fn start(&self, span: Option<Span>) -> Arc<CallRecord> {
        self.0.started.inc();
        Arc::new(CallRecord { method: self.clone(), started: Instant::now(), finished: AtomicBool::new(false), span })
    }
}

/// One call being measured; shared by its sink and its request stream.
pub struct CallRecord {
    method: MethodMetrics,
    started: Instant,
    finished: AtomicBool,
    /// The call's server span, ended with the call's status.
    span: Option<Span>,
}

impl CallRecord {
    /// A message came in from the client.
    pub fn received(&self) {
        self.method.0.received.inc();
    }

    /// A message went out to the client.
    pub fn sent(&self) {
        self.method.0.sent.inc();
    }

    /// The call ends with `code`; only the first outcome of a call counts.
    pub fn finish(&self, code: RpcStatusCode) {
        if self.finished.swap(true, Ordering::AcqRel) {
            return;
        }
        let state = &self.method.0;
        let labels = &state.labels;
        let index = code_index(code);
        state.handled[index]
            .get_or_init(|| {
                let values = [labels.grpc_type, &labels.service, &labels.method, GO_CODE_NAMES[index]];
                state.handled_vec.with_label_values(&values)
            })
            .inc();
        state.handling.observe(self.started.elapsed().as_secs_f64());
        if let Some(span) = &self.span {
            span.end_call(code);
        }
    }
}

impl Drop for CallRecord {
    /// A call whose handler let go of it without a status ended because the
    /// client went away, its deadline passed or the server cancelled it:
    /// grpc-go reports such calls as Canceled.
    fn drop(&mut self) {
        self.finish(RpcStatusCode::CANCELLED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_the_method_path_and_type() {
        let labels = MethodLabels::of(MethodType::Duplex, "/greet_service.GreetService/SayHelloBidirectionalStreaming");
        assert_eq!(labels.grpc_type, "bidi_stream");
        assert_eq!(labels.service, "greet_service.GreetService");
        assert_eq!(labels.method, "SayHelloBidirectionalStreaming");
    }

    #[test]
    fn codes_have_grpc_go_names() {
        assert_eq!(go_code_name(RpcStatusCode::OK), "OK");
        assert_eq!(go_code_name(RpcStatusCode::CANCELLED), "Canceled");
        assert_eq!(go_code_name(RpcStatusCode::UNAUTHENTICATED), "Unauthenticated");
        assert_eq!(go_code_name(RpcStatusCode::from(99)), "Unknown");
    }

    #[test]
    fn a_call_counts_once_whatever_ends_it() {
        let metrics = ServerMetrics::new();
        let method = metrics.method(&crate::rpc::api::greet::METHOD_GREET_SERVICE_SAY_HELLO);
        let call = method.start(None);
        call.received();
        call.finish(RpcStatusCode::INVALID_ARGUMENT);
        call.finish(RpcStatusCode::OK);
        drop(call);
        drop(method.start(None));
        let text = metrics.render();
        let labels = r#"grpc_method="SayHello",grpc_service="greet_service.GreetService",grpc_type="unary""#;
        for line in [
            format!("grpc_server_started_total{{{labels}}} 2"),
            format!("grpc_server_msg_received_total{{{labels}}} 1"),
            format!(r#"grpc_server_handled_total{{grpc_code="InvalidArgument",{labels}}} 1"#),
            format!(r#"grpc_server_handled_total{{grpc_code="Canceled",{labels}}} 1"#),
            format!("grpc_server_handling_seconds_count{{{labels}}} 2"),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains(r#"grpc_code="OK""#), "a second outcome must not count:\n{text}");
    }
}
