//! The browser as the call's microphone and speakers.
//!
//! The page sends its microphone as 48 kHz mono PCM over the WebSocket; [`MicRing`] holds it
//! until the call's capture clock pulls 20 ms frames ([`BrowserSource`]). What the call
//! plays goes back to the page, one binary message per sender and frame ([`BrowserSink`]),
//! and the page plays it (so that its echo canceller hears it). Both directions are bounded:
//! the ring keeps at most [`MIC_MAX_FRAMES`] frames, the queue toward the page
//! [`TO_PAGE_QUEUE`] messages; what does not fit is dropped and counted.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use crate::media::audio::AudioError;
use crate::media::codec::FRAME_SAMPLES;
use crate::media::sink::Played;
use crate::media::{AudioSink, AudioSource};

/// Binary message kind: microphone PCM, page to node.
pub const KIND_MIC: u8 = 1;
/// Binary message kind: one played frame of one sender, node to page.
pub const KIND_PLAYED: u8 = 2;
/// Header of every binary message: kind, slot, two bytes of padding, a u32 (sequence number),
/// an f64 (time in ms since the Unix epoch), all little-endian.
pub const HEADER_LEN: usize = 16;
/// Most samples in one microphone message (100 ms).
pub const MAX_MIC_SAMPLES: usize = 4_800;
/// Most microphone frames waiting for the capture clock (120 ms); beyond that the oldest go.
pub const MIC_MAX_FRAMES: usize = 6;
/// What the ring keeps after an overflow (40 ms).
const MIC_KEEP_FRAMES: usize = 2;
/// A backlog (audio still waiting after the call took its frame) of at least this much...
const BACKLOG: usize = 2 * FRAME_SAMPLES;
/// ...for this many frames in a row (5 s) is cut down to [`BACKLOG_KEEP`] at once: the page
/// sent a burst (or ran early) and the call would otherwise carry that delay for good.
const BACKLOG_PULLS: u32 = 250;
const BACKLOG_KEEP: usize = FRAME_SAMPLES;
/// Messages queued toward the page; beyond that, frames are dropped (and counted).
pub const TO_PAGE_QUEUE: usize = 512;

/// Why a binary message from the page was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PcmError {
    #[error("binary message of {0} bytes is shorter than its {HEADER_LEN}-byte header")]
    Short(usize),
    #[error("binary message kind {0} is not microphone audio ({KIND_MIC})")]
    Kind(u8),
    #[error("microphone message carries {0} samples; 1 to {MAX_MIC_SAMPLES} are allowed")]
    Samples(usize),
    #[error("microphone message has an odd number of PCM bytes")]
    Odd,
}

/// One microphone message: when the page captured its first sample, and the samples.
#[derive(Debug, Clone, PartialEq)]
pub struct MicChunk {
    pub captured_ms: f64,
    pub pcm: Vec<i16>,
}

/// Parses a microphone message from the page.
pub fn parse_mic(buf: &[u8]) -> Result<MicChunk, PcmError> {
    if buf.len() < HEADER_LEN {
        return Err(PcmError::Short(buf.len()));
    }
    if buf[0] != KIND_MIC {
        return Err(PcmError::Kind(buf[0]));
    }
    let body = &buf[HEADER_LEN..];
    if body.len() % 2 != 0 {
        return Err(PcmError::Odd);
    }
    let n = body.len() / 2;
    if n == 0 || n > MAX_MIC_SAMPLES {
        return Err(PcmError::Samples(n));
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&buf[8..16]);
    let pcm = body
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    Ok(MicChunk {
        captured_ms: f64::from_le_bytes(ts),
        pcm,
    })
}

