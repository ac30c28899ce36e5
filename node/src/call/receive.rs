//! One remote sender as we receive it: jitter buffer, decoder, level, and what is played.

use confab_protocol::crypto::OpenedFrame;
use confab_protocol::jitter::{JitterBuffer, JitterConfig, Playout};
use tracing::debug;

use super::events::StreamStats;
use super::policy::Path;
use super::report::ReceivedStream;
use crate::media::codec::{CodecError, Decoder};
use crate::media::sink::{AudioSink, Played};
use crate::media::FRAME_SAMPLES;

/// Level reported for digital silence.
pub const SILENCE_DBFS: f64 = -100.0;

/// A sender we hear.
pub struct Receiver {
    /// The sender's peer id, as text.
    from: String,
    pub name: String,
    pub recording: bool,
    jitter: JitterBuffer,
    decoder: Decoder,
    first_seq: Option<u32>,
    pub media_ended: bool,
    /// The newest inbound media stream seen from this sender.
    media_stream: u64,
    /// Sum of squares and count of samples played since the last level reading.
    energy: (f64, u64),
    /// Level of the last reading, dBFS.
    pub level_dbfs: f64,
}

impl Receiver {
    pub fn new(from: String, name: String, recording: bool) -> Result<Self, CodecError> {
        Ok(Self {
            from,
            name,
            recording,
            jitter: JitterBuffer::new(JitterConfig::default()),
            decoder: Decoder::new()?,
            first_seq: None,
            media_ended: false,
            media_stream: 0,
            energy: (0.0, 0),
            level_dbfs: SILENCE_DBFS,
        })
    }

    /// A frame arrived on media stream `stream_id`: a newer stream (after a reconnect or a
    /// move to a direct connection) means the sender goes on.
    pub fn on_stream(&mut self, stream_id: u64) {
        if stream_id > self.media_stream {
            self.media_stream = stream_id;
            if self.media_ended {
                self.media_ended = false;
                self.jitter.resume();
            }
        }
    }

    /// The sender's media stream `stream_id` ended.
    pub fn on_stream_end(&mut self, stream_id: u64) {
        if stream_id >= self.media_stream {
            self.media_ended = true;
            self.jitter.finish();
        }
    }

    pub fn push(&mut self, at_ms: u64, frame: OpenedFrame) {
        self.jitter.push(
            at_ms,
            frame.header.seq,
            frame.header.capture_ts_ms,
            frame.payload,
        );
    }

    pub fn poll_timeout(&self) -> Option<u64> {
        self.jitter.poll_timeout()
    }

    /// Whether everything the sender sent has been played.
    pub fn is_done(&self) -> bool {
        self.media_ended && self.jitter.is_drained()
    }

    /// Plays what is due at `now_ms` into `sink` (and `recorder`).
    pub fn play_out(&mut self, now_ms: u64, sinks: &mut [&mut dyn AudioSink]) {
        while let Some(p) = self.jitter.poll_playout(now_ms) {
            self.play_item(now_ms, p, sinks);
        }
    }

    /// The sender is gone: play everything left at once.
    pub fn drain(&mut self, now_ms: u64, sinks: &mut [&mut dyn AudioSink]) {
        self.jitter.finish();
        while let Some(p) = self.jitter.poll_playout(u64::MAX) {
            self.play_item(now_ms, p, sinks);
        }
    }

    fn play_item(&mut self, at_ms: u64, p: Playout, sinks: &mut [&mut dyn AudioSink]) {
        let (seq, pcm) = match p {
            Playout::Frame { seq, payload, .. } => (seq, self.decoder.decode(&payload)),
            Playout::Conceal { seq, fec } => (seq, self.decoder.conceal(fec.as_deref())),
        };
        let pcm = pcm.unwrap_or_else(|e| {
            debug!(error = %e, "decode failed; inserting silence");
            vec![0; FRAME_SAMPLES]
        });
        self.first_seq.get_or_insert(seq);
        let sq: f64 = pcm.iter().map(|s| f64::from(*s).powi(2)).sum();
        self.energy.0 += sq;
        self.energy.1 += pcm.len() as u64;
        let frame = Played {
            from: &self.from,
            seq,
            at_ms,
            pcm: &pcm,
        };
        for sink in sinks.iter_mut() {
            if let Err(e) = sink.play(frame) {
                debug!(error = %e, "a sink refused a frame");
            }
        }
    }

    /// Takes a level reading (dBFS) of what was played since the last one.
    pub fn update_level(&mut self) -> f64 {
        let (sum, n) = std::mem::take(&mut self.energy);
        self.level_dbfs = if n == 0 || sum <= 0.0 {
            SILENCE_DBFS
        } else {
            let rms = (sum / n as f64).sqrt() / 32768.0;
            (20.0 * rms.log10()).max(SILENCE_DBFS)
        };
        self.level_dbfs
    }

    pub fn from(&self) -> &str {
        &self.from
    }

    /// This sender's statistics now.
    pub fn stats(&self, path: Path) -> StreamStats {
        let snap = self.jitter.stats().snapshot();
        StreamStats {
            from: self.from.clone(),
            name: self.name.clone(),
            path,
            frames_received: snap.frames_received,
            frames_lost: snap.frames_lost,
            frames_late: snap.frames_late,
            frames_concealed: snap.frames_concealed,
            frames_played: snap.frames_played,
            jitter_ms: snap.jitter_ms,
            mouth_to_ear_p50_ms: snap.mouth_to_ear_p50_ms,
            mouth_to_ear_p95_ms: snap.mouth_to_ear_p95_ms,
            mos: snap.mos,
            level_dbfs: self.level_dbfs,
            recording: self.recording,
        }
    }

    /// The report of this sender.
    pub fn report(&self, path: Path, output: Option<String>) -> ReceivedStream {
        let snap = self.jitter.stats().snapshot();
        ReceivedStream {
            from: self.from.clone(),
            name: self.name.clone(),
            path: path.as_str().into(),
            frames_received: snap.frames_received,
            frames_lost: snap.frames_lost,
            frames_late: snap.frames_late,
            frames_concealed: snap.frames_concealed,
            frames_played: snap.frames_played,
            mouth_to_ear_p50_ms: snap.mouth_to_ear_p50_ms,
            mouth_to_ear_p95_ms: snap.mouth_to_ear_p95_ms,
            jitter_ms: snap.jitter_ms,
            mos: snap.mos,
            first_seq: self.first_seq,
            output,
            recording: self.recording,
        }
    }
}
