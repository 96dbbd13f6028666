//! Envoy is the default front: `make cluster` (`scripts/cluster.sh`) puts
//! Envoy before the replicas unless `PROXY=haproxy`, and `make
//! security-check` targets the bare server and Envoy unless told otherwise
//! (docs/deployment.md). HAProxy does not hold one attack that Envoy holds
//! (docs/security.md); these tests keep the defaults where they are.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures::executor::block_on;

use crate::common::process::{free_port, repo_root};

/// `scripts/cluster.sh stop` for this cluster's directory, on drop.
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    fn command(&self) -> Command {
        let mut command = Command::new(repo_root().join("scripts/cluster.sh"));
        command.env("CLUSTER_DIR", self.dir.path()).env_remove("PROXY");
        command
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.command().arg("stop").output();
    }
}

fn pid_alive(file: &Path) -> bool {
    let pid: i32 = match std::fs::read_to_string(file) {
        Ok(text) => text.trim().parse().unwrap_or(0),
        Err(_) => return false,
    };
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

#[test]
fn cluster_sh_without_proxy_puts_envoy_in_front_of_the_replicas() {
    let cluster = Cluster { dir: tempfile::Builder::new().prefix("greet-cluster").tempdir().unwrap() };
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_server")).parent().unwrap();
    let port = free_port();
    let out = cluster.command().arg("start").arg(bin_dir).args(["2", &port.to_string()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cluster.sh start: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("2 replicas behind Envoy at 127.0.0.1:{port}")), "{stdout}");
    assert!(pid_alive(&cluster.dir.path().join("envoy.pid")), "Envoy runs");
    assert!(!cluster.dir.path().join("haproxy.pid").exists(), "no HAProxy");

    // Calls through the front reach both replicas.
    let client =
        greet::client::Client::new(greet::client::connect(&format!("127.0.0.1:{port}")), Duration::from_secs(10));
    for _ in 0..20 {
        assert_eq!(block_on(client.say_hello()).unwrap(), "Hello");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_client"))
        .args(["--addr", &format!("127.0.0.1:{port}"), "load", "--calls", "400", "--concurrency", "4", "--json"])
        .output()
        .unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("client load: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(summary["ok"], 400, "{summary}");
    for replica in ["replica-1", "replica-2"] {
        assert!(summary["instances"][replica].as_u64().unwrap_or(0) > 0, "{replica} served none: {summary}");
    }
}

fn security_check(args: &[&str]) -> std::process::Output {
    Command::new("/usr/bin/python3")
        .arg(repo_root().join("scripts/security_check.py"))
        .args(args)
        .output()
        .expect("/usr/bin/python3 runs scripts/security_check.py")
}

#[test]
fn security_check_targets_the_bare_server_and_envoy_by_default() {
    let out = security_check(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(help.contains("(default: bare,envoy)"), "{help}");

    let out = security_check(&["--targets", "bare,nginx"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "security-check: --targets nginx: each must be one of bare, envoy, proxied, grpc-go\n"
    );
}
