//! The one place channels are built. A [`Connector`] holds everything a
//! channel is made of — targets, TLS, load-balancing policy, the service
//! config (retries, health checking, wait-for-ready), keepalive and the pool
//! size — and every client (greeter, route guide, interop, load, chat) gets its
//! channels from one. All of them share one process-wide [`Environment`].
//!
//! Balancing, retries and health checking are the C core's own machinery:
//! this module only writes the service config it reads (grpcio passes it as
//! the raw `grpc.service_config` string; [`ServiceConfig`] is the typed form).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use grpcio::{Channel, ChannelBuilder, ChannelCredentialsBuilder, EnvBuilder, Environment, RpcStatusCode};
use serde_json::{json, Value};

use crate::tls::ClientTls;
use crate::wire::code_name;

/// The client environment every channel of this process shares: one
/// completion queue (and polling thread) per CPU.
pub fn environment() -> Arc<Environment> {
    static ENV: OnceLock<Arc<Environment>> = OnceLock::new();
    ENV.get_or_init(|| {
        let queues = std::thread::available_parallelism().map_or(1, |n| n.get());
        Arc::new(EnvBuilder::new().cq_count(queues).name_prefix("grpc-client").build())
    })
    .clone()
}

/// A plaintext channel to `addr` with the defaults: what tests and simple
/// callers use. `addr` is anything [`Connector::new`] takes.
pub fn connect(addr: &str) -> Channel {
    match Connector::new(addr) {
        Ok(connector) => connector.channel(),
        // Not a list we can parse: let the core report it on the first call.
        Err(_) => ChannelBuilder::new(environment()).connect(addr),
    }
}

/// How a channel picks among the addresses of its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LbPolicy {
    /// Every call to the first address that works; the later ones are backups.
    #[default]
    PickFirst,
    /// Calls spread over every address that is ready (and healthy).
    RoundRobin,
}

impl LbPolicy {
    fn config_name(self) -> &'static str {
        match self {
            LbPolicy::PickFirst => "pick_first",
            LbPolicy::RoundRobin => "round_robin",
        }
    }
}

impl FromStr for LbPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pick_first" => Ok(LbPolicy::PickFirst),
            "round_robin" => Ok(LbPolicy::RoundRobin),
            other => Err(format!("unknown load-balancing policy {other:?}: expected pick_first or round_robin")),
        }
    }
}

/// A retry policy as gRFC A6 defines it; the C core retries, we only describe.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (the core caps this at 5).
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub backoff_multiplier: f64,
    /// Statuses after which an attempt is retried.
    pub retryable_codes: Vec<RpcStatusCode>,
}

impl RetryPolicy {
    /// `retries` retries (so `retries + 1` attempts) on UNAVAILABLE, with
    /// exponential backoff from 100 ms up to 1 s. `None` for 0 retries.
    pub fn on_unavailable(retries: u32) -> Option<Self> {
        (retries > 0).then(|| RetryPolicy {
            max_attempts: retries + 1,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            backoff_multiplier: 2.0,
            retryable_codes: vec![RpcStatusCode::UNAVAILABLE],
        })
    }

    fn to_json(&self) -> Value {
        json!({
            "maxAttempts": self.max_attempts,
            "initialBackoff": proto_duration(self.initial_backoff),
            "maxBackoff": proto_duration(self.max_backoff),
            "backoffMultiplier": self.backoff_multiplier,
            "retryableStatusCodes": self.retryable_codes.iter().map(|c| code_name(*c)).collect::<Vec<_>>(),
        })
    }
}

/// A duration as the service config's JSON spells it: `"0.100s"`.
fn proto_duration(d: Duration) -> String {
    format!("{}.{:09}s", d.as_secs(), d.subsec_nanos())
}

