//! The bounded rings between a device's callback thread and the call: what the microphone
//! captured, waiting for the call's capture clock, and what each sender plays, waiting for
//! the speaker's callback. Pure: no device, no thread, no clock; the device code holds each
//! behind a mutex.

use std::collections::{HashMap, VecDeque};

use super::convert::{from_i16, Resampler};
use super::DeviceStats;
use crate::media::codec::{FRAME_SAMPLES, SAMPLE_RATE};

/// Most audio a ring holds (per sender, on the speaker side): 100 ms. Beyond it the oldest
/// samples go (and are counted): latency never grows when a side stops taking.
pub const RING_MS: u32 = 100;
/// Most senders the speaker mixes at once; frames of further ones are refused (counted).
pub const MAX_SENDERS: usize = 64;
/// Pulls in a row after which a capture ring that holds more than it needs is trimmed
/// (50: one second).
const TRIM_AFTER: u32 = 50;
/// A sender not heard for this long, with nothing buffered, is forgotten.
const SENDER_IDLE_MS: u64 = 10_000;

fn samples_for_ms(rate: u32, ms: u32) -> usize {
    (u64::from(rate) * u64::from(ms) / 1000) as usize
}

/// Counters shared by both rings.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    frames: u64,
    dropped: u64,
    underruns: u64,
    level_sum: u64,
    level_reads: u64,
}

impl Counts {
    fn stats(&self, rate: u32) -> DeviceStats {
        let per_ms = f64::from(rate.max(1)) / 1000.0;
        DeviceStats {
            frames: self.frames,
            dropped_ms: self.dropped as f64 / per_ms,
            underruns: self.underruns,
            ring_ms_mean: if self.level_reads == 0 {
                0.0
            } else {
                self.level_sum as f64 / self.level_reads as f64 / per_ms
            },
        }
    }
}

/// Captured audio, 48 kHz mono, from the device's callback to the call's 20 ms frames.
///
/// The call pulls a frame every 20 ms on its own clock, the device pushes chunks of its
/// period on its clock. The ring starts handing out frames once it holds a frame and one
/// device chunk (so a frame is there at every pull despite the chunks' phase), and starts
/// over after it ran dry. When it holds more than that for a second (a device whose clock
/// runs fast, or one that delivered a burst), the excess is dropped, so the latency it adds
/// stays at about a frame and a chunk.
#[derive(Debug)]
pub struct CaptureRing {
    buf: VecDeque<i16>,
    capacity: usize,
    primed: bool,
    prime_level: usize,
    /// Whether the call pulled yet: what goes before is not counted as dropped.
    pulled: bool,
    /// Pulls in a row that left more than a primed ring needs.
    high: u32,
    counts: Counts,
}

impl Default for CaptureRing {
    fn default() -> Self {
        Self::new()
    }
}

impl CaptureRing {
    pub fn new() -> Self {
        let capacity = samples_for_ms(SAMPLE_RATE, RING_MS);
        Self {
            buf: VecDeque::with_capacity(capacity),
            capacity,
            primed: false,
            prime_level: FRAME_SAMPLES,
            pulled: false,
            high: 0,
            counts: Counts::default(),
        }
    }

    /// The device captured `samples` (48 kHz mono).
    pub fn push(&mut self, samples: &[i16]) {
        self.prime_level = self
            .prime_level
            .max(FRAME_SAMPLES + samples.len())
            .min(self.capacity / 2);
        let keep = &samples[samples.len().saturating_sub(self.capacity)..];
        let over = (self.buf.len() + keep.len()).saturating_sub(self.capacity);
        if self.pulled {
            self.counts.dropped += (over + samples.len() - keep.len()) as u64;
        }
        self.buf.drain(..over.min(self.buf.len()));
        self.buf.extend(keep);
    }

    /// The next 20 ms frame, or silence when none is ready.
    pub fn pop_frame(&mut self) -> [i16; FRAME_SAMPLES] {
        let mut frame = [0; FRAME_SAMPLES];
        self.pop_into(&mut frame);
        frame
    }

    /// Fills `frame` (of any length up to a 20 ms frame) with the next samples, or with
    /// silence when not enough are ready.
    pub fn pop_into(&mut self, frame: &mut [i16]) {
        frame.fill(0);
        self.pulled = true;
        if !self.primed && self.buf.len() >= self.prime_level {
            self.primed = true;
        }
        if !self.primed {
            return;
        }
        let n = frame.len();
        if self.buf.len() < n {
            self.counts.underruns += 1;
            self.primed = false;
            return;
        }
        self.counts.level_sum += self.buf.len() as u64;
        self.counts.level_reads += 1;
        for (slot, s) in frame.iter_mut().zip(self.buf.drain(..n)) {
            *slot = s;
        }
        self.counts.frames += 1;
        self.trim();
    }

