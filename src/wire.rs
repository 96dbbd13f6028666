//! Names on the wire that the server and the client both use: metadata keys
//! and the canonical names of status codes. A leaf: imports nothing of the crate.

use grpcio::RpcStatusCode;

/// The response header that names the instance that served a call.
pub const SERVED_BY_HEADER: &str = "x-served-by";

/// The metadata key that carries credentials (`Bearer <token>`).
pub const AUTHORIZATION: &str = "authorization";

/// Interop suite: initial metadata the server echoes back.
pub const ECHO_INITIAL_KEY: &str = "x-grpc-test-echo-initial";
/// Interop suite: trailing metadata the server echoes back (binary).
pub const ECHO_TRAILING_KEY: &str = "x-grpc-test-echo-trailing-bin";
/// Interop suite: the response header that asks the core to compress a
/// response (the C core's own name for it).
pub const COMPRESSION_REQUEST_KEY: &str = "grpc-internal-encoding-request";

/// The canonical name of a status code, e.g. `UNAVAILABLE`.
pub fn code_name(code: RpcStatusCode) -> String {
    // grpcio formats codes as "14-UNAVAILABLE".
    let text = format!("{code:?}");
    match text.split_once('-') {
        Some((_, name)) => name.to_string(),
        None => text,
    }
}

/// Milliseconds since the Unix epoch, as chat messages carry their time.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
