//! The Kubernetes base (`deploy/k8s`, `kubectl apply -k deploy/k8s`) read
//! offline and checked against the server itself: every container argument
//! is a flag of `server --help` and the real server starts with them; the
//! readiness probe, the Services and the Prometheus annotation name the ports
//! of `--addr` and `--admin-addr`; the termination grace period covers
//! `--drain-delay` + `--grace`, and the readiness probe notices a drain well
//! inside the drain delay.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_yaml::Value;

use crate::common::process::{http_get, repo_root, Process, ReadyFile};

fn k8s_dir() -> PathBuf {
    repo_root().join("deploy/k8s")
}

fn load(file: &str) -> Value {
    let path = k8s_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

/// `value` at a path of mapping keys and sequence indices, e.g. "spec.template.spec.containers.0".
fn at<'a>(value: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(value, |v, key| {
        let next = match key.parse::<usize>() {
            Ok(i) => v.get(i),
            Err(_) => v.get(key),
        };
        next.unwrap_or_else(|| panic!("no {key:?} on the way to {path:?} in {v:?}"))
    })
}

fn str_at<'a>(value: &'a Value, path: &str) -> &'a str {
    at(value, path).as_str().unwrap_or_else(|| panic!("{path} is not a string"))
}

fn u64_at(value: &Value, path: &str) -> u64 {
    at(value, path).as_u64().unwrap_or_else(|| panic!("{path} is not a number"))
}

fn deployment() -> Value {
    let d = load("deployment.yaml");
    assert_eq!(str_at(&d, "kind"), "Deployment");
    d
}

fn container(d: &Value) -> &Value {
    let containers = at(d, "spec.template.spec.containers").as_sequence().expect("containers is a list");
    assert_eq!(containers.len(), 1, "one container, the server");
    &containers[0]
}

fn args(d: &Value) -> Vec<String> {
    at(container(d), "args")
        .as_sequence()
        .expect("args is a list")
        .iter()
        .map(|a| a.as_str().map(str::to_string).unwrap_or_else(|| panic!("argument {a:?} is not a string")))
        .collect()
}

/// The value after `flag` (as `--flag VALUE` or `--flag=VALUE`).
fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == name {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&format!("{name}=")).map(str::to_string)
        }
    })
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or_else(|| panic!("{addr:?} has no port"))
}

fn duration_flag(args: &[String], name: &str) -> Duration {
    let text = flag(args, name).unwrap_or_else(|| panic!("the Deployment passes {name}"));
    greet::duration::parse(&text).unwrap_or_else(|e| panic!("{name} {text}: {e}"))
}

/// The containerPort named `name`.
fn container_port(d: &Value, name: &str) -> u64 {
    at(container(d), "ports")
        .as_sequence()
        .expect("ports is a list")
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|p| p.get("containerPort").and_then(Value::as_u64))
        .unwrap_or_else(|| panic!("no containerPort named {name}"))
}

#[test]
fn the_kustomization_lists_every_manifest_of_deploy_k8s_and_each_is_one_object() {
    let k = load("kustomization.yaml");
    assert_eq!(str_at(&k, "kind"), "Kustomization");
    let mut listed: Vec<String> = at(&k, "resources")
        .as_sequence()
        .expect("resources is a list")
        .iter()
        .map(|r| r.as_str().expect("a file name").to_string())
        .collect();
    listed.sort();
    let mut present: Vec<String> = std::fs::read_dir(k8s_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    present.sort();
    assert_eq!(listed, present, "kustomization.yaml lists exactly the manifests beside it");
    for file in &listed {
        let v = load(file);
        assert!(v.get("apiVersion").is_some() && v.get("kind").is_some(), "{file}: one Kubernetes object");
        assert!(
            v.get("metadata").and_then(|m| m.get("namespace")).is_none(),
            "{file}: no namespace (kustomize sets it)"
        );
    }
}

#[test]
fn every_container_argument_is_a_server_flag_and_the_server_starts_with_them() {
    let d = deployment();
    assert_eq!(at(container(&d), "command").as_sequence().unwrap()[0].as_str(), Some("server"));
    let args = args(&d);
    let help = Command::new(env!("CARGO_BIN_EXE_server")).arg("--help").output().expect("server --help runs");
    let help = String::from_utf8_lossy(&help.stdout);
    let flags: Vec<&String> = args.iter().filter(|a| a.starts_with("--")).collect();
    assert!(flags.len() >= 8, "the Deployment configures the server: {args:?}");
    for a in &flags {
        let name = a.split('=').next().unwrap();
        assert!(help.contains(&format!("{name} ")), "{name} is not a flag of `server --help`:\n{help}");
    }

    // The broker names Redis Sentinels: redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER_NAME.
    let broker = flag(&args, "--broker").expect("chat replicas share rooms through a broker");
    let rest = broker.strip_prefix("redis+sentinel://").unwrap_or_else(|| panic!("{broker}: a Sentinel URL"));
    let (sentinels, master) = rest.split_once('/').unwrap_or_else(|| panic!("{broker}: no /MASTER_NAME"));
    assert!(!master.is_empty() && !master.contains('/'), "{broker}: one master name");
    for sentinel in sentinels.split(',') {
        assert!(port_of(sentinel) > 0, "{broker}: {sentinel} is HOST:PORT");
    }

    // The real server accepts the same arguments: the listen addresses moved
    // to free loopback ports, the pod name filled in, the data directory a
    // temporary one, and without the broker (no Sentinel here).
    let data = tempfile::tempdir().unwrap();
    let mut local = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let (name, value) = (&args[i], args.get(i + 1).cloned().unwrap_or_default());
        match name.as_str() {
            "--broker" => {}
            "--addr" | "--admin-addr" => local.extend([name.clone(), "127.0.0.1:0".to_string()]),
            "--data-dir" => local.extend([name.clone(), data.path().display().to_string()]),
            _ => local.extend([name.clone(), value.replace("$(POD_NAME)", "greet-7d9f-abcde")]),
        }
        i += 2;
    }
    let ready = ReadyFile::new();
    let mut command = Command::new(env!("CARGO_BIN_EXE_server"));
    command.args(&local).arg("--ready-file").arg(ready.path());
    let mut server = Process::spawn(command);
    let started = server.wait_ready(&ready);
    let admin = started.admin.expect("--admin-addr serves the admin port");
    let (status, metrics) = http_get(&admin, "/metrics");
    assert_eq!(status, 200, "/metrics on the admin port: {metrics}");
}

