//! A sender's `seq` jumps (by accident or on purpose) cost constant work and memory on the
//! receiving side: the replay window and the jitter buffer.

#![allow(clippy::expect_used)] // test helpers outside #[test] functions

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use confab_protocol::crypto::{MediaKey, ReceiverKeys};
use confab_protocol::jitter::{JitterBuffer, JitterConfig, PushOutcome};
use confab_protocol::wire::{MediaFormat, MediaFrame, MediaHeader};
use proptest::prelude::*;

const KEY: [u8; 32] = [7; 32];

/// Seals a frame the way a sender does (see docs/protocol.md, "Media frames"), at any seq.
fn seal(epoch: u32, seq: u32, payload: &[u8]) -> MediaFrame {
    let header = MediaHeader {
        flags: 0,
        format: MediaFormat::default(),
        epoch,
        seq,
        capture_ts_ms: u64::from(seq) * 20,
    };
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&epoch.to_be_bytes());
    nonce[8..].copy_from_slice(&seq.to_be_bytes());
    let mut plaintext = (payload.len() as u16).to_be_bytes().to_vec();
    plaintext.extend_from_slice(payload);
    let aad = header.encode();
    let ciphertext = ChaCha20Poly1305::new(Key::from_slice(&KEY))
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &plaintext,
                aad: &aad,
            },
        )
        .expect("seal");
    MediaFrame { header, ciphertext }
}

#[test]
fn the_replay_window_takes_any_jump() {
    let mut rx = ReceiverKeys::new();
    rx.install(0, MediaKey(KEY));
    for seq in [0, 1, u32::MAX / 2, u32::MAX - 1, u32::MAX] {
        let f = seal(0, seq, b"x");
        assert_eq!(rx.open(&f).expect("open").payload, b"x", "seq {seq}");
        assert!(rx.open(&f).is_err(), "replay of {seq}");
    }
    // Behind the window after the jump: refused, not searched for.
    assert!(rx.open(&seal(0, 2, b"x")).is_err());
    assert!(rx.open(&seal(0, u32::MAX - 200, b"x")).is_err());
    // Inside the window, not seen yet: still accepted.
    assert!(rx.open(&seal(0, u32::MAX - 5, b"x")).is_ok());
}

fn jitter() -> JitterBuffer {
    JitterBuffer::new(JitterConfig::default())
}

/// Plays everything due at `now`; returns how many items came out.
fn drain(jb: &mut JitterBuffer, now: u64) -> usize {
    std::iter::from_fn(|| jb.poll_playout(now)).count()
}

/// Most items one drain can yield (see the jitter module's "Bounds").
fn drain_bound() -> usize {
    let c = JitterConfig::default();
    c.capacity + (c.max_delay_ms / c.frame_ms) as usize + 1
}

#[test]
fn a_huge_jump_resynchronises_in_constant_work() {
    let mut jb = jitter();
    for seq in 0..10u32 {
        assert_eq!(
            jb.push(
                1_000 + u64::from(seq) * 20,
                seq,
                u64::from(seq) * 20,
                vec![1]
            ),
            PushOutcome::Accepted
        );
    }
    // A frame almost 2^32 slots ahead while frames are buffered: dropped.
    let far = u32::MAX - 3;
    assert_eq!(
        jb.push(1_200, far, u64::from(far) * 20, vec![2]),
        PushOutcome::TooFarAhead
    );
    assert!(jb.buffered() <= JitterConfig::default().capacity);
    // Once the buffer is empty the next such frame resynchronises the timeline; nothing
    // is concealed for the slots jumped over.
    assert!(drain(&mut jb, 10_000) <= drain_bound());
    assert_eq!(
        jb.push(10_020, far, u64::from(far) * 20, vec![2]),
        PushOutcome::Accepted
    );
    let mut played = Vec::new();
    for step in 0..100 {
        let now = 10_020 + step * 20;
        let n = drain(&mut jb, now);
        assert!(n <= drain_bound());
        played.push(n);
    }
    assert!(played.iter().sum::<usize>() <= drain_bound());
    // The slots jumped over are counted as skipped in one step (less the few concealed
    // before the buffer went idle).
    let skipped = jb.stats().frames_skipped;
    assert!(
        skipped <= u64::from(far) - 10 && skipped + drain_bound() as u64 >= u64::from(far) - 10
    );
}

proptest! {
    /// Arbitrary seq and timestamp jumps, arbitrary arrival times: every drain yields a
    /// bounded number of items and the buffer never holds more than its capacity.
    #[test]
    fn jumps_never_make_work_proportional_to_the_jump(
        pushes in proptest::collection::vec((any::<u32>(), any::<u64>(), 0u64..100_000), 1..60)
    ) {
        let mut jb = jitter();
        let mut now = 0u64;
        for (seq, ts, dt) in pushes {
            now = now.saturating_add(dt);
            let _ = jb.push(now, seq, ts, vec![0]);
            prop_assert!(jb.buffered() <= JitterConfig::default().capacity);
            let n = drain(&mut jb, now);
            prop_assert!(n <= drain_bound(), "{} items in one drain", n);
            if let Some(t) = jb.poll_timeout() {
                let n = std::iter::from_fn(|| jb.poll_playout(t)).take(10_000).count();
                prop_assert!(n <= drain_bound());
            }
        }
    }
}
