//! grpc.health.v1.Health: Check, Watch, and what shutdown does to both.

use std::time::Duration;

use crate::common::*;
use futures::executor::block_on;
use futures::prelude::*;
use greet::proto::health::health_check_response::ServingStatus;
use greet::proto::health::HealthCheckRequest;
use greet::proto::health_grpc::HealthClient;
use greet::server::Shutdown;
use grpcio::{CallOption, RpcStatusCode};

fn request(service: &str) -> HealthCheckRequest {
    HealthCheckRequest { service: service.to_string(), ..Default::default() }
}

fn opt() -> CallOption {
    CallOption::default().timeout(Duration::from_secs(10))
}

#[test]
fn check_reports_serving_for_the_server_and_its_services() {
    let server = start_server(Duration::ZERO);
    let client = HealthClient::new(greet::client::connect(server.addr()));
    for service in ["", "greet_service.GreetService", "helloworld.Greeter"] {
        let resp = client.check_opt(&request(service), opt()).unwrap();
        assert_eq!(resp.status.enum_value(), Ok(ServingStatus::SERVING), "service {service:?}");
    }
}

#[test]
fn check_of_an_unknown_service_gets_not_found() {
    let server = start_server(Duration::ZERO);
    let client = HealthClient::new(greet::client::connect(server.addr()));
    let (code, message) = code_of(client.check_opt(&request("no.Such"), opt()).unwrap_err());
    assert_eq!(code, RpcStatusCode::NOT_FOUND);
    assert_eq!(message, "unknown service \"no.Such\"");
}

#[test]
fn watch_sends_the_status_then_each_change_and_ends_on_shutdown() {
    let server = start_server(Duration::ZERO);
    let client = HealthClient::new(greet::client::connect(server.addr()));
    let mut watch = client.watch_opt(&request("helloworld.Greeter"), opt()).unwrap();
    let next = |w: &mut grpcio::ClientSStreamReceiver<_>| block_on(w.try_next()).unwrap();
    let first: Option<greet::proto::health::HealthCheckResponse> = next(&mut watch);
    assert_eq!(first.unwrap().status.enum_value(), Ok(ServingStatus::SERVING));

    server.health().set_status("helloworld.Greeter", ServingStatus::NOT_SERVING);
    assert_eq!(next(&mut watch).unwrap().status.enum_value(), Ok(ServingStatus::NOT_SERVING));
    server.health().set_status("helloworld.Greeter", ServingStatus::SERVING);
    assert_eq!(next(&mut watch).unwrap().status.enum_value(), Ok(ServingStatus::SERVING));

    // An open Watch must not hold a graceful shutdown until its grace runs out.
    let outcome = std::thread::spawn(move || server.shutdown(Duration::from_secs(20)));
    assert_eq!(next(&mut watch).unwrap().status.enum_value(), Ok(ServingStatus::NOT_SERVING));
    assert!(next(&mut watch).is_none(), "the watch ends after NOT_SERVING");
    assert_eq!(outcome.join().unwrap(), Shutdown::Drained);
}

#[test]
fn watch_of_an_unknown_service_reports_service_unknown() {
    let server = start_server(Duration::ZERO);
    let client = HealthClient::new(greet::client::connect(server.addr()));
    let mut watch = client.watch_opt(&request("no.Such"), opt()).unwrap();
    let first = block_on(watch.try_next()).unwrap().unwrap();
    assert_eq!(first.status.enum_value(), Ok(ServingStatus::SERVICE_UNKNOWN));
}
