//! The flags of `confab-sim testbed`.

use std::path::PathBuf;

use clap::Args;

use confab_simulator::realnat::Home;

/// Most members one testbed call holds (each behind its own router).
pub const MAX_HOMES: usize = 8;

/// Flags of `confab-sim testbed`.
#[derive(Debug, Clone, Args)]
pub struct TestbedArgs {
    /// Where one member sits, in order; repeat for each member (2 to 8). The first creates
    /// the room, the others join from its ticket. A NAT kind of the simulator — public,
    /// udp-blocked, eim-eif, eim-adf, eim-apdf (port-preserving), apdm-apdf (random-port) —
    /// optionally with `@cgnat` (behind the shared carrier-grade NAT as well).
    #[arg(long = "home", value_name = "KIND", value_parser = parse_home)]
    pub homes: Vec<Home>,
    /// Where endpoint A sits (the same as a first --home).
    #[arg(long, value_parser = parse_home, conflicts_with = "homes")]
    pub nat_a: Option<Home>,
    /// Where endpoint B sits (the same as a second --home).
    #[arg(long, value_parser = parse_home, conflicts_with = "homes")]
    pub nat_b: Option<Home>,
    /// Whether the carrier-grade NAT hairpins (forwards a packet from one of its homes to
    /// its own public address back to the home behind that port): on or off.
    #[arg(long, default_value = "on", value_parser = parse_on_off)]
    pub hairpin: bool,
    /// Run a two-home call for every ordered pair of kinds (`--kinds`, default all) and
    /// write the comparison with the simulator's predictions (matrix.csv, matrix.md).
    #[arg(long, conflicts_with_all = ["homes", "nat_a", "nat_b", "restart_relay_at", "check_relay_blind"])]
    pub matrix: bool,
    /// With --matrix: the kinds to pair, comma-separated (default: every kind the testbed
    /// makes).
    #[arg(long, value_delimiter = ',', value_parser = parse_home, requires = "matrix")]
    pub kinds: Vec<Home>,
    /// With --matrix: calls per pair of kinds (the punch is a race in places; see
    /// docs/simulations.md).
    #[arg(long, default_value_t = 1, requires = "matrix")]
    pub runs: u32,
    /// With --matrix: where to write matrix.csv, matrix.md and each call's report.
    #[arg(long, default_value = "out/testbed-matrix", requires = "matrix")]
    pub out: PathBuf,
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

fn parse_home(s: &str) -> Result<Home, String> {
    Home::parse(s)
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{s:?}: use on or off")),
    }
}

impl TestbedArgs {
    /// The members' homes, from `--home` or `--nat-a`/`--nat-b`.
    pub fn homes(&self) -> anyhow::Result<Vec<Home>> {
        let homes = match (self.nat_a, self.nat_b) {
            (Some(a), Some(b)) => vec![a, b],
            (None, None) => self.homes.clone(),
            _ => anyhow::bail!("give both --nat-a and --nat-b, or --home for each member"),
        };
        if !(2..=MAX_HOMES).contains(&homes.len()) {
            anyhow::bail!(
                "a call needs 2 to {MAX_HOMES} members: give --home KIND for each (got {})",
                homes.len()
            );
        }
        Ok(homes)
    }

    /// The range checks clap cannot express.
    pub fn check(&self) -> anyhow::Result<()> {
        if !(self.seconds.is_finite() && (2.0..=600.0).contains(&self.seconds)) {
            anyhow::bail!("--seconds must be between 2 and 600");
        }
        if let Some(t) = self.restart_relay_at {
            if !(t.is_finite() && t > 0.0 && t < self.seconds) {
                anyhow::bail!("--restart-relay-at must be inside the call (0 < S < --seconds)");
            }
        }
        if !self.matrix {
            self.homes()?;
        }
        Ok(())
    }
}
