//! Per-stream media statistics and the ITU-T G.107 E-model MOS estimate.
//!
//! Everything here is plain arithmetic over counters the [`crate::jitter`] buffer maintains;
//! memory is fixed per stream (the latency histogram has a fixed number of buckets) and no
//! function panics on any input, NaN and infinities included.

use serde::{Deserialize, Serialize};

/// Largest latency (ms) with its own 1 ms bucket; larger values go to the overflow bucket.
pub const HISTOGRAM_MAX_MS: usize = 2000;
/// 1 ms buckets for 0..=2000 ms plus one overflow bucket.
const BUCKETS: usize = HISTOGRAM_MAX_MS + 2;
const OVERFLOW: usize = BUCKETS - 1;
/// Values are capped here before they enter the running sum, so the mean stays finite.
const SUM_CAP_MS: f64 = 1.0e12;

/// Fixed-size latency histogram: 1 ms buckets 0..=2000 ms plus an overflow bucket. Bounded memory.
///
/// A value `v` goes to bucket `floor(v)`; negative values and NaN go to bucket 0, values of
/// 2001 ms and more to the overflow bucket. Percentiles use the nearest-rank method and report
/// the lower edge of the bucket (so integer inputs come back exactly); a percentile that falls
/// in the overflow bucket reports the largest value recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyHistogram {
    buckets: Box<[u64]>,
    count: u64,
    sum_ms: f64,
    max_ms: f64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            buckets: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            sum_ms: 0.0,
            max_ms: 0.0,
        }
    }

    /// Record one latency sample in milliseconds. Negative values and NaN count as 0 ms.
    pub fn record(&mut self, ms: f64) {
        let v = if ms.is_nan() || ms <= 0.0 {
            0.0
        } else {
            ms.min(SUM_CAP_MS)
        };
        // `v` is in [0, 1e12]; the cast saturates and the comparison keeps it in range.
        let idx = if v >= (HISTOGRAM_MAX_MS + 1) as f64 {
            OVERFLOW
        } else {
            (v.floor() as usize).min(HISTOGRAM_MAX_MS)
        };
        if let Some(b) = self.buckets.get_mut(idx) {
            *b = b.saturating_add(1);
        }
        self.count = self.count.saturating_add(1);
        self.sum_ms += v;
        if v > self.max_ms {
            self.max_ms = v;
        }
    }

    /// Number of samples recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Nearest-rank percentile, `p` in `[0, 1]` (clamped); `None` if empty or `p` is NaN.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        if self.count == 0 || p.is_nan() {
            return None;
        }
        let p = p.clamp(0.0, 1.0);
        // rank in 1..=count
        let rank = ((p * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen: u64 = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen = seen.saturating_add(n);
            if seen >= rank {
                return Some(if i == OVERFLOW { self.max_ms } else { i as f64 });
            }
        }
        Some(self.max_ms)
    }

    /// Mean of the recorded samples (after the clamping described on [`record`](Self::record)).
    pub fn mean(&self) -> Option<f64> {
        if self.count == 0 {
            None
        } else {
            Some(self.sum_ms / self.count as f64)
        }
    }
}

/// Default basic signal-to-noise ratio minus simultaneous impairments, `Ro - Is`, with all
/// G.107 parameters at their defaults (and advantage factor A = 0).
pub const R_DEFAULT: f64 = 93.2;

/// Equipment impairment factor `Ie` used for Opus.
///
/// G.113 (Appendix I) has no entry for Opus; its narrowband table gives `Ie = 0` for G.711,
/// and Opus at the wideband bitrates confab uses (≥ 16 kbit/s, 48 kHz) is at least as clean as
/// G.711 on the narrowband R scale used here, so `Ie = 0` (no intrinsic codec impairment).
pub const OPUS_IE: f64 = 0.0;

