//! The testbed's report: the `confab demo --json` object plus the testbed's own fields.

use serde::Serialize;

use super::blind;
use super::node::{NodeUsage, Pair};

/// One direction of the call: the demo's pair plus what the testbed adds.
#[derive(Debug, Clone, Serialize)]
pub struct TestbedPair {
    #[serde(flatten)]
    pub pair: Pair,
    /// What the simulator's model says (`confab_simulator::realnat::predict`, the later
    /// member dialing, over the transports the node punches on): the path, and the set-up
    /// times from the dial to the open connection and to the punched one.
    pub predicted_path: String,
    pub predicted_open_ms: f64,
    pub predicted_punched_ms: Option<f64>,
    /// Measured: from the later of the two members' start to the receiver's admission of the
    /// sender, and to its moving to the punched connection (the admission, if it was
    /// punched by then).
    pub setup_ms: Option<f64>,
    pub punched_ms: Option<f64>,
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
    /// Each member's home, in order (a, b, c, ...).
    pub homes: Vec<String>,
    /// Whether the carrier-grade NAT hairpins.
    pub hairpin: bool,
    /// The transports the prediction assumes the node punches over.
    pub transports: Vec<String>,
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
