//! The confab node: the IO shell around `confab-protocol`.
//!
//! * [`node`] — [`Node`], the long-lived owner of the swarm, the relays' reservations and
//!   the identity, and its driver task; calls are started on it one after another.
//! * [`call`] — one call session: a [`call::CallHandle`] for commands, [`call::CallEvents`]
//!   for events, the session's state and handlers, and its sans-IO policy.
//! * [`net`] — the libp2p swarm, the two confab stream protocols, relay reservations.
//! * [`media`] — Opus, WAV files, test signals, audio sources and sinks.
//! * [`account`] — the sled account store, sealing, history, export/import/delete.
//! * [`score`] — scoring a call of test signals (the demo and the testbed).
//! * [`clock`] — the one clock.
//! * [`cmd`] — the `confab` command line (nothing else imports it).

pub mod account;
pub mod app;
pub mod call;
pub mod clock;
pub mod cmd;
pub mod media;
pub mod net;
pub mod node;
pub mod score;

pub use call::{CallConfig, CallEvent, CallEvents, CallHandle};
pub use node::{Node, NodeConfig};
