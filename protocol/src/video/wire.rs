//! Messages on the `/confab/video/1` stream (each after the stream's 2-byte length prefix).
//!
//! ```text
//! fragment:          version=1 | type=1 | kind | epoch u32 | seq u32 | index u16 | count u16 | chunk
//! keyframe request:  version=1 | type=2 | kind
//! ```
//! All integers big-endian. `chunk` is a piece of the sealed frame (ciphertext and tag);
//! every fragment but the last carries exactly [`MAX_CHUNK`] bytes, the last 1 to
//! [`MAX_CHUNK`].

use super::TrackKind;
use crate::error::{Error, Result};
use crate::wire::{Reader, TAG_LEN};

/// Version byte of every video message.
pub const VIDEO_VERSION: u8 = 1;
const TYPE_FRAGMENT: u8 = 1;
const TYPE_KEYFRAME_REQUEST: u8 = 2;
/// Largest video message (after the length prefix).
pub const MAX_VIDEO_MESSAGE: usize = 1400;
/// Header of a fragment.
pub const FRAGMENT_HEADER_LEN: usize = 1 + 1 + 1 + 4 + 4 + 2 + 2;
/// Most sealed bytes in one fragment.
pub const MAX_CHUNK: usize = MAX_VIDEO_MESSAGE - FRAGMENT_HEADER_LEN;
/// Largest encoded frame accepted (the browser's data, before sealing).
pub const MAX_VIDEO_FRAME: usize = 256 * 1024;
/// Most fragments of one frame: a largest frame, sealed.
pub const MAX_FRAGMENTS: u16 =
    ((MAX_VIDEO_FRAME + super::META_LEN + TAG_LEN).div_ceil(MAX_CHUNK)) as u16;

/// One piece of a sealed frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    pub kind: TrackKind,
    pub epoch: u32,
    pub seq: u32,
    pub index: u16,
    pub count: u16,
    pub chunk: Vec<u8>,
}

/// One message on the video stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoMessage {
    Fragment(Fragment),
    /// The receiver cannot decode the sender's `kind` track until its next keyframe.
    KeyframeRequest {
        kind: TrackKind,
    },
}

impl VideoMessage {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            VideoMessage::Fragment(f) => {
                let mut out = Vec::with_capacity(FRAGMENT_HEADER_LEN + f.chunk.len());
                out.extend_from_slice(&[VIDEO_VERSION, TYPE_FRAGMENT, f.kind.to_byte()]);
                out.extend_from_slice(&f.epoch.to_be_bytes());
                out.extend_from_slice(&f.seq.to_be_bytes());
                out.extend_from_slice(&f.index.to_be_bytes());
                out.extend_from_slice(&f.count.to_be_bytes());
                out.extend_from_slice(&f.chunk);
                out
            }
            VideoMessage::KeyframeRequest { kind } => {
                vec![VIDEO_VERSION, TYPE_KEYFRAME_REQUEST, kind.to_byte()]
            }
        }
    }

    pub fn decode(buf: &[u8]) -> Result<Self> {
        if buf.len() > MAX_VIDEO_MESSAGE {
            return Err(Error::TooLong {
                what: "video message",
                len: buf.len(),
                limit: MAX_VIDEO_MESSAGE,
            });
        }
        let mut r = Reader::new(buf);
        let version = r.u8()?;
        if version != VIDEO_VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let ty = r.u8()?;
        let kind = TrackKind::from_byte(r.u8()?).ok_or(Error::Malformed("video track kind"))?;
        match ty {
            TYPE_FRAGMENT => decode_fragment(kind, r).map(VideoMessage::Fragment),
            TYPE_KEYFRAME_REQUEST => {
                r.finish()?;
                Ok(VideoMessage::KeyframeRequest { kind })
            }
            other => Err(Error::UnknownType(other)),
        }
    }
}

