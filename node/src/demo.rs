//! `confab demo`: N real `confab` processes on loopback hold one call; every pair is measured.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::audio;
use crate::call::CallReport;
use crate::cli::{free_port, Failure};
use crate::codec::FRAME_SAMPLES;

/// Largest delay searched when aligning what was sent with what was heard (100 ms).
pub const MAX_LAG: usize = 4_800;
/// Length of the looped test signal each participant sends (matches `call --signal`).
pub const SIGNAL_SECS: f64 = 10.0;

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Pair {
    pub from: String,
    pub to: String,
    pub path: String,
    pub frames_sent: u64,
    pub frames_received: u64,
    pub frames_lost: u64,
    pub frames_concealed: u64,
    pub mouth_to_ear_ms: Latency,
    pub mos: f64,
    pub correlation: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub participants: usize,
    pub pairs: Vec<Pair>,
    pub ok: bool,
    /// CPU of each node as a share of one core over its call, and its peak RSS.
    pub nodes: Vec<NodeUsage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeUsage {
    pub name: String,
    pub cpu_share: f64,
    pub max_rss_kb: u64,
}

/// Thresholds a pair must meet for the demo to count as working.
pub const MIN_RECEIVED_SHARE: f64 = 0.95;
pub const MIN_CORRELATION: f64 = 0.9;
pub const MAX_P50_MS: f64 = 40.0;

/// A latency for the tables: `12 ms`, or `-` when there is none.
pub fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0} ms"))
}

pub fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let head: String = s.chars().take(n.saturating_sub(1)).collect();
        format!("{head}…")
    }
}

struct Node {
    name: String,
    dir: PathBuf,
    out: PathBuf,
    child: Option<Child>,
}

fn confab(exe: &Path, dir: &Path) -> Command {
    let mut c = Command::new(exe);
    c.arg("--data-dir").arg(dir);
    c.env_remove("CONFAB_DATA_DIR");
    c
}

fn checked(mut c: Command, what: &str) -> Result<String, Failure> {
    let out = c.stderr(Stdio::inherit()).output().map_err(|e| Failure {
        code: 1,
        message: format!("cannot run {what}: {e}"),
    })?;
    if !out.status.success() {
        return Err(Failure {
            code: 1,
            message: format!("{what} failed with {}", out.status),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs the demo. Exit code 0 only if every pair worked.
pub fn run(participants: usize, seconds: f64, json: bool, keep: bool) -> Result<(), Failure> {
    if !(2..=16).contains(&participants) {
        return Err(Failure {
            code: 2,
            message: "--participants must be between 2 and 16".into(),
        });
    }
    if !(seconds.is_finite() && (1.0..=600.0).contains(&seconds)) {
        return Err(Failure {
            code: 2,
            message: "--seconds must be between 1 and 600".into(),
        });
    }
    let report = run_demo(participants, seconds, keep)?;
    if json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| Failure {
                code: 1,
                message: e.to_string()
            })?
        );
    } else {
        print_table(&report);
    }
    if report.ok {
        Ok(())
    } else {
        Err(Failure {
            code: 1,
            message: "some pairs did not meet the targets (see the table)".into(),
        })
    }
}

fn fail(message: impl std::fmt::Display) -> Failure {
    Failure {
        code: 1,
        message: message.to_string(),
    }
}

pub fn run_demo(participants: usize, seconds: f64, keep: bool) -> Result<DemoReport, Failure> {
    let exe = std::env::current_exe().map_err(fail)?;
    let work = tempfile::Builder::new()
        .prefix("confab-demo-")
        .tempdir()
        .map_err(fail)?;
    let mut nodes: Vec<Node> = (0..participants)
        .map(|i| Node {
            name: format!("participant-{i}"),
            dir: work.path().join(format!("node{i}")),
            out: work.path().join(format!("heard{i}")),
            child: None,
        })
        .collect();
    for n in &nodes {
        let mut c = confab(&exe, &n.dir);
        c.args(["init", "--name", &n.name]);
        checked(c, "confab init")?;
    }
    let port = free_port()?;
    let mut c = confab(&exe, &nodes[0].dir);
    c.args(["room", "create", "--json", "--listen"])
        .arg(format!("/ip4/127.0.0.1/tcp/{port}"));
    let created: serde_json::Value =
        serde_json::from_str(&checked(c, "confab room create")?).map_err(fail)?;
    let ticket = created["ticket"]
        .as_str()
        .ok_or_else(|| fail("room create printed no ticket"))?
        .to_string();

    let started = Instant::now();
    for (i, n) in nodes.iter_mut().enumerate() {
        let log = std::fs::File::create(work.path().join(format!("node{i}.log"))).map_err(fail)?;
        let mut c = confab(&exe, &n.dir);
        c.args(["call", &ticket, "--json", "--signal", &i.to_string()])
            .args(["--duration", &seconds.to_string()])
            .arg("--output-dir")
            .arg(&n.out);
        if i > 0 {
            c.args(["--listen", "/ip4/127.0.0.1/tcp/0"]);
        }
        c.stdout(Stdio::piped()).stderr(Stdio::from(log));
        n.child = Some(c.spawn().map_err(fail)?);
    }
    // Wait for everyone, with a deadline well past the call's length.
    let deadline = started + Duration::from_secs_f64(seconds) + Duration::from_secs(60);
    let mut reports: Vec<Option<CallReport>> = Vec::new();
    for n in nodes.iter_mut() {
        let Some(mut child) = n.child.take() else {
            reports.push(None);
            continue;
        };
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = child.kill();
                    break;
                }
            }
        }
        let out = child.wait_with_output().map_err(fail)?;
        reports.push(serde_json::from_slice(&out.stdout).ok());
    }
    let report = analyse(&nodes, &reports, seconds);
    if keep {
        let kept = work.keep();
        eprintln!("working directory kept at {}", kept.display());
    }
    Ok(report)
}

