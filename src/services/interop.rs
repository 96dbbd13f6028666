//! `grpc.testing.TestService`: the server side of gRPC's cross-language
//! interop suite (grpc/grpc `doc/interop-test-descriptions.md`).
//! `grpc.testing.UnimplementedService` is deliberately not served, and
//! `TestService/UnimplementedCall` keeps its UNIMPLEMENTED default.
//!
//! What grpcio 0.13 does not let a server do, and what we do instead:
//! - **Trailing metadata** ("Echo Metadata", `x-grpc-test-echo-trailing-bin`):
//!   grpcio sends no trailing metadata but `grpc-status-details-bin`, so this
//!   key is not echoed; `x-grpc-test-echo-initial` is echoed as initial
//!   metadata.
//! - **CompressedRequest** (`expect_compressed`): the C core neither publishes
//!   `grpc-encoding` nor the per-message compressed flag to the application,
//!   so the server cannot tell a compressed request from a plain one and
//!   ignores `expect_compressed`.
//! - **CompressedResponse**: supported. `response_compressed` (unary) and a
//!   `compressed` response parameter (StreamingOutputCall) ask the core for
//!   gzip on the call through `grpc-internal-encoding-request`, the key the
//!   C++ `ServerContext::set_compression_algorithm` uses; messages whose
//!   parameters do not ask for it are written with `force_no_compress`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::prelude::*;
use futures_timer::Delay;
use grpcio::{Metadata, MetadataBuilder, RpcContext, RpcStatus, WriteFlags};

use crate::call::{ClientStreamingSink, DuplexSink, RequestStream, ServerStreamingSink, UnarySink};
use crate::limits;
use crate::proto::empty::Empty;
use crate::proto::messages::{
    EchoStatus, Payload, PayloadType, ResponseParameters, SimpleRequest, SimpleResponse, StreamingInputCallRequest,
    StreamingInputCallResponse, StreamingOutputCallRequest, StreamingOutputCallResponse,
};
use crate::proto::test_grpc::TestService;
use crate::status::{finish_stream, invalid_argument, reply, CallError};

/// Metadata the client asks to get back as initial metadata.
pub const ECHO_INITIAL_KEY: &str = "x-grpc-test-echo-initial";
/// Metadata the client asks to get back as trailing metadata.
pub const ECHO_TRAILING_KEY: &str = "x-grpc-test-echo-trailing-bin";
/// The C core's per-call compression request (`GRPC_COMPRESSION_REQUEST_ALGORITHM_MD_KEY`).
pub const COMPRESSION_REQUEST_KEY: &str = "grpc-internal-encoding-request";
/// Largest payload the server builds on request: the largest message it
/// accepts. The interop cases ask for at most 314,159 bytes.
pub const MAX_PAYLOAD_BYTES: usize = limits::MAX_RECEIVE_MESSAGE_BYTES;
/// Most requests HalfDuplexCall buffers before answering.
pub const MAX_HALF_DUPLEX_REQUESTS: usize = 10_000;

/// Serves `grpc.testing.TestService`.
#[derive(Clone)]
pub struct InteropService {
    /// Reported in `SimpleResponse.server_id`: the same for every call to
    /// this server, different from any other server in this process.
    server_id: Arc<str>,
}

impl Default for InteropService {
    fn default() -> Self {
        static INSTANCES: AtomicUsize = AtomicUsize::new(0);
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        InteropService { server_id: format!("greet-interop-{}-{n}", std::process::id()).into() }
    }
}

/// A payload of `size` zero bytes of `kind`, or INVALID_ARGUMENT.
pub fn payload(kind: PayloadType, size: i32) -> Result<Payload, RpcStatus> {
    let size = usize::try_from(size).map_err(|_| invalid_argument(format!("payload size {size} is negative")))?;
    if size > MAX_PAYLOAD_BYTES {
        return Err(invalid_argument(format!("payload size {size} is over the limit of {MAX_PAYLOAD_BYTES} bytes")));
    }
    Ok(Payload { type_: kind.into(), body: vec![0; size], ..Default::default() })
}

