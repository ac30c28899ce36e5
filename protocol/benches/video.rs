//! The node's cost per video frame: sealing and splitting a frame at the sender
//! (`seal` + encoding every fragment), and joining and opening it at a receiver
//! (decoding every fragment, reassembly, `open`, ordering), for a camera delta frame
//! (4 kB, about 1 Mbit/s at 30 fps), a camera keyframe (30 kB) and a screen frame (60 kB).
//! Run with `cargo bench -p confab-protocol --bench video`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmarks: a failure here is a broken benchmark

use confab_protocol::crypto::MediaKey;
use confab_protocol::video::order::{OrderConfig, Orderer};
use confab_protocol::video::reassembly::{Limits, Reassembly};
use confab_protocol::video::seal::{open, seal};
use confab_protocol::video::wire::VideoMessage;
use confab_protocol::video::{FrameMeta, TrackKind};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

const SIZES: [(&str, usize); 3] = [
    ("camera_4k", 4_000),
    ("keyframe_30k", 30_000),
    ("screen_60k", 60_000),
];

fn meta(seq: u32) -> FrameMeta {
    FrameMeta {
        keyframe: true,
        layer: 0,
        base_seq: seq,
        width: 640,
        height: 360,
        capture_us: 0,
    }
}

fn send(c: &mut Criterion) {
    let key = MediaKey([7; 32]);
    let mut group = c.benchmark_group("video_send");
    for (name, size) in SIZES {
        let data = vec![0x5au8; size];
        group.throughput(Throughput::Bytes(size as u64));
        let mut seq = 0u32;
        group.bench_function(name, |b| {
            b.iter(|| {
                seq = seq.wrapping_add(1);
                let frags = seal(&key, TrackKind::Camera, 0, seq, &meta(seq), &data).unwrap();
                let msgs: Vec<Vec<u8>> = frags
                    .into_iter()
                    .map(|f| VideoMessage::Fragment(f).encode())
                    .collect();
                black_box(msgs)
            })
        });
    }
    group.finish();
}

fn receive(c: &mut Criterion) {
    let key = MediaKey([7; 32]);
    let mut group = c.benchmark_group("video_receive");
    for (name, size) in SIZES {
        let data = vec![0x5au8; size];
        let frames: Vec<Vec<Vec<u8>>> = (0..1024u32)
            .map(|seq| {
                seal(&key, TrackKind::Camera, 0, seq, &meta(seq), &data)
                    .unwrap()
                    .into_iter()
                    .map(|f| VideoMessage::Fragment(f).encode())
                    .collect()
            })
            .collect();
        group.throughput(Throughput::Bytes(size as u64));
        let mut r: Reassembly<u8> = Reassembly::new(Limits::default());
        let mut order = Orderer::new(OrderConfig::default());
        let mut i = 0usize;
        let mut round = 0u32;
        group.bench_function(name, |b| {
            b.iter(|| {
                if i == frames.len() {
                    // Sequence numbers start again: a fresh receiver, as after a rejoin.
                    i = 0;
                    round += 1;
                    r = Reassembly::new(Limits::default());
                    order = Orderer::new(OrderConfig::default());
                }
                let now = u64::from(round) * 1_000_000 + i as u64;
                for m in &frames[i] {
                    let VideoMessage::Fragment(f) = VideoMessage::decode(m).unwrap() else {
                        unreachable!()
                    };
                    if let Some(s) = r.push(now, 1, f) {
                        order.push(now, open(&key, &s).unwrap());
                    }
                }
                i += 1;
                black_box(order.pop(now))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, send, receive);
criterion_main!(benches);
