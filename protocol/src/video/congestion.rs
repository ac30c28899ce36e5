//! At the sender: what still goes to a peer whose video queue overflows, and how often the
//! page is asked for a keyframe.
//!
//! Each peer has a level: 0 sends every temporal layer, 1 only the base layer (half the
//! frame rate with `L1T2`: the upper layer's frames are referred to by none, so they drop
//! cleanly). A drop in the queue toward the peer raises the level (at most one step per
//! [`STEP_MS`]); [`RECOVER_MS`] without a drop lowers it again. Other peers are untouched.

/// Least time between two level changes.
pub const STEP_MS: u64 = 500;
/// Time without a drop before the level goes back down.
pub const RECOVER_MS: u64 = 3_000;
/// Highest level.
pub const MAX_LEVEL: u8 = 1;
/// Least time between two keyframes forced by requests.
pub const KEYFRAME_EVERY_MS: u64 = 500;

#[derive(Debug, Clone, Default)]
pub struct PeerCongestion {
    level: u8,
    last_drop: Option<u64>,
    last_step: Option<u64>,
    /// Frames not sent to this peer because of its level.
    pub thinned: u64,
    /// Times the level went up.
    pub raised: u64,
}

impl PeerCongestion {
    pub fn level(&self) -> u8 {
        self.level
    }

    fn may_step(&self, now_ms: u64) -> bool {
        self.last_step
            .is_none_or(|t| now_ms.saturating_sub(t) >= STEP_MS)
    }

    /// The queue toward this peer dropped a frame.
    pub fn on_drop(&mut self, now_ms: u64) {
        self.last_drop = Some(now_ms);
        if self.level < MAX_LEVEL && self.may_step(now_ms) {
            self.level += 1;
            self.raised += 1;
            self.last_step = Some(now_ms);
        }
    }

    /// Whether a frame of temporal `layer` goes to this peer now.
    pub fn admits(&mut self, now_ms: u64, layer: u8) -> bool {
        let quiet = self
            .last_drop
            .is_none_or(|t| now_ms.saturating_sub(t) >= RECOVER_MS);
        let settled = self
            .last_step
            .is_none_or(|t| now_ms.saturating_sub(t) >= RECOVER_MS);
        if self.level > 0 && quiet && settled {
            self.level -= 1;
            self.last_step = Some(now_ms);
        }
        let ok = self.level == 0 || layer == 0;
        if !ok {
            self.thinned += 1;
        }
        ok
    }
}

/// Requests for a keyframe of one track, coalesced: at most one per [`KEYFRAME_EVERY_MS`].
#[derive(Debug, Clone, Default)]
pub struct KeyframeLimiter {
    pending: bool,
    last: Option<u64>,
    pub requested: u64,
    pub granted: u64,
}

impl KeyframeLimiter {
    pub fn request(&mut self) {
        self.pending = true;
        self.requested += 1;
    }

    /// Whether to ask the encoder for a keyframe now.
    pub fn poll(&mut self, now_ms: u64) -> bool {
        let due = self
            .last
            .is_none_or(|t| now_ms.saturating_sub(t) >= KEYFRAME_EVERY_MS);
        if self.pending && due {
            self.pending = false;
            self.last = Some(now_ms);
            self.granted += 1;
            return true;
        }
        false
    }

    /// When a pending request becomes due.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.pending
            .then(|| self.last.map_or(0, |t| t + KEYFRAME_EVERY_MS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_thin_the_peer_and_quiet_restores_it() {
        let mut c = PeerCongestion::default();
        assert!(c.admits(0, 1));
        c.on_drop(100);
        assert_eq!(c.level(), 1);
        assert!(c.admits(110, 0));
        assert!(!c.admits(120, 1));
        c.on_drop(200);
        assert_eq!(c.level(), 1, "at most the top level");
        assert!(
            !c.admits(3_100, 1),
            "3 s since the step, but not since the drop"
        );
        assert!(c.admits(3_200, 1), "recovered");
        assert_eq!(c.level(), 0);
        assert_eq!((c.thinned, c.raised), (2, 1));
    }

    #[test]
    fn keyframe_requests_are_coalesced() {
        let mut k = KeyframeLimiter::default();
        assert!(!k.poll(0));
        k.request();
        k.request();
        assert!(k.poll(0));
        assert!(!k.poll(10));
        k.request();
        assert!(!k.poll(400));
        assert_eq!(k.poll_timeout(), Some(500));
        assert!(k.poll(500));
        assert_eq!((k.requested, k.granted), (3, 2));
    }
}
