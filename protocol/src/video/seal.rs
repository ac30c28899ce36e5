//! Sealing a video frame: one ChaCha20-Poly1305 over the whole frame, then fragments.
//!
//! The key is derived from the sender's media key of the epoch (the very key its audio uses,
//! distributed and rotated the same way) with HKDF-SHA256 and the track kind as info: audio,
//! camera and screen each have a key of their own, so their sequence numbers (each track
//! counts its own) can never make two frames share a key and a nonce. The nonce is
//! `epoch ‖ 0 ‖ seq`; the associated data is the fragment header's fixed part
//! (version, kind, epoch, seq, count), so no fragment can be moved to another frame.

use std::collections::BTreeMap;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroize;

use super::reassembly::Sealed;
use super::wire::{Fragment, MAX_CHUNK, MAX_VIDEO_FRAME, VIDEO_VERSION};
use super::{FrameMeta, TrackKind, VideoFrame, META_LEN};
use crate::crypto::{MediaKey, ReplayWindow};
use crate::error::{Error, Result};
use crate::wire::TAG_LEN;

const VIDEO_KEY_INFO: &[u8] = b"confab-video-key-v1";
/// Epochs of one sender and track with a replay window kept.
const KEPT_EPOCHS: usize = 3;

/// The AEAD of one track under one media key.
pub fn video_cipher(media_key: &MediaKey, kind: TrackKind) -> ChaCha20Poly1305 {
    let hk = Hkdf::<Sha256>::new(None, &media_key.0);
    let mut info = VIDEO_KEY_INFO.to_vec();
    info.push(kind.to_byte());
    let mut key = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's limit: expand cannot fail.
    let _ = hk.expand(&info, &mut key);
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&key));
    key.zeroize();
    cipher
}

fn nonce(epoch: u32, seq: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&epoch.to_be_bytes());
    n[8..].copy_from_slice(&seq.to_be_bytes());
    n
}

fn aad(kind: TrackKind, epoch: u32, seq: u32, count: u16) -> [u8; 12] {
    let mut a = [0u8; 12];
    a[0] = VIDEO_VERSION;
    a[1] = kind.to_byte();
    a[2..6].copy_from_slice(&epoch.to_be_bytes());
    a[6..10].copy_from_slice(&seq.to_be_bytes());
    a[10..12].copy_from_slice(&count.to_be_bytes());
    a
}

fn encode_meta(m: &FrameMeta, out: &mut Vec<u8>) {
    out.push(u8::from(m.keyframe));
    out.push(m.layer);
    out.extend_from_slice(&m.base_seq.to_be_bytes());
    out.extend_from_slice(&m.width.to_be_bytes());
    out.extend_from_slice(&m.height.to_be_bytes());
    out.extend_from_slice(&m.capture_us.to_be_bytes());
}

fn decode_meta(b: &[u8]) -> Result<FrameMeta> {
    let mut r = crate::wire::Reader::new(b);
    let keyframe = match r.u8()? {
        0 => false,
        1 => true,
        _ => return Err(Error::Malformed("video frame flags")),
    };
    Ok(FrameMeta {
        keyframe,
        layer: r.u8()?,
        base_seq: r.u32()?,
        width: r.u16()?,
        height: r.u16()?,
        capture_us: r.u64()?,
    })
}

/// Seals one encoded frame of `kind` as frame `seq` of `epoch` and splits it into fragments.
pub fn seal(
    media_key: &MediaKey,
    kind: TrackKind,
    epoch: u32,
    seq: u32,
    meta: &FrameMeta,
    data: &[u8],
) -> Result<Vec<Fragment>> {
    if data.is_empty() || data.len() > MAX_VIDEO_FRAME {
        return Err(Error::TooLong {
            what: "video frame",
            len: data.len(),
            limit: MAX_VIDEO_FRAME,
        });
    }
    let sealed_len = META_LEN + data.len() + TAG_LEN;
    let count = u16::try_from(sealed_len.div_ceil(MAX_CHUNK))
        .map_err(|_| Error::Malformed("video frame size"))?;
    let mut plaintext = Vec::with_capacity(META_LEN + data.len());
    encode_meta(meta, &mut plaintext);
    plaintext.extend_from_slice(data);
    let ct = video_cipher(media_key, kind)
        .encrypt(
            Nonce::from_slice(&nonce(epoch, seq)),
            Payload {
                msg: &plaintext,
                aad: &aad(kind, epoch, seq, count),
            },
        )
        .map_err(|_| Error::Decrypt)?;
    Ok(ct
        .chunks(MAX_CHUNK)
        .enumerate()
        .map(|(i, chunk)| Fragment {
            kind,
            epoch,
            seq,
            index: i as u16,
            count,
            chunk: chunk.to_vec(),
        })
        .collect())
}

/// Opens a reassembled frame with the sender's media key of its epoch.
pub fn open(media_key: &MediaKey, s: &Sealed) -> Result<VideoFrame> {
    let pt = video_cipher(media_key, s.kind)
        .decrypt(
            Nonce::from_slice(&nonce(s.epoch, s.seq)),
            Payload {
                msg: &s.ciphertext,
                aad: &aad(s.kind, s.epoch, s.seq, s.count),
            },
        )
        .map_err(|_| Error::Decrypt)?;
    if pt.len() <= META_LEN {
        return Err(Error::Malformed("video frame plaintext"));
    }
    let meta = decode_meta(&pt[..META_LEN])?;
    Ok(VideoFrame {
        kind: s.kind,
        epoch: s.epoch,
        seq: s.seq,
        meta,
        data: pt[META_LEN..].to_vec(),
    })
}

