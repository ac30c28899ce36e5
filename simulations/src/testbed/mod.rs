//! `confab-sim testbed`: the real `confab` and `confab-relay` binaries in Linux network
//! namespaces behind real kernel NAT (nftables masquerade).
//!
//! Topology (all addresses exist only inside the run's namespaces):
//!
//! ```text
//!   relay 203.0.113.1 ─┐
//!                      ├─ br0 in "inet" (the internet segment, 203.0.113.0/24)
//!   A: 203.0.113.10 ───┤   public host, or NAT router "ra" ── LAN 10.0.1.0/24 ── host "a"
//!   B: 203.0.113.20 ───┘   public host, or NAT router "rb" ── LAN 10.0.2.0/24 ── host "b"
//! ```
//!
//! A creates the room (with `--relay` when the node has it), both call for `--seconds`, and
//! the report is the `confab demo --json` object, scored the same way, with a few extra
//! fields.

pub mod blind;
pub mod netns;
pub mod proc;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde::Serialize;

use confab_node::audio;
use confab_node::call::CallReport;
use confab_node::codec::FRAME_SAMPLES;
use confab_node::demo::{self, NodeUsage, Pair, SIGNAL_SECS};
use confab_sim::nat::{predict_testbed_path, TestbedNat};

use netns::Net;
use proc::Proc;

const RELAY_IP: &str = "203.0.113.1";
const PORT: u16 = 4001;
/// How long the relay may take to print `ready`.
const RELAY_READY: Duration = Duration::from_secs(20);
/// How long past `--seconds` a call may take to end (joining, draining).
const CALL_SLACK: Duration = Duration::from_secs(60);

/// Flags of `confab-sim testbed`.
#[derive(Debug, Clone, Args)]
pub struct TestbedArgs {
    /// Where endpoint A sits: public, port-preserving, random-port.
    #[arg(long, value_parser = parse_kind)]
    pub nat_a: TestbedNat,
    /// Where endpoint B sits: public, port-preserving, random-port.
    #[arg(long, value_parser = parse_kind)]
    pub nat_b: TestbedNat,
    /// Length of the call in seconds.
    #[arg(long, default_value_t = 8.0)]
    pub seconds: f64,
    /// Stop the relay (SIGTERM) this many seconds into the call and start it again with the
    /// same identity.
    #[arg(long)]
    pub restart_relay_at: Option<f64>,
    /// Capture what the relay receives and forwards (tcpdump) and check that it contains
    /// neither the audio (PCM or Opus) nor the room id.
    #[arg(long)]
    pub check_relay_blind: bool,
    /// Print the report as JSON (the `confab demo --json` object plus testbed fields).
    #[arg(long)]
    pub json: bool,
    /// Keep the working directory (logs, recordings, capture) and print its path.
    #[arg(long)]
    pub keep: bool,
}

fn parse_kind(s: &str) -> Result<TestbedNat, String> {
    TestbedNat::parse(s).ok_or_else(|| {
        format!("unknown NAT kind {s:?}; use public, port-preserving or random-port")
    })
}

/// The name of a kind, as on the command line.
pub fn kind_name(k: TestbedNat) -> &'static str {
    match k {
        TestbedNat::Public => "public",
        TestbedNat::PortPreserving => "port-preserving",
        TestbedNat::RandomPort => "random-port",
    }
}

/// One direction of the call: the demo's pair plus what the testbed adds.
#[derive(Debug, Clone, Serialize)]
pub struct TestbedPair {
    #[serde(flatten)]
    pub pair: Pair,
    /// What `confab_sim::nat::predict_testbed_path` says the path should be.
    pub predicted_path: String,
    /// Longest stretch between two frames heard correctly while the sender was talking
    /// (includes the signal's own pauses, up to about 0.5 s).
    pub longest_gap_ms: Option<f64>,
    /// With `--restart-relay-at`: if the receiver saw the sender leave after the relay was
    /// stopped, the time from the stop to the sender's next admission (`null` if it never
    /// came back); otherwise `longest_gap_ms`, an upper bound on the interruption.
    pub resumed_within_ms: Option<f64>,
}

