//! Chat test helpers: servers with a chat config, members of a room, and a
//! throwaway redis-server. The `chat_*` tests `use crate::common::chat::*`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::executor::block_on;
use futures::prelude::*;
use greet::chat::ChatConfig;
use greet::proto::chat::{
    client_frame, server_event, ClientFrame, HistoryRequest, Join, Message, RoomsRequest, Say, ServerEvent, Welcome,
};
use greet::proto::chat_grpc::ChatClient;
use greet::server::{self, RunningServer, ServerConfig};
use grpcio::{CallOption, ClientDuplexReceiver, ClientDuplexSender, WriteFlags};

/// Every chat call in a test gets this deadline, so a hang fails the test.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// A server on 127.0.0.1:0 with this chat config.
pub fn start_chat_server(chat: ChatConfig) -> RunningServer {
    let config = ServerConfig { addr: "127.0.0.1:0".to_string(), completion_queues: 2, chat, ..Default::default() };
    server::start(&config).expect("a server starts on a free loopback port")
}

/// A server on 127.0.0.1:0 with `--auth-tokens` (a token table's text: `TOKEN PRINCIPAL` lines).
pub fn start_chat_server_with_tokens(tokens: &str) -> RunningServer {
    let auth = greet::auth::Authenticator::new(greet::auth::TokenTable::parse(tokens, "tokens").unwrap());
    let config = ServerConfig {
        addr: "127.0.0.1:0".to_string(),
        completion_queues: 2,
        chat: ChatConfig::default(),
        auth: Some(auth),
        ..Default::default()
    };
    server::start(&config).expect("a server starts on a free loopback port")
}

pub fn client(addr: &str) -> ChatClient {
    ChatClient::new(greet::client::connect(addr))
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "greet-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A redis-server of our own on a unix socket in a temp dir, without
/// persistence; killed and reaped on drop.
pub struct Redis {
    child: Child,
    pub url: String,
    _dir: TempDir,
}

impl Redis {
    /// Starts it and returns once it accepts connections.
    pub fn start() -> Redis {
        let dir = TempDir::new("redis");
        let socket = dir.path().join("redis.sock");
        let mut child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "notice"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server is installed (scripts/ensure-deps.sh installs it)");
        let stdout = child.stdout.take().expect("piped above");
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|line| line.to_lowercase().contains("ready to accept connections"));
        let url = format!("redis+unix://{}", socket.display());
        let redis = Redis { child, url, _dir: dir };
        assert!(ready, "redis-server exited before it was ready");
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let mut conn = redis::Client::open(redis.url.as_str()).unwrap().get_connection().expect("redis answers");
        let pong: String = redis::cmd("PING").query(&mut conn).unwrap();
        assert_eq!(pong, "PONG");
        redis
    }
}

impl Redis {
    /// Its process id, for signals (SIGSTOP/SIGCONT).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str()).unwrap().get_connection().expect("redis answers")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `signal` (libc::SIGSTOP, SIGCONT, SIGKILL...) to a process.
pub fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) on a child of ours; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "signal {signal} to {pid}");
}

/// A free TCP port on loopback (free when asked; Redis binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `check` until it answers `Some`, for at most `timeout`.
pub fn poll<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(std::time::Instant::now() < deadline, "gave up after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One Redis node of a [`RedisHa`].
pub struct Node {
    pub port: u16,
    child: Child,
    /// How it was started, to start it again on the same port and data.
    args: Vec<String>,
    log: PathBuf,
}

impl Node {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL (if alive), then start it again with its data (appendonly),
    /// as a supervisor would; returns once it answers.
    pub fn restart(&mut self) {
        self.restart_with(&[]);
    }

    /// [`Node::restart`] with extra arguments (e.g. `--replicaof`).
    pub fn restart_with(&mut self, extra: &[String]) {
        self.kill();
        self.args.extend_from_slice(extra);
        let log = std::fs::OpenOptions::new().append(true).open(&self.log).unwrap();
        self.child =
            Command::new("redis-server").args(&self.args).stdout(log).stderr(Stdio::inherit()).spawn().unwrap();
        poll("redis to answer again", Duration::from_secs(10), || {
            redis_query::<String>(&self.url(), &redis::cmd("PING")).ok()
        });
    }
}

/// Redis as it runs highly available: a primary, a replica and three
/// Sentinels (quorum 2, a node is down after 3 s), on free loopback ports,
/// with persistence (appendonly); every process killed on drop.
pub struct RedisHa {
    pub primary: Node,
    pub replica: Node,
    /// More replicas of the primary ([`RedisHa::start_with_spares`]).
    pub spares: Vec<Node>,
    pub sentinels: Vec<Node>,
    pub dir: TempDir,
}

pub const MASTER_NAME: &str = "chatmaster";

fn redis_query<T: redis::FromRedisValue>(url: &str, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(1))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    cmd.query(&mut conn)
}

