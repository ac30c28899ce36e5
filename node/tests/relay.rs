//! Calls through a real `confab-relay` process, on loopback.
//!
//! The relay binary: `env!("CARGO_BIN_EXE_confab-relay")` exists only inside the relay
//! crate, and a dev-dependency on `confab-relay` would build its library but not its binary
//! (cargo builds binaries only of the package under test). So [`relay_bin`] uses the
//! `confab-relay` next to `confab` in `target/<profile>/`, and runs
//! `cargo build -p confab-relay` with that profile and target directory first when the
//! binary is missing or older than the relay's sources.
//!
//! The calls use the hidden `confab call --relay-only` (dial and announce only circuit
//! addresses, so a call starts relayed); those that must stay relayed also pass the hidden
//! `--no-hole-punch`, because on loopback a hole punch would succeed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

fn relay_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let confab = Path::new(env!("CARGO_BIN_EXE_confab"));
            let profile_dir = confab.parent().expect("profile dir");
            let target_dir = profile_dir.parent().expect("target dir");
            let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            c.args([
                "build",
                "--quiet",
                "-p",
                "confab-relay",
                "--bin",
                "confab-relay",
            ])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
            match profile_dir.file_name().and_then(|n| n.to_str()) {
                Some("debug") | None => {}
                Some("release") => {
                    c.arg("--release");
                }
                Some(other) => {
                    c.args(["--profile", other]);
                }
            }
            let bin = confab.with_file_name("confab-relay");
            if stale(&bin) {
                let status = c.status().expect("run cargo build -p confab-relay");
                assert!(status.success(), "cargo build -p confab-relay failed");
            }
            assert!(bin.exists(), "{} is missing", bin.display());
            bin
        })
        .clone()
}

/// Whether `bin` is missing or older than a source file of the relay crate (a nested cargo
/// build is not free: run from a test it may redo build scripts, so skip it when possible).
fn stale(bin: &Path) -> bool {
    fn newest(dir: &Path) -> SystemTime {
        let mut t = UNIX_EPOCH;
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            let m = if p.is_dir() {
                newest(&p)
            } else {
                e.metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(UNIX_EPOCH)
            };
            t = t.max(m);
        }
        t
    }
    let relay = Path::new(env!("CARGO_MANIFEST_DIR")).join("../relay");
    let src = newest(&relay.join("src")).max(
        std::fs::metadata(relay.join("Cargo.toml"))
            .and_then(|m| m.modified())
            .unwrap_or(UNIX_EPOCH),
    );
    std::fs::metadata(bin)
        .and_then(|m| m.modified())
        .map_or(true, |built| built < src)
}

struct Relay {
    child: Child,
    /// `/ip4/127.0.0.1/tcp/PORT/p2p/<id>`
    addr: String,
    /// When it printed `ready`.
    ready_ms: u64,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the relay on 127.0.0.1:`port` and waits for its `ready` line.
fn relay(data_dir: &Path, port: u16, extra: &[&str]) -> Relay {
    let mut child = Command::new(relay_bin())
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen")
        .arg(format!("/ip4/127.0.0.1/tcp/{port}"))
        .args(extra)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start confab-relay");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut peer = None;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(p) = line.strip_prefix("peer-id ") {
                peer = Some(p.to_string());
            }
            if line == "ready" {
                let _ = tx.send((peer.take(), now_ms()));
            }
        }
    });
    let (peer, ready_ms) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("relay printed no ready line");
    let peer = peer.expect("relay printed no peer-id line");
    Relay {
        child,
        addr: format!("/ip4/127.0.0.1/tcp/{port}/p2p/{peer}"),
        ready_ms,
    }
}

/// A room whose ticket has a circuit address through `relay` besides the direct one.
fn create_room(dir: &Path, relay: &str) -> String {
    let mut c = confab(dir);
    c.args(["room", "create", "--json", "--relay", relay, "--listen"])
        .arg(format!("/ip4/127.0.0.1/tcp/{}", free_port()));
    let v: Value = serde_json::from_str(&run_ok(c)).expect("room json");
    v["ticket"].as_str().expect("ticket").to_string()
}

/// `confab call` through `relay` only, with a constant-bitrate tone; the call stays relayed.
fn call(dir: &Path, ticket: &str, relay: &str, seconds: u32, hz: u32) -> Child {
    call_with(dir, ticket, relay, seconds, hz, false)
}

