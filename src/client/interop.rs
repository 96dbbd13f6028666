//! The client side of gRPC's interop suite (grpc/grpc
//! `doc/interop-test-descriptions.md`): one function per test case, each
//! call with a deadline, each returning `Err` with what went wrong.
//!
//! What grpcio 0.13 does not let a client see, and what the cases check instead:
//! - the per-message compressed flag: `server_compressed_*` ask for
//!   (un)compressed responses and check the calls succeed with the right
//!   payloads, not the flag on the wire;
//! - trailing metadata of streaming calls: `custom_metadata` checks the
//!   echoed trailer on the unary call only (initial metadata on both).
//!
//! `client_compressed_*` probe first, as the descriptions say: a server that
//! cannot check request compression fails them; the `*_noprobe` variants
//! (grpc-java's names) skip the probe.

use std::time::{Duration, Instant};

use futures::prelude::*;
use futures_timer::Delay;
use grpcio::{CallOption, Channel, ClientUnaryReceiver, Metadata, MetadataBuilder, RpcStatusCode, WriteFlags};

use super::half_close;
use super::Connector;
use crate::proto::empty::Empty;
use crate::proto::messages::{
    BoolValue, EchoStatus, Payload, PayloadType, ResponseParameters, SimpleRequest, SimpleResponse,
    StreamingInputCallRequest, StreamingOutputCallRequest, StreamingOutputCallResponse,
};
use crate::proto::test_grpc::{TestServiceClient, UnimplementedServiceClient};
use crate::tls::ClientTls;
use crate::wire::{code_name, COMPRESSION_REQUEST_KEY, ECHO_INITIAL_KEY, ECHO_TRAILING_KEY};

/// Every test case [`InteropClient::run`] knows, in the order `all` runs them.
pub const TEST_CASES: &[&str] = &[
    "empty_unary",
    "large_unary",
    "client_streaming",
    "server_streaming",
    "ping_pong",
    "empty_stream",
    "timeout_on_sleeping_server",
    "cancel_after_begin",
    "cancel_after_first_response",
    "status_code_and_message",
    "special_status_message",
    "custom_metadata",
    "unimplemented_method",
    "unimplemented_service",
    "client_compressed_unary",
    "client_compressed_unary_noprobe",
    "server_compressed_unary",
    "client_compressed_streaming",
    "client_compressed_streaming_noprobe",
    "server_compressed_streaming",
    "pick_first_unary",
    "rpc_soak",
    "channel_soak",
];

/// Deadline of each call of a case (the soak cases have their own bounds).
pub const CASE_DEADLINE: Duration = Duration::from_secs(30);

const LARGE_REQUEST: usize = 271_828;
const LARGE_RESPONSE: usize = 314_159;
const REQUEST_SIZES: [usize; 4] = [27_182, 8, 1_828, 45_904];
const RESPONSE_SIZES: [usize; 4] = [31_415, 9, 2_653, 58_979];
const STATUS_MESSAGE: &str = "test status message";
const SPECIAL_STATUS_MESSAGE: &str = "\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n";
const ECHO_INITIAL_VALUE: &str = "test_initial_metadata_value";
const ECHO_TRAILING_VALUE: &[u8] = &[0xab, 0xab, 0xab];

/// Where the server is and how to reach it.
#[derive(Clone, Debug)]
pub struct Target {
    /// `host:port`.
    pub addr: String,
    /// TLS settings; `None` is plaintext.
    pub tls: Option<ClientTls>,
}

/// The soak cases' bounds (grpc-go's `--soak_*` flags).
#[derive(Clone, Debug)]
pub struct SoakConfig {
    pub iterations: usize,
    /// Iterations that may fail (error, or slower than `max_latency`).
    pub max_failures: usize,
    pub max_latency: Duration,
    pub overall_timeout: Duration,
    /// Least time between the starts of two iterations.
    pub min_time_between_rpcs: Duration,
}

impl Default for SoakConfig {
    fn default() -> Self {
        SoakConfig {
            iterations: 10,
            max_failures: 0,
            max_latency: Duration::from_millis(1000),
            overall_timeout: Duration::from_secs(10),
            min_time_between_rpcs: Duration::ZERO,
        }
    }
}

/// Runs interop test cases against one server.
pub struct InteropClient {
    target: Target,
    test: TestServiceClient,
    unimplemented: UnimplementedServiceClient,
    soak: SoakConfig,
}

