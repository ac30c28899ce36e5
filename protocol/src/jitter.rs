//! Adaptive jitter buffer (sans-IO, in the spirit of WebRTC's NetEq).
//!
//! Each remote sender's frames carry a sequence number (`u32`, +1 per frame of `frame_ms`)
//! and the sender's capture timestamp in ms. The buffer decides when each frame is played
//! and which slots must be concealed. Time only comes in as `now_ms` arguments, on the
//! receiver's clock; nothing here reads a clock, allocates per skipped frame, or panics.
//!
//! # Design
//!
//! * **Transit, baseline, jitter.** Sender and receiver clocks may differ by an arbitrary
//!   offset, so the buffer only works with `transit = now - capture_ts` (as a signed number).
//!   It keeps the last `window` transits; the *baseline* is their minimum (the fastest recent
//!   path), and a *jitter sample* is `transit - baseline`. A constant clock offset shifts
//!   every transit and the baseline alike, so it cancels out of every playout decision.
//! * **Target delay.** `target = clamp(percentile(jitter samples) + margin, min_delay,
//!   max_delay)` with the configured percentile and `margin = frame_ms / 4`. The percentile
//!   is weighted: a sample `k` arrivals old weighs `FORGET^k` (half-life about 23
//!   arrivals), so a burst — a start-up CPU spike, a moment of congestion — stops holding
//!   the target up about a second after it ended rather than for the whole window, as
//!   NetEq's forgetting histogram does. It is recomputed on every arrival (late arrivals
//!   included, so lateness grows it at once).
//! * **Playout timeline.** Slot `seq` is due at
//!   `deadline(seq) = capture(seq) + offset`, where `capture(seq)` is extrapolated from an
//!   anchor frame (`anchor_capture + (seq - anchor_seq) * frame_ms`, so missing frames still
//!   get slots) and `offset` is the playout offset, which tracks `baseline + target`.
//!   The first frame anchors the timeline with `offset = transit + min_delay`, i.e. it plays
//!   `min_delay` ms after it arrived. In the stream's first second, a frame faster by a
//!   frame or more than every one before it restarts the estimate from its own transit (the
//!   earlier ones came late together — queued while the streams opened, or held up by a
//!   start-up stall — and their wait says nothing of the path).
//! * **Smooth adaptation.** The offset only moves when a slot is consumed: it grows by at most
//!   `frame_ms` per slot (a stretch: the gap between two deadlines becomes up to one frame
//!   longer, which the caller's audio path fills like an underrun). It shrinks fast while
//!   it exceeds `baseline + target` by more than a frame — by up to half a frame per slot,
//!   as NetEq's fast accelerate does, so that a start-up backlog (the first frames queued
//!   while the media streams opened anchor the timeline late) or the delay left by a burst
//!   is given back within a few slots — and within the last frame of excess by at most
//!   `SHRINK_SPEED` frames per second of playout (`SHRINK_SPEED · frame_ms²` µs of credit
//!   per slot). The playout point
//!   (`next_seq`) only ever moves forward, so nothing is ever replayed. On a resync (below)
//!   the offset jumps straight to `baseline + target`: that happens between talk spurts.
//! * **Slots.** When `deadline(next_seq) <= now`, [`JitterBuffer::poll_playout`] plays the
//!   frame if it is buffered, or returns [`Playout::Conceal`] (offering the next frame's
//!   payload for FEC if it is buffered). A frame arriving for a slot already passed is
//!   [`PushOutcome::Late`]; whether the slot was played or missed is remembered for the last
//!   `max(2 * capacity, 64)` slots to tell late frames from duplicates.
//! * **Bounds.** At most `capacity` frames are held: a frame `capacity` or more slots ahead of
//!   the playout point is [`PushOutcome::TooFarAhead`] (dropped and counted) — unless the
//!   buffer holds nothing, in which case the timeline is *resynchronised* to that frame and
//!   the slots jumped over are counted as skipped and lost, in O(1) (a sender restart or a
//!   huge seq jump never produces thousands of concealments). Concealment with an empty
//!   buffer stops after `clamp(max_delay / frame_ms, 1, capacity)` consecutive slots: the
//!   buffer goes *idle* (nothing expected, `poll_timeout` is `None`) and the next frame
//!   resynchronises it. So one drain loop of `poll_playout` yields at most about
//!   `capacity + max_delay / frame_ms` items, whatever `now` is.
//! * **End of stream.** After [`JitterBuffer::finish`], buffered frames still play at their
//!   deadlines (gaps between them are concealed), but nothing is concealed past the last
//!   buffered frame, and `poll_timeout` becomes `None` once the buffer is empty.
//! * **Latency.** `capture_ts` is the capture time of a frame's first sample, so the frame
//!   was complete `frame_ms` later. Each played frame records its *transit and buffering*,
//!   `now - capture_ts - frame_ms` at the poll that returns it; the statistics' mouth-to-ear
//!   adds the algorithmic delay (`frame_ms` plus the sender's `lookahead_us`) to it, which
//!   is where the sample captured at `t` is played, minus `t`. Both are true figures only
//!   when the two clocks are synchronised (e.g. same host); otherwise they carry the clock
//!   offset (and never fall below the algorithmic delay: negative transits count as 0).
//! * **Sequence numbers** are treated as monotonically increasing; wrap-around is out of scope
//!   (the timeline ends after `u32::MAX`, frames older than the playout point are late).
//!
//! Counters and their invariants are documented on [`StreamStats`].

use std::collections::{BTreeMap, VecDeque};

use crate::stats::StreamStats;
use crate::wire::{MediaFormat, MAX_LOOKAHEAD_US};

