//! Video in the web app, in real headless Chromium: two nodes, each with its own browser
//! whose fake camera plays a different generated Y4M in which every frame carries its
//! number (16 big black or white cells: 12 bits of number, 4 of check).
//!
//! The sending page reads the number of every frame it takes from the camera and notes when
//! (capture); the receiving page reads the number of every frame it decodes and notes when
//! it drew it (render), both on the host's clock. Checks, for the camera of each member at
//! the other: frames drawn >= 95 % of frames sent, >= 25 fps at 640x360, no freeze over
//! 500 ms, glass-to-glass (capture of frame i to render of frame i) p50 <= 150 ms; audio in
//! the same call still meets the app's audio figures; a shared (fake) screen reaches the
//! other page and is shown large. Skipped when no Chromium is installed, unless
//! `CONFAB_REQUIRE_BROWSER` is set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod browser;
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use browser::call::{hear_each_other, member_with, wait_names, Member};
use browser::{create_room, enter_call, rt, skip};
use serde_json::Value;

const W: usize = 640;
const H: usize = 360;
const FPS: usize = 30;
/// Frames in the camera file (it loops; numbers are unwrapped).
const FRAMES: usize = 300;
/// How long video is measured, s.
const MEASURE_SECS: f64 = 6.0;

/// The 16-bit code of frame number `n`: the number in bits 0-11, a check in 12-15.
fn code(n: usize) -> u16 {
    let n = (n & 0xfff) as u16;
    n | (((n ^ (n >> 4) ^ (n >> 8)) & 0xf) << 12)
}