fn zeros(size: usize) -> Payload {
    Payload { type_: PayloadType::COMPRESSABLE.into(), body: vec![0; size], ..Default::default() }
}

fn flag(value: bool) -> protobuf::MessageField<BoolValue> {
    Some(BoolValue { value, ..Default::default() }).into()
}

fn size_i32(size: usize) -> i32 {
    // Every size used here is a small constant.
    i32::try_from(size).unwrap_or(i32::MAX)
}

fn large_request() -> SimpleRequest {
    SimpleRequest {
        response_size: size_i32(LARGE_RESPONSE),
        payload: Some(zeros(LARGE_REQUEST)).into(),
        ..Default::default()
    }
}

fn parameters(size: usize) -> ResponseParameters {
    ResponseParameters { size: size_i32(size), ..Default::default() }
}

fn ping(response_size: usize, request_size: usize) -> StreamingOutputCallRequest {
    StreamingOutputCallRequest {
        response_parameters: vec![parameters(response_size)],
        payload: Some(zeros(request_size)).into(),
        ..Default::default()
    }
}

fn echo_status(message: &str) -> protobuf::MessageField<EchoStatus> {
    Some(EchoStatus { code: 2, message: message.to_string(), ..Default::default() }).into()
}

/// `what failed: CODE: message`.
fn failed(what: &str, error: &grpcio::Error) -> String {
    match error {
        grpcio::Error::RpcFailure(s) => format!("{what} failed: {}: {:?}", code_name(s.code()), s.message()),
        other => format!("{what} failed: {other}"),
    }
}

/// Checks a call ended with `want` (and, if given, exactly `message`).
fn expect_status<T>(
    what: &str,
    result: grpcio::Result<T>,
    want: RpcStatusCode,
    message: Option<&str>,
) -> Result<(), String> {
    match result {
        Ok(_) => Err(format!("{what}: got OK, want {}", code_name(want))),
        Err(grpcio::Error::RpcFailure(s)) if s.code() == want => match message {
            Some(m) if s.message() != m => Err(format!("{what}: got message {:?}, want {m:?}", s.message())),
            _ => Ok(()),
        },
        Err(e) => Err(format!("{}, want {}", failed(what, &e), code_name(want))),
    }
}

/// Checks a payload is `size` zero bytes of type COMPRESSABLE.
fn check_payload(what: &str, payload: &protobuf::MessageField<Payload>, size: usize) -> Result<(), String> {
    let payload = payload.as_ref().ok_or_else(|| format!("{what}: response has no payload"))?;
    if payload.type_.enum_value() != Ok(PayloadType::COMPRESSABLE) {
        return Err(format!("{what}: payload type {:?}, want COMPRESSABLE", payload.type_));
    }
    if payload.body.len() != size {
        return Err(format!("{what}: payload of {} bytes, want {size}", payload.body.len()));
    }
    if payload.body.iter().any(|b| *b != 0) {
        return Err(format!("{what}: payload is not all zeros"));
    }
    Ok(())
}

/// The value of `key` in `metadata`, if present.
fn metadata_value<'a>(metadata: &'a Metadata, key: &str) -> Option<&'a [u8]> {
    metadata.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
}

fn check_metadata(what: &str, metadata: &Metadata, key: &str, want: &[u8]) -> Result<(), String> {
    match metadata_value(metadata, key) {
        Some(got) if got == want => Ok(()),
        Some(got) => Err(format!("{what}: {key} is {got:02x?}, want {want:02x?}")),
        None => Err(format!("{what}: no {key} received, want {want:02x?}")),
    }
}

fn compression_headers() -> Metadata {
    let mut builder = MetadataBuilder::new();
    // A constant, valid key and value: cannot fail.
    let _ = builder.add_str(COMPRESSION_REQUEST_KEY, "gzip");
    builder.build()
}

impl InteropClient {
    pub fn new(target: Target, soak: SoakConfig) -> Self {
        let channel = Self::channel_on(&target, false);
        InteropClient {
            test: TestServiceClient::new(channel.clone()),
            unimplemented: UnimplementedServiceClient::new(channel),
            target,
            soak,
        }
    }

