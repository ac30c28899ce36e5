//! Network namespaces, veths and nftables NAT for the testbed, and the teardown guarantees.
//!
//! Everything the testbed creates lives in namespaces named `cfbt-<pid>-<run>-<role>`. A
//! process-wide registry remembers those namespaces and the processes started in them, so
//! that a [`Net`] going out of scope, a failure, or Ctrl-C (a signal thread) all end in the
//! same teardown: kill our processes, then delete our namespaces (which deletes their veths,
//! bridges and nftables rules with them). A sweep at start removes namespaces left behind by
//! an earlier run whose process is gone.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};

use anyhow::{bail, Context, Result};

/// Prefix of every namespace the testbed makes.
pub const PREFIX: &str = "cfbt-";

/// Resources of one live testbed run.
#[derive(Default)]
struct Resources {
    namespaces: Vec<String>,
    pids: Vec<u32>,
}

static REGISTRY: Mutex<BTreeMap<u64, Resources>> = Mutex::new(BTreeMap::new());
static NEXT_RUN: AtomicU64 = AtomicU64::new(1);
static SIGNALS: Once = Once::new();

fn registry() -> std::sync::MutexGuard<'static, BTreeMap<u64, Resources>> {
    // A panic while holding the lock leaves the data usable: teardown must still run.
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `ip` with these arguments; an error carries its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    run("ip", args, None)
}

/// Runs a command, feeding `stdin` if given; fails with its stderr on a non-zero exit.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<()> {
    let mut c = Command::new(program);
    c.args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = c
        .spawn()
        .with_context(|| format!("cannot run {program} (is it installed?)"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(text.as_bytes())
            .with_context(|| format!("writing to {program}"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Sends a signal (`TERM`, `KILL`, `INT`) to one process we started.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn netns_list() -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn netns_pids(ns: &str) -> Vec<u32> {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Kills the given processes, then everything still inside the namespaces (all of it started
/// by the testbed), then deletes the namespaces.
fn teardown(res: Resources) {
    for pid in &res.pids {
        signal(*pid, "KILL");
    }
    for ns in &res.namespaces {
        for pid in netns_pids(ns) {
            signal(pid, "KILL");
        }
    }
    for ns in &res.namespaces {
        let _ = ip(&["netns", "del", ns]);
    }
}

/// Removes namespaces with our prefix whose creating process no longer exists.
pub fn sweep_stale() {
    let mut stale = Resources::default();
    for ns in netns_list() {
        let Some(rest) = ns.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            stale.namespaces.push(ns);
        }
    }
    if !stale.namespaces.is_empty() {
        eprintln!(
            "testbed: removing {} stale namespace(s) of earlier runs",
            stale.namespaces.len()
        );
        teardown(stale);
    }
}

/// Installs (once) a thread that tears every live testbed down on SIGINT or SIGTERM and then
/// exits with 130.
fn install_signal_thread() {
    SIGNALS.call_once(|| {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("testbed: no signal handler ({e}); Ctrl-C may leave namespaces behind");
                return;
            }
        };
        // Register the handlers before returning, so that a signal arriving right after
        // setup is caught.
        let handlers = rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            Ok::<_, std::io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        });
        let (mut int, mut term) = match handlers {
            Ok(h) => h,
            Err(e) => {
                eprintln!("testbed: no signal handler ({e}); Ctrl-C may leave namespaces behind");
                return;
            }
        };
        let spawned = std::thread::Builder::new()
            .name("testbed-signals".into())
            .spawn(move || {
                rt.block_on(async {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                });
                eprintln!("testbed: interrupted; tearing down");
                let all: Vec<Resources> = std::mem::take(&mut *registry()).into_values().collect();
                for r in all {
                    teardown(r);
                }
                std::process::exit(130);
            });
        if let Err(e) = spawned {
            eprintln!("testbed: no signal thread ({e}); Ctrl-C may leave namespaces behind");
        }
    });
}

/// One run's namespaces. Dropping it tears everything down.
pub struct Net {
    run: u64,
    tag: String,
}

impl Net {
    /// Starts a run: sweeps stale namespaces, installs the signal thread, registers the run.
    pub fn new() -> Result<Net> {
        sweep_stale();
        install_signal_thread();
        let run = NEXT_RUN.fetch_add(1, Ordering::Relaxed);
        registry().insert(run, Resources::default());
        Ok(Net {
            run,
            tag: format!("{PREFIX}{}-{run}", std::process::id()),
        })
    }

    /// The namespace name of a role (`inet`, `relay`, `a`, `ra`, ...).
    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.tag)
    }

    /// Creates the namespace of a role, with its loopback up; returns its name.
    pub fn add_ns(&self, role: &str) -> Result<String> {
        let ns = self.ns(role);
        ip(&["netns", "add", &ns])?;
        if let Some(r) = registry().get_mut(&self.run) {
            r.namespaces.push(ns.clone());
        }
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Remembers a process started inside our namespaces, for teardown.
    pub fn track(&self, pid: u32) {
        if let Some(r) = registry().get_mut(&self.run) {
            r.pids.push(pid);
        }
    }

    /// Forgets a process that has been reaped.
    pub fn untrack(&self, pid: u32) {
        if let Some(r) = registry().get_mut(&self.run) {
            r.pids.retain(|p| *p != pid);
        }
    }

    /// A veth pair between two of our namespaces, created directly inside them (the host's
    /// namespace never sees it).
    pub fn veth(&self, ns1: &str, if1: &str, ns2: &str, if2: &str) -> Result<()> {
        ip(&[
            "-n", ns1, "link", "add", if1, "type", "veth", "peer", "name", if2, "netns", ns2,
        ])?;
        ip(&["-n", ns1, "link", "set", if1, "up"])?;
        ip(&["-n", ns2, "link", "set", if2, "up"])
    }

    /// Gives an interface an address (`a.b.c.d/len`).
    pub fn addr(&self, ns: &str, dev: &str, cidr: &str) -> Result<()> {
        ip(&["-n", ns, "addr", "add", cidr, "dev", dev])
    }

    /// Applies an nftables ruleset inside a namespace.
    pub fn nft(&self, ns: &str, ruleset: &str) -> Result<()> {
        run(
            "ip",
            &["netns", "exec", ns, "nft", "-f", "-"],
            Some(ruleset),
        )
    }

    /// Sets a sysctl inside a namespace.
    pub fn sysctl(&self, ns: &str, kv: &str) -> Result<()> {
        run("ip", &["netns", "exec", ns, "sysctl", "-q", "-w", kv], None)
    }

    /// Names of the namespaces of this run that currently exist.
    pub fn existing(&self) -> Vec<String> {
        netns_list()
            .into_iter()
            .filter(|n| n.starts_with(&format!("{}-", self.tag)))
            .collect()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let res = registry().remove(&self.run);
        if let Some(res) = res {
            teardown(res);
        }
    }
}

/// Whether this process can make namespaces (root, `ip netns` works). The error says why not.
pub fn check_available() -> Result<()> {
    let probe = format!("{PREFIX}{}-probe", std::process::id());
    ip(&["netns", "add", &probe]).context("`ip netns add` failed (the testbed needs root)")?;
    let nft = run(
        "ip",
        &["netns", "exec", &probe, "nft", "list", "ruleset"],
        None,
    );
    let _ = ip(&["netns", "del", &probe]);
    nft.context("nftables does not work inside a namespace")
}
