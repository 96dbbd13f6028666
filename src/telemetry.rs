//! Tracing: OpenTelemetry spans, W3C `traceparent` propagation in gRPC
//! metadata, and their export to a collector as OTLP over HTTP/protobuf.
//!
//! A [`Tracing`] is made from `--otlp-endpoint` and the standard variables
//! ([`TraceSettings::from_env`]); without an endpoint there is none, and
//! nothing on the call path does any tracing work.
//!
//! Export never runs on a call's thread: a finished span goes into the SDK's
//! batch span processor, whose own thread sends batches through a blocking
//! HTTP client (ureq). Between the two, [`Admission`] bounds the spans that
//! are waiting: a span that finds the queue full is dropped and counted, and
//! so is every span of a batch the collector did not take
//! (`greet_trace_spans_dropped_total{reason}` on `/metrics`). A dead or slow
//! collector therefore costs a call nothing but its spans.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use grpcio::{Metadata, MetadataBuilder, RpcStatusCode};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};
use opentelemetry_sdk::Resource;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// Spans that may wait for export at once (the SDK's default queue size).
pub const MAX_QUEUED_SPANS: usize = 2048;

/// How long exporting one batch may take before it counts as failed.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// What `--otlp-endpoint` and the `OTEL_*` variables ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// Where spans go: the collector's `/v1/traces` URL.
    pub endpoint: String,
    /// `service.name` of every span.
    pub service_name: String,
    /// Which traces are recorded (`OTEL_TRACES_SAMPLER`).
    pub sampler: SamplerSetting,
}

/// The samplers `OTEL_TRACES_SAMPLER` names (the specification's list, less
/// the vendor ones), with `OTEL_TRACES_SAMPLER_ARG` as the ratio.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerSetting {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio(f64),
}

impl SamplerSetting {
    /// From the variables' values; an unknown name or a ratio outside
    /// 0 to 1 is an error (the SDK would quietly sample everything).
    pub fn parse(name: Option<&str>, arg: Option<&str>) -> Result<Self, String> {
        let ratio = || -> Result<f64, String> {
            let Some(arg) = arg else { return Ok(1.0) };
            match arg.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(format!("OTEL_TRACES_SAMPLER_ARG={arg:?}: expected a ratio from 0 to 1, like 0.01")),
            }
        };
        Ok(match name.map(str::trim).unwrap_or("parentbased_always_on") {
            "always_on" => SamplerSetting::AlwaysOn,
            "always_off" => SamplerSetting::AlwaysOff,
            "traceidratio" => SamplerSetting::TraceIdRatio(ratio()?),
            "parentbased_always_on" | "" => SamplerSetting::ParentBasedAlwaysOn,
            "parentbased_always_off" => SamplerSetting::ParentBasedAlwaysOff,
            "parentbased_traceidratio" => SamplerSetting::ParentBasedTraceIdRatio(ratio()?),
            other => {
                return Err(format!(
                    "OTEL_TRACES_SAMPLER={other:?}: expected always_on, always_off, traceidratio, \
                     parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
                ))
            }
        })
    }

    fn sampler(self) -> Sampler {
        let parent_based = |root: Sampler| Sampler::ParentBased(Box::new(root));
        match self {
            SamplerSetting::AlwaysOn => Sampler::AlwaysOn,
            SamplerSetting::AlwaysOff => Sampler::AlwaysOff,
            SamplerSetting::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
            SamplerSetting::ParentBasedAlwaysOn => parent_based(Sampler::AlwaysOn),
            SamplerSetting::ParentBasedAlwaysOff => parent_based(Sampler::AlwaysOff),
            SamplerSetting::ParentBasedTraceIdRatio(r) => parent_based(Sampler::TraceIdRatioBased(r)),
        }
    }
}

/// `base` (a collector's OTLP/HTTP address, as `OTEL_EXPORTER_OTLP_ENDPOINT`
/// gives it) with the traces path appended; only `http://` is spoken.
pub fn traces_url(base: &str) -> Result<String, String> {
    let bad = |why: &str| format!("invalid OTLP endpoint {base:?}: {why}");
    let url = format!("{}/v1/traces", base.trim_end_matches('/'));
    let uri: http::Uri = url.parse().map_err(|_| bad("expected http://HOST:PORT, like http://127.0.0.1:4318"))?;
    match (uri.scheme_str(), uri.host()) {
        _ if uri
            .authority()
            .and_then(|a| a.as_str().rsplit_once(':'))
            .is_some_and(|(host, port)| !port.ends_with(']') && !host.is_empty() && port.parse::<u16>().is_err()) =>
        {
            Err(bad("the port is not a number from 0 to 65535"))
        }
        (Some("http"), Some(host)) if !host.is_empty() => Ok(url),
        (Some("https"), _) => {
            Err(bad("only http:// is supported (run a collector beside the server, e.g. http://127.0.0.1:4318)"))
        }
        _ => Err(bad("expected http://HOST:PORT, like http://127.0.0.1:4318")),
    }
}

