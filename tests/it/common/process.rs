//! Real processes for the tests that need them (a SIGKILL, a SIGTERM, a
//! proxy): the `server` binary and HAProxy, each on free loopback ports,
//! each killed and reaped when its guard is dropped. Readiness is read from
//! what the process says (a server's `--ready-file`), never guessed with a sleep.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

/// How long a process may take to say it is ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A child process whose stderr lines arrive on a channel and whose exit is
/// observed by a thread blocked in `wait`, so tests wait on both as events.
pub struct Process {
    pid: u32,
    lines: Receiver<String>,
    exited: Receiver<ExitStatus>,
    status: Option<ExitStatus>,
}

impl Process {
    pub fn spawn(mut command: Command) -> Process {
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let pid = child.id();
        let stderr = child.stderr.take().expect("stderr is piped");
        let (line_tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (exit_tx, exited) = mpsc::channel();
        thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = exit_tx.send(status);
            }
        });
        Process { pid, lines, exited, status: None }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for a stderr line containing `needle`; returns the line.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("process {} did not log {needle:?} within {timeout:?}", self.pid),
            }
        }
    }

    /// The stderr lines logged so far and not yet read.
    pub fn drain_lines(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// Sends `signal` (e.g. "TERM", "KILL", "HUP") unless the process has been
    /// reaped. A direct syscall: a test that kills mid-load must not stall its
    /// load (as spawning `kill` would) while in-flight calls drain.
    pub fn signal(&mut self, signal: &str) {
        if self.has_exited() {
            return;
        }
        let number = match signal {
            "TERM" => libc::SIGTERM,
            "KILL" => libc::SIGKILL,
            "HUP" => libc::SIGHUP,
            "INT" => libc::SIGINT,
            other => panic!("no signal {other} in this helper"),
        };
        // The waiter thread has not reaped it, so the pid is still this process's.
        let pid = libc::pid_t::try_from(self.pid).expect("a pid fits pid_t");
        unsafe { libc::kill(pid, number) };
    }

    /// SIGKILL, now.
    pub fn kill(&mut self) {
        self.signal("KILL");
    }

    /// Waits for the server to write `ready` (see [`ReadyFile::wait`]); on
    /// failure the panic shows what the process logged.
    pub fn wait_ready(&mut self, ready: &ReadyFile) -> Ready {
        match ready.wait(READY_TIMEOUT, || self.has_exited()) {
            Ok(ready) => ready,
            Err(why) => panic!("process {}: {why}; it logged: {:?}", self.pid, self.drain_lines()),
        }
    }

    pub fn has_exited(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.exited.try_recv().ok();
        }
        self.status.is_some()
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.exited.recv_timeout(timeout).ok();
        }
        self.status
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        let _ = self.wait_exit(Duration::from_secs(10));
    }
}

/// The addresses a server wrote to its `--ready-file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// Its gRPC `host:port`.
    pub grpc: String,
    /// Its admin HTTP `host:port`, if it has an admin port.
    pub admin: Option<String>,
}

/// A path for one server's `--ready-file`, in a temp dir of its own that is
/// removed on drop.
pub struct ReadyFile {
    dir: tempfile::TempDir,
}

