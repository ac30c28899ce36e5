//! What the call does with the room state machine's events.

use confab_protocol::room::{AdmissionFailure, Event, LeaveReason};
use confab_protocol::wire::PeerInfo;
use libp2p::PeerId;
use tracing::{debug, info, warn};

use super::events::CallEvent;
use super::peers::maybe_open_room_stream;
use super::policy::JoinAction;
use super::receive::Receiver;
use super::session::{parse_addrs, Session};
use crate::clock::Now;
use crate::net::{peer_id, Net};

/// Handshakes that broke off (e.g. a stream dropped on arrival) retried per peer.
const ROOM_RETRIES: u32 = 3;

impl Session {
    pub(super) fn on_room_event(&mut self, net: &mut Net, ev: Event, now: Now) {
        match ev {
            Event::Admitted {
                peer,
                name,
                recording,
                addrs,
            } => {
                if let Some(pid) = peer_id(&peer) {
                    self.on_admitted(net, pid, name, recording, &addrs, now);
                }
            }
            Event::Left { peer, reason } => {
                if let Some(pid) = peer_id(&peer) {
                    self.on_left(net, pid, reason, now);
                }
            }
            Event::AdmissionFailed { peer, reason } => {
                self.on_admission_failed(net, peer_id(&peer), reason, now);
            }
            Event::Dial(info) => self.on_roster_member(net, info, now),
            Event::Recording { peer, on } => {
                if let Some(pid) = peer_id(&peer) {
                    self.on_recording(pid, on, now);
                }
            }
            Event::Muted { peer, on } => {
                if let Some(pid) = peer_id(&peer) {
                    self.out.emit(CallEvent::MuteChanged {
                        at_ms: now.ms,
                        peer: pid.to_string(),
                        on,
                    });
                }
            }
            Event::Chat { peer, text } => {
                if let Some(pid) = peer_id(&peer) {
                    self.on_chat(pid, text, now);
                }
            }
            Event::Rekeyed { epoch, fresh } => {
                debug!(epoch, fresh, "sender key moved to a new epoch");
            }
        }
    }

    fn on_admitted(
        &mut self,
        net: &mut Net,
        pid: PeerId,
        name: String,
        recording: bool,
        addrs: &[String],
        now: Now,
    ) {
        self.join.on_admitted(pid, parse_addrs(addrs));
        self.emit_joined();
        let sending = self.sending();
        let ctx = self.peers.entry(pid).or_default();
        ctx.member = true;
        if std::mem::take(&mut ctx.path.migrating) {
            info!(peer = %pid, "member moved to the direct connection");
        } else {
            info!(peer = %pid, %name, recording, "member admitted");
            self.out.emit(CallEvent::MemberAdmitted {
                at_ms: now.ms,
                peer: pid.to_string(),
                name: name.clone(),
                recording,
                path: ctx.path.path(),
            });
        }
        if recording {
            info!(peer = %pid, %name, "this member is recording the call");
        }
        if sending {
            ctx.media_out = Some(net.start_media_sender(pid));
            self.capture.add_receiver(pid);
            self.video.add_peer(net, pid);
        }
        if let Some(r) = ctx.remote.as_mut() {
            // Back after a broken connection: the same sender goes on.
            r.name = name;
            r.recording = recording;
            return;
        }
        match Receiver::new(pid.to_string(), name, recording) {
            Ok(r) => ctx.remote = Some(r),
            Err(e) => warn!(peer = %pid, error = %e, "cannot decode this member's audio"),
        }
    }

