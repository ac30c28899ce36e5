//! Scoring a testbed call as `confab demo` scores one (the same code), plus the testbed's
//! gap analysis, and printing the result.

use super::node::{fmt_ms, score, verdict, CallReport, NodeUsage, FRAME_SAMPLES};
use super::report::{TestbedPair, TestbedReport};

/// Scores every (sender, receiver) pair as `confab demo` does (the same code), plus the gap
/// analysis and the predicted path.
pub fn analyse(
    names: &[String],
    reports: &[Option<CallReport>],
    predicted: &str,
    killed_ms: Option<u64>,
) -> (Vec<TestbedPair>, Vec<NodeUsage>, bool) {
    let (scored, nodes, ok) = score(names, reports, |si, ri, heard| {
        let gap = heard.and_then(|h| longest_gap_ms(&h.sent, &h.heard, h.lag));
        let resumed = match (killed_ms, &reports[ri], &reports[si]) {
            (Some(k), Some(r), Some(s)) => resumed_ms(r, &s.peer_id, k, gap),
            _ => None,
        };
        (gap, resumed)
    });
    let pairs = scored
        .into_iter()
        .map(|(pair, (gap, resumed))| TestbedPair {
            pair,
            predicted_path: predicted.to_string(),
            longest_gap_ms: gap,
            resumed_within_ms: resumed,
        })
        .collect();
    (pairs, nodes, ok)
}

/// How long after the relay was stopped (`killed_ms`, Unix ms) `receiver` had `sender` back:
/// if the receiver saw the sender leave after that moment, the time of its next admission
/// (`None` if it never came back); otherwise the sender never left and the longest gap in
/// what was heard bounds the interruption.
fn resumed_ms(
    receiver: &CallReport,
    sender: &str,
    killed_ms: u64,
    gap: Option<f64>,
) -> Option<f64> {
    let mut events = receiver
        .roster
        .iter()
        .filter(|e| e.peer == sender && e.at_ms >= killed_ms);
    // A goodbye at the end of the call is not an interruption.
    if !events.any(|e| e.kind == "left" && e.detail != "Left") {
        return gap;
    }
    events
        .find(|e| e.kind == "admitted")
        .map(|e| (e.at_ms - killed_ms) as f64)
}

fn rms(x: &[i16]) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64).sqrt()
}

/// Longest stretch, in ms, between two 20 ms frames that were heard correctly, counting only
/// frames in which the sender was talking: a frame is *heard* when its level is at least a
/// quarter of what was sent. `heard[lag + i]` corresponds to `sent[i]`.
pub fn longest_gap_ms(sent: &[i16], heard: &[i16], lag: usize) -> Option<f64> {
    const TALKING_RMS: f64 = 300.0;
    let mut last_good: Option<usize> = None;
    let mut longest = 0usize;
    let mut k = 0usize;
    while lag + (k + 1) * FRAME_SAMPLES <= heard.len() && (k + 1) * FRAME_SAMPLES <= sent.len() {
        let s = rms(&sent[k * FRAME_SAMPLES..(k + 1) * FRAME_SAMPLES]);
        let h = rms(&heard[lag + k * FRAME_SAMPLES..lag + (k + 1) * FRAME_SAMPLES]);
        if s >= TALKING_RMS && h >= 0.25 * s {
            if let Some(prev) = last_good {
                longest = longest.max(k - prev - 1);
            }
            last_good = Some(k);
        }
        k += 1;
    }
    last_good.map(|_| (longest * FRAME_SAMPLES) as f64 / 48.0)
}

/// Prints the demo's table plus the testbed's lines.
pub fn print_table(r: &TestbedReport) {
    println!(
        "testbed: A {} / B {}, {} s call, relay {}",
        r.testbed.nat_a, r.testbed.nat_b, r.testbed.seconds, r.testbed.relay_peer_id
    );
    println!(
        "{:<4} {:<4} {:<8} {:<9} {:>6} {:>8} {:>5} {:>9} {:>8} {:>8} {:>5} {:>6} {:>8}",
        "from",
        "to",
        "path",
        "predicted",
        "sent",
        "received",
        "lost",
        "concealed",
        "m2e p50",
        "m2e p95",
        "MOS",
        "corr",
        "max gap"
    );
    for tp in &r.pairs {
        print_pair(tp);
    }
    for n in &r.nodes {
        println!(
            "{:<4} cpu {:>5.1}% of one core, peak RSS {:.1} MB",
            n.name,
            n.cpu_share * 100.0,
            n.max_rss_kb as f64 / 1024.0
        );
    }
    if let Some(rs) = &r.testbed.relay_restart {
        println!(
            "relay restarted at {:.1} s: down {} ms, same peer id: {}",
            rs.at_s, rs.down_ms, rs.same_peer_id
        );
    }
    if let Some(f) = &r.relay_capture {
        println!("{}", f.summary());
    }
    println!(
        "setup {} ms, total {} ms; {}",
        r.testbed.setup_ms,
        r.testbed.total_ms,
        if r.ok {
            "all pairs ok"
        } else {
            "SOME PAIRS FAILED"
        }
    );
}

fn print_pair(tp: &TestbedPair) {
    let p = &tp.pair;
    println!(
        "{:<4} {:<4} {:<8} {:<9} {:>6} {:>8} {:>5} {:>9} {:>8} {:>8} {:>5.2} {:>6.3} {:>8}  {}",
        p.from,
        p.to,
        p.path,
        tp.predicted_path,
        p.frames_sent,
        p.frames_received,
        p.frames_lost,
        p.frames_concealed,
        fmt_ms(p.mouth_to_ear_ms.p50),
        fmt_ms(p.mouth_to_ear_ms.p95),
        p.mos,
        p.correlation,
        fmt_ms(tp.longest_gap_ms),
        verdict(p)
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::node::test_signal;
    use super::*;

    #[test]
    fn gap_of_silenced_stretch_is_measured() {
        let sent = test_signal(0, 4.0);
        let mut heard = vec![0i16; 96];
        heard.extend_from_slice(&sent);
        let clean = longest_gap_ms(&sent, &heard, 96).unwrap_or(f64::MAX);
        assert!(clean < 700.0, "clean gap {clean}");
        // Silence 1.5 s in the middle.
        for v in &mut heard[96 + 48_000..96 + 48_000 + 72_000] {
            *v = 0;
        }
        let gap = longest_gap_ms(&sent, &heard, 96).unwrap_or(0.0);
        assert!((1500.0..2400.0).contains(&gap), "gap {gap}");
    }
}
