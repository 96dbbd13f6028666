//! Every interop test case of our client against our interop server, in
//! process. Three cases cannot pass against a grpcio server, and pin down
//! why: grpcio sends no custom trailing metadata and cannot see whether a
//! request was compressed (see `greet::services::interop`).

use greet::client::interop::{InteropClient, SoakConfig, Target, TEST_CASES};
use greet::server::{self, RunningServer, ServerConfig};

fn start_interop_server() -> RunningServer {
    server::start(&ServerConfig {
        addr: "127.0.0.1:0".to_string(),
        completion_queues: 2,
        interop: true,
        ..Default::default()
    })
    .expect("an interop server starts on a free loopback port")
}

fn run(case: &str) -> Result<(), String> {
    let server = start_interop_server();
    let client = InteropClient::new(Target { addr: server.addr().to_string(), tls: None }, SoakConfig::default());
    futures::executor::block_on(client.run(case))
}

/// One test per case that must pass, and the list of them.
macro_rules! passes {
    ($($case:ident),* $(,)?) => {
        const PASSING: &[&str] = &[$(stringify!($case)),*];
        $(
            #[test]
            fn $case() {
                if let Err(why) = run(stringify!($case)) {
                    panic!("{}: {why}", stringify!($case));
                }
            }
        )*
    };
}

/// The cases a grpcio server cannot pass, each pinned by its own test below.
const FAILING_AGAINST_GRPCIO: &[&str] = &["custom_metadata", "client_compressed_unary", "client_compressed_streaming"];

passes!(
    empty_unary,
    large_unary,
    client_streaming,
    server_streaming,
    ping_pong,
    empty_stream,
    timeout_on_sleeping_server,
    cancel_after_begin,
    cancel_after_first_response,
    status_code_and_message,
    special_status_message,
    unimplemented_method,
    unimplemented_service,
    client_compressed_unary_noprobe,
    server_compressed_unary,
    client_compressed_streaming_noprobe,
    server_compressed_streaming,
    pick_first_unary,
    rpc_soak,
    channel_soak,
);

#[test]
fn custom_metadata_echoes_initial_metadata_but_no_trailer_from_a_grpcio_server() {
    assert_eq!(
        run("custom_metadata"),
        Err("UnaryCall trailing metadata: no x-grpc-test-echo-trailing-bin received, want [ab, ab, ab]".to_string())
    );
}

#[test]
fn client_compressed_unary_probe_is_not_refused_by_a_grpcio_server() {
    assert_eq!(
        run("client_compressed_unary"),
        Err("UnaryCall probe (uncompressed, expect_compressed): got OK, want INVALID_ARGUMENT: \
             the server does not check request compression"
            .to_string())
    );
}

#[test]
fn client_compressed_streaming_probe_is_not_refused_by_a_grpcio_server() {
    assert_eq!(
        run("client_compressed_streaming"),
        Err("StreamingInputCall probe (uncompressed, expect_compressed): got OK, want INVALID_ARGUMENT: \
             the server does not check request compression"
            .to_string())
    );
}

#[test]
fn every_known_case_is_covered_here() {
    let mut covered: Vec<&str> = PASSING.iter().chain(FAILING_AGAINST_GRPCIO).copied().collect();
    let mut known = TEST_CASES.to_vec();
    covered.sort_unstable();
    known.sort_unstable();
    assert_eq!(covered, known);
}

#[test]
fn an_unknown_case_is_refused_with_the_known_ones() {
    let why = run("no_such_case").unwrap_err();
    assert!(why.starts_with("unknown test case \"no_such_case\"; known: empty_unary, large_unary,"), "{why}");
}

#[test]
fn a_status_asked_for_in_a_server_stream_ends_it() {
    use futures::executor::block_on;
    use futures::TryStreamExt;
    use greet::proto::messages::{EchoStatus, StreamingOutputCallRequest};
    use greet::proto::test_grpc::TestServiceClient;

    let server = start_interop_server();
    let stub = TestServiceClient::new(greet::client::connect(server.addr()));
    let req = StreamingOutputCallRequest {
        response_status: Some(EchoStatus { code: 5, message: "gone".to_string(), ..Default::default() }).into(),
        ..Default::default()
    };
    let mut stream = stub.streaming_output_call(&req).unwrap();
    match block_on(stream.try_next()) {
        Err(grpcio::Error::RpcFailure(s)) => {
            assert_eq!((s.code(), s.message()), (grpcio::RpcStatusCode::NOT_FOUND, "gone"));
        }
        other => panic!("want NOT_FOUND, got {other:?}"),
    }
}

#[test]
fn a_negative_response_size_is_invalid_argument() {
    use greet::proto::messages::SimpleRequest;
    use greet::proto::test_grpc::TestServiceClient;

    let server = start_interop_server();
    let stub = TestServiceClient::new(greet::client::connect(server.addr()));
    let req = SimpleRequest { response_size: -1, ..Default::default() };
    match stub.unary_call(&req) {
        Err(grpcio::Error::RpcFailure(s)) => {
            assert_eq!(
                (s.code(), s.message()),
                (grpcio::RpcStatusCode::INVALID_ARGUMENT, "payload size -1 is negative")
            );
        }
        other => panic!("want INVALID_ARGUMENT, got {other:?}"),
    }
}

#[test]
fn half_duplex_answers_after_the_client_closes() {
    use futures::executor::block_on;
    use futures::{SinkExt, TryStreamExt};
    use greet::proto::messages::{ResponseParameters, StreamingOutputCallRequest};
    use greet::proto::test_grpc::TestServiceClient;
    use grpcio::WriteFlags;

    let server = start_interop_server();
    let stub = TestServiceClient::new(greet::client::connect(server.addr()));
    let (mut sink, receiver) = stub.half_duplex_call().unwrap();
    let sizes: Vec<usize> = block_on(async {
        for size in [3, 5] {
            let req = StreamingOutputCallRequest {
                response_parameters: vec![ResponseParameters { size, ..Default::default() }],
                ..Default::default()
            };
            sink.send((req, WriteFlags::default())).await.unwrap();
        }
        greet::client::half_close(&mut sink).await.unwrap();
        receiver.map_ok(|r| r.payload.body.len()).try_collect().await.unwrap()
    });
    assert_eq!(sizes, [3, 5]);
}
