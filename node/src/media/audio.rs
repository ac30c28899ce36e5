//! Audio sources, sinks, test signals and the sent-versus-heard comparison.
//!
//! All audio inside confab is 48 kHz mono signed 16-bit PCM ([`SAMPLE_RATE`]). WAV files in
//! other layouts are converted on the way in by [`read_wav`]; [`write_wav`] always writes the
//! native layout.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::codec::SAMPLE_RATE;

/// Lowest and highest input sample rates [`read_wav`] converts, in Hz.
const MIN_INPUT_RATE: u32 = 1_000;
const MAX_INPUT_RATE: u32 = 768_000;
/// Length of the looped test signal a call sends with `--signal` (and the demo scores against).
pub const TEST_SIGNAL_SECS: f64 = 10.0;

/// Everything that can go wrong reading or writing audio files.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("{}: file not found", .path.display())]
    NotFound { path: PathBuf },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a WAV file ({reason})", .path.display())]
    NotWav { path: PathBuf, reason: String },
    #[error("{}: truncated WAV file ({detail})", .path.display())]
    Truncated { path: PathBuf, detail: String },
    #[error("{}: corrupt WAV file ({reason})", .path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("{}: unsupported WAV format: {what}", .path.display())]
    Unsupported { path: PathBuf, what: String },
}

fn io_error(path: &Path, source: std::io::Error) -> AudioError {
    if source.kind() == std::io::ErrorKind::NotFound {
        AudioError::NotFound {
            path: path.to_path_buf(),
        }
    } else {
        AudioError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Whether an IO error from hound means the file ended early. Hound reports that either as
/// `UnexpectedEof` or as an `Other` error with this message.
fn is_eof(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::UnexpectedEof
        || (e.kind() == std::io::ErrorKind::Other
            && e.to_string().contains("Failed to read enough bytes"))
}

/// Maps a hound error; `what` says which part of the file was being read.
fn hound_error(path: &Path, what: &str, err: hound::Error) -> AudioError {
    let path = path.to_path_buf();
    match err {
        hound::Error::IoError(e) if is_eof(&e) => AudioError::Truncated {
            path,
            detail: format!("file ends inside the {what}"),
        },
        hound::Error::IoError(source) => AudioError::Io { path, source },
        hound::Error::FormatError(reason) => AudioError::Corrupt {
            path,
            reason: format!("{what}: {reason}"),
        },
        hound::Error::Unsupported => AudioError::Unsupported {
            path,
            what: format!("{what} uses a WAV feature hound does not support"),
        },
        hound::Error::TooWide | hound::Error::InvalidSampleFormat => AudioError::Unsupported {
            path,
            what: format!("{what}: sample format does not match the header"),
        },
        other => AudioError::Corrupt {
            path,
            reason: format!("{what}: {other}"),
        },
    }
}

/// Reads a WAV file as 48 kHz mono i16.
///
/// Accepts integer PCM of 8, 16, 24 or 32 bits and 32-bit float, with any number of channels
/// (averaged down to mono), at any rate from 1 kHz to 768 kHz. Other rates are resampled to
/// 48 kHz by linear interpolation between neighbouring samples, without an anti-aliasing
/// filter: good enough for speech and test tones, not for hi-fi. Float samples are clamped to
/// [-1, 1]. A missing file, a file that is not RIFF/WAVE, a truncated or corrupt file and an
/// unsupported format are each a distinct [`AudioError`].
pub fn read_wav(path: &Path) -> Result<Vec<i16>, AudioError> {
    let mut file = File::open(path).map_err(|e| io_error(path, e))?;

    // Check the RIFF/WAVE magic ourselves, so that "not a WAV file at all" and "a damaged WAV
    // file" get different messages.
    let mut magic = [0u8; 12];
    let mut got = 0;
    while got < magic.len() {
        match file.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(path, e)),
        }
    }
    let expected = b"RIFF\0\0\0\0WAVE";
    let matches = |range: std::ops::Range<usize>| magic[range.clone()] == expected[range];
    if got < magic.len() {
        // A short prefix of a WAV header is a truncated WAV; anything else is not a WAV.
        let prefix_ok = matches(0..got.min(4)) && (got <= 8 || matches(8..got));
        return Err(if got > 0 && prefix_ok {
            AudioError::Truncated {
                path: path.to_path_buf(),
                detail: format!("only {got} bytes"),
            }
        } else {
            AudioError::NotWav {
                path: path.to_path_buf(),
                reason: if got == 0 {
                    "the file is empty".into()
                } else {
                    "it does not start with a RIFF/WAVE header".into()
                },
            }
        });
    }
    if !matches(0..4) || !matches(8..12) {
        return Err(AudioError::NotWav {
            path: path.to_path_buf(),
            reason: "it does not start with a RIFF/WAVE header".into(),
        });
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|e| io_error(path, e))?;

    let reader =
        hound::WavReader::new(BufReader::new(file)).map_err(|e| hound_error(path, "header", e))?;
    let spec = reader.spec();
    let unsupported = |what: String| AudioError::Unsupported {
        path: path.to_path_buf(),
        what,
    };
    if !(MIN_INPUT_RATE..=MAX_INPUT_RATE).contains(&spec.sample_rate) {
        return Err(unsupported(format!(
            "sample rate {} Hz (supported: {MIN_INPUT_RATE}..={MAX_INPUT_RATE} Hz)",
            spec.sample_rate
        )));
    }
    let channels = usize::from(spec.channels);
    if channels == 0 {
        return Err(unsupported("zero channels".into()));
    }
    let declared = reader.len() as usize;

    let interleaved: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Int, bits @ (8 | 16 | 24 | 32)) => {
            let scale = 1.0 / (1u64 << (bits - 1)) as f32;
            collect_samples(path, declared, reader.into_samples::<i32>(), |s| {
                s as f32 * scale
            })?
        }
        (hound::SampleFormat::Float, 32) => {
            collect_samples(path, declared, reader.into_samples::<f32>(), |s| {
                if s.is_nan() {
                    0.0
                } else {
                    s.clamp(-1.0, 1.0)
                }
            })?
        }
        (format, bits) => {
            let kind = match format {
                hound::SampleFormat::Int => "integer",
                hound::SampleFormat::Float => "float",
            };
            return Err(unsupported(format!(
                "{bits}-bit {kind} samples (supported: 8/16/24/32-bit integer, 32-bit float)"
            )));
        }
    };
    if interleaved.len() % channels != 0 {
        return Err(AudioError::Truncated {
            path: path.to_path_buf(),
            detail: "the last sample frame is incomplete".into(),
        });
    }

    let mono: Vec<f32> = interleaved
        .chunks_exact(channels)
        .map(|frame| frame.iter().sum::<f32>() / channels as f32)
        .collect();
    let resampled = resample_linear(&mono, spec.sample_rate, SAMPLE_RATE);
    Ok(resampled.into_iter().map(to_i16).collect())
}