/// The service config a channel runs with: the typed form of what grpcio
/// only takes as a raw JSON string (`grpc.service_config`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServiceConfig {
    pub lb: LbPolicy,
    /// Watch this service's health (`""`: the whole server) on every backend
    /// and keep the unhealthy ones out of rotation (round_robin only: the
    /// core ignores it under pick_first).
    pub health_check_service: Option<String>,
    /// Applied to every method. The core retries a call only until its first
    /// response arrives, so a stream that is already answering is never replayed.
    pub retry: Option<RetryPolicy>,
    /// Calls wait for a ready connection (up to their deadline) instead of
    /// failing at once while every backend is unreachable.
    pub wait_for_ready: bool,
}

impl ServiceConfig {
    /// The JSON the core reads.
    pub fn to_json(&self) -> String {
        let mut config = json!({ "loadBalancingConfig": [{ self.lb.config_name(): {} }] });
        if let Some(service) = &self.health_check_service {
            config["healthCheckConfig"] = json!({ "serviceName": service });
        }
        if self.retry.is_some() || self.wait_for_ready {
            // An empty name matches every method of every service.
            let mut method = json!({ "name": [{}] });
            if self.wait_for_ready {
                method["waitForReady"] = json!(true);
            }
            if let Some(retry) = &self.retry {
                method["retryPolicy"] = retry.to_json();
            }
            config["methodConfig"] = json!([method]);
        }
        config.to_string()
    }
}

/// Client keepalive: ping after `time` without activity, give up on the
/// connection if the ping is not answered within `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub time: Duration,
    pub timeout: Duration,
}

/// Everything a channel is built from; [`Connector::channel`] and
/// [`Connector::pool`] build them.
#[derive(Debug, Clone)]
pub struct Connector {
    /// What the core dials: `host:port`, or an `ipv4:`/`ipv6:`/`dns:` URI.
    target: String,
    /// `host:port` the channel presents as its authority (and TLS name) when
    /// the target is a list of addresses.
    authority: Option<String>,
    tls: Option<ClientTls>,
    service_config: ServiceConfig,
    keepalive: Option<Keepalive>,
    connections: usize,
    /// Keep this connector's connections off the process-wide subchannel pool.
    local_pool: bool,
}

/// Retries by default (on UNAVAILABLE): what `--retries` defaults to.
pub const DEFAULT_RETRIES: u32 = 3;

impl Connector {
    /// A connector to `addrs`: one `host:port` (or a URI the core knows:
    /// `dns:///host:port`, `ipv4:…`, `ipv6:…`, `unix:…`), or a comma-separated
    /// list of `host:port` whose hosts are IP literals or resolve to one
    /// (e.g. `localhost`), all of one IP family. Plaintext, pick_first,
    /// [`DEFAULT_RETRIES`] retries on UNAVAILABLE, one connection.
    pub fn new(addrs: &str) -> Result<Self, String> {
        let (target, authority) = target_uri(addrs)?;
        Ok(Connector {
            target,
            authority,
            tls: None,
            service_config: ServiceConfig { retry: RetryPolicy::on_unavailable(DEFAULT_RETRIES), ..Default::default() },
            keepalive: None,
            connections: 1,
            local_pool: false,
        })
    }

    /// What the core dials (for logs and tests).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The service config this connector's channels run with.
    pub fn service_config(&self) -> &ServiceConfig {
        &self.service_config
    }

    /// Connect over TLS.
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The load-balancing policy. Under round_robin, backends are health
    /// checked (the whole server's status) unless [`health_check`](Self::health_check) says otherwise.
    pub fn lb(mut self, lb: LbPolicy) -> Self {
        self.service_config.lb = lb;
        if lb == LbPolicy::RoundRobin && self.service_config.health_check_service.is_none() {
            self.service_config.health_check_service = Some(String::new());
        }
        self
    }

    /// Health-check backends against `service` (`""`: the whole server), or not at all.
    pub fn health_check(mut self, service: Option<String>) -> Self {
        self.service_config.health_check_service = service;
        self
    }