/// A 4:2:0 Y4M of [`FRAMES`] frames: each frame's number in the top band, below it a
/// moving picture of its own per `seed` (so that the encoder has real work).
fn camera_file(dir: &Path, seed: usize) -> PathBuf {
    let path = dir.join(format!("camera-{seed}.y4m"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("y4m"));
    writeln!(f, "YUV4MPEG2 W{W} H{H} F{FPS}:1 Ip A1:1 C420jpeg").expect("header");
    let band = H / 9;
    let mut y = vec![0u8; W * H];
    let chroma = vec![(90 + 60 * seed) as u8; W * H / 4];
    for n in 0..FRAMES {
        let c = code(n);
        for row in 0..H {
            for col in 0..W {
                y[row * W + col] = if row < band {
                    if c >> (col * 16 / W) & 1 == 1 {
                        235
                    } else {
                        16
                    }
                } else {
                    let t = (n * (2 + seed)) as f64;
                    let v = ((col as f64 + t) / 23.0).sin() * ((row as f64 - t * 0.5) / 17.0).cos();
                    (128.0 + 80.0 * v) as u8
                };
            }
        }
        f.write_all(b"FRAME\n").expect("frame");
        f.write_all(&y).expect("y");
        f.write_all(&chroma).expect("u");
        f.write_all(&chroma).expect("v");
    }
    f.flush().expect("flush");
    path
}

async fn video_member(dir: &Path, name: &str, index: usize) -> Member {
    std::fs::create_dir_all(dir.join(name)).expect("dir");
    let cam = camera_file(&dir.join(name), index);
    let args = [format!(
        "--use-file-for-fake-video-capture={}",
        cam.display()
    )];
    member_with(dir, name, index, &args).await
}

/// Frame numbers as read, unwrapped across the file's loops: (number, time).
fn unwrap_numbers(raw: &[(Option<i64>, f64)]) -> Vec<(i64, f64)> {
    let mut out = Vec::new();
    let mut base = 0;
    let mut last: Option<i64> = None;
    for &(n, t) in raw {
        let Some(n) = n else { continue };
        if let Some(l) = last {
            if n + base < l - (FRAMES as i64) / 2 {
                base += FRAMES as i64;
            }
        }
        last = Some(n + base);
        out.push((n + base, t));
    }
    out
}

/// `[[number or null, time], …]` from a page, in time order.
fn pairs(v: &Value) -> Vec<(Option<i64>, f64)> {
    let mut out: Vec<(Option<i64>, f64)> = v
        .as_array()
        .expect("array")
        .iter()
        .map(|x| (x[0].as_i64(), x[1].as_f64().unwrap_or(0.0)))
        .collect();
    out.sort_by(|x, y| x.1.total_cmp(&y.1));
    out
}

/// What one page's camera did at the other page (printed whole).
#[derive(Debug)]
#[allow(dead_code)]
struct VideoFigures {
    sent: usize,
    drawn: usize,
    unread: usize,
    fps: f64,
    max_gap_ms: f64,
    p50_ms: f64,
    p95_ms: f64,
    size: (u64, u64),
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Figures over the last [`MEASURE_SECS`] of what was sent (less the last half second,
/// still in flight when the pages were read).
fn figures(sent_raw: &Value, recv: &Value) -> VideoFigures {
    let sent = unwrap_numbers(&pairs(sent_raw));
    let recv_raw = pairs(&recv["frames"]);
    let unread = recv_raw.iter().filter(|x| x.0.is_none()).count();
    let drawn = unwrap_numbers(&recv_raw);
    let end = sent.last().expect("frames sent").1 - 500.0;
    let start = end - MEASURE_SECS * 1000.0;
    let window: Vec<&(i64, f64)> = sent.iter().filter(|s| s.1 >= start && s.1 < end).collect();
    let mut latencies = Vec::new();
    let mut times = Vec::new();
    for s in &window {
        // The drawing of this very frame (same number, after its capture, within 5 s).
        if let Some(d) = drawn
            .iter()
            .find(|d| d.0 == s.0 && d.1 >= s.1 && d.1 - s.1 < 5000.0)
        {
            latencies.push(d.1 - s.1);
            times.push(d.1);
        }
    }
    assert!(!latencies.is_empty(), "no frame sent was drawn");
    times.sort_by(f64::total_cmp);
    let span_end = end + percentile(&mut latencies.clone(), 0.5);
    let span_start = start + percentile(&mut latencies.clone(), 0.5);
    let mut edges = vec![span_start];
    edges.extend(times.iter().copied());
    edges.push(span_end);
    let max_gap_ms = edges.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    VideoFigures {
        sent: window.len(),
        drawn: times.len(),
        unread,
        fps: times.len() as f64 / MEASURE_SECS,
        max_gap_ms,
        p50_ms: percentile(&mut latencies.clone(), 0.5),
        p95_ms: percentile(&mut latencies, 0.95),
        size: (
            recv["width"].as_u64().unwrap_or(0),
            recv["height"].as_u64().unwrap_or(0),
        ),
    }
}

async fn start_track(m: &mut Member, track: &str) {
    m.page
        .eval(&format!("confabVideo.start({track:?}), true"))
        .await;
    m.page
        .wait_for(
            &format!("!!confabVideo.senders[{track:?}] || !!document.getElementById('call-error').textContent"),
            Duration::from_secs(10),
            "the track to start",
        )
        .await;
    let err = m
        .page
        .eval("document.getElementById('call-error').textContent")
        .await;
    assert_eq!(err, Value::String(String::new()), "starting the {track}");
}

/// How many frames of `peer`'s `track` page `m` drew.
fn decoded_expr(peer: &str, track: &str) -> String {
    format!(
        "((confabDiag.video.stats.recv[{:?}] || {{}}).decoded || 0)",
        format!("{peer}/{track}")
    )
}

async fn camera_figures(from: &mut Member, to: &mut Member) -> VideoFigures {
    let sent = from
        .page
        .eval("confabDiag.video.full().then(d => d.lists.sent.camera)")
        .await;
    let key = format!("{}/camera", from.peer);
    let recv = to
        .page
        .eval(&format!(
            "confabDiag.video.full().then(d => ({{frames: d.lists.recv[{key:?}], \
               width: d.stats.recv[{key:?}].width, height: d.stats.recv[{key:?}].height}}))"
        ))
        .await;
    let f = figures(&sent, &recv);
    let sender = from
        .page
        .eval("JSON.stringify(confabDiag.video.stats.sent)")
        .await;
    let receiver = to
        .page
        .eval("JSON.stringify(confabDiag.video.stats.recv)")
        .await;
    eprintln!(
        "  sender's page: {}\n  receiver's page (delayMs: held for lip sync): {}",
        sender.as_str().unwrap_or(""),
        receiver.as_str().unwrap_or("")
    );
    let node = to
        .page
        .eval("JSON.stringify(confabDiag.media && confabDiag.media.video)")
        .await;
    eprintln!(
        "camera of {} at {}: {f:?}\n  node (receiver): {}",
        from.app.dir.display(),
        to.app.dir.display(),
        node.as_str().unwrap_or("")
    );
    f
}

fn check_camera(f: &VideoFigures, who: &str) {
    let share = f.drawn as f64 / f.sent.max(1) as f64;
    assert!(
        f.sent as f64 >= 25.0 * MEASURE_SECS,
        "{who}: only {} frames sent",
        f.sent
    );
    assert!(
        share >= 0.95,
        "{who}: {} of {} frames drawn",
        f.drawn,
        f.sent
    );
    assert!(f.fps >= 25.0, "{who}: {:.1} fps", f.fps);
    assert_eq!(f.size, (W as u64, H as u64), "{who}: frame size");
    assert!(
        f.max_gap_ms <= 500.0,
        "{who}: a freeze of {:.0} ms",
        f.max_gap_ms
    );
    assert!(
        f.p50_ms <= 150.0,
        "{who}: glass-to-glass p50 {:.0} ms",
        f.p50_ms
    );
}

fn run(scenario: impl AsyncFnOnce(&Path)) {
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
    rt().block_on(scenario(&path));
}

#[test]
fn two_browsers_see_each_other_and_a_shared_screen() {
    run(video_scenario);
}

/// Three browsers and three nodes need more than the two cores of the machines this was
/// written on (with anything else running, the fake cameras fall to 11-23 fps; every frame
/// sent was still drawn; on a quiet machine the cameras met the figures and the audio did
/// not): run it with `--ignored` on a machine with four or more.
#[test]
#[ignore = "needs four or more cores"]
fn three_browsers_see_each_other() {
    run(three_scenario);
}

/// Everyone's camera at everyone else, checked.
async fn all_cameras(ms: &mut [Member]) {
    let enough = (FPS as f64 * (MEASURE_SECS + 1.5)) as u64;
    let peers: Vec<String> = ms.iter().map(|m| m.peer.clone()).collect();
    for (i, m) in ms.iter_mut().enumerate() {
        for (j, p) in peers.iter().enumerate() {
            if i != j {
                m.page
                    .wait_for(
                        &format!("{} >= {enough}", decoded_expr(p, "camera")),
                        Duration::from_secs(30),
                        "camera frames drawn",
                    )
                    .await;
            }
        }
    }
    let mut figs = Vec::new();
    for i in 0..ms.len() {
        for j in 0..ms.len() {
            if i != j {
                let (from, to) = two(ms, i, j);
                figs.push((camera_figures(from, to).await, format!("camera {i} at {j}")));
            }
        }
    }
    for (f, who) in &figs {
        check_camera(f, who);
    }
}

/// Two distinct members of `ms`, mutably.
fn two(ms: &mut [Member], i: usize, j: usize) -> (&mut Member, &mut Member) {
    assert_ne!(i, j);
    if i < j {
        let (l, r) = ms.split_at_mut(j);
        (&mut l[i], &mut r[0])
    } else {
        let (l, r) = ms.split_at_mut(i);
        (&mut r[0], &mut l[j])
    }
}

async fn three_scenario(dir: &Path) {
    let mut ms = vec![
        video_member(dir, "Ann", 1).await,
        video_member(dir, "Bob", 2).await,
        video_member(dir, "Cat", 3).await,
    ];
    let ticket = create_room(&mut ms[0].page).await;
    enter_call(&mut ms[0].page, None).await;
    for m in &mut ms[1..] {
        enter_call(&mut m.page, Some(&ticket)).await;
    }
    for m in &mut ms {
        wait_names(m, &["Ann", "Bob", "Cat"]).await;
    }
    for m in &mut ms {
        start_track(m, "camera").await;
    }
    all_cameras(&mut ms).await;
    for (i, j) in [(0, 1), (1, 2), (2, 0)] {
        let (x, y) = two(&mut ms, i, j);
        hear_each_other(x, y).await;
    }
}

/// CPU time a process has used, s (Linux; `None` elsewhere).
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Share of a core each member's node used over `secs`.
async fn node_cpu(ms: &[Member], secs: f64) -> Vec<f64> {
    let pids: Vec<u32> = ms.iter().map(|m| m.app.child.id()).collect();
    let before: Vec<f64> = pids.iter().map(|p| cpu_secs(*p).unwrap_or(0.0)).collect();
    // A rate over time: this wait is the measurement.
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    pids.iter()
        .zip(before)
        .map(|(p, b)| (cpu_secs(*p).unwrap_or(0.0) - b) / secs)
        .collect()
}

async fn video_scenario(dir: &Path) {
    let mut ms = vec![
        video_member(dir, "Ann", 1).await,
        video_member(dir, "Bob", 2).await,
    ];
    let ticket = create_room(&mut ms[0].page).await;
    enter_call(&mut ms[0].page, None).await;
    enter_call(&mut ms[1].page, Some(&ticket)).await;
    for m in &mut ms {
        wait_names(m, &["Ann", "Bob"]).await;
    }
    let audio_only = node_cpu(&ms, 3.0).await;
    for m in &mut ms {
        start_track(m, "camera").await;
    }
    all_cameras(&mut ms).await;
    let with_video = node_cpu(&ms, 3.0).await;
    eprintln!(
        "node CPU, share of a core: audio only {audio_only:.3?}, audio and one camera each way {with_video:.3?}"
    );
    let (a, b) = two(&mut ms, 0, 1);
    hear_each_other(a, b).await;
    screen_share_is_shown_large(a, b).await;
}

async fn screen_share_is_shown_large(a: &mut Member, b: &mut Member) {
    start_track(a, "screen").await;
    let peer = a.peer.clone();
    let took = b
        .page
        .wait_for(
            &format!("{} >= 30", decoded_expr(&peer, "screen")),
            Duration::from_secs(30),
            "screen frames drawn",
        )
        .await;
    let key = format!("{peer}/screen");
    let shown = b
        .page
        .eval(&format!(
            "(() => {{ const s = document.getElementById('stage'); const c = s.querySelector('canvas'); \
               const t = document.querySelector('.tile canvas'); const r = confabDiag.video.stats.recv[{key:?}]; \
               return [!s.hidden, r.width, r.height, c ? c.getBoundingClientRect().width : 0, \
                       t ? t.getBoundingClientRect().width : 0]; }})()"
        ))
        .await;
    eprintln!("screen share at Bob after {took:?}: [shown, width, height, css width, tile css width] = {shown}");
    assert_eq!(shown[0], Value::Bool(true), "the stage is shown");
    assert!(
        shown[1].as_u64().unwrap_or(0) >= 800,
        "screen frame width: {shown}"
    );
    let stage_w = shown[3].as_f64().unwrap_or(0.0);
    let tile_w = shown[4].as_f64().unwrap_or(0.0);
    assert!(
        stage_w > 1.5 * tile_w,
        "the screen is shown larger than a camera tile: {shown}"
    );
    let shot = std::env::var_os("CONFAB_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| b.app.dir.clone());
    b.page.screenshot(&shot.join("app-video.png")).await;
}
