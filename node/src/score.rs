//! Scoring a call whose members sent the test signals: frames, latency, MOS and the
//! correlation of what each receiver heard with what each sender sent. Shared by
//! `confab demo` and the real-NAT testbed.
//!
//! Mouth-to-ear is measured on the signal: each sender's test signal carries a chirp train
//! ([`crate::media::onsets`]) at known capture instants, each receiver lays what it plays
//! on its playout timeline (`confab call --timeline-dir`), and the chirps found there give
//! the delay of every one. The timestamp-based figures of the receiver's report are kept
//! beside it (`mouth_to_ear_timestamps_ms`, and `transit_buffer_ms`, frame complete to
//! frame played).

use std::path::Path;

use serde::Serialize;

use crate::call::{CallReport, ReceivedStream};
use crate::media::{audio, onsets, FRAME_SAMPLES};

/// Samples at the start of what a receiver heard that the correlation leaves out (120 ms):
/// a receiver that joins a stream in its middle starts its Opus decoder there, and the
/// decoder's first frames, before its state has converged, differ from what a decoder that
/// heard the whole stream plays (measured: up to 6 frames, loudest under the chirps).
pub const DECODER_WARMUP: usize = 120 * 48;

/// Largest delay searched when aligning what was sent with what was heard (100 ms).
pub const MAX_LAG: usize = 4_800;
/// Length of the looped test signal each participant sends (matches `call --signal`).
pub const SIGNAL_SECS: f64 = audio::TEST_SIGNAL_SECS;

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
}

impl Latency {
    /// Nearest-rank median and 95th percentile of `values` (ms, one decimal).
    pub fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let pick = |p: f64| {
            let n = v.len();
            (n > 0).then(|| {
                let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
                (v[rank - 1] * 10.0).round() / 10.0
            })
        };
        Self {
            p50: pick(0.5),
            p95: pick(0.95),
        }
    }
}