impl RedisHa {
    /// A primary, one replica and three Sentinels.
    pub fn start() -> RedisHa {
        RedisHa::start_with_spares(0)
    }

    /// A primary, `1 + spares` replicas and three Sentinels. With a spare, the
    /// promoted replica still has a replica to confirm writes after a failover.
    pub fn start_with_spares(spares: usize) -> RedisHa {
        let dir = TempDir::new("redis-ha");
        let root = dir.path().to_path_buf();
        let spawn = |name: &str, port: u16, args: Vec<String>| -> Node {
            let path = root.join(format!("{name}.log"));
            let log = std::fs::File::create(&path).unwrap();
            let child = Command::new("redis-server")
                .args(&args)
                .stdout(log)
                .stderr(Stdio::inherit())
                .spawn()
                .expect("redis-server is installed (scripts/ensure-deps.sh installs it)");
            Node { port, child, args, log: path }
        };
        let node_args = |name: &str, port: u16| -> Vec<String> {
            let data = root.join(name);
            std::fs::create_dir_all(&data).unwrap();
            [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--dir",
                data.to_str().unwrap(),
                "--appendonly",
                "yes",
                "--save",
                "",
                "--daemonize",
                "no",
                "--loglevel",
                "notice",
            ]
            .map(String::from)
            .to_vec()
        };
        let port = free_port();
        let primary = spawn("primary", port, node_args("primary", port));
        let port = free_port();
        let mut args = node_args("replica", port);
        args.extend(["--replicaof".to_string(), "127.0.0.1".to_string(), primary.port.to_string()]);
        let replica = spawn("replica", port, args);
        let spares = (0..spares)
            .map(|i| {
                let port = free_port();
                let mut args = node_args(&format!("spare{i}"), port);
                args.extend(["--replicaof".to_string(), "127.0.0.1".to_string(), primary.port.to_string()]);
                spawn(&format!("spare{i}"), port, args)
            })
            .collect();
        let mut ha = RedisHa { primary, replica, spares, sentinels: Vec::new(), dir };
        for node in [&ha.primary, &ha.replica].into_iter().chain(&ha.spares) {
            poll("redis to answer", Duration::from_secs(10), || {
                redis_query::<String>(&node.url(), &redis::cmd("PING")).ok()
            });
        }
        for replica in std::iter::once(&ha.replica).chain(&ha.spares) {
            poll("the replica to be in sync", Duration::from_secs(20), || {
                let info: String = redis_query(&replica.url(), redis::cmd("INFO").arg("replication")).ok()?;
                info.contains("master_link_status:up").then_some(())
            });
            // After its first sync a replica rewrites its appendonly file;
            // until that is done what it receives is not in the file, and a
            // replica killed then would come back without it.
            poll("the replica's appendonly file to be rewritten after its sync", Duration::from_secs(20), || {
                let info: String = redis_query(&replica.url(), redis::cmd("INFO").arg("persistence")).ok()?;
                let settled = info.contains("aof_rewrite_in_progress:0")
                    && info.contains("aof_rewrite_scheduled:0")
                    && !info.contains("aof_rewrites:0");
                settled.then_some(())
            });
        }
        for i in 0..3 {
            let port = free_port();
            let conf = ha.dir.path().join(format!("sentinel{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 3000\n\
                     sentinel failover-timeout {MASTER_NAME} 10000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    ha.dir.path().display(),
                    ha.primary.port
                ),
            )
            .unwrap();
            let args = [conf.to_str().unwrap().to_string(), "--sentinel".to_string()];
            ha.sentinels.push(spawn(&format!("sentinel{i}"), port, args.to_vec()));
        }
        // Each Sentinel knows the replicas and the two other Sentinels: a failover can happen.
        let replicas = (1 + ha.spares.len()).to_string();
        for sentinel in &ha.sentinels {
            poll("the sentinels to know each other and the replicas", Duration::from_secs(30), || {
                let master: std::collections::HashMap<String, String> =
                    redis_query(&sentinel.url(), redis::cmd("SENTINEL").arg("MASTER").arg(MASTER_NAME)).ok()?;
                let ready = master.get("num-slaves").map(String::as_str) == Some(replicas.as_str())
                    && master.get("num-other-sentinels").map(String::as_str) == Some("2");
                ready.then_some(())
            });
        }
        ha
    }

