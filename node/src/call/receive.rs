//! One remote sender as we receive it: jitter buffer, decoder, level, and what is played.

use confab_protocol::crypto::OpenedFrame;
use confab_protocol::jitter::{JitterBuffer, JitterConfig, Playout};
use confab_protocol::wire::MediaFormat;
use tracing::debug;

use super::events::StreamStats;
use super::policy::Path;
use super::report::{ReceivedStream, TimelineFile};
use crate::media::codec::{CodecError, Decoder};
use crate::media::sink::{AudioSink, Played};

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
    /// The sender's frame duration and look-ahead, from its first frame; frames that
    /// declare another are dropped.
    format: Option<MediaFormat>,
    /// Frames dropped for declaring another format than the stream's.
    pub frames_misformatted: u64,
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
            format: None,
            frames_misformatted: 0,
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
        let format = frame.header.format;
        match self.format {
            Some(f) if f == format => {}
            Some(_) => {
                self.frames_misformatted = self.frames_misformatted.saturating_add(1);
                debug!(from = %self.from, ?format, "a frame of another format; dropped");
                return;
            }
            None => {
                // The stream's first frame sizes the jitter buffer's slots and the decoder.
                match Decoder::with_frame_ms(format.frame_ms) {
                    Ok(d) => self.decoder = d,
                    Err(e) => {
                        debug!(error = %e, "no decoder for this format; frame dropped");
                        self.frames_misformatted = self.frames_misformatted.saturating_add(1);
                        return;
                    }
                }
                self.jitter = JitterBuffer::new(JitterConfig::for_format(format));
                self.format = Some(format);
            }
        }
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

    /// Plays what is due at `now_ms` (`now_us`, the same instant in µs) into the sinks.
    pub fn play_out(&mut self, now_ms: u64, now_us: u64, sinks: &mut [&mut dyn AudioSink]) {
        while let Some(p) = self.jitter.poll_playout(now_ms) {
            self.play_item(now_us, p, sinks);
        }
    }

    /// The sender is gone: play everything left at once.
    pub fn drain(&mut self, now_ms: u64, sinks: &mut [&mut dyn AudioSink]) {
        self.jitter.finish();
        while let Some(p) = self.jitter.poll_playout(u64::MAX) {
            self.play_item(now_ms * 1_000, p, sinks);
        }
    }

    fn play_item(&mut self, at_us: u64, p: Playout, sinks: &mut [&mut dyn AudioSink]) {
        let (seq, pcm) = match p {
            Playout::Frame { seq, payload, .. } => (seq, self.decoder.decode(&payload)),
            Playout::Conceal { seq, fec } => (seq, self.decoder.conceal(fec.as_deref())),
        };
        let pcm = pcm.unwrap_or_else(|e| {
            debug!(error = %e, "decode failed; inserting silence");
            vec![0; self.decoder.frame_samples()]
        });
        self.first_seq.get_or_insert(seq);
        let sq: f64 = pcm.iter().map(|s| f64::from(*s).powi(2)).sum();
        self.energy.0 += sq;
        self.energy.1 += pcm.len() as u64;
        let frame = Played {
            from: &self.from,
            seq,
            at_ms: at_us / 1_000,
            at_us,
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
            transit_buffer_p50_ms: snap.transit_buffer_p50_ms,
            transit_buffer_p95_ms: snap.transit_buffer_p95_ms,
            mos: snap.mos,
            level_dbfs: self.level_dbfs,
            recording: self.recording,
        }
    }

    /// The report of this sender.
    pub fn report(
        &self,
        path: Path,
        output: Option<String>,
        timeline: Option<TimelineFile>,
    ) -> ReceivedStream {
        let snap = self.jitter.stats().snapshot();
        let format = self.format.unwrap_or_default();
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
            transit_buffer_p50_ms: snap.transit_buffer_p50_ms,
            transit_buffer_p95_ms: snap.transit_buffer_p95_ms,
            frame_ms: format.frame_ms,
            algorithmic_delay_ms: format.algorithmic_delay_ms(),
            jitter_ms: snap.jitter_ms,
            mos: snap.mos,
            first_seq: self.first_seq,
            output,
            timeline,
            recording: self.recording,
            device_playout_ms: None,
        }
    }
}