/// Encodes one played frame for the page.
pub fn encode_played(slot: u8, seq: u32, at_ms: u64, pcm: &[i16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + pcm.len() * 2);
    out.extend_from_slice(&[KIND_PLAYED, slot, 0, 0]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(at_ms as f64).to_le_bytes());
    for s in pcm {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// Counters of the microphone path.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct MicCounters {
    /// Samples received from the page.
    pub samples_in: u64,
    /// Frames the call pulled while the ring had too little (silence sent instead).
    pub underruns: u64,
    /// Samples dropped because the ring was full (the page ran ahead of the call's clock).
    pub samples_dropped: u64,
    /// From the capture of a message's last sample (the page's stamp) to its arrival here,
    /// ms: the median of the last [`RECENT`] messages.
    pub arrival_ms: f64,
    /// Audio waiting in the ring when the call takes a frame, ms: the median of the last
    /// [`RECENT`] frames.
    pub wait_ms: f64,
}

/// How many recent values the medians are over.
pub const RECENT: usize = 256;

/// The last [`RECENT`] values of a figure, and their median.
#[derive(Debug, Default)]
struct Recent(VecDeque<f64>);

impl Recent {
    fn push(&mut self, v: f64) -> f64 {
        if self.0.len() == RECENT {
            self.0.pop_front();
        }
        self.0.push_back(v);
        let mut sorted: Vec<f64> = self.0.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    }
}

/// Microphone samples from the page, waiting for the call's capture clock.
#[derive(Debug, Default)]
pub struct MicRing {
    buf: VecDeque<i16>,
    /// Frames are taken only once a frame and a half is buffered, after start and after
    /// every underrun, so that the page's and the call's clocks do not meet exactly.
    primed: bool,
    /// Frames taken in a row that left at least [`BACKLOG`] waiting.
    backlog_pulls: u32,
    arrivals: Recent,
    waits: Recent,
    pub counters: MicCounters,
}

impl MicRing {
    pub fn push(&mut self, chunk: &MicChunk, now_ms: f64) {
        self.counters.samples_in += chunk.pcm.len() as u64;
        let captured_end = chunk.captured_ms + chunk.pcm.len() as f64 / 48.0;
        let lag = now_ms - captured_end;
        if (0.0..10_000.0).contains(&lag) {
            self.counters.arrival_ms = self.arrivals.push(lag);
        }
        self.buf.extend(chunk.pcm.iter().copied());
        if self.buf.len() > MIC_MAX_FRAMES * FRAME_SAMPLES {
            let drop = self.buf.len() - MIC_KEEP_FRAMES * FRAME_SAMPLES;
            self.buf.drain(..drop);
            self.counters.samples_dropped += drop as u64;
        }
    }

    /// The next 20 ms frame, or silence when the page has not sent enough.
    pub fn pull(&mut self) -> [i16; FRAME_SAMPLES] {
        let mut frame = [0i16; FRAME_SAMPLES];
        self.pull_into(&mut frame);
        frame
    }

    /// Fills `frame` (one frame of the call, 10 or 20 ms) with the next samples, or with
    /// silence when the page has not sent enough.
    pub fn pull_into(&mut self, frame: &mut [i16]) {
        frame.fill(0);
        let n = frame.len();
        if !self.primed && self.buf.len() >= n + n / 2 {
            self.primed = true;
        }
        if self.primed && self.buf.len() >= n {
            let waiting = self.buffered_ms();
            self.counters.wait_ms = self.waits.push(waiting);
            for (dst, src) in frame.iter_mut().zip(self.buf.drain(..n)) {
                *dst = src;
            }
            self.cut_backlog();
        } else {
            if self.primed || self.counters.samples_in > 0 {
                self.counters.underruns += 1;
            }
            self.primed = false;
        }
    }

    fn cut_backlog(&mut self) {
        if self.buf.len() < BACKLOG {
            self.backlog_pulls = 0;
            return;
        }
        self.backlog_pulls += 1;
        if self.backlog_pulls >= BACKLOG_PULLS {
            let drop = self.buf.len() - BACKLOG_KEEP;
            self.buf.drain(..drop);
            self.counters.samples_dropped += drop as u64;
            self.backlog_pulls = 0;
        }
    }

    /// Milliseconds of audio waiting.
    pub fn buffered_ms(&self) -> f64 {
        self.buf.len() as f64 / 48.0
    }

    /// Forgets what is buffered (a new page took over the microphone).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.primed = false;
    }
}

/// What goes to the page that holds the call's audio.
#[derive(Debug)]
pub enum ToPage {
    /// Slot `slot` now carries the audio of `peer`.
    Slot { slot: u8, peer: String },
    /// An encoded played frame ([`encode_played`]).
    Audio(Vec<u8>),
}