/// Reads every sample the header declares; running out early is a truncated file.
fn collect_samples<S, I>(
    path: &Path,
    declared: usize,
    samples: I,
    convert: impl Fn(S) -> f32,
) -> Result<Vec<f32>, AudioError>
where
    I: Iterator<Item = hound::Result<S>>,
{
    // Never trust the declared length for allocation beyond a sane bound.
    let mut out = Vec::with_capacity(declared.min(1 << 24));
    for sample in samples {
        match sample {
            Ok(s) => out.push(convert(s)),
            Err(hound::Error::IoError(e)) if is_eof(&e) => {
                return Err(AudioError::Truncated {
                    path: path.to_path_buf(),
                    detail: format!(
                        "the header declares {declared} samples, the file holds {}",
                        out.len()
                    ),
                });
            }
            Err(e) => return Err(hound_error(path, "sample data", e)),
        }
    }
    Ok(out)
}

fn to_i16(x: f32) -> i16 {
    // `as` saturates; NaN becomes 0.
    (x * 32767.0).round() as i16
}

/// Linear-interpolation resampler (no anti-aliasing filter).
fn resample_linear(input: &[f32], from_hz: u32, to_hz: u32) -> Vec<f32> {
    if from_hz == to_hz || input.is_empty() {
        return input.to_vec();
    }
    let out_len = (input.len() as u64 * u64::from(to_hz) / u64::from(from_hz)) as usize;
    let step = f64::from(from_hz) / f64::from(to_hz);
    let last = input.len() - 1;
    (0..out_len)
        .map(|j| {
            let pos = j as f64 * step;
            let i = (pos.floor() as usize).min(last);
            let frac = (pos - i as f64) as f32;
            let a = input[i];
            let b = input[(i + 1).min(last)];
            a + (b - a) * frac
        })
        .collect()
}

