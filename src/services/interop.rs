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
use grpcio::{Metadata, MetadataBuilder, RpcStatus, RpcStatusCode, WriteFlags};

use crate::limits;
use crate::proto::empty::Empty;
use crate::proto::messages::{
    EchoStatus, Payload, PayloadType, ResponseParameters, SimpleRequest, SimpleResponse, StreamingInputCallRequest,
    StreamingInputCallResponse, StreamingOutputCallRequest, StreamingOutputCallResponse,
};
use crate::rpc::api::test::TestService;
use crate::rpc::{Call, CallError, DuplexSink, RequestStream, ServerStreamingSink};
use crate::wire::{COMPRESSION_REQUEST_KEY, ECHO_INITIAL_KEY};

fn invalid_argument(message: String) -> RpcStatus {
    RpcStatus::with_message(RpcStatusCode::INVALID_ARGUMENT, message)
}
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
fn response_headers(call: &Call, compress: bool) -> Option<Metadata> {
    let mut builder = MetadataBuilder::new();
    let mut any = false;
    for (key, value) in call.request_headers().iter() {
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

/// The responses one FullDuplexCall or HalfDuplexCall request asks for, or
/// the status it asks the call to end with.
async fn answer(
    sink: &mut DuplexSink<StreamingOutputCallResponse>,
    request: &StreamingOutputCallRequest,
) -> Result<(), CallError> {
    if let Some(status) = echo_status(request.response_status.as_ref()) {
        return Err(status.into());
    }
    let kind = payload_type(request.response_type)?;
    send_responses(sink, kind, &request.response_parameters).await
}

impl TestService for InteropService {
    /// `x-grpc-test-echo-initial` is echoed.
    const READS_REQUEST_HEADERS: bool = true;

    /// Answers the empty message.
    async fn empty_call(&self, _call: &mut Call, _request: Empty) -> Result<Empty, CallError> {
        Ok(Empty::default())
    }

    /// Answers a payload of `response_size` zero bytes, or ends with
    /// `response_status` when it has a non-zero code; echoes
    /// `x-grpc-test-echo-initial`; compresses the response when asked.
    async fn unary_call(&self, call: &mut Call, request: SimpleRequest) -> Result<SimpleResponse, CallError> {
        if let Some(headers) = response_headers(call, is_set(&request.response_compressed)) {
            call.set_response_headers(headers);
        }
        if let Some(status) = echo_status(request.response_status.as_ref()) {
            return Err(status.into());
        }
        let payload = payload(payload_type(request.response_type)?, request.response_size)?;
        Ok(SimpleResponse {
            payload: Some(payload).into(),
            server_id: if request.fill_server_id { self.server_id.to_string() } else { String::new() },
            ..Default::default()
        })
    }

    /// One response per `response_parameters`, in order, each after its
    /// `interval_us`; then OK.
    async fn streaming_output_call(
        &self,
        call: &mut Call,
        request: StreamingOutputCallRequest,
        sink: &mut ServerStreamingSink<StreamingOutputCallResponse>,
    ) -> Result<(), CallError> {
        let compress = request.response_parameters.iter().any(|p| is_set(&p.compressed));
        if let Some(headers) = response_headers(call, compress) {
            sink.set_headers(headers);
        }
        if let Some(status) = echo_status(request.response_status.as_ref()) {
            return Err(status.into());
        }
        let kind = payload_type(request.response_type)?;
        send_responses(sink, kind, &request.response_parameters).await
    }

    /// Sums the payload sizes received; answers the sum when the client
    /// closes its side.
    async fn streaming_input_call(
        &self,
        _call: &mut Call,
        requests: &mut RequestStream<StreamingInputCallRequest>,
    ) -> Result<StreamingInputCallResponse, CallError> {
        let mut sum: usize = 0;
        while let Some(request) = requests.try_next().await? {
            sum = sum.saturating_add(request.payload.as_ref().map_or(0, |p| p.body.len()));
        }
        let sum = i32::try_from(sum)
            .map_err(|_| invalid_argument(format!("{sum} payload bytes received: over the int32 range")))?;
        Ok(StreamingInputCallResponse { aggregated_payload_size: sum, ..Default::default() })
    }

    /// Answers each request as it arrives, one response per parameter;
    /// a request with a non-zero `response_status` ends the call with it.
    /// Echoes `x-grpc-test-echo-initial`.
    async fn full_duplex_call(
        &self,
        call: &mut Call,
        requests: &mut RequestStream<StreamingOutputCallRequest>,
        sink: &mut DuplexSink<StreamingOutputCallResponse>,
    ) -> Result<(), CallError> {
        if let Some(headers) = response_headers(call, false) {
            sink.set_headers(headers);
        }
        while let Some(request) = requests.try_next().await? {
            answer(sink, &request).await?;
        }
        Ok(())
    }

    /// Buffers every request until the client closes its side, then answers
    /// them in order like FullDuplexCall.
    async fn half_duplex_call(
        &self,
        call: &mut Call,
        requests: &mut RequestStream<StreamingOutputCallRequest>,
        sink: &mut DuplexSink<StreamingOutputCallResponse>,
    ) -> Result<(), CallError> {
        if let Some(headers) = response_headers(call, false) {
            sink.set_headers(headers);
        }
        let mut buffered = Vec::new();
        while let Some(request) = requests.try_next().await? {
            if buffered.len() == MAX_HALF_DUPLEX_REQUESTS {
                return Err(invalid_argument(format!(
                    "more than {MAX_HALF_DUPLEX_REQUESTS} requests in one HalfDuplexCall"
                ))
                .into());
            }
            buffered.push(request);
        }
        for request in buffered {
            answer(sink, &request).await?;
        }
        Ok(())
    }
}