impl ReadyFile {
    pub fn new() -> ReadyFile {
        ReadyFile { dir: tempfile::Builder::new().prefix("greet-ready").tempdir().unwrap() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("ready.json")
    }

    /// Polls for the file (the server renames it into place whole) until
    /// `timeout`; `exited` says whether the server has exited, and then it
    /// never will write it.
    pub fn wait(&self, timeout: Duration, mut exited: impl FnMut() -> bool) -> Result<Ready, String> {
        let path = self.path();
        let deadline = Instant::now() + timeout;
        loop {
            match std::fs::read_to_string(&path) {
                Ok(text) => return parse_ready(&text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            }
            if exited() {
                return Err("exited before it wrote its ready file".to_string());
            }
            if Instant::now() >= deadline {
                return Err(format!("no ready file within {timeout:?}"));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// `{"grpc": "HOST:PORT", "admin": "HOST:PORT" or null}`.
pub fn parse_ready(text: &str) -> Result<Ready, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("ready file {text:?}: {e}"))?;
    let grpc = value["grpc"].as_str().ok_or_else(|| format!("ready file {text:?}: no \"grpc\" address"))?;
    let admin = match &value["admin"] {
        serde_json::Value::Null => None,
        serde_json::Value::String(admin) => Some(admin.clone()),
        _ => return Err(format!("ready file {text:?}: \"admin\" is neither an address nor null")),
    };
    Ok(Ready { grpc: grpc.to_string(), admin })
}

/// Starts `command` (the `server` binary with `--addr 127.0.0.1:0`, perhaps
/// through a wrapper that passes its last arguments on) with a
/// `--ready-file` and waits for it; returns the process and its gRPC address.
pub fn start_server_command(mut command: Command) -> (Process, String) {
    let ready = ReadyFile::new();
    command.arg("--ready-file").arg(ready.path()).env("RUST_LOG", "info");
    let mut process = Process::spawn(command);
    let addr = process.wait_ready(&ready).grpc;
    (process, addr)
}

/// The `server` binary on 127.0.0.1 port 0 with an admin port, started and ready.
pub struct ServerProcess {
    pub process: Process,
    /// Its gRPC `host:port`.
    pub addr: String,
    /// Its admin HTTP `host:port`.
    pub admin: String,
}

impl ServerProcess {
    /// Starts `server --addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 --stream-interval 0 <extra>`.
    pub fn start(instance_id: &str, extra: &[&str]) -> ServerProcess {
        Self::start_with_env(instance_id, extra, &[])
    }

    /// [`start`](Self::start) with these environment variables set.
    pub fn start_with_env(instance_id: &str, extra: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        let ready = ReadyFile::new();
        let mut command = Command::new(env!("CARGO_BIN_EXE_server"));
        command
            .args(["--addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--stream-interval", "0"])
            .args(["--instance-id", instance_id, "--threads", "1"])
            .args(extra)
            .arg("--ready-file")
            .arg(ready.path())
            .env("RUST_LOG", "info")
            .envs(env.iter().copied());
        let mut process = Process::spawn(command);
        let Ready { grpc: addr, admin } = process.wait_ready(&ready);
        let admin = admin.expect("started with --admin-addr, it names its admin port");
        ServerProcess { process, addr, admin }
    }

    pub fn admin_port(&self) -> &str {
        self.admin.rsplit_once(':').expect("host:port").1
    }

    /// The sum of counter `name`'s samples on its admin port's `/metrics`
    /// whose labels include each of `labels` (`key="value"`); 0 if none.
    pub fn counter(&self, name: &str, labels: &[&str]) -> f64 {
        let (status, body) = http_get(&self.admin, "/metrics");
        assert_eq!(status, 200, "GET /metrics on {}: {body}", self.admin);
        body.lines()
            .filter_map(|line| line.rsplit_once(' '))
            .filter(|(key, _)| {
                key.split_once('{').map_or(*key, |(n, _)| n) == name && labels.iter().all(|l| key.contains(l))
            })
            .map(|(key, value)| value.parse::<f64>().unwrap_or_else(|_| panic!("{key}'s value {value:?}")))
            .sum()
    }
}

/// One GET on the admin port: the status code.
pub fn http_get_status(addr: &str, path: &str) -> u16 {
    http_get(addr, path).0
}

/// One GET on the admin port: the status code and the body. HTTP/1.0, so
/// that the body comes whole (not chunked) and ends with the connection.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("the admin port accepts");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let code = response.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    (code, body.to_string())
}

/// The repository's root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A replica as the HAProxy template names it.
pub struct Backend<'a> {
    pub name: &'a str,
    pub addr: &'a str,
    pub admin_port: &'a str,
    pub backup: bool,
}

/// `deploy/haproxy/haproxy.cfg` rendered for `bind` and `backends`, by the
/// project's one renderer (`deploy/haproxy/render.py`, which `make cluster`
/// and `make security-check` use too).
pub fn render_haproxy_config(bind: &str, backends: &[Backend]) -> String {
    render_haproxy_template(&repo_root().join("deploy/haproxy/haproxy.cfg"), bind, backends)
}

/// An HAProxy config template (the shipped one's placeholders) rendered for `bind` and `backends`.
pub fn render_haproxy_template(template: &Path, bind: &str, backends: &[Backend]) -> String {
    let mut command = Command::new("python3");
    command.arg(repo_root().join("deploy/haproxy/render.py")).args(["--bind", bind, "--template"]).arg(template);
    for b in backends {
        let backup = if b.backup { ",backup" } else { "" };
        command.arg("--server").arg(format!("{}={},{}{backup}", b.name, b.addr, b.admin_port));
    }
    let out = command.output().expect("python3 runs deploy/haproxy/render.py");
    assert!(out.status.success(), "render.py: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("render.py writes UTF-8")
}

/// A free loopback port (free a moment ago: HAProxy cannot take port 0 and
/// tell us, so the test picks one; a clash shows as HAProxy failing to start).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// HAProxy with the shipped config, in the foreground, stopped on drop.
pub struct Haproxy {
    pub process: Process,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Starts HAProxy for `backends` and waits until it accepts connections
    /// and its checks have found every non-backup replica up.
    pub fn start(backends: &[Backend]) -> Haproxy {
        Self::start_edited(backends, |config| config)
    }

    /// Like [`start`](Self::start), with the rendered config passed through `edit`
    /// (a test that turns a feature off to show what it does).
    pub fn start_edited(backends: &[Backend], edit: impl FnOnce(String) -> String) -> Haproxy {
        Self::start_rendered(backends, |addr| edit(render_haproxy_config(addr, backends)))
    }

    /// Like [`start`](Self::start), with another template than the shipped one
    /// (a test that shows what an older config did).
    pub fn start_template(template: &Path, backends: &[Backend]) -> Haproxy {
        Self::start_rendered(backends, |addr| render_haproxy_template(template, addr, backends))
    }

    /// HAProxy with the config `render` writes for the address it binds.
    fn start_rendered(backends: &[Backend], render: impl FnOnce(&str) -> String) -> Haproxy {
        let dir = tempfile::Builder::new().prefix("greet-haproxy").tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(&config, render(&addr)).unwrap();
        let socket = dir.path().join("admin.sock");
        let mut full = std::fs::read_to_string(&config).unwrap();
        // A stats socket, so the test can ask which servers are up.
        full = full.replacen("global\n", &format!("global\n    stats socket {}\n", socket.display()), 1);
        std::fs::write(&config, full).unwrap();
        let haproxy = which("haproxy").expect("haproxy is installed (scripts/ensure-deps.sh installs it)");
        let mut command = Command::new(haproxy);
        command.arg("-db").arg("-f").arg(&config);
        let process = Process::spawn(command);
        let proxy = Haproxy { process, addr, _dir: dir };
        let wanted = backends.iter().filter(|b| !b.backup).count();
        proxy.wait_until_up(&socket, wanted, READY_TIMEOUT);
        proxy
    }

    /// Polls HAProxy's own report of its servers (its stats socket) until
    /// `wanted` are UP: the event the test needs before sending traffic.
    fn wait_until_up(&self, socket: &Path, wanted: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let up = haproxy_servers_up(socket).unwrap_or(0);
            if up >= wanted {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "HAProxy did not see {wanted} replica(s) up within {timeout:?}; it logged: {:?}",
                self.process.drain_lines()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// How many servers of the backend HAProxy reports UP (`show stat` over its socket).
fn haproxy_servers_up(socket: &Path) -> Option<usize> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    stream.write_all(b"show stat\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(
        text.lines()
            .filter(|l| l.starts_with("greet_replicas,") && !l.contains(",BACKEND,"))
            .filter(|l| l.split(',').nth(17) == Some("UP"))
            .count(),
    )
}

fn which(program: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}
