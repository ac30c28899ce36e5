//! confab-sim: a deterministic discrete-event network simulator over confab's protocol crate.
//!
//! The simulator drives the real [`confab_protocol::room::Room`] state machines (Noise
//! handshakes, admission, rosters, sender keys and rekeying), the real
//! [`confab_protocol::jitter::JitterBuffer`] and the real E-model statistics, over modelled
//! links, NATs and relays, in virtual time, with one seeded random number generator.
//! Nothing in this library reads a clock or the OS's randomness: the same scenario and seed
//! give the same bytes out.
//!
//! * [`scenario`] — the TOML scenario format, its validation and parameter overrides.
//! * [`nat`] — RFC 4787 NAT behaviours, a packet-level hole-punching model and
//!   [`nat::predict_path`].
//! * [`link`] — Gilbert–Elliott loss and bandwidth-limited queues.
//! * [`sim`] — the event-driven engine.
//! * [`report`] — `summary.json`, CSV series and plots.
//! * [`sweep`] — parameter grids run in parallel.

pub mod error;
pub mod link;
pub mod nat;
pub mod plot;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod sim;
pub mod sweep;

pub use error::{Error, Result};
