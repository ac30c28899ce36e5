//! One member's path: its connections, and the move from a circuit to a direct connection.
//!
//! When a direct connection to a relayed member appears (DCUtR's success, or a direct dial
//! that got through next to a circuit), the member counts as punched and its circuits are
//! closed [`CIRCUIT_GRACE`] later, so both ends know the direct connection first. A room
//! stream that breaks while the member is still connected over a path that may be moving is
//! judged [`BROKEN_JUDGE`] later, once the swarm's connection events have caught up.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::swarm::ConnectionId;
use serde::{Deserialize, Serialize};

use crate::clock::Instant;

/// After a direct connection to a relayed member appears, how long the circuit is kept.
pub const CIRCUIT_GRACE: Duration = Duration::from_millis(500);
/// How long after a room stream broke on a moving path the session is judged.
pub const BROKEN_JUDGE: Duration = Duration::from_millis(300);

/// How media reaches a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    /// Over a direct connection from the start.
    Direct,
    /// Through a relay's circuit.
    Relayed,
    /// Through a relay first, then over a hole-punched direct connection.
    Punched,
}

impl Path {
    pub fn as_str(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Relayed => "relayed",
            Path::Punched => "punched",
        }
    }
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the driver should do for this member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathAction {
    /// Close these relayed connections: a direct one replaces them.
    CloseCircuits(Vec<ConnectionId>),
    /// Decide now whether the broken session is moving or the member is gone.
    JudgeBroken,
}

/// One member's connections and path.
#[derive(Debug, Default)]
pub struct PathState {
    /// Open connections, and whether each goes through a relay circuit.
    conns: HashMap<ConnectionId, bool>,
    relayed: bool,
    punched: bool,
    /// The session is moving from a closed circuit to the direct connection: the next
    /// departure and admission are not reported as the member leaving and joining.
    pub migrating: bool,
    close_relayed_at: Option<Instant>,
    broken_at: Option<Instant>,
}

impl PathState {
    pub fn has_relayed(&self) -> bool {
        self.conns.values().any(|r| *r)
    }

    pub fn has_direct(&self) -> bool {
        self.conns.values().any(|r| !*r)
    }

    pub fn is_punched(&self) -> bool {
        self.punched
    }

    pub fn path(&self) -> Path {
        if self.punched {
            Path::Punched
        } else if self.relayed {
            Path::Relayed
        } else {
            Path::Direct
        }
    }

    /// A connection opened. Returns true when this made the member punched.
    pub fn on_connected(&mut self, id: ConnectionId, relayed: bool, now: Instant) -> bool {
        self.conns.insert(id, relayed);
        let mut punched_now = false;
        if !relayed && self.relayed {
            punched_now = !self.punched;
            self.punched = true;
            self.close_relayed_at.get_or_insert(now + CIRCUIT_GRACE);
        }
        self.relayed = relayed && !self.punched;
        punched_now
    }

    /// A connection closed. Returns how many remain.
    pub fn on_closed(&mut self, id: ConnectionId) -> usize {
        self.conns.remove(&id);
        self.conns.len()
    }

    /// DCUtR reported a successful punch. Returns true when this made the member punched.
    pub fn on_punched(&mut self, now: Instant) -> bool {
        let punched_now = !self.punched;
        self.punched = true;
        self.relayed = false;
        // Not at once: the other side may not have finished upgrading its end of the direct
        // connection, and would take the circuit's end for the end of the member.
        self.close_relayed_at = Some(now + CIRCUIT_GRACE);
        punched_now
    }

    /// The room stream closed. Returns true when the session should be judged later (the
    /// member is still connected over a path that may be moving), false when the member is
    /// gone now.
    pub fn on_room_stream_closed(&mut self, member: bool, connected: bool, now: Instant) -> bool {
        let later = member && connected && (self.punched || self.has_relayed());
        if later {
            self.broken_at = Some(now + BROKEN_JUDGE);
        }
        later
    }

    /// After a punch, while the circuit is still open: no session may be opened (libp2p-stream
    /// picks any connection, and the session must not land on the circuit again).
    pub fn circuit_closing(&self) -> bool {
        self.punched && self.has_direct() && self.has_relayed()
    }

    /// The circuit is gone and the direct connection stays: the session may reopen there.
    pub fn direct_only_after_punch(&self) -> bool {
        self.punched && !self.has_relayed()
    }

    /// What is due at `now`.
    pub fn poll(&mut self, now: Instant) -> Vec<PathAction> {
        let mut out = Vec::new();
        if self.close_relayed_at.is_some_and(|t| now >= t) {
            self.close_relayed_at = None;
            if self.has_direct() && self.has_relayed() {
                let ids = self
                    .conns
                    .iter()
                    .filter(|(_, relayed)| **relayed)
                    .map(|(id, _)| *id)
                    .collect();
                out.push(PathAction::CloseCircuits(ids));
            }
        }
        if self.broken_at.is_some_and(|t| now >= t) {
            self.broken_at = None;
            out.push(PathAction::JudgeBroken);
        }
        out
    }

    /// The next time [`PathState::poll`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.close_relayed_at, self.broken_at]
            .into_iter()
            .flatten()
            .min()
    }
}