    /// A channel to the target; `fresh` keeps it off the process-wide
    /// subchannel pool so that it opens its own connection.
    fn channel_on(target: &Target, fresh: bool) -> Channel {
        let mut connector = match Connector::new(&target.addr) {
            Ok(connector) => connector,
            // The interop flags give one host:port; anything else is the core's to refuse.
            Err(_) => return grpcio::ChannelBuilder::new(super::channel::environment()).connect(&target.addr),
        };
        // The interop cases check statuses exactly: no retries behind them.
        connector = connector.retries(0).own_connections(fresh);
        if let Some(tls) = &target.tls {
            connector = connector.tls(tls.clone());
        }
        connector.channel()
    }

    fn option(&self) -> CallOption {
        CallOption::default().timeout(CASE_DEADLINE)
    }

    /// Runs the test case named `case`.
    pub async fn run(&self, case: &str) -> Result<(), String> {
        match case {
            "empty_unary" => self.empty_unary().await,
            "large_unary" => self.large_unary().await,
            "client_streaming" => self.client_streaming().await,
            "server_streaming" => self.server_streaming().await,
            "ping_pong" => self.ping_pong().await,
            "empty_stream" => self.empty_stream().await,
            "timeout_on_sleeping_server" => self.timeout_on_sleeping_server().await,
            "cancel_after_begin" => self.cancel_after_begin().await,
            "cancel_after_first_response" => self.cancel_after_first_response().await,
            "status_code_and_message" => self.status_code_and_message().await,
            "special_status_message" => self.special_status_message().await,
            "custom_metadata" => self.custom_metadata().await,
            "unimplemented_method" => self.unimplemented_method().await,
            "unimplemented_service" => self.unimplemented_service().await,
            "client_compressed_unary" => self.client_compressed_unary(true).await,
            "client_compressed_unary_noprobe" => self.client_compressed_unary(false).await,
            "server_compressed_unary" => self.server_compressed_unary().await,
            "client_compressed_streaming" => self.client_compressed_streaming(true).await,
            "client_compressed_streaming_noprobe" => self.client_compressed_streaming(false).await,
            "server_compressed_streaming" => self.server_compressed_streaming().await,
            "pick_first_unary" => self.pick_first_unary().await,
            "rpc_soak" => self.soak(false).await,
            "channel_soak" => self.soak(true).await,
            other => Err(format!("unknown test case {other:?}; known: {}", TEST_CASES.join(", "))),
        }
    }

    /// EmptyCall with an empty message succeeds.
    pub async fn empty_unary(&self) -> Result<(), String> {
        unary(self.test.empty_call_async_opt(&Empty::default(), self.option()))
            .await
            .map_err(|e| failed("EmptyCall", &e))?;
        Ok(())
    }

    /// A 271,828-byte request gets a 314,159-byte response.
    pub async fn large_unary(&self) -> Result<(), String> {
        let response = unary(self.test.unary_call_async_opt(&large_request(), self.option()))
            .await
            .map_err(|e| failed("UnaryCall", &e))?;
        check_payload("UnaryCall", &response.payload, LARGE_RESPONSE)
    }

    /// Four requests streamed in; the server answers their total size.
    pub async fn client_streaming(&self) -> Result<(), String> {
        let requests: Vec<_> = REQUEST_SIZES.iter().map(|&n| (n, None)).collect();
        self.stream_in("StreamingInputCall", &requests, self.option(), 74_922).await
    }

    /// Sends `(size, expect_compressed)` requests (a `Some(false)` one
    /// uncompressed) and checks the aggregated size.
    async fn stream_in(
        &self,
        what: &str,
        requests: &[(usize, Option<bool>)],
        option: CallOption,
        want: i32,
    ) -> Result<(), String> {
        let (mut sink, receiver) = self.test.streaming_input_call_opt(option).map_err(|e| failed(what, &e))?;
        let sent = async {
            for &(size, expect_compressed) in requests {
                let req = StreamingInputCallRequest {
                    payload: Some(zeros(size)).into(),
                    expect_compressed: expect_compressed.map(flag).unwrap_or_default(),
                    ..Default::default()
                };
                let flags = WriteFlags::default().force_no_compress(expect_compressed == Some(false));
                sink.send((req, flags)).await?;
            }
            sink.close().await
        }
        .await;
        let response = super::settle(sent, receiver.await).map_err(|e| failed(what, &e))?;
        if response.aggregated_payload_size != want {
            return Err(format!("{what}: aggregated_payload_size {}, want {want}", response.aggregated_payload_size));
        }
        Ok(())
    }

