//! What the page shows of a call, folded from the call's events, and sent whole to every
//! page after each change (rooms are small; a page that connects late gets the same view).

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use crate::call::{CallEvent, StreamStats};

/// Chat lines kept for the call (in memory only, gone when the call ends).
pub const CHAT_LINES: usize = 200;
/// Departures shown (the newest).
const DEPARTURES: usize = 16;

/// One member as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    pub peer: String,
    pub name: String,
    pub path: String,
    pub recording: bool,
    pub muted: bool,
    /// The newest statistics of this member's audio, once a tick has come.
    pub stats: Option<StreamStats>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatLine {
    pub at_ms: u64,
    /// Empty for our own lines.
    pub peer: String,
    pub name: String,
    pub text: String,
    pub mine: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Departure {
    pub at_ms: u64,
    pub peer: String,
    pub name: String,
    /// In words: "left", "lost connection", ...
    pub why: String,
}

/// The call, as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CallView {
    pub room_id: String,
    pub ticket: String,
    /// `joining` until the room admits us, then `in call`, then `ended`.
    pub status: String,
    pub started_ms: u64,
    pub muted: bool,
    pub recording: bool,
    /// Where our recording goes, while we record.
    pub recording_path: Option<String>,
    pub members: BTreeMap<String, MemberView>,
    pub departed: VecDeque<Departure>,
    pub chat: VecDeque<ChatLine>,
    /// Why the call ended early, in words.
    pub error: Option<String>,
    pub frames_sent: u64,
}

fn why(reason: &str) -> String {
    match reason {
        "Left" => "left the call".into(),
        "Disconnected" => "lost connection".into(),
        "TimedOut" => "stopped answering".into(),
        "Misbehaved" => "was removed (protocol violation)".into(),
        other => other.to_lowercase(),
    }
}

impl CallView {
    pub fn new(room_id: String, ticket: String, started_ms: u64) -> Self {
        Self {
            room_id,
            ticket,
            status: "joining".into(),
            started_ms,
            muted: false,
            recording: false,
            recording_path: None,
            members: BTreeMap::new(),
            departed: VecDeque::new(),
            chat: VecDeque::new(),
            error: None,
            frames_sent: 0,
        }
    }

    pub fn push_chat(&mut self, line: ChatLine) {
        if self.chat.len() == CHAT_LINES {
            self.chat.pop_front();
        }
        self.chat.push_back(line);
    }

    /// Folds one event in; returns whether the view changed.
    pub fn on_event(&mut self, ev: &CallEvent) -> bool {
        match ev {
            CallEvent::Joined { .. } => self.status = "in call".into(),
            CallEvent::MemberAdmitted {
                peer,
                name,
                recording,
                path,
                ..
            } => {
                self.departed.retain(|d| d.peer != *peer);
                self.members.insert(
                    peer.clone(),
                    MemberView {
                        peer: peer.clone(),
                        name: name.clone(),
                        path: path.as_str().into(),
                        recording: *recording,
                        muted: false,
                        stats: None,
                    },
                );
            }
            CallEvent::MemberLeft {
                at_ms,
                peer,
                reason,
            } => self.on_left(*at_ms, peer, reason),
            CallEvent::PathChanged { peer, path, .. } => {
                if let Some(m) = self.members.get_mut(peer) {
                    m.path = path.as_str().into();
                }
            }
            CallEvent::RecordingChanged { peer, on, .. } => {
                if let Some(m) = self.members.get_mut(peer) {
                    m.recording = *on;
                }
            }
            CallEvent::MuteChanged { peer, on, .. } => {
                if let Some(m) = self.members.get_mut(peer) {
                    m.muted = *on;
                }
            }
            CallEvent::Chat {
                at_ms,
                peer,
                name,
                text,
            } => self.push_chat(ChatLine {
                at_ms: *at_ms,
                peer: peer.clone(),
                name: name.clone(),
                text: text.clone(),
                mine: false,
            }),
            CallEvent::Stats(s) => self.on_stats(s),
            CallEvent::AdmissionFailed { .. } => return false,
            CallEvent::Ended(end) => {
                self.status = "ended".into();
                self.error = end.error.as_ref().map(|e| e.to_string());
            }
        }
        true
    }

    fn on_left(&mut self, at_ms: u64, peer: &str, reason: &str) {
        let name = self
            .members
            .remove(peer)
            .map(|m| m.name)
            .unwrap_or_default();
        if self.departed.len() == DEPARTURES {
            self.departed.pop_front();
        }
        self.departed.push_back(Departure {
            at_ms,
            peer: peer.to_owned(),
            name,
            why: why(reason),
        });
    }

    fn on_stats(&mut self, s: &crate::call::CallStats) {
        self.frames_sent = s.frames_captured;
        self.muted = s.muted;
        for st in &s.streams {
            if let Some(m) = self.members.get_mut(&st.from) {
                m.stats = Some(st.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::Path;

    #[test]
    fn members_come_and_go_with_their_state() {
        let mut v = CallView::new("r".into(), "t".into(), 0);
        v.on_event(&CallEvent::Joined {
            peer_id: "me".into(),
            name: "me".into(),
            room: "r".into(),
            started_ms: 0,
        });
        assert_eq!(v.status, "in call");
        v.on_event(&CallEvent::MemberAdmitted {
            at_ms: 1,
            peer: "a".into(),
            name: "Ann".into(),
            recording: true,
            path: Path::Relayed,
        });
        v.on_event(&CallEvent::MuteChanged {
            at_ms: 2,
            peer: "a".into(),
            on: true,
        });
        v.on_event(&CallEvent::PathChanged {
            at_ms: 3,
            peer: "a".into(),
            path: Path::Punched,
        });
        let a = &v.members["a"];
        assert!(a.muted && a.recording);
        assert_eq!(a.path, "punched");
        v.on_event(&CallEvent::MemberLeft {
            at_ms: 4,
            peer: "a".into(),
            reason: "Disconnected".into(),
        });
        assert!(v.members.is_empty());
        assert_eq!(v.departed[0].name, "Ann");
        assert_eq!(v.departed[0].why, "lost connection");
    }

    #[test]
    fn chat_is_bounded() {
        let mut v = CallView::new("r".into(), "t".into(), 0);
        for i in 0..(CHAT_LINES + 10) {
            v.on_event(&CallEvent::Chat {
                at_ms: i as u64,
                peer: "a".into(),
                name: "Ann".into(),
                text: format!("{i}"),
            });
        }
        assert_eq!(v.chat.len(), CHAT_LINES);
        assert_eq!(v.chat[0].text, "10");
    }
}