#[test]
fn the_probe_the_services_and_the_scrape_annotation_name_the_servers_ports() {
    let d = deployment();
    let args = args(&d);
    let grpc = port_of(&flag(&args, "--addr").expect("--addr"));
    let admin = port_of(&flag(&args, "--admin-addr").expect("--admin-addr"));
    assert_ne!(grpc, admin);
    assert_eq!(container_port(&d, "grpc"), grpc, "containerPort grpc is --addr's");
    assert_eq!(container_port(&d, "admin"), admin, "containerPort admin is --admin-addr's");

    let c = container(&d);
    assert_eq!(u64_at(c, "readinessProbe.grpc.port"), grpc, "the readiness probe asks gRPC health on --addr's port");
    assert!(at(c, "readinessProbe.grpc").get("service").is_none(), "the whole server's health (service \"\")");

    let annotations = at(&d, "spec.template.metadata.annotations");
    let annotation = |key: &str| annotations.get(key).and_then(Value::as_str).unwrap_or_else(|| panic!("no {key}"));
    assert_eq!(annotation("prometheus.io/scrape"), "true");
    assert_eq!(annotation("prometheus.io/port"), admin.to_string(), "Prometheus scrapes --admin-addr's port");
    assert_eq!(annotation("prometheus.io/path"), "/metrics");

    let s = load("service.yaml");
    assert_eq!(str_at(&s, "metadata.name"), "greet-headless");
    assert_eq!(str_at(&s, "spec.clusterIP"), "None", "headless: DNS lists every ready pod for round_robin");
    let port = at(&s, "spec.ports.0");
    assert_eq!(u64_at(port, "port"), grpc, "dns:///greet-headless.NS.svc.cluster.local:{grpc}");
    assert_eq!(str_at(port, "targetPort"), "grpc");
}

#[test]
fn termination_grace_covers_the_drain_and_readiness_fails_inside_the_drain_delay() {
    let d = deployment();
    let args = args(&d);
    let drain_delay = duration_flag(&args, "--drain-delay");
    let grace = duration_flag(&args, "--grace");
    let termination = Duration::from_secs(u64_at(&d, "spec.template.spec.terminationGracePeriodSeconds"));
    assert!(
        termination > drain_delay + grace,
        "terminationGracePeriodSeconds {termination:?} must exceed --drain-delay {drain_delay:?} + --grace {grace:?}"
    );
    // Kubernetes takes the pod out of the Service once the probe has failed
    // failureThreshold times in a row; that must happen while it still serves.
    let probe = at(container(&d), "readinessProbe");
    let noticed = Duration::from_secs(u64_at(probe, "periodSeconds") * u64_at(probe, "failureThreshold"));
    assert!(noticed < drain_delay, "readiness fails after {noticed:?}, inside --drain-delay {drain_delay:?}");
    let age = duration_flag(&args, "--max-connection-age");
    assert!(age > Duration::ZERO, "--max-connection-age is set so clients rebalance");
}

#[test]
fn the_pdb_and_the_service_select_the_deployments_pods() {
    let d = deployment();
    let labels = at(&d, "spec.template.metadata.labels").as_mapping().expect("pod labels");
    let selects = |selector: &Value, what: &str| {
        let selector = selector.as_mapping().unwrap_or_else(|| panic!("{what}: a selector"));
        assert!(!selector.is_empty(), "{what}: an empty selector selects everything");
        for (k, v) in selector {
            assert_eq!(labels.get(k), Some(v), "{what} selects {k:?}={v:?}, which the pods do not carry");
        }
    };
    selects(at(&d, "spec.selector.matchLabels"), "the Deployment");
    selects(at(&load("service.yaml"), "spec.selector"), "the Service");
    let pdb = load("pdb.yaml");
    assert_eq!(str_at(&pdb, "kind"), "PodDisruptionBudget");
    selects(at(&pdb, "spec.selector.matchLabels"), "the PodDisruptionBudget");
    let replicas = u64_at(&d, "spec.replicas");
    let unavailable = u64_at(&pdb, "spec.maxUnavailable");
    assert!(
        unavailable >= 1 && unavailable < replicas,
        "a disruption leaves replicas serving: {unavailable} of {replicas}"
    );
}
