//! The report of a finished call (`confab call --json`), built from the call's events.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::events::{CallEnd, CallEvent};
use crate::account::HistoryEntry;

/// What one receiver measured about one sender.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReceivedStream {
    pub from: String,
    pub name: String,
    pub path: String,
    pub frames_received: u64,
    pub frames_lost: u64,
    pub frames_late: u64,
    pub frames_concealed: u64,
    pub frames_played: u64,
    /// Mouth-to-ear from the timestamps: transit and buffer plus the sender's algorithmic
    /// delay (frame and look-ahead) — the playout time of a sample minus its capture time.
    pub mouth_to_ear_p50_ms: Option<f64>,
    pub mouth_to_ear_p95_ms: Option<f64>,
    /// Frame complete at the sender to frame played.
    pub transit_buffer_p50_ms: Option<f64>,
    pub transit_buffer_p95_ms: Option<f64>,
    /// The sender's frame duration and algorithmic delay (frame plus look-ahead), ms.
    pub frame_ms: u8,
    pub algorithmic_delay_ms: f64,
    pub jitter_ms: f64,
    pub mos: f64,
    /// Sequence number of the first frame in the output file.
    pub first_seq: Option<u32>,
    pub output: Option<String>,
    /// The sender's audio on our playout timeline, if asked for (`--timeline-dir`).
    #[serde(default)]
    pub timeline: Option<TimelineFile>,
    pub recording: bool,
    /// What our speaker's ring held on average, ms, when the call played to a device
    /// (`confab call --speaker`); the mouth-to-ear figures above include it. The sender's
    /// microphone ring is on the sender's side and in its report (`sending`), not here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_playout_ms: Option<f64>,
}

/// How our own stream was timed: what a receiver's mouth-to-ear measurement needs.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Sending {
    /// Audio per frame, ms.
    pub frame_ms: u8,
    /// The encoder's look-ahead (OPUS_GET_LOOKAHEAD), µs.
    pub lookahead_us: u16,
    /// Capture time of the first sample we sent, ms since the Unix epoch: sample `n` of our
    /// stream was captured at `capture_origin_ms + n / 48`.
    /// (µs precision: a truncated millisecond would make every delay measured on the
    /// signal up to 1 ms too long.)
    pub capture_origin_ms: f64,
    /// What our microphone's ring held on average, ms, when the call captured from a device
    /// (`confab call --mic`): how much later than captured each frame was taken. A
    /// receiver's mouth-to-ear leaves it out (it cannot see it); add it for the whole path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_capture_ms: Option<f64>,
}

/// Where a receiver laid one sender's audio on its playout timeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimelineFile {
    /// A WAV file whose sample `k` is what played at `origin_ms + k / 48`.
    pub path: String,
    pub origin_ms: u64,
}

/// What we sent to one receiver.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SentStream {
    pub frames_sent: u64,
    pub frames_dropped: u64,
}

/// A membership change seen during the call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RosterEvent {
    pub at_ms: u64,
    pub peer: String,
    pub kind: String,
    pub detail: String,
}

/// The result of a call, printed by `confab call --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallReport {
    pub peer_id: String,
    pub name: String,
    pub room: String,
    pub started_ms: u64,
    pub ended_ms: u64,
    pub frames_captured: u64,
    /// Our own stream's frame duration, look-ahead and capture origin.
    #[serde(default)]
    pub sending: Sending,
    pub sent: BTreeMap<String, SentStream>,
    pub received: Vec<ReceivedStream>,
    pub roster: Vec<RosterEvent>,
    pub admission_failures: u64,
    pub cpu_seconds: f64,
    pub max_rss_kb: u64,
}

/// Most roster events a report keeps (the rest are counted in `admission_failures` or lost).
pub const MAX_ROSTER_EVENTS: usize = 4096;

/// Folds a call's events into its report.
#[derive(Debug, Default)]
pub struct ReportBuilder {
    peer_id: String,
    name: String,
    room: String,
    started_ms: u64,
    roster: Vec<RosterEvent>,
    end: Option<CallEnd>,
}

impl ReportBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    fn roster(&mut self, at_ms: u64, peer: &str, kind: &str, detail: String) {
        if self.roster.len() < MAX_ROSTER_EVENTS {
            self.roster.push(RosterEvent {
                at_ms,
                peer: peer.to_string(),
                kind: kind.into(),
                detail,
            });
        }
    }

    /// Takes one event.
    pub fn on_event(&mut self, ev: &CallEvent) {
        match ev {
            CallEvent::Joined {
                peer_id,
                name,
                room,
                started_ms,
            } => {
                self.peer_id.clone_from(peer_id);
                self.name.clone_from(name);
                self.room.clone_from(room);
                self.started_ms = *started_ms;
            }
            CallEvent::MemberAdmitted {
                at_ms, peer, name, ..
            } => self.roster(*at_ms, peer, "admitted", name.clone()),
            CallEvent::MemberLeft {
                at_ms,
                peer,
                reason,
            } => self.roster(*at_ms, peer, "left", reason.clone()),
            CallEvent::AdmissionFailed {
                at_ms,
                peer,
                reason,
            } => self.roster(*at_ms, peer, "admission_failed", reason.clone()),
            // When a member's path changed (a hole punch): the testbed reads set-up times
            // from it.
            CallEvent::PathChanged { at_ms, peer, path } => {
                self.roster(*at_ms, peer, "path", path.to_string())
            }
            CallEvent::Ended(end) => self.end = Some((**end).clone()),
            CallEvent::RecordingChanged { .. }
            | CallEvent::MuteChanged { .. }
            | CallEvent::Chat { .. }
            | CallEvent::Stats(_) => {}
        }
    }

    /// How the call ended, once it has.
    pub fn end(&self) -> Option<&CallEnd> {
        self.end.as_ref()
    }

    /// The report; `cpu_seconds` and `max_rss_kb` are the process's.
    pub fn finish(self) -> CallReport {
        let (cpu_seconds, max_rss_kb) = process_usage();
        let end = self.end.unwrap_or_else(|| CallEnd {
            ended_ms: crate::clock::now_ms(),
            error: None,
            frames_captured: 0,
            sending: Sending::default(),
            sent: BTreeMap::new(),
            received: Vec::new(),
            admission_failures: 0,
        });
        CallReport {
            peer_id: self.peer_id,
            name: self.name,
            room: self.room,
            started_ms: self.started_ms,
            ended_ms: end.ended_ms,
            frames_captured: end.frames_captured,
            sending: end.sending,
            sent: end.sent,
            received: end.received,
            roster: self.roster,
            admission_failures: end.admission_failures,
            cpu_seconds,
            max_rss_kb,
        }
    }
}

/// CPU seconds used by this process so far and its peak resident set, from /proc.
pub fn process_usage() -> (f64, u64) {
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    (cpu, rss)
}

impl CallReport {
    /// The history entry of this call: the members it admitted, and its times.
    pub fn history_entry(&self) -> HistoryEntry {
        let mut peers: Vec<String> = self
            .roster
            .iter()
            .filter(|e| e.kind == "admitted")
            .map(|e| e.peer.clone())
            .chain(self.received.iter().map(|r| r.from.clone()))
            .collect();
        peers.sort();
        peers.dedup();
        HistoryEntry {
            room_id: self.room.clone(),
            peers,
            started_ms: self.started_ms,
            duration_ms: self.ended_ms.saturating_sub(self.started_ms),
        }
    }
}