/// [`call`], optionally allowing a hole punch.
fn call_with(dir: &Path, ticket: &str, relay: &str, seconds: u32, hz: u32, punch: bool) -> Child {
    let mut c = confab(dir);
    c.args([
        "call",
        ticket,
        "--json",
        "--cbr",
        "--relay-only",
        "--relay",
        relay,
    ])
    .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
    .arg("--duration")
    .arg(seconds.to_string())
    .arg("--tone")
    .arg(hz.to_string())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if !punch {
        c.arg("--no-hole-punch");
    }
    c.spawn().expect("spawn confab call")
}

fn report(out: Output) -> Value {
    assert!(
        out.status.success(),
        "call failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn received_from<'a>(report: &'a Value, peer: &str) -> &'a Value {
    report["received"]
        .as_array()
        .expect("received")
        .iter()
        .find(|r| r["from"] == peer)
        .unwrap_or_else(|| panic!("nothing received from {peer}: {report}"))
}

fn sent_to(report: &Value, peer: &str) -> u64 {
    report["sent"][peer]["frames_sent"]
        .as_u64()
        .unwrap_or_else(|| panic!("nothing sent to {peer}: {report}"))
}

#[test]
fn a_call_through_the_relay_stays_relayed_and_outlives_the_default_circuit_budget() {
    let _turn = heavy();
    let tmp = tempfile::tempdir().expect("tmp");
    // The relay's own defaults (1 GiB and 6 h per circuit), not libp2p's 128 KiB / 2 min.
    let r = relay(&tmp.path().join("relay"), free_port(), &[]);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let ida = init(&a, "alice");
    let idb = init(&b, "bob");
    let ticket = create_room(&a, &r.addr);
    let host = call(&a, &ticket, &r.addr, 17, 440);
    let guest = call(&b, &ticket, &r.addr, 17, 660);
    let ra = report(host.wait_with_output().expect("host"));
    let rb = report(guest.wait_with_output().expect("guest"));
    for (me, other, rx_report, tx_report) in [(&ida, &idb, &ra, &rb), (&idb, &ida, &rb, &ra)] {
        let rx = received_from(rx_report, other);
        assert_eq!(rx["path"], "relayed", "{me} from {other}: {rx}");
        let sent = sent_to(tx_report, me);
        let got = rx["frames_received"].as_u64().expect("received");
        assert!(got as f64 >= 0.95 * sent as f64, "{got} of {sent}: {rx}");
        // Each CBR frame carries 194 bytes of media frame alone: more than 700 frames in one
        // direction is past the 128 KiB a libp2p circuit carries by default.
        assert!(got > 700, "{got} frames: {rx}");
    }
}

#[test]
fn a_relay_at_its_circuit_limit_is_named_and_the_call_ends() {
    let _turn = heavy();
    let tmp = tempfile::tempdir().expect("tmp");
    let r = relay(
        &tmp.path().join("relay"),
        free_port(),
        &["--max-circuits", "0"],
    );
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    init(&a, "alice");
    init(&b, "bob");
    let ticket = create_room(&a, &r.addr);
    let mut host = call(&a, &ticket, &r.addr, 20, 440);
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    let guest = call(&b, &ticket, &r.addr, 5, 660);
    let out = guest.wait_with_output().expect("guest");
    let took = start.elapsed();
    let _ = host.kill();
    let _ = host.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}: {err}");
    assert!(err.contains("error: relay:"), "{err}");
    assert!(err.contains("limit"), "{err}");
}

#[test]
fn a_relay_whose_allowlist_excludes_the_node_is_named_and_the_call_ends() {
    let _turn = heavy();
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    init(&a, "alice");
    let idb = init(&b, "bob");
    // Only bob may use the relay.
    let r = relay(&tmp.path().join("relay"), free_port(), &["--allow", &idb]);
    let ticket = create_room(&a, &r.addr);
    let start = Instant::now();
    let out = call(&a, &ticket, &r.addr, 20, 440)
        .wait_with_output()
        .expect("host");
    let took = start.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}: {err}");
    assert!(err.contains("error: relay:"), "{err}");
    assert!(err.contains("allowlist"), "{err}");
}

