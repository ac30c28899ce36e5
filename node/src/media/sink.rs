//! Where the audio a call plays goes.
//!
//! A sink gets every decoded frame (20 ms, or 10 ms if the sender chose so) of every sender
//! as it is played. Sinks stream:
//! WAV sinks write to disk as audio plays, and nothing is kept in memory that nobody asked to
//! record (the mix keeps a window of at most [`MIX_WINDOW_MS`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use super::audio::{write_error, AudioError};
use super::codec::SAMPLE_RATE;

/// One played frame.
#[derive(Debug, Clone, Copy)]
pub struct Played<'a> {
    /// The sender (its peer id, as text).
    pub from: &'a str,
    /// The frame's sequence number in the sender's stream.
    pub seq: u32,
    /// When it is played, ms since the Unix epoch.
    pub at_ms: u64,
    /// The same instant in µs (`at_ms` is it truncated): the playout timeline lays frames
    /// with it, since a millisecond's truncation would put a frame up to 1 ms early.
    pub at_us: u64,
    pub pcm: &'a [i16],
}

/// A consumer of played audio.
pub trait AudioSink: Send + 'static {
    /// One frame, as it is played.
    fn play(&mut self, frame: Played<'_>) -> Result<(), AudioError>;
    /// The file this sink records `from` into, if it does.
    fn recording_path(&self, _from: &str) -> Option<PathBuf> {
        None
    }
    /// The file this sink lays `from` on the playout timeline in, and the wall time (ms
    /// since the Unix epoch) of its first sample, if it does.
    fn timeline(&self, _from: &str) -> Option<(PathBuf, u64)> {
        None
    }
    /// No more audio: flush and close.
    fn finish(&mut self) -> Result<(), AudioError> {
        Ok(())
    }
}

/// Plays nowhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct Discard;

impl AudioSink for Discard {
    fn play(&mut self, _frame: Played<'_>) -> Result<(), AudioError> {
        Ok(())
    }
}

/// Most silence written into a sender's file for a gap in its sequence numbers (30 s):
/// a jump beyond that (a sender that restarted, or a hostile one) is not turned into a huge
/// file.
pub const MAX_GAP_FRAMES: u32 = 1_500;

type Writer = hound::WavWriter<BufWriter<File>>;

fn spec() -> hound::WavSpec {
    hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    }
}

fn create(path: &Path) -> Result<Writer, AudioError> {
    hound::WavWriter::create(path, spec()).map_err(|e| write_error(path, e))
}

fn write_samples(w: &mut Writer, path: &Path, pcm: &[i16]) -> Result<(), AudioError> {
    for &s in pcm {
        w.write_sample(s).map_err(|e| write_error(path, e))?;
    }
    Ok(())
}

struct SenderFile {
    path: PathBuf,
    writer: Writer,
    next_seq: u32,
    /// When the last frame written played, ms.
    last_at_ms: u64,
}

/// Frames of silence for a gap of `gap` sequence numbers before a frame of `samples` that
/// plays `elapsed_ms` after the previous one: no more than the time that really passed (a
/// sender that jumps its numbers cannot grow the file faster than the call goes on), and
/// at most [`MAX_GAP_FRAMES`].
fn gap_frames(gap: u32, elapsed_ms: u64, samples: usize) -> u32 {
    let frame_ms = (samples as u64 / SAMPLES_PER_MS).max(1);
    let passed = u32::try_from(elapsed_ms / frame_ms).unwrap_or(u32::MAX);
    gap.min(passed).min(MAX_GAP_FRAMES)
}

/// One WAV file per sender (`<dir>/<peer id>.wav`), laid out by sequence number from the
/// first frame played: a lost frame is its concealment, and a gap in the numbers is silence
/// (no longer than the time that passed, and at most [`MAX_GAP_FRAMES`]).
pub struct WavPerSender {
    dir: PathBuf,
    files: HashMap<String, SenderFile>,
}

impl WavPerSender {
    /// Creates `dir` if needed; files appear as senders are heard.
    pub fn create(dir: &Path) -> Result<Self, AudioError> {
        std::fs::create_dir_all(dir).map_err(|source| AudioError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            files: HashMap::new(),
        })
    }

    fn file_for(&mut self, from: &str, seq: u32) -> Result<&mut SenderFile, AudioError> {
        if !self.files.contains_key(from) {
            let path = self.dir.join(format!("{from}.wav"));
            let writer = create(&path)?;
            let f = SenderFile {
                path,
                writer,
                next_seq: seq,
                last_at_ms: 0,
            };
            self.files.insert(from.to_string(), f);
        }
        self.files
            .get_mut(from)
            .ok_or_else(|| AudioError::Unsupported {
                path: self.dir.clone(),
                what: "sender file vanished".into(),
            })
    }
}

