//! The node's one clock.
//!
//! Media timestamps are wall-clock milliseconds since the Unix epoch, shared by every node of
//! a host, so mouth-to-ear figures are exact on one host (offset by clock skew across hosts).
//! Timers and deadlines use the monotonic [`Instant`]. Everything below the driver takes
//! `now` as an argument; only the driver and the command layer read the clock.

use std::time::{SystemTime, UNIX_EPOCH};

pub use tokio::time::Instant;

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Wall-clock microseconds since the Unix epoch: where a millisecond is too coarse (the
/// playout timeline and the capture origin that mouth-to-ear on the signal compares).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The monotonic clock.
pub fn now() -> Instant {
    Instant::now()
}

/// One reading of both clocks, taken once per turn of the driver and passed down.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: Instant,
    pub ms: u64,
    /// The same wall-clock reading in microseconds (`ms` is it truncated).
    pub us: u64,
}

impl Now {
    pub fn read() -> Self {
        let us = now_us();
        Self {
            at: Instant::now(),
            ms: us / 1_000,
            us,
        }
    }
}
