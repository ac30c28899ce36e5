//! Our own audio: the capture clock, the source, mute, the Opus encoder, and what we sent.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use libp2p::PeerId;
use tracing::warn;

use confab_protocol::wire::MediaFormat;

use super::error::CallError;
use super::report::{Sending, SentStream};
use crate::clock::Instant;
use crate::media::codec::{Encoder, EncoderConfig, Mode};
use crate::media::AudioSource;

/// Plaintext size every media frame is padded to in constant-bitrate mode.
pub const CBR_PAD: usize = 160;

/// One encoded frame, ready to encrypt.
pub struct Packet {
    /// When its first sample was captured, ms since the Unix epoch.
    pub capture_ts_ms: u64,
    pub opus: Vec<u8>,
}

/// How our audio is encoded: frame duration, Opus mode, constant bitrate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendConfig {
    /// 10 or 20 ms (default 20).
    pub frame_ms: u8,
    pub mode: Mode,
    pub cbr: bool,
}

impl Default for SendConfig {
    fn default() -> Self {
        Self {
            frame_ms: 20,
            mode: Mode::Audio,
            cbr: false,
        }
    }
}

/// The sending side of a call.
pub struct Capture {
    source: Box<dyn AudioSource>,
    encoder: Encoder,
    pub muted: bool,
    /// False once we stopped sending (leaving).
    pub sending: bool,
    /// Capture time of the stream's first sample, ms since the Unix epoch: the frame taken
    /// at the capture tick `k` (at `started + k` frames) holds the samples of the frame
    /// before the tick, as a microphone's would, so its first sample is `origin + k` frames.
    origin_ms: u64,
    /// The same origin in µs (`origin_ms` is it truncated, for the wire's ms stamps).
    origin_us: u64,
    frame: Duration,
    pcm: Vec<i16>,
    next_capture: Instant,
    pub frames_captured: u64,
    dump: Option<std::io::BufWriter<std::fs::File>>,
    pub pad_to: Option<usize>,
    sent: BTreeMap<PeerId, SentStream>,
}

impl Capture {
    /// Capture starts at `now` (wall clock `started_us`, µs): the first frame is taken then.
    pub fn new(
        source: Box<dyn AudioSource>,
        send: SendConfig,
        dump_opus: Option<&Path>,
        now: Instant,
        started_us: u64,
    ) -> Result<Self, CallError> {
        let encoder = Encoder::new(&EncoderConfig {
            frame_ms: send.frame_ms,
            mode: send.mode,
            cbr: send.cbr,
            dtx: false,
            ..EncoderConfig::default()
        })?;
        let cbr = send.cbr;
        let pcm = vec![0; encoder.frame_samples()];
        let dump = match dump_opus {
            Some(path) => Some(std::io::BufWriter::new(
                std::fs::File::create(path).map_err(|e| CallError::Output {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?,
            )),
            None => None,
        };
        Ok(Self {
            source,
            encoder,
            muted: false,
            sending: true,
            origin_ms: started_us.saturating_sub(1_000 * u64::from(send.frame_ms)) / 1_000,
            origin_us: started_us.saturating_sub(1_000 * u64::from(send.frame_ms)),
            frame: Duration::from_millis(u64::from(send.frame_ms)),
            pcm,
            next_capture: now,
            frames_captured: 0,
            dump,
            pad_to: cbr.then_some(CBR_PAD),
            sent: BTreeMap::new(),
        })
    }

    pub fn set_source(&mut self, source: Box<dyn AudioSource>) {
        self.source = source;
    }

    /// What our frames declare: frame duration and the encoder's look-ahead.
    pub fn format(&self) -> MediaFormat {
        self.encoder.format()
    }

    /// Our stream's timing, for the report.
    pub fn sending_report(&self) -> Sending {
        let f = self.format();
        Sending {
            frame_ms: f.frame_ms,
            lookahead_us: f.lookahead_us,
            capture_origin_ms: self.origin_us as f64 / 1_000.0,
            device_capture_ms: None,
        }
    }

    /// When the next frame is due, while sending.
    pub fn next_wake(&self) -> Option<Instant> {
        self.sending.then_some(self.next_capture)
    }

    /// Takes and encodes every frame due at `now` (silence while muted: the source keeps
    /// its pace, and the others hear the call fall silent rather than break off).
    pub fn due(&mut self, now: Instant) -> Result<Vec<Packet>, CallError> {
        let mut out = Vec::new();
        let frame_ms = u64::from(self.encoder.config().frame_ms);
        while self.sending && now >= self.next_capture {
            let capture_ts_ms = self.origin_ms + self.frames_captured * frame_ms;
            self.next_capture += self.frame;
            if !self.source.next_frame(&mut self.pcm) {
                break;
            }
            if self.muted {
                self.pcm.fill(0);
            }
            self.frames_captured += 1;
            let opus = self.encoder.encode(&self.pcm)?;
            self.dump(&opus);
            out.push(Packet {
                capture_ts_ms,
                opus,
            });
        }
        Ok(out)
    }

    fn dump(&mut self, packet: &[u8]) {
        let Some(w) = self.dump.as_mut() else {
            return;
        };
        let len = u16::try_from(packet.len()).unwrap_or(u16::MAX);
        if w.write_all(&len.to_be_bytes())
            .and_then(|()| w.write_all(packet))
            .is_err()
        {
            warn!("cannot write the Opus dump; stopping it");
            self.dump = None;
        }
    }

    /// Counts one frame queued toward `peer` (`dropped`: an older one had to go).
    pub fn count_sent(&mut self, peer: PeerId, dropped: bool) {
        let s = self.sent.entry(peer).or_default();
        s.frames_sent += 1;
        if dropped {
            s.frames_dropped += 1;
        }
    }

    /// Starts counting what goes to `peer`.
    pub fn add_receiver(&mut self, peer: PeerId) {
        self.sent.entry(peer).or_default();
    }

    pub fn sent(&self) -> BTreeMap<String, SentStream> {
        self.sent
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    /// Stops sending and finishes the Opus dump.
    pub fn stop(&mut self) {
        self.sending = false;
        if let Some(mut w) = self.dump.take() {
            if let Err(e) = w.flush() {
                warn!(error = %e, "cannot finish the Opus dump");
            }
        }
    }
}
