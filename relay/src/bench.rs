//! `confab-relay bench`: the relay's cost per relayed audio stream.
//!
//! For each stream count N it starts the relay as a separate process (this binary, on
//! 127.0.0.1 with a fresh identity), builds D destination clients that hold reservations
//! and S source clients (D × S ≥ N), and opens one relay circuit per (source, destination)
//! pair — N separate circuits — with one stream on each. Every stream carries one frame of
//! `frame_bytes` every `frame_ms`, stamped with its scheduled send time; the receiver counts
//! a frame as late when it arrives more than one frame interval after that time.
//!
//! The relay's CPU time comes from `/proc/<pid>/stat` (utime + stime over the measurement
//! window) and its memory from `VmRSS` in `/proc/<pid>/status`. The load generator runs in
//! this process and shares the machine with the relay, so its own CPU share is reported too.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{swarm::SwarmEvent, Multiaddr, PeerId, Swarm};

use crate::{
    cli::BenchArgs,
    client::{self, ClientBehaviour, TEST_PROTOCOL},
    Error,
};

/// Linux clock ticks per second for `/proc/<pid>/stat` (USER_HZ, 100 on every mainstream
/// architecture).
const CLOCK_TICKS: f64 = 100.0;
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
const WARMUP: Duration = Duration::from_secs(2);

/// One measured row.
#[derive(Debug, Clone)]
pub struct Row {
    /// Streams (= circuits).
    pub streams: usize,
    /// Relay CPU time over wall time in the window, in % of one core.
    pub relay_cpu_pct: f64,
    /// Relay RSS at the end of the window, KiB.
    pub relay_rss_kib: u64,
    /// Relay RSS before any client connected, KiB.
    pub relay_rss_idle_kib: u64,
    /// Frames received in the window.
    pub frames: u64,
    /// Frames expected in the window (streams × window / interval).
    pub frames_expected: u64,
    /// Frames later than one interval.
    pub late: u64,
    /// Lateness percentiles (ms): p50, p99, max.
    pub lateness_ms: (f64, f64, f64),
    /// Load generator CPU, % of one core.
    pub loadgen_cpu_pct: f64,
}

/// Run the benchmark and print a table.
pub async fn run(args: BenchArgs) -> Result<(), Error> {
    let exe = std::env::current_exe().map_err(|e| Error::Bench(format!("current_exe: {e}")))?;
    println!(
        "relay cost per audio stream: {} B every {} ms per stream, {} s window after {} s warm-up",
        args.frame_bytes,
        args.frame_ms,
        args.seconds,
        WARMUP.as_secs()
    );
    println!(
        "| streams (circuits) | relay CPU, % of one core | relay RSS idle → loaded (MiB) | RSS per circuit (KiB) | frames received / expected | late (> {} ms) | lateness p50 / p99 / max (ms) | load generator CPU, % of one core |",
        args.frame_ms
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &n in &args.streams {
        let row = run_one(&exe, n, &args).await?;
        let per_circuit = (row.relay_rss_kib.saturating_sub(row.relay_rss_idle_kib)) as f64
            / row.streams.max(1) as f64;
        println!(
            "| {} | {:.1} | {:.1} → {:.1} | {:.1} | {} / {} | {:.3} % | {:.1} / {:.1} / {:.1} | {:.0} |",
            row.streams,
            row.relay_cpu_pct,
            row.relay_rss_idle_kib as f64 / 1024.0,
            row.relay_rss_kib as f64 / 1024.0,
            per_circuit,
            row.frames,
            row.frames_expected,
            100.0 * row.late as f64 / row.frames.max(1) as f64,
            row.lateness_ms.0,
            row.lateness_ms.1,
            row.lateness_ms.2,
            row.loadgen_cpu_pct,
        );
    }
    Ok(())
}

struct RelayProcess {
    child: Child,
    addr: Multiaddr,
    _dir: tempfile_dir::TempDir,
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// A throwaway directory without a dev-dependency: removed on drop.
mod tempfile_dir {
    use std::path::{Path, PathBuf};

    pub(super) struct TempDir(PathBuf);

    impl TempDir {
        pub(super) fn new(tag: &str) -> std::io::Result<Self> {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let p = std::env::temp_dir()
                .join(format!("confab-relay-{tag}-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&p)?;
            Ok(TempDir(p))
        }
        pub(super) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The relay's command: this binary, under `taskset -c CPUS` when pinned (taskset execs
/// it, so the child's pid is the relay's).
fn relay_command(exe: &std::path::Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus]).arg(exe);
            c
        }
        None => Command::new(exe),
    }
}

fn spawn_relay(exe: &std::path::Path, n: usize, cpus: Option<&str>) -> Result<RelayProcess, Error> {
    let dir = tempfile_dir::TempDir::new("bench").map_err(|e| Error::Bench(e.to_string()))?;
    let mut child = relay_command(exe, cpus)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
        .args(["--max-circuits", &(n + 64).to_string()])
        .args(["--max-circuits-per-peer", "100000"])
        .args(["--max-reservations", "100000"])
        .args(["--circuits-per-peer-per-hour", "0"])
        .args(["--reservations-per-peer-per-hour", "0"])
        // Every bench client is on 127.0.0.1: lift the per-IP caps too.
        .args(["--max-reservations-per-ip", "0"])
        .args(["--max-circuits-per-ip", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::Bench(format!("spawning the relay: {e}")))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::Bench("no relay stdout".into()))?;
    let mut addr = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| Error::Bench(e.to_string()))?;
        if let Some(a) = line.strip_prefix("listen ") {
            addr = a.parse::<Multiaddr>().ok();
        }
        if line == "ready" {
            break;
        }
    }
    let addr = addr.ok_or_else(|| Error::Bench("relay printed no listen address".into()))?;
    Ok(RelayProcess {
        child,
        addr,
        _dir: dir,
    })
}