/// Packet-loss robustness factor `Bpl` used for Opus.
///
/// Taken from ITU-T G.113 Appendix I (Table I.3), which gives `Bpl = 25.1` for G.711 with
/// the packet-loss concealment of G.711 Appendix I (and 4.3 without concealment). Opus runs
/// with PLC and in-band FEC, so we borrow the "codec with PLC" value; it is an estimate, not
/// a value ITU-T published for Opus.
pub const OPUS_BPL: f64 = 25.1;

/// Delay impairment `Id` for a one-way mouth-to-ear delay `d` in ms, with the common
/// approximation of the G.107/G.108 curve (Cole & Rosenbluth):
/// `Id = 0.024 d + 0.11 (d - 177.3) H(d - 177.3)`. Non-decreasing in `d`.
fn delay_impairment(d: f64) -> f64 {
    let d = sanitize_delay(d);
    let mut id = 0.024 * d;
    if d > 177.3 {
        id += 0.11 * (d - 177.3);
    }
    id
}

/// Negative or NaN delays count as 0; delays are capped at 1e6 ms (R is at its floor long
/// before that) so that the arithmetic stays finite.
fn sanitize_delay(d: f64) -> f64 {
    if d.is_nan() || d <= 0.0 {
        0.0
    } else {
        d.min(1.0e6)
    }
}

/// Loss ratio clamped to `[0, 1]`; NaN counts as 0.
fn sanitize_ratio(r: f64) -> f64 {
    if r.is_nan() {
        0.0
    } else {
        r.clamp(0.0, 1.0)
    }
}

/// Burst ratio clamped to `[0.1, 1000]`; NaN counts as 1 (random loss).
fn sanitize_burst(b: f64) -> f64 {
    if b.is_nan() {
        1.0
    } else {
        b.clamp(0.1, 1000.0)
    }
}

/// ITU-T G.107 E-model rating factor, simplified with G.107's defaults:
/// `R = 93.2 - Id - Ie_eff`, where `Id` is the delay impairment for `one_way_delay_ms`
/// (see the approximation above) and
/// `Ie_eff = Ie + (95 - Ie) * Ppl / (Ppl / BurstR + Bpl)` with `Ppl = 100 * loss_ratio`
/// (percent) and the Opus constants [`OPUS_IE`] and [`OPUS_BPL`].
///
/// Inputs are sanitised: negative/NaN delay → 0, loss ratio clamped to `[0, 1]`, burst ratio
/// clamped to `[0.1, 1000]` (NaN → 1). The result can be below 0 for very bad conditions.
pub fn emodel_r(one_way_delay_ms: f64, loss_ratio: f64, burst_ratio: f64) -> f64 {
    let id = delay_impairment(one_way_delay_ms);
    let ppl = 100.0 * sanitize_ratio(loss_ratio);
    let burst = sanitize_burst(burst_ratio);
    let ie_eff = OPUS_IE + (95.0 - OPUS_IE) * ppl / (ppl / burst + OPUS_BPL);
    R_DEFAULT - id - ie_eff
}

/// G.107 mapping from R to the estimated mean opinion score, clamped to `[1, 4.5]`:
/// `MOS = 1 + 0.035 R + R (R - 60) (100 - R) 7e-6` for `0 < R < 100`. NaN maps to 1.
///
/// Non-decreasing in R: the polynomial dips slightly below 1 for R < ~6.5, which the clamp
/// removes, and is increasing on the rest of (0, 100).
pub fn mos_from_r(r: f64) -> f64 {
    if r.is_nan() || r <= 0.0 {
        return 1.0;
    }
    if r >= 100.0 {
        return 4.5;
    }
    let mos = 1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7.0e-6;
    mos.clamp(1.0, 4.5)
}

/// [`emodel_r`] followed by [`mos_from_r`].
pub fn emodel_mos(one_way_delay_ms: f64, loss_ratio: f64, burst_ratio: f64) -> f64 {
    mos_from_r(emodel_r(one_way_delay_ms, loss_ratio, burst_ratio))
}

