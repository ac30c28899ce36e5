//! The contract of every decoder of untrusted bytes, as checks that the property tests
//! (`tests/decoders.rs`) and the coverage-guided fuzz targets (`fuzz/`) share.
//!
//! Each check feeds arbitrary bytes to one decoder and panics only when that decoder breaks
//! its contract: it must not panic, and what it accepts must encode back to the same bytes
//! (or, where an encoding is not canonical, decode again to the same value). The room and
//! reassembly checks drive a state machine with arbitrary frames and check its bounds.

use rand_core::SeedableRng;

use crate::crypto::Identity;
use crate::room::{Room, RoomConfig};
use crate::ticket::Ticket;
use crate::video::reassembly::{Limits, Reassembly};
use crate::video::wire::VideoMessage;
use crate::wire::{Control, MediaFrame, RoomFrame};

/// A room frame (`Handshake`, `Transport`, `Reject`).
pub fn room_frame(bytes: &[u8]) {
    if let Ok(f) = RoomFrame::decode(bytes) {
        assert_eq!(f.encode(), bytes, "a room frame re-encodes to other bytes");
    }
}

/// A control message (the plaintext of a transport frame).
pub fn control(bytes: &[u8]) {
    if let Ok(m) = Control::decode(bytes) {
        assert_eq!(
            Control::decode(&m.encode()),
            Ok(m),
            "a control message changed"
        );
    }
}

/// A media frame (header and ciphertext).
pub fn media_frame(bytes: &[u8]) {
    if let Ok(f) = MediaFrame::decode(bytes) {
        assert_eq!(f.encode(), bytes, "a media frame re-encodes to other bytes");
    }
}

/// A ticket, binary and as text (`confab1...`, any text at all).
pub fn ticket(bytes: &[u8]) {
    if let Ok(t) = Ticket::from_bytes(bytes) {
        assert_eq!(Ticket::from_bytes(&t.to_bytes()), Ok(t), "a ticket changed");
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = Ticket::parse(text);
    }
}

/// A message of the video stream (fragment or keyframe request).
pub fn video_message(bytes: &[u8]) {
    if let Ok(m) = VideoMessage::decode(bytes) {
        assert_eq!(
            m.encode(),
            bytes,
            "a video message re-encodes to other bytes"
        );
    }
}

/// The video reassembly, with small bounds, fed every fragment that decodes from `frames`
/// from two senders: it never holds more than its bounds.
pub fn video_reassembly(frames: &[Vec<u8>]) {
    let limits = Limits {
        per_sender_bytes: 4096,
        per_sender_frames: 4,
        total_bytes: 6000,
        timeout_ms: 50,
    };
    let mut r: Reassembly<u8> = Reassembly::new(limits);
    for (i, bytes) in frames.iter().enumerate() {
        let now = i as u64 * 5;
        if let Ok(VideoMessage::Fragment(f)) = VideoMessage::decode(bytes) {
            let _ = r.push(now, (i % 2) as u8, f);
        }
        assert!(
            r.held_bytes() <= limits.total_bytes,
            "reassembly over its byte bound"
        );
        assert!(
            r.held_frames() <= 2 * limits.per_sender_frames,
            "over its frame bound"
        );
        r.expire(now);
    }
}

/// Two rooms fed `frames` from a peer: one in the middle of a handshake with it, one with
/// it as an established member. Nothing may panic, and the rooms stay consistent enough
/// to drain their queues.
pub fn room_state_machine(frames: &[Vec<u8>]) {
    let (mut handshaking, mut established, peer) = rooms();
    for (i, f) in frames.iter().enumerate() {
        let now = i as u64 * 7;
        handshaking.handle_frame(now, &peer, f);
        established.handle_frame(now, &peer, f);
        let _ = established.open_media(now, &peer, f);
        handshaking.handle_timeout(now);
        established.handle_timeout(now);
    }
    while handshaking.poll_event().is_some() || handshaking.poll_transmit().is_some() {}
    while established.poll_event().is_some() || established.poll_transmit().is_some() {}
}

/// Splits fuzz input into frames: each is one length byte and that many bytes (the last
/// one may be cut short).
pub fn split_frames(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some((&len, rest)) = bytes.split_first() {
        let n = usize::from(len).min(rest.len());
        out.push(rest[..n].to_vec());
        bytes = &rest[n..];
    }
    out
}

/// A room with a handshake in progress, one with an established member, and that peer.
fn rooms() -> (Room, Room, Vec<u8>) {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    let (a, b) = (Identity::generate(&mut rng), Identity::generate(&mut rng));
    let (pa, pb) = (a.peer_id(), b.peer_id());
    let mut ra = Room::new(RoomConfig::default(), a.clone(), [1; 16], &[2; 32], [3; 32]);
    let mut rb = Room::new(RoomConfig::default(), b, [1; 16], &[2; 32], [4; 32]);
    // Both calls succeed: distinct peers, nothing in progress yet.
    let _ = ra.connect(0, pb.clone(), true);
    let _ = rb.connect(0, pa.clone(), false);
    loop {
        let mut moved = false;
        while let Some(t) = ra.poll_transmit() {
            rb.handle_frame(0, &pa, &t.frame);
            moved = true;
        }
        while let Some(t) = rb.poll_transmit() {
            ra.handle_frame(0, &pb, &t.frame);
            moved = true;
        }
        if !moved {
            break;
        }
    }
    assert!(ra.is_member(&pb), "the fixture's handshake failed");
    let mut fresh = Room::new(RoomConfig::default(), a, [1; 16], &[2; 32], [5; 32]);
    let _ = fresh.connect(0, pb.clone(), false);
    (fresh, ra, pb)
}