    /// Retries on UNAVAILABLE; 0 turns retrying off.
    pub fn retries(mut self, retries: u32) -> Self {
        self.service_config.retry = RetryPolicy::on_unavailable(retries);
        self
    }

    /// A retry policy of one's own (or none).
    pub fn retry_policy(mut self, retry: Option<RetryPolicy>) -> Self {
        self.service_config.retry = retry;
        self
    }

    /// Calls wait for a ready connection instead of failing fast.
    pub fn wait_for_ready(mut self, wait: bool) -> Self {
        self.service_config.wait_for_ready = wait;
        self
    }

    pub fn keepalive(mut self, keepalive: Option<Keepalive>) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// How many channels [`pool`](Self::pool) builds, each with connections
    /// of its own (at least 1).
    pub fn connections(mut self, connections: usize) -> Self {
        self.connections = connections.max(1);
        self
    }

    /// Keep connections off the process-wide subchannel pool, so that this
    /// channel opens its own even where another channel has one to the same address.
    pub fn own_connections(mut self, own: bool) -> Self {
        self.local_pool = own;
        self
    }

    /// One channel.
    pub fn channel(&self) -> Channel {
        self.build(self.local_pool)
    }

    /// `connections` channels that share no connection; calls are spread
    /// over them in turn.
    pub fn pool(&self) -> Pool {
        let own = self.local_pool || self.connections > 1;
        Pool { channels: (0..self.connections).map(|_| self.build(own)).collect(), next: AtomicUsize::new(0) }
    }

    fn build(&self, local_pool: bool) -> Channel {
        let mut builder = ChannelBuilder::new(environment())
            .enable_retry(self.service_config.retry.is_some())
            .use_local_subchannel_pool(local_pool)
            .raw_cfg_string(
                c"grpc.service_config".into(),
                // JSON from serde_json never contains a NUL byte.
                std::ffi::CString::new(self.service_config.to_json()).unwrap_or_default(),
            );
        if let Some(keepalive) = self.keepalive {
            builder = builder
                .keepalive_time(keepalive.time)
                .keepalive_timeout(keepalive.timeout)
                .keepalive_permit_without_calls(true);
        }
        if let Some(authority) = &self.authority {
            builder = builder.default_authority(authority.clone());
        }
        match &self.tls {
            None => builder.connect(&self.target),
            Some(tls) => {
                let mut credentials = ChannelCredentialsBuilder::new();
                if let Some(ca) = &tls.ca_pem {
                    credentials = credentials.root_cert(ca.clone());
                }
                if let Some((cert, key)) = &tls.identity {
                    credentials = credentials.cert(cert.clone(), key.clone());
                }
                let mut builder = builder.set_credentials(credentials.build());
                if let Some(name) = &tls.server_name {
                    builder = builder.override_ssl_target(name.clone());
                }
                builder.connect(&self.target)
            }
        }
    }
}

/// Channels that share no connection; [`Pool::pick`] hands them out in turn.
pub struct Pool {
    channels: Vec<Channel>,
    next: AtomicUsize,
}

impl Pool {
    /// The next channel, round robin.
    pub fn pick(&self) -> &Channel {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        &self.channels[i]
    }

    pub fn channels(&self) -> &[Channel] {
        &self.channels
    }
}