/// (utime + stime) in seconds and VmRSS in KiB of process `pid` ("self" for this one).
fn proc_usage(pid: &str) -> Result<(f64, u64), Error> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| Error::Bench(format!("/proc/{pid}/stat: {e}")))?;
    // Fields after the ")" that ends the command name; utime and stime are fields 14, 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| Error::Bench("bad stat".into()))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> f64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
    let cpu = (tick(11) + tick(12)) / CLOCK_TICKS;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| Error::Bench(format!("/proc/{pid}/status: {e}")))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok((cpu, rss))
}

fn bench_err(e: impl std::fmt::Display) -> Error {
    Error::Bench(e.to_string())
}

#[derive(Default)]
struct Stats {
    frames: AtomicU64,
    late: AtomicU64,
    lateness_us: Mutex<Vec<u32>>,
    measuring: AtomicBool,
}

async fn run_one(exe: &std::path::Path, n: usize, args: &BenchArgs) -> Result<Row, Error> {
    let relay = spawn_relay(exe, n, args.relay_cpus.as_deref())?;
    let pid = relay.child.id().to_string();
    let (_, rss_idle) = proc_usage(&pid)?;
    let interval = Duration::from_millis(args.frame_ms.max(1));
    let frame_bytes = args.frame_bytes.max(16);

    // Destinations hold reservations, sources open one circuit to each destination.
    let d = (n as f64).sqrt().ceil().max(1.0) as usize;
    let s = n.div_ceil(d);
    let mut pairs = Vec::with_capacity(n);
    'outer: for si in 0..s {
        for di in 0..d {
            if pairs.len() == n {
                break 'outer;
            }
            pairs.push((si, di));
        }
    }

    let relay_peer = match relay.addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(p)) => p,
        _ => return Err(Error::Bench("relay address without peer id".into())),
    };
    let stats = Arc::new(Stats::default());
    let base = Instant::now();
    let mut tasks = Vec::new();
    let mut dst_ids = Vec::new();
    let mut circuits = Vec::new();
    for _ in 0..d {
        let mut sw = client::new_client()?;
        let incoming = sw
            .behaviour()
            .stream
            .new_control()
            .accept(TEST_PROTOCOL)
            .map_err(bench_err)?;
        let circuit = client::reserve(&mut sw, &relay.addr, SETUP_TIMEOUT)
            .await
            .map_err(|e| Error::Bench(format!("reservation: {e}")))?;
        dst_ids.push(*sw.local_peer_id());
        circuits.push(circuit);
        tasks.push(client::spawn_driver(sw));
        tasks.push(tokio::spawn(receive_all(
            incoming,
            stats.clone(),
            base,
            interval,
            frame_bytes,
        )));
    }

    let start_at = Instant::now() + Duration::from_millis(500);
    let mut stream_index = 0usize;
    for si in 0..s {
        let targets: Vec<usize> = pairs
            .iter()
            .filter(|(a, _)| *a == si)
            .map(|(_, b)| *b)
            .collect();
        if targets.is_empty() {
            continue;
        }
        let mut sw = client::new_client()?;
        // One direct connection to the relay first; concurrent circuit dials from a client
        // that is not yet connected race each other inside the relay client.
        client::dial(&mut sw, &relay.addr, relay_peer, SETUP_TIMEOUT)
            .await
            .map_err(|e| Error::Bench(format!("connecting to the relay: {e}")))?;
        connect_all(&mut sw, &targets, &circuits, &dst_ids).await?;
        let control = sw.behaviour().stream.new_control();
        tasks.push(client::spawn_driver(sw));
        for di in targets {
            let phase = interval.mul_f64((stream_index % 97) as f64 / 97.0);
            let mut control = control.clone();
            let dst = dst_ids[di];
            let stream =
                tokio::time::timeout(SETUP_TIMEOUT, control.open_stream(dst, TEST_PROTOCOL))
                    .await
                    .map_err(|_| Error::Bench("open_stream timed out".into()))?
                    .map_err(bench_err)?;
            tasks.push(tokio::spawn(send_frames(
                stream,
                stream_index as u64,
                base,
                start_at.max(Instant::now()) + phase,
                interval,
                frame_bytes,
            )));
            stream_index += 1;
        }
    }

    tokio::time::sleep(WARMUP).await;
    let window = Duration::from_secs(args.seconds.max(1));
    let (relay_cpu0, _) = proc_usage(&pid)?;
    let (self_cpu0, _) = proc_usage("self")?;
    stats.frames.store(0, Ordering::SeqCst);
    stats.late.store(0, Ordering::SeqCst);
    if let Ok(mut v) = stats.lateness_us.lock() {
        v.clear();
    }
    stats.measuring.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    stats.measuring.store(false, Ordering::SeqCst);
    let elapsed = t0.elapsed().as_secs_f64();
    let (relay_cpu1, rss) = proc_usage(&pid)?;
    let (self_cpu1, _) = proc_usage("self")?;

    for t in &tasks {
        t.abort();
    }
    drop(relay);

    let mut lat = stats
        .lateness_us
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() - 1) as f64 * p).round() as usize;
        f64::from(lat[i.min(lat.len() - 1)]) / 1000.0
    };
    Ok(Row {
        streams: n,
        relay_cpu_pct: 100.0 * (relay_cpu1 - relay_cpu0) / elapsed,
        relay_rss_kib: rss,
        relay_rss_idle_kib: rss_idle,
        frames: stats.frames.load(Ordering::SeqCst),
        frames_expected: (n as f64 * elapsed / interval.as_secs_f64()) as u64,
        late: stats.late.load(Ordering::SeqCst),
        lateness_ms: (pct(0.5), pct(0.99), pct(1.0)),
        loadgen_cpu_pct: 100.0 * (self_cpu1 - self_cpu0) / elapsed,
    })
}

