//! A call in the web app, as the browser tests hold it: members (a `confab app` and its own
//! browser with a fake microphone), and what they heard.

use std::path::Path;
use std::time::{Duration, Instant};

use confab_node::media::audio::{aligned_correlation, test_signal, write_wav};
use serde_json::Value;

use super::{create_account, played, AppProc, Browser};

pub const SIGNAL_SECS: f64 = 4.0;
pub const RATE: usize = 48_000;

pub async fn tile_names(b: &mut Browser) -> Vec<String> {
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
pub fn correlation(signal: &[i16], heard: &[i16], secs: f64) -> f64 {
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
pub async fn member_stats(b: &mut Browser, peer: &str) -> Value {
    b.eval(&format!(
        "ui.call.members[{peer:?}] && ui.call.members[{peer:?}].stats"
    ))
    .await
}

pub fn check_frames(stats: &Value, page_frames: u64, who: &str) {
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

/// The speech-like test signal `index` over a quiet steady tone, so that it never pauses and
/// the moment a mute silences it can be seen.
pub fn signal_file(dir: &Path, index: usize) -> (Vec<i16>, std::path::PathBuf) {
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

pub struct Member {
    pub app: AppProc,
    pub page: Browser,
    pub peer: String,
    pub signal: Vec<i16>,
}

pub async fn member(dir: &Path, name: &str, index: usize) -> Member {
    member_with(dir, name, index, &[]).await
}

/// A member whose browser also gets `browser_args` (a fake camera file, say).
pub async fn member_with(dir: &Path, name: &str, index: usize, browser_args: &[String]) -> Member {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).expect("dir");
    let (signal, wav) = signal_file(&d, index);
    let app = AppProc::start(&d, &[]);
    let url = format!("{}&diag=1", app.url);
    let mut page = Browser::open_with(&d.join("browser"), &url, &wav, browser_args).await;
    let peer = create_account(&mut page, name).await;
    Member {
        app,
        page,
        peer,
        signal,
    }
}

pub async fn wait_names(m: &mut Member, names: &[&str]) {
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

/// Each page played what the other sent.
pub async fn hear_each_other(a: &mut Member, b: &mut Member) {
    hears(a, &b.peer, &b.signal).await;
    hears(b, &a.peer, &a.signal).await;
}

/// `x`'s page played what `peer` sent (`signal`), and got its frames.
pub async fn hears(x: &mut Member, peer: &str, signal: &[i16]) {
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
