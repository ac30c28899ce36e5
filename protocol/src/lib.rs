//! confab's sans-IO core.
//!
//! Everything here is pure computation over bytes, time and randomness that the caller
//! hands in: no sockets, no clock, no threads, no OS randomness. The node runs this code
//! over libp2p; the simulator runs the very same code over modelled links in virtual time.
//!
//! * [`wire`] — versioned wire formats with size limits on everything decoded.
//! * [`ticket`] — the copy-pasteable room ticket (`confab1…`).
//! * [`crypto`] — identities, the pairwise Noise handshake, sender keys and media frame encryption.
//! * [`room`] — the room state machine: admission, roster, join/leave, key epochs.
//! * [`jitter`] — the adaptive jitter buffer.
//! * [`stats`] — per-stream media statistics and the E-model MOS estimate.
//! * [`video`] — the video track: fragments, sealing, bounded reassembly, ordering, congestion.

pub mod crypto;
pub mod error;
pub mod fuzzing;
pub mod jitter;
pub mod room;
pub mod stats;
pub mod ticket;
pub mod video;
pub mod wire;

pub use error::{Error, Result};

/// Identifier of a room: 16 random bytes chosen by whoever created it.
pub type RoomId = [u8; 16];
/// The secret shared by everyone holding the room's ticket.
pub type RoomSecret = [u8; 32];