    /// Drops what a ring has held beyond its need for [`TRIM_AFTER`] pulls.
    fn trim(&mut self) {
        if self.buf.len() <= self.prime_level {
            self.high = 0;
            return;
        }
        self.high += 1;
        if self.high >= TRIM_AFTER {
            let excess = self.buf.len() - (self.prime_level - FRAME_SAMPLES);
            self.buf.drain(..excess);
            self.counts.dropped += excess as u64;
            self.high = 0;
        }
    }

    pub fn stats(&self) -> DeviceStats {
        self.counts.stats(SAMPLE_RATE)
    }
}

#[derive(Debug)]
struct SenderRing {
    buf: VecDeque<f32>,
    primed: bool,
    resampler: Resampler,
    last_at_ms: u64,
}

/// What each sender plays, resampled to the speaker's rate (mono), mixed in the speaker's
/// callback. Each sender has a ring of its own: a sender starts playing once its ring holds
/// a frame and one device period, and an underrun (a sender that ran dry while playing)
/// plays silence, is counted and starts over.
#[derive(Debug)]
pub struct PlayMix {
    rate: u32,
    capacity: usize,
    frame: usize,
    period: usize,
    senders: HashMap<String, SenderRing>,
    refused: u64,
    counts: Counts,
    scratch: Vec<f32>,
    resampled: Vec<f32>,
}

impl PlayMix {
    /// A mix for a speaker running at `rate` Hz.
    pub fn new(rate: u32) -> Self {
        Self {
            rate,
            capacity: samples_for_ms(rate, RING_MS),
            frame: samples_for_ms(rate, 20),
            period: 0,
            senders: HashMap::new(),
            refused: 0,
            counts: Counts::default(),
            scratch: Vec::with_capacity(FRAME_SAMPLES),
            resampled: Vec::new(),
        }
    }

    /// One frame of `from` (48 kHz mono), played at `at_ms`.
    pub fn play(&mut self, from: &str, at_ms: u64, pcm: &[i16]) {
        self.senders.retain(|_, s| {
            !s.buf.is_empty() || s.last_at_ms.saturating_add(SENDER_IDLE_MS) >= at_ms
        });
        if !self.senders.contains_key(from) && self.senders.len() >= MAX_SENDERS {
            self.refused += 1;
            return;
        }
        let rate = self.rate;
        let s = self
            .senders
            .entry(from.to_owned())
            .or_insert_with(|| SenderRing {
                buf: VecDeque::new(),
                primed: false,
                resampler: Resampler::new(SAMPLE_RATE, rate),
                last_at_ms: at_ms,
            });
        s.last_at_ms = at_ms;
        self.scratch.clear();
        self.scratch.extend(pcm.iter().map(|&v| from_i16(v)));
        self.resampled.clear();
        s.resampler.process(&self.scratch, &mut self.resampled);
        let over = (s.buf.len() + self.resampled.len()).saturating_sub(self.capacity);
        let from_buf = over.min(s.buf.len());
        s.buf.drain(..from_buf);
        let skip = over - from_buf;
        s.buf.extend(self.resampled.iter().skip(skip));
        self.counts.dropped += over as u64;
        self.counts.frames += 1;
    }

    /// Mixes what is due into `out` (mono at the speaker's rate, zeroed by the caller).
    pub fn fill(&mut self, out: &mut [f32]) {
        self.period = self.period.max(out.len());
        let prime = (self.frame + self.period).min(self.capacity);
        let mut level = 0;
        for s in self.senders.values_mut() {
            if !s.primed && s.buf.len() >= prime {
                s.primed = true;
            }
            if !s.primed {
                continue;
            }
            level = level.max(s.buf.len());
            let n = out.len().min(s.buf.len());
            for (slot, v) in out.iter_mut().zip(s.buf.drain(..n)) {
                *slot += v;
            }
            if n < out.len() {
                self.counts.underruns += 1;
                s.primed = false;
            }
        }
        if level > 0 {
            self.counts.level_sum += level as u64;
            self.counts.level_reads += 1;
        }
    }