/// The core's target for `addrs`, and the authority to present when it is a
/// list. See [`Connector::new`].
fn target_uri(addrs: &str) -> Result<(String, Option<String>), String> {
    let entries: Vec<&str> = addrs.split(',').map(str::trim).collect();
    if entries.iter().any(|e| e.is_empty()) {
        return Err(format!("invalid address list {addrs:?}: an entry is empty"));
    }
    if let [single] = entries[..] {
        return Ok((single.to_string(), None));
    }
    let mut resolved = Vec::new();
    for entry in &entries {
        if entry.contains("://") || entry.starts_with("ipv4:") || entry.starts_with("ipv6:") {
            return Err(format!("{entry:?}: a list takes host:port entries; give a URI on its own"));
        }
        resolved.push(resolve(entry)?);
    }
    let v4 = resolved.iter().all(SocketAddr::is_ipv4);
    let v6 = resolved.iter().all(SocketAddr::is_ipv6);
    let scheme = match (v4, v6) {
        (true, _) => "ipv4",
        (_, true) => "ipv6",
        _ => return Err(format!("{addrs:?} mixes IPv4 and IPv6 addresses; the core takes one family per list")),
    };
    let list: Vec<String> = resolved.iter().map(SocketAddr::to_string).collect();
    Ok((format!("{scheme}:{}", list.join(",")), Some(entries[0].to_string())))
}

/// One `host:port` as a socket address: an IP literal as is, a name through
/// the system resolver (IPv4 preferred, as `localhost` usually means 127.0.0.1).
fn resolve(entry: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, port) = entry.rsplit_once(':').ok_or_else(|| format!("{entry:?} is not host:port"))?;
    let port: u16 = port.parse().map_err(|_| format!("{entry:?}: {port:?} is not a port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let found: Vec<SocketAddr> =
        (host, port).to_socket_addrs().map_err(|e| format!("cannot resolve {host:?}: {e}"))?.collect();
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| found.first())
        .copied()
        .ok_or_else(|| format!("{host:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_address_is_passed_through() {
        assert_eq!(target_uri("localhost:8080").unwrap(), ("localhost:8080".to_string(), None));
        assert_eq!(target_uri("dns:///greet.example:443").unwrap().0, "dns:///greet.example:443");
    }

    #[test]
    fn a_list_becomes_an_ipv4_or_ipv6_uri() {
        let (target, authority) = target_uri("127.0.0.1:1, localhost:2").unwrap();
        assert_eq!(target, "ipv4:127.0.0.1:1,127.0.0.1:2");
        assert_eq!(authority.as_deref(), Some("127.0.0.1:1"));
        assert_eq!(target_uri("[::1]:1,[::1]:2").unwrap().0, "ipv6:[::1]:1,[::1]:2");
    }

    #[test]
    fn bad_lists_are_refused_with_a_reason() {
        assert!(target_uri("127.0.0.1:1,").unwrap_err().contains("empty"));
        assert!(target_uri("127.0.0.1:1,[::1]:2").unwrap_err().contains("mixes"));
        assert!(target_uri("127.0.0.1:1,nonsense").unwrap_err().contains("not host:port"));
    }

    #[test]
    fn the_service_config_is_what_the_core_reads() {
        let config = ServiceConfig {
            lb: LbPolicy::RoundRobin,
            health_check_service: Some(String::new()),
            retry: RetryPolicy::on_unavailable(3),
            wait_for_ready: true,
        };
        let json: Value = serde_json::from_str(&config.to_json()).unwrap();
        assert_eq!(json["loadBalancingConfig"], json!([{ "round_robin": {} }]));
        assert_eq!(json["healthCheckConfig"], json!({ "serviceName": "" }));
        let method = &json["methodConfig"][0];
        assert_eq!(method["name"], json!([{}]));
        assert_eq!(method["waitForReady"], json!(true));
        assert_eq!(
            method["retryPolicy"],
            json!({
                "maxAttempts": 4,
                "initialBackoff": "0.100000000s",
                "maxBackoff": "1.000000000s",
                "backoffMultiplier": 2.0,
                "retryableStatusCodes": ["UNAVAILABLE"],
            })
        );
    }

    #[test]
    fn no_retries_and_pick_first_write_no_method_config() {
        let config = ServiceConfig { retry: RetryPolicy::on_unavailable(0), ..Default::default() };
        let json: Value = serde_json::from_str(&config.to_json()).unwrap();
        assert_eq!(json, json!({ "loadBalancingConfig": [{ "pick_first": {} }] }));
    }
}
