//! End-to-end tests of the simulator on the real scenario files, scaled down where needed.

// Tests may panic on what they did not expect.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use confab_simulator::report::summary_json;
use confab_simulator::scenario::{override_param, Scenario};
use confab_simulator::sim::run;

fn scenario_text(name: &str) -> String {
    // simulations/simulator -> simulations/scenarios
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scenarios")
        .join(name);
    std::fs::read_to_string(&p).expect("scenario file")
}

/// The scenario file with some fields overridden (same NAT mix and models).
fn scaled(name: &str, overrides: &[(&str, &str)]) -> Scenario {
    let mut text = scenario_text(name);
    for (k, v) in overrides {
        text = override_param(&text, k, v).expect("override");
    }
    Scenario::parse(&text, name).expect("valid scenario")
}

fn small_census() -> Scenario {
    scaled(
        "nat-census.toml",
        &[
            ("rooms.0.count", "200"),
            ("rooms.0.join_spread_s", "10.0"),
            ("duration_s", "25.0"),
        ],
    )
}

#[test]
fn every_shipped_scenario_parses() {
    for f in [
        "nat-census.toml",
        "mesh-size.toml",
        "churn.toml",
        "scale-10k.toml",
    ] {
        Scenario::parse(&scenario_text(f), f).unwrap_or_else(|e| panic!("{f}: {e}"));
    }
    let sc = Scenario::parse(&scenario_text("scale-10k.toml"), "scale-10k").expect("parse");
    assert_eq!(sc.nodes(), 10_000);
    assert_eq!(sc.rooms.iter().map(|g| g.count).sum::<u32>(), 1_000);
    assert!(sc.duration_s >= 600.0);
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let sc = scaled(
        "nat-census.toml",
        &[("rooms.0.count", "40"), ("duration_s", "15.0")],
    );
    let a = summary_json(&run(&sc, Some(5), &mut |_, _| {}).summary).expect("json");
    let b = summary_json(&run(&sc, Some(5), &mut |_, _| {}).summary).expect("json");
    assert_eq!(a, b, "same seed must give identical summary.json bytes");
    let c = summary_json(&run(&sc, Some(6), &mut |_, _| {}).summary).expect("json");
    assert_ne!(a, c, "another seed draws another population");
}

#[test]
fn nat_census_punches_about_seventy_percent() {
    let out = run(&small_census(), None, &mut |_, _| {});
    let s = &out.summary;
    let rate = s.holepunch_success_rate.expect("NATed pairs exist");
    assert!(
        (0.63..=0.77).contains(&rate),
        "hole punch success {rate} outside [0.63, 0.77]"
    );
    assert!(s.connections.holepunch_runs > 500, "{:?}", s.connections);
    let p = s.paths.as_ref().expect("paths");
    let total = p.direct + p.punched + p.relayed + p.failed;
    assert!((total - 1.0).abs() < 0.01, "{total}");
    // Every pair's simulated outcome is the one predicted (or relayed after unlucky
    // attempts, which the per-attempt failure allows).
    for pair in &s.nat_pairs {
        match pair.predicted.as_str() {
            "direct" => assert_eq!(pair.direct, pair.attempts - pair.failed, "{pair:?}"),
            "relayed" => assert_eq!(pair.punched, 0, "{pair:?}"),
            _ => assert!(pair.punched >= pair.relayed, "{pair:?}"),
        }
    }
    assert!(s.relays.circuits_opened > 0);
}

#[test]
fn the_protocol_really_runs_admission_and_rekeying() {
    // No churn: a full mesh of n members admits n(n-1) times and sends one sender key per
    // admission, as counted by Room::counters().
    let sc = scaled(
        "churn.toml",
        &[
            ("rooms.0.count", "3"),
            ("rooms.0.size", "5"),
            ("duration_s", "8.0"),
            ("churn.start_s", "1000.0"),
            ("media.enabled", "false"),
            ("nat.mix", "{ public = 1.0 }"),
        ],
    );
    let s = run(&sc, None, &mut |_, _| {}).summary;
    assert_eq!(s.room.admissions, 3 * 5 * 4);
    assert_eq!(s.room.sender_key_messages, 3 * 5 * 4);
    assert_eq!(s.room.handshakes_started, 3 * 5 * 4);
    assert_eq!(s.room.ratchets, 3 * 5 * 4);
    assert_eq!(s.room.fresh_rotations, 0);

    // With churn: departures make the others rotate, which costs sender-key messages.
    let sc = scaled(
        "churn.toml",
        &[
            ("rooms.0.count", "3"),
            ("duration_s", "30.0"),
            ("media.start_s", "2.0"),
            ("churn.start_s", "4.0"),
            ("churn.mean_stay_s", "8.0"),
            ("churn.mean_away_s", "3.0"),
        ],
    );
    let s = run(&sc, None, &mut |_, _| {}).summary;
    assert!(s.room.leaves > 5, "{:?}", s.room);
    assert!(
        s.room.departures > 0 && s.room.fresh_rotations > 0,
        "{:?}",
        s.room
    );
    assert!(
        s.room.sender_key_messages > s.room.admissions,
        "{:?}",
        s.room
    );
    let per_change = s.room.rekey_messages_per_change.expect("changes");
    assert!(per_change > 1.0, "{per_change}");
    let m = s.media.expect("media");
    assert!(m.join_to_first_audio_ms.n > 0, "{m:?}");
    assert!(m.frames_played > 1000, "{m:?}");
    assert_eq!(s.room.media_decrypt_failures, 0);
}

