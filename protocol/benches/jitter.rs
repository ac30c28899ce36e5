//! Cost of the jitter buffer per frame: one push plus the polls that play it.
//! Run with `cargo bench -p confab-protocol --bench jitter`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmarks: a failure here is a broken benchmark

use confab_protocol::jitter::{JitterBuffer, JitterConfig};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

const FRAMES: u64 = 1_000;

fn push_poll(c: &mut Criterion) {
    let mut group = c.benchmark_group("jitter");
    group.throughput(Throughput::Elements(FRAMES));
    group.bench_function("push_poll_1000_frames", |b| {
        b.iter(|| {
            let mut jb = JitterBuffer::new(JitterConfig::default());
            let payload = vec![0u8; 80];
            for i in 0..FRAMES {
                let capture = i * 20;
                // deterministic pseudo-jitter of 0..40 ms
                let jitter = (i * 7919) % 41;
                let now = capture + 30 + jitter;
                let seq = u32::try_from(i).unwrap_or(u32::MAX);
                black_box(jb.push(now, seq, capture, payload.clone()));
                while let Some(p) = jb.poll_playout(now) {
                    black_box(p);
                }
            }
            jb.stats().frames_played
        })
    });
    group.finish();
}

criterion_group!(benches, push_poll);
criterion_main!(benches);
