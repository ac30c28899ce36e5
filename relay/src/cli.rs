//! Command-line interface: flags that override the config file.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};
use libp2p::{Multiaddr, PeerId};

use crate::{AccessMode, Config, Error};

/// confab-relay: a community relay for confab calls.
#[derive(Debug, Parser)]
#[command(name = "confab-relay", version, about)]
pub struct Cli {
    /// What to do; without a subcommand the relay runs.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options shared by every subcommand.
    #[command(flatten)]
    pub opts: RunOpts,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay (the default).
    Run,
    /// Print the relay's peer id (creating the identity key if there is none) and exit.
    PeerId,
    /// Print the effective configuration as TOML and exit.
    PrintConfig,
    /// Measure the relay's cost per relayed audio stream.
    Bench(BenchArgs),
}

/// Options of `bench`.
#[derive(Debug, Args, Clone)]
pub struct BenchArgs {
    /// Concurrent streams (circuits) to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,100,500")]
    pub streams: Vec<usize>,
    /// Seconds to measure at each size (after setup).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Frame interval in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub frame_ms: u64,
    /// Frame payload in bytes.
    #[arg(long, default_value_t = 80)]
    pub frame_bytes: usize,
    /// CPUs the relay process is pinned to (a `taskset -c` list, e.g. `0`), so that it and
    /// the load generator (pin this process with `taskset`) do not share a core.
    #[arg(long, value_name = "LIST")]
    pub relay_cpus: Option<String>,
}

/// Flags of the relay; each overrides the corresponding config-file value.
#[derive(Debug, Args, Clone, Default)]
pub struct RunOpts {
    /// TOML config file (see relay/example.toml).
    #[arg(long, short = 'c', global = true)]
    pub config: Option<PathBuf>,
    /// State directory (holds identity.key).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Identity key file (default: <data-dir>/identity.key).
    #[arg(long, global = true)]
    pub identity: Option<PathBuf>,
    /// Listen address (repeatable); replaces the configured list.
    #[arg(long = "listen", value_name = "MULTIADDR")]
    pub listen: Vec<Multiaddr>,
    /// Public address of this relay (repeatable); replaces the configured list.
    #[arg(long = "external-addr", value_name = "MULTIADDR")]
    pub external_addrs: Vec<Multiaddr>,
    /// Do not treat listen addresses as external ones.
    #[arg(long)]
    pub no_listen_as_external: bool,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Include IP addresses in logs.
    #[arg(long)]
    pub log_ips: bool,
    /// Access policy: open or allowlist.
    #[arg(long, value_name = "MODE")]
    pub access: Option<AccessMode>,
    /// Peer id allowed under the allowlist policy (repeatable); replaces the configured list.
    #[arg(long = "allow", value_name = "PEER_ID")]
    pub allow: Vec<PeerId>,
    /// Reservations held at once, in total.
    #[arg(long)]
    pub max_reservations: Option<usize>,
    /// Reservations one peer may hold at once.
    #[arg(long)]
    pub max_reservations_per_peer: Option<usize>,
    /// Reservation lifetime in seconds.
    #[arg(long)]
    pub reservation_duration_secs: Option<u64>,
    /// Circuits open at once, in total.
    #[arg(long)]
    pub max_circuits: Option<usize>,
    /// Circuits one peer may be part of at once.
    #[arg(long)]
    pub max_circuits_per_peer: Option<usize>,
    /// Longest circuit life in seconds.
    #[arg(long)]
    pub max_circuit_duration_secs: Option<u64>,
    /// Byte budget of one circuit.
    #[arg(long)]
    pub max_circuit_bytes: Option<u64>,
    /// New reservations per peer per hour (0 = unlimited).
    #[arg(long)]
    pub reservations_per_peer_per_hour: Option<u32>,
    /// New circuits per source peer per hour (0 = unlimited).
    #[arg(long)]
    pub circuits_per_peer_per_hour: Option<u32>,
    /// Peer ids holding reservations at once from one IPv4 address or IPv6 /64 (0 = unlimited).
    #[arg(long)]
    pub max_reservations_per_ip: Option<usize>,
    /// Circuits open at once from one IPv4 address or IPv6 /64 (0 = unlimited).
    #[arg(long)]
    pub max_circuits_per_ip: Option<usize>,
    /// Refuse new connections above this process memory, in MiB (0 = off).
    #[arg(long)]
    pub max_memory_mib: Option<u64>,
}

impl RunOpts {
    /// Load the config file (or the defaults) and apply the flags on top.
    pub fn resolve(&self) -> Result<Config, Error> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        self.apply(&mut config);
        config.validate()?;
        Ok(config)
    }

    /// Apply the flags that were given to `config`.
    pub fn apply(&self, config: &mut Config) {
        if let Some(d) = &self.data_dir {
            config.data_dir = d.clone();
        }
        if let Some(i) = &self.identity {
            config.identity = Some(i.clone());
        }
        if !self.listen.is_empty() {
            config.listen = self.listen.clone();
        }
        if !self.external_addrs.is_empty() {
            config.external_addrs = self.external_addrs.clone();
        }
        if self.no_listen_as_external {
            config.listen_as_external = false;
        }
        if self.metrics.is_some() {
            config.metrics = self.metrics;
        }
        if self.log_ips {
            config.log_ips = true;
        }
        if let Some(a) = self.access {
            config.access.mode = a;
        }
        if !self.allow.is_empty() {
            config.access.allowlist = self.allow.clone();
            if self.access.is_none() {
                config.access.mode = AccessMode::Allowlist;
            }
        }
        let l = &mut config.limits;
        set(&mut l.max_reservations, self.max_reservations);
        set(
            &mut l.max_reservations_per_peer,
            self.max_reservations_per_peer,
        );
        set(
            &mut l.reservation_duration_secs,
            self.reservation_duration_secs,
        );
        set(&mut l.max_circuits, self.max_circuits);
        set(&mut l.max_circuits_per_peer, self.max_circuits_per_peer);
        set(
            &mut l.max_circuit_duration_secs,
            self.max_circuit_duration_secs,
        );
        set(&mut l.max_circuit_bytes, self.max_circuit_bytes);
        set(
            &mut l.reservations_per_peer_per_hour,
            self.reservations_per_peer_per_hour,
        );
        set(
            &mut l.circuits_per_peer_per_hour,
            self.circuits_per_peer_per_hour,
        );
        set(&mut l.max_reservations_per_ip, self.max_reservations_per_ip);
        set(&mut l.max_circuits_per_ip, self.max_circuits_per_ip);
        set(&mut config.connections.max_memory_mib, self.max_memory_mib);
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}