/// Per remote stream counters, maintained by [`crate::jitter::JitterBuffer`].
///
/// Every sequence number that the playout point passes is a *slot*, and every slot is
/// exactly one of: played (`frames_played`), concealed (`frames_concealed`, the caller ran
/// PLC/FEC), or skipped without output (`frames_skipped`, when the buffer resynchronises
/// after a large jump or a silence). Concealed and skipped slots are *missed* slots.
///
/// Precise definitions and the invariants the jitter buffer keeps:
/// * `frames_received` — distinct frames that arrived and were taken in: stored for playout,
///   or recognised as late. Duplicates and frames refused as too far ahead are not included.
///   `frames_received == frames_played + frames_late + (frames currently buffered)`.
/// * `frames_late` — frames that arrived after their slot had already been passed (concealed
///   or skipped); they are dropped.
/// * `frames_late_matched` — the late frames whose slot is still in the buffer's bounded
///   history and was known to be missed (not a duplicate of a played frame).
/// * `frames_lost` — missed slots whose frame never arrived (so far):
///   `frames_lost == frames_concealed + frames_skipped - frames_late_matched`.
/// * `frames_dropped` — arrivals refused because their seq was more than `capacity` frames
///   ahead of the playout point (not stored; their slots will be missed).
/// * `loss_runs` — number of maximal runs of consecutive missed slots (for the burst ratio).
#[derive(Debug, Clone, Default)]
pub struct StreamStats {
    /// Distinct frames that arrived (stored, or recognised as late).
    pub frames_received: u64,
    /// Frames that arrived after their slot had been passed (dropped).
    pub frames_late: u64,
    /// Missed slots whose frame never arrived.
    pub frames_lost: u64,
    /// Playout slots filled by PLC/FEC (a `Playout::Conceal` was returned).
    pub frames_concealed: u64,
    /// Arrivals of a seq already played, already buffered, or already late.
    pub frames_duplicate: u64,
    /// Frames handed out for playout.
    pub frames_played: u64,
    /// Slots passed without output on a resync (large seq jump, or resumption after silence).
    pub frames_skipped: u64,
    /// Arrivals refused as too far ahead of the playout point.
    pub frames_dropped: u64,
    /// Late frames matched to a slot known to have been missed (subtracted from `frames_lost`).
    pub frames_late_matched: u64,
    /// Number of runs of consecutive missed slots.
    pub loss_runs: u64,
    /// Whether the last slot passed was missed (so the next missed slot extends the run).
    pub in_loss_run: bool,
    /// Transit and buffering of played frames: playout time minus the time the frame was
    /// complete at the sender (its capture timestamp, which is that of its first sample,
    /// plus one frame). Negative values (clocks apart) count as 0.
    pub transit_buffer: LatencyHistogram,
    /// The stream's algorithmic delay, ms: frame duration plus the sender's codec
    /// look-ahead. Mouth-to-ear is `transit_buffer` plus this, so never below it.
    pub algorithmic_delay_ms: f64,
    /// RFC 3550 interarrival jitter estimate, in ms.
    pub jitter_ms: f64,
}

impl StreamStats {
    /// Slots passed by the playout point so far.
    pub fn slots(&self) -> u64 {
        self.frames_played
            .saturating_add(self.frames_concealed)
            .saturating_add(self.frames_skipped)
    }

    /// Slots that were missed (concealed or skipped).
    pub fn missed_slots(&self) -> u64 {
        self.frames_concealed.saturating_add(self.frames_skipped)
    }

    /// Fraction of slots that had nothing to play: lost and late frames together (late frames
    /// are as useless to the listener as lost ones). 0 when no slot has passed.
    pub fn loss_ratio(&self) -> f64 {
        let slots = self.slots();
        if slots == 0 {
            0.0
        } else {
            self.missed_slots() as f64 / slots as f64
        }
    }