    /// `redis+sentinel://` URL of the three Sentinels.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// The primary's port, as the first Sentinel that answers names it.
    pub fn primary_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let addr: Option<(String, u16)> =
                redis_query(&s.url(), redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(MASTER_NAME)).ok()?;
            addr.map(|(_, port)| port)
        })
    }

    /// Waits until the Sentinels have promoted the replica and it acts as the primary.
    pub fn wait_for_failover(&self, timeout: Duration) {
        let replicas: Vec<&Node> = std::iter::once(&self.replica).chain(&self.spares).collect();
        let promoted = poll("the sentinels to promote a replica", timeout, || {
            let port = self.primary_port()?;
            replicas.iter().find(|node| node.port == port).copied()
        });
        poll("the promoted replica to act as the primary", timeout, || {
            let info: String = redis_query(&promoted.url(), redis::cmd("INFO").arg("replication")).ok()?;
            info.contains("role:master").then_some(())
        });
    }

    /// Starts the killed primary again as the replica of the one the
    /// Sentinels promoted, as a supervisor that asks them would (left to
    /// itself, it comes back as a primary and the Sentinels take some 10 s
    /// to demote it).
    pub fn restart_old_primary_as_replica(&mut self) {
        let primary = self.primary_port().expect("the Sentinels name a primary");
        self.primary.restart_with(&["--replicaof".to_string(), "127.0.0.1".to_string(), primary.to_string()]);
    }

    /// SIGKILL the primary (no goodbye, nothing saved since the last write).
    pub fn kill_primary(&mut self) {
        self.primary.kill();
    }

    /// Waits until the replica has all the primary has sent and has written
    /// it to its appendonly file: what a test that then kills the replica
    /// and starts it again from that file needs. (With `appendfsync
    /// everysec` a write waits up to 2 s behind a slow fsync; a replica
    /// confirms what it holds in memory.)
    pub fn wait_replica_on_disk(&self) {
        fn field(info: &str, key: &str) -> Option<String> {
            info.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix(':')).map(|v| v.trim().to_string())
        }
        poll("the replica to hold the primary's writes in its appendonly file", Duration::from_secs(10), || {
            let primary: String = redis_query(&self.primary.url(), redis::cmd("INFO").arg("replication")).ok()?;
            let replica: String = redis_query(&self.replica.url(), redis::cmd("INFO").arg("replication")).ok()?;
            let disk: String = redis_query(&self.replica.url(), redis::cmd("INFO").arg("persistence")).ok()?;
            let caught_up = field(&primary, "master_repl_offset")? == field(&replica, "slave_repl_offset")?;
            (caught_up && field(&disk, "aof_buffer_length")? == "0").then_some(())
        });
    }
}

impl Drop for RedisHa {
    fn drop(&mut self) {
        let nodes = std::iter::once(&mut self.primary).chain(Some(&mut self.replica)).chain(self.spares.iter_mut());
        for node in nodes.chain(self.sentinels.iter_mut()) {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
    }
}

pub fn join_frame(room: &str, user: &str, resume_after: Option<u64>, history: Option<u32>) -> ClientFrame {
    let join = Join { room: room.to_string(), user: user.to_string(), resume_after, history, ..Default::default() };
    ClientFrame { frame: Some(client_frame::Frame::Join(join)), ..Default::default() }
}

/// A join that resumes in the room's `epoch` (from a Welcome).
pub fn join_frame_in_epoch(room: &str, user: &str, resume_after: Option<u64>, epoch: Option<&str>) -> ClientFrame {
    let join = Join {
        room: room.to_string(),
        user: user.to_string(),
        resume_after,
        epoch: epoch.map(str::to_string),
        ..Default::default()
    };
    ClientFrame { frame: Some(client_frame::Frame::Join(join)), ..Default::default() }
}

pub fn say_frame(text: &str) -> ClientFrame {
    let say = Say { text: text.to_string(), client_id: String::new(), ..Default::default() };
    ClientFrame { frame: Some(client_frame::Frame::Say(say)), ..Default::default() }
}

/// The status a call's event stream ends with, skipping the events before
/// it; panics if it ends with OK.
pub async fn failure(events: &mut ClientDuplexReceiver<ServerEvent>) -> grpcio::Error {
    loop {
        match events.try_next().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("expected the call to fail; it ended with OK"),
            Err(e) => return e,
        }
    }
}

/// One Connect call, joined to a room.
pub struct Member {
    pub sink: ClientDuplexSender<ClientFrame>,
    pub events: ClientDuplexReceiver<ServerEvent>,
    pub welcome: Welcome,
}

impl Member {
    /// Joins and waits for the welcome.
    pub async fn join(
        client: &ChatClient,
        room: &str,
        user: &str,
        resume_after: Option<u64>,
        history: Option<u32>,
    ) -> grpcio::Result<Member> {
        Member::join_opt(client, CallOption::default(), room, user, resume_after, history).await
    }