fn payload_type(requested: protobuf::EnumOrUnknown<PayloadType>) -> Result<PayloadType, RpcStatus> {
    requested
        .enum_value()
        .map_err(|n| invalid_argument(format!("response_type {n} is not supported; only COMPRESSABLE (0) is")))
}

/// The status a request asks the call to end with, if any (code 0 is none).
fn echo_status(status: Option<&EchoStatus>) -> Option<RpcStatus> {
    status.filter(|s| s.code != 0).map(|s| RpcStatus::with_message(s.code, s.message.clone()))
}

/// Initial metadata to send: the echoed `x-grpc-test-echo-initial` and, when
/// `compress`, the request for a gzip-compressed response.
fn response_headers(ctx: &RpcContext, compress: bool) -> Option<Metadata> {
    let mut builder = MetadataBuilder::new();
    let mut any = false;
    for (key, value) in ctx.request_headers().iter() {
        if key == ECHO_INITIAL_KEY {
            // The core only delivers printable ASCII in non-binary values.
            if let Ok(value) = std::str::from_utf8(value) {
                any |= builder.add_str(key, value).is_ok();
            }
        }
    }
    if compress {
        any |= builder.add_str(COMPRESSION_REQUEST_KEY, "gzip").is_ok();
    }
    any.then(|| builder.build())
}

fn is_set(flag: &protobuf::MessageField<crate::proto::messages::BoolValue>) -> bool {
    flag.as_ref().is_some_and(|b| b.value)
}

fn response(kind: PayloadType, parameters: &ResponseParameters) -> Result<StreamingOutputCallResponse, RpcStatus> {
    Ok(StreamingOutputCallResponse { payload: Some(payload(kind, parameters.size)?).into(), ..Default::default() })
}

fn interval(parameters: &ResponseParameters) -> Option<Duration> {
    u64::try_from(parameters.interval_us).ok().filter(|us| *us > 0).map(Duration::from_micros)
}

/// Sends one response per parameter, each after its `interval_us` (a timer
/// future, never a sleep), compressed only when the parameter asks for it.
async fn send_responses<S>(sink: &mut S, kind: PayloadType, parameters: &[ResponseParameters]) -> Result<(), CallError>
where
    S: Sink<(StreamingOutputCallResponse, WriteFlags), Error = grpcio::Error> + Unpin,
{
    for parameters in parameters {
        if let Some(wait) = interval(parameters) {
            Delay::new(wait).await;
        }
        let flags = WriteFlags::default().force_no_compress(!is_set(&parameters.compressed));
        sink.send((response(kind, parameters)?, flags)).await?;
    }
    Ok(())
}

impl TestService for InteropService {
    /// Answers the empty message.
    fn empty_call(&mut self, ctx: RpcContext, _req: Empty, sink: UnarySink<Empty>) {
        ctx.spawn(reply("TestService/EmptyCall", sink, Ok(Empty::default())));
    }

    /// Answers a payload of `response_size` zero bytes, or ends with
    /// `response_status` when it has a non-zero code; echoes
    /// `x-grpc-test-echo-initial`; compresses the response when asked.
    fn unary_call(&mut self, ctx: RpcContext, req: SimpleRequest, mut sink: UnarySink<SimpleResponse>) {
        if let Some(headers) = response_headers(&ctx, is_set(&req.response_compressed)) {
            sink.set_headers(headers);
        }
        let answer = match echo_status(req.response_status.as_ref()) {
            Some(status) => Err(status),
            None => payload_type(req.response_type).and_then(|kind| payload(kind, req.response_size)).map(|p| {
                SimpleResponse {
                    payload: Some(p).into(),
                    server_id: if req.fill_server_id { self.server_id.to_string() } else { String::new() },
                    ..Default::default()
                }
            }),
        };
        ctx.spawn(reply("TestService/UnaryCall", sink, answer.map_err(CallError::from)));
    }

