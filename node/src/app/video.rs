//! The page's video, over the same WebSocket as its audio.
//!
//! Page to node, one binary message per part of an encoded frame (a frame larger than the
//! WebSocket's message limit comes in several parts, in order):
//!
//! ```text
//! 0 kind=3 | 1 track | 2 flags (bit 0 keyframe) | 3 temporal layer | 4 part | 5 parts | 6-7 zero
//! 8 width u16 | 10 height u16 | 12 frame id u32 | 16 capture time f64 (ms, Unix epoch) | data
//! ```
//!
//! Node to page, one binary message per frame of a member:
//!
//! ```text
//! 0 kind=4 | 1 track | 2 flags | 3 layer | 4-7 zero | 8 width u16 | 10 height u16 | 12 seq u32
//! 16 sender's capture time f64 | 24 time the node handed it on f64 | 32 peer id length u8 | peer id | data
//! ```
//!
//! All little-endian. Keyframe requests go to the page as JSON text
//! (`{"type":"keyframe","track":"camera"}`). Both directions are bounded: frames toward the
//! call wait in a queue of [`FROM_PAGE_QUEUE`], frames toward the page in one of
//! [`TO_PAGE_VIDEO`]; what does not fit is dropped and counted.

use std::sync::{Arc, Mutex, MutexGuard};

use confab_protocol::video::wire::MAX_VIDEO_FRAME;
use confab_protocol::video::TrackKind;
use serde::Serialize;
use tokio::sync::mpsc;

pub use crate::call::video::FROM_PAGE_QUEUE;
use crate::call::video::{LocalFrame, RemoteFrame, VideoPorts, VideoSink, VideoStats};

/// Binary message kind: part of an encoded frame, page to node.
pub const KIND_VIDEO_FROM_PAGE: u8 = 3;
/// Binary message kind: a member's frame, node to page.
pub const KIND_VIDEO_TO_PAGE: u8 = 4;
/// Header of a page's video message.
pub const PAGE_HEADER_LEN: usize = 24;
/// Messages queued toward the page's video.
pub const TO_PAGE_VIDEO: usize = 64;

/// Why a video message from the page was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VideoMsgError {
    #[error("video message of {0} bytes is shorter than its {PAGE_HEADER_LEN}-byte header")]
    Short(usize),
    #[error("video message names track {0}; 1 (camera) and 2 (screen) exist")]
    Track(u8),
    #[error("video message part {part} of {parts} is out of order or out of range")]
    Part { part: u8, parts: u8 },
    #[error("video frame over {MAX_VIDEO_FRAME} bytes")]
    TooBig,
    #[error("video message carries no data")]
    Empty,
}

/// One part of a frame from the page.
#[derive(Debug, Clone, PartialEq)]
pub struct PagePart {
    pub kind: TrackKind,
    pub keyframe: bool,
    pub layer: u8,
    pub part: u8,
    pub parts: u8,
    pub width: u16,
    pub height: u16,
    pub frame_id: u32,
    pub capture_ms: f64,
    pub data: Vec<u8>,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Parses one video message of the page.
pub fn parse_part(buf: &[u8]) -> Result<PagePart, VideoMsgError> {
    if buf.len() < PAGE_HEADER_LEN {
        return Err(VideoMsgError::Short(buf.len()));
    }
    let kind = TrackKind::from_byte(buf[1]).ok_or(VideoMsgError::Track(buf[1]))?;
    let (part, parts) = (buf[4], buf[5]);
    if parts == 0 || part >= parts {
        return Err(VideoMsgError::Part { part, parts });
    }
    let data = &buf[PAGE_HEADER_LEN..];
    if data.is_empty() {
        return Err(VideoMsgError::Empty);
    }
    let mut id = [0u8; 4];
    id.copy_from_slice(&buf[12..16]);
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&buf[16..24]);
    Ok(PagePart {
        kind,
        keyframe: buf[2] & 1 != 0,
        layer: buf[3],
        part,
        parts,
        width: le16(buf, 8),
        height: le16(buf, 10),
        frame_id: u32::from_le_bytes(id),
        capture_ms: f64::from_le_bytes(ts),
        data: data.to_vec(),
    })
}

/// Joins the parts of one socket's frames (parts of a frame come in order, one frame at a
/// time per track).
#[derive(Debug, Default)]
pub struct PageAssembly {
    partial: [Option<PagePart>; 2],
}