/// Facts about the run itself.
#[derive(Debug, Clone, Serialize)]
pub struct TestbedInfo {
    pub nat_a: String,
    pub nat_b: String,
    pub seconds: f64,
    pub relay_peer_id: String,
    /// Whether the node binary takes `--relay` (the NAT cases need it).
    pub node_has_relay: bool,
    pub relay_restart: Option<RelayRestart>,
    pub setup_ms: u64,
    pub total_ms: u64,
    /// The namespaces of the run (all removed at the end).
    pub namespaces: Vec<String>,
    pub workdir: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RelayRestart {
    pub at_s: f64,
    /// From SIGTERM to the restarted relay's `ready`.
    pub down_ms: u64,
    pub same_peer_id: bool,
}

/// The `confab demo --json` object plus the testbed's own fields.
#[derive(Debug, Clone, Serialize)]
pub struct TestbedReport {
    pub participants: usize,
    pub pairs: Vec<TestbedPair>,
    pub ok: bool,
    pub nodes: Vec<NodeUsage>,
    pub testbed: TestbedInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_capture: Option<blind::Findings>,
}

/// Where the binaries are.
#[derive(Debug, Clone)]
pub struct Bins {
    pub confab: PathBuf,
    pub relay: PathBuf,
}

/// `CONFAB_BIN` / `CONFAB_RELAY_BIN`, else next to this executable (or one directory up, for
/// test executables in `target/<profile>/deps`).
pub fn find_bins() -> Result<Bins> {
    let exe = std::env::current_exe().context("locating the current executable")?;
    let find = |var: &str, name: &str| -> Result<PathBuf> {
        if let Some(p) = std::env::var_os(var) {
            return Ok(PathBuf::from(p));
        }
        let mut dir = exe.parent();
        for _ in 0..2 {
            let Some(d) = dir else { break };
            let cand = d.join(name);
            if cand.is_file() {
                return Ok(cand);
            }
            dir = d.parent();
        }
        bail!(
            "cannot find `{name}` next to {} (build it: cargo build --release --bins, or set {var})",
            exe.display()
        )
    };
    Ok(Bins {
        confab: find("CONFAB_BIN", "confab")?,
        relay: find("CONFAB_RELAY_BIN", "confab-relay")?,
    })
}

fn help_mentions(bin: &Path, sub: &[&str], flag: &str) -> bool {
    Command::new(bin)
        .args(sub)
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
        .unwrap_or(false)
}

/// One endpoint's place in the topology.
struct Endpoint {
    label: &'static str,
    kind: TestbedNat,
    /// Namespace the node runs in.
    ns: String,
    /// Its address on the internet segment (its own, or its router's).
    public_ip: &'static str,
}

fn os(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

/// Builds the internet segment, the relay host and one endpoint per side.
fn build(net: &Net, a: TestbedNat, b: TestbedNat) -> Result<(String, Endpoint, Endpoint)> {
    let inet = net.add_ns("inet")?;
    netns::ip(&["-n", &inet, "link", "add", "br0", "type", "bridge"])?;
    netns::ip(&["-n", &inet, "link", "set", "br0", "up"])?;
    let attach = |role: &str, ip: &str| -> Result<String> {
        let ns = net.add_ns(role)?;
        let port = format!("p-{role}");
        net.veth(&inet, &port, &ns, "wan")?;
        netns::ip(&["-n", &inet, "link", "set", &port, "master", "br0"])?;
        net.addr(&ns, "wan", &format!("{ip}/24"))?;
        Ok(ns)
    };
    let relay = attach("relay", RELAY_IP)?;
    let side = |label: &'static str, kind: TestbedNat, ip: &'static str, lan: u8| {
        let ns = match kind {
            TestbedNat::Public => attach(label, ip)?,
            TestbedNat::PortPreserving | TestbedNat::RandomPort => {
                let router = attach(&format!("r{label}"), ip)?;
                let host = net.add_ns(label)?;
                net.veth(&router, "lan", &host, "eth0")?;
                net.addr(&router, "lan", &format!("10.0.{lan}.1/24"))?;
                net.addr(&host, "eth0", &format!("10.0.{lan}.2/24"))?;
                netns::ip(&[
                    "-n",
                    &host,
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("10.0.{lan}.1"),
                ])?;
                net.sysctl(&router, "net.ipv4.ip_forward=1")?;
                net.nft(&router, &nat_rules(kind))?;
                host
            }
        };
        Ok::<_, anyhow::Error>(Endpoint {
            label,
            kind,
            ns,
            public_ip: ip,
        })
    };
    let ea = side("a", a, "203.0.113.10", 1)?;
    let eb = side("b", b, "203.0.113.20", 2)?;
    Ok((relay, ea, eb))
}

/// The router's ruleset: source NAT out of `wan` (port-preserving or random per 5-tuple), a
/// forward filter that lets in only replies (conntrack), and an input filter that silently
/// drops unsolicited packets to the router — like a home router, which neither answers a
/// stray SYN with a reset nor a stray UDP packet with an ICMP error (either would kill a hole
/// punch whose first packet arrives before the other side's has opened the mapping).
pub fn nat_rules(kind: TestbedNat) -> String {
    let masq = match kind {
        TestbedNat::RandomPort => "masquerade random,fully-random",
        _ => "masquerade",
    };
    format!(
        "table ip confab_nat {{\n\
         \tchain postrouting {{ type nat hook postrouting priority srcnat; policy accept; oifname \"wan\" {masq}; }}\n\
         \tchain forward {{ type filter hook forward priority filter; policy drop; ct state established,related accept; iifname \"lan\" oifname \"wan\" accept; }}\n\
         \tchain input {{ type filter hook input priority filter; policy drop; ct state established,related accept; iifname {{ \"lo\", \"lan\" }} accept; }}\n\
         }}\n"
    )
}

fn start_relay(
    net: &Net,
    bins: &Bins,
    ns: &str,
    data: &Path,
    log: &Path,
) -> Result<(Proc, String)> {
    let tcp = format!("/ip4/{RELAY_IP}/tcp/{PORT}");
    let quic = format!("/ip4/{RELAY_IP}/udp/{PORT}/quic-v1");
    let mut args = vec![OsString::from("--data-dir"), data.as_os_str().to_owned()];
    for a in [&tcp, &quic] {
        args.extend(os(&["--listen", a, "--external-addr", a]));
    }
    let mut p = Proc::spawn(net, "confab-relay", Some(ns), &bins.relay, &args, log)?;
    let mut peer = None;
    p.wait_line(RELAY_READY, |l| {
        if let Some(id) = l.strip_prefix("peer-id ") {
            peer = Some(id.trim().to_string());
        }
        (l.trim() == "ready").then_some(())
    })?;
    let peer = peer.ok_or_else(|| anyhow!("confab-relay printed no peer-id line"))?;
    Ok((p, peer))
}

fn confab(bins: &Bins, dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(&bins.confab)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("CONFAB_DATA_DIR")
        .output()
        .with_context(|| format!("running {}", bins.confab.display()))?;
    if !out.status.success() {
        bail!(
            "confab {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What a run produced besides the report: files a test may want to inspect.
pub struct Outcome {
    pub report: TestbedReport,
    _work: Option<tempfile::TempDir>,
}

/// Runs one testbed call.
pub fn run(args: &TestbedArgs) -> Result<Outcome> {
    if !(args.seconds.is_finite() && (2.0..=600.0).contains(&args.seconds)) {
        bail!("--seconds must be between 2 and 600");
    }
    if let Some(t) = args.restart_relay_at {
        if !(t.is_finite() && t > 0.0 && t < args.seconds) {
            bail!("--restart-relay-at must be inside the call (0 < S < --seconds)");
        }
    }
    let t_start = Instant::now();
    let bins = find_bins()?;
    netns::check_available()?;
    let node_has_relay = help_mentions(&bins.confab, &["call"], "--relay");
    let room_has_relay = help_mentions(&bins.confab, &["room", "create"], "--relay");
    let has_dump = help_mentions(&bins.confab, &["call"], "--dump-opus");
    let natted = [args.nat_a, args.nat_b]
        .iter()
        .any(|k| *k != TestbedNat::Public);
    if natted && !node_has_relay {
        bail!(
            "this confab binary has no `call --relay`; endpoints behind NAT cannot be reached \
             (only --nat-a public --nat-b public works until the node has relay support)"
        );
    }
    let tcpdump = if args.check_relay_blind {
        Some(which("tcpdump").ok_or_else(|| {
            anyhow!("--check-relay-blind needs tcpdump (apt-get install tcpdump)")
        })?)
    } else {
        None
    };

    let work = tempfile::Builder::new()
        .prefix("confab-testbed-")
        .tempdir()
        .context("creating a working directory")?;
    let wd = work.path().to_path_buf();
    let net = Net::new()?;
    let (relay_ns, ea, eb) = build(&net, args.nat_a, args.nat_b)?;

    // The relay.
    let relay_data = wd.join("relay");
    let (mut relay, relay_peer) =
        start_relay(&net, &bins, &relay_ns, &relay_data, &wd.join("relay.log"))?;
    let relay_addr = format!("/ip4/{RELAY_IP}/tcp/{PORT}/p2p/{relay_peer}");

    // Capture on the relay's only interface: everything it receives and forwards.
    let pcap = wd.join("relay.pcap");
    let mut capture = match &tcpdump {
        Some(td) => {
            let mut p = Proc::spawn(
                &net,
                "tcpdump",
                Some(&relay_ns),
                td,
                &[
                    OsString::from("-i"),
                    OsString::from("wan"),
                    OsString::from("-n"),
                    OsString::from("-U"),
                    OsString::from("-s"),
                    OsString::from("0"),
                    OsString::from("-w"),
                    pcap.as_os_str().to_owned(),
                ],
                &wd.join("tcpdump.log"),
            )?;
            // tcpdump says "listening on wan" on stderr once the capture runs.
            let log = wd.join("tcpdump.log");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("listening on") {
                    break;
                }
                if p.exited() || Instant::now() > deadline {
                    bail!("tcpdump did not start: {}", text.trim());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Some(p)
        }
        None => None,
    };

    // Accounts and the room.
    let eps = [&ea, &eb];
    let dirs: Vec<PathBuf> = eps
        .iter()
        .map(|e| wd.join(format!("node-{}", e.label)))
        .collect();
    for (e, d) in eps.iter().zip(&dirs) {
        confab(&bins, d, &["init", "--name", e.label])?;
    }
    let listen = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"];
    let mut create: Vec<String> = vec!["room".into(), "create".into(), "--json".into()];
    for l in listen {
        create.extend(["--listen".into(), l.into()]);
    }
    if ea.kind == TestbedNat::Public {
        for l in [
            format!("/ip4/{}/tcp/{PORT}", ea.public_ip),
            format!("/ip4/{}/udp/{PORT}/quic-v1", ea.public_ip),
        ] {
            create.extend(["--announce".into(), l]);
        }
    }
    if room_has_relay {
        create.extend(["--relay".into(), relay_addr.clone()]);
    } else if ea.kind != TestbedNat::Public {
        create.extend(["--announce".into(), format!("{relay_addr}/p2p-circuit")]);
    }
    let create_ref: Vec<&str> = create.iter().map(String::as_str).collect();
    let created: serde_json::Value = serde_json::from_str(&confab(&bins, &dirs[0], &create_ref)?)
        .context("room create printed no JSON")?;
    let ticket = created["ticket"]
        .as_str()
        .ok_or_else(|| anyhow!("room create printed no ticket"))?
        .to_string();
    let room_id = confab_protocol::ticket::Ticket::parse(&ticket)
        .map_err(|e| anyhow!("the ticket does not parse: {e}"))?
        .room_id;
    let setup_ms = t_start.elapsed().as_millis() as u64;

    // The call.
    let mut calls = Vec::new();
    let mut dumps = Vec::new();
    for (i, (e, d)) in eps.iter().zip(&dirs).enumerate() {
        let mut a = os(&["call", &ticket, "--json", "--signal", &i.to_string()]);
        a.extend(os(&["--duration", &args.seconds.to_string()]));
        a.push("--output-dir".into());
        a.push(wd.join(format!("heard-{}", e.label)).into_os_string());
        if i > 0 {
            for l in listen {
                a.extend(os(&["--listen", l]));
            }
        }
        if node_has_relay {
            a.extend(os(&["--relay", &relay_addr]));
        }
        let dump = wd.join(format!("sent-{}.opus", e.label));
        if has_dump {
            a.push("--dump-opus".into());
            a.push(dump.clone().into_os_string());
        }
        dumps.push(has_dump.then_some(dump));
        let mut full = vec![OsString::from("--data-dir"), d.as_os_str().to_owned()];
        full.extend(a);
        calls.push(Proc::spawn(
            &net,
            &format!("confab {}", e.label),
            Some(&e.ns),
            &bins.confab,
            &full,
            &wd.join(format!("node-{}.log", e.label)),
        )?);
    }
    let call_start = Instant::now();

    // The relay restart, if asked for.
    let mut restart = None;
    let mut killed_ms = None;
    if let Some(at) = args.restart_relay_at {
        let when = call_start + Duration::from_secs_f64(at);
        std::thread::sleep(when.saturating_duration_since(Instant::now()));
        let down = Instant::now();
        killed_ms = Some(confab_node::call::now_ms());
        relay.terminate(Duration::from_secs(10));
        net.untrack(relay.pid);
        let (p, peer) = start_relay(&net, &bins, &relay_ns, &relay_data, &wd.join("relay-2.log"))?;
        relay = p;
        restart = Some(RelayRestart {
            at_s: at,
            down_ms: down.elapsed().as_millis() as u64,
            same_peer_id: peer == relay_peer,
        });
    }

    let deadline = call_start + Duration::from_secs_f64(args.seconds) + CALL_SLACK;
    let mut reports: Vec<Option<CallReport>> = Vec::new();
    for c in calls.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        let status = c.wait_exit(left);
        net.untrack(c.pid);
        let out = c.rest_of_stdout();
        let _ = std::fs::write(
            wd.join(format!("report-{}.json", c.name.replace(' ', "-"))),
            &out,
        );
        let parsed = serde_json::from_str::<CallReport>(out.trim()).ok();
        if parsed.is_none() {
            eprintln!("testbed: {} ended with {status:?} and no report", c.name);
        }
        reports.push(parsed);
    }
    if let Some(c) = capture.as_mut() {
        c.terminate(Duration::from_secs(5));
        net.untrack(c.pid);
    }
    relay.terminate(Duration::from_secs(10));
    net.untrack(relay.pid);

    let names: Vec<String> = eps.iter().map(|e| e.label.to_string()).collect();
    let predicted = predict_testbed_path(args.nat_b, args.nat_a).to_string();
    let (pairs, nodes, mut ok) = analyse(&names, &reports, &predicted, killed_ms);

    let relay_capture = match capture {
        Some(_) => {
            // B's audio crosses the relay toward A (and A's toward B); check both senders.
            let mut needles = blind::Needles::default();
            for (i, r) in reports.iter().enumerate() {
                needles.add_pcm(&audio::test_signal(i, SIGNAL_SECS));
                if let Some(Some(d)) = dumps.get(i) {
                    needles.add_opus_dump(d)?;
                }
                let _ = r;
            }
            needles.add_bytes("room id", &room_id);
            needles.add_bytes("room id (hex)", hex(&room_id).as_bytes());
            let bytes =
                std::fs::read(&pcap).with_context(|| format!("reading {}", pcap.display()))?;
            let f = blind::check(&bytes, &needles)?;
            ok &= f.clean();
            Some(f)
        }
        None => None,
    };

    let namespaces: Vec<String> = ["inet", "relay", "a", "ra", "b", "rb"]
        .iter()
        .map(|r| net.ns(r))
        .filter(|n| net.existing().contains(n))
        .collect();
    drop(net);
    let keep = args.keep;
    let report = TestbedReport {
        participants: 2,
        pairs,
        ok,
        nodes,
        testbed: TestbedInfo {
            nat_a: kind_name(args.nat_a).into(),
            nat_b: kind_name(args.nat_b).into(),
            seconds: args.seconds,
            relay_peer_id: relay_peer,
            node_has_relay,
            relay_restart: restart,
            setup_ms,
            total_ms: t_start.elapsed().as_millis() as u64,
            namespaces,
            workdir: keep.then(|| wd.display().to_string()),
        },
        relay_capture,
    };
    let work = if keep {
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Scores every (sender, receiver) pair as `confab demo` does (the same code), plus the gap
/// analysis and the predicted path.
fn analyse(
    names: &[String],
    reports: &[Option<CallReport>],
    predicted: &str,
    killed_ms: Option<u64>,
) -> (Vec<TestbedPair>, Vec<NodeUsage>, bool) {
    let (scored, nodes, ok) = demo::score(names, reports, |si, ri, heard| {
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
            demo::fmt_ms(p.mouth_to_ear_ms.p50),
            demo::fmt_ms(p.mouth_to_ear_ms.p95),
            p.mos,
            p.correlation,
            demo::fmt_ms(tp.longest_gap_ms),
            if demo::pair_ok(p) { "ok" } else { "FAIL" }
        );
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

/// `confab-sim testbed`: runs, prints, and fails (exit 1) unless every pair worked.
pub fn main(args: &TestbedArgs) -> Result<()> {
    let out = run(args)?;
    if args.json {
        println!("{}", serde_json::to_string(&out.report)?);
    } else {
        print_table(&out.report);
    }
    if out.report.ok {
        Ok(())
    } else {
        bail!("some pairs did not meet the targets")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_of_silenced_stretch_is_measured() {
        let sent = audio::test_signal(0, 4.0);
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

    #[test]
    fn rulesets_differ_by_kind() {
        assert!(nat_rules(TestbedNat::RandomPort).contains("fully-random"));
        assert!(!nat_rules(TestbedNat::PortPreserving).contains("random"));
    }
}