/// Weight per arrival of age of a transit sample in the target's percentile (half-life of
/// about 23 arrivals, half a second at 20 ms frames; 0.985, twice that, held the delay of a
/// stall up for two seconds after it in the 8-person demo).
pub const FORGET: f64 = 0.97;
/// How many frames per second of playout the offset may shrink by within the last frame
/// of excess (beyond that it catches up by half a frame per slot): a delay that a burst
/// built up is given back within a second or two, never more than one frame at a time.
pub const SHRINK_SPEED: u64 = 4;
/// How long after a stream's first frame a much faster frame still restarts the delay
/// estimate (see [`JitterBuffer::push`]), ms.
pub const STARTUP_MS: u64 = 1_000;
/// Upper bound applied to [`JitterConfig::window`].
pub const MAX_WINDOW: usize = 10_000;
/// Upper bound applied to [`JitterConfig::capacity`].
pub const MAX_CAPACITY: usize = 4_096;

/// Jitter buffer configuration. Out-of-range values are clamped by [`JitterBuffer::new`]
/// (`frame_ms >= 1`, `lookahead_us <= MAX_LOOKAHEAD_US`, `max_delay_ms >= min_delay_ms`, `percentile` in `[0, 1]` (NaN → 0.95),
/// `window` in `1..=MAX_WINDOW`, `capacity` in `1..=MAX_CAPACITY`).
#[derive(Debug, Clone, PartialEq)]
pub struct JitterConfig {
    /// Audio per frame, ms (default 20).
    pub frame_ms: u32,
    /// The sender's codec look-ahead, µs (default 6 500, Opus'); with `frame_ms` it is the
    /// stream's algorithmic delay, which the statistics add to transit and buffering.
    pub lookahead_us: u32,
    /// Lower bound of the target delay, ms (default 5); also the initial target.
    pub min_delay_ms: u32,
    /// Upper bound of the target delay, ms (default 500).
    pub max_delay_ms: u32,
    /// Percentile of jitter samples the target delay covers (default 0.95).
    pub percentile: f64,
    /// Number of transit samples kept (default 200).
    pub window: usize,
    /// Maximum number of frames held (default 64).
    pub capacity: usize,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            frame_ms: 20,
            lookahead_us: 6_500,
            min_delay_ms: 5,
            max_delay_ms: 500,
            percentile: 0.95,
            window: 200,
            capacity: 64,
        }
    }
}

impl JitterConfig {
    /// The default buffer for a stream of `format`.
    pub fn for_format(format: MediaFormat) -> Self {
        Self {
            frame_ms: u32::from(format.frame_ms),
            lookahead_us: u32::from(format.lookahead_us),
            ..Self::default()
        }
    }

    fn sanitized(mut self) -> Self {
        self.frame_ms = self.frame_ms.max(1);
        self.lookahead_us = self.lookahead_us.min(u32::from(MAX_LOOKAHEAD_US));
        self.max_delay_ms = self.max_delay_ms.max(self.min_delay_ms);
        self.percentile = if self.percentile.is_nan() {
            0.95
        } else {
            self.percentile.clamp(0.0, 1.0)
        };
        self.window = self.window.clamp(1, MAX_WINDOW);
        self.capacity = self.capacity.clamp(1, MAX_CAPACITY);
        self
    }
}

/// What [`JitterBuffer::push`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Stored for playout.
    Accepted,
    /// Its slot was already passed (concealed or skipped): dropped, counted as late.
    Late,
    /// Already buffered, already played, or already counted late: ignored.
    Duplicate,
    /// `capacity` or more slots ahead of the playout point: dropped and counted.
    TooFarAhead,
}

/// One playout slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout {
    /// Play this frame now.
    Frame {
        seq: u32,
        capture_ts_ms: u64,
        payload: Vec<u8>,
    },
    /// Nothing arrived for this slot in time: the caller runs PLC, or decodes FEC from `fec`
    /// (the next frame's payload, if it is already buffered).
    Conceal { seq: u32, fec: Option<Vec<u8>> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Played,
    Missed,
    MissedThenLate,
}

