//! Property-based tests (proptest): every request message's decoder takes
//! any bytes without panicking and round-trips what it encodes; the limits
//! checks accept exactly what they document; and a bounded run of random
//! bytes down the raw call path of a live server gets a status or an answer
//! each time, never a dead server.
//!
//! (cargo-fuzz would be the next step, but it needs a nightly toolchain,
//! which this project's machines cannot install.)

use std::time::Duration;

use crate::common::raw;
use crate::common::*;
use futures::executor::block_on;
use greet::limits::{self, MAX_NAMES, MAX_NAME_BYTES};
use greet::proto::{empty, greet as greet_pb, health, helloworld, messages, route_guide};
use grpcio::RpcStatusCode;
use proptest::collection::vec;
use proptest::prelude::*;
use protobuf::Message;

/// Parses `bytes` as `M`; the outcome does not matter, only that there is one.
fn decodes_or_fails<M: Message>(bytes: &[u8]) {
    let _ = M::parse_from_bytes(bytes);
}

/// Every request message of every service the server can host.
fn decode_all(bytes: &[u8]) {
    decodes_or_fails::<greet_pb::NoParam>(bytes);
    decodes_or_fails::<greet_pb::HelloRequest>(bytes);
    decodes_or_fails::<greet_pb::NamesList>(bytes);
    decodes_or_fails::<helloworld::HelloRequest>(bytes);
    decodes_or_fails::<route_guide::Point>(bytes);
    decodes_or_fails::<route_guide::Rectangle>(bytes);
    decodes_or_fails::<route_guide::RouteNote>(bytes);
    decodes_or_fails::<health::HealthCheckRequest>(bytes);
    decodes_or_fails::<empty::Empty>(bytes);
    decodes_or_fails::<messages::SimpleRequest>(bytes);
    decodes_or_fails::<messages::StreamingInputCallRequest>(bytes);
    decodes_or_fails::<messages::StreamingOutputCallRequest>(bytes);
}

/// Bytes that look like protobuf more often than uniform noise does: a
/// sequence of (tag, wire type, payload) pieces, some well formed, some not.
fn wire_like() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        // A field key with any number and wire type, then a varint.
        (1u8..16, 0u8..8, any::<u8>()).prop_map(|(field, wire, v)| vec![(field << 3) | wire, v & 0x7f]),
        // A length-delimited field with a length that may lie.
        (1u8..16, 0u8..20, vec(any::<u8>(), 0..12)).prop_map(|(field, len, body)| {
            let mut out = vec![(field << 3) | 2, len];
            out.extend(body);
            out
        }),
        // Group starts and ends.
        (1u8..16, prop::bool::ANY).prop_map(|(field, start)| vec![(field << 3) | if start { 3 } else { 4 }]),
        vec(any::<u8>(), 0..8),
    ];
    vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_decode_or_fail_without_panicking(bytes in vec(any::<u8>(), 0..256)) {
        decode_all(&bytes);
    }

    #[test]
    fn wire_like_bytes_decode_or_fail_without_panicking(bytes in wire_like()) {
        decode_all(&bytes);
    }

    #[test]
    fn nested_groups_of_any_depth_fail_without_panicking(depth in 0usize..200_000, field in 1u8..16) {
        decode_all(&vec![(field << 3) | 3; depth]);
    }

    #[test]
    fn names_lists_round_trip(names in vec(".{0,40}", 0..20)) {
        let list = greet_pb::NamesList { names, ..Default::default() };
        let bytes = list.write_to_bytes().unwrap();
        prop_assert_eq!(greet_pb::NamesList::parse_from_bytes(&bytes).unwrap(), list);
    }

    #[test]
    fn route_notes_round_trip(latitude in any::<i32>(), longitude in any::<i32>(), message in ".{0,40}") {
        let location = route_guide::Point { latitude, longitude, ..Default::default() };
        let note = route_guide::RouteNote { location: Some(location).into(), message, ..Default::default() };
        let bytes = note.write_to_bytes().unwrap();
        prop_assert_eq!(route_guide::RouteNote::parse_from_bytes(&bytes).unwrap(), note);
    }

    #[test]
    fn a_name_passes_exactly_when_it_is_within_the_byte_limit(len in 0usize..2_100, index in 0usize..1_000) {
        let name = "é".repeat(len / 2) + &"a".repeat(len % 2);
        match limits::check_name(&name, index, MAX_NAME_BYTES) {
            Ok(()) => prop_assert!(name.len() <= MAX_NAME_BYTES),
            Err(status) => {
                prop_assert!(name.len() > MAX_NAME_BYTES);
                prop_assert_eq!(status.code(), RpcStatusCode::INVALID_ARGUMENT);
                prop_assert_eq!(
                    status.message(),
                    format!("name #{} is {} bytes long; names are limited to {MAX_NAME_BYTES} bytes", index + 1, name.len())
                );
            }
        }
    }

    #[test]
    fn a_count_passes_exactly_when_it_is_within_the_limit(count in 0usize..2 * MAX_NAMES) {
        prop_assert_eq!(limits::check_count(count).is_ok(), count <= MAX_NAMES);
    }

    #[test]
    fn a_list_fails_on_its_first_long_name(lens in vec(0usize..1_100, 0..30)) {
        let names: Vec<String> = lens.iter().map(|&n| "x".repeat(n)).collect();
        let first_bad = lens.iter().position(|&n| n > MAX_NAME_BYTES);
        match (limits::check_names(&names, MAX_NAME_BYTES), first_bad) {
            (Ok(()), None) => {}
            (Err(status), Some(i)) => {
                let prefix = format!("name #{} ", i + 1);
                prop_assert!(status.message().starts_with(&prefix), "{}", status.message());
            }
            (outcome, first_bad) => prop_assert!(false, "{outcome:?} with the first long name at {first_bad:?}"),
        }
    }
}

#[test]
fn random_bytes_down_the_raw_call_path_get_an_answer_or_a_status() {
    let server = start_server(Duration::ZERO);
    let client = grpcio::Client::new(greet::client::connect(server.addr()));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 300, ..ProptestConfig::default() });
    // Every method but health Watch, which a valid request holds open until its deadline.
    let methods = &raw::METHODS[..raw::METHODS.len() - 1];
    let strategy = (0..methods.len(), vec(prop_oneof![vec(any::<u8>(), 0..64), wire_like()], 1..4));
    runner
        .run(&strategy, |(method, messages)| {
            let (name, ty) = methods[method];
            let code = raw::call(&client, name, ty, messages).map_or_else(|(code, _)| code, |_| RpcStatusCode::OK);
            prop_assert!(
                matches!(
                    code,
                    RpcStatusCode::OK
                        | RpcStatusCode::INTERNAL
                        | RpcStatusCode::INVALID_ARGUMENT
                        | RpcStatusCode::NOT_FOUND
                ),
                "{}: {code:?}",
                name
            );
            Ok(())
        })
        .unwrap();
    assert_eq!(block_on(client_for(&server).say_hello()).unwrap(), "Hello");
}