    fn on_left(&mut self, net: &mut Net, pid: PeerId, reason: LeaveReason, now: Now) {
        let sending = self.sending();
        let Some(ctx) = self.peers.get_mut(&pid) else {
            return;
        };
        let migrating = ctx.path.migrating;
        // A broken connection may come back (relay restart): keep its sender state and try
        // to reach it again for a while.
        let broken = matches!(reason, LeaveReason::Disconnected | LeaveReason::TimedOut);
        if migrating {
            debug!(peer = %pid, "session closed with the circuit; reopening it on the direct connection");
        } else {
            info!(peer = %pid, reason = ?reason, "member left");
            self.out.emit(CallEvent::MemberLeft {
                at_ms: now.ms,
                peer: pid.to_string(),
                reason: format!("{reason:?}"),
            });
            self.join.on_left(pid, broken, sending, now.at);
        }
        ctx.member = false;
        if let Some(q) = ctx.media_out.take() {
            q.close();
        }
        self.video.remove_peer(&pid);
        ctx.room_stream = None;
        if !migrating {
            net.admit_media(pid, false);
        }
        if migrating {
            maybe_open_room_stream(&self.me, pid, ctx, &self.room, net);
        }
        if migrating || broken {
            return; // kept: reported at the end, or continued if the member returns
        }
        if let Some(mut r) = ctx.remote.take() {
            let path = ctx.path.path();
            self.drain_receiver(&mut r, now.ms);
            let report = r.report(path, self.output_of(r.from()), self.timeline_of(r.from()));
            self.keep_finished(report);
        }
    }

    fn on_admission_failed(
        &mut self,
        net: &mut Net,
        pid: Option<PeerId>,
        reason: AdmissionFailure,
        now: Now,
    ) {
        let text = pid.map_or_else(|| "unknown peer".to_string(), |p| p.to_string());
        let ctx = pid.and_then(|p| self.peers.get_mut(&p).map(|c| (p, c)));
        let migrating = ctx.as_ref().is_some_and(|(_, c)| c.path.migrating);
        let known = pid.is_some_and(|p| self.join.is_bootstrap(&p));
        if migrating {
            debug!(peer = %text, %reason, "a session broke while moving to the direct connection");
        } else if known || self.failure_reports.allow(now.at) {
            warn!(peer = %text, %reason, "admission failed");
            self.out.emit(CallEvent::AdmissionFailed {
                at_ms: now.ms,
                peer: text,
                reason: reason.to_string(),
            });
        } else {
            // A stranger's failures beyond the budget are counted, not logged one by one.
            debug!(peer = %text, %reason, "admission failed");
        }
        if let Some((p, ctx)) = ctx {
            ctx.room_stream = None;
            if !ctx.member {
                net.admit_media(p, false);
            }
            if reason == AdmissionFailure::Incomplete
                && ctx.room_retries < ROOM_RETRIES
                && net.is_connected(&p)
            {
                ctx.room_retries += 1;
                maybe_open_room_stream(&self.me, p, ctx, &self.room, net);
            }
        }
        self.join.on_admission_failed(pid, &reason);
        if let Some(p) = pid {
            if self.peers.get(&p).is_some_and(|c| c.is_stale()) && !net.is_connected(&p) {
                self.peers.remove(&p);
            }
        }
    }

    fn on_roster_member(&mut self, net: &mut Net, info: PeerInfo, now: Now) {
        let Some(pid) = peer_id(&info.peer_id) else {
            return;
        };
        if pid == self.me {
            return;
        }
        if net.is_connected(&pid) {
            let ctx = self.peers.entry(pid).or_default();
            maybe_open_room_stream(&self.me, pid, ctx, &self.room, net);
            return;
        }
        debug!(peer = %pid, "dialing a member from the roster");
        if let Some(JoinAction::Dial {
            peer,
            direct,
            circuits,
        }) = self
            .join
            .on_roster_member(pid, parse_addrs(&info.addrs), now.at)
        {
            net.dial(peer, direct, circuits);
        }
    }

    fn on_chat(&mut self, pid: PeerId, text: String, now: Now) {
        let name = self
            .peers
            .get(&pid)
            .and_then(|c| c.remote.as_ref())
            .map(|r| r.name.clone())
            .unwrap_or_default();
        self.out.emit(CallEvent::Chat {
            at_ms: now.ms,
            peer: pid.to_string(),
            name,
            text,
        });
    }

    fn on_recording(&mut self, pid: PeerId, on: bool, now: Now) {
        let Some(r) = self.peers.get_mut(&pid).and_then(|c| c.remote.as_mut()) else {
            return;
        };
        r.recording = on;
        let name = r.name.clone();
        if on {
            info!(peer = %pid, %name, "this member started recording the call");
        } else {
            info!(peer = %pid, %name, "this member stopped recording");
        }
        self.out.emit(CallEvent::RecordingChanged {
            at_ms: now.ms,
            peer: pid.to_string(),
            name,
            on,
        });
    }
}
