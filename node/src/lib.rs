//! The confab node: the IO shell around `confab-protocol`.
//!
//! * [`store`] — the sled account store.
//! * [`net`] — the libp2p swarm and the `/confab/room/1` and `/confab/media/1` protocols.
//! * [`call`] — the call loop: room state machine, media capture, encryption, playout.
//! * [`codec`] / [`audio`] — Opus, WAV files, test signals and their comparison.
//! * [`cli`] / [`demo`] — the `confab` command line and the one-command demo.

pub mod audio;
pub mod bench;
pub mod call;
pub mod cli;
pub mod codec;
pub mod demo;
pub mod net;
pub mod store;
