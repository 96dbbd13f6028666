//! TLS: a throwaway CA and server certificate made with the `openssl` CLI at
//! test time; a client trusting the CA gets through, a plaintext client and
//! a client trusting another CA do not.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::process::start_server_command;
use crate::common::{start_mtls_server, start_tls_server, Certs, SERVER_NAME};
use futures::executor::block_on;
use greet::client::interop::{InteropClient, SoakConfig, Target};
use greet::client::{self, Client, Connector};
use greet::tls::{ClientTls, ServerTls};
use grpcio::RpcStatusCode;

fn tls_channel(addr: &str, tls: ClientTls) -> grpcio::Channel {
    Connector::new(addr).expect("a host:port").tls(tls).channel()
}

fn code(result: grpcio::Result<String>) -> RpcStatusCode {
    match result {
        Err(grpcio::Error::RpcFailure(s)) => s.code(),
        other => panic!("want a failed call, got {other:?}"),
    }
}

#[test]
fn a_client_trusting_the_ca_calls_the_tls_server() {
    let certs = Certs::new();
    let server = start_tls_server(&certs);
    for name in [None, Some(SERVER_NAME)] {
        let channel = tls_channel(server.addr(), certs.client_tls(name));
        assert_eq!(block_on(Client::new(channel, Duration::from_secs(10)).say_hello()).unwrap(), "Hello");
    }
}

#[test]
fn a_plaintext_client_to_the_tls_port_fails_unavailable() {
    let certs = Certs::new();
    let server = start_tls_server(&certs);
    let client = Client::new(client::connect(server.addr()), Duration::from_secs(10));
    assert_eq!(code(block_on(client.say_hello())), RpcStatusCode::UNAVAILABLE);
}

#[test]
fn a_client_trusting_another_ca_fails_unavailable() {
    let (certs, other) = (Certs::new(), Certs::new());
    let server = start_tls_server(&certs);
    let channel = tls_channel(server.addr(), other.client_tls(None));
    assert_eq!(code(block_on(Client::new(channel, Duration::from_secs(10)).say_hello())), RpcStatusCode::UNAVAILABLE);
}

#[test]
fn a_client_expecting_another_server_name_fails_unavailable() {
    let certs = Certs::new();
    let server = start_tls_server(&certs);
    let channel = tls_channel(server.addr(), certs.client_tls(Some("not.greet.test")));
    assert_eq!(code(block_on(Client::new(channel, Duration::from_secs(10)).say_hello())), RpcStatusCode::UNAVAILABLE);
}

#[test]
fn interop_large_unary_passes_over_tls() {
    let certs = Certs::new();
    let server = start_tls_server(&certs);
    let target = Target { addr: server.addr().to_string(), tls: Some(certs.client_tls(Some(SERVER_NAME))) };
    block_on(InteropClient::new(target, SoakConfig::default()).run("large_unary")).unwrap();
}

#[test]
fn files_that_are_not_pem_are_refused_with_the_file_name() {
    let certs = Certs::new();
    let bogus = certs.path("bogus.pem");
    std::fs::write(&bogus, "not a certificate").unwrap();
    let key = certs.path("server.key");
    let error = ServerTls::from_files(&bogus, &key).err().unwrap();
    assert_eq!(error, format!("TLS certificate {} is not PEM (CERTIFICATE block expected)", bogus.display()));
    let missing = Path::new("/nonexistent/ca.pem");
    let error = ClientTls::from_file(missing, None).unwrap_err();
    assert_eq!(error, "cannot read CA certificate /nonexistent/ca.pem: No such file or directory (os error 2)");
}

#[test]
fn client_binary_with_tls_ca_calls_the_tls_server() {
    let certs = Certs::new();
    let server = start_tls_server(&certs);
    let out = Command::new(env!("CARGO_BIN_EXE_client"))
        .args(["--addr", server.addr(), "--tls-server-name", SERVER_NAME, "--tls-ca"])
        .arg(certs.path("ca.pem"))
        .arg("unary")
        .output()
        .unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "Hello\n");
}

