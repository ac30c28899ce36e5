//! Opus encoding and decoding for confab: 48 kHz, mono, 20 ms frames by default (10 ms on
//! request, 40 and 60 ms understood).
//!
//! The [`Encoder`] turns one frame of PCM (20 ms: [`FRAME_SAMPLES`] samples) into one Opus
//! packet and tells its look-ahead; the [`Decoder`] turns one packet back into exactly one
//! frame of samples, and conceals a missing frame either from the in-band FEC (LBRR) data carried by the packet that
//! follows it or, when that is not available, by libopus' packet loss concealment.
//!
//! Nothing here panics on bad input: packets come from the network (authenticated end to end,
//! but still untrusted as far as the codec is concerned), so every problem is a [`CodecError`].

/// Sample rate of all confab audio, in Hz.
pub const SAMPLE_RATE: u32 = 48_000;
/// Duration of one audio frame by default, in milliseconds.
pub const FRAME_MS: u32 = 20;
/// Samples in one 20 ms mono frame at 48 kHz.
pub const FRAME_SAMPLES: usize = (SAMPLE_RATE as usize / 1000) * FRAME_MS as usize;
/// Samples per millisecond at [`SAMPLE_RATE`].
pub const SAMPLES_PER_MS: usize = SAMPLE_RATE as usize / 1000;
/// Frame durations the encoder produces on request, ms (the wire also carries 40 and 60,
/// which the decoder understands).
pub const ENCODER_FRAME_MS: [u8; 2] = [10, 20];

/// Samples in one mono frame of `frame_ms` at 48 kHz.
pub fn frame_samples(frame_ms: u8) -> usize {
    SAMPLES_PER_MS * usize::from(frame_ms)
}
/// Largest packet the encoder may produce and the decoder accepts. A single 20 ms Opus frame
/// is at most 1275 bytes; the rest is headroom for the packet framing.
pub const MAX_PACKET_BYTES: usize = 1500;

use confab_protocol::wire::MediaFormat;

/// Lowest and highest bitrates libopus accepts, in bits per second.
const MIN_BITRATE_BPS: i32 = 500;
const MAX_BITRATE_BPS: i32 = 512_000;

/// Everything that can go wrong while encoding or decoding.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// libopus reported an error (`op` names the operation confab was performing).
    #[error("opus {op} failed: {source}")]
    Opus {
        op: &'static str,
        #[source]
        source: opus::Error,
    },
    /// The encoder configuration is out of range.
    #[error("invalid encoder configuration: {0}")]
    InvalidConfig(String),
    /// An empty packet was given to `decode` (a missing frame is concealed with `conceal`).
    #[error("empty opus packet")]
    EmptyPacket,
    /// The packet is larger than any packet confab sends.
    #[error("opus packet of {len} bytes is larger than the {max}-byte limit")]
    PacketTooLarge { len: usize, max: usize },
    /// The packet is valid Opus but does not hold exactly one frame of the stream's length
    /// (or the PCM given to the encoder is not one frame long).
    #[error("opus packet holds {samples} samples, expected {expected} (one frame)")]
    WrongDuration { samples: usize, expected: usize },
}

fn opus_err(op: &'static str) -> impl FnOnce(opus::Error) -> CodecError {
    move |source| CodecError::Opus { op, source }
}

/// Which of Opus' applications the encoder runs (`OPUS_APPLICATION_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// General audio: keeps the waveform closest to the input (the default).
    #[default]
    Audio,
    /// Speech: shapes the signal for intelligibility.
    Voip,
    /// Restricted low delay: CELT only, 2.5 ms of look-ahead instead of 6.5 ms.
    LowDelay,
}

impl Mode {
    fn application(self) -> opus::Application {
        match self {
            Self::Audio => opus::Application::Audio,
            Self::Voip => opus::Application::Voip,
            Self::LowDelay => opus::Application::LowDelay,
        }
    }
}

