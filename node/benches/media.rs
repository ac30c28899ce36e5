//! Media costs, per frame: `cargo bench -p confab-node --bench media`.
//!
//! Every group reports the cost of one unit of work (one 20 ms frame, or one comparison), so
//! that figures from different groups can be read side by side. To add another per-frame
//! cost (encryption, say), write a `fn bench_xxx(c: &mut Criterion)` like the ones below and
//! list it in `criterion_group!`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use confab_node::media::audio::{aligned_correlation, test_signal, FrameSource};
use confab_node::media::codec::{Decoder, Encoder, EncoderConfig, FRAME_SAMPLES};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

/// Two seconds of the speech-like test signal, as 20 ms frames.
fn frames() -> Vec<Vec<i16>> {
    FrameSource::frames(&test_signal(0, 2.0), FRAME_SAMPLES)
}

/// Small samples and short runs keep the whole bench well under a minute.
fn quick<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group
}

fn bench_opus(c: &mut Criterion) {
    let frames = frames();
    let cfg = EncoderConfig::default();
    let mut group = quick(c, "per_frame");
    group.throughput(Throughput::Elements(1));

    let mut enc = Encoder::new(&cfg).expect("encoder");
    let mut i = 0;
    group.bench_function("opus_encode_20ms", |b| {
        b.iter(|| {
            i = (i + 1) % frames.len();
            enc.encode(black_box(&frames[i])).expect("encode")
        })
    });

    let mut enc = Encoder::new(&cfg).expect("encoder");
    let packets: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| enc.encode(f).expect("encode"))
        .collect();
    let mut dec = Decoder::new().expect("decoder");
    let mut i = 0;
    group.bench_function("opus_decode_20ms", |b| {
        b.iter(|| {
            i = (i + 1) % packets.len();
            dec.decode(black_box(&packets[i])).expect("decode")
        })
    });
    group.bench_function("opus_conceal_fec_20ms", |b| {
        b.iter(|| {
            i = (i + 1) % packets.len();
            dec.conceal(Some(black_box(&packets[i]))).expect("conceal")
        })
    });
    group.finish();
}

fn bench_correlation(c: &mut Criterion) {
    let sent = test_signal(5, 5.0);
    let mut heard = vec![0i16; 1_000];
    heard.extend_from_slice(&sent);
    let mut group = quick(c, "comparison");
    group.sample_size(10);
    group.bench_function("aligned_correlation_5s_maxlag4800", |b| {
        b.iter(|| aligned_correlation(black_box(&sent), black_box(&heard), 4_800))
    });
    group.finish();
}

criterion_group!(media, bench_opus, bench_correlation);
criterion_main!(media);
