//! confab-simulator: a deterministic discrete-event network simulator over confab's
//! protocol crate.
//!
//! The simulator drives the real [`confab_protocol::room::Room`] state machines (Noise
//! handshakes, admission, rosters, sender keys and rekeying), the real
//! [`confab_protocol::jitter::JitterBuffer`] and the real E-model statistics, over modelled
//! links, NATs and relays, in virtual time, with one seeded random number generator.
//! Nothing in this library reads a clock or the OS's randomness: the same scenario and seed
//! give the same bytes out. It depends on `confab-protocol` and plain crates only (no
//! tokio, libp2p, sled or the node), so it can be embedded in other programs:
//!
//! ```no_run
//! use std::path::Path;
//!
//! use confab_simulator::scenario::{override_param, Scenario};
//!
//! # fn main() -> confab_simulator::Result<()> {
//! // A scenario file as it is ...
//! let census = Scenario::load(Path::new("simulations/scenarios/nat-census.toml"))?;
//! let out = confab_simulator::sim::run(&census, Some(7), &mut |_done_us, _total_us| {});
//! println!("hole punch success: {:?}", out.summary.holepunch_success_rate);
//! confab_simulator::report::write_all(&out, Path::new("out/census"))?;
//!
//! // ... or from text, with a field overridden as `--param` would.
//! let text = r#"
//! name = "two"
//! duration_s = 20.0
//! [nat.mix]
//! public = 1.0
//! [[rooms]]
//! count = 1
//! size = 2
//! "#;
//! let text = override_param(text, "rooms.0.size", "4")?;
//! let out = confab_simulator::sim::run(&Scenario::parse(&text, "two")?, None, &mut |_, _| {});
//! assert_eq!(out.summary.nodes, 4);
//! # Ok(())
//! # }
//! ```
//!
//! * [`scenario`] — the TOML scenario format, its validation and parameter overrides.
//! * [`nat`] — RFC 4787 NAT behaviours, a packet-level hole-punching model and
//!   [`nat::predict_path`].
//! * [`realnat`] — the real-NAT testbed's homes (double NAT included) and what the model
//!   predicts for a pair of them; [`timing`] — the model's set-up times.
//! * [`link`] — Gilbert–Elliott loss and bandwidth-limited queues.
//! * [`sim`] — the event-driven engine and [`sim::run`].
//! * [`report`] — `summary.json`, CSV series and plots.
//! * [`sweep`] — parameter grids run in parallel.

pub mod error;
pub mod link;
pub mod nat;
pub mod plot;
pub mod realnat;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod sim;
pub mod sweep;
pub mod timing;

pub use error::{Error, Result};