#[test]
fn mesh_upload_grows_with_room_size_and_quality_is_sane() {
    let mut text = scenario_text("mesh-size.toml");
    // Keep sizes 2 and 4 only (the first and third groups), 6 s of media.
    let keep: String = {
        let head = text.split("[[rooms]]").next().expect("head").to_string();
        head + "[[rooms]]\ncount = 1\nsize = 2\njoin_spread_s = 1.0\n[[rooms]]\ncount = 1\nsize = 4\njoin_spread_s = 1.0\n"
    };
    text = keep;
    text = override_param(&text, "media.start_s", "4.0").expect("o");
    text = override_param(&text, "media.duration_s", "6.0").expect("o");
    text = override_param(&text, "duration_s", "11.0").expect("o");
    let sc = Scenario::parse(&text, "mesh").expect("parse");
    let m = run(&sc, None, &mut |_, _| {}).summary.media.expect("media");
    assert_eq!(m.by_room_size.len(), 2);
    let (two, four) = (&m.by_room_size[0], &m.by_room_size[1]);
    let ratio = four.upload_kbps_per_participant / two.upload_kbps_per_participant;
    assert!((2.5..3.5).contains(&ratio), "upload ratio {ratio}: {m:?}");
    let p50 = two.mouth_to_ear_p50_ms.expect("latency");
    assert!((26.5..150.0).contains(&p50), "{p50}");
    assert!(two.mos_mean.expect("mos") > 3.5, "{two:?}");
}

#[test]
fn mouth_to_ear_includes_framing_and_look_ahead_and_never_falls_below_them() {
    let base = {
        let text = scenario_text("mesh-size.toml");
        let head = text.split("[[rooms]]").next().expect("head").to_string();
        head + "[[rooms]]\ncount = 2\nsize = 3\njoin_spread_s = 1.0\n"
    };
    let mut p50s = Vec::new();
    for (frame, lookahead) in [("20", 6.5), ("10", 6.5), ("10", 2.5)] {
        let mut text = override_param(&base, "media.start_s", "4.0").expect("o");
        text = override_param(&text, "media.duration_s", "4.0").expect("o");
        text = override_param(&text, "duration_s", "9.0").expect("o");
        text = override_param(&text, "media.frame_ms", frame).expect("o");
        text = override_param(&text, "media.lookahead_ms", &lookahead.to_string()).expect("o");
        let sc = Scenario::parse(&text, "m2e").expect("parse");
        let m = run(&sc, None, &mut |_, _| {}).summary.media.expect("media");
        let algo: f64 = frame.parse::<f64>().expect("ms") + lookahead;
        let p50 = m.mouth_to_ear_p50_ms.expect("p50");
        let p95 = m.mouth_to_ear_p95_ms.expect("p95");
        // Framing and look-ahead, a network of a few ms at least, the buffer's 5 ms.
        assert!(p50 >= algo + 5.0, "{frame} ms: p50 {p50} vs {algo}");
        assert!(p95 >= p50, "{frame} ms");
        for row in &m.by_room_size {
            assert!(
                row.mouth_to_ear_p50_ms.is_some_and(|v| v >= algo),
                "{row:?}"
            );
        }
        p50s.push(p50);
    }
    // 10 ms less framing is 10 ms less mouth-to-ear (the rest does not depend on it much),
    // and the low-delay look-ahead 4 ms less again.
    assert!(p50s[0] - p50s[1] >= 7.0, "{p50s:?}");
    assert!(p50s[1] - p50s[2] >= 3.0, "{p50s:?}");
    let bad = override_param(&base, "media.frame_ms", "15").expect("o");
    assert!(Scenario::parse(&bad, "bad").is_err());
}

