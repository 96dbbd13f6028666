//! A raw HTTP/2 peer for abuse tests: writes whatever frames a test asks for
//! (a frame is a 9-byte header and a payload) and reports, from a reader
//! thread, what the server sends back and when it closes the connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const ACK: u8 = 0x1;
/// GOAWAY / RST_STREAM error codes.
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame: its 9-byte header and payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK literal header field without indexing, new name (RFC 7541
/// 6.2.2); names and values shorter than 127 bytes.
fn literal(name: &str, value: &str) -> Vec<u8> {
    assert!(name.len() < 127 && value.len() < 127);
    let mut out = vec![0x00, name.len() as u8];
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
    out
}

/// The header block of a gRPC request to `path`; it uses no dynamic table
/// entry, so it is valid on any stream of any connection.
pub fn request_headers(path: &str) -> Vec<u8> {
    [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    .iter()
    .flat_map(|(name, value)| literal(name, value))
    .collect()
}

/// A message in gRPC's length-prefixed framing, uncompressed.
pub fn grpc_message(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// What the server sent on a raw connection.
#[derive(Debug)]
pub enum Received {
    Frame {
        kind: u8,
        flags: u8,
        stream: u32,
        payload: Vec<u8>,
    },
    /// The server closed the connection (EOF or reset).
    Closed,
}

/// A TCP connection to the server that sends raw bytes.
pub struct RawConnection {
    stream: TcpStream,
    received: mpsc::Receiver<Received>,
}

impl RawConnection {
    pub fn open(addr: &str) -> RawConnection {
        let stream = TcpStream::connect(addr).expect("the server accepts connections");
        stream.set_nodelay(true).unwrap();
        let reader = stream.try_clone().unwrap();
        let (tx, received) = mpsc::channel();
        thread::spawn(move || read_frames(reader, tx));
        RawConnection { stream, received }
    }

    /// Writes `bytes`; an error means the server closed the connection.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Waits up to `timeout` for the server to close the connection;
    /// returns the GOAWAY (error code, debug text) it sent first, if any,
    /// or `Err` with what it did send if it did not close in time.
    pub fn wait_closed(&self, timeout: Duration) -> Result<Option<(u32, String)>, String> {
        let deadline = Instant::now() + timeout;
        let mut goaway = None;
        let mut frames = 0usize;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.received.recv_timeout(left) {
                Ok(Received::Closed) | Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(goaway),
                Ok(Received::Frame { kind: GOAWAY, payload, .. }) if goaway.is_none() && payload.len() >= 8 => {
                    let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                    goaway = Some((code, String::from_utf8_lossy(&payload[8..]).into_owned()));
                }
                Ok(Received::Frame { .. }) => frames += 1,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!("still open after {timeout:?}; {frames} frames received, GOAWAY {goaway:?}"))
                }
            }
        }
    }

    /// The next frame of `kind` the server sends, within `timeout`.
    pub fn next_frame(&self, kind: u8, timeout: Duration) -> Option<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.received.recv_timeout(left).ok()? {
                Received::Frame { kind: k, .. } if k != kind => continue,
                other => return Some(other),
            }
        }
    }
}

fn read_frames(mut reader: TcpStream, tx: mpsc::Sender<Received>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) | Err(_) => {
                let _ = tx.send(Received::Closed);
                return;
            }
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let received = Received::Frame { kind: buf[3], flags: buf[4], stream, payload: buf[9..9 + len].to_vec() };
            buf.drain(..9 + len);
            if tx.send(received).is_err() {
                return;
            }
        }
    }
}