/// Encoder settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderConfig {
    /// Audio per frame, ms: one of [`ENCODER_FRAME_MS`] (default 20).
    pub frame_ms: u8,
    /// Opus application (default [`Mode::Audio`]).
    pub mode: Mode,
    /// Target bitrate in bits per second (default 32 000).
    pub bitrate_bps: i32,
    /// Constant bitrate: every packet has the same size. Implies no DTX, whatever `dtx` says.
    pub cbr: bool,
    /// In-band forward error correction (LBRR): each packet carries a low-bitrate copy of the
    /// previous frame, which [`Decoder::conceal`] uses when that frame is lost (default true).
    pub fec: bool,
    /// The packet loss the encoder should expect, in percent, 0..=100 (default 5). With FEC on
    /// this decides how many bits go to the redundant copy.
    pub expected_loss_pct: i32,
    /// Discontinuous transmission: tiny packets during silence (default false).
    pub dtx: bool,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            frame_ms: 20,
            mode: Mode::Audio,
            bitrate_bps: 32_000,
            cbr: false,
            fec: true,
            expected_loss_pct: 5,
            dtx: false,
        }
    }
}

impl EncoderConfig {
    fn validate(&self) -> Result<(), CodecError> {
        if !ENCODER_FRAME_MS.contains(&self.frame_ms) {
            return Err(CodecError::InvalidConfig(format!(
                "{} ms frames (supported: {ENCODER_FRAME_MS:?})",
                self.frame_ms
            )));
        }
        if !(MIN_BITRATE_BPS..=MAX_BITRATE_BPS).contains(&self.bitrate_bps) {
            return Err(CodecError::InvalidConfig(format!(
                "bitrate {} bps is outside {MIN_BITRATE_BPS}..={MAX_BITRATE_BPS}",
                self.bitrate_bps
            )));
        }
        if !(0..=100).contains(&self.expected_loss_pct) {
            return Err(CodecError::InvalidConfig(format!(
                "expected loss {}% is outside 0..=100",
                self.expected_loss_pct
            )));
        }
        Ok(())
    }
}

/// Opus encoder for one outgoing stream (48 kHz mono, one frame per packet).
pub struct Encoder {
    inner: opus::Encoder,
    cfg: EncoderConfig,
    lookahead_samples: usize,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").field("cfg", &self.cfg).finish()
    }
}

impl Encoder {
    /// Creates an encoder. [`Mode::Audio`] is the default: it keeps the waveform closer to
    /// the input than `Voip` (which shapes the signal for intelligibility), which is what the
    /// sent-versus-heard correlation checks measure.
    pub fn new(cfg: &EncoderConfig) -> Result<Self, CodecError> {
        cfg.validate()?;
        let mut inner =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, cfg.mode.application())
                .map_err(opus_err("encoder create"))?;
        inner
            .set_bitrate(opus::Bitrate::Bits(cfg.bitrate_bps))
            .map_err(opus_err("set bitrate"))?;
        inner.set_vbr(!cfg.cbr).map_err(opus_err("set vbr"))?;
        inner
            .set_inband_fec(cfg.fec)
            .map_err(opus_err("set inband fec"))?;
        inner
            .set_packet_loss_perc(cfg.expected_loss_pct)
            .map_err(opus_err("set packet loss"))?;
        inner
            .set_dtx(cfg.dtx && !cfg.cbr)
            .map_err(opus_err("set dtx"))?;
        // OPUS_GET_LOOKAHEAD: samples at the encoder's rate that a sample waits inside the
        // codec (its output is delayed by as much); asked after every setting is made.
        let lookahead = inner.get_lookahead().map_err(opus_err("get lookahead"))?;
        Ok(Self {
            inner,
            cfg: cfg.clone(),
            lookahead_samples: usize::try_from(lookahead).unwrap_or(0),
        })
    }

    /// The configuration this encoder was created with.
    pub fn config(&self) -> &EncoderConfig {
        &self.cfg
    }

    /// Samples in one frame of this encoder.
    pub fn frame_samples(&self) -> usize {
        frame_samples(self.cfg.frame_ms)
    }

    /// The codec's look-ahead in samples at 48 kHz, as libopus reports it.
    pub fn lookahead_samples(&self) -> usize {
        self.lookahead_samples
    }

    /// What this encoder's frames declare in their media header: frame duration and
    /// look-ahead (µs).
    pub fn format(&self) -> MediaFormat {
        let us = self.lookahead_samples * 1000 / SAMPLES_PER_MS;
        MediaFormat {
            frame_ms: self.cfg.frame_ms,
            lookahead_us: u16::try_from(us).unwrap_or(u16::MAX),
        }
    }

    /// Encodes one frame (exactly [`Encoder::frame_samples`] samples) into one Opus packet.
    pub fn encode(&mut self, pcm: &[i16]) -> Result<Vec<u8>, CodecError> {
        if pcm.len() != self.frame_samples() {
            return Err(CodecError::WrongDuration {
                samples: pcm.len(),
                expected: self.frame_samples(),
            });
        }
        self.inner
            .encode_vec(pcm, MAX_PACKET_BYTES)
            .map_err(opus_err("encode"))
    }
}

