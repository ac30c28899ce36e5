//! The binaries the testbed runs, what they support, and one-shot `confab` commands.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Where the binaries are.
#[derive(Debug, Clone)]
pub struct Bins {
    pub confab: PathBuf,
    pub relay: PathBuf,
}

/// What this node binary supports (older ones lack relays and Opus dumps).
#[derive(Debug, Clone, Copy)]
pub struct Features {
    /// `confab call --relay`.
    pub call_relay: bool,
    /// `confab room create --relay`.
    pub room_relay: bool,
    /// `confab call --dump-opus`.
    pub dump_opus: bool,
}

impl Bins {
    /// Asks the node binary's `--help` what it supports.
    pub fn features(&self) -> Features {
        Features {
            call_relay: help_mentions(&self.confab, &["call"], "--relay"),
            room_relay: help_mentions(&self.confab, &["room", "create"], "--relay"),
            dump_opus: help_mentions(&self.confab, &["call"], "--dump-opus"),
        }
    }

    /// Runs `confab --data-dir DIR ARGS...` to completion; returns its stdout.
    pub fn confab(&self, dir: &Path, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.confab)
            .arg("--data-dir")
            .arg(dir)
            .args(args)
            .env_remove("CONFAB_DATA_DIR")
            .output()
            .with_context(|| format!("running {}", self.confab.display()))?;
        if !out.status.success() {
            bail!(
                "confab {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// `CONFAB_BIN` / `CONFAB_RELAY_BIN`, else next to this executable (or one directory up, for
/// test executables in `target/<profile>/deps`).
pub fn find_bins() -> Result<Bins> {
    let exe = std::env::current_exe().context("locating the current executable")?;
    Ok(Bins {
        confab: find_bin(&exe, "CONFAB_BIN", "confab")?,
        relay: find_bin(&exe, "CONFAB_RELAY_BIN", "confab-relay")?,
    })
}

fn find_bin(exe: &Path, var: &str, name: &str) -> Result<PathBuf> {
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
}

fn help_mentions(bin: &Path, sub: &[&str], flag: &str) -> bool {
    Command::new(bin)
        .args(sub)
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
        .unwrap_or(false)
}

/// `name` on `PATH` (or in /usr/sbin, /usr/bin).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Command-line arguments from string slices.
pub fn os(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}