impl AudioSink for WavPerSender {
    fn play(&mut self, frame: Played<'_>) -> Result<(), AudioError> {
        let f = self.file_for(frame.from, frame.seq)?;
        let Some(gap) = frame.seq.checked_sub(f.next_seq) else {
            return Ok(()); // older than what is written: already covered
        };
        let elapsed = frame.at_ms.saturating_sub(f.last_at_ms);
        let silence = vec![0i16; frame.pcm.len()];
        for _ in 0..gap_frames(gap, elapsed, frame.pcm.len()) {
            write_samples(&mut f.writer, &f.path, &silence)?;
        }
        write_samples(&mut f.writer, &f.path, frame.pcm)?;
        f.next_seq = frame.seq.wrapping_add(1);
        f.last_at_ms = frame.at_ms;
        Ok(())
    }

    fn recording_path(&self, from: &str) -> Option<PathBuf> {
        Some(self.dir.join(format!("{from}.wav")))
    }

    fn finish(&mut self) -> Result<(), AudioError> {
        let mut first_error = None;
        for (_, f) in self.files.drain() {
            if let Err(e) = f.writer.finalize() {
                first_error.get_or_insert(write_error(&f.path, e));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// How far behind the newest played frame the mix keeps samples open for others (200 ms).
pub const MIX_WINDOW_MS: u64 = 200;
const SAMPLES_PER_MS: u64 = SAMPLE_RATE as u64 / 1000;

/// Everything heard, mixed into one WAV file on the playout timeline: sample `k` of the
/// file is what played `k / 48` ms after the sink was made. Each sender's frames follow each
/// other without gaps while it plays continuously.
pub struct WavMix {
    path: PathBuf,
    writer: Writer,
    start_ms: u64,
    /// Sample index of `window[0]` in the file.
    written: u64,
    window: Vec<i32>,
    /// Where each sender's next frame goes.
    next: HashMap<String, u64>,
}

impl WavMix {
    /// A mix whose time zero is `start_ms`.
    pub fn create(path: &Path, start_ms: u64) -> Result<Self, AudioError> {
        Ok(Self {
            path: path.to_path_buf(),
            writer: create(path)?,
            start_ms,
            written: 0,
            window: Vec::new(),
            next: HashMap::new(),
        })
    }

    fn flush_until(&mut self, upto: u64) -> Result<(), AudioError> {
        let n = usize::try_from(upto.saturating_sub(self.written))
            .unwrap_or(usize::MAX)
            .min(self.window.len());
        let out: Vec<i16> = self.window.drain(..n).map(clamp).collect();
        write_samples(&mut self.writer, &self.path, &out)?;
        self.written += n as u64;
        Ok(())
    }

    fn add(&mut self, at: u64, pcm: &[i16]) {
        let Ok(offset) = usize::try_from(at - self.written) else {
            return;
        };
        let end = offset + pcm.len();
        if self.window.len() < end {
            self.window.resize(end, 0);
        }
        for (slot, s) in self.window[offset..end].iter_mut().zip(pcm) {
            *slot += i32::from(*s);
        }
    }
}

fn clamp(v: i32) -> i16 {
    i16::try_from(v.clamp(i32::from(i16::MIN), i32::from(i16::MAX))).unwrap_or(0)
}

impl AudioSink for WavMix {
    fn play(&mut self, frame: Played<'_>) -> Result<(), AudioError> {
        let now = frame.at_ms.saturating_sub(self.start_ms) * SAMPLES_PER_MS;
        let next = self.next.get(frame.from).copied().unwrap_or(now);
        // Continuous playout stays contiguous; after a pause the sender starts at its time.
        let len = frame.pcm.len() as u64;
        let at = if now > next + len || now + 4 * len < next {
            now
        } else {
            next
        };
        let window = MIX_WINDOW_MS * SAMPLES_PER_MS;
        self.flush_until(at.saturating_sub(window))?;
        if at >= self.written {
            // Samples that are out of the window already are dropped.
            self.add(at, frame.pcm);
        }
        self.next
            .insert(frame.from.to_string(), at + frame.pcm.len() as u64);
        Ok(())
    }

    fn recording_path(&self, _from: &str) -> Option<PathBuf> {
        Some(self.path.clone())
    }

    fn finish(&mut self) -> Result<(), AudioError> {
        self.flush_until(u64::MAX)?;
        self.writer.flush().map_err(|e| write_error(&self.path, e))
    }
}

impl Drop for WavMix {
    fn drop(&mut self) {
        let _ = self.flush_until(u64::MAX);
    }
}

/// How long a lane of [`WavTimeline`] keeps samples open behind the newest frame (200 ms),
/// for a later frame that overlaps an earlier one.
pub const TIMELINE_WINDOW_MS: u64 = 200;

struct Lane {
    path: PathBuf,
    writer: Writer,
    /// Samples written to the file: `window[0]` is sample `written`.
    written: u64,
    window: Vec<i16>,
}

impl Lane {
    /// Writes everything before sample `upto`: the window's samples, then silence.
    fn flush_until(&mut self, upto: u64) -> Result<(), AudioError> {
        let n = usize::try_from(upto.saturating_sub(self.written))
            .unwrap_or(usize::MAX)
            .min(self.window.len());
        write_samples(&mut self.writer, &self.path, &self.window[..n])?;
        self.window.drain(..n);
        self.written += n as u64;
        if self.window.is_empty() && upto > self.written {
            // A pause: silence, written in bounded pieces.
            let silence = [0i16; 4_800];
            while self.written < upto {
                let k = usize::try_from(upto - self.written)
                    .unwrap_or(usize::MAX)
                    .min(silence.len());
                write_samples(&mut self.writer, &self.path, &silence[..k])?;
                self.written += k as u64;
            }
        }
        Ok(())
    }

    /// Lays `pcm` at sample `at`, over whatever an earlier frame left there.
    fn lay(&mut self, at: u64, pcm: &[i16]) {
        let end = at + pcm.len() as u64;
        if end <= self.written {
            return;
        }
        let skip = usize::try_from(self.written.saturating_sub(at)).unwrap_or(usize::MAX);
        let from = at.max(self.written);
        let Ok(offset) = usize::try_from(from - self.written) else {
            return;
        };
        let pcm = &pcm[skip.min(pcm.len())..];
        if self.window.len() < offset + pcm.len() {
            self.window.resize(offset + pcm.len(), 0);
        }
        self.window[offset..offset + pcm.len()].copy_from_slice(pcm);
    }
}

/// Each sender on the playout timeline, one WAV file per sender
/// (`<dir>/<peer id>.timeline.wav`): sample `k` of a file is what played `k / 48` ms after
/// `origin_ms`, the frame handed to the sink at `at_ms` starting at `(at_ms - origin_ms)`
/// ms. A frame that overlaps an earlier one replaces its tail (the buffer gave back
/// delay), a gap is silence (the buffer stretched, or the sender paused). This is what a
/// mouth-to-ear measurement on the signal reads. Streams to disk: each lane keeps a window
/// of [`TIMELINE_WINDOW_MS`].
pub struct WavTimeline {
    dir: PathBuf,
    origin_ms: u64,
    lanes: HashMap<String, Lane>,
}

impl WavTimeline {
    /// Creates `dir` if needed; the timeline's zero is `origin_ms`.
    pub fn create(dir: &Path, origin_ms: u64) -> Result<Self, AudioError> {
        std::fs::create_dir_all(dir).map_err(|source| AudioError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            origin_ms,
            lanes: HashMap::new(),
        })
    }

    fn path_of(&self, from: &str) -> PathBuf {
        self.dir.join(format!("{from}.timeline.wav"))
    }
}

impl AudioSink for WavTimeline {
    fn play(&mut self, frame: Played<'_>) -> Result<(), AudioError> {
        if !self.lanes.contains_key(frame.from) {
            let path = self.path_of(frame.from);
            let writer = create(&path)?;
            let lane = Lane {
                path,
                writer,
                written: 0,
                window: Vec::new(),
            };
            self.lanes.insert(frame.from.to_string(), lane);
        }
        let Some(lane) = self.lanes.get_mut(frame.from) else {
            return Ok(());
        };
        // Laid to the sample (48 per ms) by the µs instant it played.
        let at = frame.at_us.saturating_sub(self.origin_ms * 1_000) * SAMPLES_PER_MS / 1_000;
        lane.flush_until(at.saturating_sub(TIMELINE_WINDOW_MS * SAMPLES_PER_MS))?;
        lane.lay(at, frame.pcm);
        Ok(())
    }

    fn timeline(&self, from: &str) -> Option<(PathBuf, u64)> {
        Some((self.path_of(from), self.origin_ms))
    }

    fn finish(&mut self) -> Result<(), AudioError> {
        let mut first_error = None;
        for (_, mut lane) in self.lanes.drain() {
            let end = lane.written + lane.window.len() as u64;
            let result = lane.flush_until(end).and_then(|()| {
                lane.writer
                    .finalize()
                    .map_err(|e| write_error(&lane.path, e))
            });
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Several sinks fed the same audio (what is heard, and a recording of it).
#[derive(Default)]
pub struct Tee {
    sinks: Vec<Box<dyn AudioSink>>,
}

impl Tee {
    pub fn new(sinks: Vec<Box<dyn AudioSink>>) -> Self {
        Self { sinks }
    }
}

impl AudioSink for Tee {
    fn play(&mut self, frame: Played<'_>) -> Result<(), AudioError> {
        for s in &mut self.sinks {
            s.play(frame)?;
        }
        Ok(())
    }

    fn recording_path(&self, from: &str) -> Option<PathBuf> {
        self.sinks.iter().find_map(|s| s.recording_path(from))
    }

    fn timeline(&self, from: &str) -> Option<(PathBuf, u64)> {
        self.sinks.iter().find_map(|s| s.timeline(from))
    }

    fn finish(&mut self) -> Result<(), AudioError> {
        let mut result = Ok(());
        for s in &mut self.sinks {
            if let Err(e) = s.finish() {
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::FRAME_SAMPLES;

    fn frame(from: &str, seq: u32, at_ms: u64, pcm: &[i16]) -> Played<'static> {
        let pcm: &'static [i16] = Box::leak(pcm.to_vec().into_boxed_slice());
        let from: &'static str = Box::leak(from.to_string().into_boxed_str());
        Played {
            from,
            seq,
            at_ms,
            at_us: at_ms * 1_000,
            pcm,
        }
    }

    #[test]
    fn per_sender_files_stream_in_sequence_order_with_bounded_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = WavPerSender::create(dir.path()).unwrap();
        let ones = [1i16; FRAME_SAMPLES];
        // 20 ms frames here.
        sink.play(frame("a", 10, 0, &ones)).unwrap();
        sink.play(frame("a", 12, 40, &ones)).unwrap(); // 11 lost: silence
        sink.play(frame("a", 11, 41, &ones)).unwrap(); // late: ignored
                                                       // A jump: no more silence than the 100 ms that passed.
        sink.play(frame("a", 12 + 1_000_000, 140, &ones)).unwrap();
        // Another, a minute later: at most MAX_GAP_FRAMES.
        sink.play(frame("a", 12 + 2_000_000, 60_140, &ones))
            .unwrap();
        sink.finish().unwrap();
        let got = crate::media::audio::read_wav(&dir.path().join("a.wav")).unwrap();
        let frames = got.len() / FRAME_SAMPLES;
        assert_eq!(frames, 3 + 5 + 1 + MAX_GAP_FRAMES as usize + 1);
        assert_eq!(got[FRAME_SAMPLES], 0);
        assert_eq!(got[2 * FRAME_SAMPLES], 1);
    }

    #[test]
    fn the_timeline_puts_each_sample_where_it_played() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = WavTimeline::create(dir.path(), 10_000).unwrap();
        let frame_of = |v: i16| vec![v; 480];
        // 10 ms frames at 50, 60, 70 ms; then one handed 4 ms late (84) and the next on
        // time (90), overlapping its tail; then a pause of a second.
        for (k, at) in [50u64, 60, 70, 84, 90].into_iter().enumerate() {
            let v = i16::try_from(k + 1).unwrap();
            sink.play(frame("a", k as u32, 10_000 + at, &frame_of(v)))
                .unwrap();
        }
        sink.play(frame("a", 5, 10_000 + 1_100, &frame_of(9)))
            .unwrap();
        assert_eq!(
            sink.timeline("a"),
            Some((dir.path().join("a.timeline.wav"), 10_000))
        );
        sink.finish().unwrap();
        let got = crate::media::audio::read_wav(&dir.path().join("a.timeline.wav")).unwrap();
        let at = |ms: usize| got[ms * 48];
        assert_eq!(got.len(), (1_100 + 10) * 48);
        assert_eq!(at(49), 0);
        assert_eq!(at(50), 1);
        assert_eq!(at(69), 2);
        assert_eq!(at(70), 3);
        assert_eq!(at(80), 0, "the late frame left a gap");
        assert_eq!(at(84), 4);
        assert_eq!(at(90), 5, "the next frame replaced the late one's tail");
        assert_eq!(at(99), 5);
        assert_eq!(at(500), 0);
        assert_eq!(at(1_100), 9);
    }

    #[test]
    fn the_mix_lays_frames_on_the_playout_timeline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mix.wav");
        let mut sink = WavMix::create(&path, 1_000).unwrap();
        let a = [100i16; FRAME_SAMPLES];
        let b = [10i16; FRAME_SAMPLES];
        for k in 0..50u32 {
            let at = 1_000 + 100 + u64::from(k) * 20;
            sink.play(frame("a", k, at, &a)).unwrap();
            sink.play(frame("b", k, at, &b)).unwrap();
        }
        sink.finish().unwrap();
        drop(sink);
        let got = crate::media::audio::read_wav(&path).unwrap();
        // 100 ms of nothing, then both senders mixed for 50 frames.
        assert_eq!(got.len(), 100 * 48 + 50 * FRAME_SAMPLES);
        assert_eq!(got[100 * 48 - 1], 0);
        assert_eq!(got[100 * 48], 110);
        assert_eq!(got[got.len() - 1], 110);
    }
}