/// Writes 48 kHz mono 16-bit WAV.
pub fn write_wav(path: &Path, samples: &[i16]) -> Result<(), AudioError> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec).map_err(|e| write_error(path, e))?;
    {
        let mut w = writer.get_i16_writer(samples.len() as u32);
        for &s in samples {
            w.write_sample(s);
        }
        w.flush().map_err(|e| write_error(path, e))?;
    }
    writer.finalize().map_err(|e| write_error(path, e))
}

pub(crate) fn write_error(path: &Path, err: hound::Error) -> AudioError {
    match err {
        hound::Error::IoError(e) => io_error(path, e),
        other => AudioError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(other.to_string()),
        },
    }
}

fn samples_for(secs: f64) -> usize {
    if secs.is_finite() && secs > 0.0 {
        (secs * f64::from(SAMPLE_RATE)).round() as usize
    } else {
        0
    }
}

/// A pure tone at `hz`, amplitude 0.3 full scale, `secs` long, at 48 kHz.
pub fn tone(hz: f64, secs: f64) -> Vec<i16> {
    let amplitude = 0.3 * 32767.0;
    let w = 2.0 * std::f64::consts::PI * hz / f64::from(SAMPLE_RATE);
    (0..samples_for(secs))
        .map(|i| (amplitude * (w * i as f64).sin()).round() as i16)
        .collect()
}

/// SplitMix64: a tiny deterministic generator, so test signals never change with a
/// dependency's version.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * unit
    }
}

/// Number of harmonics in [`test_signal`].
const HARMONICS: usize = 6;

/// A distinct, speech-like, non-periodic test signal for participant `index`, `secs` long.
///
/// It is a sequence of "syllables" (120–300 ms, i.e. a 3–6 Hz syllable rate) separated by short
/// gaps and, every few syllables, a pause of 150–400 ms. Each syllable is a sum of six
/// harmonics of a pitch that glides between two random values within ±12 % of a base pitch
/// (90 Hz + 12.5 Hz × (`index` mod 16)), with random harmonic weights, a random level and a
/// sin² envelope. The randomness is a fixed generator seeded by `index`, so the same index
/// always gives the same samples, and different indices give uncorrelated signals. Peak level
/// is at most 0.45 full scale.
pub fn test_signal(index: usize, secs: f64) -> Vec<i16> {
    let n = samples_for(secs);
    let rate = f64::from(SAMPLE_RATE);
    let base_hz = 90.0 + 12.5 * (index % 16) as f64;
    let mut rng = SplitMix64(0xc0f_ab5e_ed00_0000 ^ (index as u64).wrapping_mul(0x2545_f491));
    let peak = 0.45 * 32767.0;

    let mut out = Vec::with_capacity(n);
    let mut phase = 0.0f64; // phase of the fundamental, radians
    let mut syllables_until_pause = 3 + rng.next_u64() % 4;
    while out.len() < n {
        // One syllable.
        let len = (rng.uniform(0.12, 0.30) * rate) as usize;
        let f_start = base_hz * rng.uniform(0.88, 1.12);
        let f_end = base_hz * rng.uniform(0.88, 1.12);
        let level = rng.uniform(0.6, 1.0);
        let mut weights = [0.0f64; HARMONICS];
        for (k, w) in weights.iter_mut().enumerate() {
            *w = rng.uniform(0.5, 1.5) / (k + 1) as f64;
        }
        let norm = level * peak / weights.iter().sum::<f64>();
        for i in 0..len {
            if out.len() >= n {
                break;
            }
            let t = i as f64 / len as f64;
            let hz = f_start + (f_end - f_start) * t;
            phase = (phase + 2.0 * std::f64::consts::PI * hz / rate) % (2.0 * std::f64::consts::PI);
            let env = (std::f64::consts::PI * t).sin().powi(2);
            let voiced: f64 = weights
                .iter()
                .enumerate()
                .map(|(k, w)| w * ((k + 1) as f64 * phase).sin())
                .sum();
            out.push((norm * env * voiced).round() as i16);
        }
        // Gap or pause.
        syllables_until_pause -= 1;
        let gap_secs = if syllables_until_pause == 0 {
            syllables_until_pause = 3 + rng.next_u64() % 4;
            rng.uniform(0.15, 0.40)
        } else {
            rng.uniform(0.02, 0.06)
        };
        let gap = ((gap_secs * rate) as usize).min(n - out.len());
        out.extend(std::iter::repeat_n(0i16, gap));
    }
    out
}