fn analyse(nodes: &[Node], reports: &[Option<CallReport>], _seconds: f64) -> DemoReport {
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let (pairs, usage, ok) = score(&names, reports, |_, _, _| ());
    DemoReport {
        participants: nodes.len(),
        pairs: pairs.into_iter().map(|(p, ())| p).collect(),
        ok,
        nodes: usage,
    }
}

/// What a receiver heard from a sender, lined up with what the sender sent.
pub struct Heard {
    /// The sender's signal from the first frame the receiver played, `MAX_LAG` longer than
    /// `heard`.
    pub sent: Vec<i16>,
    /// The receiver's recording of that sender.
    pub heard: Vec<i16>,
    /// Delay (samples) at which the two line up best.
    pub lag: usize,
}

/// A node's CPU share of one core over its call, and its peak RSS.
pub fn node_usage(name: &str, r: &CallReport) -> NodeUsage {
    let secs = r.ended_ms.saturating_sub(r.started_ms) as f64 / 1000.0;
    NodeUsage {
        name: name.to_string(),
        cpu_share: if secs > 0.0 {
            r.cpu_seconds / secs
        } else {
            0.0
        },
        max_rss_kb: r.max_rss_kb,
    }
}

/// Scores every (sender → receiver) pair of a call whose node `i` sent
/// `audio::test_signal(i, SIGNAL_SECS)` and recorded with `--output-dir`: frames, latency,
/// MOS from the receiver's report, correlation from its recording. `extra` sees each pair
/// (sender index, receiver index, what was heard if anything) and adds its own figures.
/// Returns the pairs, the nodes' usage, and whether every pair met the targets.
pub fn score<T>(
    names: &[String],
    reports: &[Option<CallReport>],
    mut extra: impl FnMut(usize, usize, Option<&Heard>) -> T,
) -> (Vec<(Pair, T)>, Vec<NodeUsage>, bool) {
    let mut pairs = Vec::new();
    let mut ok = reports.iter().all(Option::is_some);
    let signals: Vec<Vec<i16>> = (0..names.len())
        .map(|i| audio::test_signal(i, SIGNAL_SECS))
        .collect();
    let mut usage = Vec::new();
    for (ri, r) in reports.iter().enumerate() {
        let Some(r) = r else { continue };
        usage.push(node_usage(&names[ri], r));
        for (si, s) in reports.iter().enumerate() {
            if si == ri {
                continue;
            }
            let Some(s) = s else { continue };
            let frames_sent = s.sent.get(&r.peer_id).map_or(0, |x| x.frames_sent);
            let rx = r.received.iter().find(|x| x.from == s.peer_id);
            let heard = rx
                .and_then(|rx| rx.output.as_ref().map(|p| (rx, p)))
                .and_then(|(rx, p)| Some((rx, audio::read_wav(Path::new(p)).ok()?)))
                .map(|(rx, heard)| {
                    let sig = &signals[si];
                    let start = rx.first_seq.unwrap_or(0) as usize * FRAME_SAMPLES;
                    let sent: Vec<i16> = (0..heard.len() + MAX_LAG)
                        .map(|k| sig[(start + k) % sig.len()])
                        .collect();
                    let (correlation, lag) = audio::aligned_correlation(&sent, &heard, MAX_LAG);
                    (correlation, Heard { sent, heard, lag })
                });
            let pair = Pair {
                from: names[si].clone(),
                to: names[ri].clone(),
                path: rx.map_or_else(|| "none".into(), |rx| rx.path.clone()),
                frames_sent,
                frames_received: rx.map_or(0, |rx| rx.frames_received),
                frames_lost: rx.map_or(0, |rx| rx.frames_lost),
                frames_concealed: rx.map_or(0, |rx| rx.frames_concealed),
                mouth_to_ear_ms: Latency {
                    p50: rx.and_then(|rx| rx.mouth_to_ear_p50_ms),
                    p95: rx.and_then(|rx| rx.mouth_to_ear_p95_ms),
                },
                mos: rx.map_or(1.0, |rx| rx.mos),
                correlation: heard.as_ref().map_or(0.0, |(c, _)| *c),
            };
            ok &= pair_ok(&pair);
            let more = extra(si, ri, heard.as_ref().map(|(_, h)| h));
            pairs.push((pair, more));
        }
    }
    ok &= pairs.len() == names.len() * (names.len() - 1);
    (pairs, usage, ok)
}

