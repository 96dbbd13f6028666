//! The OCI images (`make image`, `image/build.sh`), built once per run from
//! the release binaries these tests were built with, and run with podman
//! (as root, with `image/containers.conf`) on the host network, serving on
//! 127.0.0.1 only: what is in the server image, its user, its /data volume on
//! a read-only root, SIGTERM through `podman stop`, the client image, the
//! exported archive, and the Kubernetes base naming the same image.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use futures::executor::block_on;
use greet::proto::health::health_check_response::ServingStatus;
use greet::proto::health::HealthCheckRequest;
use greet::proto::health_grpc::HealthClient;
use grpcio::CallOption;

use crate::common::chat::{self, history, texts, Member};
use crate::common::process::{repo_root, ReadyFile, READY_TIMEOUT};
use crate::common::*;

/// The user the image runs as (image/build.sh, image/server.Containerfile).
const UID: u32 = 65532;
/// The bound on the server image, uncompressed: the goal, 25 MB.
/// Measured at 23.86 MB, from `make build`'s binaries and from `cargo test`'s
/// alike; 26.19 MB without build.rs's link-time cuts (packed relative
/// relocations, libstdc++ linked statically), and 27.5 MB before those, the
/// SQLite extensions left out (.cargo/config.toml) and env_logger without
/// regex (Cargo.toml) (docs/operations.md, "The image").
const MAX_SERVER_IMAGE_BYTES: u64 = 25_000_000;

fn server_image() -> String {
    format!("greet-server:{}", env!("CARGO_PKG_VERSION"))
}

fn client_image() -> String {
    format!("greet-client:{}", env!("CARGO_PKG_VERSION"))
}

/// podman with the project's settings (runc, ulimits podman can set here).
fn podman() -> Command {
    let mut command = Command::new("podman");
    command.env("CONTAINERS_CONF", repo_root().join("image/containers.conf"));
    command
}

fn output(mut command: Command) -> Output {
    command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e} (podman: scripts/ensure-deps.sh podman)"))
}

/// Runs `command`; its stdout, trimmed; panics with its stderr if it fails.
fn stdout_of(command: Command) -> String {
    let shown = format!("{command:?}");
    let out = output(command);
    assert!(out.status.success(), "{shown} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn podman_stdout(args: &[&str]) -> String {
    let mut command = podman();
    command.args(args);
    stdout_of(command)
}

/// Runs podman with `args` whatever comes of it, never panicking (clean-up on
/// drop, logs for a failure message).
fn podman_output(args: &[&str]) -> Option<Output> {
    podman().args(args).output().ok()
}

/// What `image/build.sh` produced for this run.
struct Built {
    out: PathBuf,
    seconds: f64,
}

impl Built {
    fn archive(&self, image: &str) -> PathBuf {
        self.out.join(format!("{}.docker.tar", image.replace(':', "-")))
    }
}

/// Builds both images once per test run, from the binaries cargo built for it.
fn built() -> &'static Built {
    static BUILT: OnceLock<Result<Built, String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| {
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_server")).parent().expect("the binaries' directory");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("image-it");
        let started = Instant::now();
        let run = Command::new(repo_root().join("image/build.sh"))
            .arg(bin_dir)
            .arg(&out)
            .env("CONTAINERS_CONF", repo_root().join("image/containers.conf"))
            .output()
            .map_err(|e| format!("cannot run image/build.sh: {e}"))?;
        if !run.status.success() {
            return Err(format!("image/build.sh failed: {}", String::from_utf8_lossy(&run.stderr)));
        }
        Ok(Built { out, seconds: started.elapsed().as_secs_f64() })
    });
    result.as_ref().unwrap_or_else(|why| panic!("{why}"))
}

/// A container of the server image on the host network, serving on
/// 127.0.0.1 (a free port it picks and writes to its `--ready-file`, in a host
/// directory mounted at /ready); removed on drop.
struct ServerContainer {
    name: String,
    addr: String,
    ready: ReadyFile,
}

