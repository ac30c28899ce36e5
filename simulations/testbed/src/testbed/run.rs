//! One testbed call, step by step: check the flags and binaries, build the namespaces,
//! start the relay (and a capture on it), create the accounts and the room, hold the call
//! (restarting the relay if asked), collect the reports, score them and check the capture.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use confab_protocol::RoomId;
use confab_simulator::nat::NatKind;
use confab_simulator::realnat::Home;

use super::args::TestbedArgs;
use super::bins::{find_bins, os, which, Bins, Features};
use super::blind;
use super::netns::{self, Net};
use super::node::{now_ms, test_signal, CallReport, SIGNAL_SECS};
use super::predict;
use super::proc::Proc;
use super::report::{RelayRestart, TestbedInfo, TestbedReport};
use super::score::analyse;
use super::topology::{build, Endpoint, PORT, RELAY_IP};

/// How long the relay may take to print `ready`.
const RELAY_READY: Duration = Duration::from_secs(20);
/// How long past `--seconds` a call may take to end (joining, draining).
const CALL_SLACK: Duration = Duration::from_secs(60);
/// Where each node listens (inside its namespace).
const LISTEN: [&str; 2] = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"];

/// What a run produced besides the report: files a test may want to inspect.
pub struct Outcome {
    pub report: TestbedReport,
    _work: Option<tempfile::TempDir>,
}

/// The fixed parts of one run: its flags, the binaries and what they support, the
/// namespaces and the working directory.
struct Bed<'a> {
    args: &'a TestbedArgs,
    bins: Bins,
    features: Features,
    net: Net,
    wd: PathBuf,
    relay_ns: String,
    eps: Vec<Endpoint>,
}

/// The relay of the run and how to reach it.
struct RelayProc {
    proc: Proc,
    peer: String,
    data: PathBuf,
}

impl RelayProc {
    fn addr(&self) -> String {
        format!("/ip4/{RELAY_IP}/tcp/{PORT}/p2p/{}", self.peer)
    }
}

/// The calls, and where each wrote the Opus packets it sent (when the node can).
struct Calls {
    procs: Vec<Proc>,
    dumps: Vec<Option<PathBuf>>,
    started: Instant,
}

/// Runs one testbed call.
pub fn run(args: &TestbedArgs) -> Result<Outcome> {
    args.check()?;
    let homes = args.homes()?;
    let t_start = Instant::now();
    let bins = find_bins()?;
    netns::check_available()?;
    let features = bins.features();
    check_features(&homes, features)?;
    let tcpdump = tcpdump_if_asked(args)?;

    let work = tempfile::Builder::new()
        .prefix("confab-testbed-")
        .tempdir()
        .context("creating a working directory")?;
    let net = Net::new()?;
    let (relay_ns, eps) = build(&net, &homes, args.hairpin)?;
    let bed = Bed {
        args,
        bins,
        features,
        net,
        wd: work.path().to_path_buf(),
        relay_ns,
        eps,
    };

    let mut relay = bed.start_relay(bed.wd.join("relay"), "relay.log")?;
    // Capture on the relay's only interface: everything it receives and forwards.
    let pcap = bed.wd.join("relay.pcap");
    let mut capture = match &tcpdump {
        Some(td) => Some(bed.start_capture(td, &pcap)?),
        None => None,
    };
    let dirs = bed.init_accounts()?;
    let (ticket, room_id) = bed.create_room(&dirs[0], &relay.addr())?;
    let setup_ms = t_start.elapsed().as_millis() as u64;

    let mut calls = bed.start_calls(&dirs, &ticket, &relay.addr())?;
    let (restart, killed_ms) = match args.restart_relay_at {
        Some(at) => {
            let (r, k) = bed.restart_relay(&mut relay, at, calls.started)?;
            (Some(r), Some(k))
        }
        None => (None, None),
    };
    let reports = bed.collect_reports(&mut calls);
    if let Some(c) = capture.as_mut() {
        c.terminate(Duration::from_secs(5));
        bed.net.untrack(c.pid);
    }
    relay.proc.terminate(Duration::from_secs(10));
    bed.net.untrack(relay.proc.pid);

    let names: Vec<String> = bed.eps.iter().map(|e| e.label.to_string()).collect();
    let predicted = |si: usize, ri: usize| predict::pair(&homes, si, ri, args.hairpin);
    let (pairs, nodes, mut ok) = analyse(&names, &reports, &predicted, killed_ms);
    let relay_capture = match capture {
        Some(_) => {
            let f = check_capture(reports.len(), &calls.dumps, &room_id, &pcap)?;
            ok &= f.clean();
            Some(f)
        }
        None => None,
    };

    let namespaces = bed.namespaces();
    let wd = bed.wd.clone();
    drop(bed);
    let report = TestbedReport {
        participants: homes.len(),
        pairs,
        ok,
        nodes,
        testbed: TestbedInfo {
            homes: homes.iter().map(Home::to_string).collect(),
            hairpin: args.hairpin,
            transports: predict::TRANSPORTS.iter().map(|t| t.to_string()).collect(),
            seconds: args.seconds,
            relay_peer_id: relay.peer,
            node_has_relay: features.call_relay,
            relay_restart: restart,
            setup_ms,
            total_ms: t_start.elapsed().as_millis() as u64,
            namespaces,
            workdir: args.keep.then(|| wd.display().to_string()),
        },
        relay_capture,
    };
    let work = if args.keep {
        let _ = work.keep();
        None
    } else {
        Some(work)
    };
    Ok(Outcome {
        report,
        _work: work,
    })
}

