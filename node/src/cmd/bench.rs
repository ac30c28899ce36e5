//! `confab bench`: the media path's per-frame cost and a whole node's cost in a real call,
//! measured side by side in one run.

use std::time::Instant;

use confab_protocol::crypto::Identity;
use confab_protocol::room::{Room, RoomConfig};
use serde::Serialize;

use super::Failure;
use crate::media::audio;
use crate::media::codec::{Decoder, Encoder, EncoderConfig, FRAME_SAMPLES};

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub frames: usize,
    /// Opus encode + sender-key encryption of one 20 ms frame, microseconds.
    pub encode_encrypt_us: f64,
    /// Authentication/decryption + Opus decode of one frame, microseconds.
    pub decrypt_decode_us: f64,
    /// The per-frame work of one node in an N-person call (1 encode+encrypt, N-1
    /// decrypt+decode) as a share of one core, from the figures above.
    pub modelled_node_share: f64,
    pub participants: usize,
    /// Measured: mean CPU share of one core per node in a real N-person `confab demo`.
    pub measured_node_cpu_share: f64,
    pub max_node_cpu_share: f64,
    pub max_node_rss_mb: f64,
    pub demo_ok: bool,
}

fn fail(e: impl std::fmt::Display) -> Failure {
    Failure {
        code: 1,
        message: e.to_string(),
    }
}

/// Times `frames` frames of the media path through the real codec and the real room crypto.
pub fn per_frame(frames: usize) -> Result<(f64, f64), Failure> {
    let signal = audio::test_signal(0, 10.0);
    let mut enc = Encoder::new(&EncoderConfig::default()).map_err(fail)?;
    let mut dec = Decoder::new().map_err(fail)?;
    let mut seed_rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
    let (a, b) = (
        Identity::generate(&mut seed_rng),
        Identity::generate(&mut seed_rng),
    );
    let mut room_a = Room::new(RoomConfig::default(), a.clone(), [1; 16], &[2; 32], [3; 32]);
    let mut room_b = Room::new(RoomConfig::default(), b.clone(), [1; 16], &[2; 32], [4; 32]);
    // Establish the pair in memory so that B holds A's key.
    room_a.connect(0, b.peer_id(), true).map_err(fail)?;
    room_b.connect(0, a.peer_id(), false).map_err(fail)?;
    loop {
        let mut moved = false;
        while let Some(t) = room_a.poll_transmit() {
            room_b.handle_frame(0, &a.peer_id(), &t.frame);
            moved = true;
        }
        while let Some(t) = room_b.poll_transmit() {
            room_a.handle_frame(0, &b.peer_id(), &t.frame);
            moved = true;
        }
        if !moved {
            break;
        }
    }
    let chunks: Vec<[i16; FRAME_SAMPLES]> = signal
        .chunks_exact(FRAME_SAMPLES)
        .filter_map(|c| c.try_into().ok())
        .collect();
    let mut wire = Vec::with_capacity(frames);
    let t0 = Instant::now();
    for i in 0..frames {
        let packet = enc.encode(&chunks[i % chunks.len()]).map_err(fail)?;
        wire.push(
            room_a
                .encrypt_media(i as u64 * 20, &packet, None)
                .map_err(fail)?,
        );
    }
    let enc_us = t0.elapsed().as_secs_f64() * 1e6 / frames as f64;
    let t1 = Instant::now();
    let mut samples = 0usize;
    for w in &wire {
        let frame = room_b
            .open_media(0, &a.peer_id(), w)
            .map_err(fail)?
            .ok_or_else(|| fail("frame held"))?;
        samples += dec.decode(&frame.payload).map_err(fail)?.len();
    }
    let dec_us = t1.elapsed().as_secs_f64() * 1e6 / frames as f64;
    if samples != frames * FRAME_SAMPLES {
        return Err(fail("decoder returned the wrong number of samples"));
    }
    Ok((enc_us, dec_us))
}

pub fn run(participants: usize, seconds: f64, json: bool) -> Result<(), Failure> {
    let frames = 2_000;
    let (enc_us, dec_us) = per_frame(frames)?;
    let per_second = 50.0; // 20 ms frames
    let modelled = (enc_us + (participants as f64 - 1.0) * dec_us) * per_second / 1e6;
    let demo = super::demo::run_demo(super::demo::DemoOptions::new(participants, seconds))?;
    let n = demo.nodes.len().max(1) as f64;
    let report = BenchReport {
        frames,
        encode_encrypt_us: enc_us,
        decrypt_decode_us: dec_us,
        modelled_node_share: modelled,
        participants,
        measured_node_cpu_share: demo.nodes.iter().map(|u| u.cpu_share).sum::<f64>() / n,
        max_node_cpu_share: demo.nodes.iter().map(|u| u.cpu_share).fold(0.0, f64::max),
        max_node_rss_mb: demo
            .nodes
            .iter()
            .map(|u| u.max_rss_kb as f64 / 1024.0)
            .fold(0.0, f64::max),
        demo_ok: demo.ok,
    };
    if json {
        println!("{}", serde_json::to_string(&report).map_err(fail)?);
    } else {
        println!("media path, {frames} frames of 20 ms (real Opus, real room crypto):");
        println!(
            "  encode + encrypt   {:>8.1} µs/frame",
            report.encode_encrypt_us
        );
        println!(
            "  decrypt + decode   {:>8.1} µs/frame",
            report.decrypt_decode_us
        );
        println!(
            "  modelled node cost in a {participants}-person call: {:.2}% of one core",
            report.modelled_node_share * 100.0
        );
        println!(
            "real {participants}-person call on loopback ({seconds} s, {participants} processes):"
        );
        println!(
            "  node CPU mean {:.2}% / max {:.2}% of one core, peak RSS max {:.1} MB, all pairs ok: {}",
            report.measured_node_cpu_share * 100.0,
            report.max_node_cpu_share * 100.0,
            report.max_node_rss_mb,
            report.demo_ok
        );
    }
    Ok(())
}
