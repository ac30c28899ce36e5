//! `confab-sim testbed`: the real `confab` and `confab-relay` binaries in Linux network
//! namespaces behind real kernel NAT (nftables masquerade).
//!
//! A creates the room (with `--relay` when the node has it), both call for `--seconds`, and
//! the report is the `confab demo --json` object, scored the same way, with a few extra
//! fields. The topology is in [`topology`]; the steps of a run in [`run`].
//!
//! * [`args`] — the flags. [`report`] — the report's types. [`run`] — one call.
//! * [`topology`] — namespaces and veths; [`rules`] — the NAT routers' nftables rulesets.
//! * [`predict`] — the simulator's prediction for each pair; [`matrix`] — every pair of
//!   kinds against the prediction.
//! * [`netns`] — `ip netns` and cleanup; [`proc`] — processes in namespaces;
//!   [`bins`] — the binaries and what they support.
//! * [`score`] — the demo's scoring plus gap analysis, and the table.
//! * [`blind`] — checking a relay capture for audio and the room id.
//! * `node` — the one place that names what is taken from the node crate.

pub mod args;
pub mod bins;
pub mod blind;
pub mod matrix;
pub mod netns;
mod node;
pub mod predict;
pub mod proc;
pub mod report;
pub mod rules;
pub mod run;
pub mod score;
pub mod topology;

use anyhow::{bail, Result};

pub use args::TestbedArgs;

/// `confab-sim testbed`: runs, prints, and fails (exit 1) unless every pair worked.
pub fn main(args: &TestbedArgs) -> Result<()> {
    if args.matrix {
        return matrix::main(args);
    }
    let out = run::run(args)?;
    if args.json {
        println!("{}", serde_json::to_string(&out.report)?);
    } else {
        score::print_table(&out.report);
    }
    if out.report.ok {
        Ok(())
    } else {
        bail!("some pairs did not meet the targets")
    }
}