    /// G.113 Appendix I burst ratio from the observed loss runs: the mean observed length of
    /// a run of missed slots divided by the mean run length expected under random loss at the
    /// same loss probability `p`, which is `1 / (1 - p)`. So `BurstR = mean_run * (1 - p)`;
    /// 1.0 for random loss, > 1 for bursty loss, and 1.0 when nothing was missed. When every
    /// slot was missed (p = 1) the mean run length itself is returned.
    pub fn burst_ratio(&self) -> f64 {
        let missed = self.missed_slots();
        if missed == 0 || self.loss_runs == 0 {
            return 1.0;
        }
        let mean_run = missed as f64 / self.loss_runs as f64;
        let p = self.loss_ratio();
        if p >= 1.0 {
            mean_run
        } else {
            mean_run * (1.0 - p)
        }
    }

    /// E-model MOS from the median mouth-to-ear latency (0 if nothing played yet), the loss
    /// ratio (late included) and the burst ratio.
    /// Mouth-to-ear percentile `p`, ms: the transit-and-buffer percentile plus the
    /// algorithmic delay (the same constant for every frame, so it commutes with the
    /// percentile). What the sample captured at `t` is played at, minus `t`, on one clock.
    pub fn mouth_to_ear(&self, p: f64) -> Option<f64> {
        let algo = sanitize_delay(self.algorithmic_delay_ms);
        self.transit_buffer.percentile(p).map(|v| v + algo)
    }

    /// E-model MOS from the median mouth-to-ear delay (algorithmic delay included) and the
    /// loss. With no frame played yet, the delay is the algorithmic delay alone.
    pub fn mos(&self) -> f64 {
        let delay = self
            .mouth_to_ear(0.5)
            .unwrap_or(sanitize_delay(self.algorithmic_delay_ms));
        emodel_mos(delay, self.loss_ratio(), self.burst_ratio())
    }

    /// A serialisable summary.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            frames_received: self.frames_received,
            frames_lost: self.frames_lost,
            frames_late: self.frames_late,
            frames_concealed: self.frames_concealed,
            frames_played: self.frames_played,
            mouth_to_ear_p50_ms: self.mouth_to_ear(0.5),
            mouth_to_ear_p95_ms: self.mouth_to_ear(0.95),
            transit_buffer_p50_ms: self.transit_buffer.percentile(0.5),
            transit_buffer_p95_ms: self.transit_buffer.percentile(0.95),
            jitter_ms: self.jitter_ms,
            mos: self.mos(),
        }
    }

    /// Account for one slot passed by the playout point (`missed`: concealed or skipped).
    pub(crate) fn note_slot(&mut self, missed: bool) {
        if missed {
            if !self.in_loss_run {
                self.loss_runs = self.loss_runs.saturating_add(1);
            }
            self.in_loss_run = true;
        } else {
            self.in_loss_run = false;
        }
    }
}