    /// Senders refused because [`MAX_SENDERS`] were playing.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    pub fn stats(&self) -> DeviceStats {
        self.counts.stats(self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_waits_for_a_frame_and_a_chunk_then_hands_out_frames_in_order() {
        let mut r = CaptureRing::new();
        let chunk: Vec<i16> = (0..480).map(|i| i as i16).collect();
        r.push(&chunk);
        assert_eq!(r.pop_frame(), [0; FRAME_SAMPLES], "not primed: silence");
        r.push(&chunk);
        r.push(&chunk);
        let f = r.pop_frame();
        assert_eq!(f[0], 0);
        assert_eq!(f[479], 479);
        assert_eq!(f[480], 0);
        assert_eq!(f[959], 479);
        assert_eq!(r.stats().frames, 1);
        // 480 left: not a frame; an underrun, silence, and priming again.
        assert_eq!(r.pop_frame(), [0; FRAME_SAMPLES]);
        assert_eq!(r.stats().underruns, 1);
    }

    #[test]
    fn capture_is_bounded_and_drops_the_oldest_when_nobody_pulls() {
        let mut r = CaptureRing::new();
        r.push(&[0; 4800]);
        let _ = r.pop_frame();
        assert_eq!(
            r.stats().dropped_ms,
            0.0,
            "before the first pull: not counted"
        );
        for k in 0..50i16 {
            r.push(&[k; 480]);
        }
        let s = r.stats();
        // 80 ms were there, 500 ms pushed, 100 ms kept.
        assert!((s.dropped_ms - 480.0).abs() < 0.01, "{s:?}");
        let f = r.pop_frame();
        assert_eq!(f[0], 40, "the oldest went");
        assert_eq!(f[959], 41);
    }

    #[test]
    fn a_capture_ring_that_holds_too_much_for_a_second_is_trimmed() {
        let mut r = CaptureRing::new();
        // A burst of 100 ms, then the device keeps pace with the pulls.
        for _ in 0..10 {
            r.push(&[1; 480]);
        }
        let mut levels = Vec::new();
        for _ in 0..60 {
            r.push(&[1; 480]);
            r.push(&[1; 480]);
            let _ = r.pop_frame();
            levels.push(r.buf.len());
        }
        // Full (100 ms) less a frame, until the excess goes after a second.
        assert_eq!(levels[0], 4800 - 960);
        assert_eq!(levels[48], 4800 - 960);
        assert_eq!(levels[59], 480, "{levels:?}");
        let s = r.stats();
        assert!((s.dropped_ms - 70.0).abs() < 0.01, "{s:?}");
        assert_eq!(s.underruns, 0);
    }

    #[test]
    fn the_speaker_mixes_senders_and_counts_underruns() {
        let mut m = PlayMix::new(48_000);
        let a = [1000i16; FRAME_SAMPLES];
        let b = [2000i16; FRAME_SAMPLES];
        m.play("a", 0, &a);
        m.play("a", 20, &a);
        m.play("b", 0, &b);
        let mut out = vec![0.0f32; 480];
        // "b" holds one frame only: below a frame plus a period, it waits.
        m.fill(&mut out);
        assert!((out[0] - from_i16(1000)).abs() < 1e-6);
        m.play("b", 20, &b);
        out.fill(0.0);
        m.fill(&mut out);
        assert!((out[0] - from_i16(1000) - from_i16(2000)).abs() < 1e-6);
        for _ in 0..6 {
            out.fill(0.0);
            m.fill(&mut out);
        }
        let s = m.stats();
        assert_eq!(s.frames, 4);
        assert_eq!(s.underruns, 2, "both ran dry once: {s:?}");
        assert!(out.iter().all(|&v| v == 0.0), "dry: silence");
    }

    #[test]
    fn the_speaker_resamples_and_bounds_each_sender() {
        let mut m = PlayMix::new(44_100);
        for k in 0..20u64 {
            m.play("a", k * 20, &[100; FRAME_SAMPLES]);
        }
        let s = m.stats();
        // 400 ms at 44.1 kHz pushed, 100 ms kept.
        assert!((s.dropped_ms - 300.0).abs() < 0.1, "{s:?}");
        let mut out = vec![0.0f32; 4410];
        m.fill(&mut out);
        assert!(out.iter().all(|&v| (v - from_i16(100)).abs() < 1e-4));
        // A sender gone for long, with nothing left, is forgotten.
        m.play("b", 1_000_000, &[0; FRAME_SAMPLES]);
        assert_eq!(m.senders.len(), 1);
        assert_eq!(m.refused(), 0);
    }
}
