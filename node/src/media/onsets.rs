//! Mouth-to-ear measured on the signal: a train of chirps mixed into the test signal at known
//! places, found again in what the receiver played on its playout timeline.
//!
//! The sender's stream sample `n` is `signal[n % len]` (looping sources have no seam) and was
//! captured at `capture_origin_ms + n / 48` on the host clock (the report's
//! `sending.capture_origin_ms`). The receiver lays each sender on its playout timeline
//! ([`crate::media::sink::WavTimeline`]): sample `k` of that file played at
//! `origin_ms + k / 48`. A chirp whose first sample was captured at `c` and that starts at
//! timeline time `t` was heard `t - c` after it was spoken: framing, codec look-ahead,
//! network, jitter buffer — everything between the two clocks, which here are one.
//!
//! Chirps alternate up (1 → 5 kHz) and down (5 → 1 kHz) every [`CHIRP_PERIOD_MS`], so that
//! a chirp is searched for where it could be (up to [`MAX_DELAY_MS`] late) and no other chirp
//! of the same kind is closer than two periods. A matched filter (normalised
//! cross-correlation with the chirp) finds it to within a fraction of a millisecond through
//! Opus; a chirp whose best match is weaker than [`MIN_MATCH`] (lost, concealed, not
//! played) is not counted.

use super::audio::test_signal;
use super::codec::{SAMPLES_PER_MS, SAMPLE_RATE};

/// Time between two chirps, ms.
pub const CHIRP_PERIOD_MS: usize = 250;
/// Where the first chirp of the signal starts, ms.
pub const FIRST_CHIRP_MS: usize = 100;
/// Length of one chirp, ms.
pub const CHIRP_MS: usize = 4;
/// Peak level of a chirp (0.5 full scale; the test signal peaks at 0.45, so the sum of the
/// two stays below full scale).
const CHIRP_PEAK: f64 = 0.5 * 32767.0;
const CHIRP_LOW_HZ: f64 = 1_000.0;
const CHIRP_HIGH_HZ: f64 = 5_000.0;
/// Largest delay searched for, ms (less than a period, so that no chirp of the other kind
/// either falls into a search).
pub const MAX_DELAY_MS: usize = 240;
/// Weakest normalised correlation with the (high-passed) chirp that counts as finding it.
/// Measured on the timelines of an 8-person demo: 93 % of the real chirps match above 0.8
/// (76 % above 0.9), while the best match anywhere else — speech, or a chirp cut by the
/// jitter buffer giving back delay, which would be found early — stays under 0.8 in 99 %
/// of 100 ms windows.
pub const MIN_MATCH: f64 = 0.8;

/// Samples in one chirp.
const CHIRP_SAMPLES: usize = CHIRP_MS * SAMPLES_PER_MS;

/// The chirp of kind `up` (rising) or not (falling): a Hann-windowed linear sweep.
pub fn chirp(up: bool) -> Vec<i16> {
    let n = CHIRP_SAMPLES;
    let secs = n as f64 / f64::from(SAMPLE_RATE);
    let (f0, f1) = if up {
        (CHIRP_LOW_HZ, CHIRP_HIGH_HZ)
    } else {
        (CHIRP_HIGH_HZ, CHIRP_LOW_HZ)
    };
    let k = (f1 - f0) / secs;
    (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(SAMPLE_RATE);
            let phase = 2.0 * std::f64::consts::PI * (f0 * t + 0.5 * k * t * t);
            let w = (std::f64::consts::PI * i as f64 / (n - 1) as f64)
                .sin()
                .powi(2);
            (CHIRP_PEAK * w * phase.sin()).round() as i16
        })
        .collect()
}

/// Whether the chirp that starts at signal sample `n` rises.
fn rises(index: usize) -> bool {
    index % 2 == 0
}

/// Signal samples at which the chirps of a signal of `len` samples start.
pub fn chirp_starts(len: usize) -> Vec<usize> {
    let period = CHIRP_PERIOD_MS * SAMPLES_PER_MS;
    (FIRST_CHIRP_MS * SAMPLES_PER_MS..)
        .step_by(period)
        .take_while(|s| s + CHIRP_SAMPLES <= len)
        .collect()
}

/// The test signal `index`, `secs` long, with the chirp train mixed in: what `confab call
/// --signal` sends and `confab demo` measures. The number of chirps in one pass is even, so
/// that a looping signal keeps alternating.
pub fn signal_with_chirps(index: usize, secs: f64) -> Vec<i16> {
    let mut out = test_signal(index, secs);
    let starts = chirp_starts(out.len());
    let even = starts.len() - starts.len() % 2;
    let (up, down) = (chirp(true), chirp(false));
    for (k, &s) in starts.iter().take(even).enumerate() {
        let c = if rises(k) { &up } else { &down };
        for (slot, &x) in out[s..s + c.len()].iter_mut().zip(c) {
            *slot = slot.saturating_add(x);
        }
    }
    out
}