    /// One response per `response_parameters`, in order, each after its
    /// `interval_us`; then OK.
    fn streaming_output_call(
        &mut self,
        ctx: RpcContext,
        req: StreamingOutputCallRequest,
        mut sink: ServerStreamingSink<StreamingOutputCallResponse>,
    ) {
        const METHOD: &str = "TestService/StreamingOutputCall";
        let compress = req.response_parameters.iter().any(|p| is_set(&p.compressed));
        if let Some(headers) = response_headers(&ctx, compress) {
            sink.set_headers(headers);
        }
        let checked = match echo_status(req.response_status.as_ref()) {
            Some(status) => Err(status),
            None => payload_type(req.response_type),
        };
        ctx.spawn(async move {
            let result = async {
                let kind = checked?;
                send_responses(&mut sink, kind, &req.response_parameters).await?;
                sink.close().await?;
                Ok(())
            }
            .await;
            finish_stream(METHOD, result, |status| sink.fail(status)).await;
        });
    }

    /// Sums the payload sizes received; answers the sum when the client
    /// closes its side.
    fn streaming_input_call(
        &mut self,
        ctx: RpcContext,
        mut stream: RequestStream<StreamingInputCallRequest>,
        sink: ClientStreamingSink<StreamingInputCallResponse>,
    ) {
        const METHOD: &str = "TestService/StreamingInputCall";
        ctx.spawn(async move {
            let summed: Result<i32, CallError> = async {
                let mut sum: usize = 0;
                while let Some(req) = stream.try_next().await? {
                    sum = sum.saturating_add(req.payload.as_ref().map_or(0, |p| p.body.len()));
                }
                i32::try_from(sum).map_err(|_| {
                    CallError::Status(invalid_argument(format!("{sum} payload bytes received: over the int32 range")))
                })
            }
            .await;
            let response =
                summed.map(|sum| StreamingInputCallResponse { aggregated_payload_size: sum, ..Default::default() });
            reply(METHOD, sink, response).await;
        });
    }

    /// Answers each request as it arrives, one response per parameter;
    /// a request with a non-zero `response_status` ends the call with it.
    /// Echoes `x-grpc-test-echo-initial`.
    fn full_duplex_call(
        &mut self,
        ctx: RpcContext,
        mut stream: RequestStream<StreamingOutputCallRequest>,
        mut sink: DuplexSink<StreamingOutputCallResponse>,
    ) {
        const METHOD: &str = "TestService/FullDuplexCall";
        if let Some(headers) = response_headers(&ctx, false) {
            sink.set_headers(headers);
        }
        ctx.spawn(async move {
            let result = async {
                while let Some(req) = stream.try_next().await? {
                    if let Some(status) = echo_status(req.response_status.as_ref()) {
                        return Err(CallError::Status(status));
                    }
                    let kind = payload_type(req.response_type)?;
                    send_responses(&mut sink, kind, &req.response_parameters).await?;
                }
                sink.close().await?;
                Ok(())
            }
            .await;
            finish_stream(METHOD, result, |status| sink.fail(status)).await;
        });
    }

    /// Buffers every request until the client closes its side, then answers
    /// them in order like FullDuplexCall.
    fn half_duplex_call(
        &mut self,
        ctx: RpcContext,
        mut stream: RequestStream<StreamingOutputCallRequest>,
        mut sink: DuplexSink<StreamingOutputCallResponse>,
    ) {
        const METHOD: &str = "TestService/HalfDuplexCall";
        if let Some(headers) = response_headers(&ctx, false) {
            sink.set_headers(headers);
        }
        ctx.spawn(async move {
            let result = async {
                let mut requests = Vec::new();
                while let Some(req) = stream.try_next().await? {
                    if requests.len() == MAX_HALF_DUPLEX_REQUESTS {
                        return Err(CallError::Status(invalid_argument(format!(
                            "more than {MAX_HALF_DUPLEX_REQUESTS} requests in one HalfDuplexCall"
                        ))));
                    }
                    requests.push(req);
                }
                for req in requests {
                    if let Some(status) = echo_status(req.response_status.as_ref()) {
                        return Err(CallError::Status(status));
                    }
                    let kind = payload_type(req.response_type)?;
                    send_responses(&mut sink, kind, &req.response_parameters).await?;
                }
                sink.close().await?;
                Ok(())
            }
            .await;
            finish_stream(METHOD, result, |status| sink.fail(status)).await;
        });
    }
}
