//! Video: a track of its own, next to the audio of [`crate::wire::MediaFrame`].
//!
//! The browser encodes (VP8); the node only seals, splits, carries, joins and opens frames.
//! Each member sends its video on a stream protocol of its own (`/confab/video/1`), so audio
//! and video never share a queue or a stream.
//!
//! * [`wire`] — the messages on the video stream: a fragment of a sealed frame, and a
//!   keyframe request. Every decoder checks lengths before it allocates and never panics.
//! * [`seal`] — one AEAD per frame under a key derived from the sender's media key of the
//!   epoch and the track kind (so audio and video, camera and screen, never share a key or
//!   a nonce), then split into fragments.
//! * [`reassembly`] — bounded reassembly of fragments into sealed frames (per sender and in
//!   total); anything malformed or over a bound is a counted drop.
//! * [`order`] — per sender and track: frames handed on in order, only when decodable
//!   (after a keyframe, with their reference present), and when to ask for a keyframe.
//! * [`congestion`] — per receiver, at the sender: which temporal layers still go to a peer
//!   whose queue dropped frames, and the sender's keyframe rate limit.

pub mod congestion;
pub mod order;
pub mod reassembly;
pub mod seal;
pub mod wire;

/// Which track of a member a video frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TrackKind {
    Camera,
    Screen,
}

impl TrackKind {
    pub const ALL: [TrackKind; 2] = [TrackKind::Camera, TrackKind::Screen];

    pub fn to_byte(self) -> u8 {
        match self {
            TrackKind::Camera => 1,
            TrackKind::Screen => 2,
        }
    }

    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(TrackKind::Camera),
            2 => Some(TrackKind::Screen),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TrackKind::Camera => "camera",
            TrackKind::Screen => "screen",
        }
    }
}

/// What the sender says about one encoded frame; sealed with it (no observer sees it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameMeta {
    /// A keyframe: decodable on its own.
    pub keyframe: bool,
    /// Temporal layer (0: the base layer every other frame refers to).
    pub layer: u8,
    /// The frame this one refers to: the previous base-layer frame of the track (for a
    /// keyframe, its own sequence number).
    pub base_seq: u32,
    /// Encoded size in pixels.
    pub width: u16,
    pub height: u16,
    /// When the page captured it, µs since the Unix epoch on the sender's clock.
    pub capture_us: u64,
}

/// Length of [`FrameMeta`] inside the sealed plaintext.
pub const META_LEN: usize = 1 + 1 + 4 + 2 + 2 + 8;

/// A whole encoded frame, opened: its track, sequence number, what the sender said, data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoFrame {
    pub kind: TrackKind,
    pub epoch: u32,
    pub seq: u32,
    pub meta: FrameMeta,
    pub data: Vec<u8>,
}
