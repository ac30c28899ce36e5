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
use std::time::{Duration, Instant};

use browser::{create_account, create_room, enter_call, played, visible, AppProc, Browser};
use confab_node::media::audio::{aligned_correlation, read_wav, test_signal, write_wav};
use serde_json::Value;

const SIGNAL_SECS: f64 = 4.0;
const RATE: usize = 48_000;

fn skip() -> bool {
    if browser::chromium().is_none() {
        assert!(
            std::env::var_os("CONFAB_REQUIRE_BROWSER").is_none(),
            "CONFAB_REQUIRE_BROWSER is set but no Chromium is installed"
        );
        eprintln!("skipped: no Chromium (apt-get install chromium-headless-shell)");
        return true;
    }
    false
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn tile_names(b: &mut Browser) -> Vec<String> {
    let v = b
        .eval("[...document.querySelectorAll('.tile .name')].map(e => e.textContent)")
        .await;
    serde_json::from_value(v).expect("names")
}

/// Correlation of what was played with what was sent, per quarter-second segment of the last
/// `secs` of `heard`, each aligned on its own in `signal` (looped, as the fake microphone
/// plays it), weighted by the segment's energy; near-silent segments (the signal's pauses)
/// are left out. Each segment is aligned alone because playout in a browser runs on the
/// sound card's clock: a gap (an underrun, a drop) shifts everything after it, which says
/// nothing about whether what plays is what was sent. The gaps are counted separately.
fn correlation(signal: &[i16], heard: &[i16], secs: f64) -> f64 {
    let n = (secs * RATE as f64) as usize;
    assert!(
        heard.len() > n + RATE / 2,
        "too little audio played: {}",
        heard.len()
    );
    let window = &heard[heard.len() - n..];
    let looped: Vec<i16> = signal.iter().chain(signal).chain(signal).copied().collect();
    let rms =
        |x: &[i16]| (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
    let loud = 0.1 * rms(signal);
    let (mut sum, mut weight) = (0.0, 0.0);
    for seg in window.chunks_exact(RATE / 4) {
        let e = rms(seg);
        if e < loud {
            continue;
        }
        let (c, _) = aligned_correlation(seg, &looped, 2 * signal.len());
        sum += c * e;
        weight += e;
    }
    assert!(weight > 0.0, "nothing but silence was played");
    sum / weight
}

/// Stream statistics page `b` shows for `peer`.
async fn member_stats(b: &mut Browser, peer: &str) -> Value {
    b.eval(&format!(
        "ui.call.members[{peer:?}] && ui.call.members[{peer:?}].stats"
    ))
    .await
}

fn check_frames(stats: &Value, page_frames: u64, who: &str) {
    let received = stats["frames_received"].as_u64().expect("received");
    let lost = stats["frames_lost"].as_u64().expect("lost");
    let played = stats["frames_played"].as_u64().expect("played");
    let share = received as f64 / (received + lost).max(1) as f64;
    assert!(received > 100, "{who}: only {received} frames");
    assert!(
        share >= 0.95,
        "{who}: {received} of {} frames",
        received + lost
    );
    // The page got what the node played for it (the stats are up to a second old).
    assert!(
        page_frames as f64 >= 0.95 * played as f64,
        "{who}: the page got {page_frames} of {played} frames"
    );
}

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

/// The speech-like test signal `index` over a quiet steady tone, so that it never pauses and
/// the moment a mute silences it can be seen.
fn signal_file(dir: &Path, index: usize) -> (Vec<i16>, std::path::PathBuf) {
    let hz = 250.0 + 60.0 * index as f64;
    let s: Vec<i16> = test_signal(index, SIGNAL_SECS)
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let t = i as f64 / RATE as f64;
            let hum = 0.06 * 32767.0 * (2.0 * std::f64::consts::PI * hz * t).sin();
            (f64::from(v) + hum).clamp(-32767.0, 32767.0) as i16
        })
        .collect();
    let path = dir.join(format!("mic-{index}.wav"));
    write_wav(&path, &s).expect("wav");
    (s, path)
}

struct Member {
    app: AppProc,
    page: Browser,
    peer: String,
    signal: Vec<i16>,
}

async fn member(dir: &Path, name: &str, index: usize) -> Member {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).expect("dir");
    let (signal, wav) = signal_file(&d, index);
    let app = AppProc::start(&d, &[]);
    let mut page = Browser::open(&d.join("browser"), &format!("{}&diag=1", app.url), &wav).await;
    let peer = create_account(&mut page, name).await;
    Member {
        app,
        page,
        peer,
        signal,
    }
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

async fn wait_names(m: &mut Member, names: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = tile_names(&mut m.page).await;
        if names.iter().all(|n| got.iter().any(|g| g.starts_with(n))) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "names {names:?} not all in {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

async fn hear_each_other(a: &mut Member, b: &mut Member) {
    hears(a, &b.peer, &b.signal).await;
    hears(b, &a.peer, &a.signal).await;
}

/// `x`'s page played what `peer` sent (`signal`), and got its frames.
async fn hears(x: &mut Member, peer: &str, signal: &[i16]) {
    let who = format!("{} hearing {peer}", x.app.dir.display());
    let (_, heard) = played(&mut x.page, peer).await;
    write_wav(&x.app.dir.join(format!("played-{peer}.wav")), &heard).expect("wav");
    let c = correlation(signal, &heard, 2.0);
    let gaps = x
        .page
        .eval(&format!(
            "JSON.stringify([confabDiag.player[{peer:?}], confabDiag.media])"
        ))
        .await;
    eprintln!("{who}: correlation {c:.3}; page player, node media: {gaps}");
    assert!(c >= 0.9, "{who}: correlation {c:.3}");
    let stats = member_stats(&mut x.page, peer).await;
    let page_frames = x
        .page
        .eval(&format!("confabDiag.framesIn[{peer:?}] || 0"))
        .await
        .as_u64()
        .unwrap_or(0);
    check_frames(&stats, page_frames, &who);
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
