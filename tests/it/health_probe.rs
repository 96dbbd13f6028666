//! The health service as grpc-health-probe (pinned, built by
//! scripts/gotools.py) sees it: SERVING while up, NOT_SERVING from the first
//! SIGTERM on while the server drains, for the whole server and per service.

use std::process::Output;
use std::time::Duration;

use crate::common::process::ServerProcess;
use crate::common::*;
use greet::proto::health::health_check_response::ServingStatus;

/// grpc-health-probe's exit statuses: the health call failed, and "the
/// service answered, but not SERVING".
const EXIT_RPC_FAILURE: i32 = 3;
const EXIT_UNHEALTHY: i32 = 4;

fn probe(addr: &str, extra: &[&str]) -> Output {
    let addr = format!("-addr={addr}");
    let args = [&[addr.as_str(), "-connect-timeout=10s", "-rpc-timeout=10s"][..], extra].concat();
    run_tool("grpc-health-probe", &args)
}

/// What the probe printed (it writes its verdict to stderr).
fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

fn assert_serving(out: &Output) {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(out));
    assert_eq!(stderr(out), "status: SERVING");
}

fn assert_not_serving(out: &Output) {
    assert_eq!(out.status.code(), Some(EXIT_UNHEALTHY), "stderr: {}", stderr(out));
    assert_eq!(stderr(out), "service unhealthy (responded with \"NOT_SERVING\")");
}

/// The services the server binary hosts, as health checking names them.
const SERVICES: [&str; 3] = ["greet_service.GreetService", "helloworld.Greeter", "routeguide.RouteGuide"];

#[test]
fn the_probe_reports_serving_for_the_server_and_each_service() {
    let server = start_server(Duration::ZERO);
    assert_serving(&probe(server.addr(), &[]));
    for service in SERVICES {
        assert_serving(&probe(server.addr(), &[&format!("-service={service}")]));
    }
}

#[test]
fn the_probe_reports_not_serving_from_the_first_signal_while_the_server_drains() {
    // --drain-delay keeps calls served (the probe's too) for 30 s after SIGTERM.
    let mut server = ServerProcess::start("probed", &["--drain-delay", "30s"]);
    assert_serving(&probe(&server.addr, &[]));
    server.process.signal("TERM");
    server.process.wait_for_line("draining: NOT_SERVING", Duration::from_secs(10));
    assert_not_serving(&probe(&server.addr, &[]));
    for service in SERVICES {
        assert_not_serving(&probe(&server.addr, &[&format!("-service={service}")]));
    }
}

#[test]
fn the_probe_reports_a_service_marked_not_serving_and_the_others_serving() {
    let server = start_server(Duration::ZERO);
    server.health().set_status("greet_service.GreetService", ServingStatus::NOT_SERVING);
    assert_not_serving(&probe(server.addr(), &["-service=greet_service.GreetService"]));
    assert_serving(&probe(server.addr(), &["-service=helloworld.Greeter"]));
    assert_serving(&probe(server.addr(), &[]));
}

#[test]
fn the_probe_fails_for_a_service_the_server_does_not_host() {
    let server = start_server(Duration::ZERO);
    let out = probe(server.addr(), &["-service=no.Such"]);
    assert_eq!(out.status.code(), Some(EXIT_RPC_FAILURE));
    assert_eq!(stderr(&out), "error: health rpc failed: rpc error: code = NotFound desc = unknown service \"no.Such\"");
}

#[test]
fn the_probe_checks_a_tls_server() {
    let certs = Certs::new();
    let server = start_tls_server(&certs);
    let ca = format!("-tls-ca-cert={}", certs.path("ca.pem").display());
    let name = format!("-tls-server-name={SERVER_NAME}");
    assert_serving(&probe(server.addr(), &["-tls", &ca, &name]));
}
