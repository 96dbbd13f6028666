//! `routeguide.RouteGuide` answers as grpc-go's route_guide server does.

use futures::executor::block_on;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use greet::client;
use greet::client::route_guide::{self as rg, Client};
use greet::server::{self, RunningServer, ServerConfig, StartError};
use greet::services::route_guide::{distance, point, MAX_NOTES_PER_LOCATION};

const SERVER: &str = env!("CARGO_BIN_EXE_server");
const CLIENT: &str = env!("CARGO_BIN_EXE_client");

/// grpc-go's route_guide_db.json entries the built-in database starts with.
const PATRIOTS_PATH: (i32, i32) = (407_838_351, -746_143_763);
const WHIPPANY: (i32, i32) = (408_122_808, -743_999_179);

fn start(route_db: Option<PathBuf>) -> Result<RunningServer, StartError> {
    server::start(&ServerConfig {
        addr: "127.0.0.1:0".to_string(),
        completion_queues: 2,
        route_db,
        ..Default::default()
    })
}

fn client_for(server: &RunningServer) -> Client {
    Client::new(client::connect(server.addr()), Duration::from_secs(30))
}

/// A file in the system temp dir, unique to this test process.
fn temp_file(name: &str, contents: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("greet-route-guide-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn get_feature_returns_the_named_feature_at_a_known_point() {
    let server = start(None).unwrap();
    let feature = block_on(client_for(&server).get_feature(&point(409_146_138, -746_188_906))).unwrap();
    assert_eq!(feature.name, "Berkshire Valley Management Area Trail, Jefferson, NJ, USA");
    assert_eq!(feature.location.as_ref(), Some(&point(409_146_138, -746_188_906)));
}

#[test]
fn get_feature_returns_an_unnamed_feature_where_nothing_is_known() {
    let server = start(None).unwrap();
    let feature = block_on(client_for(&server).get_feature(&point(0, 0))).unwrap();
    assert_eq!(feature.name, "");
    assert_eq!(feature.location.as_ref(), Some(&point(0, 0)));
}

#[test]
fn list_features_streams_only_the_features_inside_the_rectangle_whichever_corner_is_lo() {
    let server = start(None).unwrap();
    let client = client_for(&server);
    let (a, b) = (point(408_000_000, -745_000_000), point(414_000_000, -743_000_000));
    for rect in [rg::rectangle(a.clone(), b.clone()), rg::rectangle(b, a)] {
        let mut names = Vec::new();
        block_on(client.list_features(&rect, |f| names.push(f.name))).unwrap();
        assert_eq!(names, ["101 New Jersey 10, Whippany, NJ 07981, USA"]);
    }
}

#[test]
fn list_features_includes_the_rectangle_edges() {
    let server = start(None).unwrap();
    let edge = point(WHIPPANY.0, WHIPPANY.1);
    let mut found = Vec::new();
    block_on(client_for(&server).list_features(&rg::rectangle(edge.clone(), edge), |f| found.push(f.name))).unwrap();
    assert_eq!(found, ["101 New Jersey 10, Whippany, NJ 07981, USA"]);
}

#[test]
fn haversine_distance_matches_grpc_go_for_known_points() {
    // Values computed with grpc-go's calcDistance formula.
    assert_eq!(distance(&point(PATRIOTS_PATH.0, PATRIOTS_PATH.1), &point(WHIPPANY.0, WHIPPANY.1)), 18_327);
    assert_eq!(distance(&point(0, 0), &point(0, 10_000_000)), 111_194);
    assert_eq!(distance(&point(1, 2), &point(1, 2)), 0);
}

#[test]
fn record_route_counts_points_known_features_and_metres() {
    let server = start(None).unwrap();
    let route = [
        point(PATRIOTS_PATH.0, PATRIOTS_PATH.1),
        point(WHIPPANY.0, WHIPPANY.1),
        point(PATRIOTS_PATH.0, PATRIOTS_PATH.1),
        point(0, 0),
    ];
    let summary = block_on(client_for(&server).record_route(&route)).unwrap();
    assert_eq!(summary.point_count, 4);
    assert_eq!(summary.feature_count, 3);
    let back_to_origin = distance(&route[2], &route[3]);
    assert_eq!(summary.distance, 18_327 * 2 + back_to_origin);
    assert_eq!(summary.elapsed_time, 0);
}

#[test]
fn record_route_with_no_points_is_all_zeros() {
    let server = start(None).unwrap();
    let summary = block_on(client_for(&server).record_route(&[])).unwrap();
    assert_eq!((summary.point_count, summary.feature_count, summary.distance), (0, 0, 0));
}

#[test]
fn route_chat_sends_back_every_earlier_note_at_the_same_location() {
    let server = start(None).unwrap();
    let mut got = Vec::new();
    block_on(client_for(&server).route_chat(&rg::demo_notes(), |n| got.push(n.message))).unwrap();
    assert_eq!(
        got,
        [
            "First message",
            "Second message",
            "Third message",
            "First message",
            "Fourth message",
            "Second message",
            "Fifth message",
            "Third message",
            "Sixth message",
        ]
    );
}

#[test]
fn route_chat_notes_outlive_the_call_that_sent_them() {
    let server = start(None).unwrap();
    let client = client_for(&server);
    block_on(client.route_chat(&[rg::note(5, 5, "earlier")], |_| {})).unwrap();
    let mut got = Vec::new();
    block_on(client.route_chat(&[rg::note(5, 5, "later")], |n| got.push(n.message))).unwrap();
    assert_eq!(got, ["earlier", "later"]);
}

#[test]
fn a_route_db_file_in_grpc_go_format_replaces_the_built_in_features() {
    let db = temp_file(
        "db.json",
        r#"[{"location": {"latitude": 10, "longitude": 20}, "name": "Here"}, {"location": {"latitude": 30, "longitude": 40}}]"#,
    );
    let server = start(Some(db.clone())).unwrap();
    let client = client_for(&server);
    assert_eq!(block_on(client.get_feature(&point(10, 20))).unwrap().name, "Here");
    assert_eq!(block_on(client.get_feature(&point(409_146_138, -746_188_906))).unwrap().name, "");
    let mut count = 0;
    block_on(client.list_features(&rg::rectangle(point(0, 0), point(100, 100)), |_| count += 1)).unwrap();
    assert_eq!(count, 2);
    std::fs::remove_file(db).unwrap();
}

#[test]
fn a_route_db_that_is_not_a_feature_list_stops_the_start_with_the_reason() {
    let db = temp_file("bad.json", r#"{"location": {}}"#);
    let error = start(Some(db.clone())).err().expect("a bad database is refused");
    assert_eq!(error.to_string(), format!("route database {}: expected a JSON array of features", db.display()));
    std::fs::remove_file(db).unwrap();
}

#[test]
fn server_binary_with_a_missing_route_db_prints_one_error_line_and_fails() {
    let out = Command::new(SERVER)
        .args(["--addr", "127.0.0.1:0", "--route-db", "/nonexistent/route_guide_db.json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr,
        "error: cannot read route database /nonexistent/route_guide_db.json: No such file or directory (os error 2)\n"
    );
}

#[test]
fn client_route_guide_prints_one_line_per_message_like_grpc_go() {
    let server = start(None).unwrap();
    let out = Command::new(CLIENT).args(["--addr", server.addr(), "route-guide"]).output().unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    // 2 GetFeature + 6 features in the rectangle + 1 summary + 9 notes.
    assert_eq!(lines.len(), 18, "{stdout}");
    assert_eq!(
        lines[0],
        "Feature: name: \"Berkshire Valley Management Area Trail, Jefferson, NJ, USA\", point:(409146138, -746188906)"
    );
    assert_eq!(lines[1], "Feature: name: \"\", point:(0, 0)");
    assert!(lines[8].starts_with("Route summary: point_count:10 feature_count:0 distance:"), "{}", lines[8]);
    assert_eq!(lines[9], "Got message First message at point(0, 1)");
    assert_eq!(lines[17], "Got message Sixth message at point(0, 3)");
}

#[test]
fn route_chat_keeps_a_bounded_number_of_notes_at_one_location_and_other_locations_stay_answered() {
    let server = start(None).unwrap();
    let flooder = client_for(&server);
    // One peer fills a location to its cap on its own thread, reading every
    // answer (1 + 2 + ... + cap notes), while another peer chats elsewhere.
    let flood = std::thread::spawn(move || {
        let notes: Vec<_> = (0..MAX_NOTES_PER_LOCATION).map(|i| rg::note(7, 7, &format!("note {i}"))).collect();
        let mut answered = 0;
        block_on(flooder.route_chat(&notes, |_| answered += 1)).map(|()| answered)
    });
    let other = Client::new(client::connect(server.addr()), Duration::from_secs(5));
    for i in 0..20 {
        let mut got = Vec::new();
        block_on(other.route_chat(&[rg::note(8, i, "elsewhere")], |n| got.push(n.message))).unwrap();
        assert_eq!(got, ["elsewhere"]);
    }
    let cap = MAX_NOTES_PER_LOCATION;
    assert_eq!(flood.join().unwrap().unwrap(), cap * (cap + 1) / 2);

    let err = block_on(other.route_chat(&[rg::note(7, 7, "one too many")], |_| {})).unwrap_err();
    let status = match err {
        grpcio::Error::RpcFailure(status) => status,
        other => panic!("expected a status, got {other:?}"),
    };
    assert_eq!(
        (status.code(), status.message()),
        (
            grpcio::RpcStatusCode::RESOURCE_EXHAUSTED,
            format!("location (7, 7) already has {cap} route notes; no more are accepted there").as_str()
        )
    );
    // The location keeps the notes it had; another location still takes more.
    let mut got = Vec::new();
    block_on(other.route_chat(&[rg::note(8, 0, "again")], |n| got.push(n.message))).unwrap();
    assert_eq!(got, ["elsewhere", "again"]);
}