/// The page currently holding the call's audio, if any: the microphone ring it fills and
/// the queue it is sent played audio on. Shared by the WebSocket and the call.
#[derive(Debug, Default)]
pub struct MediaLink {
    mic: Mutex<MicRing>,
    page: Mutex<PageOut>,
}

#[derive(Debug, Default)]
struct PageOut {
    tx: Option<mpsc::Sender<ToPage>>,
    /// Changes every time a page takes over, so the sink announces its slots again.
    generation: u64,
    dropped: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MediaLink {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A page takes over the call's audio; the previous one (if any) stops getting it.
    /// Returns the page's generation (for [`MediaLink::detach`]) and its queue.
    pub fn attach(&self) -> (u64, mpsc::Receiver<ToPage>) {
        let (tx, rx) = mpsc::channel(TO_PAGE_QUEUE);
        let mut page = lock(&self.page);
        page.tx = Some(tx);
        page.generation += 1;
        lock(&self.mic).reset();
        (page.generation, rx)
    }

    /// The page whose queue is `rx`'s went away.
    pub fn detach(&self, generation: u64) {
        let mut page = lock(&self.page);
        if page.generation == generation {
            page.tx = None;
        }
    }

    pub fn push_mic(&self, chunk: &MicChunk) {
        lock(&self.mic).push(chunk, crate::clock::now_ms() as f64);
    }

    pub fn mic_counters(&self) -> MicCounters {
        lock(&self.mic).counters
    }

    pub fn mic_buffered_ms(&self) -> f64 {
        lock(&self.mic).buffered_ms()
    }

    /// Frames dropped because the page did not keep up.
    pub fn page_dropped(&self) -> u64 {
        lock(&self.page).dropped
    }

    fn send(&self, generation: &mut u64, slots: &mut Slots, msg: impl Fn(&mut Slots) -> ToPage) {
        let mut page = lock(&self.page);
        let Some(tx) = page.tx.clone() else { return };
        if page.generation != *generation {
            *generation = page.generation;
            slots.announced.clear();
        }
        let m = msg(slots);
        if let Some(announce) = slots.pending.take() {
            if tx.try_send(announce).is_err() {
                page.dropped += 1;
                return;
            }
        }
        if tx.try_send(m).is_err() {
            page.dropped += 1;
        }
    }
}

/// The call's microphone: the page's audio, pulled 20 ms at a time.
pub struct BrowserSource(pub Arc<MediaLink>);

impl AudioSource for BrowserSource {
    fn next_frame(&mut self, out: &mut [i16]) -> bool {
        lock(&self.0.mic).pull_into(out);
        true
    }
}

#[derive(Default)]
struct Slots {
    of: HashMap<String, u8>,
    announced: std::collections::HashSet<u8>,
    pending: Option<ToPage>,
}

impl Slots {
    /// The slot of `peer`, announcing it first when the page does not know it yet.
    fn slot(&mut self, peer: &str) -> u8 {
        let next = self.of.len() as u8;
        let slot = *self.of.entry(peer.to_owned()).or_insert(next);
        if self.announced.insert(slot) {
            self.pending = Some(ToPage::Slot {
                slot,
                peer: peer.to_owned(),
            });
        }
        slot
    }
}

/// The call's speakers: every played frame goes to the page, per sender.
pub struct BrowserSink {
    link: Arc<MediaLink>,
    slots: Slots,
    generation: u64,
}

impl BrowserSink {
    pub fn new(link: Arc<MediaLink>) -> Self {
        Self {
            link,
            slots: Slots::default(),
            generation: 0,
        }
    }
}

impl AudioSink for BrowserSink {
    fn play(&mut self, frame: Played<'_>) -> Result<(), AudioError> {
        if self.slots.of.len() >= usize::from(u8::MAX) && !self.slots.of.contains_key(frame.from) {
            return Ok(());
        }
        self.link
            .send(&mut self.generation, &mut self.slots, |slots| {
                let slot = slots.slot(frame.from);
                ToPage::Audio(encode_played(slot, frame.seq, frame.at_ms, frame.pcm))
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mic(pcm: Vec<i16>) -> Vec<u8> {
        let mut b = vec![KIND_MIC, 0, 0, 0, 0, 0, 0, 0];
        b.extend_from_slice(&1234.5f64.to_le_bytes());
        for s in pcm {
            b.extend_from_slice(&s.to_le_bytes());
        }
        b
    }

    #[test]
    fn microphone_messages_are_parsed_and_bad_ones_refused() {
        let ok = parse_mic(&mic(vec![1, -2, 3])).expect("parse");
        assert_eq!(ok.pcm, vec![1, -2, 3]);
        assert_eq!(ok.captured_ms, 1234.5);
        assert_eq!(parse_mic(&[1, 2]), Err(PcmError::Short(2)));
        let mut wrong = mic(vec![1]);
        wrong[0] = 9;
        assert_eq!(parse_mic(&wrong), Err(PcmError::Kind(9)));
        assert_eq!(parse_mic(&mic(vec![])), Err(PcmError::Samples(0)));
        assert_eq!(
            parse_mic(&mic(vec![0; MAX_MIC_SAMPLES + 1])),
            Err(PcmError::Samples(MAX_MIC_SAMPLES + 1))
        );
        let mut odd = mic(vec![1]);
        odd.push(0);
        assert_eq!(parse_mic(&odd), Err(PcmError::Odd));
    }

    fn chunk(n: usize, v: i16) -> MicChunk {
        MicChunk {
            captured_ms: 0.0,
            pcm: vec![v; n],
        }
    }

    #[test]
    fn the_ring_primes_underruns_and_stays_bounded() {
        let mut ring = MicRing::default();
        assert_eq!(
            ring.pull(),
            [0; FRAME_SAMPLES],
            "silence before anything came"
        );
        assert_eq!(
            ring.counters.underruns, 0,
            "no audio yet is not an underrun"
        );
        ring.push(&chunk(FRAME_SAMPLES, 7), 0.0);
        assert_eq!(ring.pull()[0], 0, "one frame is not enough to start");
        ring.push(&chunk(FRAME_SAMPLES, 7), 0.0);
        assert_eq!(ring.pull()[0], 7);
        assert_eq!(ring.pull()[0], 7);
        assert_eq!(ring.pull()[0], 0, "ran dry: an underrun");
        assert!(ring.counters.underruns >= 1);
        ring.push(&chunk(MAX_MIC_SAMPLES * 3, 5), 0.0);
        assert!(ring.buffered_ms() <= (MIC_MAX_FRAMES * 20) as f64);
        assert!(ring.counters.samples_dropped > 0);
        // A standing backlog is cut after a second.
        let mut ring = MicRing::default();
        ring.push(&chunk(FRAME_SAMPLES * 4, 1), 0.0);
        for _ in 0..BACKLOG_PULLS {
            ring.push(&chunk(FRAME_SAMPLES, 1), 0.0);
            ring.pull();
        }
        assert!(
            ring.buffered_ms() <= 20.0,
            "{} ms still waiting",
            ring.buffered_ms()
        );
    }

    #[test]
    fn the_sink_announces_slots_per_page_and_drops_when_nobody_listens() {
        let link = MediaLink::new();
        let mut sink = BrowserSink::new(link.clone());
        let pcm = [3i16; FRAME_SAMPLES];
        let played = |from| Played {
            from,
            seq: 1,
            at_ms: 5,
            at_us: 5_000,
            pcm: &pcm,
        };
        sink.play(played("a")).expect("no page: nothing happens");
        let (_, mut rx) = link.attach();
        sink.play(played("a")).expect("play");
        sink.play(played("b")).expect("play");
        let got: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert!(matches!(&got[0], ToPage::Slot { slot: 0, peer } if peer == "a"));
        assert!(matches!(&got[1], ToPage::Audio(b) if b[0] == KIND_PLAYED && b[1] == 0));
        assert!(matches!(&got[2], ToPage::Slot { slot: 1, peer } if peer == "b"));
        assert!(matches!(&got[3], ToPage::Audio(b) if b.len() == HEADER_LEN + 2 * FRAME_SAMPLES));
        // A new page learns the slots again.
        let (_, mut rx2) = link.attach();
        sink.play(played("b")).expect("play");
        assert!(matches!(rx2.try_recv(), Ok(ToPage::Slot { slot: 1, .. })));
        assert!(rx.try_recv().is_err(), "the old page gets nothing more");
    }
}