    /// Four responses of the requested sizes, in order.
    pub async fn server_streaming(&self) -> Result<(), String> {
        let req = StreamingOutputCallRequest {
            response_parameters: RESPONSE_SIZES.iter().map(|&n| parameters(n)).collect(),
            ..Default::default()
        };
        self.stream_out("StreamingOutputCall", &req, &RESPONSE_SIZES).await
    }

    async fn stream_out(&self, what: &str, req: &StreamingOutputCallRequest, sizes: &[usize]) -> Result<(), String> {
        let stream = self.test.streaming_output_call_opt(req, self.option()).map_err(|e| failed(what, &e))?;
        let responses: Vec<StreamingOutputCallResponse> = stream.try_collect().await.map_err(|e| failed(what, &e))?;
        if responses.len() != sizes.len() {
            return Err(format!("{what}: {} responses, want {}", responses.len(), sizes.len()));
        }
        for (i, (response, &size)) in responses.iter().zip(sizes).enumerate() {
            check_payload(&format!("{what} response #{}", i + 1), &response.payload, size)?;
        }
        Ok(())
    }

    /// Four request/response rounds on one FullDuplexCall, then a clean end.
    pub async fn ping_pong(&self) -> Result<(), String> {
        const WHAT: &str = "FullDuplexCall";
        let (mut sink, mut receiver) = self.test.full_duplex_call_opt(self.option()).map_err(|e| failed(WHAT, &e))?;
        async {
            for (i, (&request, &response)) in REQUEST_SIZES.iter().zip(&RESPONSE_SIZES).enumerate() {
                let round = format!("{WHAT} round {}", i + 1);
                sink.send((ping(response, request), WriteFlags::default())).await.map_err(|e| failed(&round, &e))?;
                match receiver.try_next().await.map_err(|e| failed(&round, &e))? {
                    Some(reply) => check_payload(&round, &reply.payload, response)?,
                    None => return Err(format!("{round}: the stream ended without a response")),
                }
            }
            half_close(&mut sink).await.map_err(|e| failed(&format!("{WHAT} close"), &e))?;
            expect_end(WHAT, receiver.try_next().await)
        }
        .await
    }

    /// A FullDuplexCall closed at once ends OK with no response.
    pub async fn empty_stream(&self) -> Result<(), String> {
        const WHAT: &str = "FullDuplexCall";
        let (mut sink, mut receiver) = self.test.full_duplex_call_opt(self.option()).map_err(|e| failed(WHAT, &e))?;
        async {
            half_close(&mut sink).await.map_err(|e| failed(&format!("{WHAT} close"), &e))?;
            expect_end(WHAT, receiver.try_next().await)
        }
        .await
    }

    /// A FullDuplexCall with a 1 ms deadline that the server never answers
    /// ends DEADLINE_EXCEEDED.
    pub async fn timeout_on_sleeping_server(&self) -> Result<(), String> {
        const WHAT: &str = "FullDuplexCall with a 1ms deadline";
        let option = CallOption::default().timeout(Duration::from_millis(1));
        let (mut sink, mut receiver) = match self.test.full_duplex_call_opt(option) {
            Ok(call) => call,
            Err(e) => return expect_status(WHAT, Err::<(), _>(e), RpcStatusCode::DEADLINE_EXCEEDED, None),
        };
        let req = StreamingOutputCallRequest { payload: Some(zeros(27_182)).into(), ..Default::default() };
        async {
            // The deadline may pass before the send does; the status comes
            // from the receiving side either way.
            let _ = sink.send((req, WriteFlags::default())).await;
            let received = receiver.try_next().await;
            expect_status(WHAT, received, RpcStatusCode::DEADLINE_EXCEEDED, None)
        }
        .await
    }

    /// A StreamingInputCall cancelled before any message ends CANCELLED.
    pub async fn cancel_after_begin(&self) -> Result<(), String> {
        const WHAT: &str = "StreamingInputCall cancelled after begin";
        let (mut sink, receiver) = self.test.streaming_input_call_opt(self.option()).map_err(|e| failed(WHAT, &e))?;
        sink.cancel();
        expect_status(WHAT, receiver.await, RpcStatusCode::CANCELLED, None)
    }

