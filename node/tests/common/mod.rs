//! Helpers shared by the node's integration tests (each test file uses some of them).
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

/// Tests that run several nodes take turns: on a 2-core machine, two multi-process calls at
/// once would measure the scheduler, not confab.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// `confab --data-dir DIR`, with no account settings leaking in from the environment.
pub fn confab(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_confab"));
    c.arg("--data-dir")
        .arg(dir)
        .env_remove("CONFAB_DATA_DIR")
        .env_remove("CONFAB_PASSPHRASE")
        .env_remove("CONFAB_NEW_PASSPHRASE")
        .stdin(Stdio::null());
    c
}

/// Runs `c`, asserts success, returns its stdout.
pub fn run_ok(mut c: Command) -> String {
    let dbg = format!("{c:?}");
    let out = c.output().expect("run confab");
    assert!(
        out.status.success(),
        "{dbg} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The account's peer id (`whoami --json`), unlocking with `passphrase` if given.
pub fn whoami(dir: &Path, passphrase: Option<&str>) -> String {
    let mut c = confab(dir);
    c.args(["whoami", "--json"]);
    if let Some(p) = passphrase {
        c.env("CONFAB_PASSPHRASE", p);
    }
    let v: Value = serde_json::from_str(&run_ok(c)).expect("whoami json");
    v["peer_id"].as_str().expect("peer id").to_string()
}

/// Creates an account named `name`; returns its peer id.
pub fn init(dir: &Path, name: &str) -> String {
    let mut c = confab(dir);
    c.args(["init", "--name", name]);
    run_ok(c);
    whoami(dir, None)
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}
