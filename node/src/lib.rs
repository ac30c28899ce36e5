//! The confab node: the IO shell around `confab-protocol`.
//!
//! * [`store`] — the sled account store; [`account`], [`history`], [`seal`] — export,
//!   import, delete, call history and passphrase sealing on it.
//! * [`net`] — the libp2p swarm and the `/confab/room/1` and `/confab/media/1` protocols.
//! * [`relays`] — reservations on community relays, kept across relay restarts.
//! * [`call`] — the call loop: room state machine, media capture, encryption, playout.
//! * [`codec`] / [`audio`] — Opus, WAV files, test signals and their comparison.
//! * [`cli`] / [`demo`] — the `confab` command line and the one-command demo.

pub mod account;
pub mod account_cmd;
pub mod audio;
pub mod bench;
pub mod call;
pub mod cli;
pub mod codec;
pub mod demo;
pub mod history;
pub mod net;
pub mod relays;
pub mod seal;
pub mod store;