impl TraceSettings {
    /// The settings `flag` (`--otlp-endpoint`) and the environment (`env`,
    /// `std::env::var` in the binaries) ask for; `None`: tracing is off (no
    /// endpoint). `default_service` names the service when
    /// `OTEL_SERVICE_NAME` does not.
    pub fn from_env(
        flag: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
        default_service: &str,
    ) -> Result<Option<Self>, String> {
        let base = match flag {
            Some(flag) => flag.to_string(),
            None => match env("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|e| !e.is_empty()) {
                Some(base) => base,
                None => return Ok(None),
            },
        };
        let endpoint = traces_url(&base)?;
        let sampler =
            SamplerSetting::parse(env("OTEL_TRACES_SAMPLER").as_deref(), env("OTEL_TRACES_SAMPLER_ARG").as_deref())?;
        let service_name = env("OTEL_SERVICE_NAME").filter(|s| !s.is_empty()).unwrap_or_else(|| default_service.into());
        Ok(Some(TraceSettings { endpoint, service_name, sampler }))
    }
}

/// Counts what happens to finished spans.
struct ExportCounters {
    /// Spans handed to the batch processor and not yet taken for export.
    queued: AtomicUsize,
    exported: IntCounter,
    dropped: IntCounterVec,
}

/// A started tracer and its exporter thread. Cheap to clone.
#[derive(Clone)]
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    counters: Arc<ExportCounters>,
}

impl fmt::Debug for Tracing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracing").finish_non_exhaustive()
    }
}

impl Tracing {
    /// Starts the exporter for `settings` (its thread, `OpenTelemetry.Traces.BatchProcessor`).
    pub fn start(settings: &TraceSettings) -> Result<Tracing, String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(EXPORT_TIMEOUT))
            .http_status_as_error(false)
            .build()
            .into();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(HttpClient(agent))
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot set up the OTLP exporter: {e}"))?;
        let dropped = IntCounterVec::new(
            Opts::new("greet_trace_spans_dropped_total", "Finished spans not exported, by reason."),
            &["reason"],
        )
        .map_err(|e| e.to_string())?;
        // Both reasons show on /metrics from the start, at 0.
        for reason in ["queue_full", "export_failed"] {
            dropped.with_label_values(&[reason]);
        }
        let exported = IntCounter::new("greet_trace_spans_exported_total", "Spans the collector accepted.")
            .map_err(|e| e.to_string())?;
        let counters = Arc::new(ExportCounters { queued: AtomicUsize::new(0), exported, dropped });
        let batch = BatchSpanProcessor::builder(Counted { inner: exporter, counters: counters.clone() })
            .with_batch_config(BatchConfigBuilder::default().with_max_queue_size(MAX_QUEUED_SPANS).build())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Admission { inner: batch, counters: counters.clone() })
            .with_sampler(settings.sampler.sampler())
            .with_resource(Resource::builder().with_service_name(settings.service_name.clone()).build())
            .build();
        let tracer = provider.tracer("greet");
        Ok(Tracing { provider, tracer, counters })
    }

    /// Adds the export counters to `registry` (the server's `/metrics`).
    pub fn register_metrics(&self, registry: &Registry) -> Result<(), String> {
        registry
            .register(Box::new(self.counters.exported.clone()))
            .and_then(|()| registry.register(Box::new(self.counters.dropped.clone())))
            .map_err(|e| format!("tracing metrics: {e}"))
    }

    /// Exports what is queued, waiting at most `timeout`, and stops the exporter.
    pub fn shutdown(&self, timeout: Duration) {
        if let Err(e) = self.provider.shutdown_with_timeout(timeout) {
            log::debug!("tracing: shutdown: {e}");
        }
    }

    /// The span of a call to `path` (`/package.Service/Method`) this server
    /// received: a child of the caller's span when `headers` carry a
    /// `traceparent`, else the root of a new trace.
    pub fn server_span(&self, path: &'static str, headers: &Metadata) -> Span {
        let parent = extract(headers);
        self.start_span(path, SpanKind::Server, &parent)
    }

    /// The span of a call to `path` this client makes, a child of `parent`
    /// (a new trace when `parent` has no span).
    pub fn client_span(&self, path: &'static str, parent: &Context) -> Span {
        self.start_span(path, SpanKind::Client, parent)
    }

    /// A call's span, named for its method (`package.Service/Method`, as
    /// the semantic conventions name RPC spans), with `rpc.*` attributes.
    fn start_span(&self, path: &'static str, kind: SpanKind, parent: &Context) -> Span {
        let name = path.trim_start_matches('/');
        let span = self.tracer.span_builder(name).with_kind(kind.clone()).start_with_context(&self.tracer, parent);
        let span = Span { cx: parent.with_span(span), tracer: self.tracer.clone(), kind };
        if span.is_recording() {
            let (service, method) = name.split_once('/').unwrap_or(("unknown", name));
            span.set_attribute(KeyValue::new("rpc.system", "grpc"));
            span.set_attribute(KeyValue::new("rpc.service", service));
            span.set_attribute(KeyValue::new("rpc.method", method));
        }
        span
    }
}