/// Opus decoder for one incoming stream (48 kHz mono, one frame of a fixed length per
/// packet).
pub struct Decoder {
    inner: opus::Decoder,
    frame_samples: usize,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

/// Checks a packet before libopus sees it: non-empty, within the size limit, and exactly
/// `expected` samples long (which also rejects packets whose table of contents is
/// malformed).
fn check_packet(packet: &[u8], expected: usize) -> Result<(), CodecError> {
    if packet.is_empty() {
        return Err(CodecError::EmptyPacket);
    }
    if packet.len() > MAX_PACKET_BYTES {
        return Err(CodecError::PacketTooLarge {
            len: packet.len(),
            max: MAX_PACKET_BYTES,
        });
    }
    let samples =
        opus::packet::get_nb_samples(packet, SAMPLE_RATE).map_err(opus_err("parse packet"))?;
    if samples != expected {
        return Err(CodecError::WrongDuration { samples, expected });
    }
    Ok(())
}

impl Decoder {
    /// Creates a decoder of 20 ms frames.
    pub fn new() -> Result<Self, CodecError> {
        Self::with_frame_ms(20)
    }

    /// Creates a decoder of `frame_ms` frames (10, 20, 40 or 60).
    pub fn with_frame_ms(frame_ms: u8) -> Result<Self, CodecError> {
        if !confab_protocol::wire::FRAME_DURATIONS_MS.contains(&frame_ms) {
            return Err(CodecError::InvalidConfig(format!("{frame_ms} ms frames")));
        }
        let inner = opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)
            .map_err(opus_err("decoder create"))?;
        Ok(Self {
            inner,
            frame_samples: frame_samples(frame_ms),
        })
    }

    /// Samples in one frame of this decoder.
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// Decodes one packet into one frame of samples. Empty, oversized, malformed packets
    /// and packets of another length are errors, and leave the decoder usable.
    pub fn decode(&mut self, packet: &[u8]) -> Result<Vec<i16>, CodecError> {
        check_packet(packet, self.frame_samples)?;
        self.run(packet, false, "decode")
    }

    /// Packet loss concealment for one missing frame. If `next` (the packet that follows
    /// the missing one) is available, the frame is rebuilt from its in-band FEC data; if that
    /// packet carries no FEC data, libopus falls back to concealment by itself. Without `next`,
    /// or if `next` is malformed, plain PLC extrapolates from the previous frames. Always
    /// returns one frame of samples on success. `next` must still be passed to
    /// [`Decoder::decode`] afterwards, for its own frame.
    pub fn conceal(&mut self, next: Option<&[u8]>) -> Result<Vec<i16>, CodecError> {
        match next {
            Some(packet) if check_packet(packet, self.frame_samples).is_ok() => {
                self.run(packet, true, "fec decode")
            }
            _ => self.run(&[], false, "plc"),
        }
    }