/// The chirps of a pair: how many the sender sent while the receiver was playing it, and
/// how many were found on the receiver's timeline.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Onsets {
    pub expected: usize,
    pub found: usize,
    /// The smallest delay found, ms (never below the algorithmic delay: checked).
    pub min_ms: Option<f64>,
    /// Capture time of each chirp found, ms after the first one expected, and its delay,
    /// ms (one decimal): how the delay moved during the call.
    pub delays_ms: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Pair {
    pub from: String,
    pub to: String,
    pub path: String,
    /// The sender's frame duration, and its algorithmic delay (frame plus look-ahead), ms.
    pub frame_ms: u8,
    pub algorithmic_delay_ms: f64,
    pub frames_sent: u64,
    pub frames_received: u64,
    pub frames_lost: u64,
    pub frames_concealed: u64,
    /// Mouth-to-ear measured on the signal (the chirps' capture instants to where they
    /// played on the receiver's timeline).
    pub mouth_to_ear_ms: Latency,
    /// The receiver's own figure from the timestamps (transit and buffer plus frame and
    /// look-ahead): what `confab call` reports without a known signal.
    pub mouth_to_ear_timestamps_ms: Latency,
    /// Frame complete at the sender to frame played (the old "mouth-to-ear").
    pub transit_buffer_ms: Latency,
    pub onsets: Onsets,
    pub mos: f64,
    /// Pearson correlation of what was heard with what was sent, lined up by delay, over
    /// the signal outside the chirps ([`onsets::chirp_marks`]) and after the decoder's
    /// first [`DECODER_WARMUP`] samples.
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
/// Mouth-to-ear on the signal, 20 ms frames: median and 95th percentile.
pub const MAX_P50_MS: f64 = 40.0;
pub const MAX_P95_MS: f64 = 60.0;
/// Mouth-to-ear on the signal, 10 ms frames: median.
pub const MAX_P50_MS_10: f64 = 25.0;
/// Share of the chirps sent that must be found.
pub const MIN_ONSETS_FOUND: f64 = 0.8;

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
        .map(|i| onsets::signal_with_chirps(i, SIGNAL_SECS))
        .collect();
    let chirp_marks: Vec<Vec<bool>> = signals
        .iter()
        .map(|s| onsets::chirp_marks(s.len()))
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
                    let frame = onsets_frame_samples(rx);
                    let start = rx.first_seq.unwrap_or(0) as usize * frame;
                    let sent: Vec<i16> = (0..heard.len() + MAX_LAG)
                        .map(|k| sig[(start + k) % sig.len()])
                        .collect();
                    let (_, lag) = audio::aligned_correlation(&sent, &heard, MAX_LAG);
                    let marks = &chirp_marks[si];
                    let correlation = audio::correlation_where(&sent, &heard, lag, |k| {
                        lag + k >= DECODER_WARMUP && !marks[(start + k) % marks.len()]
                    });
                    (correlation, Heard { sent, heard, lag })
                });
            let (signal_m2e, onsets) = rx
                .map(|rx| on_the_signal(s, rx, signals[si].len()))
                .unwrap_or_default();
            let pair = Pair {
                from: names[si].clone(),
                to: names[ri].clone(),
                path: rx.map_or_else(|| "none".into(), |rx| rx.path.clone()),
                frame_ms: rx.map_or(s.sending.frame_ms, |rx| rx.frame_ms),
                algorithmic_delay_ms: rx.map_or(0.0, |rx| rx.algorithmic_delay_ms),
                frames_sent,
                frames_received: rx.map_or(0, |rx| rx.frames_received),
                frames_lost: rx.map_or(0, |rx| rx.frames_lost),
                frames_concealed: rx.map_or(0, |rx| rx.frames_concealed),
                mouth_to_ear_ms: Latency::of(&signal_m2e),
                mouth_to_ear_timestamps_ms: Latency {
                    p50: rx.and_then(|rx| rx.mouth_to_ear_p50_ms),
                    p95: rx.and_then(|rx| rx.mouth_to_ear_p95_ms),
                },
                transit_buffer_ms: Latency {
                    p50: rx.and_then(|rx| rx.transit_buffer_p50_ms),
                    p95: rx.and_then(|rx| rx.transit_buffer_p95_ms),
                },
                onsets,
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

/// Samples per frame of the stream a receiver heard.
fn onsets_frame_samples(rx: &ReceivedStream) -> usize {
    if rx.frame_ms == 0 {
        FRAME_SAMPLES
    } else {
        crate::media::codec::frame_samples(rx.frame_ms)
    }
}

/// Mouth-to-ear of every chirp of sender `s` found on receiver `rx`'s timeline of it (ms),
/// and the count. A chirp is expected when its search window lies where the receiver was
/// playing the sender (between the first and the last sound on the timeline).
fn on_the_signal(s: &CallReport, rx: &ReceivedStream, signal_len: usize) -> (Vec<f64>, Onsets) {
    let Some(tl) = rx.timeline.as_ref() else {
        return (Vec::new(), Onsets::default());
    };
    let Ok(timeline) = audio::read_wav(Path::new(&tl.path)) else {
        return (Vec::new(), Onsets::default());
    };
    let frame = crate::media::codec::frame_samples(s.sending.frame_ms.max(1));
    let sent = s.frames_captured * frame as u64;
    let all = onsets::onsets(signal_len, sent, s.sending.capture_origin_ms);
    let first = timeline.iter().position(|&x| x != 0);
    let last = timeline.iter().rposition(|&x| x != 0);
    let (Some(first), Some(last)) = (first, last) else {
        return (Vec::new(), Onsets::default());
    };
    let per_ms = crate::media::codec::SAMPLES_PER_MS as f64;
    let heard_from = tl.origin_ms as f64 + first as f64 / per_ms;
    let heard_until = tl.origin_ms as f64 + last as f64 / per_ms;
    let expected: Vec<onsets::Onset> = all
        .into_iter()
        .filter(|o| {
            o.captured_ms >= heard_from
                && o.captured_ms + onsets::MAX_DELAY_MS as f64 <= heard_until
        })
        .collect();
    let measured = onsets::measure(&timeline, tl.origin_ms, &expected);
    let t0 = expected.first().map_or(0.0, |o| o.captured_ms);
    let round = |x: f64| (x * 10.0).round() / 10.0;
    let delays_ms: Vec<(f64, f64)> = expected
        .iter()
        .zip(&measured)
        .filter_map(|(o, d)| d.map(|d| (round(o.captured_ms - t0), round(d))))
        .collect();
    let found: Vec<f64> = measured.into_iter().flatten().collect();
    let counts = Onsets {
        expected: expected.len(),
        found: found.len(),
        min_ms: found.iter().copied().reduce(f64::min),
        delays_ms,
    };
    (found, counts)
}

/// Whether a pair worked: frames, correlation, chirps found, and none of them earlier than
/// the algorithmic delay allows. This is what the demo's `ok` and exit code stand for; the
/// latency targets are [`pair_meets_latency`].
pub fn pair_ok(p: &Pair) -> bool {
    p.frames_sent > 0
        && p.frames_received as f64 >= MIN_RECEIVED_SHARE * p.frames_sent as f64
        && p.correlation >= MIN_CORRELATION
        && p.onsets.found > 0
        && p.onsets.min_ms.is_some_and(|m| m >= p.algorithmic_delay_ms)
}

/// Whether a pair's mouth-to-ear on the signal meets the latency targets on loopback
/// (p50 <= 40 ms and p95 <= 60 ms at 20 ms frames, p50 <= 25 ms at 10 ms), measured on at
/// least [`MIN_ONSETS_FOUND`] of the chirps sent (a chirp played damaged — concealed, or
/// cut where the buffer gave back delay — is not found, and a busy machine damages more).
/// Reported beside `ok`, not part of it: these are figures of an otherwise idle machine,
/// which a busy one misses without the call being broken.
pub fn pair_meets_latency(p: &Pair) -> bool {
    let measured = p.onsets.expected > 0
        && p.onsets.found as f64 >= MIN_ONSETS_FOUND * p.onsets.expected as f64;
    let max_p50 = if p.frame_ms == 10 {
        MAX_P50_MS_10
    } else {
        MAX_P50_MS
    };
    measured
        && p.mouth_to_ear_ms.p50.is_some_and(|v| v <= max_p50)
        && (p.frame_ms == 10 || p.mouth_to_ear_ms.p95.is_some_and(|v| v <= MAX_P95_MS))
}

/// A pair's verdict for the tables: `ok`, `ok, slow` (latency targets missed) or `FAIL`.
pub fn verdict(p: &Pair) -> &'static str {
    match (pair_ok(p), pair_meets_latency(p)) {
        (false, _) => "FAIL",
        (true, false) => "ok, slow",
        (true, true) => "ok",
    }
}
