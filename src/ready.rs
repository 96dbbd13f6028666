//! `--ready-file PATH`: once a server serves, it writes where it listens to
//! PATH as JSON, `{"grpc": "HOST:PORT", "admin": "HOST:PORT" or null}`, so
//! that scripts and tests wait for a file instead of parsing log lines. The
//! file is written to `PATH.tmp` and renamed, so a reader that sees PATH sees
//! all of it. A leaf module: it uses nothing else of this crate.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

/// What the ready file holds for these bound addresses.
pub fn contents(grpc: &str, admin: Option<&str>) -> String {
    serde_json::json!({ "grpc": grpc, "admin": admin }).to_string()
}

/// `PATH.tmp`: where the file is written before it is renamed to PATH.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".tmp");
    PathBuf::from(name)
}

fn error(path: &Path, e: std::io::Error) -> String {
    format!("cannot write the ready file {}: {e}", path.display())
}

/// Fails (in one line) unless the file can be written: called before the
/// server starts, so that a bad path is an error at start, not once serving.
pub fn check_writable(path: &Path) -> Result<(), String> {
    let temp = temp_path(path);
    OpenOptions::new().write(true).create(true).truncate(true).open(&temp).map_err(|e| error(path, e))?;
    fs::remove_file(&temp).map_err(|e| error(path, e))
}

/// Writes the file for these bound addresses, atomically (`PATH.tmp`, then a rename).
pub fn write(path: &Path, grpc: &str, admin: Option<&str>) -> Result<(), String> {
    let temp = temp_path(path);
    fs::write(&temp, contents(grpc, admin) + "\n").map_err(|e| error(path, e))?;
    fs::rename(&temp, path).map_err(|e| error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_name_both_addresses_or_null() {
        let value: serde_json::Value = serde_json::from_str(&contents("127.0.0.1:1", Some("127.0.0.1:2"))).unwrap();
        assert_eq!(value, serde_json::json!({ "grpc": "127.0.0.1:1", "admin": "127.0.0.1:2" }));
        let value: serde_json::Value = serde_json::from_str(&contents("[::]:8080", None)).unwrap();
        assert_eq!(value, serde_json::json!({ "grpc": "[::]:8080", "admin": null }));
    }

    #[test]
    fn the_temp_file_is_next_to_the_file() {
        assert_eq!(temp_path(Path::new("/run/greet/ready.json")), Path::new("/run/greet/ready.json.tmp"));
    }
}