#[test]
fn server_binary_with_a_key_that_is_not_pem_prints_one_error_line_and_fails() {
    let certs = Certs::new();
    let out = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--addr", "127.0.0.1:0", "--tls-cert"])
        .arg(certs.path("server.pem"))
        .arg("--tls-key")
        .arg(certs.path("ca.srl"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        format!("error: TLS key {} is not PEM (PRIVATE KEY block expected)\n", certs.path("ca.srl").display())
    );
}

#[test]
fn mutual_tls_serves_all_four_patterns_to_a_client_with_a_certificate() {
    let certs = Certs::new();
    let server = start_mtls_server(&certs);
    let channel = tls_channel(server.addr(), certs.client_tls_with_identity());
    let client = Client::new(channel, Duration::from_secs(10));
    let names: Vec<String> = ["Akhil", "Alice"].map(String::from).to_vec();
    let greetings: Vec<String> = names.iter().map(|n| format!("Hello {n}")).collect();
    block_on(async {
        assert_eq!(client.say_hello().await.unwrap(), "Hello");
        let mut got = Vec::new();
        client.server_stream(&names, |m| got.push(m)).await.unwrap();
        assert_eq!(got, greetings);
        assert_eq!(client.client_stream(&names, Duration::ZERO).await.unwrap(), greetings);
        let mut got = Vec::new();
        client.bidi(&names, Duration::ZERO, |m| got.push(m)).await.unwrap();
        assert_eq!(got, greetings);
    });
}

#[test]
fn mutual_tls_refuses_a_client_without_a_certificate() {
    let certs = Certs::new();
    let server = start_mtls_server(&certs);
    // Without the server demanding one, the same client gets through.
    let open = start_tls_server(&certs);
    let channel = tls_channel(open.addr(), certs.client_tls(None));
    assert_eq!(block_on(Client::new(channel, Duration::from_secs(10)).say_hello()).unwrap(), "Hello");

    let channel = tls_channel(server.addr(), certs.client_tls(None));
    assert_eq!(code(block_on(Client::new(channel, Duration::from_secs(10)).say_hello())), RpcStatusCode::UNAVAILABLE);
}

#[test]
fn mutual_tls_refuses_a_client_certificate_from_another_ca() {
    let (certs, other) = (Certs::new(), Certs::new());
    let server = start_mtls_server(&certs);
    // Trusts the right server CA, but its own certificate is signed by another CA.
    let stranger = certs.client_tls(None).with_identity(&other.path("client.pem"), &other.path("client.key")).unwrap();
    let channel = tls_channel(server.addr(), stranger);
    assert_eq!(code(block_on(Client::new(channel, Duration::from_secs(10)).say_hello())), RpcStatusCode::UNAVAILABLE);
    // A client with the right certificate is still served.
    let channel = tls_channel(server.addr(), certs.client_tls_with_identity());
    assert_eq!(block_on(Client::new(channel, Duration::from_secs(10)).say_hello()).unwrap(), "Hello");
}

#[test]
fn a_plaintext_client_on_the_mutual_tls_port_fails_and_the_server_keeps_serving() {
    let certs = Certs::new();
    let server = start_mtls_server(&certs);
    let plaintext = Client::new(client::connect(server.addr()), Duration::from_secs(10));
    assert_eq!(code(block_on(plaintext.say_hello())), RpcStatusCode::UNAVAILABLE);
    let channel = tls_channel(server.addr(), certs.client_tls_with_identity());
    assert_eq!(block_on(Client::new(channel, Duration::from_secs(10)).say_hello()).unwrap(), "Hello");
}

#[test]
fn client_and_server_binaries_speak_mutual_tls() {
    let certs = Certs::new();
    let mut command = Command::new(env!("CARGO_BIN_EXE_server"));
    command.args(["--addr", "127.0.0.1:0", "--tls-cert"]).arg(certs.path("server.pem"));
    command.arg("--tls-key").arg(certs.path("server.key")).arg("--tls-client-ca").arg(certs.path("ca.pem"));
    let (_server, addr) = start_server_command(command);
    let client = |identity: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_client"));
        command.args(["--addr", &addr, "--timeout", "10s", "--tls-ca"]).arg(certs.path("ca.pem"));
        if identity {
            command.arg("--tls-cert").arg(certs.path("client.pem")).arg("--tls-key").arg(certs.path("client.key"));
        }
        command.arg("unary").output().unwrap()
    };
    let out = client(true);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "Hello\n");
    let out = client(false);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("error: UNAVAILABLE: ") && stderr.lines().count() == 1, "stderr: {stderr}");
}
