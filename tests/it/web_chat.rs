//! The chat page (web/) in real headless Chromium: web/build.sh builds it,
//! Envoy serves it and turns its gRPC-Web into gRPC for two replicas that
//! share a Redis, and web/test/browser.mjs (playwright-core driving
//! Debian's /usr/bin/chromium) plays alice and bob: posts seen with the same
//! seq within 1 s, pending then acked, a reload without gap or duplicate, a
//! replica SIGKILLed and both pages going on, a CORS preflight, a mention
//! of bob from a room he never joined in his #notifications (once, after a
//! reload too), a Post whose answer is lost showing failed and its retry
//! stored once. Without the gRPC-Web filter the page never says connected;
//! with tokens, a page whose token is someone else's cannot post as the
//! name in its URL.
//! `GREET_WEB_SCREENSHOT=PATH` saves a screenshot of bob's page there
//! (docs/web-chat.png was made so); `GREET_WEB_LATENCY_POSTS=N` measures
//! Post-to-render latency over N more posts.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::common::chat::Redis;
use crate::common::envoy::Envoy;
use crate::common::process::{repo_root, ServerProcess};

const ORIGIN: &str = "http://localhost:5173";

/// Builds the page under this test build's target dir, once for all the
/// tests here (npm ci and the build must not run twice at once); answers its
/// directory.
fn build_page() -> PathBuf {
    static PAGE: OnceLock<PathBuf> = OnceLock::new();
    PAGE.get_or_init(|| {
        let target =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).parent().expect("target/tmp has a parent").to_path_buf();
        let out = Command::new("bash")
            .arg(repo_root().join("web/build.sh"))
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .expect("bash runs web/build.sh");
        assert!(out.status.success(), "web/build.sh failed:\n{}", String::from_utf8_lossy(&out.stderr));
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

fn replicas(redis: &Redis) -> [ServerProcess; 2] {
    let flags = ["--broker", redis.url.as_str(), "--heartbeat", "1s"];
    [ServerProcess::start("replica-1", &flags), ServerProcess::start("replica-2", &flags)]
}

/// Runs web/test/browser.mjs in `mode` with `env`; answers whether it
/// passed, and what it printed.
fn run_browser(mode: &str, envoy: &Envoy, env: &[(&str, String)]) -> (bool, String) {
    // The script bounds every wait; `timeout` bounds the whole run.
    let mut command = Command::new("timeout");
    command.current_dir(repo_root().join("web")).args(["180", "node", "test/browser.mjs"]);
    command.env("MODE", mode).env("WEB_URL", format!("http://{}", envoy.addr));
    for (name, value) in env {
        command.env(name, value);
    }
    let out = command.output().expect("node runs web/test/browser.mjs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn web_flags(root: &std::path::Path) -> Vec<String> {
    vec!["--web-root".into(), root.display().to_string(), "--cors-origin".into(), ORIGIN.into()]
}

#[test]
fn two_pages_chat_through_envoy_across_replicas_reload_and_a_replica_kill_in_chromium() {
    let root = build_page();
    let redis = Redis::start();
    let [a, b] = replicas(&redis);
    let envoy = Envoy::start_with(&[("replica-1", &a.addr), ("replica-2", &b.addr)], &web_flags(&root), |c| c);
    let mut env = vec![
        ("ADMINS", format!("{},{}", a.admin, b.admin)),
        ("KILL_PID", a.process.pid().to_string()),
        ("CORS_ORIGIN", ORIGIN.to_string()),
    ];
    if let Ok(path) = std::env::var("GREET_WEB_SCREENSHOT") {
        env.push(("SCREENSHOT", path));
    }
    // A measurement, not a check: off by default (docs/web.md, "Measured").
    if let Ok(posts) = std::env::var("GREET_WEB_LATENCY_POSTS") {
        env.push(("LATENCY_POSTS", posts));
    }
    let (passed, output) = run_browser("chat", &envoy, &env);
    println!("{output}");
    assert!(passed, "the browser scenario failed:\n{output}");
}

#[test]
fn without_envoys_grpc_web_filter_the_page_never_says_connected() {
    let root = build_page();
    let redis = Redis::start();
    let [a, b] = replicas(&redis);
    const FILTER: &str = "                  - name: envoy.filters.http.grpc_web
                    typed_config:
                      \"@type\": type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb
";
    let envoy = Envoy::start_with(&[("replica-1", &a.addr), ("replica-2", &b.addr)], &web_flags(&root), |config| {
        assert!(config.contains(FILTER), "the rendered config has the gRPC-Web filter to leave out");
        config.replace(FILTER, "")
    });
    let (passed, output) = run_browser("never-connected", &envoy, &[]);
    println!("{output}");
    assert!(passed, "the page said connected without the gRPC-Web filter:\n{output}");
}

#[test]
fn with_tokens_a_page_cannot_post_as_the_name_in_its_url_when_its_token_is_someone_elses() {
    let root = build_page();
    let redis = Redis::start();
    let dir = crate::common::chat::TempDir::new("web-tokens");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "token-bob bob\ntoken-eve eve\n").unwrap();
    let tokens = tokens.display().to_string();
    let flags = ["--broker", redis.url.as_str(), "--heartbeat", "1s", "--auth-tokens", tokens.as_str()];
    let [a, b] = [ServerProcess::start("replica-1", &flags), ServerProcess::start("replica-2", &flags)];
    let envoy = Envoy::start_with(&[("replica-1", &a.addr), ("replica-2", &b.addr)], &web_flags(&root), |c| c);
    let (passed, output) = run_browser("tokens", &envoy, &[]);
    println!("{output}");
    assert!(passed, "the browser scenario failed:\n{output}");
}
