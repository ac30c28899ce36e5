//! `confab devices` and `confab call --mic --speaker` without a sound card: each node gets
//! an ALSA configuration of its own (a `~/.asoundrc` in a temporary home) whose default
//! device captures from a raw file (a tone) and writes what it plays into another. Two
//! nodes hold a 3-second call on loopback; each must hear the other's tone.
#![cfg(feature = "devices")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const RATE: f64 = 48_000.0;

/// A home with an `.asoundrc` whose default device reads `infile` and writes `outfile`
/// (raw 16-bit little-endian mono 48 kHz on the file side, whatever format confab opens).
fn alsa_home(dir: &Path, infile: &Path, outfile: &Path) -> PathBuf {
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let conf = format!(
        r#"
pcm.confab_capture_file {{
    type file
    slave.pcm "null"
    infile "{infile}"
    file "/dev/null"
    format "raw"
}}
pcm.confab_play_file {{
    type file
    slave.pcm "null"
    file "{outfile}"
    format "raw"
}}
pcm.confab_test {{
    type asym
    capture.pcm {{
        type plug
        slave {{ pcm "confab_capture_file" format S16_LE rate 48000 channels 1 }}
    }}
    playback.pcm {{
        type plug
        slave {{ pcm "confab_play_file" format S16_LE rate 48000 channels 1 }}
    }}
}}
pcm.!default {{
    type asym
    capture.pcm "confab_test"
    playback.pcm "confab_test"
    hint {{ show on description "confab test device (files)" }}
}}
"#,
        infile = infile.display(),
        outfile = outfile.display()
    );
    std::fs::write(home.join(".asoundrc"), conf).unwrap();
    home
}

/// `hz` at a third of full scale, `secs` long, raw s16le mono 48 kHz.
fn write_tone(path: &Path, hz: f64, secs: f64) {
    let n = (RATE * secs) as usize;
    let bytes: Vec<u8> = (0..n)
        .flat_map(|i| {
            let v = (std::f64::consts::TAU * hz * i as f64 / RATE).sin() * 10_000.0;
            (v as i16).to_le_bytes()
        })
        .collect();
    std::fs::write(path, bytes).unwrap();
}

fn read_raw(path: &Path) -> Vec<i16> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// The frequency of the loud part of `pcm` (by its zero crossings), and how many seconds
/// of it are loud.
fn loud_frequency(pcm: &[i16]) -> (f64, f64) {
    let blocks: Vec<&[i16]> = pcm
        .chunks_exact(960)
        .filter(|b| {
            let rms = (b.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / 960.0).sqrt();
            rms > 1_000.0
        })
        .collect();
    let crossings: usize = blocks
        .iter()
        .map(|b| b.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count())
        .sum();
    let secs = blocks.len() as f64 * 0.02;
    (crossings as f64 / 2.0 / secs.max(1e-9), secs)
}

fn with_home(mut c: Command, home: &Path) -> Command {
    c.env("HOME", home)
        .env("XDG_CONFIG_HOME", home)
        .env_remove("ALSA_CONFIG_PATH")
        .env_remove("ALSA_CARD");
    c
}

#[test]
fn a_call_between_two_file_devices_is_heard_at_both_ends() {
    let _turn = heavy();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    init(&a, "alice");
    init(&b, "bob");
    let (a_in, a_out) = (tmp.path().join("a_in.raw"), tmp.path().join("a_out.raw"));
    let (b_in, b_out) = (tmp.path().join("b_in.raw"), tmp.path().join("b_out.raw"));
    write_tone(&a_in, 440.0, 20.0);
    write_tone(&b_in, 660.0, 20.0);
    let home_a = alsa_home(&a, &a_in, &a_out);
    let home_b = alsa_home(&b, &b_in, &b_out);

    // `confab devices` lists the file device as the default input and output.
    let mut c = with_home(confab(&a), &home_a);
    c.args(["devices", "--json"]);
    let list: Value = serde_json::from_str(&run_ok(c)).unwrap();
    let dev = list
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "default")
        .unwrap_or_else(|| panic!("no default device in {list}"));
    assert_eq!(dev["description"], "confab test device (files)");
    assert_eq!(dev["default_input"], true, "{dev}");
    assert_eq!(dev["default_output"], true, "{dev}");
    assert!(dev["input"]["rates"]
        .as_array()
        .unwrap()
        .contains(&48_000.into()));

    let port = free_port();
    let mut c = confab(&a);
    c.args(["room", "create", "--json", "--listen"])
        .arg(format!("/ip4/127.0.0.1/tcp/{port}"));
    let room: Value = serde_json::from_str(&run_ok(c)).unwrap();
    let ticket = room["ticket"].as_str().unwrap().to_owned();

    let call = |dir: &Path, home: &Path| {
        let mut c = with_home(confab(dir), home);
        c.args([
            "call",
            &ticket,
            "--mic",
            "--speaker",
            "--duration",
            "3",
            "--json",
        ]);
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c.spawn().expect("confab call")
    };
    let host = call(&a, &home_a);
    let joiner = call(&b, &home_b);
    let outputs = [
        host.wait_with_output().unwrap(),
        joiner.wait_with_output().unwrap(),
    ];
    let mut reports = Vec::new();
    for out in &outputs {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        // The device summaries: the mic handed frames to the call, the speaker took them.
        assert!(err.contains("mic default (48000 Hz, 1 ch"), "{err}");
        assert!(err.contains("speaker default (48000 Hz, 1 ch"), "{err}");
        for line in err
            .lines()
            .filter(|l| l.starts_with("mic ") || l.starts_with("speaker "))
        {
            eprintln!("{line}");
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        reports.push(v);
    }
    // What each speaker played is the other's microphone: its tone, for about as long as
    // the call says it heard the other.
    for (v, other, out, hz) in [
        (&reports[0], "bob", &a_out, 660.0),
        (&reports[1], "alice", &b_out, 440.0),
    ] {
        let heard = v["received"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == other)
            .unwrap_or_else(|| panic!("{other} not heard: {v}"));
        let frames = heard["frames_received"].as_u64().unwrap();
        assert!(frames >= 50, "{other}: {frames} frames");
        // The speaker's ring is in the mouth-to-ear figure, the microphone's beside it.
        let speaker = heard["device_playout_ms"].as_f64().expect("speaker ring");
        let m2e = heard["mouth_to_ear_p50_ms"].as_f64().expect("m2e");
        let tb = heard["transit_buffer_p50_ms"].as_f64().expect("t+b");
        let algo = heard["algorithmic_delay_ms"].as_f64().expect("algo");
        assert!(speaker > 0.0, "{heard}");
        assert!((m2e - (tb + algo + speaker)).abs() < 0.01, "{heard}");
        assert!(
            v["sending"]["device_capture_ms"]
                .as_f64()
                .expect("mic ring")
                >= 0.0,
            "{v}"
        );
        let (freq, secs) = loud_frequency(&read_raw(out));
        eprintln!(
            "{}: {secs:.2} s of sound at {freq:.1} Hz, {frames} frames",
            out.display()
        );
        let heard_secs = frames as f64 * 0.02;
        assert!(
            secs >= 0.8 * heard_secs,
            "{}: {secs} s of sound for {heard_secs} s heard",
            out.display()
        );
        assert!(
            (freq - hz).abs() < hz * 0.03,
            "{}: {freq:.0} Hz, expected {hz}",
            out.display()
        );
    }
}