/// The relay client handles at most 10 circuit requests at once per relay connection and
/// silently drops the rest, so circuits are dialled in batches below that.
const CIRCUIT_DIAL_BATCH: usize = 8;

/// Dial a circuit to each target destination and wait for all connections.
async fn connect_all(
    sw: &mut Swarm<ClientBehaviour>,
    targets: &[usize],
    circuits: &[Multiaddr],
    dst_ids: &[PeerId],
) -> Result<(), Error> {
    for batch in targets.chunks(CIRCUIT_DIAL_BATCH) {
        let mut waiting: std::collections::HashSet<PeerId> = std::collections::HashSet::new();
        for &di in batch {
            sw.dial(circuits[di].clone()).map_err(bench_err)?;
            waiting.insert(dst_ids[di]);
        }
        let fut = async {
            while !waiting.is_empty() {
                match sw.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                        waiting.remove(&peer_id);
                    }
                    SwarmEvent::OutgoingConnectionError {
                        peer_id: Some(p),
                        error,
                        ..
                    } if waiting.contains(&p) => {
                        return Err(Error::Bench(format!(
                            "circuit refused: {}",
                            client::error_chain(&error)
                        )));
                    }
                    _ => {}
                }
            }
            Ok(())
        };
        tokio::time::timeout(SETUP_TIMEOUT, fut)
            .await
            .map_err(|_| Error::Bench("circuits did not come up".into()))??;
    }
    Ok(())
}

async fn send_frames(
    mut stream: libp2p::Stream,
    id: u64,
    base: Instant,
    first: Instant,
    interval: Duration,
    frame_bytes: usize,
) {
    let mut frame = vec![0u8; frame_bytes];
    frame[..8].copy_from_slice(&id.to_be_bytes());
    let mut k: u32 = 0;
    loop {
        let scheduled = first + interval * k;
        tokio::time::sleep_until(scheduled.into()).await;
        let micros = scheduled.duration_since(base).as_micros() as u64;
        frame[8..16].copy_from_slice(&micros.to_be_bytes());
        if stream.write_all(&frame).await.is_err() || stream.flush().await.is_err() {
            return;
        }
        k = k.wrapping_add(1);
    }
}

async fn receive_all(
    mut incoming: libp2p_stream::IncomingStreams,
    stats: Arc<Stats>,
    base: Instant,
    interval: Duration,
    frame_bytes: usize,
) {
    while let Some((_peer, mut stream)) = incoming.next().await {
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut frame = vec![0u8; frame_bytes];
            while stream.read_exact(&mut frame).await.is_ok() {
                let now = base.elapsed();
                if !stats.measuring.load(Ordering::Relaxed) {
                    continue;
                }
                let mut t = [0u8; 8];
                t.copy_from_slice(&frame[8..16]);
                let scheduled = Duration::from_micros(u64::from_be_bytes(t));
                let lateness = now.saturating_sub(scheduled);
                stats.frames.fetch_add(1, Ordering::Relaxed);
                if lateness > interval {
                    stats.late.fetch_add(1, Ordering::Relaxed);
                }
                if let Ok(mut v) = stats.lateness_us.lock() {
                    v.push(lateness.as_micros().min(u128::from(u32::MAX)) as u32);
                }
            }
        });
    }
}
