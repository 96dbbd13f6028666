//! The Go tools the tests run against our server (grpcurl,
//! grpc-health-probe), built unmodified from pinned versions by
//! `scripts/gotools.py`. `make test` builds them first and passes their
//! directory in `GREET_GO_TOOLS`; without it the first test that needs one
//! runs the script itself. A tool that cannot be had fails the test.
//! [`go_build`] builds the Go programs of this repository's own modules
//! (grpc-go's examples pinned in `tests/interop/go`, the xDS programs in
//! `tests/xds/`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

fn tools_dir() -> &'static Result<PathBuf, String> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("GREET_GO_TOOLS") {
            return Ok(PathBuf::from(dir));
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gotools.py");
        let out =
            Command::new("python3").arg(script).output().map_err(|e| format!("cannot run python3 {script}: {e}"))?;
        if !out.status.success() {
            return Err(format!("{script} failed:\n{}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    })
}

/// The path of a pinned Go tool; fails the test if it is not there.
pub fn go_tool(name: &str) -> PathBuf {
    let dir = tools_dir().as_ref().unwrap_or_else(|e| panic!("the Go tools are not available: {e}"));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `make test` or `python3 scripts/gotools.py` (needs Go 1.26 and the Go module proxy)",
        path.display()
    );
    path
}

/// Runs a Go tool to completion with a bound on its own network waits.
pub fn run_tool(name: &str, args: &[&str]) -> Output {
    Command::new(go_tool(name)).args(args).output().unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
}

/// Builds `package` of the Go module in `module_dir` (relative to the
/// repository) into the tests' temp dir as `name`, once per test binary, with
/// the Go toolchain through the Go module proxy and build cache; returns its path.
pub fn go_build(module_dir: &str, package: &str, name: &str) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get_or_insert_with(HashMap::new).get(name) {
        return path.clone();
    }
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go-programs").join(name);
    let go = ["/usr/local/go/bin/go", "/usr/bin/go"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("Go is installed (/usr/local/go/bin/go): it builds the tests' Go programs");
    let status = Command::new(go)
        .args(["build", "-buildvcs=false", "-o"])
        .arg(&out)
        .arg(package)
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(module_dir))
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .status()
        .expect("go runs");
    assert!(status.success(), "go build {package} in {module_dir} failed");
    built.get_or_insert_with(HashMap::new).insert(name.to_string(), out.clone());
    out
}
