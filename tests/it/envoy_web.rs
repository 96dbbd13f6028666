//! Browsers through Envoy (deploy/envoy/envoy.yaml): gRPC-Web calls over
//! HTTP/1.1 reach the chat as gRPC, CORS preflights are answered for the
//! origins given with `--cors-origin` only, and with `--web-root` Envoy
//! serves the page itself. Spoken here as a browser's fetch would, in raw
//! HTTP/1.1, so that nothing but Envoy translates.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::chat::{start_chat_server, TempDir};
use crate::common::envoy::Envoy;
use greet::chat::ChatConfig;
use greet::proto::chat::{PostRequest, PostResponse};
use protobuf::Message as _;

const ORIGIN: &str = "http://localhost:5173";

/// One HTTP/1.1 exchange on a fresh connection: the status, the headers
/// (names lower-cased) and the body, de-chunked.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

fn exchange(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).expect("Envoy's listener accepts");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("Envoy answers and closes");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a whole header block");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked")) {
        body = dechunk(&body);
    }
    Answer { status, headers, body }
}

fn dechunk(mut chunked: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let end = chunked.windows(2).position(|w| w == b"\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(String::from_utf8_lossy(&chunked[..end]).trim(), 16).expect("a hex size");
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&chunked[end + 2..end + 2 + size]);
        chunked = &chunked[end + 2 + size + 2..];
    }
}

/// gRPC-Web frames: (flags, payload); flag 0x80 is the trailers frame.
fn frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        out.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    assert!(body.is_empty(), "a partial gRPC-Web frame");
    out
}

fn grpc_web_post(addr: &str, request: &PostRequest) -> Answer {
    let message = request.write_to_bytes().unwrap();
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    let headers = [("content-type", "application/grpc-web+proto"), ("x-grpc-web", "1"), ("origin", ORIGIN)];
    exchange(addr, "POST", "/chat.v1.Chat/Post", &headers, &body)
}

fn web_envoy(replica: &str, flags: &[String]) -> Envoy {
    Envoy::start_with(&[("replica-1", replica)], flags, |config| config)
}

fn post_request(text: &str) -> PostRequest {
    PostRequest {
        room: "web".into(),
        user: "alice".into(),
        text: text.into(),
        client_id: "c-1".into(),
        ..Default::default()
    }
}

#[test]
fn a_grpc_web_post_over_http1_reaches_the_chat_and_its_trailers_come_back_in_the_body() {
    let server = start_chat_server(ChatConfig::default());
    let envoy = web_envoy(server.addr(), &["--cors-origin".into(), ORIGIN.into()]);
    let answer = grpc_web_post(&envoy.addr, &post_request("hello from a browser"));
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("access-control-allow-origin"), Some(ORIGIN));
    assert_eq!(answer.header("access-control-expose-headers"), Some("grpc-status, grpc-message"));
    let frames = frames(&answer.body);
    assert_eq!(frames.len(), 2, "one message, then the trailers: {frames:?}");
    let reply = PostResponse::parse_from_bytes(&frames[0].1).unwrap();
    assert_eq!(reply.seq, 1);
    assert_eq!(frames[1].0, 0x80);
    let trailers = String::from_utf8_lossy(&frames[1].1).to_ascii_lowercase();
    assert!(trailers.contains("grpc-status:0"), "{trailers}");

    // Bad input: the status reaches the page.
    let answer = grpc_web_post(&envoy.addr, &post_request(""));
    assert_eq!(answer.status, 200);
    assert_eq!(grpc_status(&answer), ("3".to_string(), "message text is empty".to_string()));
}

/// grpc-status and grpc-message: in the headers of a trailers-only answer,
/// else in the trailers frame at the end of the body.
fn grpc_status(answer: &Answer) -> (String, String) {
    if let Some(code) = answer.header("grpc-status") {
        return (code.to_string(), answer.header("grpc-message").unwrap_or_default().to_string());
    }
    let (flags, trailers) = frames(&answer.body).pop().expect("a trailers frame");
    assert_eq!(flags, 0x80);
    let trailers = String::from_utf8_lossy(&trailers).to_string();
    let field = |name: &str| {
        trailers
            .split("\r\n")
            .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case(name)))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    (field("grpc-status"), field("grpc-message"))
}

#[test]
fn a_cors_preflight_is_answered_for_the_configured_origin_and_not_for_another() {
    let server = start_chat_server(ChatConfig::default());
    let envoy = web_envoy(server.addr(), &["--cors-origin".into(), ORIGIN.into()]);
    let preflight = |origin: &str| {
        let headers = [
            ("origin", origin),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type,x-grpc-web,x-user-agent"),
        ];
        exchange(&envoy.addr, "OPTIONS", "/chat.v1.Chat/Post", &headers, b"")
    };
    let allowed = preflight(ORIGIN);
    assert_eq!(allowed.status, 200);
    assert_eq!(allowed.header("access-control-allow-origin"), Some(ORIGIN));
    assert_eq!(allowed.header("access-control-allow-methods"), Some("POST, OPTIONS"));
    assert_eq!(
        allowed.header("access-control-allow-headers"),
        Some("content-type, x-grpc-web, x-user-agent, grpc-timeout, authorization")
    );
    assert_eq!(allowed.header("access-control-max-age"), Some("600"));
    let other = preflight("http://evil.example");
    assert_eq!(other.header("access-control-allow-origin"), None, "another origin is not allowed");
}

#[test]
fn with_a_web_root_envoy_serves_the_page_and_its_script() {
    let root = TempDir::new("web-root");
    std::fs::write(root.path().join("index.html"), "<!doctype html><title>chat</title>").unwrap();
    std::fs::write(root.path().join("app.js"), "console.log('chat');").unwrap();
    let server = start_chat_server(ChatConfig::default());
    let flags = ["--web-root".to_string(), root.path().display().to_string()];
    let envoy = web_envoy(server.addr(), &flags);
    let page = exchange(&envoy.addr, "GET", "/?room=r&user=u", &[], b"");
    assert_eq!((page.status, page.header("content-type")), (200, Some("text/html; charset=utf-8")));
    assert_eq!(page.body, b"<!doctype html><title>chat</title>");
    let script = exchange(&envoy.addr, "GET", "/app.js", &[], b"");
    assert_eq!((script.status, script.header("content-type")), (200, Some("text/javascript; charset=utf-8")));
    assert_eq!(script.body, b"console.log('chat');");
}
