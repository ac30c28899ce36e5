//! Scoring a call whose members sent the test signals: frames, latency, MOS and the
//! correlation of what each receiver heard with what each sender sent. Shared by
//! `confab demo` and the real-NAT testbed.

use std::path::Path;

use serde::Serialize;

use crate::call::CallReport;
use crate::media::audio;
use crate::media::FRAME_SAMPLES;

/// Largest delay searched when aligning what was sent with what was heard (100 ms).
pub const MAX_LAG: usize = 4_800;
/// Length of the looped test signal each participant sends (matches `call --signal`).
pub const SIGNAL_SECS: f64 = audio::TEST_SIGNAL_SECS;

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Pair {
    pub from: String,
    pub to: String,
    pub path: String,
    pub frames_sent: u64,
    pub frames_received: u64,
    pub frames_lost: u64,
    pub frames_concealed: u64,
    pub mouth_to_ear_ms: Latency,
    pub mos: f64,
    pub correlation: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeUsage {
    pub name: String,
    pub cpu_share: f64,
    pub max_rss_kb: u64,
}

/// Thresholds a pair must meet for the demo to count as working.
pub const MIN_RECEIVED_SHARE: f64 = 0.95;
pub const MIN_CORRELATION: f64 = 0.9;
pub const MAX_P50_MS: f64 = 40.0;

/// A latency for the tables: `12 ms`, or `-` when there is none.
pub fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0} ms"))
}

pub fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let head: String = s.chars().take(n.saturating_sub(1)).collect();
        format!("{head}…")
    }
}

/// What a receiver heard from a sender, lined up with what the sender sent.
pub struct Heard {
    /// The sender's signal from the first frame the receiver played, `MAX_LAG` longer than
    /// `heard`.
    pub sent: Vec<i16>,
    /// The receiver's recording of that sender.
    pub heard: Vec<i16>,
    /// Delay (samples) at which the two line up best.
    pub lag: usize,
}

/// A node's CPU share of one core over its call, and its peak RSS.
pub fn node_usage(name: &str, r: &CallReport) -> NodeUsage {
    let secs = r.ended_ms.saturating_sub(r.started_ms) as f64 / 1000.0;
    NodeUsage {
        name: name.to_string(),
        cpu_share: if secs > 0.0 {
            r.cpu_seconds / secs
        } else {
            0.0
        },
        max_rss_kb: r.max_rss_kb,
    }
}

/// Scores every (sender → receiver) pair of a call whose node `i` sent
/// `audio::test_signal(i, SIGNAL_SECS)` and recorded with `--output-dir`: frames, latency,
/// MOS from the receiver's report, correlation from its recording. `extra` sees each pair
/// (sender index, receiver index, what was heard if anything) and adds its own figures.
/// Returns the pairs, the nodes' usage, and whether every pair met the targets.
pub fn score<T>(
    names: &[String],
    reports: &[Option<CallReport>],
    mut extra: impl FnMut(usize, usize, Option<&Heard>) -> T,
) -> (Vec<(Pair, T)>, Vec<NodeUsage>, bool) {
    let mut pairs = Vec::new();
    let mut ok = reports.iter().all(Option::is_some);
    let signals: Vec<Vec<i16>> = (0..names.len())
        .map(|i| audio::test_signal(i, SIGNAL_SECS))
        .collect();
    let mut usage = Vec::new();
    for (ri, r) in reports.iter().enumerate() {
        let Some(r) = r else { continue };
        usage.push(node_usage(&names[ri], r));
        for (si, s) in reports.iter().enumerate() {
            if si == ri {
                continue;
            }
            let Some(s) = s else { continue };
            let frames_sent = s.sent.get(&r.peer_id).map_or(0, |x| x.frames_sent);
            let rx = r.received.iter().find(|x| x.from == s.peer_id);
            let heard = rx
                .and_then(|rx| rx.output.as_ref().map(|p| (rx, p)))
                .and_then(|(rx, p)| Some((rx, audio::read_wav(Path::new(p)).ok()?)))
                .map(|(rx, heard)| {
                    let sig = &signals[si];
                    let start = rx.first_seq.unwrap_or(0) as usize * FRAME_SAMPLES;
                    let sent: Vec<i16> = (0..heard.len() + MAX_LAG)
                        .map(|k| sig[(start + k) % sig.len()])
                        .collect();
                    let (correlation, lag) = audio::aligned_correlation(&sent, &heard, MAX_LAG);
                    (correlation, Heard { sent, heard, lag })
                });
            let pair = Pair {
                from: names[si].clone(),
                to: names[ri].clone(),
                path: rx.map_or_else(|| "none".into(), |rx| rx.path.clone()),
                frames_sent,
                frames_received: rx.map_or(0, |rx| rx.frames_received),
                frames_lost: rx.map_or(0, |rx| rx.frames_lost),
                frames_concealed: rx.map_or(0, |rx| rx.frames_concealed),
                mouth_to_ear_ms: Latency {
                    p50: rx.and_then(|rx| rx.mouth_to_ear_p50_ms),
                    p95: rx.and_then(|rx| rx.mouth_to_ear_p95_ms),
                },
                mos: rx.map_or(1.0, |rx| rx.mos),
                correlation: heard.as_ref().map_or(0.0, |(c, _)| *c),
            };
            ok &= pair_ok(&pair);
            let more = extra(si, ri, heard.as_ref().map(|(_, h)| h));
            pairs.push((pair, more));
        }
    }
    ok &= pairs.len() == names.len() * (names.len() - 1);
    (pairs, usage, ok)
}

/// Whether a pair meets the demo's targets.
pub fn pair_ok(p: &Pair) -> bool {
    p.frames_sent > 0
        && p.frames_received as f64 >= MIN_RECEIVED_SHARE * p.frames_sent as f64
        && p.correlation >= MIN_CORRELATION
        && p.mouth_to_ear_ms.p50.is_some_and(|v| v <= MAX_P50_MS)
}
