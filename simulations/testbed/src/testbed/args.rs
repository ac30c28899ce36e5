//! The flags of `confab-sim testbed`.

use clap::Args;

use confab_simulator::nat::TestbedNat;

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

impl TestbedArgs {
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
        Ok(())
    }
}