    /// A FullDuplexCall cancelled after its first response ends CANCELLED.
    pub async fn cancel_after_first_response(&self) -> Result<(), String> {
        const WHAT: &str = "FullDuplexCall cancelled after the first response";
        let (mut sink, mut receiver) = self.test.full_duplex_call_opt(self.option()).map_err(|e| failed(WHAT, &e))?;
        async {
            sink.send((ping(31_415, 27_182), WriteFlags::default())).await.map_err(|e| failed(WHAT, &e))?;
            match receiver.try_next().await.map_err(|e| failed(WHAT, &e))? {
                Some(reply) => check_payload(WHAT, &reply.payload, 31_415)?,
                None => return Err(format!("{WHAT}: the stream ended without a response")),
            }
            receiver.cancel();
            expect_status(WHAT, receiver.try_next().await, RpcStatusCode::CANCELLED, None)
        }
        .await
    }

    /// The server ends UnaryCall and FullDuplexCall with the code and message asked for.
    pub async fn status_code_and_message(&self) -> Result<(), String> {
        let req = SimpleRequest { response_status: echo_status(STATUS_MESSAGE), ..Default::default() };
        let unary = unary(self.test.unary_call_async_opt(&req, self.option())).await;
        expect_status("UnaryCall", unary, RpcStatusCode::UNKNOWN, Some(STATUS_MESSAGE))?;

        const WHAT: &str = "FullDuplexCall";
        let (mut sink, mut receiver) = self.test.full_duplex_call_opt(self.option()).map_err(|e| failed(WHAT, &e))?;
        let req = StreamingOutputCallRequest { response_status: echo_status(STATUS_MESSAGE), ..Default::default() };
        async {
            // The server may end the call before the close goes out.
            let _ = sink.send((req, WriteFlags::default())).await;
            let _ = sink.close().await;
            expect_status(WHAT, receiver.try_next().await, RpcStatusCode::UNKNOWN, Some(STATUS_MESSAGE))
        }
        .await
    }

    /// Whitespace and non-ASCII survive in a status message.
    pub async fn special_status_message(&self) -> Result<(), String> {
        let req = SimpleRequest { response_status: echo_status(SPECIAL_STATUS_MESSAGE), ..Default::default() };
        let unary = unary(self.test.unary_call_async_opt(&req, self.option())).await;
        expect_status("UnaryCall", unary, RpcStatusCode::UNKNOWN, Some(SPECIAL_STATUS_MESSAGE))
    }

    /// `x-grpc-test-echo-initial` comes back as initial metadata on UnaryCall
    /// and FullDuplexCall, `x-grpc-test-echo-trailing-bin` as trailing
    /// metadata on UnaryCall (grpcio exposes no trailers of a duplex call).
    pub async fn custom_metadata(&self) -> Result<(), String> {
        let headers = || {
            let mut builder = MetadataBuilder::new();
            // Constant, valid keys and values: cannot fail.
            let _ = builder.add_str(ECHO_INITIAL_KEY, ECHO_INITIAL_VALUE);
            let _ = builder.add_bytes(ECHO_TRAILING_KEY, ECHO_TRAILING_VALUE);
            builder.build()
        };
        const UNARY: &str = "UnaryCall";
        let mut receiver = self
            .test
            .unary_call_async_opt(&large_request(), self.option().headers(headers()))
            .map_err(|e| failed(UNARY, &e))?;
        let initial = receiver.headers().await.map_err(|e| failed(UNARY, &e))?.clone();
        let response = receiver.message().await.map_err(|e| failed(UNARY, &e))?;
        let trailing = receiver.trailers().await.map_err(|e| failed(UNARY, &e))?.clone();
        check_payload(UNARY, &response.payload, LARGE_RESPONSE)?;
        check_metadata(
            &format!("{UNARY} initial metadata"),
            &initial,
            ECHO_INITIAL_KEY,
            ECHO_INITIAL_VALUE.as_bytes(),
        )?;
        check_metadata(&format!("{UNARY} trailing metadata"), &trailing, ECHO_TRAILING_KEY, ECHO_TRAILING_VALUE)?;

        const DUPLEX: &str = "FullDuplexCall";
        let (mut sink, mut receiver) =
            self.test.full_duplex_call_opt(self.option().headers(headers())).map_err(|e| failed(DUPLEX, &e))?;
        async {
            sink.send((ping(LARGE_RESPONSE, LARGE_REQUEST), WriteFlags::default()))
                .await
                .map_err(|e| failed(DUPLEX, &e))?;
            let initial = receiver.headers().await.map_err(|e| failed(DUPLEX, &e))?.clone();
            check_metadata(
                &format!("{DUPLEX} initial metadata"),
                &initial,
                ECHO_INITIAL_KEY,
                ECHO_INITIAL_VALUE.as_bytes(),
            )?;
            match receiver.try_next().await.map_err(|e| failed(DUPLEX, &e))? {
                Some(reply) => check_payload(DUPLEX, &reply.payload, LARGE_RESPONSE)?,
                None => return Err(format!("{DUPLEX}: the stream ended without a response")),
            }
            half_close(&mut sink).await.map_err(|e| failed(&format!("{DUPLEX} close"), &e))?;
            expect_end(DUPLEX, receiver.try_next().await)
        }
        .await
    }

