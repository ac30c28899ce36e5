//! Our own audio: the capture clock, the source, mute, the Opus encoder, and what we sent.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use libp2p::PeerId;
use tracing::warn;

use super::error::CallError;
use super::report::SentStream;
use crate::clock::Instant;
use crate::media::codec::{Encoder, EncoderConfig, FRAME_MS};
use crate::media::{AudioSource, FRAME_SAMPLES};

/// Plaintext size every media frame is padded to in constant-bitrate mode.
pub const CBR_PAD: usize = 160;
const FRAME: Duration = Duration::from_millis(FRAME_MS as u64);

/// One encoded frame, ready to encrypt.
pub struct Packet {
    /// When its first sample was captured, ms since the Unix epoch.
    pub capture_ts_ms: u64,
    pub opus: Vec<u8>,
}

/// The sending side of a call.
pub struct Capture {
    source: Box<dyn AudioSource>,
    encoder: Encoder,
    pub muted: bool,
    /// False once we stopped sending (leaving).
    pub sending: bool,
    started_ms: u64,
    next_capture: Instant,
    pub frames_captured: u64,
    dump: Option<std::io::BufWriter<std::fs::File>>,
    pub pad_to: Option<usize>,
    sent: BTreeMap<PeerId, SentStream>,
}

impl Capture {
    /// Capture starts at `now` (wall clock `started_ms`).
    pub fn new(
        source: Box<dyn AudioSource>,
        cbr: bool,
        dump_opus: Option<&Path>,
        now: Instant,
        started_ms: u64,
    ) -> Result<Self, CallError> {
        let encoder = Encoder::new(&EncoderConfig {
            cbr,
            dtx: false,
            ..EncoderConfig::default()
        })?;
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
            started_ms,
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

    /// When the next frame is due, while sending.
    pub fn next_wake(&self) -> Option<Instant> {
        self.sending.then_some(self.next_capture)
    }

    /// Takes and encodes every frame due at `now` (silence while muted: the source keeps
    /// its pace, and the others hear the call fall silent rather than break off).
    pub fn due(&mut self, now: Instant) -> Result<Vec<Packet>, CallError> {
        let mut out = Vec::new();
        while self.sending && now >= self.next_capture {
            let capture_ts_ms = self.started_ms + self.frames_captured * u64::from(FRAME_MS);
            self.next_capture += FRAME;
            let Some(pcm) = self.source.next_frame() else {
                break;
            };
            let pcm = if self.muted { [0; FRAME_SAMPLES] } else { pcm };
            self.frames_captured += 1;
            let opus = self.encoder.encode(&pcm)?;
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