#[test]
fn a_relayed_call_resumes_within_five_seconds_of_a_relay_restart() {
    let _turn = heavy();
    let tmp = tempfile::tempdir().expect("tmp");
    let relay_dir = tmp.path().join("relay");
    let port = free_port();
    let mut r = relay(&relay_dir, port, &[]);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let ida = init(&a, "alice");
    let idb = init(&b, "bob");
    let ticket = create_room(&a, &r.addr);
    let host = call(&a, &ticket, &r.addr, 14, 440);
    let guest = call(&b, &ticket, &r.addr, 14, 660);
    std::thread::sleep(Duration::from_secs(4));
    // Same identity and port: the addresses in the ticket and the Hellos stay valid.
    let _ = r.child.kill();
    let _ = r.child.wait();
    let killed_ms = now_ms();
    r = relay(&relay_dir, port, &[]);
    let ready_ms = r.ready_ms;
    let ra = report(host.wait_with_output().expect("host"));
    let rb = report(guest.wait_with_output().expect("guest"));
    for (me, other, rx_report, tx_report) in [(&ida, &idb, &ra, &rb), (&idb, &ida, &rb, &ra)] {
        let back = rx_report["roster"]
            .as_array()
            .expect("roster")
            .iter()
            .filter(|e| e["kind"] == "admitted" && e["peer"] == other.as_str())
            .filter_map(|e| e["at_ms"].as_u64())
            .find(|at| *at > killed_ms)
            .unwrap_or_else(|| panic!("{me} never got {other} back: {rx_report}"));
        assert!(
            back.saturating_sub(ready_ms) < 5_000,
            "{me}: {other} back {} ms after the relay was ready",
            back.saturating_sub(ready_ms)
        );
        // Everything but the outage arrived.
        let rx = received_from(rx_report, other);
        assert_eq!(rx["path"], "relayed", "{rx}");
        let sent = sent_to(tx_report, me);
        let outage_frames = (back - killed_ms) / 20 + 50;
        let got = rx["frames_received"].as_u64().expect("received");
        assert!(
            got + outage_frames >= sent * 95 / 100,
            "{got} of {sent} with an outage of {} ms: {rx}",
            back - killed_ms
        );
    }
}

#[test]
fn a_hole_punch_moves_the_call_off_the_relay() {
    let _turn = heavy();
    let tmp = tempfile::tempdir().expect("tmp");
    let r = relay(&tmp.path().join("relay"), free_port(), &[]);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let ida = init(&a, "alice");
    let idb = init(&b, "bob");
    let ticket = create_room(&a, &r.addr);
    let host = call_with(&a, &ticket, &r.addr, 8, 440, true);
    let guest = call_with(&b, &ticket, &r.addr, 8, 660, true);
    let ha = host.wait_with_output().expect("host");
    let hb = guest.wait_with_output().expect("guest");
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&ha.stderr),
        String::from_utf8_lossy(&hb.stderr)
    );
    let ra = report(ha);
    let rb = report(hb);
    for (me, other, rx_report, tx_report) in [(&ida, &idb, &ra, &rb), (&idb, &ida, &rb, &ra)] {
        let rx = received_from(rx_report, other);
        assert_eq!(rx["path"], "punched", "{me} from {other}: {rx}\n{log}");
        // The move to the direct connection is not a departure (only the goodbye at the end).
        let left = rx_report["roster"]
            .as_array()
            .expect("roster")
            .iter()
            .filter(|e| e["kind"] == "left" && e["detail"] != "Left")
            .count();
        assert_eq!(left, 0, "{rx_report}\n{log}");
        let sent = sent_to(tx_report, me);
        let got = rx["frames_received"].as_u64().expect("received");
        assert!(got as f64 >= 0.95 * sent as f64, "{got} of {sent}: {rx}");
    }
    assert!(log.contains("hole punch succeeded"), "{log}");
}

#[test]
fn a_stale_ticket_is_rescued_by_the_relays_rendezvous() {
    let _turn = heavy();
    let tmp = tempfile::tempdir().expect("tmp");
    let r = relay(&tmp.path().join("relay"), free_port(), &[]);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let ida = init(&a, "alice");
    let idb = init(&b, "bob");
    let ticket = create_room(&a, &r.addr);
    // The same room, but the host's addresses in the ticket lead nowhere.
    let mut stale = confab_protocol::ticket::Ticket::parse(&ticket).expect("ticket");
    for p in &mut stale.bootstrap {
        p.addrs = vec!["/ip4/127.0.0.1/tcp/1".into()];
    }
    let host = call(&a, &ticket, &r.addr, 9, 440);
    let guest = call(&b, &stale.to_string(), &r.addr, 6, 660);
    let hb = guest.wait_with_output().expect("guest");
    let log = String::from_utf8_lossy(&hb.stderr).into_owned();
    let rb = report(hb);
    let ra = report(host.wait_with_output().expect("host"));
    assert!(log.contains("rendezvous"), "{log}");
    let got = received_from(&rb, &ida)["frames_received"]
        .as_u64()
        .expect("n");
    assert!(got > 100, "{rb}");
    assert!(received_from(&ra, &idb)["frames_received"].as_u64() > Some(100));
}