    /// TestService/UnimplementedCall answers UNIMPLEMENTED.
    pub async fn unimplemented_method(&self) -> Result<(), String> {
        let result = unary(self.test.unimplemented_call_async_opt(&Empty::default(), self.option())).await;
        expect_status("TestService/UnimplementedCall", result, RpcStatusCode::UNIMPLEMENTED, None)
    }

    /// UnimplementedService/UnimplementedCall answers UNIMPLEMENTED.
    pub async fn unimplemented_service(&self) -> Result<(), String> {
        let result = unary(self.unimplemented.unimplemented_call_async_opt(&Empty::default(), self.option())).await;
        expect_status("UnimplementedService/UnimplementedCall", result, RpcStatusCode::UNIMPLEMENTED, None)
    }

    /// With `probe`, an uncompressed request marked `expect_compressed` must
    /// fail INVALID_ARGUMENT; then a compressed one marked so and an
    /// uncompressed one not marked both succeed.
    pub async fn client_compressed_unary(&self, probe: bool) -> Result<(), String> {
        let request =
            |expect_compressed| SimpleRequest { expect_compressed: flag(expect_compressed), ..large_request() };
        if probe {
            let result = unary(self.test.unary_call_async_opt(&request(true), self.option())).await;
            expect_status(
                "UnaryCall probe (uncompressed, expect_compressed)",
                result,
                RpcStatusCode::INVALID_ARGUMENT,
                None,
            )
            .map_err(|e| format!("{e}: the server does not check request compression"))?;
        }
        for (what, compressed) in [("UnaryCall (compressed)", true), ("UnaryCall (uncompressed)", false)] {
            let option = if compressed { self.option().headers(compression_headers()) } else { self.option() };
            let response = unary(self.test.unary_call_async_opt(&request(compressed), option))
                .await
                .map_err(|e| failed(what, &e))?;
            check_payload(what, &response.payload, LARGE_RESPONSE)?;
        }
        Ok(())
    }

    /// UnaryCall asking for a compressed, then an uncompressed response.
    pub async fn server_compressed_unary(&self) -> Result<(), String> {
        for (what, compressed) in
            [("UnaryCall (compressed response)", true), ("UnaryCall (uncompressed response)", false)]
        {
            let req = SimpleRequest { response_compressed: flag(compressed), ..large_request() };
            let response: SimpleResponse =
                unary(self.test.unary_call_async_opt(&req, self.option())).await.map_err(|e| failed(what, &e))?;
            check_payload(what, &response.payload, LARGE_RESPONSE)?;
        }
        Ok(())
    }

    /// With `probe`, an uncompressed request marked `expect_compressed` must
    /// fail INVALID_ARGUMENT; then one call with a compressed message marked
    /// so and an uncompressed one not marked sums 73,086 bytes.
    pub async fn client_compressed_streaming(&self, probe: bool) -> Result<(), String> {
        if probe {
            const WHAT: &str = "StreamingInputCall probe (uncompressed, expect_compressed)";
            let (mut sink, receiver) =
                self.test.streaming_input_call_opt(self.option()).map_err(|e| failed(WHAT, &e))?;
            let req = StreamingInputCallRequest {
                payload: Some(zeros(27_182)).into(),
                expect_compressed: flag(true),
                ..Default::default()
            };
            let _ = async {
                sink.send((req, WriteFlags::default())).await?;
                sink.close().await
            }
            .await;
            expect_status(WHAT, receiver.await, RpcStatusCode::INVALID_ARGUMENT, None)
                .map_err(|e| format!("{e}: the server does not check request compression"))?;
        }
        let option = self.option().headers(compression_headers());
        self.stream_in(
            "StreamingInputCall (compressed, then uncompressed)",
            &[(27_182, Some(true)), (45_904, Some(false))],
            option,
            73_086,
        )
        .await
    }