/// Decimation factor of the coarse lag search in [`aligned_correlation`].
const DECIMATION: usize = 8;
/// At most this many coarse peaks are refined at full resolution...
const COARSE_CANDIDATES: usize = 3;
/// ...and only those within this much of the best coarse correlation.
const COARSE_MARGIN: f64 = 0.15;
/// Overlaps shorter than this many samples count as no overlap.
const MIN_OVERLAP: usize = 32;

/// A signal with prefix sums of its values and squares, for O(1) means and variances of any
/// window.
struct Series {
    data: Vec<i32>,
    sum: Vec<i64>,
    sum_sq: Vec<i64>,
}

impl Series {
    fn new(data: Vec<i32>) -> Self {
        let mut sum = Vec::with_capacity(data.len() + 1);
        let mut sum_sq = Vec::with_capacity(data.len() + 1);
        let (mut s, mut q) = (0i64, 0i64);
        sum.push(0);
        sum_sq.push(0);
        for &x in &data {
            s += i64::from(x);
            q += i64::from(x) * i64::from(x);
            sum.push(s);
            sum_sq.push(q);
        }
        Self { data, sum, sum_sq }
    }

    /// Sums of the block averages (well, block sums) of `DECIMATION` samples.
    fn decimated(samples: &[i16]) -> Self {
        Self::new(
            samples
                .chunks_exact(DECIMATION)
                .map(|c| c.iter().map(|&x| i32::from(x)).sum())
                .collect(),
        )
    }

    fn len(&self) -> usize {
        self.data.len()
    }
}

/// Dot product of two equally long slices. Written as a plain loop over fixed-size chunks with
/// independent accumulators: the optimiser vectorises it, and it stays tolerable in debug
/// builds, where iterator chains are slow.
fn dot(x: &[i32], y: &[i32]) -> i64 {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &y[..n]);
    let mut acc = [0i64; 4];
    let mut xc = x.chunks_exact(4);
    let mut yc = y.chunks_exact(4);
    for (a, b) in (&mut xc).zip(&mut yc) {
        acc[0] += i64::from(a[0]) * i64::from(b[0]);
        acc[1] += i64::from(a[1]) * i64::from(b[1]);
        acc[2] += i64::from(a[2]) * i64::from(b[2]);
        acc[3] += i64::from(a[3]) * i64::from(b[3]);
    }
    let mut total = acc[0] + acc[1] + acc[2] + acc[3];
    for (&a, &b) in xc.remainder().iter().zip(yc.remainder()) {
        total += i64::from(a) * i64::from(b);
    }
    total
}

/// Pearson correlation of `sent[0..n]` with `heard[lag..lag + n]`, `n` the overlap; `None` if
/// the overlap is shorter than `min_overlap`.
fn correlation_at(sent: &Series, heard: &Series, lag: usize, min_overlap: usize) -> Option<f64> {
    let n = sent.len().min(heard.len().checked_sub(lag)?);
    if n < min_overlap.max(2) {
        return None;
    }
    let x = &sent.data[..n];
    let y = &heard.data[lag..lag + n];
    let sxy = dot(x, y);
    let sx = i128::from(sent.sum[n]);
    let sxx = i128::from(sent.sum_sq[n]);
    let sy = i128::from(heard.sum[lag + n] - heard.sum[lag]);
    let syy = i128::from(heard.sum_sq[lag + n] - heard.sum_sq[lag]);
    let n = n as i128;
    let cov = n * i128::from(sxy) - sx * sy;
    let var_x = n * sxx - sx * sx;
    let var_y = n * syy - sy * sy;
    if var_x <= 0 || var_y <= 0 {
        return Some(0.0);
    }
    Some(cov as f64 / ((var_x as f64).sqrt() * (var_y as f64).sqrt()))
}

