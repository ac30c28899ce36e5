//! Format conversion between a device and the call's 48 kHz mono: resampling, down- and
//! upmixing, and pacing a device that runs faster than real time. Pure: no device, no clock
//! (the pacer takes `now`).

use std::time::{Duration, Instant};

/// A streaming linear-interpolation resampler for one mono signal. Chunks may have any
/// length; the output continues seamlessly across them.
#[derive(Debug, Clone)]
pub struct Resampler {
    /// Input samples per output sample.
    step: f64,
    /// Position of the next output sample, in input samples from the start of the next
    /// chunk; in `[-1, 0)` after a chunk (between the last sample of the previous chunk,
    /// `prev`, and the first of the next).
    pos: f64,
    prev: f32,
    identity: bool,
}

impl Resampler {
    /// From `from` Hz to `to` Hz (both > 0).
    pub fn new(from: u32, to: u32) -> Self {
        Self {
            step: f64::from(from.max(1)) / f64::from(to.max(1)),
            pos: 0.0,
            prev: 0.0,
            identity: from == to,
        }
    }

    /// Appends the resampled `input` to `out`.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        if self.identity {
            out.extend_from_slice(input);
            return;
        }
        let Some(&last) = input.last() else {
            return;
        };
        let n = input.len() as f64;
        while self.pos < n - 1.0 {
            let i = self.pos.floor();
            let frac = (self.pos - i) as f32;
            // `i` is at least -1 and below n - 1, so `i + 1` indexes the chunk.
            let b = input[(i + 1.0) as usize];
            let a = if i < 0.0 {
                self.prev
            } else {
                input[i as usize]
            };
            out.push(a + (b - a) * frac);
            self.pos += self.step;
        }
        self.pos -= n;
        self.prev = last;
    }
}

/// Averages interleaved frames of `channels` channels into mono, appended to `out`.
pub fn downmix(interleaved: &[f32], channels: usize, out: &mut Vec<f32>) {
    if channels <= 1 {
        out.extend_from_slice(interleaved);
        return;
    }
    let scale = 1.0 / channels as f32;
    out.extend(
        interleaved
            .chunks_exact(channels)
            .map(|f| f.iter().sum::<f32>() * scale),
    );
}

/// Writes mono `mono` into every channel of the interleaved `out` (one frame per sample;
/// frames beyond `mono` are left as they are).
pub fn upmix<T: Copy>(mono: &[T], channels: usize, out: &mut [T]) {
    for (frame, &s) in out.chunks_exact_mut(channels.max(1)).zip(mono) {
        frame.fill(s);
    }
}

/// A sample in [-1, 1] as 16-bit PCM.
pub fn to_i16(s: f32) -> i16 {
    (s.clamp(-1.0, 1.0) * 32767.0).round() as i16
}

/// 16-bit PCM as a sample in [-1, 1).
pub fn from_i16(s: i16) -> f32 {
    f32::from(s) / 32768.0
}

/// How far ahead of the wall clock a device may run before its callback is held back.
pub const MAX_LEAD: Duration = Duration::from_millis(500);

/// Holds back the callback of a device that runs faster than real time. A sound card
/// delivers and takes samples at its rate; ALSA's `null` and `file` devices have no clock
/// and would call back as fast as the CPU allows (reading a capture file in a blink,
/// spinning a core). Once a device has moved more than [`MAX_LEAD`] of audio beyond the
/// wall-clock time since its first callback, each callback waits out the excess. A real
/// device never gets there, except by clock drift of hours, and then waits microseconds.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: u32,
    start: Option<Instant>,
    frames: u64,
}

impl Pacer {
    pub fn new(rate: u32) -> Self {
        Self {
            rate: rate.max(1),
            start: None,
            frames: 0,
        }
    }

    /// A callback moved `frames` frames at `now`: how long it should wait, if at all.
    pub fn on_callback(&mut self, now: Instant, frames: usize) -> Option<Duration> {
        let start = *self.start.get_or_insert(now);
        self.frames += frames as u64;
        let audio = Duration::from_secs_f64(self.frames as f64 / f64::from(self.rate));
        let elapsed = now.saturating_duration_since(start);
        audio
            .checked_sub(elapsed + MAX_LEAD)
            .filter(|d| !d.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(hz: f64, rate: u32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(rate)).sin() as f32)
            .collect()
    }

    /// The resampled signal matches the sine sampled directly at the target rate.
    fn check(from: u32, to: u32, chunk: usize) {
        let input = sine(440.0, from, from as usize);
        let mut r = Resampler::new(from, to);
        let mut out = Vec::new();
        for c in input.chunks(chunk) {
            r.process(c, &mut out);
        }
        let expected_len = (input.len() as f64 * f64::from(to) / f64::from(from)) as usize;
        // The last input sample's interval waits for the next chunk.
        let lag = to.div_ceil(from) as usize + 1;
        assert!(
            out.len().abs_diff(expected_len) <= lag,
            "{from}->{to}: {} samples, expected {expected_len}",
            out.len()
        );
        let reference = sine(440.0, to, out.len());
        let worst = out
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 0.01, "{from}->{to} chunk {chunk}: error {worst}");
    }

    #[test]
    fn resampling_keeps_the_signal_across_chunk_boundaries() {
        check(44_100, 48_000, 441);
        check(44_100, 48_000, 1);
        check(48_000, 44_100, 480);
        check(16_000, 48_000, 160);
        check(96_000, 48_000, 1024);
        check(48_000, 48_000, 333);
    }

    #[test]
    fn downmix_averages_and_upmix_copies() {
        let mut mono = Vec::new();
        downmix(&[1.0, 0.0, 0.5, 0.5, -1.0, -0.5], 2, &mut mono);
        assert_eq!(mono, vec![0.5, 0.5, -0.75]);
        let mut out = [0i16; 6];
        upmix(&[1, 2], 3, &mut out);
        assert_eq!(out, [1, 1, 1, 2, 2, 2]);
        assert_eq!(to_i16(2.0), i16::MAX);
        assert_eq!(to_i16(from_i16(-1234)), -1234);
    }

    #[test]
    fn a_device_faster_than_real_time_is_held_back_and_a_real_one_is_not() {
        let t0 = Instant::now();
        let mut real = Pacer::new(48_000);
        for k in 0..1_000u32 {
            // 10 ms callbacks, on time (with a little early jitter).
            let on_time = Duration::from_millis(u64::from(k) * 10);
            let at = t0 + on_time.saturating_sub(Duration::from_millis(3));
            assert_eq!(real.on_callback(at, 480), None, "callback {k}");
        }
        let mut unpaced = Pacer::new(48_000);
        let mut waits = Duration::ZERO;
        let mut now = t0;
        for _ in 0..300 {
            if let Some(d) = unpaced.on_callback(now, 480) {
                waits += d;
                now += d;
            }
        }
        // 3 s of audio moved: held to the clock, 500 ms ahead at most.
        let off = waits.as_secs_f64() - 2.5;
        assert!(off.abs() < 0.001, "waited {waits:?}");
    }
}