/// One span and its context (to start children under it, or to send along
/// with a call). Ends when [`Span::end`] is called; a span never ended is
/// ended when its last context goes.
#[derive(Clone)]
pub struct Span {
    cx: Context,
    tracer: SdkTracer,
    kind: SpanKind,
}

impl fmt::Debug for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Span").field(&self.cx.span().span_context()).finish()
    }
}

impl Span {
    /// Whether this span is recorded (sampled): attributes that cost
    /// something to compute are worth adding only then.
    pub fn is_recording(&self) -> bool {
        self.cx.span().is_recording()
    }

    /// A child span, for a step of the work this span covers (it may
    /// outlive this one: a chat message's fan-out may follow the reply of
    /// the call that said it); `None` when this span's trace is not sampled
    /// (its children would not be either).
    pub fn child(&self, name: &'static str, attributes: Vec<KeyValue>) -> Option<Span> {
        if !self.cx.span().span_context().is_sampled() {
            return None;
        }
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &self.cx);
        Some(Span { cx: self.cx.with_span(span), tracer: self.tracer.clone(), kind: SpanKind::Internal })
    }

    pub fn set_attribute(&self, attribute: KeyValue) {
        self.cx.span().set_attribute(attribute);
    }

    /// Marks the span failed, with `message`.
    pub fn set_error(&self, message: impl Into<String>) {
        self.cx.span().set_status(Status::error(message.into()));
    }

    pub fn add_event(&self, name: &'static str, attributes: Vec<KeyValue>) {
        self.cx.span().add_event(name, attributes);
    }

    pub fn end(&self) {
        self.cx.span().end();
    }

    /// Ends a call's span with the call's status `code` (semantic
    /// conventions: `rpc.grpc.status_code`; a client's span is an error for
    /// any code but OK, a server's only for the codes that say the server failed).
    pub fn end_call(&self, code: RpcStatusCode) {
        self.set_attribute(KeyValue::new("rpc.grpc.status_code", i64::from(i32::from(code))));
        let server_failed = [
            RpcStatusCode::UNKNOWN,
            RpcStatusCode::DEADLINE_EXCEEDED,
            RpcStatusCode::UNIMPLEMENTED,
            RpcStatusCode::INTERNAL,
            RpcStatusCode::UNAVAILABLE,
            RpcStatusCode::DATA_LOSS,
        ];
        let is_client = self.kind == SpanKind::Client;
        if code != RpcStatusCode::OK && (is_client || server_failed.contains(&code)) {
            self.set_error(format!("status code {}", i32::from(code)));
        }
        self.end();
    }

    /// `headers` (if any) plus this span's `traceparent` (and `tracestate`),
    /// for the call it covers.
    pub fn inject(&self, headers: Option<&Metadata>) -> Metadata {
        let mut builder = MetadataBuilder::new();
        for (key, value) in headers.into_iter().flat_map(Metadata::iter) {
            // The keys and values came out of valid metadata.
            let _ = builder.add_bytes(key, value);
        }
        TraceContextPropagator::new().inject_context(&self.cx, &mut MetadataInjector(&mut builder));
        builder.build()
    }

    /// The W3C `traceparent` of this span (for logs and tests).
    pub fn traceparent(&self) -> String {
        let sc = self.cx.span().span_context().clone();
        format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8())
    }
}

/// The context a `traceparent` (and `tracestate`) carries, e.g. the
/// variables `TRACEPARENT` and `TRACESTATE` a CLI is started with; an empty
/// context when there is none or it does not parse.
pub fn context_from(traceparent: Option<String>, tracestate: Option<String>) -> Context {
    struct Pair(Option<String>, Option<String>);
    impl Extractor for Pair {
        fn get(&self, key: &str) -> Option<&str> {
            match key {
                "traceparent" => self.0.as_deref(),
                "tracestate" => self.1.as_deref(),
                _ => None,
            }
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent", "tracestate"]
        }
    }
    TraceContextPropagator::new().extract(&Pair(traceparent, tracestate))
}