impl PageAssembly {
    /// Takes one part; returns the frame it completed.
    pub fn push(&mut self, p: PagePart) -> Result<Option<LocalFrame>, VideoMsgError> {
        let slot = &mut self.partial[usize::from(p.kind == TrackKind::Screen)];
        let mut whole = match slot.take() {
            None if p.part == 0 => p,
            Some(mut w)
                if w.frame_id == p.frame_id && p.part == w.part + 1 && p.parts == w.parts =>
            {
                if w.data.len() + p.data.len() > MAX_VIDEO_FRAME {
                    return Err(VideoMsgError::TooBig);
                }
                w.data.extend_from_slice(&p.data);
                w.part = p.part;
                w
            }
            // A part of a frame whose start was lost, or a new frame before the old one
            // finished: the partial frame goes.
            _ if p.part == 0 => p,
            _ => {
                return Err(VideoMsgError::Part {
                    part: p.part,
                    parts: p.parts,
                })
            }
        };
        if whole.data.len() > MAX_VIDEO_FRAME {
            return Err(VideoMsgError::TooBig);
        }
        if whole.part + 1 < whole.parts {
            *slot = Some(whole);
            return Ok(None);
        }
        let capture_us = (whole.capture_ms.max(0.0) * 1000.0) as u64;
        Ok(Some(LocalFrame {
            kind: whole.kind,
            keyframe: whole.keyframe,
            layer: whole.layer.min(3),
            width: whole.width,
            height: whole.height,
            capture_us,
            data: std::mem::take(&mut whole.data),
        }))
    }
}

/// Encodes one member's frame for the page.
pub fn encode_for_page(f: &RemoteFrame, now_ms: f64) -> Vec<u8> {
    let peer = f.from.to_string();
    let peer = &peer.as_bytes()[..peer.len().min(255)];
    let mut out = Vec::with_capacity(33 + peer.len() + f.data.len());
    out.extend_from_slice(&[
        KIND_VIDEO_TO_PAGE,
        f.kind.to_byte(),
        u8::from(f.meta.keyframe),
        f.meta.layer,
        0,
        0,
        0,
        0,
    ]);
    out.extend_from_slice(&f.meta.width.to_le_bytes());
    out.extend_from_slice(&f.meta.height.to_le_bytes());
    out.extend_from_slice(&f.seq.to_le_bytes());
    out.extend_from_slice(&(f.meta.capture_us as f64 / 1000.0).to_le_bytes());
    out.extend_from_slice(&now_ms.to_le_bytes());
    out.push(peer.len() as u8);
    out.extend_from_slice(peer);
    out.extend_from_slice(&f.data);
    out
}

/// What goes to the page's video.
#[derive(Debug)]
pub enum VideoToPage {
    Frame(Vec<u8>),
    Keyframe(TrackKind),
}

/// Counters of the page's side of video.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PageVideoCounters {
    pub parts_in: u64,
    pub frames_in: u64,
    pub refused: u64,
    /// Frames the call's queue had no room for.
    pub dropped_to_call: u64,
    pub frames_out: u64,
    pub dropped_to_page: u64,
}

#[derive(Debug, Default)]
struct Links {
    to_call: Option<mpsc::Sender<LocalFrame>>,
    page: Option<mpsc::Sender<VideoToPage>>,
    generation: u64,
    counters: PageVideoCounters,
}

/// The page holding the call's video and the call it feeds; shared by the WebSocket, the
/// app and the call's sink.
#[derive(Debug, Default)]
pub struct VideoLink {
    links: Mutex<Links>,
    pub stats: Arc<Mutex<VideoStats>>,
}

impl VideoLink {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, Links> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A page takes over the call's video; returns its generation and queue.
    pub fn attach(&self) -> (u64, mpsc::Receiver<VideoToPage>) {
        let (tx, rx) = mpsc::channel(TO_PAGE_VIDEO);
        let mut l = self.lock();
        l.page = Some(tx);
        l.generation += 1;
        (l.generation, rx)
    }

    pub fn detach(&self, generation: u64) {
        let mut l = self.lock();
        if l.generation == generation {
            l.page = None;
        }
    }

    /// A new call: the ports to hand it (the old call's, if any, are cut off).
    pub fn ports(self: &Arc<Self>) -> VideoPorts {
        let (tx, rx) = mpsc::channel(FROM_PAGE_QUEUE);
        self.lock().to_call = Some(tx);
        if let Ok(mut s) = self.stats.lock() {
            *s = VideoStats::default();
        }
        VideoPorts {
            from_page: rx,
            sink: Box::new(BrowserVideoSink(self.clone())),
            stats: self.stats.clone(),
        }
    }

