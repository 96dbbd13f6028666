//! What each chat broker guarantees under faults, as the nemesis
//! (`nemesis/`, Jepsen style) measures it: three hosts in network
//! namespaces, the store, chat servers A (h1) and B (h2), a writer and a
//! reader on each, one fault, then a checker over what the clients recorded
//! (nemesis/README.md says what each count means). Each test runs the
//! harness once for one (broker, fault) and asserts exactly what that
//! broker promises there.
//!
//! A run takes 30 to 70 s. CI runs the tests not marked `#[ignore]` (nine
//! runs, about 7 minutes on 2 cores: every etcd fault, and Redis's control,
//! partition and killed primary); the others run with
//! `cargo test --release --test abuse -- nemesis:: --include-ignored`.
//! They need root (namespaces, iptables); elsewhere they fail saying so
//! (a fault test that cannot run is not a pass). The etcd tests build the pinned etcd with
//! `scripts/etcd.py` (Go) on first use.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

/// The harness's exit status when it is not root.
const NOT_ROOT: i32 = 77;

/// Runs `nemesis/nemesis.py` for one (broker, fault) with the release
/// `server`, alone (nothing else of this binary beside it); its summary.
fn nemesis(broker: &str, fault: &str, extra: &[&str]) -> Summary {
    let _alone = crate::alone();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(repo.join("nemesis").join("nemesis.py"))
        .args(["--broker", broker, "--fault", fault, "--server-bin", env!("CARGO_BIN_EXE_server")])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("python3 runs the nemesis harness");
    // Its table and notes, shown with --nocapture or when the test fails.
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    match out.status.code() {
        Some(0) => {}
        Some(NOT_ROOT) => panic!("the nemesis needs root (network namespaces, iptables): run the tests as root"),
        other => panic!("the nemesis harness itself failed (exit {other:?}); see its output above"),
    }
    let summary: Value = serde_json::from_slice(&out.stdout).expect("the harness prints one JSON summary");
    Summary(summary)
}

/// The checker's summary (nemesis/checker.py).
struct Summary(Value);

impl Summary {
    /// The harness noted that the Sentinels of h2 and h3 promoted another
    /// node before the heal (`--until-promoted`).
    fn assert_promoted_during_the_fault(&self) {
        let notes = self.0["notes"].as_array().map(Vec::as_slice).unwrap_or_default();
        assert!(
            notes.iter().filter_map(Value::as_str).any(|n| n.contains("the Sentinels of h2, h3 promoted")),
            "no failover during the fault, so nothing to lose: {}",
            self.0["notes"]
        );
    }

    fn n(&self, pointer: &str) -> u64 {
        self.0.pointer(pointer).and_then(Value::as_u64).unwrap_or_else(|| panic!("no count {pointer} in {}", self.0))
    }

    fn secs(&self, pointer: &str) -> f64 {
        self.0.pointer(pointer).and_then(Value::as_f64).unwrap_or_else(|| panic!("no seconds {pointer}"))
    }