#[derive(Debug, Clone)]
struct Buffered {
    capture_ts_ms: u64,
    payload: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct Anchor {
    seq: u64,
    capture_ms: i128,
}

/// Adaptive jitter buffer for one remote stream. See the module documentation.
#[derive(Debug, Clone)]
pub struct JitterBuffer {
    cfg: JitterConfig,
    /// `None` until the first frame arrives.
    anchor: Option<Anchor>,
    /// When the first frame arrived (receiver clock, ms).
    started_ms: u64,
    /// The next slot to play (u64 so that it can pass `u32::MAX` without overflow).
    next_seq: u64,
    /// Playout offset on the receiver clock: `deadline(seq) = capture(seq) + offset`.
    offset_ms: i128,
    /// Credit (µs) for shrinking the offset, capped at one frame.
    shrink_credit_us: u64,
    frames: BTreeMap<u64, Buffered>,
    transits: VecDeque<i64>,
    /// Transits with their weights, for the percentile (kept to avoid an allocation per
    /// arrival).
    weighted: Vec<(i64, f64)>,
    target_ms: u32,
    last_transit: Option<i64>,
    history: VecDeque<Slot>,
    history_cap: usize,
    conceal_run: usize,
    idle_after: usize,
    idle: bool,
    finished: bool,
    stats: StreamStats,
}

fn transit_of(now_ms: u64, capture_ts_ms: u64) -> i64 {
    let t = i128::from(now_ms) - i128::from(capture_ts_ms);
    // |t| < 2^64, so it fits i64 only after clamping.
    t.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

impl JitterBuffer {
    /// A new, empty buffer.
    pub fn new(cfg: JitterConfig) -> Self {
        let cfg = cfg.sanitized();
        let history_cap = cfg.capacity.saturating_mul(2).max(64);
        let idle_after = ((cfg.max_delay_ms / cfg.frame_ms) as usize).clamp(1, cfg.capacity);
        Self {
            target_ms: cfg.min_delay_ms,
            anchor: None,
            started_ms: 0,
            next_seq: 0,
            offset_ms: 0,
            shrink_credit_us: 0,
            frames: BTreeMap::new(),
            transits: VecDeque::with_capacity(cfg.window),
            weighted: Vec::with_capacity(cfg.window),
            last_transit: None,
            history: VecDeque::with_capacity(history_cap),
            history_cap,
            conceal_run: 0,
            idle_after,
            idle: false,
            finished: false,
            stats: StreamStats {
                algorithmic_delay_ms: f64::from(cfg.frame_ms) + f64::from(cfg.lookahead_us) / 1e3,
                ..StreamStats::default()
            },
            cfg,
        }
    }

    /// The (sanitised) configuration in use.
    pub fn config(&self) -> &JitterConfig {
        &self.cfg
    }

    /// Offer a frame that arrived at `now_ms`.
    pub fn push(
        &mut self,
        now_ms: u64,
        seq: u32,
        capture_ts_ms: u64,
        payload: Vec<u8>,
    ) -> PushOutcome {
        let seq = u64::from(seq);
        let transit = transit_of(now_ms, capture_ts_ms);
        if self.anchor.is_none() {
            self.started_ms = now_ms;
            self.record_arrival(transit);
            self.target_ms = self.cfg.min_delay_ms;
            self.anchor = Some(Anchor {
                seq,
                capture_ms: i128::from(capture_ts_ms),
            });
            self.next_seq = seq;
            self.offset_ms = i128::from(transit) + i128::from(self.cfg.min_delay_ms);
            return self.store(seq, capture_ts_ms, payload);
        }
        if seq < self.next_seq {
            return self.push_behind(seq, transit);
        }
        if self.frames.contains_key(&seq) {
            self.stats.frames_duplicate = self.stats.frames_duplicate.saturating_add(1);
            return PushOutcome::Duplicate;
        }
        let gap = seq - self.next_seq;
        let cap = self.cfg.capacity as u64;
        if self.idle || (gap >= cap && self.frames.is_empty()) {
            self.resync(seq, capture_ts_ms, transit, gap);
            return self.store(seq, capture_ts_ms, payload);
        }
        if gap >= cap {
            self.stats.frames_dropped = self.stats.frames_dropped.saturating_add(1);
            return PushOutcome::TooFarAhead;
        }
        let frame = i64::from(self.cfg.frame_ms);
        let starting = now_ms.saturating_sub(self.started_ms) < STARTUP_MS;
        if starting
            && self
                .baseline()
                .is_some_and(|b| transit <= b.saturating_sub(frame))
        {
            self.restart_from(transit);
        } else {
            self.record_arrival(transit);
        }
        self.store(seq, capture_ts_ms, payload)
    }

    /// In the stream's first [`STARTUP_MS`]: a frame faster by a frame or more than every
    /// one before it means those came late together (queued while the streams opened, or
    /// held up by a start-up stall). Their transits describe that wait, not the path: forget
    /// them. Before the first slot the timeline starts again from this frame's transit (the
    /// older frames are due at once); after it, the offset catches up at its fast rate.
    fn restart_from(&mut self, transit: i64) {
        self.transits.clear();
        self.last_transit = None;
        self.record_arrival(transit);
        if self.stats.slots() == 0 {
            self.offset_ms = i128::from(transit) + i128::from(self.target_ms);
        }
    }

    fn store(&mut self, seq: u64, capture_ts_ms: u64, payload: Vec<u8>) -> PushOutcome {
        self.frames.insert(
            seq,
            Buffered {
                capture_ts_ms,
                payload,
            },
        );
        self.stats.frames_received = self.stats.frames_received.saturating_add(1);
        PushOutcome::Accepted
    }

    /// A frame for a slot the playout point has already passed.
    fn push_behind(&mut self, seq: u64, transit: i64) -> PushOutcome {
        let distance = self.next_seq - seq; // >= 1
        let len = self.history.len() as u64;
        if distance <= len {
            let idx = (len - distance) as usize;
            match self.history.get_mut(idx) {
                Some(slot @ Slot::Missed) => {
                    *slot = Slot::MissedThenLate;
                    self.stats.frames_late_matched =
                        self.stats.frames_late_matched.saturating_add(1);
                    self.stats.frames_lost = self.stats.frames_lost.saturating_sub(1);
                    self.record_arrival(transit);
                }
                _ => {
                    self.stats.frames_duplicate = self.stats.frames_duplicate.saturating_add(1);
                    return PushOutcome::Duplicate;
                }
            }
        }
        // Older than the history: most likely late (it cannot be told from a replay of an
        // old played frame); counted late, but its transit is not used as a jitter sample.
        self.stats.frames_late = self.stats.frames_late.saturating_add(1);
        self.stats.frames_received = self.stats.frames_received.saturating_add(1);
        PushOutcome::Late
    }

    /// Move the playout point to `seq` (the new anchor), skipping `gap` slots in O(history).
    fn resync(&mut self, seq: u64, capture_ts_ms: u64, transit: i64, gap: u64) {
        if gap > 0 {
            self.stats.frames_skipped = self.stats.frames_skipped.saturating_add(gap);
            self.stats.frames_lost = self.stats.frames_lost.saturating_add(gap);
            self.stats.note_slot(true);
            let n = usize::try_from(gap)
                .unwrap_or(usize::MAX)
                .min(self.history_cap);
            for _ in 0..n {
                self.push_history(Slot::Missed);
            }
        }
        // A transit far from the baseline means a new sender timebase (restart): forget the
        // old samples instead of letting them inflate the target for a whole window.
        if let Some(base) = self.baseline() {
            let limit = i128::from(self.cfg.max_delay_ms)
                + (self.cfg.capacity as i128) * i128::from(self.cfg.frame_ms);
            if (i128::from(transit) - i128::from(base)).abs() > limit {
                self.transits.clear();
                self.last_transit = None;
            }
        }
        self.record_arrival(transit);
        self.anchor = Some(Anchor {
            seq,
            capture_ms: i128::from(capture_ts_ms),
        });
        self.next_seq = seq;
        let base = self.baseline().unwrap_or(transit);
        self.offset_ms = i128::from(base) + i128::from(self.target_ms);
        self.shrink_credit_us = 0;
        self.conceal_run = 0;
        self.idle = false;
    }

    /// A network sample: RFC 3550 jitter, transit window, target delay.
    fn record_arrival(&mut self, transit: i64) {
        if let Some(prev) = self.last_transit {
            let d = (i128::from(transit) - i128::from(prev)).abs() as f64;
            let j = self.stats.jitter_ms;
            self.stats.jitter_ms = j + (d - j) / 16.0;
        }
        self.last_transit = Some(transit);
        if self.transits.len() >= self.cfg.window {
            self.transits.pop_front();
        }
        self.transits.push_back(transit);
        self.recompute_target();
    }

    fn baseline(&self) -> Option<i64> {
        self.transits.iter().copied().min()
    }

    /// The target covers the configured percentile of recent jitter, where "recent" fades:
    /// sample `k` arrivals old weighs [`FORGET`]`^k`, so a burst (a start-up CPU spike, a
    /// brief congestion) stops holding the target up about two seconds after it ended,
    /// instead of for the whole window.
    fn recompute_target(&mut self) {
        let Some(base) = self.baseline() else {
            return;
        };
        self.weighted.clear();
        let mut w = 1.0;
        for t in self.transits.iter().rev() {
            self.weighted.push((*t, w));
            w *= FORGET;
        }
        if self.weighted.is_empty() {
            return;
        }
        let total: f64 = self.weighted.iter().map(|(_, w)| w).sum();
        self.weighted.sort_unstable_by_key(|(t, _)| *t);
        let want = self.cfg.percentile * total;
        let mut acc = 0.0;
        let mut value = self.weighted[self.weighted.len() - 1].0;
        for (t, w) in &self.weighted {
            acc += w;
            if acc >= want {
                value = *t;
                break;
            }
        }
        let jitter = i128::from(value) - i128::from(base);
        let margin = i128::from(self.cfg.frame_ms / 4);
        let target = (jitter + margin).clamp(
            i128::from(self.cfg.min_delay_ms),
            i128::from(self.cfg.max_delay_ms),
        );
        self.target_ms = u32::try_from(target).unwrap_or(self.cfg.max_delay_ms);
    }

    fn push_history(&mut self, slot: Slot) {
        if self.history.len() >= self.history_cap {
            self.history.pop_front();
        }
        self.history.push_back(slot);
    }

    fn deadline(&self, anchor: Anchor, seq: u64) -> i128 {
        let slots = i128::from(seq) - i128::from(anchor.seq);
        anchor.capture_ms + slots * i128::from(self.cfg.frame_ms) + self.offset_ms
    }

    /// The slot due next, if the timeline is active and there is one.
    fn next_due(&self) -> Option<i128> {
        let anchor = self.anchor?;
        if self.idle || self.next_seq > u64::from(u32::MAX) {
            return None;
        }
        if self.finished && self.frames.is_empty() {
            return None;
        }
        Some(self.deadline(anchor, self.next_seq))
    }

    /// Returns the next thing to play if its deadline is `<= now_ms`; call repeatedly until
    /// `None`.
    pub fn poll_playout(&mut self, now_ms: u64) -> Option<Playout> {
        let due = self.next_due()?;
        if due > i128::from(now_ms) {
            return None;
        }
        let seq = self.next_seq;
        let seq32 = u32::try_from(seq).ok()?;
        let out = if let Some(f) = self.frames.remove(&seq) {
            self.stats.frames_played = self.stats.frames_played.saturating_add(1);
            // The frame was complete one frame after its first sample was captured.
            let transit =
                i128::from(now_ms) - i128::from(f.capture_ts_ms) - i128::from(self.cfg.frame_ms);
            self.stats.transit_buffer.record(transit as f64);
            self.stats.note_slot(false);
            self.push_history(Slot::Played);
            self.conceal_run = 0;
            Playout::Frame {
                seq: seq32,
                capture_ts_ms: f.capture_ts_ms,
                payload: f.payload,
            }
        } else {
            let fec = self.frames.get(&(seq + 1)).map(|next| next.payload.clone());
            self.stats.frames_concealed = self.stats.frames_concealed.saturating_add(1);
            self.stats.frames_lost = self.stats.frames_lost.saturating_add(1);
            self.stats.note_slot(true);
            self.push_history(Slot::Missed);
            self.conceal_run = self.conceal_run.saturating_add(1);
            Playout::Conceal { seq: seq32, fec }
        };
        self.next_seq = seq + 1;
        self.adapt_offset();
        if self.frames.is_empty() && self.conceal_run >= self.idle_after {
            self.idle = true;
        }
        Some(out)
    }

    /// Move the playout offset toward `baseline + target`, within the rate limits.
    fn adapt_offset(&mut self) {
        let Some(base) = self.baseline() else {
            return;
        };
        let frame = u64::from(self.cfg.frame_ms);
        self.shrink_credit_us = self
            .shrink_credit_us
            .saturating_add(frame.saturating_mul(frame).saturating_mul(SHRINK_SPEED))
            .min(frame.saturating_mul(1000));
        let desired = i128::from(base) + i128::from(self.target_ms);
        if desired > self.offset_ms {
            self.offset_ms += (desired - self.offset_ms).min(i128::from(frame));
        } else if desired < self.offset_ms - i128::from(frame) {
            // More than a frame of backlog: the first frames came late (queued while the
            // streams opened), or a burst is over. Catch up by up to half a frame per slot
            // (time compression, as NetEq's fast accelerate), down to one frame of excess;
            // the last frame goes at the smooth rate.
            let excess = self.offset_ms - desired - i128::from(frame);
            self.offset_ms -= excess.min(i128::from(frame / 2).max(1));
        } else if desired < self.offset_ms {
            let allowed = i128::from(self.shrink_credit_us / 1000);
            let dec = (self.offset_ms - desired).min(allowed);
            self.offset_ms -= dec;
            // dec <= allowed <= credit / 1000, so this cannot underflow.
            self.shrink_credit_us = self
                .shrink_credit_us
                .saturating_sub(u64::try_from(dec).unwrap_or(0).saturating_mul(1000));
        }
    }

    /// When the next playout deadline falls (receiver clock, ms), so the caller can sleep
    /// until then; `None` when idle/empty and nothing is expected.
    pub fn poll_timeout(&self) -> Option<u64> {
        let due = self.next_due()?;
        Some(due.clamp(0, i128::from(u64::MAX)) as u64)
    }

    /// End of stream: no more frames will come. Buffered frames still play at their
    /// deadlines; nothing is concealed past the last one.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// Undoes [`JitterBuffer::finish`]: the sender came back (e.g. its connection was
    /// re-established) and frames follow again.
    pub fn resume(&mut self) {
        self.finished = false;
    }

    /// `finish` was called and every buffered frame has been played.
    pub fn is_drained(&self) -> bool {
        self.finished && self.frames.is_empty()
    }

    /// The current target delay (jitter percentile + margin, clamped), ms.
    pub fn target_delay_ms(&self) -> u32 {
        self.target_ms
    }

    /// Number of frames currently held (never more than `capacity`).
    pub fn buffered(&self) -> usize {
        self.frames.len()
    }

    /// The counters for this stream.
    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};
    use std::collections::{BTreeSet, HashMap};

    /// (arrival time, seq, capture ts)
    type Arrival = (u64, u32, u64);

    fn payload(seq: u32) -> Vec<u8> {
        seq.to_le_bytes().to_vec()
    }

    /// Drive a buffer like a real caller: push each frame at its arrival time, poll exactly at
    /// `poll_timeout`. Returns (poll time, outcome) of every playout, and the push outcomes.
    fn run(
        cfg: JitterConfig,
        mut arrivals: Vec<Arrival>,
        finish: bool,
    ) -> (JitterBuffer, Vec<(u64, Playout)>, Vec<PushOutcome>) {
        arrivals.sort_by_key(|a| a.0);
        let mut jb = JitterBuffer::new(cfg);
        let mut out = Vec::new();
        let mut pushes = Vec::new();
        let mut i = 0;
        let mut guard = 0;
        loop {
            guard += 1;
            assert!(guard < 1_000_000, "runaway");
            let next_arrival = arrivals.get(i).map(|a| a.0);
            let next_poll = jb.poll_timeout();
            match (next_arrival, next_poll) {
                (None, None) => break,
                (Some(a), Some(p)) if p < a => drain(&mut jb, p, &mut out),
                (None, Some(p)) => {
                    if finish && !jb.finished {
                        jb.finish();
                        continue;
                    }
                    drain(&mut jb, p, &mut out)
                }
                (Some(_), _) => {
                    let (t, seq, cap) = arrivals[i];
                    pushes.push(jb.push(t, seq, cap, payload(seq)));
                    i += 1;
                    drain(&mut jb, t, &mut out);
                }
            }
        }
        (jb, out, pushes)
    }

    fn drain(jb: &mut JitterBuffer, now: u64, out: &mut Vec<(u64, Playout)>) {
        while let Some(p) = jb.poll_playout(now) {
            out.push((now, p));
        }
    }

    fn steady(n: u32, transit: u64, cap0: u64) -> Vec<Arrival> {
        (0..n)
            .map(|i| {
                let cap = cap0 + u64::from(i) * 20;
                (cap + transit, i, cap)
            })
            .collect()
    }

    #[test]
    fn in_order_steady_clock() {
        let (jb, out, pushes) = run(JitterConfig::default(), steady(500, 37, 1_000), true);
        assert!(pushes.iter().all(|p| *p == PushOutcome::Accepted));
        assert_eq!(out.len(), 500);
        let target = u64::from(jb.target_delay_ms());
        assert_eq!(target, 5);
        for (i, (t, p)) in out.iter().enumerate() {
            match p {
                Playout::Frame {
                    seq,
                    capture_ts_ms,
                    payload: pl,
                } => {
                    assert_eq!(*seq as usize, i);
                    assert_eq!(*pl, payload(*seq));
                    assert_eq!(t - capture_ts_ms, 37 + target);
                }
                Playout::Conceal { .. } => panic!("unexpected concealment"),
            }
        }
        let s = jb.stats();
        assert_eq!(s.frames_played, 500);
        assert_eq!(s.frames_concealed, 0);
        assert_eq!(s.frames_lost, 0);
        // Arrived 37 ms after its first sample, played 5 ms later: 22 ms after it was
        // complete; mouth-to-ear adds the frame and the look-ahead to that.
        assert_eq!(s.transit_buffer.percentile(0.5), Some(22.0));
        assert_eq!(s.transit_buffer.percentile(0.95), Some(22.0));
        assert_eq!(s.mouth_to_ear(0.5), Some(48.5));
        assert_eq!(s.jitter_ms, 0.0);
        assert!(jb.is_drained());
        assert_eq!(jb.poll_timeout(), None);
        assert!(s.mos() > 4.3);
    }

    #[test]
    fn ten_ms_frames_play_every_ten_ms_and_count_their_own_delay() {
        let cfg = JitterConfig::for_format(MediaFormat {
            frame_ms: 10,
            lookahead_us: 2_500,
        });
        let arrivals: Vec<Arrival> = (0..300u32)
            .map(|i| {
                let cap = 5_000 + u64::from(i) * 10;
                (cap + 13, i, cap)
            })
            .collect();
        let (jb, out, _) = run(cfg, arrivals, true);
        assert_eq!(out.len(), 300);
        for w in out.windows(2) {
            assert_eq!(w[1].0 - w[0].0, 10, "one slot every 10 ms");
        }
        let s = jb.stats();
        assert_eq!(s.frames_concealed, 0);
        // 13 ms after the first sample, 5 ms in the buffer: 8 ms after the frame was
        // complete; plus 10 ms of framing and 2.5 ms of look-ahead.
        assert_eq!(s.transit_buffer.percentile(0.5), Some(8.0));
        assert_eq!(s.mouth_to_ear(0.5), Some(20.5));
        assert!((s.algorithmic_delay_ms - 12.5).abs() < 1e-9);
    }

    #[test]
    fn a_late_start_is_caught_up_within_a_few_slots() {
        // The first five frames arrive at once, the first 80 ms after it was complete (they
        // waited in a queue while the streams opened); every later one 2 ms after.
        let mut arrivals = steady(200, 22, 1_000);
        for a in &mut arrivals[..5] {
            a.0 = 1_102;
        }
        let (jb, out, _) = run(JitterConfig::default(), arrivals, true);
        let waits: Vec<u64> = out
            .iter()
            .filter_map(|(t, p)| match p {
                Playout::Frame { capture_ts_ms, .. } => Some(t - capture_ts_ms - 20),
                Playout::Conceal { .. } => None,
            })
            .collect();
        assert!(waits[0] >= 80, "{waits:?}");
        // The burst's transits are forgotten as the faster frames come (the first frame
        // plays when it is due on the restarted timeline); then half a frame per slot down
        // to one frame of excess: under 20 ms after 8 slots, 2 ms + target (5) after a
        // second.
        assert!(waits[8] < 20, "{waits:?}");
        assert!(waits[60..].iter().all(|&w| w == 7), "{waits:?}");
        // Once playing, shrinking never went faster than half a frame per slot.
        for w in waits[1..].windows(2) {
            assert!(w[0] <= w[1] + 10, "{waits:?}");
        }
        assert_eq!(jb.stats().frames_concealed, 0);
        assert!(jb.stats().transit_buffer.percentile(0.95).unwrap_or(99.0) <= 30.0);
    }

    #[test]
    fn reordering_absorbed_late_concealed_with_fec() {
        let cfg = JitterConfig {
            min_delay_ms: 30,
            ..JitterConfig::default()
        };
        let mut arr = steady(40, 10, 0);
        // frame 10 arrives 5 ms after frame 11 (still 5 ms before its deadline).
        arr[10].0 = arr[11].0 + 5;
        // frame 20 arrives 100 ms after its capture: its slot (due at +40) is concealed.
        arr[20].0 += 90;
        let (jb, out, pushes) = run(cfg, arr, true);
        let s = jb.stats();
        assert_eq!(
            pushes.iter().filter(|p| **p == PushOutcome::Late).count(),
            1
        );
        assert_eq!(s.frames_late, 1);
        assert_eq!(s.frames_concealed, 1);
        assert_eq!(s.frames_lost, 0);
        assert_eq!(s.frames_late_matched, 1);
        assert_eq!(s.frames_played, 39);
        assert_eq!(out.len(), 40);
        for (i, (_, p)) in out.iter().enumerate() {
            match p {
                Playout::Frame { seq, .. } => assert_eq!(*seq as usize, i),
                Playout::Conceal { seq, fec } => {
                    assert_eq!(*seq, 20);
                    assert_eq!(fec.as_deref(), Some(&payload(21)[..]));
                }
            }
        }
        assert_eq!(s.frames_received, s.frames_played + s.frames_late);
    }

    fn jittered(seed: u64, n: u32, sender0: u64, receiver0: u64) -> Vec<Arrival> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|i| {
                let t = u64::from(i) * 20;
                let delay: u64 = 50 + rng.gen_range(0..=40);
                (receiver0 + t + delay, i, sender0 + t)
            })
            .collect()
    }

    #[test]
    fn adapts_to_jitter() {
        let n = 3_000;
        let (jb, out, _) = run(JitterConfig::default(), jittered(7, n, 0, 0), true);
        let s = jb.stats();
        let target = jb.target_delay_ms();
        assert!((35..=55).contains(&target), "target {target}");
        let late_ratio = s.frames_late as f64 / f64::from(n);
        assert!(late_ratio <= 0.05, "late ratio {late_ratio}");
        assert_eq!(s.frames_lost, 0);
        assert_eq!(s.frames_concealed, s.frames_late);
        assert_eq!(out.len() as u64, u64::from(n));
        assert_eq!(s.frames_played + s.frames_late, u64::from(n));
        assert!(s.jitter_ms > 5.0 && s.jitter_ms < 30.0, "{}", s.jitter_ms);
        // p95 mouth-to-ear is about base + p95 jitter + margin, plus the look-ahead
        let p95 = s.mouth_to_ear(0.95).unwrap_or(0.0);
        assert!((91.5..=116.5).contains(&p95), "p95 {p95}");
    }

    #[test]
    fn clock_offset_changes_nothing() {
        const OFF: u64 = 1_000_000_000;
        let norm = |cfgd: (JitterBuffer, Vec<(u64, Playout)>, Vec<PushOutcome>), shift: i128| {
            let (jb, out, pushes) = cfgd;
            let out: Vec<(i128, Playout)> = out
                .into_iter()
                .map(|(t, p)| {
                    let p = match p {
                        Playout::Frame { seq, payload, .. } => Playout::Frame {
                            seq,
                            capture_ts_ms: 0,
                            payload,
                        },
                        c => c,
                    };
                    (i128::from(t) - shift, p)
                })
                .collect();
            (out, pushes, jb.target_delay_ms(), jb.stats().frames_late)
        };
        let same = norm(
            run(JitterConfig::default(), jittered(3, 1_000, OFF, OFF), true),
            0,
        );
        // receiver clock ahead of the sender's by 1e9 ms
        let ahead = norm(
            run(JitterConfig::default(), jittered(3, 1_000, 0, OFF), true),
            0,
        );
        // receiver clock behind by 1e9 ms
        let behind = norm(
            run(
                JitterConfig::default(),
                jittered(3, 1_000, 2 * OFF, OFF),
                true,
            ),
            0,
        );
        assert_eq!(same, ahead);
        assert_eq!(same, behind);
    }

    #[test]
    fn finish_drains_without_trailing_concealment() {
        let mut arr = steady(10, 15, 500);
        arr.remove(5);
        let mut jb = JitterBuffer::new(JitterConfig::default());
        for (t, seq, cap) in arr {
            assert_eq!(jb.push(t, seq, cap, payload(seq)), PushOutcome::Accepted);
        }
        jb.finish();
        assert!(!jb.is_drained());
        let mut out = Vec::new();
        let mut guard = 0;
        while let Some(t) = jb.poll_timeout() {
            guard += 1;
            assert!(guard < 100);
            drain(&mut jb, t, &mut out);
        }
        drain(&mut jb, u64::MAX, &mut out);
        let seqs: Vec<(u32, bool)> = out
            .iter()
            .map(|(_, p)| match p {
                Playout::Frame { seq, .. } => (*seq, true),
                Playout::Conceal { seq, .. } => (*seq, false),
            })
            .collect();
        let want: Vec<(u32, bool)> = (0..10).map(|s| (s, s != 5)).collect();
        assert_eq!(seqs, want);
        assert!(jb.is_drained());
        assert_eq!(jb.poll_timeout(), None);
        assert_eq!(jb.stats().frames_lost, 1);
    }

    #[test]
    fn silence_goes_idle_then_resyncs() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        for (t, seq, cap) in steady(5, 10, 0) {
            jb.push(t, seq, cap, payload(seq));
        }
        let mut out = Vec::new();
        drain(&mut jb, 1_000_000, &mut out);
        let idle_after = jb.idle_after;
        assert_eq!(out.len(), 5 + idle_after);
        assert_eq!(jb.poll_timeout(), None);
        // the sender resumes after 10 s of silence with seq 500
        let cap = 10_000;
        assert_eq!(
            jb.push(cap + 10, 500, cap, payload(500)),
            PushOutcome::Accepted
        );
        assert_eq!(jb.poll_timeout(), Some(cap + 10 + 5));
        out.clear();
        drain(&mut jb, cap + 15, &mut out);
        assert!(matches!(
            out.as_slice(),
            [(_, Playout::Frame { seq: 500, .. })]
        ));
        let s = jb.stats();
        assert_eq!(s.frames_skipped, 500 - 5 - idle_after as u64);
        assert_eq!(s.frames_lost, 500 - 5);
        assert_eq!(s.loss_runs, 1);
    }

    #[test]
    fn bounded_on_extreme_seqs() {
        let mut jb = JitterBuffer::new(JitterConfig::default());
        assert_eq!(jb.push(0, u32::MAX, 0, vec![1]), PushOutcome::Accepted);
        let mut out = Vec::new();
        drain(&mut jb, u64::MAX, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(jb.poll_timeout(), None);
        assert_eq!(jb.push(10, 0, 10, vec![]), PushOutcome::Late);
        assert_eq!(jb.push(10, u32::MAX, 10, vec![]), PushOutcome::Duplicate);

        let mut jb = JitterBuffer::new(JitterConfig::default());
        assert_eq!(jb.push(0, 0, 0, vec![]), PushOutcome::Accepted);
        assert_eq!(jb.push(1, 1, 20, vec![]), PushOutcome::Accepted);
        // buffer not empty: far-ahead frames are dropped
        assert_eq!(
            jb.push(2, 4_000_000_000, 0, vec![]),
            PushOutcome::TooFarAhead
        );
        assert_eq!(jb.push(2, 64, 0, vec![]), PushOutcome::TooFarAhead);
        assert_eq!(jb.push(2, 63, 63 * 20, vec![]), PushOutcome::Accepted);
        assert_eq!(jb.stats().frames_dropped, 2);
        out.clear();
        drain(&mut jb, 100_000, &mut out);
        // 0, 1, 61 concealments, 63, then concealment until idle: bounded
        assert_eq!(out.len(), 64 + jb.idle_after);
        assert_eq!(jb.poll_timeout(), None);
        // empty now: a huge jump resyncs instead of concealing four billion slots
        assert_eq!(
            jb.push(100_000, 4_000_000_000, 7, vec![9]),
            PushOutcome::Accepted
        );
        out.clear();
        drain(&mut jb, u64::MAX, &mut out);
        assert!(out.len() <= 1 + jb.idle_after);
        assert!(matches!(
            out.first(),
            Some((
                _,
                Playout::Frame {
                    seq: 4_000_000_000,
                    ..
                }
            ))
        ));
        let s = jb.stats();
        assert_eq!(s.frames_skipped, 4_000_000_000 - 64 - jb.idle_after as u64);
        assert_eq!(s.frames_received, s.frames_played + s.frames_late);
        assert_eq!(
            s.frames_lost,
            s.frames_concealed + s.frames_skipped - s.frames_late_matched
        );
        assert!((1.0..=4.5).contains(&s.mos()));

        // extreme timestamps
        let mut jb = JitterBuffer::new(JitterConfig::default());
        jb.push(u64::MAX, 5, 0, vec![]);
        jb.push(0, 6, u64::MAX, vec![]);
        jb.push(u64::MAX, 7, u64::MAX, vec![]);
        let _ = jb.poll_timeout();
        out.clear();
        drain(&mut jb, u64::MAX, &mut out);
        drain(&mut jb, 0, &mut out);
        assert!(out.len() <= 64 + jb.idle_after);
    }

    #[test]
    fn bad_config_is_sanitized() {
        let mut jb = JitterBuffer::new(JitterConfig {
            frame_ms: 0,
            lookahead_us: u32::MAX,
            min_delay_ms: 100,
            max_delay_ms: 10,
            percentile: f64::NAN,
            window: 0,
            capacity: 0,
        });
        assert_eq!(jb.config().frame_ms, 1);
        assert_eq!(jb.config().lookahead_us, u32::from(MAX_LOOKAHEAD_US));
        assert_eq!(jb.config().capacity, 1);
        assert_eq!(jb.push(0, 0, 0, vec![]), PushOutcome::Accepted);
        assert_eq!(jb.push(0, 1, 0, vec![]), PushOutcome::TooFarAhead);
        let mut out = Vec::new();
        drain(&mut jb, 1_000, &mut out);
        assert!(!out.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push {
            dt: i64,
            seq: u32,
            cap: u64,
            len: usize,
        },
        Poll {
            dt: i64,
        },
        Finish,
    }

    fn op() -> impl Strategy<Value = Op> {
        let dt = prop_oneof![
            4 => 0i64..50,
            1 => -100i64..0,
            1 => 0i64..100_000,
        ];
        let seq = prop_oneof![
            8 => 0u32..120,
            1 => any::<u32>(),
            1 => (u32::MAX - 70)..=u32::MAX,
        ];
        let cap = prop_oneof![4 => 0u64..5_000, 1 => any::<u64>()];
        prop_oneof![
            6 => (dt.clone(), seq, cap, 0usize..8)
                .prop_map(|(dt, seq, cap, len)| Op::Push { dt, seq, cap, len }),
            4 => dt.prop_map(|dt| Op::Poll { dt }),
            1 => Just(Op::Finish),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn never_panics_and_keeps_invariants(
            ops in proptest::collection::vec(op(), 0..300),
            capacity in 1usize..80,
            window in 1usize..50,
        ) {
            let cfg = JitterConfig { capacity, window, ..JitterConfig::default() };
            let mut jb = JitterBuffer::new(cfg);
            let idle_after = jb.idle_after;
            let mut now: u64 = 1_000;
            let mut first_payload: HashMap<u32, Vec<u8>> = HashMap::new();
            let mut last_out: Option<u32> = None;
            let mut seen = BTreeSet::new();
            let mut outputs: u64 = 0;
            for op in ops {
                match op {
                    Op::Push { dt, seq, cap, len } => {
                        now = now.saturating_add_signed(dt);
                        let pl = vec![seq as u8; len];
                        if jb.push(now, seq, cap, pl.clone()) == PushOutcome::Accepted {
                            // each seq is accepted at most once
                            prop_assert!(first_payload.insert(seq, pl).is_none());
                        }
                    }
                    Op::Poll { dt } => {
                        now = now.saturating_add_signed(dt);
                        let mut n = 0usize;
                        while let Some(p) = jb.poll_playout(now) {
                            n += 1;
                            prop_assert!(n <= capacity + idle_after + 1, "unbounded drain");
                            outputs += 1;
                            let seq = match &p {
                                Playout::Frame { seq, payload, .. } => {
                                    prop_assert_eq!(Some(payload), first_payload.get(seq));
                                    *seq
                                }
                                Playout::Conceal { seq, .. } => *seq,
                            };
                            // strictly increasing: every seq played or concealed at most once
                            prop_assert!(last_out.is_none_or(|l| seq > l));
                            prop_assert!(seen.insert(seq));
                            last_out = Some(seq);
                        }
                    }
                    Op::Finish => jb.finish(),
                }
                let s = jb.stats();
                prop_assert!(jb.buffered() <= capacity);
                prop_assert_eq!(s.frames_received, s.frames_played + s.frames_late + jb.buffered() as u64);
                prop_assert_eq!(
                    s.frames_lost + s.frames_late_matched,
                    s.frames_concealed + s.frames_skipped
                );
                prop_assert!(s.frames_late_matched <= s.frames_late);
                prop_assert_eq!(outputs, s.frames_played + s.frames_concealed);
                prop_assert!(s.loss_runs <= s.frames_concealed + s.frames_skipped);
                let mos = s.mos();
                prop_assert!((1.0..=4.5).contains(&mos));
                prop_assert!(jb.target_delay_ms() >= 5 && jb.target_delay_ms() <= 500);
            }
        }
    }
}