/// Replay windows of one sender's tracks, per epoch (the newest few).
#[derive(Debug, Default)]
pub struct ReplayGuard {
    windows: BTreeMap<(TrackKind, u32), ReplayWindow>,
}

impl ReplayGuard {
    /// Whether frame `seq` of `kind` in `epoch` is new (not seen, not too old).
    pub fn check(&self, kind: TrackKind, epoch: u32, seq: u32) -> bool {
        self.windows
            .get(&(kind, epoch))
            .is_none_or(|w| w.check(seq))
    }

    /// Marks a frame seen; call only once it authenticated.
    pub fn accept(&mut self, kind: TrackKind, epoch: u32, seq: u32) {
        self.windows.entry((kind, epoch)).or_default().accept(seq);
        while self.windows.keys().filter(|(k, _)| *k == kind).count() > KEPT_EPOCHS {
            let oldest = self.windows.keys().find(|(k, _)| *k == kind).copied();
            if let Some(key) = oldest {
                self.windows.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::reassembly::{Limits, Reassembly};
    use proptest::prelude::*;

    fn meta(seq: u32) -> FrameMeta {
        FrameMeta {
            keyframe: seq == 0,
            layer: (seq % 2) as u8,
            base_seq: seq.saturating_sub(1),
            width: 640,
            height: 360,
            capture_us: 1_700_000_000_000_000 + u64::from(seq),
        }
    }

    fn join(frags: &[Fragment]) -> Sealed {
        let mut r: Reassembly<u8> = Reassembly::new(Limits::default());
        let mut out = None;
        for f in frags {
            if let Some(s) = r.push(0, 1, f.clone()) {
                out = Some(s);
            }
        }
        out.expect("complete")
    }

    proptest! {
        #[test]
        fn seal_then_open(len in 1usize..20_000, seq: u32, epoch: u32, screen: bool) {
            let key = MediaKey([3; 32]);
            let kind = if screen { TrackKind::Screen } else { TrackKind::Camera };
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let frags = seal(&key, kind, epoch, seq, &meta(seq), &data).expect("seal");
            let f = open(&key, &join(&frags)).expect("open");
            prop_assert_eq!(f.data, data);
            prop_assert_eq!(f.meta, meta(seq));
            prop_assert_eq!((f.kind, f.epoch, f.seq), (kind, epoch, seq));
        }
    }

    #[test]
    fn tracks_and_audio_do_not_share_keys() {
        let key = MediaKey([9; 32]);
        let frags = seal(&key, TrackKind::Camera, 1, 5, &meta(5), b"frame").expect("seal");
        let mut s = join(&frags);
        assert!(open(&key, &s).is_ok());
        s.kind = TrackKind::Screen;
        assert_eq!(open(&key, &s), Err(Error::Decrypt), "another track's key");
        s.kind = TrackKind::Camera;
        s.seq = 6;
        assert_eq!(open(&key, &s), Err(Error::Decrypt), "another nonce");
        s.seq = 5;
        assert_eq!(
            open(&MediaKey([8; 32]), &s),
            Err(Error::Decrypt),
            "another key"
        );
        // The camera key is not the audio key itself.
        let a = video_cipher(&key, TrackKind::Camera)
            .encrypt(Nonce::from_slice(&[0; 12]), &b"x"[..])
            .expect("enc");
        let b = ChaCha20Poly1305::new(Key::from_slice(&key.0))
            .encrypt(Nonce::from_slice(&[0; 12]), &b"x"[..])
            .expect("enc");
        assert_ne!(a, b);
    }

    #[test]
    fn tampered_and_oversized_frames_are_refused() {
        let key = MediaKey([1; 32]);
        let frags = seal(&key, TrackKind::Camera, 0, 0, &meta(0), &[5; 3000]).expect("seal");
        let mut s = join(&frags);
        s.ciphertext[100] ^= 1;
        assert_eq!(open(&key, &s), Err(Error::Decrypt));
        assert!(seal(&key, TrackKind::Camera, 0, 0, &meta(0), &[]).is_err());
        assert!(seal(
            &key,
            TrackKind::Camera,
            0,
            0,
            &meta(0),
            &vec![0; MAX_VIDEO_FRAME + 1]
        )
        .is_err());
        let big = seal(
            &key,
            TrackKind::Camera,
            0,
            0,
            &meta(0),
            &vec![0; MAX_VIDEO_FRAME],
        )
        .expect("largest");
        assert!(big.len() <= usize::from(crate::video::wire::MAX_FRAGMENTS));
    }

    #[test]
    fn replays_are_caught_per_track_and_epoch() {
        let mut g = ReplayGuard::default();
        assert!(g.check(TrackKind::Camera, 0, 1));
        g.accept(TrackKind::Camera, 0, 1);
        assert!(!g.check(TrackKind::Camera, 0, 1));
        assert!(g.check(TrackKind::Screen, 0, 1));
        assert!(g.check(TrackKind::Camera, 1, 1));
        for e in 1..10 {
            g.accept(TrackKind::Camera, e, 0);
        }
        assert!(g.windows.len() <= KEPT_EPOCHS + 1);
    }
}