/// The caller's context from a call's metadata.
fn extract(headers: &Metadata) -> Context {
    struct Headers<'a>(&'a Metadata);
    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.iter().find(|(k, _)| *k == key).and_then(|(_, v)| std::str::from_utf8(v).ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.iter().map(|(k, _)| k).collect()
        }
    }
    TraceContextPropagator::new().extract(&Headers(headers))
}

struct MetadataInjector<'a>(&'a mut MetadataBuilder);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // traceparent and tracestate are valid ASCII keys and values.
        let _ = self.0.add_str(key, &value);
    }
}

/// The span processor the provider calls: admits a finished span into the
/// batch processor's queue only while it has room, counting the others as
/// dropped (`queue_full`). The batch processor counts drops of its own only
/// in a log line; bounding here, at the same size, means it never drops one.
#[derive(Debug)]
struct Admission {
    inner: BatchSpanProcessor,
    counters: Arc<ExportCounters>,
}

impl fmt::Debug for ExportCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportCounters").field("queued", &self.queued.load(Ordering::Relaxed)).finish()
    }
}

impl SpanProcessor for Admission {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let queued = &self.counters.queued;
        let admitted = queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_QUEUED_SPANS).then_some(n + 1))
            .is_ok();
        if admitted {
            self.inner.on_end(span);
        } else {
            self.counters.dropped.with_label_values(&["queue_full"]).inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting what each batch became.
#[derive(Debug)]
struct Counted {
    inner: opentelemetry_otlp::SpanExporter,
    counters: Arc<ExportCounters>,
}

impl SpanExporter for Counted {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        self.counters.queued.fetch_sub(spans.min(self.counters.queued.load(Ordering::Acquire)), Ordering::AcqRel);
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => self.counters.exported.inc_by(spans as u64),
            Err(e) => {
                log::debug!("tracing: {spans} span(s) not exported: {e}");
                self.counters.dropped.with_label_values(&["export_failed"]).inc_by(spans as u64);
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter's HTTP client: ureq, blocking, on the batch processor's
/// thread (the only caller), so no async runtime is needed anywhere.
#[derive(Debug)]
struct HttpClient(ureq::Agent);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for HttpClient {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<opentelemetry_http::Response<opentelemetry_http::Bytes>, opentelemetry_http::HttpError> {
        let mut response = self.0.run(request.map(|body| body.to_vec()))?;
        let body = response.body_mut().with_config().limit(4 << 20).read_to_vec()?;
        let (parts, _) = response.into_parts();
        Ok(opentelemetry_http::Response::from_parts(parts, body.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn no_endpoint_is_no_tracing() {
        assert_eq!(TraceSettings::from_env(None, env(&[("OTEL_SERVICE_NAME", "x")]), "greet-server"), Ok(None));
    }

    #[test]
    fn the_flag_wins_over_the_variable_and_the_traces_path_is_appended() {
        let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://elsewhere:4318")];
        let settings = TraceSettings::from_env(Some("http://127.0.0.1:4318/"), env(&vars), "greet-server").unwrap();
        let settings = settings.unwrap();
        assert_eq!(settings.endpoint, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(settings.service_name, "greet-server");
        assert_eq!(settings.sampler, SamplerSetting::ParentBasedAlwaysOn);
    }

    #[test]
    fn the_sampler_variables_are_read_and_checked() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://[::1]:4318"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
            ("OTEL_SERVICE_NAME", "replica-a"),
        ];
        let settings = TraceSettings::from_env(None, env(&vars), "greet-server").unwrap().unwrap();
        assert_eq!(settings.sampler, SamplerSetting::ParentBasedTraceIdRatio(0.01));
        assert_eq!(settings.service_name, "replica-a");
        assert_eq!(settings.endpoint, "http://[::1]:4318/v1/traces");
        let err = SamplerSetting::parse(Some("traceidratio"), Some("2")).unwrap_err();
        assert!(err.contains("OTEL_TRACES_SAMPLER_ARG=\"2\""), "{err}");
        let err = SamplerSetting::parse(Some("sometimes"), None).unwrap_err();
        assert!(err.contains("OTEL_TRACES_SAMPLER=\"sometimes\""), "{err}");
    }

    #[test]
    fn bad_endpoints_are_refused_in_one_line() {
        for bad in ["localhost:4318", "https://collector:4318", "http://", "http://host:port", "http:// x"] {
            let err = traces_url(bad).unwrap_err();
            assert!(err.starts_with(&format!("invalid OTLP endpoint {bad:?}")) && !err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn a_traceparent_round_trips_through_metadata() {
        let given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let cx = context_from(Some(given.to_string()), None);
        let mut builder = MetadataBuilder::new();
        TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(&mut builder));
        let headers = builder.build();
        let back = extract(&headers);
        assert_eq!(back.span().span_context().trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(back.span().span_context().span_id().to_string(), "b7ad6b7169203331");
        assert!(back.span().span_context().is_sampled());
    }
}