/// How far before a chirp's start its marker may spread through Opus (the codec's window
/// smears a transient over part of its frame), ms.
const MARK_BEFORE_MS: usize = 8;
/// How far after a chirp's end its marker may spread, ms.
const MARK_AFTER_MS: usize = 12;

/// For each sample of a signal of `len` samples with the chirp train mixed in: whether it
/// lies where a chirp (smeared by the codec) sounds. Scoring what was heard against what
/// was sent leaves these out: the chirps are measurement marks, found and timed on their
/// own, and a 4 ms sweep up to 5 kHz on top of speech is the part Opus codes worst.
pub fn chirp_marks(len: usize) -> Vec<bool> {
    let mut marks = vec![false; len];
    let starts = chirp_starts(len);
    let even = starts.len() - starts.len() % 2;
    for &s in starts.iter().take(even) {
        let from = s.saturating_sub(MARK_BEFORE_MS * SAMPLES_PER_MS);
        let to = (s + CHIRP_SAMPLES + MARK_AFTER_MS * SAMPLES_PER_MS).min(len);
        marks[from..to].fill(true);
    }
    marks
}

/// One chirp of a sender's stream: where it starts in the stream and when it was captured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Onset {
    /// Stream sample of its first sample.
    pub sample: u64,
    /// Capture time of its first sample, ms on the host clock.
    pub captured_ms: f64,
    pub rises: bool,
}

/// The chirps of a stream that sent `samples_sent` samples of a looped signal of
/// `signal_len` samples, captured from `capture_origin_ms` on.
pub fn onsets(signal_len: usize, samples_sent: u64, capture_origin_ms: f64) -> Vec<Onset> {
    let starts = chirp_starts(signal_len);
    let even = starts.len() - starts.len() % 2;
    if even == 0 || signal_len == 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut pass = 0u64;
    'passes: loop {
        for (k, &s) in starts.iter().take(even).enumerate() {
            let sample = pass * signal_len as u64 + s as u64;
            if sample + CHIRP_SAMPLES as u64 > samples_sent {
                break 'passes;
            }
            out.push(Onset {
                sample,
                captured_ms: capture_origin_ms + sample as f64 / SAMPLES_PER_MS as f64,
                rises: rises(k),
            });
        }
        pass += 1;
    }
    out
}

/// The second difference of `x` (`x[n] - 2 x[n-1] + x[n-2]`, one sample shorter at each
/// end): a high-pass whose gain grows with the square of the frequency, 220 times more at
/// 3 kHz than at 200 Hz. The chirps sweep 1-5 kHz; the test signal's speech lies below
/// 1.3 kHz, so matching after it sees the chirp, not the voice under it.
fn high_pass(x: impl Iterator<Item = f64>) -> Vec<f64> {
    let x: Vec<f64> = x.collect();
    x.windows(3).map(|w| w[2] - 2.0 * w[1] + w[0]).collect()
}

/// Normalised cross-correlation of `template` (norm `t_norm`) with `x` (same length), in
/// [-1, 1].
fn ncc(template: &[f64], t_norm: f64, x: &[f64]) -> f64 {
    let mut dot = 0.0;
    let mut energy = 0.0;
    for (&a, &b) in template.iter().zip(x) {
        dot += a * b;
        energy += b * b;
    }
    if energy <= 0.0 || t_norm <= 0.0 {
        0.0
    } else {
        dot / (t_norm * energy.sqrt())
    }
}

/// Mouth-to-ear of every onset found in `timeline` (a receiver's playout timeline of that
/// sender, whose sample 0 played at `timeline_origin_ms`), in ms, in the order of `onsets`;
/// `None` for an onset not found (its search window is not inside the timeline, or nothing
/// there matches the chirp well enough). Both the chirp and the timeline are matched
/// high-passed ([`high_pass`]).
pub fn measure(timeline: &[i16], timeline_origin_ms: u64, onsets: &[Onset]) -> Vec<Option<f64>> {
    let templates: Vec<(Vec<f64>, f64)> = [chirp(false), chirp(true)]
        .iter()
        .map(|c| {
            let t = high_pass(c.iter().map(|&x| f64::from(x)));
            let norm = t.iter().map(|x| x * x).sum::<f64>().sqrt();
            (t, norm)
        })
        .collect();
    onsets
        .iter()
        .map(|o| {
            let (template, norm) = &templates[usize::from(o.rises)];
            find_one(timeline, timeline_origin_ms, o, template, *norm)
        })
        .collect()
}