/// Pearson correlation of `sent[k]` with `heard[lag + k]` over the `k` of the overlap that
/// `keep(k)` keeps (0 when fewer than two are kept or either side is constant).
pub fn correlation_where(
    sent: &[i16],
    heard: &[i16],
    lag: usize,
    keep: impl Fn(usize) -> bool,
) -> f64 {
    let n = sent.len().min(heard.len().saturating_sub(lag));
    let (mut count, mut sx, mut sy, mut sxx, mut syy, mut sxy) = (0.0f64, 0.0, 0.0, 0.0, 0.0, 0.0);
    for k in (0..n).filter(|&k| keep(k)) {
        let (x, y) = (f64::from(sent[k]), f64::from(heard[lag + k]));
        count += 1.0;
        sx += x;
        sy += y;
        sxx += x * x;
        syy += y * y;
        sxy += x * y;
    }
    let var_x = count * sxx - sx * sx;
    let var_y = count * syy - sy * sy;
    if count < 2.0 || var_x <= 0.0 || var_y <= 0.0 {
        return 0.0;
    }
    (count * sxy - sx * sy) / (var_x.sqrt() * var_y.sqrt())
}

/// Minimum overlap for a lag to count: half of the shorter signal, so that lags at which only
/// a sliver of the signals overlaps cannot win by chance.
fn min_overlap(a: usize, b: usize) -> usize {
    (a.min(b) / 2).max(MIN_OVERLAP)
}

/// Pearson correlation between `sent` and `heard` after aligning them by delay.
///
/// Searches lags `0..=max_lag_samples` (`heard` lags behind `sent`: `heard[lag + i]` is
/// compared with `sent[i]`), computes the correlation over the overlapping part, and returns
/// `(best_correlation, best_lag)`. Lags at which the overlap is shorter than half of the
/// shorter signal (or 32 samples) are not considered; if no lag qualifies, or either signal is
/// silent, the result is `(0.0, 0)`.
///
/// The search is coarse-to-fine: correlations of 8-sample block sums (a crude low-pass filter
/// and decimation) at every eighth lag, then every lag within ±12 samples of the best coarse
/// peak (and of up to two more peaks nearly as good) at full resolution. Signals with their energy far above 3 kHz can fool the
/// coarse stage; speech and the test signals do not.
pub fn aligned_correlation(sent: &[i16], heard: &[i16], max_lag_samples: usize) -> (f64, usize) {
    let max_lag = max_lag_samples.min(heard.len());
    let widen = |s: &[i16]| s.iter().map(|&x| i32::from(x)).collect::<Vec<_>>();
    let full_sent = Series::new(widen(sent));
    let full_heard = Series::new(widen(heard));
    let full_min = min_overlap(sent.len(), heard.len());

    let mut best: Option<(f64, usize)> = None;
    let consider = |lag: usize, best: &mut Option<(f64, usize)>| {
        if let Some(c) = correlation_at(&full_sent, &full_heard, lag, full_min) {
            if best.is_none_or(|(b, _)| c > b) {
                *best = Some((c, lag));
            }
        }
    };

    let coarse_lags = max_lag / DECIMATION;
    if coarse_lags < 4 || sent.len().min(heard.len()) < 64 * DECIMATION {
        // Small problem: search every lag at full resolution.
        for lag in 0..=max_lag {
            consider(lag, &mut best);
        }
    } else {
        let dec_sent = Series::decimated(sent);
        let dec_heard = Series::decimated(heard);
        let dec_min = min_overlap(dec_sent.len(), dec_heard.len());
        let coarse: Vec<Option<f64>> = (0..=coarse_lags)
            .map(|d| correlation_at(&dec_sent, &dec_heard, d, dec_min))
            .collect();
        // Local maxima of the coarse correlation, best first; only those close to the best
        // one are worth refining.
        let value = |d: usize| coarse[d].unwrap_or(f64::NEG_INFINITY);
        let mut peaks: Vec<usize> = (0..coarse.len())
            .filter(|&d| coarse[d].is_some())
            .filter(|&d| d == 0 || value(d - 1) <= value(d))
            .filter(|&d| d + 1 >= coarse.len() || value(d + 1) <= value(d))
            .collect();
        peaks.sort_by(|&a, &b| value(b).total_cmp(&value(a)));
        let top = peaks.first().map_or(f64::NEG_INFINITY, |&d| value(d));
        peaks.retain(|&d| value(d) >= top - COARSE_MARGIN);
        peaks.truncate(COARSE_CANDIDATES);
        let reach = DECIMATION + DECIMATION / 2;
        let mut searched: Vec<(usize, usize)> = Vec::new();
        for d in peaks {
            let lo = (d * DECIMATION).saturating_sub(reach);
            let hi = (d * DECIMATION + reach).min(max_lag);
            for lag in lo..=hi {
                if !searched.iter().any(|&(a, b)| (a..=b).contains(&lag)) {
                    consider(lag, &mut best);
                }
            }
            searched.push((lo, hi));
        }
    }
    best.unwrap_or((0.0, 0))
}

