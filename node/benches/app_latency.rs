//! Browser-to-browser mouth-to-ear latency of the web app, measured on the signal.
//!
//! Two `confab app` nodes on loopback, each with its own headless Chromium. Ann's fake
//! microphone plays a click train (a 4 ms burst every 500 ms); Bob's is silent. The onset
//! of every click is found where Ann's page captures it (the capture worklet's samples, on
//! the host clock) and where Bob's page plays it (the playout worklet's output, on the host
//! clock, plus the context's output latency); the difference is the mouth-to-ear delay of
//! that click. Its parts are read from the same run: page to node (capture of a message's
//! last sample to its arrival at Ann's node), the wait in Ann's microphone ring, node to
//! node (Bob's node's own figure for Ann's stream), node to page (Bob's node playing a
//! frame to Bob's page having it) and the page's playout queue and output latency.
//!
//! `cargo bench -p confab-node --bench app_latency` (needs Debian's chromium-headless-shell).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/browser/mod.rs"]
mod browser;

use std::path::Path;
use std::time::Duration;

use browser::{create_account, create_room, diag_pcm, enter_call, AppProc, Browser};
use confab_node::media::audio::write_wav;

const RATE: usize = 48_000;
const CLICK_EVERY: usize = RATE / 2;
const SECS: usize = 10;
/// Opus at 20 ms frames: the frame itself and 6.5 ms of look-ahead.
const FLOOR_MS: f64 = 26.5;

fn click_train() -> Vec<i16> {
    let burst = RATE * 4 / 1000;
    (0..SECS * RATE)
        .map(|i| {
            let k = i % CLICK_EVERY;
            if k >= burst {
                return 0;
            }
            let w = (std::f64::consts::PI * k as f64 / burst as f64)
                .sin()
                .powi(2);
            let s = (2.0 * std::f64::consts::PI * 2_000.0 * i as f64 / RATE as f64).sin();
            (0.6 * 32767.0 * w * s) as i16
        })
        .collect()
}

/// Wall time of sample `i`, from the parts' first-sample times.
fn wall_of(marks: &[(usize, f64)], i: usize) -> f64 {
    let k = marks.partition_point(|m| m.0 <= i).saturating_sub(1);
    let (start, wall) = marks[k];
    wall + (i - start) as f64 * 1000.0 / RATE as f64
}

/// Onsets: the first loud sample after at least 200 ms of quiet.
fn onsets(marks: &[(usize, f64)], pcm: &[i16]) -> Vec<f64> {
    let (loud, quiet) = (0.15 * 32767.0, 0.05 * 32767.0);
    let (mut calm, mut armed) = (0usize, false);
    let mut out = Vec::new();
    for (i, &s) in pcm.iter().enumerate() {
        let a = f64::from(s).abs();
        if a >= loud && armed {
            out.push(wall_of(marks, i));
            armed = false;
        }
        calm = if a < quiet { calm + 1 } else { 0 };
        armed |= calm >= RATE / 5;
    }
    out
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn member(dir: &Path, name: &str, mic: &[i16]) -> (AppProc, Browser, String) {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).expect("dir");
    let wav = d.join("mic.wav");
    write_wav(&wav, mic).expect("wav");
    let app = AppProc::start(&d, &[]);
    let mut page = Browser::open(&d.join("browser"), &format!("{}&diag=1", app.url), &wav).await;
    let peer = create_account(&mut page, name).await;
    (app, page, peer)
}

async fn number(b: &mut Browser, expr: &str) -> f64 {
    b.eval(expr).await.as_f64().unwrap_or(f64::NAN)
}

async fn run(dir: &Path) {
    let (_app_a, mut a, ann) = member(dir, "Ann", &click_train()).await;
    let (_app_b, mut b, _bob) = member(dir, "Bob", &vec![0; SECS * RATE]).await;
    let ticket = create_room(&mut a).await;
    enter_call(&mut a, None).await;
    enter_call(&mut b, Some(&ticket)).await;
    b.wait_for(
        &format!("!!ui.call.members[{ann:?}]"),
        Duration::from_secs(20),
        "Ann on Bob's page",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(12)).await;

    let (cm, cp) = diag_pcm(&mut a, "confabDiag.capturedPcm()").await;
    let (pm, pp) = diag_pcm(&mut b, &format!("confabDiag.playedPcm({ann:?})")).await;

    if let Some(d) = std::env::var_os("CONFAB_BENCH_KEEP") {
        write_wav(&Path::new(&d).join("captured.wav"), &cp).expect("wav");
        write_wav(&Path::new(&d).join("played.wav"), &pp).expect("wav");
    }
    let sent = onsets(&cm, &cp);
    let heard = onsets(&pm, &pp);
    let mut delays: Vec<f64> = heard
        .iter()
        .filter_map(|&h| {
            let c = sent.iter().rev().find(|&&c| c <= h)?;
            (h - c < 450.0).then_some(h - c)
        })
        .collect();
    // Skip the first few clicks: the call was still settling.
    let settled = delays.len().saturating_sub(delays.len() * 3 / 4);
    let mut delays = delays.split_off(settled);
    assert!(
        delays.len() >= 8,
        "too few clicks matched: {delays:?} ({} sent, {} heard)",
        sent.len(),
        heard.len()
    );
    let n = delays.len();
    let p50 = percentile(&mut delays, 0.5);
    let p95 = percentile(&mut delays, 0.95);
    let min = delays[0];

    let arrival = number(&mut a, "confabDiag.media.mic.arrival_ms").await;
    let wait = number(&mut a, "confabDiag.media.mic.wait_ms").await;
    let node = number(
        &mut b,
        &format!("ui.call.members[{ann:?}].stats.mouth_to_ear_p50_ms"),
    )
    .await;
    let to_page = number(
        &mut b,
        "[...confabDiag.arrival].sort((x, y) => x - y)[confabDiag.arrival.length >> 1]",
    )
    .await;
    let queue = number(&mut b, &format!("confabDiag.queueMs({ann:?})")).await;
    let out = number(
        &mut b,
        "(ui.engine.ctx.outputLatency + ui.engine.ctx.baseLatency) * 1000",
    )
    .await;

    println!("browser-to-browser mouth-to-ear on loopback, {n} clicks (settled):");
    println!("  p50 {p50:.1} ms   p95 {p95:.1} ms   min {min:.1} ms");
    println!("parts (medians, same run):");
    println!("  page to node (capture of a message's last sample to its arrival at the node) {arrival:.1} ms");
    println!("  wait in the node's microphone ring                                           {wait:.1} ms");
    println!("  node to node (Bob's node's own figure for Ann's stream)                      {node:.1} ms");
    println!("  node to page (Bob's node plays a frame to Bob's page has it)                  {to_page:.1} ms");
    println!("  Bob's playout queue (median over the run)                                    {queue:.1} ms");
    println!("  Bob's audio output (base + output latency)                                   {out:.1} ms");
    if min < FLOOR_MS {
        println!("  BELOW THE FLOOR of {FLOOR_MS} ms: the measurement is wrong");
        std::process::exit(1);
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and wants no run.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if browser::chromium().is_none() {
        eprintln!("app_latency needs Chromium: apt-get install chromium-headless-shell");
        std::process::exit(1);
    }
    let dir = tempfile::tempdir().expect("tmp");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run(dir.path()));
}