#[test]
fn run_writes_json_csv_svg_and_png() {
    let sc = scaled(
        "churn.toml",
        &[
            ("rooms.0.count", "2"),
            ("duration_s", "20.0"),
            ("churn.mean_stay_s", "8.0"),
        ],
    );
    let out = run(&sc, None, &mut |_, _| {});
    let dir = tempfile::tempdir().expect("tmp");
    confab_simulator::report::write_all(&out, dir.path()).expect("write");
    for f in [
        "summary.json",
        "series.csv",
        "nat_pairs.csv",
        "connections.svg",
        "connections.png",
        "by_room_size.csv",
    ] {
        let p = dir.path().join(f);
        assert!(p.exists(), "{f} missing");
        assert!(std::fs::metadata(&p).expect("meta").len() > 0, "{f} empty");
    }
    let png = std::fs::read(dir.path().join("connections.png")).expect("png");
    assert_eq!(&png[1..4], b"PNG");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("summary.json")).expect("json"))
            .expect("valid json");
    assert!(v.get("paths").is_some());
}

#[test]
fn sweep_runs_the_grid_and_plots_against_the_parameter() {
    let text = override_param(&scenario_text("nat-census.toml"), "rooms.0.count", "15").expect("o");
    let text = override_param(&text, "duration_s", "12.0").expect("o");
    let dir = tempfile::tempdir().expect("tmp");
    let params =
        vec![confab_simulator::sweep::Param::parse("nat.attempt_failure=0.0,0.5").expect("param")];
    let rows = confab_simulator::sweep::sweep(
        &text,
        "nat-census",
        &params,
        None,
        &["paths.relayed".to_string()],
        dir.path(),
    )
    .expect("sweep");
    assert_eq!(rows.len(), 2);
    assert!(dir.path().join("sweep.csv").exists());
    assert!(dir.path().join("sweep-paths_relayed.svg").exists());
    assert!(dir.path().join("sweep-paths_relayed.png").exists());
    assert!(dir.path().join("run-001").join("summary.json").exists());
}