    /// Joins on a call with these options (e.g. metadata); the deadline is [`DEADLINE`].
    pub async fn join_opt(
        client: &ChatClient,
        options: CallOption,
        room: &str,
        user: &str,
        resume_after: Option<u64>,
        history: Option<u32>,
    ) -> grpcio::Result<Member> {
        let (mut sink, mut events) = client.connect_opt(options.timeout(DEADLINE))?;
        sink.send((join_frame(room, user, resume_after, history), WriteFlags::default())).await?;
        match events.try_next().await? {
            Some(ServerEvent { event: Some(server_event::Event::Welcome(welcome)), .. }) => {
                Ok(Member { sink, events, welcome })
            }
            other => panic!("expected a welcome, got {other:?}"),
        }
    }

    /// Joins resuming after `resume_after` in `epoch`, and waits for the welcome.
    pub async fn join_with_epoch(
        client: &ChatClient,
        room: &str,
        user: &str,
        resume_after: Option<u64>,
        epoch: Option<&str>,
    ) -> grpcio::Result<Member> {
        let (mut sink, mut events) = client.connect_opt(CallOption::default().timeout(DEADLINE))?;
        sink.send((join_frame_in_epoch(room, user, resume_after, epoch), WriteFlags::default())).await?;
        match events.try_next().await? {
            Some(ServerEvent { event: Some(server_event::Event::Welcome(welcome)), .. }) => {
                Ok(Member { sink, events, welcome })
            }
            other => panic!("expected a welcome, got {other:?}"),
        }
    }

    pub fn join_blocking(client: &ChatClient, room: &str, user: &str) -> Member {
        block_on(Member::join(client, room, user, None, None)).expect("join")
    }

    pub async fn say(&mut self, text: &str) -> grpcio::Result<()> {
        self.sink.send((say_frame(text), WriteFlags::default())).await
    }

    /// The next event, or the call's end.
    pub async fn next(&mut self) -> grpcio::Result<Option<ServerEvent>> {
        self.events.try_next().await
    }

    /// Messages until `count` of them have arrived, skipping other events.
    pub async fn messages(&mut self, count: usize) -> grpcio::Result<Vec<Message>> {
        let mut messages = Vec::with_capacity(count);
        while messages.len() < count {
            match self.next().await? {
                Some(ServerEvent { event: Some(server_event::Event::Message(m)), .. }) => messages.push(m),
                Some(_) => {}
                None => panic!("the call ended after {} of {count} messages", messages.len()),
            }
        }
        Ok(messages)
    }

    /// The status the call ends with (see [`failure`]).
    pub async fn failure(&mut self) -> grpcio::Error {
        failure(&mut self.events).await
    }

    /// Leaves cleanly: closes its side and waits for the server's OK.
    pub async fn leave(mut self) -> grpcio::Result<Vec<ServerEvent>> {
        greet::client::half_close(&mut self.sink).await?;
        let mut rest = Vec::new();
        while let Some(event) = self.events.try_next().await? {
            rest.push(event);
        }
        Ok(rest)
    }
}

/// The messages among `client chat`'s outputs: others' and its own, in order.
pub fn messages_in(outputs: &[greet::client::chat::Output]) -> Vec<Message> {
    use greet::client::chat::Output;
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Message(m) | Output::Sent(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

pub fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

pub fn texts(messages: &[Message]) -> Vec<String> {
    messages.iter().map(|m| m.text.clone()).collect()
}

pub fn history(client: &ChatClient, room: &str, limit: u32, before_seq: Option<u64>) -> grpcio::Result<Vec<Message>> {
    let req = HistoryRequest { room: room.to_string(), limit, before_seq, ..Default::default() };
    let mut stream = client.history_opt(&req, CallOption::default().timeout(DEADLINE))?;
    block_on(async {
        let mut messages = Vec::new();
        while let Some(event) = stream.try_next().await? {
            match event.event {
                Some(server_event::Event::Message(m)) => messages.push(m),
                other => panic!("History sends only messages, got {other:?}"),
            }
        }
        Ok(messages)
    })
}

/// `(room, members)` of every room, sorted.
pub fn rooms(client: &ChatClient) -> Vec<(String, u32)> {
    let resp = client.rooms_opt(&RoomsRequest::default(), CallOption::default().timeout(DEADLINE)).expect("Rooms");
    resp.rooms.iter().map(|r| (r.room.clone(), r.members)).collect()
}

/// The status code and message of a failed call.
pub fn status_of(error: grpcio::Error) -> (grpcio::RpcStatusCode, String) {
    match error {
        // A send that races the server's status reports it as RpcFinished.
        grpcio::Error::RpcFailure(status) | grpcio::Error::RpcFinished(Some(status)) => {
            (status.code(), status.message().to_string())
        }
        other => panic!("expected a status from the server, got {other:?}"),
    }
}