fn decode_fragment(kind: TrackKind, mut r: Reader<'_>) -> Result<Fragment> {
    let epoch = r.u32()?;
    let seq = r.u32()?;
    let index = r.u16()?;
    let count = r.u16()?;
    if count == 0 || count > MAX_FRAGMENTS || index >= count {
        return Err(Error::Malformed("video fragment index"));
    }
    let chunk = r.bytes(r.remaining())?;
    let last = index + 1 == count;
    let ok_len = if last {
        !chunk.is_empty()
    } else {
        chunk.len() == MAX_CHUNK
    };
    if !ok_len {
        return Err(Error::Malformed("video fragment length"));
    }
    Ok(Fragment {
        kind,
        epoch,
        seq,
        index,
        count,
        chunk: chunk.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind() -> impl Strategy<Value = TrackKind> {
        prop_oneof![Just(TrackKind::Camera), Just(TrackKind::Screen)]
    }

    proptest! {
        #[test]
        fn fragments_roundtrip(k in kind(), epoch: u32, seq: u32, count in 1u16..=MAX_FRAGMENTS, last_len in 1usize..=MAX_CHUNK, pick: u16) {
            let index = pick % count;
            let len = if index + 1 == count { last_len } else { MAX_CHUNK };
            let msg = VideoMessage::Fragment(Fragment { kind: k, epoch, seq, index, count, chunk: vec![7; len] });
            let bytes = msg.encode();
            prop_assert!(bytes.len() <= MAX_VIDEO_MESSAGE);
            prop_assert_eq!(VideoMessage::decode(&bytes), Ok(msg));
        }

        #[test]
        fn requests_roundtrip(k in kind()) {
            let msg = VideoMessage::KeyframeRequest { kind: k };
            prop_assert_eq!(VideoMessage::decode(&msg.encode()), Ok(msg));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
            let _ = VideoMessage::decode(&bytes);
        }

        #[test]
        fn truncated_fragments_are_errors(cut in 0usize..FRAGMENT_HEADER_LEN + 1) {
            let msg = VideoMessage::Fragment(Fragment { kind: TrackKind::Camera, epoch: 1, seq: 2, index: 0, count: 1, chunk: vec![1] });
            let bytes = msg.encode();
            prop_assert!(VideoMessage::decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn bad_fragments_are_refused() {
        let base = Fragment {
            kind: TrackKind::Screen,
            epoch: 0,
            seq: 0,
            index: 0,
            count: 2,
            chunk: vec![0; MAX_CHUNK],
        };
        let enc = |f: &Fragment| VideoMessage::Fragment(f.clone()).encode();
        assert!(VideoMessage::decode(&enc(&base)).is_ok());
        let short = Fragment {
            chunk: vec![0; 10],
            ..base.clone()
        };
        assert!(
            VideoMessage::decode(&enc(&short)).is_err(),
            "short middle chunk"
        );
        let past = Fragment {
            index: 2,
            ..base.clone()
        };
        assert!(
            VideoMessage::decode(&enc(&past)).is_err(),
            "index past count"
        );
        let none = Fragment {
            count: 0,
            index: 0,
            ..base.clone()
        };
        assert!(VideoMessage::decode(&enc(&none)).is_err(), "no fragments");
        let many = Fragment {
            count: MAX_FRAGMENTS + 1,
            ..base.clone()
        };
        assert!(VideoMessage::decode(&enc(&many)).is_err(), "too many");
        let empty_last = Fragment {
            index: 1,
            chunk: vec![],
            ..base
        };
        assert!(
            VideoMessage::decode(&enc(&empty_last)).is_err(),
            "empty last"
        );
        assert!(VideoMessage::decode(&[1, 2, 9]).is_err(), "unknown kind");
        assert!(
            VideoMessage::decode(&[1, 2, 1, 0]).is_err(),
            "trailing bytes"
        );
        assert!(VideoMessage::decode(&[2, 2, 1]).is_err(), "version");
        assert!(VideoMessage::decode(&[1, 7, 1]).is_err(), "type");
        assert!(VideoMessage::decode(&vec![1; MAX_VIDEO_MESSAGE + 1]).is_err());
    }
}
