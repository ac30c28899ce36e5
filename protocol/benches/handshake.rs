//! Cost of admitting one member: a full pairwise handshake (both sides), and of the
//! per-frame sender-key crypto.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmarks: a failure here is a broken benchmark

use confab_protocol::crypto::{Identity, ReceiverKeys, SenderKey};
use confab_protocol::room::{Room, RoomConfig};
use criterion::{criterion_group, criterion_main, Criterion};
use rand::SeedableRng;

fn pair(c: &mut Criterion) {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    let a = Identity::generate(&mut rng);
    let b = Identity::generate(&mut rng);
    let mut g = c.benchmark_group("room");
    g.sample_size(30);
    g.bench_function("pairwise_handshake_and_admission", |bench| {
        bench.iter(|| {
            let mut ra = Room::new(RoomConfig::default(), a.clone(), [1; 16], &[2; 32], [3; 32]);
            let mut rb = Room::new(RoomConfig::default(), b.clone(), [1; 16], &[2; 32], [4; 32]);
            ra.connect(0, b.peer_id(), true).expect("connect");
            rb.connect(0, a.peer_id(), false).expect("connect");
            loop {
                let mut moved = false;
                while let Some(t) = ra.poll_transmit() {
                    rb.handle_frame(0, &a.peer_id(), &t.frame);
                    moved = true;
                }
                while let Some(t) = rb.poll_transmit() {
                    ra.handle_frame(0, &b.peer_id(), &t.frame);
                    moved = true;
                }
                if !moved {
                    break;
                }
            }
            assert!(ra.is_member(&b.peer_id()) && rb.is_member(&a.peer_id()));
        })
    });
    let mut tx = SenderKey::new(&mut rng);
    let mut rx = ReceiverKeys::new();
    rx.install(tx.epoch(), tx.key().clone());
    let payload = [7u8; 80];
    g.bench_function("media_encrypt_and_open_80B", |bench| {
        bench.iter(|| {
            let f = tx.encrypt(0, &payload, None).expect("encrypt");
            rx.open(&f).expect("open")
        })
    });
    g.finish();
}

criterion_group!(benches, pair);
criterion_main!(benches);