/// Every file under `dir` (relative path, bytes), leaving out the shard manifests.
fn tree(dir: &std::path::Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    fn walk(
        root: &std::path::Path,
        dir: &std::path::Path,
        out: &mut std::collections::BTreeMap<PathBuf, Vec<u8>>,
    ) {
        for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if !p
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .starts_with("shard-")
            {
                let rel = p.strip_prefix(root).expect("under root").to_path_buf();
                out.insert(rel, std::fs::read(&p).expect("read"));
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn a_sweep_in_shards_merges_to_the_same_bytes_as_on_one_machine() {
    use confab_simulator::sweep::{merge, sweep, sweep_shard, Param, Shard};
    let text = override_param(&scenario_text("nat-census.toml"), "rooms.0.count", "8").expect("o");
    let text = override_param(&text, "duration_s", "8.0").expect("o");
    let params = vec![
        Param::parse("nat.attempt_failure=0.0,0.5").expect("param"),
        Param::parse("seed=1,2,3").expect("param"),
    ];
    let metrics = ["paths.relayed".to_string()];
    let one = tempfile::tempdir().expect("tmp");
    sweep(&text, "nat-census", &params, None, &metrics, one.path()).expect("sweep");

    // Three shards on "three machines", merged into a fourth directory.
    let shards: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("tmp")).collect();
    for (i, dir) in shards.iter().enumerate() {
        let shard = Shard::parse(&format!("{i}/3")).expect("shard");
        let ran =
            sweep_shard(&text, "nat-census", &params, None, shard, dir.path()).expect("shard");
        assert_eq!(ran, 2, "6 points over 3 shards");
    }
    let merged = tempfile::tempdir().expect("tmp");
    let inputs: Vec<PathBuf> = shards.iter().map(|d| d.path().to_path_buf()).collect();
    let rows = merge(&inputs, &metrics, merged.path()).expect("merge");
    assert_eq!(rows.len(), 6);
    let (a, b) = (tree(one.path()), tree(merged.path()));
    assert!(
        a.keys().any(|k| k.ends_with("sweep.csv")) && a.len() > 6,
        "{:?}",
        a.keys()
    );
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, v) in &a {
        assert!(b[k] == *v, "{} differs", k.display());
    }

    // Merging in place (every shard wrote to one shared directory) gives the same.
    let shared = tempfile::tempdir().expect("tmp");
    for i in 0..3 {
        let shard = Shard::parse(&format!("{i}/3")).expect("shard");
        sweep_shard(&text, "nat-census", &params, None, shard, shared.path()).expect("shard");
    }
    merge(&[shared.path().to_path_buf()], &metrics, shared.path()).expect("merge");
    assert_eq!(tree(shared.path()), a);

    // A missing shard, a shard of another sweep, a bad shard spec: clear errors.
    let err = merge(&inputs[..2], &metrics, merged.path()).expect_err("missing");
    assert!(err.to_string().contains("shard 2/3 is missing"), "{err}");
    let other = tempfile::tempdir().expect("tmp");
    let shard = Shard::parse("2/3").expect("shard");
    sweep_shard(&text, "nat-census", &params, Some(99), shard, other.path()).expect("shard");
    let mixed = vec![
        inputs[0].clone(),
        inputs[1].clone(),
        other.path().to_path_buf(),
    ];
    let err = merge(&mixed, &metrics, merged.path()).expect_err("mixed");
    assert!(err.to_string().contains("another sweep"), "{err}");
    for bad in ["3/3", "1/0", "x/2", "1", "-1/2"] {
        assert!(Shard::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn bad_scenarios_name_the_field_and_the_line() {
    // Unknown field (serde): named, with its line.
    let text = scenario_text("nat-census.toml")
        .replace("max_circuits = 512", "max_circuits = 512\nmax_circuitz = 3");
    let line = text
        .lines()
        .position(|l| l.starts_with("max_circuitz"))
        .expect("line")
        + 1;
    let e = Scenario::parse(&text, "x.toml")
        .expect_err("unknown field")
        .to_string();
    assert!(e.contains("max_circuitz"), "{e}");
    assert!(e.contains(&format!("x.toml:{line}:")), "{e}");

    // Wrong type.
    let text =
        scenario_text("nat-census.toml").replace("duration_s = 60.0", "duration_s = \"long\"");
    let line = text
        .lines()
        .position(|l| l.starts_with("duration_s"))
        .expect("line")
        + 1;
    let e = Scenario::parse(&text, "x.toml")
        .expect_err("type")
        .to_string();
    assert!(e.contains("duration_s"), "{e}");
    assert!(e.contains(&format!("x.toml:{line}:")), "{e}");

    // Out of range (validation after parsing), in an inline table.
    let text = scenario_text("nat-census.toml").replace("loss_bad = 0.2", "loss_bad = 1.5");
    let line = text
        .lines()
        .position(|l| l.contains("loss_bad = 1.5"))
        .expect("line")
        + 1;
    let e = Scenario::parse(&text, "x.toml")
        .expect_err("range")
        .to_string();
    assert!(e.contains("access.loss.loss_bad"), "{e}");
    assert!(e.contains(&format!("x.toml:{line}:")), "{e}");

    // Out of range in an array of tables.
    let text = scenario_text("mesh-size.toml").replacen("size = 3\n", "size = 99\n", 1);
    let line = text.lines().position(|l| l == "size = 99").expect("line") + 1;
    let e = Scenario::parse(&text, "m.toml")
        .expect_err("range")
        .to_string();
    assert!(e.contains("rooms.1.size"), "{e}");
    assert!(e.contains(&format!("m.toml:{line}:")), "{e}");

    // Unknown NAT kind.
    let text = scenario_text("nat-census.toml").replace("\"eim-adf\" = 0.12", "\"eim-xdf\" = 0.12");
    let e = Scenario::parse(&text, "x.toml")
        .expect_err("nat")
        .to_string();
    assert!(e.contains("nat.mix.eim-xdf"), "{e}");
    assert!(!e.contains("x.toml:0:"), "{e}");
}

#[test]
fn a_minimal_inline_scenario_runs_as_in_the_crate_docs() {
    // The text of the embedding example in src/lib.rs: everything else is defaulted.
    let text = r#"
name = "two"
duration_s = 20.0
[nat.mix]
public = 1.0
[[rooms]]
count = 1
size = 2
"#;
    let text = override_param(text, "rooms.0.size", "4").expect("override");
    let out = run(
        &Scenario::parse(&text, "two").expect("parse"),
        None,
        &mut |_, _| {},
    );
    assert_eq!(out.summary.nodes, 4);
    assert_eq!(out.summary.room.admissions, 4 * 3);
}