    /// The call ended.
    pub fn call_ended(&self) {
        self.lock().to_call = None;
    }

    /// One video message of a page (only the page holding the call's media sends them).
    pub fn from_page(&self, asm: &mut PageAssembly, buf: &[u8]) -> Result<(), VideoMsgError> {
        let part = parse_part(buf);
        let mut l = self.lock();
        l.counters.parts_in += 1;
        let frame = match part.and_then(|p| asm.push(p)) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(e) => {
                l.counters.refused += 1;
                return Err(e);
            }
        };
        l.counters.frames_in += 1;
        let sent = l.to_call.as_ref().map(|tx| tx.try_send(frame));
        if matches!(sent, Some(Err(_))) {
            l.counters.dropped_to_call += 1;
        }
        Ok(())
    }

    fn to_page(&self, msg: VideoToPage) {
        let mut l = self.lock();
        let Some(tx) = l.page.clone() else { return };
        let frame = matches!(msg, VideoToPage::Frame(_));
        match tx.try_send(msg) {
            Ok(()) if frame => l.counters.frames_out += 1,
            Ok(()) => {}
            Err(_) => l.counters.dropped_to_page += 1,
        }
    }

    pub fn counters(&self) -> PageVideoCounters {
        self.lock().counters
    }

    /// The call's video statistics and the page's counters, for the page.
    pub fn report(&self) -> serde_json::Value {
        let stats = self.stats.lock().map(|s| s.clone()).unwrap_or_default();
        serde_json::json!({"call": stats, "page": self.counters()})
    }
}

/// The call's video sink: the page holding the call's media.
pub struct BrowserVideoSink(pub Arc<VideoLink>);

impl VideoSink for BrowserVideoSink {
    fn frame(&mut self, f: RemoteFrame) {
        let now = crate::clock::now_ms() as f64;
        self.0.to_page(VideoToPage::Frame(encode_for_page(&f, now)));
    }

    fn keyframe_wanted(&mut self, kind: TrackKind) {
        self.0.to_page(VideoToPage::Keyframe(kind));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(kind: u8, id: u32, part: u8, parts: u8, data: &[u8]) -> Vec<u8> {
        let mut b = vec![KIND_VIDEO_FROM_PAGE, kind, 1, 0, part, parts, 0, 0];
        b.extend_from_slice(&640u16.to_le_bytes());
        b.extend_from_slice(&360u16.to_le_bytes());
        b.extend_from_slice(&id.to_le_bytes());
        b.extend_from_slice(&1234.5f64.to_le_bytes());
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn parts_join_into_frames_and_bad_ones_are_refused() {
        let mut a = PageAssembly::default();
        let p = |b: &[u8]| parse_part(b).expect("part");
        assert!(a.push(p(&part(1, 7, 0, 2, b"ab"))).expect("ok").is_none());
        let f = a
            .push(p(&part(1, 7, 1, 2, b"cd")))
            .expect("ok")
            .expect("frame");
        assert_eq!(f.data, b"abcd");
        assert_eq!(f.capture_us, 1_234_500);
        assert!(f.keyframe);
        assert_eq!((f.width, f.height), (640, 360));
        // A part whose start was lost.
        assert!(a.push(p(&part(2, 9, 1, 3, b"x"))).is_err());
        assert_eq!(parse_part(&[3; 10]), Err(VideoMsgError::Short(10)));
        assert_eq!(
            parse_part(&part(7, 1, 0, 1, b"x")),
            Err(VideoMsgError::Track(7))
        );
        assert!(parse_part(&part(1, 1, 1, 1, b"x")).is_err());
        assert!(parse_part(&part(1, 1, 0, 0, b"x")).is_err());
        assert_eq!(
            parse_part(&part(1, 1, 0, 1, b"")),
            Err(VideoMsgError::Empty)
        );
    }

    #[test]
    fn a_frame_cannot_grow_past_the_limit() {
        let mut a = PageAssembly::default();
        let chunk = vec![0u8; 60_000];
        let mut refused = false;
        for i in 0..10u8 {
            let r = a.push(parse_part(&part(1, 1, i, 10, &chunk)).expect("part"));
            if r.is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);
    }
}
