//! Large messages: the server keeps the memory a call frees for the next
//! calls, instead of returning it to the system and faulting it in again.

use std::time::Duration;

use crate::common::process::ServerProcess;
use futures::executor::block_on;
use greet::client::Client;

/// Minor page faults of `pid` so far (`/proc/PID/stat`, field 10).
fn minor_faults(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the server's /proc/PID/stat");
    let after_name = stat.rsplit_once(')').expect("stat has the command in parentheses").1;
    after_name.split_whitespace().nth(7).and_then(|f| f.parse().ok()).expect("minflt in /proc/PID/stat")
}

/// Page faults the server (logging warnings only: the demo's log line of
/// every name would be 3 MiB a call) takes for each of eight server streams of 48 names
/// of 64 KiB (3 MiB of names and as much of answers a call), one after another.
fn faults_per_call(server: &ServerProcess) -> Vec<u64> {
    let client = Client::new(greet::client::connect(&server.addr), Duration::from_secs(30));
    let names: Vec<String> = (0..48).map(|i| format!("{i:02}{}", "x".repeat(64 * 1024 - 2))).collect();
    let faults = (0..8)
        .map(|_| {
            let before = minor_faults(server.process.pid());
            let mut answers = 0;
            block_on(client.server_stream(&names, |_| answers += 1)).expect("the server stream succeeds");
            assert_eq!(answers, names.len());
            minor_faults(server.process.pid()) - before
        })
        .collect();
    eprintln!("page faults per call: {faults:?}");
    faults
}

/// Once the first calls have grown the heap, a call faults in next to no
/// page (with glibc's defaults, hundreds to thousands a call, as it returns
/// each call's memory at its end).
#[test]
fn a_call_reuses_the_memory_the_call_before_it_freed() {
    let server = ServerProcess::start_with_env("large", &["--max-name-bytes", "65536"], &[("RUST_LOG", "warn")]);
    let faults = faults_per_call(&server);
    // 3 MiB is 768 pages: the last three calls together fault in less than a quarter of one call's names.
    assert!(faults[5..].iter().sum::<u64>() < 192, "page faults per call: {faults:?}");
}

/// With glibc's own bounds (an operator's `GLIBC_TUNABLES`, which the server
/// leaves alone), every call faults its memory in again.
#[test]
fn with_glibcs_default_bounds_each_call_faults_its_memory_in_again() {
    let defaults = "glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072";
    let env = [("RUST_LOG", "warn"), ("GLIBC_TUNABLES", defaults)];
    let server = ServerProcess::start_with_env("large", &["--max-name-bytes", "65536"], &env);
    let faults = faults_per_call(&server);
    assert!(faults[5..].iter().sum::<u64>() >= 768, "page faults per call: {faults:?}");
}