/// Endpoints behind NAT can only be reached through a relay.
fn check_features(homes: &[Home], features: Features) -> Result<()> {
    let natted = homes.iter().any(|h| h.kind != NatKind::Public);
    if natted && !features.call_relay {
        bail!(
            "this confab binary has no `call --relay`; endpoints behind NAT cannot be reached \
             (only public homes work until the node has relay support)"
        );
    }
    Ok(())
}

/// With `--check-relay-blind`: where tcpdump is (an error if it is not installed).
fn tcpdump_if_asked(args: &TestbedArgs) -> Result<Option<PathBuf>> {
    if !args.check_relay_blind {
        return Ok(None);
    }
    which("tcpdump")
        .map(Some)
        .ok_or_else(|| anyhow!("--check-relay-blind needs tcpdump (apt-get install tcpdump)"))
}

/// Checks that the relay's capture holds neither sender's audio (PCM, or the Opus packets
/// they dumped) nor the room id.
fn check_capture(
    senders: usize,
    dumps: &[Option<PathBuf>],
    room_id: &[u8],
    pcap: &Path,
) -> Result<blind::Findings> {
    // Every sender's audio crosses the relay; check them all.
    let mut needles = blind::Needles::default();
    for i in 0..senders {
        needles.add_pcm(&test_signal(i, SIGNAL_SECS));
        if let Some(Some(d)) = dumps.get(i) {
            needles.add_opus_dump(d)?;
        }
    }
    needles.add_bytes("room id", room_id);
    needles.add_bytes("room id (hex)", hex(room_id).as_bytes());
    let bytes = std::fs::read(pcap).with_context(|| format!("reading {}", pcap.display()))?;
    blind::check(&bytes, &needles)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Bed<'_> {
    /// Starts the relay with its identity in `data`; waits for its `ready`.
    fn start_relay(&self, data: PathBuf, log: &str) -> Result<RelayProc> {
        let tcp = format!("/ip4/{RELAY_IP}/tcp/{PORT}");
        let quic = format!("/ip4/{RELAY_IP}/udp/{PORT}/quic-v1");
        let mut args = vec![OsString::from("--data-dir"), data.as_os_str().to_owned()];
        for a in [&tcp, &quic] {
            args.extend(os(&["--listen", a, "--external-addr", a]));
        }
        let log = self.wd.join(log);
        let mut p = Proc::spawn(
            &self.net,
            "confab-relay",
            Some(&self.relay_ns),
            &self.bins.relay,
            &args,
            &log,
        )?;
        let mut peer = None;
        p.wait_line(RELAY_READY, |l| {
            if let Some(id) = l.strip_prefix("peer-id ") {
                peer = Some(id.trim().to_string());
            }
            (l.trim() == "ready").then_some(())
        })?;
        let peer = peer.ok_or_else(|| anyhow!("confab-relay printed no peer-id line"))?;
        Ok(RelayProc {
            proc: p,
            peer,
            data,
        })
    }

    /// Starts tcpdump on the relay's interface, writing `pcap`; waits until it listens.
    fn start_capture(&self, tcpdump: &Path, pcap: &Path) -> Result<Proc> {
        let log = self.wd.join("tcpdump.log");
        let mut args = os(&["-i", "wan", "-n", "-U", "-s", "0", "-w"]);
        args.push(pcap.as_os_str().to_owned());
        let mut p = Proc::spawn(
            &self.net,
            "tcpdump",
            Some(&self.relay_ns),
            tcpdump,
            &args,
            &log,
        )?;
        // tcpdump says "listening on wan" on stderr once the capture runs.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("listening on") {
                return Ok(p);
            }
            if p.exited() || Instant::now() > deadline {
                bail!("tcpdump did not start: {}", text.trim());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `confab init` for each endpoint; returns their data directories.
    fn init_accounts(&self) -> Result<Vec<PathBuf>> {
        let mut dirs = Vec::new();
        for e in &self.eps {
            let d = self.wd.join(format!("node-{}", e.label));
            self.bins.confab(&d, &["init", "--name", &e.label])?;
            dirs.push(d);
        }
        Ok(dirs)
    }

    /// A creates the room (announcing its public addresses, or the relay's circuit);
    /// returns the ticket and the room id.
    fn create_room(&self, dir: &Path, relay_addr: &str) -> Result<(String, RoomId)> {
        let ea = &self.eps[0];
        let mut create: Vec<String> = vec!["room".into(), "create".into(), "--json".into()];
        for l in LISTEN {
            create.extend(["--listen".into(), l.into()]);
        }
        if ea.home.kind == NatKind::Public {
            for l in [
                format!("/ip4/{}/tcp/{PORT}", ea.public_ip),
                format!("/ip4/{}/udp/{PORT}/quic-v1", ea.public_ip),
            ] {
                create.extend(["--announce".into(), l]);
            }
        }
        if self.features.room_relay {
            create.extend(["--relay".into(), relay_addr.to_string()]);
        } else if ea.home.kind != NatKind::Public {
            create.extend(["--announce".into(), format!("{relay_addr}/p2p-circuit")]);
        }
        let create_ref: Vec<&str> = create.iter().map(String::as_str).collect();
        let created: serde_json::Value = serde_json::from_str(&self.bins.confab(dir, &create_ref)?)
            .context("room create printed no JSON")?;
        let ticket = created["ticket"]
            .as_str()
            .ok_or_else(|| anyhow!("room create printed no ticket"))?
            .to_string();
        let room_id = confab_protocol::ticket::Ticket::parse(&ticket)
            .map_err(|e| anyhow!("the ticket does not parse: {e}"))?
            .room_id;
        Ok((ticket, room_id))
    }

    /// Starts `confab call` on every endpoint.
    fn start_calls(&self, dirs: &[PathBuf], ticket: &str, relay_addr: &str) -> Result<Calls> {
        let mut procs = Vec::new();
        let mut dumps = Vec::new();
        for (i, (e, d)) in self.eps.iter().zip(dirs).enumerate() {
            let mut a = os(&["call", ticket, "--json", "--signal", &i.to_string()]);
            a.extend(os(&["--duration", &self.args.seconds.to_string()]));
            a.push("--output-dir".into());
            a.push(self.wd.join(format!("heard-{}", e.label)).into_os_string());
            a.push("--timeline-dir".into());
            a.push(self.wd.join(format!("heard-{}", e.label)).into_os_string());
            if i > 0 {
                for l in LISTEN {
                    a.extend(os(&["--listen", l]));
                }
            }
            if self.features.call_relay {
                a.extend(os(&["--relay", relay_addr]));
            }
            let dump = self.wd.join(format!("sent-{}.opus", e.label));
            if self.features.dump_opus {
                a.push("--dump-opus".into());
                a.push(dump.clone().into_os_string());
            }
            dumps.push(self.features.dump_opus.then_some(dump));
            let mut full = vec![OsString::from("--data-dir"), d.as_os_str().to_owned()];
            full.extend(a);
            procs.push(Proc::spawn(
                &self.net,
                &format!("confab {}", e.label),
                Some(&e.ns),
                &self.bins.confab,
                &full,
                &self.wd.join(format!("node-{}.log", e.label)),
            )?);
        }
        Ok(Calls {
            procs,
            dumps,
            started: Instant::now(),
        })
    }

    /// At `at` seconds into the call, stops the relay and starts it again with the same
    /// identity; returns the restart's facts and when it was stopped (Unix ms).
    fn restart_relay(
        &self,
        relay: &mut RelayProc,
        at: f64,
        call_start: Instant,
    ) -> Result<(RelayRestart, u64)> {
        let when = call_start + Duration::from_secs_f64(at);
        std::thread::sleep(when.saturating_duration_since(Instant::now()));
        let down = Instant::now();
        let killed_ms = now_ms();
        relay.proc.terminate(Duration::from_secs(10));
        self.net.untrack(relay.proc.pid);
        let again = self.start_relay(relay.data.clone(), "relay-2.log")?;
        let restart = RelayRestart {
            at_s: at,
            down_ms: down.elapsed().as_millis() as u64,
            same_peer_id: again.peer == relay.peer,
        };
        // The report names the relay as it was first started.
        relay.proc = again.proc;
        Ok((restart, killed_ms))
    }

    /// Waits for every call to end (at most `--seconds` plus slack) and parses their
    /// reports (`None` for a call that printed none); keeps each report in the workdir.
    fn collect_reports(&self, calls: &mut Calls) -> Vec<Option<CallReport>> {
        let deadline = calls.started + Duration::from_secs_f64(self.args.seconds) + CALL_SLACK;
        let mut reports = Vec::new();
        for c in calls.procs.iter_mut() {
            let left = deadline.saturating_duration_since(Instant::now());
            let status = c.wait_exit(left);
            self.net.untrack(c.pid);
            let out = c.rest_of_stdout();
            let _ = std::fs::write(
                self.wd
                    .join(format!("report-{}.json", c.name.replace(' ', "-"))),
                &out,
            );
            let parsed = serde_json::from_str::<CallReport>(out.trim()).ok();
            if parsed.is_none() {
                eprintln!("testbed: {} ended with {status:?} and no report", c.name);
            }
            reports.push(parsed);
        }
        reports
    }

    /// The run's namespaces that exist now.
    fn namespaces(&self) -> Vec<String> {
        let mut existing = self.net.existing();
        existing.sort();
        existing
    }
}