    /// StreamingOutputCall asking for a compressed 31,415-byte response, then
    /// an uncompressed 92,653-byte one.
    pub async fn server_compressed_streaming(&self) -> Result<(), String> {
        let req = StreamingOutputCallRequest {
            response_parameters: vec![
                ResponseParameters { compressed: flag(true), ..parameters(31_415) },
                ResponseParameters { compressed: flag(false), ..parameters(92_653) },
            ],
            ..Default::default()
        };
        self.stream_out("StreamingOutputCall (compressed, then uncompressed)", &req, &[31_415, 92_653]).await
    }

    /// 100 UnaryCalls on one channel all reach the same server.
    pub async fn pick_first_unary(&self) -> Result<(), String> {
        let req = SimpleRequest {
            response_size: 1,
            payload: Some(zeros(1)).into(),
            fill_server_id: true,
            ..Default::default()
        };
        let mut first: Option<String> = None;
        for i in 1..=100 {
            let what = format!("UnaryCall #{i}");
            let response =
                unary(self.test.unary_call_async_opt(&req, self.option())).await.map_err(|e| failed(&what, &e))?;
            if response.server_id.is_empty() {
                return Err(format!("{what}: empty server_id"));
            }
            match &first {
                None => first = Some(response.server_id),
                Some(id) if *id != response.server_id => {
                    return Err(format!("{what}: server_id {:?}, the first call got {id:?}", response.server_id))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Large unary calls in a loop, on this client's channel (rpc_soak) or
    /// on a new channel each time (channel_soak), within the soak bounds.
    pub async fn soak(&self, new_channel_each_time: bool) -> Result<(), String> {
        let soak = &self.soak;
        let start = Instant::now();
        let mut failures = Vec::new();
        for i in 1..=soak.iterations {
            let iteration_start = Instant::now();
            let left = soak.overall_timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(format!(
                    "the soak ran out of its {:?} after {} of {} iterations",
                    soak.overall_timeout,
                    i - 1,
                    soak.iterations
                ));
            }
            let stub = if new_channel_each_time {
                TestServiceClient::new(Self::channel_on(&self.target, true))
            } else {
                self.test.clone()
            };
            let option = CallOption::default().timeout(left);
            let outcome = unary(stub.unary_call_async_opt(&large_request(), option))
                .await
                .map_err(|e| failed("UnaryCall", &e))
                .and_then(|r| check_payload("UnaryCall", &r.payload, LARGE_RESPONSE));
            let latency = iteration_start.elapsed();
            match outcome {
                Err(why) => failures.push(format!("iteration {i}: {why}")),
                Ok(()) if latency > soak.max_latency => {
                    failures.push(format!("iteration {i}: took {latency:?}, over {:?}", soak.max_latency))
                }
                Ok(()) => {}
            }
            if failures.len() > soak.max_failures {
                return Err(format!(
                    "{} failed iterations, at most {} allowed; last: {}",
                    failures.len(),
                    soak.max_failures,
                    failures.last().map_or("", String::as_str)
                ));
            }
            let wait = soak.min_time_between_rpcs.saturating_sub(iteration_start.elapsed());
            if !wait.is_zero() && i < soak.iterations {
                Delay::new(wait).await;
            }
        }
        Ok(())
    }
}

/// A unary call made with `*_async_opt`, awaited.
async fn unary<T: Unpin>(call: grpcio::Result<ClientUnaryReceiver<T>>) -> grpcio::Result<T> {
    call?.await
}

/// Checks a stream ended OK with no further message.
fn expect_end<T>(what: &str, next: grpcio::Result<Option<T>>) -> Result<(), String> {
    match next {
        Ok(None) => Ok(()),
        Ok(Some(_)) => Err(format!("{what}: got a response, want the end of the stream")),
        Err(e) => Err(failed(what, &e)),
    }
}
