//! Scoring a testbed call as `confab demo` scores one (the same code), plus the testbed's
//! gap analysis, and printing the result.

use super::node::{fmt_ms, score, verdict, CallReport, NodeUsage, FRAME_SAMPLES};
use confab_simulator::realnat::Prediction;

use super::report::{TestbedPair, TestbedReport};

/// Scores every (sender, receiver) pair as `confab demo` does (the same code), plus the gap
/// analysis, the measured set-up times and the model's prediction for the pair.
pub fn analyse(
    names: &[String],
    reports: &[Option<CallReport>],
    predicted: &dyn Fn(usize, usize) -> Prediction,
    killed_ms: Option<u64>,
) -> (Vec<TestbedPair>, Vec<NodeUsage>, bool) {
    let (scored, nodes, ok) = score(names, reports, |si, ri, heard| {
        let gap = heard.and_then(|h| longest_gap_ms(&h.sent, &h.heard, h.lag));
        let (resumed, setup) = match (&reports[ri], &reports[si]) {
            (Some(r), Some(s)) => (
                killed_ms.and_then(|k| resumed_ms(r, &s.peer_id, k, gap)),
                setup_times(r, s),
            ),
            _ => (None, (None, None)),
        };
        (gap, resumed, setup, predicted(si, ri))
    });
    let pairs = scored
        .into_iter()
        .map(|(pair, (gap, resumed, (setup, punched), p))| {
            // Punched before the admission: the member was admitted on the direct path.
            let punched = punched.or(if pair.path == "punched" { setup } else { None });
            TestbedPair {
                pair,
                predicted_path: p.path.to_string(),
                predicted_open_ms: p.open_ms,
                predicted_punched_ms: p.punched_ms,
                setup_ms: setup,
                punched_ms: punched,
                longest_gap_ms: gap,
                resumed_within_ms: resumed,
            }
        })
        .collect();
    (pairs, nodes, ok)
}

/// From the later of the two members' start (`Joined`) to `receiver` admitting `sender`, and
/// to its first move of `sender` to a punched connection, ms.
fn setup_times(receiver: &CallReport, sender: &CallReport) -> (Option<f64>, Option<f64>) {
    let base = receiver.started_ms.max(sender.started_ms);
    let at = |kind: &str, detail: Option<&str>| {
        receiver
            .roster
            .iter()
            .find(|e| {
                e.peer == sender.peer_id && e.kind == kind && detail.is_none_or(|d| e.detail == d)
            })
            .map(|e| e.at_ms.saturating_sub(base) as f64)
    };
    (at("admitted", None), at("path", Some("punched")))
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
    let homes: Vec<String> = r
        .testbed
        .homes
        .iter()
        .enumerate()
        .map(|(i, h)| format!("{} {h}", super::topology::label(i)))
        .collect();
    println!(
        "testbed: {}, hairpin {}, {} s call, relay {}",
        homes.join(" / "),
        if r.testbed.hairpin { "on" } else { "off" },
        r.testbed.seconds,
        r.testbed.relay_peer_id
    );
    println!(
        "{:<4} {:<4} {:<8} {:<9} {:>6} {:>8} {:>5} {:>9} {:>8} {:>8} {:>5} {:>6} {:>8} {:>8} {:>8}",
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
        "max gap",
        "setup",
        "punched"
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
        "{:<4} {:<4} {:<8} {:<9} {:>6} {:>8} {:>5} {:>9} {:>8} {:>8} {:>5.2} {:>6.3} {:>8} {:>8} {:>8}  {}",
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
        fmt_ms(tp.setup_ms),
        fmt_ms(tp.punched_ms),
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
