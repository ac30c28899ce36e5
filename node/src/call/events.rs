//! What a running call tells whoever drives it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::CallError;
use super::policy::Path;
use super::report::{ReceivedStream, Sending, SentStream};

/// One remote sender's statistics at a tick.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamStats {
    pub from: String,
    pub name: String,
    pub path: Path,
    pub frames_received: u64,
    pub frames_lost: u64,
    pub frames_late: u64,
    pub frames_concealed: u64,
    pub frames_played: u64,
    pub jitter_ms: f64,
    /// Mouth-to-ear from the timestamps (transit and buffer plus frame and look-ahead).
    pub mouth_to_ear_p50_ms: Option<f64>,
    pub mouth_to_ear_p95_ms: Option<f64>,
    /// Frame complete at the sender to frame played.
    pub transit_buffer_p50_ms: Option<f64>,
    pub transit_buffer_p95_ms: Option<f64>,
    pub mos: f64,
    /// Level of what was played from this sender over the last tick, dBFS (-100 for silence).
    pub level_dbfs: f64,
    /// Whether this member records the call.
    pub recording: bool,
}

/// A snapshot of the whole call.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CallStats {
    pub at_ms: u64,
    pub frames_captured: u64,
    pub muted: bool,
    pub sent: BTreeMap<String, SentStream>,
    pub streams: Vec<StreamStats>,
    /// Statistics ticks the consumer of events was too slow to take.
    pub ticks_dropped: u64,
}

/// How a call ended.
#[derive(Debug, Clone)]
pub struct CallEnd {
    pub ended_ms: u64,
    /// Why the call ended early, if it did (a refusal, nobody reachable, ...).
    pub error: Option<CallError>,
    pub frames_captured: u64,
    /// Our own stream's timing.
    pub sending: Sending,
    pub sent: BTreeMap<String, SentStream>,
    /// Every sender heard during the call, the ones that left included.
    pub received: Vec<ReceivedStream>,
    pub admission_failures: u64,
}

/// Events of one call, in order. A slow consumer loses [`CallEvent::Stats`] ticks, never
/// the others.
#[derive(Debug, Clone)]
pub enum CallEvent {
    /// The call runs: the room is created, or a member admitted us.
    Joined {
        peer_id: String,
        name: String,
        room: String,
        started_ms: u64,
    },
    MemberAdmitted {
        at_ms: u64,
        peer: String,
        name: String,
        recording: bool,
        path: Path,
    },
    MemberLeft {
        at_ms: u64,
        peer: String,
        /// `Left`, `Disconnected`, `TimedOut`, ... (the room's reason).
        reason: String,
    },
    PathChanged {
        at_ms: u64,
        peer: String,
        path: Path,
    },
    RecordingChanged {
        at_ms: u64,
        peer: String,
        name: String,
        on: bool,
    },
    AdmissionFailed {
        at_ms: u64,
        peer: String,
        reason: String,
    },
    /// A member muted or unmuted its microphone.
    MuteChanged { at_ms: u64, peer: String, on: bool },
    /// A member's chat message (end-to-end encrypted on the way; kept nowhere by the node).
    Chat {
        at_ms: u64,
        peer: String,
        name: String,
        text: String,
    },
    /// Periodic statistics (every second by default).
    Stats(CallStats),
    /// The last event of a call.
    Ended(Box<CallEnd>),
}
