//! An etcd cluster on loopback ports for the chat's etcd broker. etcd comes
//! from `scripts/etcd.py` (pinned, built from the Go module proxy, cached):
//! `make test` passes its directory in `GREET_ETCD`; without it the first
//! test that needs etcd runs the script. Which member leads is asked of the
//! members themselves (Maintenance.Status), polled with a deadline.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use greet::proto::etcdserverpb::StatusRequest;
use greet::proto::etcdserverpb_grpc::MaintenanceClient;
use grpcio::CallOption;

use super::chat::{free_port, poll, TempDir};
use super::process::repo_root;

/// The etcd binary (see the module doc); fails the test if it cannot be had.
pub fn etcd_binary() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = BIN.get_or_init(|| {
        let dir = match std::env::var_os("GREET_ETCD") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let script = repo_root().join("scripts/etcd.py");
                let out =
                    Command::new("python3").arg(&script).output().map_err(|e| format!("cannot run python3: {e}"))?;
                if !out.status.success() {
                    return Err(format!("{} failed:\n{}", script.display(), String::from_utf8_lossy(&out.stderr)));
                }
                PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
            }
        };
        Ok(dir.join("etcd"))
    });
    let path = found.as_ref().unwrap_or_else(|e| panic!("etcd is not available: {e}"));
    assert!(path.is_file(), "{} is missing: run `python3 scripts/etcd.py`", path.display());
    path.clone()
}

/// One member: its process and how it was started.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn spawn(&mut self, state: &str) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(etcd_binary())
            .args(&self.args)
            .args(["--initial-cluster-state", state])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        self.child = Some(child);
    }

    /// Starts it again from its data dir (after [`Member::kill`]), as a supervisor would.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn("existing");
    }

    /// If its process has exited: which member, how, and the end of its log.
    fn exited(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(format!("{} exited ({status}); {}", self.name, self.log_tail()))
    }

    /// The member's name and the last lines of its log.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(3).collect();
        format!("{}'s log ends (last line first): {tail:?}", self.name)
    }

    /// The member this one follows (its own id when it leads), if it has a leader.
    fn status(&self) -> Option<(u64, u64)> {
        let env = std::sync::Arc::new(grpcio::EnvBuilder::new().cq_count(1).build());
        let channel = grpcio::ChannelBuilder::new(env).connect(&self.endpoint());
        let status = MaintenanceClient::new(channel)
            .status_opt(&StatusRequest::default(), CallOption::default().timeout(Duration::from_millis(500)))
            .ok()?;
        let me = status.header.as_ref()?.member_id;
        (status.leader != 0).then_some((me, status.leader))
    }
}

/// An etcd cluster of `n` members on free loopback ports, each with its own
/// data dir; every member killed on drop.
pub struct EtcdCluster {
    pub members: Vec<Member>,
    _dir: TempDir,
}

impl EtcdCluster {
    /// Starts the members and returns once they agree on a leader. Their
    /// ports are picked free and then released, so one may be taken before
    /// its member binds it (another test's server, or any outgoing
    /// connection's local port: the same ephemeral range); a member that
    /// exits while the cluster forms is such a loss. Then, or when no leader
    /// is agreed on within 30 s, the whole cluster is started again on fresh
    /// ports (three tries, each failure printed with the members' log tails).
    pub fn start(n: usize) -> EtcdCluster {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match EtcdCluster::try_start(n) {
                Ok(cluster) => return cluster,
                Err(why) => {
                    eprintln!("etcd cluster did not form, starting it again on fresh ports: {why}");
                    failures.push(why);
                }
            }
        }
        panic!("an etcd cluster of {n} did not form in three tries: {failures:#?}")
    }

    fn try_start(n: usize) -> Result<EtcdCluster, String> {
        let dir = TempDir::new("etcd");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let cluster: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}")).collect();
        let token = format!("greet-test-{}-{}", std::process::id(), ports[0].0);
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("e{i}");
            let args = vec![
                format!("--name={name}"),
                format!("--data-dir={}", dir.path().join(&name).display()),
                format!("--listen-client-urls=http://127.0.0.1:{client}"),
                format!("--advertise-client-urls=http://127.0.0.1:{client}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-cluster={}", cluster.join(",")),
                format!("--initial-cluster-token={token}"),
                "--auto-compaction-mode=revision".to_string(),
                "--auto-compaction-retention=100000".to_string(),
            ];
            let log = dir.path().join(format!("{name}.log"));
            let mut member = Member { name, client_port: *client, args, child: None, log };
            member.spawn("new");
            members.push(member);
        }
        let mut cluster = EtcdCluster { members, _dir: dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(exited) = cluster.members.iter_mut().find_map(Member::exited) {
                return Err(exited);
            }
            if cluster.agreed_leader().is_some() {
                return Ok(cluster);
            }
            if std::time::Instant::now() > deadline {
                let tails: Vec<String> = cluster.members.iter().map(Member::log_tail).collect();
                return Err(format!("no leader agreed on within 30 s; the members' logs end: {tails:#?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    /// `etcd://` and every member's endpoint, `first` first.
    pub fn url_from(&self, first: usize) -> String {
        let mut endpoints: Vec<String> = self.members.iter().map(Member::endpoint).collect();
        endpoints.rotate_left(first);
        format!("etcd://{}", endpoints.join(","))
    }

    pub fn url(&self) -> String {
        self.url_from(0)
    }

    /// The index of the member that leads, once the live members agree on one (30 s at most).
    pub fn leader(&self) -> usize {
        poll("the etcd members to agree on a leader", Duration::from_secs(30), || self.agreed_leader())
    }

    fn agreed_leader(&self) -> Option<usize> {
        let seen: Vec<(u64, u64)> =
            self.members.iter().filter(|m| m.child.is_some()).filter_map(Member::status).collect();
        let live = self.members.iter().filter(|m| m.child.is_some()).count();
        let leader = seen.first()?.1;
        if seen.len() < live || seen.iter().any(|&(_, l)| l != leader) {
            return None;
        }
        self.members.iter().position(|m| m.child.is_some() && m.status().is_some_and(|(me, _)| me == leader))
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            member.kill();
        }
    }
}