/// Cuts samples into frames of any length, once (the last one zero-padded) or looping
/// forever without a seam (a loop that ends inside a frame goes on from the start in the
/// same frame, so sample `n` of the stream is always `samples[n % len]`). Pacing (one frame
/// per frame duration) is the caller's job.
#[derive(Debug, Clone)]
pub struct FrameSource {
    samples: Vec<i16>,
    looping: bool,
    /// Index of the next sample.
    next: usize,
}

impl FrameSource {
    /// A source over `samples`; with `looping`, it starts over after the last sample. An
    /// empty source yields no frames, looping or not.
    pub fn new(samples: Vec<i16>, looping: bool) -> Self {
        Self {
            samples,
            looping,
            next: 0,
        }
    }

    /// Fills `out` with the next frame; false (and `out` untouched) at the end of a
    /// non-looping source.
    pub fn next_frame(&mut self, out: &mut [i16]) -> bool {
        if self.samples.is_empty() || (!self.looping && self.next >= self.samples.len()) {
            return false;
        }
        let mut filled = 0;
        while filled < out.len() {
            if self.next >= self.samples.len() {
                if !self.looping {
                    out[filled..].fill(0);
                    break;
                }
                self.next = 0;
            }
            let n = (out.len() - filled).min(self.samples.len() - self.next);
            out[filled..filled + n].copy_from_slice(&self.samples[self.next..self.next + n]);
            filled += n;
            self.next += n;
        }
        true
    }