/// The delay of one onset: the best match of its (high-passed) chirp within
/// [`MAX_DELAY_MS`] after its capture instant, if it is at least [`MIN_MATCH`].
fn find_one(
    timeline: &[i16],
    timeline_origin_ms: u64,
    o: &Onset,
    template: &[f64],
    norm: f64,
) -> Option<f64> {
    let per_ms = SAMPLES_PER_MS as f64;
    // Where the chirp would start on the timeline with no delay at all.
    let zero = ((o.captured_ms - timeline_origin_ms as f64) * per_ms).round();
    if zero < 0.0 {
        return None;
    }
    let zero = zero as usize;
    let last = zero + MAX_DELAY_MS * SAMPLES_PER_MS;
    // The high-passed template starts one sample into the chirp.
    let end = last + template.len() + 2;
    if end > timeline.len() {
        return None;
    }
    let window = high_pass(timeline[zero..end].iter().map(|&x| f64::from(x)));
    let (best_at, best) = (0..=last - zero)
        .map(|k| (k, ncc(template, norm, &window[k..k + template.len()])))
        .fold((0, f64::NEG_INFINITY), |a, b| if b.1 > a.1 { b } else { a });
    (best >= MIN_MATCH)
        .then(|| timeline_origin_ms as f64 + (zero + best_at) as f64 / per_ms - o.captured_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::audio::FrameSource;
    use crate::media::codec::{frame_samples, Decoder, Encoder, EncoderConfig, Mode};
    use crate::media::sink::{AudioSink, Played, WavTimeline};

    #[test]
    fn outside_the_chirps_every_test_signal_comes_through_opus_intact() {
        for index in 0..8 {
            let signal = signal_with_chirps(index, 3.0);
            let marks = chirp_marks(signal.len());
            assert!(marks.iter().filter(|&&m| m).count() * 8 < signal.len());
            let mut enc = Encoder::new(&EncoderConfig::default()).expect("encoder");
            let mut dec = Decoder::with_frame_ms(20).expect("decoder");
            let mut heard = Vec::new();
            for pcm in FrameSource::frames(&signal, frame_samples(20)) {
                heard.extend(
                    dec.decode(&enc.encode(&pcm).expect("encode"))
                        .expect("decode"),
                );
            }
            let (_, lag) = crate::media::audio::aligned_correlation(&signal, &heard, 4_800);
            let outside =
                crate::media::audio::correlation_where(&signal, &heard, lag, |k| !marks[k]);
            let everywhere = crate::media::audio::correlation_where(&signal, &heard, lag, |_| true);
            assert!(outside >= 0.99, "signal {index}: {outside}");
            assert!(
                everywhere < outside,
                "signal {index}: the chirps code worse"
            );
        }
    }

    #[test]
    fn chirps_alternate_and_do_not_match_each_other() {
        let up = high_pass(chirp(true).iter().map(|&x| f64::from(x)));
        let norm = up.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((ncc(&up, norm, &up) - 1.0).abs() < 1e-9);
        // The falling chirp, at any offset against the rising one, stays below a match (and
        // no search window holds a chirp of the other kind anyway: they are a period apart).
        let mut down = vec![0i16; 192];
        down.extend(chirp(false));
        down.extend(vec![0i16; 192]);
        let down = high_pass(down.iter().map(|&x| f64::from(x)));
        let best = (0..=down.len() - up.len())
            .map(|k| ncc(&up, norm, &down[k..k + up.len()]))
            .fold(f64::NEG_INFINITY, f64::max);
        assert!(best < MIN_MATCH - 0.05, "{best}");
        let starts = chirp_starts(480_000);
        assert_eq!(starts.len(), 40);
        assert_eq!(starts[1] - starts[0], 12_000);
        let o = onsets(480_000, 3 * 480_000 + 4_800 + 192, 1_000.0);
        // Three passes of 40, and the first of the fourth.
        assert_eq!(o.len(), 121);
        assert!(o[0].rises && !o[1].rises && o[40].rises && !o[79].rises && o[120].rises);
        assert_eq!(o[120].sample, 3 * 480_000 + 4_800);
        assert!((o[1].captured_ms - (1_000.0 + 350.0)).abs() < 1e-9);
        assert!(onsets(100, 1_000, 0.0).is_empty());
    }

    /// Sends signal `index` through the real encoder in frames of `frame_ms` (captured from
    /// `origin` on: frame `k`'s first sample at `origin + k` frames), plays each frame
    /// `delay(k)` ms after it was complete, decodes it, lays it on a timeline, and measures.
    fn through_the_codec(
        frame_ms: u8,
        mode: Mode,
        delay: impl Fn(u64) -> u64,
    ) -> (Vec<Option<f64>>, f64) {
        let dir = tempfile::tempdir().expect("tempdir");
        let origin = 1_700_000_000_000u64;
        let signal = signal_with_chirps(3, 3.0);
        let mut enc = Encoder::new(&EncoderConfig {
            frame_ms,
            mode,
            ..EncoderConfig::default()
        })
        .expect("encoder");
        let lookahead_ms = enc.lookahead_samples() as f64 / 48.0;
        let mut dec = Decoder::with_frame_ms(frame_ms).expect("decoder");
        let mut sink = WavTimeline::create(dir.path(), origin).expect("sink");
        let frames = FrameSource::frames(&signal, frame_samples(frame_ms));
        for (k, pcm) in frames.iter().enumerate() {
            let k = k as u64;
            let complete = origin + (k + 1) * u64::from(frame_ms);
            let out = dec
                .decode(&enc.encode(pcm).expect("encode"))
                .expect("decode");
            let frame = Played {
                from: "s",
                seq: k as u32,
                at_ms: complete + delay(k),
                at_us: (complete + delay(k)) * 1_000,
                pcm: &out,
            };
            sink.play(frame).expect("play");
        }
        sink.finish().expect("finish");
        let timeline =
            crate::media::audio::read_wav(&dir.path().join("s.timeline.wav")).expect("read");
        // Every chirp whose search window the timeline covers.
        let sent = (signal.len() - (MAX_DELAY_MS + 60) * SAMPLES_PER_MS) as u64;
        let found = measure(
            &timeline,
            origin,
            &onsets(signal.len(), sent, origin as f64),
        );
        (found, lookahead_ms)
    }

    #[test]
    fn a_known_delay_between_sender_and_receiver_is_reported_within_2_ms() {
        for (frame_ms, mode) in [(20, Mode::Audio), (10, Mode::Audio), (10, Mode::LowDelay)] {
            for inserted in [0u64, 7, 33, 120] {
                let (found, lookahead) = through_the_codec(frame_ms, mode, |_| inserted);
                // Framing (the first sample waits a frame), look-ahead, the inserted delay.
                let want = f64::from(frame_ms) + lookahead + inserted as f64;
                assert!(found.len() >= 10, "{found:?}");
                for (i, d) in found.iter().enumerate() {
                    let d = d.unwrap_or_else(|| panic!("{frame_ms} ms {inserted}: chirp {i}"));
                    assert!(
                        (d - want).abs() <= 2.0,
                        "{frame_ms} ms {mode:?}, {inserted} ms inserted: chirp {i} at {d}, want {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_varying_delay_is_followed_chirp_by_chirp() {
        // The delay steps between 10 and 40 ms every half second (the buffer growing with a
        // gap, and shrinking by dropping the tail of a frame); every chirp reports the delay
        // of the frame it played in, within 2 ms.
        let delay = |k: u64| if (k / 25) % 2 == 0 { 10 } else { 40 };
        let (found, lookahead) = through_the_codec(20, Mode::Audio, delay);
        let frame_of = |o: &Onset| (o.sample + 312) / 960;
        let signal_len = signal_with_chirps(3, 3.0).len();
        let sent = (signal_len - (MAX_DELAY_MS + 60) * SAMPLES_PER_MS) as u64;
        let all = onsets(signal_len, sent, 1_700_000_000_000.0);
        let mut checked = 0;
        for (o, d) in all.iter().zip(&found) {
            let want = 20.0 + lookahead + delay(frame_of(o)) as f64;
            // A chirp that straddles two frames played with different delays is cut; only
            // those inside one output frame are exact.
            let start_in_frame = (o.sample + 312) % 960;
            if start_in_frame + 192 < 960 {
                let d = d.expect("found");
                assert!(
                    (d - want).abs() <= 2.0,
                    "chirp at {}: {d} vs {want}",
                    o.sample
                );
                checked += 1;
            }
        }
        assert!(checked >= 5, "{checked}");
        assert!(found.iter().flatten().any(|d| *d > 60.0));
    }

    #[test]
    fn nothing_played_means_nothing_found() {
        let o = onsets(48_000, 48_000, 10_000.0);
        let silence = vec![0i16; 96_000];
        assert!(measure(&silence, 10_000, &o).iter().all(Option::is_none));
        // Out of the timeline.
        assert!(measure(&silence[..100], 10_000, &o)
            .iter()
            .all(Option::is_none));
        assert!(measure(&silence, 20_000, &o).iter().all(Option::is_none));
    }
}
