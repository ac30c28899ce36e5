//! `confab demo`: N real `confab` processes on loopback hold one call; every pair is measured.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{free_port, Failure, OpusMode};
use crate::call::CallReport;
use crate::score::{fmt_ms, pair_meets_latency, score, short, verdict, NodeUsage, Pair};

/// What `confab demo` runs.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    pub participants: usize,
    pub seconds: f64,
    pub frame_ms: u8,
    pub opus_mode: OpusMode,
    /// Keep the working directory.
    pub keep: bool,
}

impl DemoOptions {
    /// `participants` for `seconds`, with the defaults otherwise (20 ms frames, audio mode).
    pub fn new(participants: usize, seconds: f64) -> Self {
        Self {
            participants,
            seconds,
            frame_ms: 20,
            opus_mode: OpusMode::Audio,
            keep: false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub participants: usize,
    pub frame_ms: u8,
    pub opus_mode: &'static str,
    pub pairs: Vec<Pair>,
    /// Every pair worked (frames, correlation, chirps found; see [`crate::score::pair_ok`]).
    pub ok: bool,
    /// Every pair met the latency targets of an idle machine
    /// ([`crate::score::pair_meets_latency`]).
    pub latency_ok: bool,
    /// CPU of each node as a share of one core over its call, and its peak RSS.
    pub nodes: Vec<NodeUsage>,
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
pub fn run(opts: DemoOptions, json: bool) -> Result<(), Failure> {
    let (participants, seconds) = (opts.participants, opts.seconds);
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
    let report = run_demo(opts)?;
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

pub fn run_demo(opts: DemoOptions) -> Result<DemoReport, Failure> {
    let (participants, seconds) = (opts.participants, opts.seconds);
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
    // The participants read the ticket from a file in the (private) working directory, so
    // the room secret is not on their command lines.
    let ticket_file = work.path().join("ticket");
    std::fs::write(&ticket_file, &ticket).map_err(fail)?;

    let started = Instant::now();
    for (i, n) in nodes.iter_mut().enumerate() {
        let log = std::fs::File::create(work.path().join(format!("node{i}.log"))).map_err(fail)?;
        let mut c = confab(&exe, &n.dir);
        c.args(["call", "--json", "--signal", &i.to_string()])
            .arg("--ticket-file")
            .arg(&ticket_file)
            .args(["--duration", &seconds.to_string()])
            .args(["--frame-ms", &opts.frame_ms.to_string()])
            .args(["--opus-mode", opts.opus_mode.as_str()])
            .arg("--output-dir")
            .arg(&n.out)
            .arg("--timeline-dir")
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
    let report = analyse(&nodes, &reports, opts);
    if opts.keep {
        let kept = work.keep();
        eprintln!("working directory kept at {}", kept.display());
    }
    Ok(report)
}

fn analyse(nodes: &[Node], reports: &[Option<CallReport>], opts: DemoOptions) -> DemoReport {
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let (pairs, usage, ok) = score(&names, reports, |_, _, _| ());
    let latency_ok = pairs.iter().all(|(p, ())| pair_meets_latency(p));
    DemoReport {
        participants: nodes.len(),
        frame_ms: opts.frame_ms,
        opus_mode: opts.opus_mode.as_str(),
        pairs: pairs.into_iter().map(|(p, ())| p).collect(),
        ok,
        latency_ok,
        nodes: usage,
    }
}

fn print_table(r: &DemoReport) {
    println!(
        "{} participants, {} ms frames, Opus {}; mouth-to-ear (m2e) measured on the signal, \
         transit+buffer (t+b) from the timestamps",
        r.participants, r.frame_ms, r.opus_mode
    );
    println!(
        "{:<15} {:<15} {:<8} {:>6} {:>8} {:>5} {:>9} {:>8} {:>8} {:>7} {:>8} {:>5} {:>6}  ",
        "from",
        "to",
        "path",
        "sent",
        "received",
        "lost",
        "concealed",
        "m2e p50",
        "m2e p95",
        "onsets",
        "t+b p50",
        "MOS",
        "corr"
    );
    for p in &r.pairs {
        println!(
            "{:<15} {:<15} {:<8} {:>6} {:>8} {:>5} {:>9} {:>8} {:>8} {:>7} {:>8} {:>5.2} {:>6.3}  {}",
            short(&p.from, 15),
            short(&p.to, 15),
            p.path,
            p.frames_sent,
            p.frames_received,
            p.frames_lost,
            p.frames_concealed,
            fmt_ms(p.mouth_to_ear_ms.p50),
            fmt_ms(p.mouth_to_ear_ms.p95),
            format!("{}/{}", p.onsets.found, p.onsets.expected),
            fmt_ms(p.transit_buffer_ms.p50),
            p.mos,
            p.correlation,
            verdict(p)
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
        match (r.ok, r.latency_ok) {
            (true, true) => "all pairs ok",
            (true, false) => "all pairs ok; some missed the latency targets (p50 40 ms, p95 60 ms at 20 ms frames; 25 ms p50 at 10 ms) of an idle machine",
            (false, _) => "SOME PAIRS FAILED",
        }
    );
}
