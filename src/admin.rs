//! The admin HTTP port (`--admin-addr`): plain HTTP/1.1 for load balancers
//! and operators, served by `tiny_http` on a thread of its own so that
//! nothing here ever runs on a completion-queue thread.
//!
//! - `GET /healthz`: `200 SERVING` while the server serves, `503 NOT_SERVING`
//!   from the moment a drain starts (HAProxy's `option httpchk` reads it).
//! - Routes added with [`Admin::route`] (e.g. `/metrics`).
//!
//! It knows nothing of the rest of the crate: the server hands it closures.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use log::{debug, warn};
use tiny_http::{Header, Method, Response, Server};

/// What a route answers: status code, content type, body.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Reply { status, content_type: "text/plain; charset=utf-8", body: body.into() }
    }
}

/// A route's handler; runs on the admin thread.
pub type Handler = Arc<dyn Fn() -> Reply + Send + Sync>;

/// A running admin port; dropping it stops the thread.
pub struct Admin {
    addr: SocketAddr,
    http: Arc<Server>,
    /// Path -> handler; written by [`Admin::route`], read per request.
    routes: Arc<RwLock<HashMap<String, Handler>>>,
    thread: Option<JoinHandle<()>>,
}

impl Admin {
    /// Listens on `addr` (port 0 picks a free one) and serves `/healthz`:
    /// 200 while `serving` says so, else 503.
    pub fn start(addr: &str, serving: impl Fn() -> bool + Send + Sync + 'static) -> Result<Admin, String> {
        let http = Arc::new(Server::http(addr).map_err(|e| format!("admin port: cannot listen on {addr}: {e}"))?);
        let bound = http.server_addr().to_ip().ok_or_else(|| format!("admin port: {addr} is not an IP address"))?;
        let mut routes: HashMap<String, Handler> = HashMap::new();
        routes.insert(
            "/healthz".to_string(),
            Arc::new(move || match serving() {
                true => Reply::text(200, "SERVING\n"),
                false => Reply::text(503, "NOT_SERVING\n"),
            }),
        );
        let routes = Arc::new(RwLock::new(routes));
        let thread = {
            let (http, routes) = (http.clone(), routes.clone());
            std::thread::Builder::new()
                .name("admin-http".to_string())
                .spawn(move || serve(&http, &routes))
                .map_err(|e| format!("admin port: cannot start its thread: {e}"))?
        };
        Ok(Admin { addr: bound, http, routes, thread: Some(thread) })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `GET path` with `handler` from now on.
    pub fn route(&self, path: &str, handler: Handler) {
        self.routes.write().unwrap_or_else(|e| e.into_inner()).insert(path.to_string(), handler);
    }
}

fn serve(http: &Server, routes: &RwLock<HashMap<String, Handler>>) {
    // `incoming_requests` ends when `unblock` is called on drop.
    for request in http.incoming_requests() {
        let path = request.url().split('?').next().unwrap_or("").to_string();
        let handler = routes.read().unwrap_or_else(|e| e.into_inner()).get(&path).cloned();
        let reply = match (request.method(), handler) {
            (Method::Get | Method::Head, Some(handler)) => handler(),
            (_, Some(_)) => Reply::text(405, "only GET\n"),
            (_, None) => Reply::text(404, "not found\n"),
        };
        debug!("admin: {} {path} -> {}", request.method(), reply.status);
        // The header is ASCII and well-formed, so parsing cannot fail.
        let content_type = Header::from_bytes(&b"Content-Type"[..], reply.content_type.as_bytes()).ok();
        let mut response = Response::from_string(reply.body).with_status_code(reply.status);
        if let Some(header) = content_type {
            response = response.with_header(header);
        }
        if let Err(e) = request.respond(response) {
            warn!("admin: cannot answer {path}: {e}");
        }
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.http.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