    fn run(&mut self, input: &[u8], fec: bool, op: &'static str) -> Result<Vec<i16>, CodecError> {
        let mut out = vec![0i16; self.frame_samples];
        let n = self
            .inner
            .decode(input, &mut out, fec)
            .map_err(opus_err(op))?;
        if n != self.frame_samples {
            return Err(CodecError::WrongDuration {
                samples: n,
                expected: self.frame_samples,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::audio::{aligned_correlation, test_signal, tone, FrameSource};
    use proptest::prelude::*;

    /// Opus' algorithmic delay at 48 kHz is 312 samples; leave plenty of room.
    const MAX_LAG: usize = 2_400;

    fn frames(signal: &[i16]) -> Vec<Vec<i16>> {
        FrameSource::frames(signal, FRAME_SAMPLES)
    }

    fn encode_all(cfg: &EncoderConfig, signal: &[i16]) -> Vec<Vec<u8>> {
        let mut enc = Encoder::new(cfg).expect("encoder");
        frames(signal)
            .iter()
            .map(|f| enc.encode(f).expect("encode"))
            .collect()
    }

    /// Decodes every packet, concealing those whose index satisfies `lost` (with FEC from the
    /// next packet if `fec`, else plain PLC).
    fn decode_all(packets: &[Vec<u8>], lost: impl Fn(usize) -> bool, fec: bool) -> Vec<i16> {
        let mut dec = Decoder::new().expect("decoder");
        let mut out = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            let pcm = if lost(i) {
                let next = if fec {
                    packets.get(i + 1).map(Vec::as_slice)
                } else {
                    None
                };
                dec.conceal(next).expect("conceal")
            } else {
                dec.decode(p).expect("decode")
            };
            assert_eq!(pcm.len(), FRAME_SAMPLES);
            out.extend_from_slice(&pcm);
        }
        out
    }

    #[test]
    fn frame_constants_agree() {
        assert_eq!(FRAME_SAMPLES, 960);
        assert_eq!(FRAME_MS, 20);
    }

    #[test]
    fn round_trip_test_signals_correlate() {
        let cfg = EncoderConfig::default();
        for i in 0..8 {
            let sent = test_signal(i, 2.0);
            let heard = decode_all(&encode_all(&cfg, &sent), |_| false, false);
            let (corr, lag) = aligned_correlation(&sent, &heard, MAX_LAG);
            assert!(corr >= 0.95, "signal {i}: correlation {corr} at lag {lag}");
            assert!((250..=400).contains(&lag), "signal {i}: lag {lag}");
        }
    }

    #[test]
    fn look_ahead_comes_from_the_encoder_and_ten_ms_frames_round_trip() {
        // libopus: 2.5 ms of CELT overlap, plus 4 ms of delay compensation except in the
        // restricted low-delay mode.
        for (mode, lookahead) in [(Mode::Audio, 312), (Mode::Voip, 312), (Mode::LowDelay, 120)] {
            for frame_ms in ENCODER_FRAME_MS {
                let cfg = EncoderConfig {
                    frame_ms,
                    mode,
                    ..EncoderConfig::default()
                };
                let mut enc = Encoder::new(&cfg).expect("encoder");
                assert_eq!(enc.lookahead_samples(), lookahead, "{mode:?}");
                assert_eq!(
                    enc.format().lookahead_us,
                    u16::try_from(lookahead * 1000 / 48).expect("fits")
                );
                assert_eq!(enc.format().frame_ms, frame_ms);
                let sent = test_signal(5, 2.0);
                let mut dec = Decoder::with_frame_ms(frame_ms).expect("decoder");
                let mut heard = Vec::new();
                for f in FrameSource::frames(&sent, enc.frame_samples()) {
                    let packet = enc.encode(&f).expect("encode");
                    heard.extend(dec.decode(&packet).expect("decode"));
                }
                let (corr, lag) = aligned_correlation(&sent, &heard, MAX_LAG);
                assert!(corr >= 0.9, "{mode:?} {frame_ms} ms: correlation {corr}");
                assert!(
                    lag.abs_diff(lookahead) <= 24,
                    "{mode:?} {frame_ms} ms: lag {lag}"
                );
                assert!(matches!(
                    enc.encode(&[0i16; FRAME_SAMPLES + 1]),
                    Err(CodecError::WrongDuration { .. })
                ));
            }
        }
        assert!(Encoder::new(&EncoderConfig {
            frame_ms: 15,
            ..EncoderConfig::default()
        })
        .is_err());
        assert!(Decoder::with_frame_ms(15).is_err());
        // A 20 ms packet is not a 10 ms stream's frame.
        let mut enc = Encoder::new(&EncoderConfig::default()).expect("encoder");
        let packet = enc.encode(&[0i16; FRAME_SAMPLES]).expect("encode");
        let mut dec = Decoder::with_frame_ms(10).expect("decoder");
        assert!(matches!(
            dec.decode(&packet),
            Err(CodecError::WrongDuration {
                samples: 960,
                expected: 480
            })
        ));
    }

    #[test]
    fn round_trip_tone_correlates() {
        let sent = tone(440.0, 2.0);
        let heard = decode_all(
            &encode_all(&EncoderConfig::default(), &sent),
            |_| false,
            false,
        );
        let (corr, _) = aligned_correlation(&sent, &heard, MAX_LAG);
        assert!(corr >= 0.95, "tone: correlation {corr}");
    }

    #[test]
    fn loss_with_fec_keeps_correlation_and_plc_decodes() {
        let cfg = EncoderConfig::default();
        for i in [0, 3, 7] {
            let sent = test_signal(i, 2.0);
            let packets = encode_all(&cfg, &sent);
            let lost = |k: usize| k % 10 == 5;
            let with_fec = decode_all(&packets, lost, true);
            let (corr, _) = aligned_correlation(&sent, &with_fec, MAX_LAG);
            assert!(corr >= 0.85, "signal {i} with FEC: correlation {corr}");
            let with_plc = decode_all(&packets, lost, false);
            // FEC actually helps: it beats plain concealment of the same losses.
            let (plc_corr, _) = aligned_correlation(&sent, &with_plc, MAX_LAG);
            assert!(corr > plc_corr, "signal {i}: FEC {corr} vs PLC {plc_corr}");
            assert_eq!(with_plc.len(), packets.len() * FRAME_SAMPLES);
        }
    }

    #[test]
    fn conceal_with_malformed_next_falls_back_to_plc() {
        let mut dec = Decoder::new().expect("decoder");
        let pcm = dec.conceal(Some(&[0xff, 0xff, 0xff])).expect("plc");
        assert_eq!(pcm.len(), FRAME_SAMPLES);
        let pcm = dec.conceal(None).expect("plc on a fresh decoder");
        assert_eq!(pcm.len(), FRAME_SAMPLES);
    }

    #[test]
    fn cbr_packets_have_constant_size() {
        let mut signal = vec![0i16; 48_000];
        signal.extend(tone(440.0, 1.0));
        signal.extend(vec![0i16; 24_000]);
        signal.extend(test_signal(2, 1.0));
        for bitrate_bps in [16_000, 32_000, 64_000] {
            let cfg = EncoderConfig {
                bitrate_bps,
                cbr: true,
                dtx: true, // ignored in CBR mode
                ..EncoderConfig::default()
            };
            let packets = encode_all(&cfg, &signal);
            let first = packets[0].len();
            assert!(
                packets.iter().all(|p| p.len() == first),
                "{bitrate_bps} bps: sizes {:?}",
                packets.iter().map(Vec::len).collect::<Vec<_>>()
            );
            // 20 ms at the target bitrate.
            assert_eq!(first, bitrate_bps as usize / 8 / 50, "{bitrate_bps} bps");
        }
    }

    #[test]
    fn vbr_packets_vary_in_size() {
        let mut signal = vec![0i16; 48_000];
        signal.extend(test_signal(1, 1.0));
        let packets = encode_all(&EncoderConfig::default(), &signal);
        let min = packets.iter().map(Vec::len).min().expect("packets");
        let max = packets.iter().map(Vec::len).max().expect("packets");
        assert!(min < max, "VBR sizes all {min}");
    }

    #[test]
    fn invalid_config_is_rejected() {
        for cfg in [
            EncoderConfig {
                bitrate_bps: 0,
                ..EncoderConfig::default()
            },
            EncoderConfig {
                expected_loss_pct: 101,
                ..EncoderConfig::default()
            },
        ] {
            assert!(matches!(
                Encoder::new(&cfg),
                Err(CodecError::InvalidConfig(_))
            ));
        }
    }

    #[test]
    fn bad_packets_are_errors() {
        let mut dec = Decoder::new().expect("decoder");
        assert!(matches!(dec.decode(&[]), Err(CodecError::EmptyPacket)));
        assert!(matches!(
            dec.decode(&vec![0u8; MAX_PACKET_BYTES + 1]),
            Err(CodecError::PacketTooLarge { .. })
        ));
        // TOC byte: config 0 (SILK NB 10 ms), code 0 → one 10 ms frame.
        assert!(matches!(
            dec.decode(&[0x00, 0x00]),
            Err(CodecError::WrongDuration { samples: 480, .. })
        ));
        // Code 3 packet without its frame count byte.
        assert!(dec.decode(&[0x0b]).is_err());
        // The decoder still works afterwards.
        let mut enc = Encoder::new(&EncoderConfig::default()).expect("encoder");
        let packet = enc.encode(&[0i16; FRAME_SAMPLES]).expect("encode");
        assert_eq!(dec.decode(&packet).expect("decode").len(), FRAME_SAMPLES);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]
        #[test]
        fn decode_arbitrary_bytes_never_panics(
            packets in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..1600), 1..4)
        ) {
            let mut dec = Decoder::new().expect("decoder");
            for p in &packets {
                if let Ok(pcm) = dec.decode(p) {
                    prop_assert_eq!(pcm.len(), FRAME_SAMPLES);
                }
                if let Ok(pcm) = dec.conceal(Some(p)) {
                    prop_assert_eq!(pcm.len(), FRAME_SAMPLES);
                }
            }
        }
    }
}