/// Whether a pair meets the demo's targets.
pub fn pair_ok(p: &Pair) -> bool {
    p.frames_sent > 0
        && p.frames_received as f64 >= MIN_RECEIVED_SHARE * p.frames_sent as f64
        && p.correlation >= MIN_CORRELATION
        && p.mouth_to_ear_ms.p50.is_some_and(|v| v <= MAX_P50_MS)
}

fn print_table(r: &DemoReport) {
    println!(
        "{:<15} {:<15} {:<8} {:>6} {:>8} {:>5} {:>9} {:>8} {:>8} {:>5} {:>6}  ",
        "from",
        "to",
        "path",
        "sent",
        "received",
        "lost",
        "concealed",
        "m2e p50",
        "m2e p95",
        "MOS",
        "corr"
    );
    for p in &r.pairs {
        println!(
            "{:<15} {:<15} {:<8} {:>6} {:>8} {:>5} {:>9} {:>8} {:>8} {:>5.2} {:>6.3}  {}",
            short(&p.from, 15),
            short(&p.to, 15),
            p.path,
            p.frames_sent,
            p.frames_received,
            p.frames_lost,
            p.frames_concealed,
            fmt_ms(p.mouth_to_ear_ms.p50),
            fmt_ms(p.mouth_to_ear_ms.p95),
            p.mos,
            p.correlation,
            if pair_ok(p) { "ok" } else { "FAIL" }
        );
    }
    for n in &r.nodes {
        println!(
            "{:<15} cpu {:>5.1}% of one core, peak RSS {:.1} MB",
            n.name,
            n.cpu_share * 100.0,
            n.max_rss_kb as f64 / 1024.0
        );
    }
    println!(
        "{}",
        if r.ok {
            "all pairs ok"
        } else {
            "SOME PAIRS FAILED"
        }
    );
}
