//! The real-NAT testbed: real `confab` and `confab-relay` binaries in network namespaces
//! behind nftables NAT. Needs root and `ip netns` (CI has both); elsewhere it prints SKIP.
//!
//! All scenarios run in one test function, one after another (they are timing-sensitive
//! and each builds its own namespaces), and every outcome is compared with the simulator's
//! prediction (`confab_simulator::realnat::predict`).

// Tests may panic on what they did not expect.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use confab_simulator::nat::Transport;
use confab_simulator::realnat::{predict, Home, Rtts};
use serde_json::Value;

fn sim() -> &'static str {
    env!("CARGO_BIN_EXE_confab-sim")
}

/// Whether we may make namespaces here; prints why not.
fn netns_works() -> bool {
    let name = format!("cfbt-{}-probe", std::process::id());
    let ok = Command::new("ip")
        .args(["netns", "add", &name])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
    }
    ok
}

/// The binaries the testbed runs live next to ours (`cargo test --workspace` builds them;
/// building them from here would fight the outer build over feature unification).
fn check_binaries() {
    let exe = PathBuf::from(sim());
    for name in ["confab", "confab-relay"] {
        let p = exe.with_file_name(name);
        assert!(
            p.is_file() || std::env::var_os("CONFAB_BIN").is_some(),
            "{} is missing: run `cargo build --release --bins` (or `cargo test --workspace --release`) first",
            p.display()
        );
    }
}

