//! The web app in real headless Chromium: two nodes, each with its own browser whose fake
//! microphone plays a different signal, and a command-line member in the same room.
//!
//! Checks, on what the pages actually play: every member hears every other (correlation of
//! what was sent and what was played >= 0.9, frames >= 95 %), every page shows every name,
//! muting one page silences it for the others within 300 ms, leaving removes the tile on the
//! others within 2 s, and the command-line member hears the browsers. Skipped (with a
//! message) when no Chromium is installed; `.ci/run` installs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod browser;
mod common;

use std::path::Path;
use std::time::Duration;

use browser::call::{correlation, hear_each_other, member, wait_names, Member, RATE};
use browser::{create_room, enter_call, rt, skip, visible, Browser};
use confab_node::media::audio::read_wav;
use serde_json::Value;

/// Milliseconds from `t_ms` until what page `b` plays from `peer` stays silent.
async fn silent_after(b: &mut Browser, peer: &str, t_ms: f64) -> f64 {
    let v = b.eval(&format!("confabDiag.playedLevels({peer:?})")).await;
    let blocks: Vec<(f64, f64)> = v
        .as_array()
        .expect("levels")
        .iter()
        .map(|x| (x["wall"].as_f64().unwrap(), x["rms"].as_f64().unwrap()))
        .filter(|(w, _)| *w >= t_ms - 200.0)
        .collect();
    let quiet = |rms: f64| rms < 0.003;
    let first_quiet = (0..blocks.len())
        .find(|&i| blocks[i..].iter().all(|(_, r)| quiet(*r)))
        .expect("silence after the mute");
    assert!(
        blocks.len() - first_quiet >= 10,
        "silence must last: {blocks:?}"
    );
    assert!(first_quiet > 0, "it was already silent before the mute");
    let ms = blocks[first_quiet].0 - t_ms;
    assert!(
        ms > 0.0,
        "silence {ms:.0} ms before the mute: the measurement is wrong"
    );
    ms
}

fn start_cli(dir: &Path, ticket: &str) -> std::process::Child {
    let d = dir.join("cli");
    std::fs::create_dir_all(d.join("heard")).expect("dir");
    common::init(&d.join("data"), "Cli");
    std::fs::write(d.join("ticket"), ticket).expect("ticket");
    let mut c = common::confab(&d.join("data"));
    c.args(["call", "--tone", "440", "--duration", "9", "--json"])
        .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
        .arg("--ticket-file")
        .arg(d.join("ticket"))
        .arg("--output-dir")
        .arg(d.join("heard"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(d.join("cli.log")).expect("log"));
    c.spawn().expect("confab call")
}

#[test]
fn two_browsers_and_a_cli_member_hold_a_call() {
    if skip() {
        return;
    }
    let _heavy = common::heavy();
    let dir = tempfile::tempdir().expect("tmp");
    let keep = std::env::var_os("CONFAB_KEEP_TEST_DIR").is_some();
    let path = if keep {
        dir.keep()
    } else {
        dir.path().to_path_buf()
    };
    rt().block_on(call_scenario(&path));
}

async fn call_scenario(dir: &Path) {
    let mut a = member(dir, "Ann", 1).await;
    let mut b = member(dir, "Bob", 2).await;
    let ticket = create_room(&mut a.page).await;
    enter_call(&mut a.page, None).await;
    enter_call(&mut b.page, Some(&ticket)).await;
    let mut cli = start_cli(dir, &ticket);
    wait_names(&mut a, &["Ann", "Bob", "Cli"]).await;
    wait_names(&mut b, &["Ann", "Bob", "Cli"]).await;
    // Let everyone talk; what is compared is the last 2 s, well after the joins.
    tokio::time::sleep(Duration::from_secs(5)).await;
    hear_each_other(&mut a, &mut b).await;
    chat_arrives(&mut a, &mut b).await;
    mute_silences(&mut a, &mut b, dir).await;
    cli_heard_the_browsers(&mut cli, &a, &b, dir);
    leave_removes_the_tile(&mut a, &mut b).await;
}

async fn chat_arrives(a: &mut Member, b: &mut Member) {
    a.page.set_value("chat-input", "hello from Ann").await;
    a.page.click("chat-send").await;
    b.page
        .wait_for(
            "[...document.querySelectorAll('#chat-list li')].some(l => l.textContent === 'Annhello from Ann')",
            Duration::from_secs(3),
            "Ann's chat line on Bob's page",
        )
        .await;
}

async fn mute_silences(a: &mut Member, b: &mut Member, dir: &Path) {
    let t = a
        .page
        .eval("document.getElementById('call-mute').click(), Date.now()")
        .await
        .as_f64()
        .expect("time");
    let peer = a.peer.clone();
    b.page
        .wait_for(
            &format!("!!(ui.call.members[{peer:?}] && ui.call.members[{peer:?}].muted)"),
            Duration::from_secs(2),
            "the muted badge",
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let ms = silent_after(&mut b.page, &peer, t).await;
    eprintln!("mute to silence at the other page: {ms:.0} ms");
    assert!(
        ms <= 300.0,
        "muting took {ms:.0} ms to silence the other page"
    );
    let shot = std::env::var_os("CONFAB_SCREENSHOT_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.to_path_buf());
    b.page.screenshot(&shot.join("app-call.png")).await;
}

fn cli_heard_the_browsers(cli: &mut std::process::Child, a: &Member, b: &Member, dir: &Path) {
    let out = cli.wait_with_output_ref();
    let report: Value = serde_json::from_str(&out).expect("cli report");
    for m in [a, b] {
        let r = report["received"]
            .as_array()
            .expect("received")
            .iter()
            .find(|r| r["from"] == m.peer.as_str())
            .unwrap_or_else(|| panic!("the CLI did not hear {}: {report}", m.peer));
        let frames = r["frames_received"].as_u64().unwrap_or(0);
        assert!(frames > 150, "the CLI got {frames} frames from {}", m.peer);
        let heard = read_wav(&dir.join("cli/heard").join(format!("{}.wav", m.peer))).expect("wav");
        // Ann is muted near the end: compare a stretch from before.
        let upto = heard.len().min(4 * RATE);
        let c = correlation(&m.signal, &heard[..upto], 2.0);
        eprintln!("the CLI hearing {}: correlation {c:.3}", m.peer);
        assert!(c >= 0.9, "the CLI hearing {}: correlation {c:.3}", m.peer);
    }
}

trait WaitOutput {
    fn wait_with_output_ref(&mut self) -> String;
}

impl WaitOutput for std::process::Child {
    fn wait_with_output_ref(&mut self) -> String {
        use std::io::Read;
        let mut s = String::new();
        if let Some(mut o) = self.stdout.take() {
            o.read_to_string(&mut s).expect("cli stdout");
        }
        assert!(self.wait().expect("cli").success(), "the CLI call failed");
        s
    }
}

async fn leave_removes_the_tile(a: &mut Member, b: &mut Member) {
    b.page.click("call-leave").await;
    let peer = b.peer.clone();
    let took = a
        .page
        .wait_for(
            &format!("!document.querySelector('.tile[data-peer=\"{peer}\"]')"),
            Duration::from_secs(5),
            "the tile of the member who left to go",
        )
        .await;
    eprintln!("leave to tile gone: {} ms", took.as_millis());
    assert!(
        took <= Duration::from_secs(2),
        "the tile went after {took:?}"
    );
    b.page
        .wait_for(
            &visible("screen-home"),
            Duration::from_secs(10),
            "Bob back home",
        )
        .await;
}