    fn deaf(&self) -> Vec<String> {
        self.0["deaf_servers"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
    }

    /// Nothing acknowledged is lost, stored twice or renumbered, no seq names
    /// two messages, no reader missed one, both servers end with the same
    /// History and hear what was said after the heal.
    fn assert_safe(&self) {
        assert!(self.n("/acknowledged") > 0, "nothing was acknowledged at all");
        assert_eq!(self.n("/lost"), 0, "acknowledged then lost: {}", self.0["examples"]);
        assert_eq!(self.n("/duplicated"), 0, "stored twice: {}", self.0["examples"]);
        assert_eq!(self.n("/reused"), 0, "one (epoch, seq) named two messages: {}", self.0["examples"]);
        assert_eq!(self.n("/renumbered"), 0, "acknowledged with one seq, stored with another");
        assert_eq!(self.n("/reader_gaps"), 0, "a reader missed seqs: {}", self.0["readers"]);
        assert_eq!(self.deaf(), Vec::<String>::new(), "deaf servers: {}", self.0["deaf"]);
        assert!(self.0["settled"].as_bool().unwrap(), "the servers' Histories never agreed: {}", self.0["notes"]);
        assert!(self.n("/acknowledged_after_heal_kept") > 0, "nothing acknowledged after the heal");
    }

    /// During a partition the minority side's writer had nothing it sent
    /// acknowledged, while the majority's went on.
    fn assert_minority_refused(&self, minority: &str, majority: &str) {
        let during = |side: &str| self.n(&format!("/sides/{side}/acknowledged_during_fault"));
        assert_eq!(during(minority), 0, "the minority side ({minority}) acknowledged a Say sent during the fault");
        assert!(self.n(&format!("/sides/{minority}/refused")) + self.n(&format!("/sides/{minority}/timed_out")) > 0);
        assert!(during(majority) > 0, "the majority side ({majority}) stopped acknowledging");
        let window = self.secs(&format!("/sides/{majority}/unavailable_s"));
        assert!(window < 10.0, "the majority side ({majority}) went {window} s without an acknowledgement");
    }

    /// A's writer, its server killed, went on through B.
    fn assert_writer_moved_to_b(&self) {
        let used = self.0.pointer("/sides/A/servers_used").and_then(Value::as_array).expect("servers_used");
        assert!(used.iter().any(|v| v == "B"), "A's writer never used B: {used:?}");
        assert!(self.secs("/sides/A/unavailable_s") < 5.0, "A's writer waited too long for B");
    }
}

// --- etcd: a majority commits, a minority refuses. Measured on 2 shared
// cores (one run each): the majority's longest stretch without an
// acknowledgement was ~2.1 s in every fault (an election after the
// 1 s election timeout), nothing was ever lost, duplicated or renumbered.

/// h1 (the etcd leader, server A and its clients) cut off for 20 s: A's
/// side is the minority and acknowledges nothing sent during the cut (its
/// writer was refused for 20.8 s); B's side elects a leader and went on
/// after 2.0 s. Measured: 1,166 acknowledged, 0 lost.
#[test]
fn etcd_partition_of_the_leaders_host_loses_nothing_and_the_minority_refuses() {
    let s = nemesis("etcd", "partition-leader-host", &[]);
    s.assert_safe();
    s.assert_minority_refused("A", "B");
}

/// h2 (server B's host, a follower) cut off: now B's side is the minority
/// (refused for 20.9 s); A's side never noticed (0.2 s). Measured: 1,190
/// acknowledged, 0 lost.
#[test]
fn etcd_partition_of_a_followers_host_loses_nothing_and_the_minority_refuses() {
    let s = nemesis("etcd", "partition-replica-host", &[]);
    s.assert_safe();
    s.assert_minority_refused("B", "A");
}

/// h1 hears nothing from the others but can send: the leader there cannot
/// commit (the followers' answers are dropped), steps down, and h2 and h3
/// elect another. A's side acknowledged nothing sent meanwhile (20.5 s),
/// B's went on after 2.1 s. Measured: 1,157 acknowledged, 0 lost.
#[test]
fn etcd_one_way_partition_loses_nothing_and_the_deaf_side_refuses() {
    let s = nemesis("etcd", "one-way", &[]);
    s.assert_safe();
    s.assert_minority_refused("A", "B");
}

/// The leader SIGSTOPped for 10 s: the others elect a leader (B's side
/// waited 2.1 s); server A, whose first endpoint is the frozen member,
/// waited 9.4 s. Measured: 995 acknowledged, 0 lost.
#[test]
fn etcd_paused_leader_loses_nothing() {
    let s = nemesis("etcd", "pause-leader", &[]);
    s.assert_safe();
    assert!(s.n("/sides/B/acknowledged_during_fault") > 0, "nothing acknowledged while the leader was paused");
    assert!(s.secs("/sides/B/unavailable_s") < 10.0, "B's side waited as long as the pause");
}

/// The leader SIGKILLed, restarted from its data 5 s later: both sides
/// waited 2.1 s for the election. Measured: 942 acknowledged, 0 lost.
#[test]
fn etcd_killed_leader_loses_nothing() {
    let s = nemesis("etcd", "kill-leader", &[]);
    s.assert_safe();
    assert!(s.secs("/sides/A/unavailable_s") < 10.0 && s.secs("/sides/B/unavailable_s") < 10.0);
}

/// Server A SIGKILLed (restarted 20 s later): its writer went on through B
/// within 0.12 s, B has every message. Measured: 1,617 acknowledged, 0 lost.
/// A Say that A stored but died before echoing is acknowledged by the
/// backlog of the writer's resume on B (a resend is not echoed again): a CI
/// dry run, whose writer then joined B afresh, saw its three resends time
/// out and 15.1 s without an acknowledgement.
#[test]
fn etcd_killed_server_loses_nothing_and_its_clients_use_the_other() {
    let s = nemesis("etcd", "kill-server", &[]);
    s.assert_safe();
    s.assert_writer_moved_to_b();
}

/// The control: no fault, nothing refused (1,613 acknowledged).
#[test]
#[ignore = "CI time budget (about a minute): runs with --include-ignored"]
fn etcd_without_a_fault_refuses_nothing() {
    let s = nemesis("etcd", "none", &[]);
    s.assert_safe();
    assert_eq!(s.n("/sides/A/refused") + s.n("/sides/B/refused"), 0);
}

// --- Redis with Sentinels (one replica must confirm a message): what is
// true. Measured on 2 shared cores, one run each unless said.

/// The control: no fault, nothing lost or refused (1,615 acknowledged).
#[test]
fn redis_without_a_fault_loses_and_refuses_nothing() {
    let s = nemesis("redis", "none", &[]);
    s.assert_safe();
    assert_eq!(s.n("/sides/A/refused") + s.n("/sides/B/refused"), 0);
}

/// h1 (the primary, replica R1, server A) cut off for 20 s: the old
/// primary keeps acknowledging A's Says (R1, on the same host, satisfies
/// the one-replica rule) while the Sentinels promote R2, which has no
/// replica to confirm B's Says until the old nodes are reconfigured ~15 s
/// after the heal (B's side refused for ~35 s); then everything the old
/// primary acknowledged since the cut is gone. Writing goes on 25 s after
/// the heal, past that reconfiguration. Measured in three runs: 1,408–1,437
/// acknowledged, 604–607 lost, no server deaf, no seq reused (before the
/// reader fix of 3273130, three runs: 1,194–1,215 acknowledged, 602–605
/// lost, server A deaf after the heal and 190–211 of its numbers reused
/// for other messages). The cut lasts until the Sentinels of h2 and h3
/// have promoted R2 (`--until-promoted`): once in CI the two started their
/// failover in the same millisecond, each voted for itself, and the retry
/// (twice failover-timeout later) came after a 20 s heal — no promotion, so
/// nothing lost and this test failed on an outcome Redis allows.
#[test]
fn redis_partition_of_the_primarys_host_loses_acknowledged_messages_but_no_server_stays_deaf() {
    let s = nemesis("redis", "partition-leader-host", &["--after", "25", "--until-promoted", "60"]);
    s.assert_promoted_during_the_fault();
    assert!(s.n("/sides/A/acknowledged_during_fault") > 0, "the isolated primary acknowledged nothing");
    assert!(s.n("/lost") > 0, "the isolated primary's acknowledgements survived: the known loss is gone");
    assert_eq!(s.deaf(), Vec::<String>::new(), "deaf servers after the heal: {}", s.0["deaf"]);
    // docs/chat-ha.md: B's side may take a number A's side saw in the moment
    // between B's first acknowledgement after the heal and the first epoch
    // check (0 in every run so far; 190-211 before the reader fix).
    assert!(s.n("/reused") <= 20, "numbers reused beyond the moment before the epoch check: {}", s.0["examples"]);
    assert_eq!(s.n("/reader_gaps"), 0, "a reader missed seqs: {}", s.0["readers"]);
}

/// The same loss when h1 only stops hearing the others: its primary
/// goes on with R1 while the Sentinels promote R2. Measured: 1,372
/// acknowledged, 603 lost, no server deaf.
#[test]
#[ignore = "CI time budget (about a minute): runs with --include-ignored"]
fn redis_one_way_partition_of_the_primarys_host_loses_acknowledged_messages() {
    let s = nemesis("redis", "one-way", &["--after", "25", "--until-promoted", "60"]);
    s.assert_promoted_during_the_fault();
    assert!(s.n("/lost") > 0, "the deafened primary's acknowledgements survived: the known loss is gone");
    assert_eq!(s.deaf(), Vec::<String>::new(), "deaf servers after the heal: {}", s.0["deaf"]);
}

/// h2 (replica R2, server B) cut off: the primary keeps R1, so nothing is
/// lost; B's side cannot reach the primary (refused 20.6 s). Measured:
/// 1,206 acknowledged, 0 lost.
#[test]
#[ignore = "CI time budget (about a minute): runs with --include-ignored"]
fn redis_partition_of_a_replicas_host_loses_nothing() {
    let s = nemesis("redis", "partition-replica-host", &[]);
    s.assert_safe();
}

/// The primary SIGKILLed and restarted as a replica of the promoted one:
/// an acknowledged message was on a replica, so none is lost; both sides
/// waited ~4.3 s (the Sentinels' 3 s down-after). Measured: 843
/// acknowledged, 0 lost.
#[test]
fn redis_killed_primary_loses_nothing() {
    let s = nemesis("redis", "kill-leader", &[]);
    s.assert_safe();
}

/// The primary SIGSTOPped for 10 s: the Sentinels promote a replica, which
/// waits for a replica of its own; nothing is lost, but both sides were
/// refused for ~20 s (twice the pause). Measured twice: 409 and 410
/// acknowledged, 0 lost.
#[test]
#[ignore = "CI time budget (about a minute): runs with --include-ignored"]
fn redis_paused_primary_loses_nothing() {
    let s = nemesis("redis", "pause-leader", &[]);
    assert!(s.n("/acknowledged") > 0);
    assert_eq!(s.n("/lost"), 0, "acknowledged then lost: {}", s.0["examples"]);
    assert_eq!(s.n("/duplicated"), 0);
    assert_eq!(s.n("/reused"), 0);
    assert_eq!(s.deaf(), Vec::<String>::new(), "deaf servers: {}", s.0["deaf"]);
}

/// Server A SIGKILLed: its writer goes on through B within 0.14 s; nothing
/// lost (1,616 acknowledged).
#[test]
#[ignore = "CI time budget (about a minute): runs with --include-ignored"]
fn redis_killed_server_loses_nothing_and_its_clients_use_the_other() {
    let s = nemesis("redis", "kill-server", &[]);
    s.assert_safe();
    s.assert_writer_moved_to_b();
}

/// A harness SIGKILLed mid-run cannot run its own clean-up; its watchdog
/// (nemesis/watchdog.py) still kills every process in the run's network
/// namespaces and deletes them. Without the watchdog (`--no-watchdog`) the
/// same kill leaves both behind, which is what it is for (this test removes
/// them then).
#[test]
fn a_harness_killed_mid_run_leaves_no_namespace_or_process_behind() {
    let _alone = crate::alone();
    let (namespaces, processes) = killed_mid_run(&[]);
    assert!(namespaces.is_empty(), "namespaces left by a SIGKILLed harness: {namespaces:?}");
    assert!(processes.is_empty(), "processes of its namespaces still running: {processes:?}");

    let before = work_dirs();
    let (namespaces, processes) = killed_mid_run(&["--no-watchdog"]);
    remove(&namespaces, &processes);
    for dir in work_dirs().difference(&before) {
        let _ = std::fs::remove_dir_all(dir);
    }
    assert!(
        !namespaces.is_empty() && !processes.is_empty(),
        "without the watchdog a SIGKILL left nothing behind ({namespaces:?}, {processes:?}): the test above proves nothing"
    );
}

/// Starts a Redis run with no fault, waits (at most 90 s) until chat server
/// A and its clients run in h1, SIGKILLs the harness, then waits at most
/// 20 s for the run's namespaces to go; returns those still there and the
/// processes that ran in them and still run.
fn killed_mid_run(extra: &[&str]) -> (Vec<String>, Vec<u32>) {
    use std::time::{Duration, Instant};
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut harness = Command::new("python3")
        .arg(repo.join("nemesis").join("nemesis.py"))
        .args(["--broker", "redis", "--fault", "none", "--server-bin", env!("CARGO_BIN_EXE_server")])
        .args(["--max-seconds", "120"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("python3 runs the nemesis harness");
    let prefix = format!("nm{}-", harness.id());
    let h1 = format!("{prefix}h1");
    let deadline = Instant::now() + Duration::from_secs(90);
    // Redis primary and replica, Sentinel, server A, writer A, reader A.
    loop {
        let pids = pids_in(&h1);
        if pids.len() >= 6 {
            break;
        }
        if let Ok(Some(status)) = harness.try_wait() {
            panic!("the harness ended ({status}) before its run was up; see its output above");
        }
        assert!(Instant::now() < deadline, "h1 never ran its six processes: {pids:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut processes: Vec<u32> = namespaces_of(&prefix).iter().flat_map(|ns| pids_in(ns)).collect();
    processes.sort_unstable();
    assert!(processes.len() >= 6, "{processes:?}");
    harness.kill().expect("SIGKILL the harness");
    harness.wait().expect("reap the harness");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = namespaces_of(&prefix);
        let running: Vec<u32> = processes.iter().copied().filter(|pid| running(*pid)).collect();
        if (left.is_empty() && running.is_empty()) || Instant::now() >= deadline {
            return (left, running);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn namespaces_of(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|ns| ns.starts_with(prefix))
        .map(String::from)
        .collect()
}

fn pids_in(namespace: &str) -> Vec<u32> {
    let out = Command::new("ip").args(["netns", "pids", namespace]).output().expect("ip runs");
    String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// Whether `pid` is a process that has not exited (a zombie has).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// The harnesses' work directories (`nemesis-*` in the temporary directory).
fn work_dirs() -> std::collections::BTreeSet<std::path::PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("nemesis-"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills `processes` and deletes `namespaces` (what a run without its
/// watchdog left).
fn remove(namespaces: &[String], processes: &[u32]) {
    for pid in processes {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
    for ns in namespaces {
        for pid in pids_in(ns) {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
}