impl ServerContainer {
    /// `podman run` with a read-only root (and no tmpfs on it), `podman_args`
    /// before the image and `server_args` after the image's entrypoint
    /// (`server --data-dir /data`); `--stream-interval 0` unless they set it.
    fn start(podman_args: &[&str], server_args: &[&str]) -> ServerContainer {
        built();
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("greet-it-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        let ready = ReadyFile::new();
        let ready_dir = ready.path().parent().expect("the ready file's directory").to_path_buf();
        std::os::unix::fs::chown(&ready_dir, Some(UID), Some(UID)).expect("chown the ready directory");
        let mut command = podman();
        command
            .args(["run", "--detach", "--name", &name, "--network", "host", "--read-only", "--read-only-tmpfs=false"])
            .args(["--env", "RUST_LOG=info", "--volume"])
            .arg(format!("{}:/ready", ready_dir.display()))
            .args(podman_args)
            .arg(server_image())
            .args(["--addr", "127.0.0.1:0", "--ready-file", "/ready/ready.json"])
            .args(server_args);
        if !server_args.contains(&"--stream-interval") {
            command.args(["--stream-interval", "0"]);
        }
        let mut container = ServerContainer { name, addr: String::new(), ready };
        stdout_of(command);
        let ready = container.ready.wait(READY_TIMEOUT, || !container.running());
        container.addr =
            ready.unwrap_or_else(|why| panic!("{}: {why}; it logged: {}", container.name, container.logs())).grpc;
        container
    }

    fn running(&self) -> bool {
        podman_stdout(&["inspect", "--format", "{{.State.Running}}", &self.name]) == "true"
    }

    fn inspect(&self, format: &str) -> String {
        podman_stdout(&["inspect", "--format", format, &self.name])
    }

    /// What the server logged (stderr).
    fn logs(&self) -> String {
        match podman_output(&["logs", &self.name]) {
            Some(out) => format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
            None => "(podman logs did not run)".to_string(),
        }
    }

    /// `podman stop -t grace`: SIGTERM, SIGKILL after `grace`. Returns how long it took.
    fn stop(&self, grace: Duration) -> Duration {
        let started = Instant::now();
        podman_stdout(&["stop", "--time", &grace.as_secs().to_string(), &self.name]);
        started.elapsed()
    }
}

impl Drop for ServerContainer {
    fn drop(&mut self) {
        // --volumes: the anonymous volume on /data when the test named none.
        podman_output(&["rm", "--force", "--volumes", "--time", "0", &self.name]);
    }
}

/// A named podman volume, removed on drop.
struct Volume(String);

impl Volume {
    fn create() -> Volume {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("greet-it-data-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        podman_stdout(&["volume", "create", &name]);
        Volume(name)
    }

    fn at_data(&self) -> String {
        format!("{}:/data", self.0)
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        podman_output(&["volume", "rm", "--force", &self.0]);
    }
}

fn health_status(addr: &str) -> ServingStatus {
    let client = HealthClient::new(greet::client::connect(addr));
    let response = client
        .check_opt(&HealthCheckRequest::default(), CallOption::default().timeout(Duration::from_secs(10)))
        .expect("grpc.health.v1.Health/Check answers");
    response.status.enum_value().expect("a known status")
}

/// Every regular file under `root`, relative to it.
fn files_under(root: &Path) -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                dirs.push(entry.path());
            } else {
                files.insert(entry.path().strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    files
}

#[test]
fn the_server_image_is_at_most_25_mb_and_holds_the_binary_its_libraries_the_ca_bundle_and_a_user() {
    let built = built();
    let image = format!("localhost/{}", server_image());
    let size: u64 = podman_stdout(&["image", "inspect", "--format", "{{.Size}}", &image]).parse().unwrap();
    eprintln!("{image}: {size} bytes uncompressed; both images built and exported in {:.1} s", built.seconds);
    assert!(size <= MAX_SERVER_IMAGE_BYTES, "{image} is {size} bytes, over {MAX_SERVER_IMAGE_BYTES}");

    let root = PathBuf::from(podman_stdout(&["image", "mount", &image]));
    let files = files_under(&root);
    let data = std::fs::metadata(root.join("data"));
    let passwd = std::fs::read_to_string(root.join("etc/passwd"));
    podman_stdout(&["image", "unmount", &image]);
    let expected: BTreeSet<String> = [
        "usr/local/bin/server",
        "etc/passwd",
        "etc/group",
        "etc/ssl/certs/ca-certificates.crt",
        "lib64/ld-linux-x86-64.so.2",
        "lib/x86_64-linux-gnu/libc.so.6",
        "lib/x86_64-linux-gnu/libm.so.6",
        "lib/x86_64-linux-gnu/libgcc_s.so.1",
        "lib/x86_64-linux-gnu/libssl.so.3",
        "lib/x86_64-linux-gnu/libcrypto.so.3",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(files, expected, "the image holds exactly the binary, what ldd lists, the CA bundle and the user");
    let passwd = passwd.unwrap();
    assert!(passwd.lines().any(|l| l.starts_with(&format!("greet:x:{UID}:{UID}:"))), "{passwd}");
    use std::os::unix::fs::MetadataExt;
    let data = data.expect("the image has /data");
    assert_eq!((data.uid(), data.gid()), (UID, UID), "/data belongs to the image's user");

    let config = podman_stdout(&["image", "inspect", "--format", "{{.Config.User}} {{.Config.Volumes}}", &image]);
    assert_eq!(config, format!("{UID}:{UID} map[/data:{{}}]"));
}

#[test]
fn the_server_container_serves_health_and_the_four_call_patterns_and_the_client_image_calls_it() {
    let server = ServerContainer::start(&[], &[]);
    assert_eq!(health_status(&server.addr), ServingStatus::SERVING);

    let client = greet::client::Client::new(greet::client::connect(&server.addr), Duration::from_secs(30));
    assert_eq!(block_on(client.say_hello()).unwrap(), "Hello");
    let mut got = Vec::new();
    block_on(client.server_stream(&demo_names(), |m| got.push(m))).unwrap();
    assert_eq!(got, ["Hello Akhil", "Hello Alice", "Hello Bob"]);
    assert_eq!(block_on(client.client_stream(&demo_names(), Duration::ZERO)).unwrap(), got);
    let mut bidi = Vec::new();
    block_on(client.bidi(&demo_names(), Duration::ZERO, |m| bidi.push(m))).unwrap();
    assert_eq!(bidi, got);

    // The client image, on the same base layer, calls it.
    let out = podman_stdout(&[
        "run",
        "--rm",
        "--network",
        "host",
        "--read-only",
        "--read-only-tmpfs=false",
        &client_image(),
        "--addr",
        &server.addr,
        "server-stream",
    ]);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["Hello Akhil", "Hello Alice", "Hello Bob"], "{out}");
}

#[test]
fn the_servers_process_runs_as_uid_65532_not_root() {
    let server = ServerContainer::start(&[], &[]);
    let pid = server.inspect("{{.State.Pid}}");
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the container's process is on the host");
    let ids = |key: &str| -> Vec<u32> {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in {status}"));
        line.split_whitespace().skip(1).map(|n| n.parse().unwrap()).collect()
    };
    assert_eq!(ids("Uid:"), [UID; 4], "real, effective, saved and filesystem uid");
    assert_eq!(ids("Gid:"), [UID; 4], "real, effective, saved and filesystem gid");
    assert_eq!(server.inspect("{{.HostConfig.ReadonlyRootfs}}"), "true");
}

#[test]
fn chat_history_on_the_data_volume_survives_a_new_container_on_a_read_only_root() {
    let volume = Volume::create();
    let said: Vec<String> = (1..=3).map(|i| format!("kept {i}")).collect();
    {
        let server = ServerContainer::start(&["--volume", &volume.at_data()], &[]);
        let client = chat::client(&server.addr);
        let mut ann = Member::join_blocking(&client, "image", "ann");
        block_on(async {
            for text in &said {
                ann.say(text).await.unwrap();
            }
            ann.messages(said.len()).await.unwrap()
        });
        block_on(ann.leave()).unwrap();
        server.stop(Duration::from_secs(20));
    }
    let server = ServerContainer::start(&["--volume", &volume.at_data()], &[]);
    let client = chat::client(&server.addr);
    assert_eq!(texts(&history(&client, "image", 10, None).unwrap()), said, "the history the first container stored");
}

#[test]
fn podman_stop_drains_the_server_in_the_container_within_the_grace_period() {
    let grace = Duration::from_secs(30);
    let server = ServerContainer::start(&[], &["--stream-interval", "400ms", "--drain-delay", "1s", "--grace", "15s"]);
    let names: Vec<String> = (1..=6).map(|i| format!("n{i}")).collect();
    let (first_tx, first) = mpsc::channel();
    let addr = server.addr.clone();
    let call_names = names.clone();
    let stream = std::thread::spawn(move || {
        let client = greet::client::Client::new(greet::client::connect(&addr), Duration::from_secs(30));
        let mut got = Vec::new();
        let result = block_on(client.server_stream(&call_names, |m| {
            let _ = first_tx.send(());
            got.push(m)
        }));
        result.map(|()| got)
    });
    first.recv_timeout(Duration::from_secs(10)).expect("the stream's first message");
    let took = server.stop(grace);
    let got = stream.join().unwrap().expect("the stream in flight finishes OK through the drain");
    assert_eq!(got, greetings(&names));
    assert!(took < grace, "podman stop took {took:?}: the server did not exit on SIGTERM within {grace:?}");
    assert_eq!(server.inspect("{{.State.ExitCode}}"), "0", "exit 0, not SIGKILLed (137)");
    let logs = server.logs();
    assert!(logs.contains("server stopped (Drained)"), "{logs}");
}

#[test]
fn the_exported_archive_loads_back_with_podman_load_into_an_empty_store_and_runs() {
    let built = built();
    let archive = built.archive(&server_image());
    let id = podman_stdout(&["image", "inspect", "--format", "{{.Id}}", &format!("localhost/{}", server_image())]);
    let store = tempfile::Builder::new().prefix("greet-store").tempdir().unwrap();
    let at = |dir: &str| store.path().join(dir).display().to_string();
    let (root, runroot, tmpdir) = (at("root"), at("run"), at("tmp"));
    // A store, run directory and libpod state of its own, so that nothing
    // here touches the host's (the temp dir goes with all of it).
    let isolated = |args: &[&str]| {
        let mut c = podman();
        c.args(["--root", &root, "--runroot", &runroot, "--tmpdir", &tmpdir, "--storage-driver", "vfs"]).args(args);
        stdout_of(c)
    };
    let loaded = isolated(&["load", "--quiet", "--input", &archive.display().to_string()]);
    assert!(loaded.contains(&server_image()), "podman load: {loaded}");
    let images = isolated(&["images", "--no-trunc", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}"]);
    assert_eq!(images.lines().count(), 1, "{images}");
    assert!(images.starts_with(&format!("sha256:{id} ")), "the loaded image is the built one ({id}): {images}");
    assert!(images.ends_with(&format!("/{}", server_image())), "{images}");
    let version = isolated(&["run", "--rm", "--network", "none", &server_image(), "--version"]);
    assert!(version.ends_with(&format!(" {}", env!("CARGO_PKG_VERSION"))), "server --version: {version}");
}

/// The `key` value of the Containerfile line starting with `instruction`.
fn containerfile(instruction: &str) -> String {
    let path = repo_root().join("image/server.Containerfile");
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{instruction} ")))
        .unwrap_or_else(|| panic!("no {instruction} in {}", path.display()))
        .trim()
        .to_string()
}

#[test]
fn the_k8s_base_rendered_by_kustomize_runs_the_image_make_image_builds_as_its_user_on_its_volume() {
    let mut kustomize = Command::new("kubectl");
    kustomize.arg("kustomize").arg(repo_root().join("deploy/k8s"));
    let rendered = stdout_of(kustomize);
    let deployment = rendered
        .split("\n---\n")
        .map(|doc| serde_yaml::from_str::<serde_yaml::Value>(doc).expect("kustomize writes YAML"))
        .find(|doc| doc.get("kind").and_then(|k| k.as_str()) == Some("Deployment"))
        .expect("the base renders a Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["image"].as_str(), Some(server_image().as_str()), "the image make image builds");
    assert_eq!(container["imagePullPolicy"].as_str(), Some("IfNotPresent"), "a loaded image is not pulled");

    let user = containerfile("USER");
    assert_eq!(user, format!("{UID}:{UID}"));
    assert_eq!(pod["securityContext"]["runAsUser"].as_u64(), Some(UID as u64), "the image's user");
    assert_eq!(pod["securityContext"]["runAsGroup"].as_u64(), Some(UID as u64));
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"].as_bool(), Some(true));

    let volume = containerfile("VOLUME");
    let mounts = container["volumeMounts"].as_sequence().expect("volumeMounts");
    assert!(
        mounts.iter().any(|m| m["mountPath"].as_str() == Some(volume.as_str())),
        "a volume on {volume}: {mounts:?}"
    );
    let args: Vec<&str> = container["args"].as_sequence().unwrap().iter().filter_map(|a| a.as_str()).collect();
    let data_dir = args.iter().position(|a| *a == "--data-dir").map(|i| args[i + 1]);
    assert_eq!(data_dir, Some(volume.as_str()), "the chat store on the image's volume");
}