    /// Every frame of `frame_samples` of one pass (for tests and benchmarks).
    pub fn frames(samples: &[i16], frame_samples: usize) -> Vec<Vec<i16>> {
        let mut src = Self::new(samples.to_vec(), false);
        let mut out = Vec::new();
        let mut frame = vec![0i16; frame_samples];
        while src.next_frame(&mut frame) {
            out.push(frame.clone());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    #[test]
    fn tone_has_expected_length_and_level() {
        let t = tone(1000.0, 0.5);
        assert_eq!(t.len(), 24_000);
        let peak = t
            .iter()
            .map(|&x| i32::from(x).abs())
            .max()
            .expect("samples");
        assert!((9_500..=9_900).contains(&peak), "peak {peak}");
        assert!(tone(440.0, -1.0).is_empty());
        assert!(tone(440.0, f64::NAN).is_empty());
    }

    #[test]
    fn test_signal_is_deterministic_with_pauses_and_headroom() {
        for i in 0..16 {
            let a = test_signal(i, 3.0);
            assert_eq!(a.len(), 144_000);
            assert_eq!(a, test_signal(i, 3.0), "index {i}");
            let peak = a
                .iter()
                .map(|&x| i32::from(x).abs())
                .max()
                .expect("samples");
            assert!((5_000..=14_800).contains(&peak), "index {i}: peak {peak}");
            // There are silent stretches of at least 100 ms.
            let longest_silence = a
                .split(|&x| x != 0)
                .map(<[i16]>::len)
                .max()
                .expect("samples");
            assert!(longest_silence >= 4_800, "index {i}: {longest_silence}");
        }
        assert_ne!(test_signal(0, 1.0), test_signal(1, 1.0));
    }

    #[test]
    fn aligned_correlation_finds_injected_delay() {
        let sent = test_signal(4, 3.0);
        for delay in [0usize, 1, 7, 312, 1_234, 4_800] {
            let mut heard = vec![0i16; delay];
            heard.extend_from_slice(&sent);
            let (corr, lag) = aligned_correlation(&sent, &heard, 4_800);
            assert!(lag.abs_diff(delay) <= 1, "delay {delay}: found {lag}");
            assert!(corr > 0.999, "delay {delay}: correlation {corr}");
        }
    }

    #[test]
    fn aligned_correlation_with_noise_and_gain() {
        let sent = test_signal(9, 4.0);
        let mut rng = SplitMix64(7);
        let mut heard = vec![0i16; 2_000];
        heard.extend(
            sent.iter()
                .map(|&x| (f64::from(x) * 0.5 + rng.uniform(-300.0, 300.0)) as i16),
        );
        let (corr, lag) = aligned_correlation(&sent, &heard, 4_800);
        assert_eq!(lag, 2_000);
        assert!(corr > 0.9, "correlation {corr}");
    }

    #[test]
    fn aligned_correlation_has_a_single_clear_peak() {
        // Away from the true lag by more than a few pitch periods, correlation is low.
        let sent = test_signal(2, 4.0);
        let sent_series = Series::new(sent.iter().map(|&x| i32::from(x)).collect());
        let min = min_overlap(sent.len(), sent.len());
        for lag in (480..4_800).step_by(37) {
            let c = correlation_at(&sent_series, &sent_series, lag, min).expect("overlap");
            assert!(c < 0.7, "lag {lag}: {c}");
        }
    }

    #[test]
    fn different_participants_do_not_correlate() {
        // Every index against its nearest neighbours in pitch (the likeliest to correlate),
        // both ways round, and against one far away. (All 240 pairs pass too, but take
        // minutes in a debug build.)
        let signals: Vec<_> = (0..16).map(|i| test_signal(i, 2.0)).collect();
        for i in 0..16usize {
            for j in [i + 1, i + 2, i + 7] {
                let j = j % 16;
                let (corr, _) = aligned_correlation(&signals[i], &signals[j], 4_800);
                assert!(corr < 0.3, "{i} vs {j}: {corr}");
                let (corr, _) = aligned_correlation(&signals[j], &signals[i], 4_800);
                assert!(corr < 0.3, "{j} vs {i}: {corr}");
            }
        }
    }

    #[test]
    fn aligned_correlation_edge_cases() {
        assert_eq!(aligned_correlation(&[], &[], 100), (0.0, 0));
        assert_eq!(aligned_correlation(&[1, 2, 3], &[], 100), (0.0, 0));
        let silence = vec![0i16; 10_000];
        assert_eq!(aligned_correlation(&silence, &silence, 4_800).0, 0.0);
        let t = tone(300.0, 0.5);
        let (c, lag) = aligned_correlation(&t, &t, 0);
        assert!(c > 0.9999 && lag == 0);
        // Lag beyond the heard signal is simply not searched.
        let (c, _) = aligned_correlation(&t, &t[..100], 1_000_000);
        assert!(c.is_finite());
        let inverted: Vec<i16> = t.iter().map(|&x| -x).collect();
        let (c, _) = aligned_correlation(&t, &inverted, 0);
        assert!(c < -0.999);
    }

    #[test]
    fn frame_source_splits_pads_and_loops_without_a_seam() {
        use crate::media::FRAME_SAMPLES;
        let samples: Vec<i16> = (0..2_000).map(|i| i as i16).collect();
        let frames = FrameSource::frames(&samples, FRAME_SAMPLES);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[1][0], 960);
        assert_eq!(frames[2][79], 1_999);
        assert!(frames[2][80..].iter().all(|&x| x == 0));
        assert_eq!(FrameSource::frames(&samples, 480).len(), 5);

        let mut looping = FrameSource::new(samples.clone(), true);
        let mut frame = vec![0i16; 480];
        for k in 0..20usize {
            assert!(looping.next_frame(&mut frame));
            for (i, &x) in frame.iter().enumerate() {
                assert_eq!(
                    x,
                    samples[(k * 480 + i) % samples.len()],
                    "frame {k} sample {i}"
                );
            }
        }
        assert!(!FrameSource::new(Vec::new(), true).next_frame(&mut frame));
        assert!(FrameSource::frames(&[], 960).is_empty());
    }

    #[test]
    fn wav_round_trip() {
        let dir = tmp();
        let path = dir.path().join("a.wav");
        let samples = test_signal(3, 1.0);
        write_wav(&path, &samples).expect("write");
        assert_eq!(read_wav(&path).expect("read"), samples);
        write_wav(&path, &[]).expect("write empty");
        assert!(read_wav(&path).expect("read empty").is_empty());
    }

    #[test]
    fn stereo_float_44k1_is_converted() {
        let dir = tmp();
        let path = dir.path().join("stereo.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 44_100,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let mut w = hound::WavWriter::create(&path, spec).expect("create");
        let w440 = 2.0 * std::f64::consts::PI * 440.0 / 44_100.0;
        for i in 0..44_100 {
            let s = 0.3 * (w440 * f64::from(i)).sin();
            // Left and right differ; the average is the tone.
            w.write_sample((s + 0.1) as f32).expect("sample");
            w.write_sample((s - 0.1) as f32).expect("sample");
        }
        w.finalize().expect("finalize");
        let got = read_wav(&path).expect("read");
        assert_eq!(got.len(), 48_000);
        let (corr, lag) = aligned_correlation(&tone(440.0, 1.0), &got, 100);
        assert!(corr > 0.999, "correlation {corr} at lag {lag}");
        assert!(lag <= 1);
    }

    #[test]
    fn int24_mono_8k_is_converted() {
        let dir = tmp();
        let path = dir.path().join("low.wav");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 8_000,
            bits_per_sample: 24,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).expect("create");
        for _ in 0..8_000 {
            w.write_sample(1 << 22).expect("sample"); // half scale
        }
        w.finalize().expect("finalize");
        let got = read_wav(&path).expect("read");
        assert_eq!(got.len(), 48_000);
        assert!(got.iter().all(|&x| (16_383..=16_384).contains(&x)));
    }

    #[test]
    fn truncated_wav_is_an_error() {
        let dir = tmp();
        let path = dir.path().join("full.wav");
        write_wav(&path, &tone(440.0, 0.5)).expect("write");
        let bytes = std::fs::read(&path).expect("read bytes");
        let cut = dir.path().join("cut.wav");
        // Half the file: header intact, data short.
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
        let err = read_wav(&cut).expect_err("half a file");
        assert!(matches!(err, AudioError::Truncated { .. }), "{err}");
        assert!(err.to_string().contains("truncated"), "{err}");
        // Every cut inside the header.
        for len in 0..=44 {
            std::fs::write(&cut, &bytes[..len]).expect("write");
            assert!(read_wav(&cut).is_err(), "cut at {len}");
        }
        std::fs::write(&cut, &bytes[..20]).expect("write");
        let err = read_wav(&cut).expect_err("cut in header");
        assert!(matches!(err, AudioError::Truncated { .. }), "{err}");
    }

    #[test]
    fn corrupt_headers_never_panic() {
        let dir = tmp();
        let path = dir.path().join("x.wav");
        write_wav(&path, &tone(440.0, 0.01)).expect("write");
        let bytes = std::fs::read(&path).expect("read bytes");
        let mut rng = SplitMix64(42);
        for _ in 0..2_000 {
            let mut b = bytes.clone();
            for _ in 0..1 + rng.next_u64() % 4 {
                let at = (rng.next_u64() % 44) as usize;
                b[at] = rng.next_u64() as u8;
            }
            std::fs::write(&path, &b).expect("write");
            let _ = read_wav(&path);
        }
    }

    #[test]
    fn non_wav_and_missing_files_are_named() {
        let dir = tmp();
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, "this is not audio, just some text\n").expect("write");
        let err = read_wav(&path).expect_err("text");
        assert!(matches!(err, AudioError::NotWav { .. }), "{err}");
        assert!(err.to_string().contains("not a WAV file"), "{err}");

        std::fs::write(&path, "").expect("write");
        let err = read_wav(&path).expect_err("empty");
        assert!(err.to_string().contains("empty"), "{err}");

        let missing = dir.path().join("missing.wav");
        let err = read_wav(&missing).expect_err("missing");
        assert!(matches!(err, AudioError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("file not found"), "{err}");
    }

    #[test]
    fn unsupported_format_says_which() {
        let dir = tmp();
        let path = dir.path().join("rate.wav");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 500,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).expect("create");
        w.write_sample(0i16).expect("sample");
        w.finalize().expect("finalize");
        let err = read_wav(&path).expect_err("rate");
        assert!(matches!(err, AudioError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("500 Hz"), "{err}");
    }
}