/// Serialisable summary of a [`StreamStats`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    pub frames_received: u64,
    pub frames_lost: u64,
    pub frames_late: u64,
    pub frames_concealed: u64,
    pub frames_played: u64,
    /// Mouth-to-ear percentiles: transit and buffer plus the algorithmic delay.
    pub mouth_to_ear_p50_ms: Option<f64>,
    pub mouth_to_ear_p95_ms: Option<f64>,
    /// Frame complete at the sender to frame played, percentiles.
    pub transit_buffer_p50_ms: Option<f64>,
    pub transit_buffer_p95_ms: Option<f64>,
    pub jitter_ms: f64,
    pub mos: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, eps: f64) -> bool {
        (a - b).abs() <= eps
    }

    #[test]
    fn histogram_percentiles_of_known_set() {
        let mut h = LatencyHistogram::new();
        assert_eq!(h.percentile(0.5), None);
        assert_eq!(h.mean(), None);
        for v in 1..=100 {
            h.record(f64::from(v));
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.percentile(0.5), Some(50.0));
        assert_eq!(h.percentile(0.95), Some(95.0));
        assert_eq!(h.percentile(0.0), Some(1.0));
        assert_eq!(h.percentile(1.0), Some(100.0));
        assert_eq!(h.percentile(f64::NAN), None);
        assert!(close(h.mean().unwrap_or(0.0), 50.5, 1e-9));
    }

    #[test]
    fn histogram_edges() {
        let mut h = LatencyHistogram::new();
        h.record(-5.0);
        h.record(f64::NAN);
        h.record(2000.7);
        h.record(5000.0);
        h.record(f64::INFINITY);
        assert_eq!(h.count(), 5);
        assert_eq!(h.percentile(0.0), Some(0.0));
        assert_eq!(h.percentile(0.4), Some(0.0));
        assert_eq!(h.percentile(0.6), Some(2000.0));
        // overflow bucket reports the largest value seen (capped)
        assert_eq!(h.percentile(1.0), Some(SUM_CAP_MS));
        assert!(h.mean().is_some_and(f64::is_finite));
        assert_eq!(h.percentile(7.0), Some(SUM_CAP_MS));
        assert_eq!(h.percentile(-1.0), Some(0.0));
    }

    #[test]
    fn emodel_ideal() {
        // R = 93.2 at no delay and no loss;
        // MOS = 1 + 0.035*93.2 + 93.2*33.2*6.8*7e-6 = 1 + 3.262 + 0.14729 = 4.409
        assert!(close(emodel_r(0.0, 0.0, 1.0), 93.2, 1e-9));
        let mos = emodel_mos(0.0, 0.0, 1.0);
        assert!(close(mos, 4.409, 0.001), "{mos}");
    }

    #[test]
    fn emodel_hand_computed_cases() {
        // 1 % random loss, no delay: Ppl = 1, BurstR = 1,
        // Ie_eff = 95 * 1 / (1/1 + 25.1) = 95 / 26.1 = 3.6398; R = 93.2 - 3.6398 = 89.560;
        // MOS = 1 + 0.035*89.560 + 89.560*29.560*10.440*7e-6 = 1 + 3.1346 + 0.19347 = 4.328
        let r = emodel_r(0.0, 0.01, 1.0);
        assert!(close(r, 89.560, 0.001), "{r}");
        let mos = emodel_mos(0.0, 0.01, 1.0);
        assert!(close(mos, 4.328, 0.001), "{mos}");

        // 150 ms one-way delay, no loss: Id = 0.024*150 = 3.6 (below the 177.3 ms knee);
        // R = 89.6; MOS = 1 + 3.136 + 89.6*29.6*10.4*7e-6 = 1 + 3.136 + 0.19308 = 4.329
        let r = emodel_r(150.0, 0.0, 1.0);
        assert!(close(r, 89.6, 1e-9), "{r}");
        let mos = emodel_mos(150.0, 0.0, 1.0);
        assert!(close(mos, 4.329, 0.001), "{mos}");

        // 300 ms: Id = 7.2 + 0.11*122.7 = 20.697; R = 72.503
        let r = emodel_r(300.0, 0.0, 1.0);
        assert!(close(r, 72.503, 1e-9), "{r}");

        // Bursty loss hurts more than random loss at the same ratio.
        assert!(emodel_r(0.0, 0.05, 3.0) < emodel_r(0.0, 0.05, 1.0));
    }

    #[test]
    fn mos_monotone_in_delay_and_loss() {
        let mut prev = f64::INFINITY;
        for d in (0..2000).step_by(5) {
            let m = emodel_mos(f64::from(d), 0.0, 1.0);
            assert!(m <= prev + 1e-12, "delay {d}");
            assert!((1.0..=4.5).contains(&m));
            prev = m;
        }
        let mut prev = f64::INFINITY;
        for l in 0..=100 {
            let m = emodel_mos(20.0, f64::from(l) / 100.0, 1.5);
            assert!(m <= prev + 1e-12, "loss {l}");
            assert!((1.0..=4.5).contains(&m));
            prev = m;
        }
        // strictly decreasing where the curve is not clamped
        assert!(emodel_mos(100.0, 0.0, 1.0) > emodel_mos(200.0, 0.0, 1.0));
        assert!(emodel_mos(0.0, 0.01, 1.0) > emodel_mos(0.0, 0.02, 1.0));
    }

    #[test]
    fn mos_from_r_is_monotone_and_clamped() {
        let mut prev = 0.0;
        for i in -100..=1200 {
            let m = mos_from_r(f64::from(i) / 10.0);
            assert!(m >= prev, "r {i}");
            assert!((1.0..=4.5).contains(&m));
            prev = m;
        }
        assert_eq!(mos_from_r(f64::NAN), 1.0);
        assert_eq!(mos_from_r(f64::INFINITY), 4.5);
        assert_eq!(mos_from_r(f64::NEG_INFINITY), 1.0);
    }

    #[test]
    fn emodel_never_nan() {
        for d in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, 1e300] {
            for l in [f64::NAN, f64::INFINITY, -1.0, 0.5, 2.0] {
                for b in [f64::NAN, 0.0, -3.0, f64::INFINITY, 1.0] {
                    let m = emodel_mos(d, l, b);
                    assert!((1.0..=4.5).contains(&m), "{d} {l} {b} -> {m}");
                }
            }
        }
    }

    #[test]
    fn stream_stats_ratios() {
        let mut s = StreamStats::default();
        assert_eq!(s.loss_ratio(), 0.0);
        assert_eq!(s.burst_ratio(), 1.0);
        assert!(close(s.mos(), 4.409, 0.001));
        // 100 slots: 90 played, 10 missed in 2 runs of 5.
        s.frames_played = 90;
        s.frames_concealed = 10;
        s.loss_runs = 2;
        assert!(close(s.loss_ratio(), 0.1, 1e-12));
        // mean run 5, random expectation 1/(1-0.1) = 1.111 -> BurstR = 4.5
        assert!(close(s.burst_ratio(), 4.5, 1e-12));
        // 10 runs of 1: BurstR = 0.9 (slightly "better than random")
        s.loss_runs = 10;
        assert!(close(s.burst_ratio(), 0.9, 1e-12));
        s.transit_buffer.record(30.0);
        s.algorithmic_delay_ms = 26.5;
        let snap = s.snapshot();
        assert_eq!(snap.transit_buffer_p50_ms, Some(30.0));
        assert_eq!(snap.mouth_to_ear_p50_ms, Some(56.5));
        assert_eq!(snap.frames_concealed, 10);
        // The MOS is that of the honest delay, not of the transit alone.
        assert!(close(
            snap.mos,
            emodel_mos(56.5, 0.1, s.burst_ratio()),
            1e-12
        ));
        assert!(snap.mos < emodel_mos(30.0, 0.1, s.burst_ratio()));
    }

    #[test]
    fn mouth_to_ear_is_never_below_the_algorithmic_delay() {
        for algo in [12.5, 26.5, 46.5] {
            let mut s = StreamStats {
                algorithmic_delay_ms: algo,
                ..StreamStats::default()
            };
            assert_eq!(s.mouth_to_ear(0.5), None);
            for v in [-50.0, f64::NAN, 0.0, 0.2, 3.0, 700.0] {
                s.transit_buffer.record(v);
            }
            for p in [0.0, 0.05, 0.5, 0.95, 1.0] {
                let m = s.mouth_to_ear(p).unwrap_or(0.0);
                assert!(m >= algo, "p{p}: {m} < {algo}");
            }
        }
    }

    #[test]
    fn note_slot_counts_runs() {
        let mut s = StreamStats::default();
        for missed in [false, true, true, false, true, false, false, true] {
            s.note_slot(missed);
        }
        assert_eq!(s.loss_runs, 3);
    }
}
