//! End-to-end tests of the `confab` binary: real processes, real libp2p on loopback, real
//! sled files, real Opus.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use confab_protocol::ticket::Ticket;
use serde_json::Value;

fn create_room(dir: &Path) -> String {
    let port = free_port();
    let mut c = confab(dir);
    c.args(["room", "create", "--json", "--listen"])
        .arg(format!("/ip4/127.0.0.1/tcp/{port}"));
    let v: Value = serde_json::from_str(&run_ok(c)).expect("room json");
    v["ticket"].as_str().expect("ticket").to_string()
}

fn demo(participants: usize, seconds: u32) -> Value {
    demo_with(participants, seconds, 20)
}

fn demo_with(participants: usize, seconds: u32, frame_ms: u8) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["demo", "--json", "--participants"])
        .arg(participants.to_string())
        .arg("--seconds")
        .arg(seconds.to_string())
        .arg("--frame-ms")
        .arg(frame_ms.to_string())
        .output()
        .expect("run demo");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "demo printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        out.status.success(),
        v["ok"].as_bool() == Some(true),
        "exit code agrees with ok"
    );
    v
}

fn check_demo(v: &Value, n: usize) {
    check_demo_frames(v, n, 20, 60.0);
}

/// Every pair: frames, correlation, and mouth-to-ear measured on the signal at most
/// `max_p50`, p95 at most 150 ms, never below the algorithmic delay (frame plus Opus'
/// 6.5 ms look-ahead), and the receiver's timestamp figure within 2 ms of it.
fn check_demo_frames(v: &Value, n: usize, frame_ms: u8, max_p50: f64) {
    assert_eq!(v["participants"], n);
    assert_eq!(v["frame_ms"], frame_ms);
    let algo = f64::from(frame_ms) + 6.5;
    let pairs = v["pairs"].as_array().expect("pairs");
    assert_eq!(pairs.len(), n * (n - 1), "{v}");
    for p in pairs {
        let sent = p["frames_sent"].as_f64().expect("sent");
        let received = p["frames_received"].as_f64().expect("received");
        assert!(sent > 100.0, "{p}");
        assert!(received >= 0.95 * sent, "{p}");
        assert!(p["correlation"].as_f64().expect("corr") >= 0.9, "{p}");
        assert!((p["algorithmic_delay_ms"].as_f64().expect("algo") - algo).abs() < 0.1);
        // The targets (p50 40 ms, p95 60 ms) are figures of an idle machine,
        // measured by the demo runs in docs/benchmarks.md; here, on a machine that may be
        // busy, the call must stay well inside a conversational delay.
        let p50 = p["mouth_to_ear_ms"]["p50"].as_f64().expect("p50");
        assert!(p50 <= max_p50, "{p}");
        assert!(
            p["mouth_to_ear_ms"]["p95"].as_f64().expect("p95") <= 150.0,
            "{p}"
        );
        assert!(p["onsets"]["min_ms"].as_f64().expect("min") >= algo, "{p}");
        assert!(p["onsets"]["found"].as_u64().expect("found") > 0, "{p}");
        let stamps = p["mouth_to_ear_timestamps_ms"]["p50"]
            .as_f64()
            .expect("p50");
        // The chirps are a sample of the frames: their median agrees with the frames'
        // within 2 ms, or half the frames' p50-p95 spread when delays vary more (load).
        let spread = p["mouth_to_ear_timestamps_ms"]["p95"]
            .as_f64()
            .expect("p95")
            - stamps;
        let tolerance = (spread / 2.0).max(2.0);
        assert!(stamps >= algo && (stamps - p50).abs() <= tolerance, "{p}");
        let tb = p["transit_buffer_ms"]["p50"].as_f64().expect("t+b");
        assert!((stamps - tb - algo).abs() < 0.01, "{p}");
        assert_eq!(p["path"], "direct");
    }
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn demo_three_participants() {
    let _turn = heavy();
    check_demo(&demo(3, 4), 3);
}

#[test]
fn demo_three_participants_at_ten_ms_frames() {
    let _turn = heavy();
    check_demo_frames(&demo_with(3, 4, 10), 3, 10, 45.0);
}

#[test]
fn demo_eight_participants() {
    let _turn = heavy();
    check_demo(&demo(8, 5), 8);
}

#[test]
fn a_ticket_with_another_secret_is_refused_and_members_log_it() {
    let _turn = heavy();
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    init(&a, "alice");
    init(&b, "mallory");
    let ticket = create_room(&a);
    let mut host = confab(&a);
    host.args(["call", &ticket, "--duration", "6", "--tone", "440"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let host = host.spawn().expect("host");
    // Same room id and bootstrap, consistent checksum, different secret.
    let mut forged = Ticket::parse(&ticket).expect("ticket");
    forged.room_secret[0] ^= 0xff;
    let start = Instant::now();
    let mut c = confab(&b);
    c.args(["call", &forged.to_string(), "--duration", "3"]);
    let out = c.output().expect("joiner");
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "refused promptly"
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrong room secret"), "{err}");
    let host: Output = host.wait_with_output().expect("host exits");
    assert!(host.status.success(), "the member did not crash");
    let log = String::from_utf8_lossy(&host.stderr);
    assert!(log.contains("admission failed"), "{log}");
}

#[test]
fn bad_tickets_and_inputs_exit_with_code_2() {
    let _turn = heavy();
    let tmp = tempfile::tempdir().expect("tmp");
    init(tmp.path(), "x");
    let ticket = create_room(tmp.path());
    let mut altered = ticket.clone();
    let mid = altered.len() / 2;
    let c = if &altered[mid..=mid] == "a" { "b" } else { "a" };
    altered.replace_range(mid..=mid, c);
    for bad in ["hello", "confab1", altered.as_str()] {
        let mut c = confab(tmp.path());
        c.args(["call", bad, "--duration", "1"]);
        let out = c.output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("invalid ticket"));
    }
    let mut c = confab(tmp.path());
    c.args(["call", &ticket, "--input", "/nonexistent.wav"]);
    assert_eq!(c.output().expect("run").status.code(), Some(2));
    // No account yet: a clear error, not a panic.
    let empty = tmp.path().join("empty");
    let mut c = confab(&empty);
    c.arg("whoami");
    let out = c.output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("confab init"));
}

#[test]
fn sigkill_mid_call_keeps_the_store_and_the_others_drop_the_dead_member() {
    let _turn = heavy();
    let tmp = tempfile::tempdir().expect("tmp");
    let dirs: Vec<_> = (0..3).map(|i| tmp.path().join(format!("n{i}"))).collect();
    let ids: Vec<String> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| init(d, &format!("n{i}")))
        .collect();
    let ticket = create_room(&dirs[0]);
    let mut children = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let mut c = confab(d);
        c.args(["call", &ticket, "--json", "--duration", "8", "--tone"])
            .arg((300 + 100 * i).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if i > 0 {
            c.args(["--listen", "/ip4/127.0.0.1/tcp/0"]);
        }
        children.push(c.spawn().expect("spawn"));
    }
    std::thread::sleep(Duration::from_secs(3));
    let mut victim = children.pop().expect("victim");
    victim.kill().expect("SIGKILL");
    let killed_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let _ = victim.wait();
    for child in children {
        let out = child.wait_with_output().expect("member");
        assert!(out.status.success(), "surviving member exits cleanly");
        let report: Value = serde_json::from_slice(&out.stdout).expect("report");
        let left = report["roster"]
            .as_array()
            .expect("roster")
            .iter()
            .find(|e| e["kind"] == "left" && e["peer"] == ids[2].as_str())
            .unwrap_or_else(|| panic!("dead member not dropped: {report}"));
        let at = left["at_ms"].as_u64().expect("at");
        assert!(at.saturating_sub(killed_ms) < 5_000, "dropped within 5 s");
        // The two survivors kept talking to each other.
        let other = report["received"]
            .as_array()
            .expect("received")
            .iter()
            .find(|r| r["from"] != ids[2].as_str())
            .expect("the other survivor");
        assert!(
            other["frames_received"].as_u64().expect("n") > 300,
            "{other}"
        );
    }
    let mut c = confab(&dirs[2]);
    c.args(["whoami", "--json"]);
    let v: Value = serde_json::from_str(&run_ok(c)).expect("whoami after SIGKILL");
    assert_eq!(v["peer_id"], ids[2].as_str());
}