fn node_has_relay() -> bool {
    let exe = PathBuf::from(sim());
    let confab = exe.with_file_name("confab");
    Command::new(confab)
        .args(["call", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--relay"))
        .unwrap_or(false)
}

fn testbed(extra: &[&str]) -> Value {
    let out = Command::new(sim())
        .arg("testbed")
        .args(extra)
        .arg("--json")
        .output()
        .expect("run confab-sim testbed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("testbed {extra:?}: {}", stdout.trim());
    if !out.status.success() {
        eprintln!("stderr: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "testbed {extra:?} printed no report ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn home(s: &str) -> Home {
    Home::parse(s).expect("known kind")
}

/// The model's path for `dialer` reaching `listener` over TCP (what the node punches on).
fn predicted(dialer: &str, listener: &str) -> String {
    let rtts = Rtts {
        direct_ms: 0.1,
        relay_ms: 0.2,
    };
    predict(home(dialer), home(listener), &[Transport::Tcp], true, rtts)
        .path
        .to_string()
}

/// Checks every pair: frames, correlation and path. Returns failures as text.
fn check_pairs(r: &Value, want_path: &str, what: &str, failures: &mut Vec<String>) {
    check_pairs_with(r, 2, 0.75, &|_, _| want_path.to_string(), what, failures);
}

/// [`check_pairs`] for `members` members, the path of each (from, to) given by `want`.
fn check_pairs_with(
    r: &Value,
    members: usize,
    min_sent_share: f64,
    want: &dyn Fn(&str, &str) -> String,
    what: &str,
    failures: &mut Vec<String>,
) {
    // The demo's share is of the frames *sent*, which only counts from admission on: also
    // require that sending covered most of the call (a late join is not a good call).
    let call_frames = r["testbed"]["seconds"].as_f64().unwrap_or(0.0) * 50.0;
    let pairs = r["pairs"].as_array().cloned().unwrap_or_default();
    if pairs.len() != members * (members - 1) {
        failures.push(format!(
            "{what}: {} pairs, want {}",
            pairs.len(),
            members * (members - 1)
        ));
    }
    for p in &pairs {
        let sent = p["frames_sent"].as_f64().unwrap_or(0.0);
        let recv = p["frames_received"].as_f64().unwrap_or(0.0);
        let corr = p["correlation"].as_f64().unwrap_or(0.0);
        let path = p["path"].as_str().unwrap_or("");
        let dir = format!("{} -> {}", p["from"], p["to"]);
        let want_path = want(
            p["from"].as_str().unwrap_or(""),
            p["to"].as_str().unwrap_or(""),
        );
        if sent <= 0.0 || recv < 0.95 * sent {
            failures.push(format!("{what} {dir}: received {recv} of {sent} frames"));
        }
        if sent < min_sent_share * call_frames {
            failures.push(format!(
                "{what} {dir}: only {sent} of the call's {call_frames} frames were sent (late admission)"
            ));
        }
        if corr < 0.9 {
            failures.push(format!("{what} {dir}: correlation {corr:.3}"));
        }
        if path != want_path {
            failures.push(format!("{what} {dir}: path {path}, want {want_path}"));
        }
    }
}

/// The namespaces of a run are gone afterwards.
fn check_clean(failures: &mut Vec<String>) {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let left: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("cfbt-"))
        .filter(|l| {
            // Only namespaces of finished confab-sim processes count as leaks.
            l.split('-')
                .nth(1)
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        })
        .collect();
    if !left.is_empty() {
        failures.push(format!("namespaces left behind: {left:?}"));
    }
}

/// The testbed's calls are timing-sensitive and each builds its own namespaces: the tests
/// take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether the testbed can run here (namespaces, binaries, relay support); prints why not.
fn can_run(test: &str) -> bool {
    if !netns_works() {
        eprintln!("SKIP {test}: cannot create network namespaces (needs root and iproute2)");
        return false;
    }
    check_binaries();
    if !node_has_relay() {
        eprintln!("SKIP {test}: this confab binary has no `call --relay`");
        return false;
    }
    true
}

/// Three members, each behind its own router: two port-preserving homes and one behind a
/// random-port NAT. Every pair must be good; the two port-preserving homes end punched, and
/// the pairs with the random-port home stay relayed — as the model predicts.
#[test]
fn three_homes() {
    let _turn = serial();
    if !can_run("three_homes") {
        return;
    }
    let homes = ["eim-apdf", "port-preserving", "random-port"];
    let r = testbed(&[
        "--home",
        homes[0],
        "--home",
        homes[1],
        "--home",
        homes[2],
        "--seconds",
        "10",
    ]);
    let mut failures = Vec::new();
    let index = |label: &str| (label.as_bytes().first().copied().unwrap_or(b'a') - b'a') as usize;
    let want = |from: &str, to: &str| {
        let (i, j) = (index(from), index(to));
        // The later member dials.
        let path = predicted(homes[i.max(j)], homes[i.min(j)]);
        let fixed = if i.max(j) == 2 { "relayed" } else { "punched" };
        assert_eq!(path, fixed, "the model's prediction for {from}-{to}");
        path
    };
    // The third member admits the second about 3 s into the call (it dials the members of the
    // roster it is sent only after its own admission by the first), so that pair sends over
    // about 70 % of a 10 s call.
    check_pairs_with(&r, 3, 0.6, &want, "three homes", &mut failures);
    check_clean(&mut failures);
    assert!(failures.is_empty(), "three homes:\n{}", failures.join("\n"));
}

#[test]
fn real_nat_testbed() {
    let _turn = serial();
    if !netns_works() {
        eprintln!(
            "SKIP real_nat_testbed: cannot create network namespaces (needs root and iproute2)"
        );
        return;
    }
    check_binaries();
    let mut failures = Vec::new();
    let mut outcomes: Vec<(String, String, String)> = Vec::new();
    let mut record = |a: &str, b: &str, r: &Value| {
        for p in r["pairs"].as_array().cloned().unwrap_or_default() {
            outcomes.push((
                a.to_string(),
                b.to_string(),
                p["path"].as_str().unwrap_or("none").to_string(),
            ));
        }
    };

    // Both public: a direct call.
    let r = testbed(&["--nat-a", "public", "--nat-b", "public", "--seconds", "6"]);
    check_pairs(&r, "direct", "public/public", &mut failures);
    record("public", "public", &r);
    check_clean(&mut failures);

    if node_has_relay() {
        // Both behind port-preserving NAT: starts on the relay, ends punched.
        let r = testbed(&[
            "--nat-a",
            "port-preserving",
            "--nat-b",
            "port-preserving",
            "--seconds",
            "8",
        ]);
        check_pairs(
            &r,
            "punched",
            "port-preserving/port-preserving",
            &mut failures,
        );
        record("port-preserving", "port-preserving", &r);

        // One behind symmetric (random-port) NAT: relayed for the whole call, and the relay
        // sees none of it.
        let r = testbed(&[
            "--nat-a",
            "random-port",
            "--nat-b",
            "port-preserving",
            "--seconds",
            "8",
            "--check-relay-blind",
        ]);
        check_pairs(&r, "relayed", "random-port/port-preserving", &mut failures);
        record("random-port", "port-preserving", &r);
        let cap = &r["relay_capture"];
        let payload = cap["payload_bytes"].as_u64().unwrap_or(0);
        if payload < 100_000 {
            failures.push(format!(
                "relay capture holds only {payload} payload bytes: the call did not cross the relay"
            ));
        }
        if cap["pcm_windows_searched"].as_u64().unwrap_or(0) == 0 {
            failures.push("no PCM windows were searched".into());
        }
        if cap["pcm_windows_found"].as_u64() != Some(0)
            || cap["opus_packets_found"].as_u64() != Some(0)
            || cap["room_id_found"].as_bool() != Some(false)
        {
            failures.push(format!("the relay saw plaintext: {cap}"));
        }
        if cap["opus_packets_searched"].as_u64().unwrap_or(0) < 100 {
            failures.push(format!(
                "the senders' Opus packets were not searched for in the capture: {cap}"
            ));
        }

        // The relay restarts mid-call: relayed members re-reserve and resume within 5 s.
        let r = testbed(&[
            "--nat-a",
            "random-port",
            "--nat-b",
            "port-preserving",
            "--seconds",
            "10",
            "--restart-relay-at",
            "3",
        ]);
        if r["testbed"]["relay_restart"]["same_peer_id"].as_bool() != Some(true) {
            failures.push("restarted relay has another peer id".into());
        }
        for p in r["pairs"].as_array().cloned().unwrap_or_default() {
            match p["resumed_within_ms"].as_f64() {
                Some(ms) if ms <= 5000.0 => {}
                other => failures.push(format!(
                    "relay restart: {} -> {} resumed within {other:?} ms (want <= 5000)",
                    p["from"], p["to"]
                )),
            }
        }

        // Members that punched through are not affected by a relay restart.
        let r = testbed(&[
            "--nat-a",
            "port-preserving",
            "--nat-b",
            "port-preserving",
            "--seconds",
            "8",
            "--restart-relay-at",
            "4",
        ]);
        check_pairs(&r, "punched", "punched, relay restarted", &mut failures);
        for p in r["pairs"].as_array().cloned().unwrap_or_default() {
            // No departure after the restart, so this is the longest gap in what was heard
            // (the test signal's own pauses are up to about 0.5 s).
            match p["resumed_within_ms"].as_f64() {
                Some(ms) if ms <= 1000.0 => {}
                other => failures.push(format!(
                    "punched pair {} -> {} was interrupted by the relay restart: {other:?} ms",
                    p["from"], p["to"]
                )),
            }
        }
    } else {
        eprintln!(
            "SKIP NAT scenarios: this confab binary has no `call --relay` yet \
             (only the public/public call ran)"
        );
    }
    check_clean(&mut failures);

    // The simulator's prediction equals what the real NAT did, for every pair of kinds run.
    for (a, b, path) in &outcomes {
        // B dials A (A created the room), so B is the dialer of the prediction.
        let want = predicted(b, a);
        if *path != want {
            failures.push(format!(
                "prediction for A {a} / B {b} is {want}, the testbed got {path}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "testbed failures:\n{}",
        failures.join("\n")
    );
}

/// The subset of `confab-sim testbed --matrix` that CI runs: every ordered pair of a few
/// kinds whose outcome was the same in every run (address-dependent filtering, a symmetric
/// NAT and the double NAT, with hairpinning on and off), each call good and on the path the model predicts. The whole matrix is
/// `confab-sim testbed --matrix` (docs/simulations.md).
#[test]
fn matrix_subset() {
    let _turn = serial();
    if !can_run("matrix_subset") {
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let kinds = ["eim-adf", "apdm-apdf", "eim-apdf@cgnat"];
    let run = Command::new(sim())
        .args(["testbed", "--matrix", "--seconds", "5", "--kinds"])
        .arg(kinds.join(","))
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("run confab-sim testbed --matrix");
    let stdout = String::from_utf8_lossy(&run.stdout);
    eprintln!("{stdout}");
    assert!(
        run.status.success(),
        "the matrix did not run: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let csv = std::fs::read_to_string(out.path().join("matrix.csv")).expect("matrix.csv");
    let rows: Vec<Vec<String>> = csv
        .lines()
        .skip(1)
        .map(|l| {
            l.split(',')
                .map(|f| f.trim_matches('"').to_string())
                .collect()
        })
        .collect();
    // 3 x 3 ordered pairs, and the carrier neighbours once more without hairpinning.
    assert_eq!(rows.len(), 10, "{csv}");
    let mut failures = Vec::new();
    for r in &rows {
        let (a, b, predicted, got, ok) = (&r[0], &r[1], &r[4], &r[7], &r[11]);
        // The model's prediction here is the test's own, not the report's.
        let want = predicted_with_hairpin(b, a, r[2] != "off");
        if *predicted != want {
            failures.push(format!(
                "a {a} / b {b}: the CSV predicts {predicted}, the model {want}"
            ));
        }
        if got != &want {
            failures.push(format!(
                "a {a} / b {b}: the testbed got {got}, the model predicts {want}"
            ));
        }
        if ok != "true" {
            failures.push(format!("a {a} / b {b}: the call was not good"));
        }
    }
    check_clean(&mut failures);
    assert!(
        failures.is_empty(),
        "matrix subset:\n{}",
        failures.join("\n")
    );
}

fn predicted_with_hairpin(dialer: &str, listener: &str, hairpin: bool) -> String {
    let rtts = Rtts {
        direct_ms: 0.1,
        relay_ms: 0.2,
    };
    predict(
        home(dialer),
        home(listener),
        &[Transport::Tcp],
        hairpin,
        rtts,
    )
    .path
    .to_string()
}
