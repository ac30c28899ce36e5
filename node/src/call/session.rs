//! One call on a node: its state, and the handlers the node's driver calls.
//!
//! The driver owns the swarm ([`Net`]) and at most one [`Session`]; it hands every swarm
//! event, stream message, command and timer tick to the matching `on_*` handler here. The
//! handlers never wait: frames toward a peer go into bounded queues, events into a bounded
//! queue that drops statistics ticks first.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use confab_protocol::crypto::Identity;
use confab_protocol::room::{Room, RoomConfig};
use confab_protocol::ticket::Ticket;
use libp2p::swarm::SwarmEvent;
use libp2p::{rendezvous, Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::capture::{Capture, SendConfig};
use super::error::CallError;
use super::events::{CallEnd, CallEvent, CallStats};
use super::handle::CallCommand;
use super::out::EventOut;
use super::peers::{flush_transmits, PeerCtx};
use super::policy::{JoinAction, JoinPolicy, JoinView, PathAction};
use super::report::{ReceivedStream, TimelineFile};
use crate::clock::{now_ms, Instant, Now};
use crate::media::codec::{CodecError, Mode};
use crate::media::{AudioSink, AudioSource};
use crate::net::relays::{Change, Refusal};
use crate::net::streams::Inbound;
use crate::net::{peer_id, BehaviourEvent, Net};

/// Most reports of senders that left kept until the call ends.
const MAX_FINISHED: usize = 1024;
/// Most sessions being set up at once with peers that are not members: a flood of room
/// streams from strangers waits its turn instead of costing a handshake each.
const MAX_HANDSHAKES: usize = 32;

/// What a call is, besides its audio.
#[derive(Debug, Clone)]
pub struct CallConfig {
    pub ticket: Ticket,
    /// Display name shown to the other members.
    pub name: String,
    /// The sink records what it hears: the room is told from the start.
    pub recording: bool,
    /// Constant bitrate, no DTX, padded frames.
    pub cbr: bool,
    /// Audio per frame, ms: 10 or 20 (default 20).
    pub frame_ms: u8,
    /// Opus application (default audio).
    pub mode: Mode,
    /// Append each encoded Opus packet (2-byte big-endian length + packet) to this file.
    pub dump_opus: Option<PathBuf>,
    /// How often a [`CallEvent::Stats`] tick is sent.
    pub stats_every: Duration,
}

impl CallConfig {
    pub fn new(ticket: Ticket, name: impl Into<String>) -> Self {
        Self {
            ticket,
            name: name.into(),
            recording: false,
            cbr: false,
            frame_ms: 20,
            mode: Mode::Audio,
            dump_opus: None,
            stats_every: Duration::from_secs(1),
        }
    }
}

/// One running call.
pub struct Session {
    pub(super) me: PeerId,
    room_hex: String,
    name: String,
    pub(super) room: Room,
    namespace: rendezvous::Namespace,
    pub(super) join: JoinPolicy,
    pub(super) capture: Capture,
    pub(super) peers: HashMap<PeerId, PeerCtx>,
    pub(super) sink: Box<dyn AudioSink>,
    pub(super) recorder: Option<Box<dyn AudioSink>>,
    sink_records: bool,
    pub(super) finished: Vec<ReceivedStream>,
    pub(super) out: EventOut,
    commands: Option<mpsc::Receiver<CallCommand>>,
    started_ms: u64,
    pub(super) joined: bool,
    leaving: Option<Instant>,
    replies: Vec<oneshot::Sender<CallEnd>>,
    error: Option<CallError>,
    done: bool,
    next_stats: Instant,
    stats_every: Duration,
    /// How many admission failures of strangers are still reported one by one.
    pub(super) failure_reports: ReportBudget,
    /// The video track, apart from the audio.
    pub(super) video: super::video::VideoCall,
}

/// A budget of reports: a burst, refilled slowly, so that a flood of failed handshakes
/// costs neither a log line nor an event each.
pub struct ReportBudget {
    tokens: u32,
    refilled: Instant,
}

impl ReportBudget {
    const BURST: u32 = 16;
    const EVERY: Duration = Duration::from_secs(10);

    fn new(now: Instant) -> Self {
        Self {
            tokens: Self::BURST,
            refilled: now,
        }
    }

    /// Whether one more report fits.
    pub fn allow(&mut self, now: Instant) -> bool {
        if now.duration_since(self.refilled) >= Self::EVERY {
            self.refilled = now;
            self.tokens = (self.tokens + 1).min(Self::BURST);
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// What a call starts from.
pub struct Start {
    pub config: CallConfig,
    pub identity: [u8; 32],
    pub source: Box<dyn AudioSource>,
    pub sink: Box<dyn AudioSink>,
    pub commands: mpsc::Receiver<CallCommand>,
    pub events: mpsc::Sender<CallEvent>,
}

impl Session {
    /// Starts a call on `net` at `now`.
    pub fn start(net: &mut Net, start: Start, now: Now) -> Result<Self, CallError> {
        let Start {
            config,
            identity,
            source,
            sink,
            commands,
            events,
        } = start;
        let me = net.me;
        let namespace = rendezvous::Namespace::new(confab_protocol::crypto::rendezvous_namespace(
            &config.ticket.room_id,
            &config.ticket.room_secret,
        ))
        .map_err(|e| {
            CallError::Net(std::sync::Arc::new(crate::net::NetError::Build(
                e.to_string(),
            )))
        })?;
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
        let mut room = Room::new(
            RoomConfig {
                name: config.name.clone(),
                recording: config.recording,
                ..RoomConfig::default()
            },
            Identity::from_secret_bytes(&identity),
            config.ticket.room_id,
            &config.ticket.room_secret,
            seed,
        );
        room.set_addrs(net.announced());
        let capture = Capture::new(
            source,
            SendConfig {
                frame_ms: config.frame_ms,
                mode: config.mode,
                cbr: config.cbr,
            },
            config.dump_opus.as_deref(),
            now.at,
            now.us,
        )?;
        room.set_media_format(capture.format()).map_err(|e| {
            CallError::Codec(std::sync::Arc::new(CodecError::InvalidConfig(
                e.to_string(),
            )))
        })?;
        let join = JoinPolicy::new(now.at, bootstrap(&config.ticket, me), net.relay_only);
        let mut session = Self {
            me,
            room_hex: config.ticket.room_id_hex(),
            name: config.name.clone(),
            room,
            namespace,
            join,
            capture,
            peers: HashMap::new(),
            sink,
            recorder: None,
            sink_records: config.recording,
            finished: Vec::new(),
            out: EventOut::new(events),
            commands: Some(commands),
            started_ms: now.ms,
            joined: false,
            leaving: None,
            replies: Vec::new(),
            error: None,
            done: false,
            next_stats: now.at + config.stats_every,
            stats_every: config.stats_every,
            failure_reports: ReportBudget::new(now.at),
            video: super::video::VideoCall::default(),
        };
        // A connection left over from an earlier call carries no session: start afresh, so
        // that both ends see the connection open and the lower peer id opens the session.
        for pid in session.join.bootstrap_peers() {
            if net.is_connected(pid) {
                let _ = net.swarm.disconnect_peer_id(*pid);
            }
        }
        let reserved: Vec<PeerId> = net.relays.reserved().map(|(p, _)| p).collect();
        for relay in reserved {
            net.register(&session.namespace, relay);
        }
        info!(peer_id = %me, room = %session.room_hex, "joining room");
        if session.join.is_creator() {
            session.emit_joined();
        }
        Ok(session)
    }

    pub(super) fn emit_joined(&mut self) {
        if std::mem::replace(&mut self.joined, true) {
            return;
        }
        self.out.emit(CallEvent::Joined {
            peer_id: self.me.to_string(),
            name: self.name.clone(),
            room: self.room_hex.clone(),
            started_ms: self.started_ms,
        });
    }

    /// The call's command queue, while its handles exist.
    pub fn commands(&mut self) -> Option<&mut mpsc::Receiver<CallCommand>> {
        self.commands.as_mut()
    }

    /// Whether the call is over (the driver then calls [`Session::finish`]).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The earliest time a tick has something to do.
    pub fn poll_timeout(&self, now: Now) -> Instant {
        let to_inst = |ms: u64| now.at + Duration::from_millis(ms.saturating_sub(now.ms));
        let mut wake = [
            Some(self.next_stats),
            self.capture.next_wake(),
            self.join.poll_timeout(),
            self.leaving,
            self.room.poll_timeout().map(to_inst),
            self.video.poll_timeout().map(to_inst),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now.at + Duration::from_millis(250));
        for ctx in self.peers.values() {
            if let Some(t) = ctx.path.poll_timeout() {
                wake = wake.min(t);
            }
            if let Some(t) = ctx.remote.as_ref().and_then(|r| r.poll_timeout()) {
                wake = wake.min(to_inst(t));
            }
        }
        wake
    }

    fn fail(&mut self, e: CallError) {
        warn!(error = %e, "the call cannot go on");
        self.error.get_or_insert(e);
        self.done = true;
    }

    /// A swarm event (after the node's own handling of it).
    pub fn on_swarm_event(
        &mut self,
        net: &mut Net,
        ev: &SwarmEvent<BehaviourEvent>,
        change: Change,
        now: Now,
    ) {
        if let Some(relay) = change.reserved {
            // Members find each other here when the ticket's addresses are stale.
            net.register(&self.namespace, relay);
        }
        match ev {
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(p),
                error,
                ..
            } => {
                if let Some(why) = Refusal::in_dial_error(error) {
                    self.join.on_circuit_refused(*p, why);
                }
                debug!(peer = %p, error = %error, "cannot reach a member");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rendezvous(
                rendezvous::client::Event::Discovered { registrations, .. },
            )) => self.on_discovered(net, registrations, now),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                connection_id,
                ..
            } => self.on_connected(net, *peer_id, *connection_id, endpoint.is_relayed(), now),
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => self.on_connection_closed(net, *peer_id, *connection_id, *num_established, now),
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(e)) => self.on_dcutr(e, now),
            _ => {}
        }
        if change.addrs
            || matches!(
                ev,
                SwarmEvent::NewListenAddr { .. } | SwarmEvent::ExpiredListenAddr { .. }
            )
        {
            self.room.set_addrs(net.announced());
        }
    }

    fn on_discovered(&mut self, net: &mut Net, regs: &[rendezvous::Registration], now: Now) {
        for reg in regs {
            let pid = reg.record.peer_id();
            if pid == self.me {
                continue;
            }
            info!(peer = %pid, "found a member through the relay's rendezvous");
            let addrs = reg.record.addresses().to_vec();
            if let Some(JoinAction::Dial {
                peer,
                direct,
                circuits,
            }) = self.join.on_discovered(pid, addrs, now.at)
            {
                if !net.is_connected(&peer) {
                    net.dial(peer, direct, circuits);
                }
            }
        }
    }

    /// A stream task's message.
    pub fn on_inbound(&mut self, net: &mut Net, msg: Inbound, now: Now) {
        match msg {
            Inbound::RoomStream {
                peer,
                stream,
                initiator,
                slot,
            } => self.on_room_stream(net, peer, stream, initiator, slot, now),
            Inbound::RoomFrame {
                peer,
                stream_id,
                bytes,
            } => {
                let current = self.peers.get(&peer).and_then(|c| c.room_stream_id());
                if current == Some(stream_id) {
                    self.room.handle_frame(now.ms, &peer.to_bytes(), &bytes);
                }
            }
            Inbound::RoomClosed { peer, stream_id } => {
                self.on_room_closed(net, peer, stream_id, now);
            }
            Inbound::Media {
                peer,
                stream_id,
                bytes,
                at_ms,
            } => self.on_media(peer, stream_id, &bytes, at_ms),
            Inbound::MediaEnd { peer, stream_id } => {
                if let Some(r) = self.peers.get_mut(&peer).and_then(|c| c.remote.as_mut()) {
                    r.on_stream_end(stream_id);
                }
            }
            Inbound::OpenFailed { peer, reason } => {
                if let Some(ctx) = self.peers.get_mut(&peer) {
                    ctx.opening = false;
                }
                debug!(%peer, %reason, "could not open a stream");
            }
        }
    }

    fn on_room_stream(
        &mut self,
        net: &mut Net,
        peer: PeerId,
        stream: libp2p::Stream,
        initiator: bool,
        slot: Option<crate::net::streams::StreamSlot>,
        now: Now,
    ) {
        let newcomer = !self.room.knows(&peer.to_bytes());
        if newcomer && !initiator && self.handshakes() >= MAX_HANDSHAKES {
            debug!(%peer, "too many handshakes at once; dropping a room stream");
            return;
        }
        let writer = net.start_room_stream(peer, stream, slot);
        net.admit_media(peer, true);
        let ctx = self.peers.entry(peer).or_default();
        if initiator {
            ctx.opening = false;
        }
        ctx.room_stream = Some(writer);
        // A member opening a new session replaces the old one (after a hole punch closed
        // the circuit it ran on): not a departure.
        if self.room.is_member(&peer.to_bytes()) {
            ctx.path.migrating = true;
        }
        if let Err(e) = self.room.connect(now.ms, peer.to_bytes(), initiator) {
            // Refused (too many handshakes at once, or ourselves): the stream goes.
            debug!(%peer, error = %e, "cannot start a session");
            ctx.room_stream = None;
            if !ctx.member {
                net.admit_media(peer, false);
            }
        }
    }

    fn on_room_closed(&mut self, net: &Net, peer: PeerId, stream_id: u64, now: Now) {
        let Some(ctx) = self.peers.get_mut(&peer) else {
            return;
        };
        if ctx.room_stream_id() != Some(stream_id) {
            return;
        }
        ctx.room_stream = None;
        let connected = net.is_connected(&peer);
        debug!(%peer, member = ctx.member, connected, path = %ctx.path.path(), "room stream closed");
        if !ctx
            .path
            .on_room_stream_closed(ctx.member, connected, now.at)
        {
            self.room.peer_disconnected(now.ms, &peer.to_bytes());
        }
    }

    fn on_media(&mut self, peer: PeerId, stream_id: u64, bytes: &[u8], at_ms: u64) {
        if let Some(r) = self.peers.get_mut(&peer).and_then(|c| c.remote.as_mut()) {
            r.on_stream(stream_id);
        }
        match self.room.open_media(at_ms, &peer.to_bytes(), bytes) {
            Ok(Some(frame)) => self.deliver(peer, at_ms, frame),
            Ok(None) => {}
            Err(e) => debug!(%peer, error = %e, "media frame dropped"),
        }
    }

    pub(super) fn deliver(
        &mut self,
        peer: PeerId,
        at_ms: u64,
        frame: confab_protocol::crypto::OpenedFrame,
    ) {
        if let Some(r) = self.peers.get_mut(&peer).and_then(|c| c.remote.as_mut()) {
            r.push(at_ms, frame);
        }
    }

    /// A command from a handle; `None` when every handle is gone (the call then leaves).
    pub fn on_command(&mut self, cmd: Option<CallCommand>, now: Now) {
        let Some(cmd) = cmd else {
            self.commands = None;
            self.stop_sending(now, Duration::from_millis(500));
            return;
        };
        match cmd {
            CallCommand::Leave { drain, reply } => {
                self.stop_sending(now, drain);
                self.replies.extend(reply);
            }
            CallCommand::Mute(muted) => {
                info!(muted, "microphone");
                self.capture.muted = muted;
                self.room.set_muted(now.ms, muted);
            }
            CallCommand::Chat { text, reply } => {
                let sent = self
                    .room
                    .send_chat(now.ms, &text)
                    .map_err(|e| CallError::Chat(e.to_string()));
                let _ = reply.send(sent);
            }
            CallCommand::StartRecording(sink) => {
                if let Some(mut old) = self.recorder.replace(sink) {
                    finish_sink(old.as_mut());
                }
                self.room.set_recording(now.ms, true);
            }
            CallCommand::StopRecording => {
                if let Some(mut old) = self.recorder.take() {
                    finish_sink(old.as_mut());
                }
                self.room.set_recording(now.ms, self.sink_records);
            }
            CallCommand::SetSource(source) => self.capture.set_source(source),
            CallCommand::SetSink(sink) => {
                let mut old = std::mem::replace(&mut self.sink, sink);
                finish_sink(old.as_mut());
            }
            CallCommand::Snapshot(reply) => {
                let _ = reply.send(self.stats(now));
            }
            CallCommand::Video(ports) => self.video.attach(*ports),
        }
    }

    /// Stops sending; keeps playing what the others still send for at most `drain`.
    fn stop_sending(&mut self, now: Now, drain: Duration) {
        let deadline = now.at + drain;
        self.leaving = Some(self.leaving.map_or(deadline, |d| d.min(deadline)));
        if !self.capture.sending {
            return;
        }
        self.capture.stop();
        self.video.stop_sending();
        for ctx in self.peers.values_mut() {
            if let Some(q) = ctx.media_out.take() {
                q.close();
            }
        }
        info!(
            frames = self.capture.frames_captured,
            "stopped sending; waiting for the others to finish"
        );
    }

    /// Everything that is due at `now`.
    pub fn on_tick(&mut self, net: &mut Net, now: Now) {
        self.drive_join(net, now);
        self.drive_paths(net, now);
        if self.done {
            return;
        }
        self.check_drained(now);
        self.send_due(now);
        self.play_due(now);
        self.video.on_tick(now.ms);
        self.room.handle_timeout(now.ms);
        while let Some((peer, frame)) = self.room.poll_media() {
            if let Some(pid) = peer_id(&peer) {
                self.deliver(pid, now.ms, frame);
            }
        }
        // Send what the room queued before acting on its events: a Reject must go out
        // before the event handler drops the stream.
        flush_transmits(&mut self.room, &mut self.peers, now.ms);
        while let Some(ev) = self.room.poll_event() {
            self.on_room_event(net, ev, now);
        }
        flush_transmits(&mut self.room, &mut self.peers, now.ms);
        if now.at >= self.next_stats {
            self.next_stats = now.at + self.stats_every;
            for r in self.peers.values_mut().filter_map(|c| c.remote.as_mut()) {
                r.update_level();
            }
            let stats = self.stats(now);
            self.out.tick(CallEvent::Stats(stats));
        }
        self.out.flush();
    }

    fn drive_join(&mut self, net: &mut Net, now: Now) {
        let reserved_relays = net.relays.reserved().map(|(p, _)| p).collect();
        let view = JoinView {
            connected: &|p| net.is_connected(p),
            relays_settled: net.relays.settled(),
            relays_failed: net.relays.all_failed(now.at),
            reserved_relays,
            any_member: self.peers.values().any(|c| c.member),
            sending: self.capture.sending,
        };
        let actions = self.join.poll(now.at, &view);
        for action in actions {
            match action {
                JoinAction::Dial {
                    peer,
                    direct,
                    circuits,
                } => net.dial(peer, direct, circuits),
                JoinAction::Discover { relays } => net.discover(&self.namespace, &relays),
                JoinAction::GiveUp(e) => self.fail(e),
            }
        }
    }

    fn drive_paths(&mut self, net: &mut Net, now: Now) {
        for (pid, ctx) in self.peers.iter_mut() {
            for action in ctx.path.poll(now.at) {
                match action {
                    PathAction::CloseCircuits(ids) => {
                        net.close_connections(&ids);
                        if ctx.member {
                            ctx.path.migrating = true;
                            ctx.room_stream = None;
                            self.room.peer_disconnected(now.ms, &pid.to_bytes());
                        }
                    }
                    PathAction::JudgeBroken => {
                        if ctx.room_stream.is_none() && self.room.knows(&pid.to_bytes()) {
                            if ctx.path.is_punched() && ctx.path.has_direct() {
                                ctx.path.migrating = true;
                            }
                            self.room.peer_disconnected(now.ms, &pid.to_bytes());
                        }
                    }
                }
            }
        }
    }

    fn check_drained(&mut self, now: Now) {
        let Some(deadline) = self.leaving else {
            return;
        };
        let all_done = self
            .peers
            .values()
            .all(|c| !c.member || c.remote.as_ref().is_none_or(|r| r.is_done()));
        if all_done || now.at >= deadline {
            self.done = true;
        }
    }

    /// Captures, encodes, encrypts and queues every frame that is due.
    fn send_due(&mut self, now: Now) {
        let packets = match self.capture.due(now.at) {
            Ok(p) => p,
            Err(e) => return self.fail(e),
        };
        for p in packets {
            let frame = match self
                .room
                .encrypt_media(p.capture_ts_ms, &p.opus, self.capture.pad_to)
            {
                Ok(f) => f,
                Err(e) => {
                    warn!(error = %e, "cannot encrypt a media frame");
                    continue;
                }
            };
            for (pid, ctx) in &self.peers {
                if let Some(q) = &ctx.media_out {
                    let dropped = q.push(frame.clone());
                    self.capture.count_sent(*pid, dropped);
                }
            }
        }
    }

    fn play_due(&mut self, now: Now) {
        let mut sinks: Vec<&mut dyn AudioSink> = vec![self.sink.as_mut()];
        if let Some(r) = self.recorder.as_mut() {
            sinks.push(r.as_mut());
        }
        for r in self.peers.values_mut().filter_map(|c| c.remote.as_mut()) {
            r.play_out(now.ms, now.us, &mut sinks);
        }
    }

    /// The call's statistics now.
    pub fn stats(&self, now: Now) -> CallStats {
        CallStats {
            at_ms: now.ms,
            frames_captured: self.capture.frames_captured,
            muted: self.capture.muted,
            sent: self.capture.sent(),
            streams: self
                .peers
                .values()
                .filter(|c| c.member)
                .filter_map(|c| c.remote.as_ref().map(|r| r.stats(c.path.path())))
                .collect(),
            ticks_dropped: self.out.ticks_dropped,
        }
    }

    /// Where `from`'s audio is recorded, if it is.
    pub(super) fn output_of(&self, from: &str) -> Option<String> {
        self.recorder
            .as_ref()
            .and_then(|r| r.recording_path(from))
            .or_else(|| self.sink.recording_path(from))
            .map(|p| p.display().to_string())
    }

    /// Where `from`'s audio is laid on the playout timeline, if it is.
    pub(super) fn timeline_of(&self, from: &str) -> Option<TimelineFile> {
        self.recorder
            .as_ref()
            .and_then(|r| r.timeline(from))
            .or_else(|| self.sink.timeline(from))
            .map(|(p, origin_ms)| TimelineFile {
                path: p.display().to_string(),
                origin_ms,
            })
    }

    pub(super) fn keep_finished(&mut self, r: ReceivedStream) {
        if self.finished.len() < MAX_FINISHED {
            self.finished.push(r);
        }
    }

    /// Ends the call: says goodbye, plays out and closes what was heard, and sends the last
    /// event and the replies to `leave`.
    pub fn finish(mut self, net: &mut Net, now: Now) {
        net.admit_no_media();
        let reserved: Vec<PeerId> = net.relays.reserved().map(|(p, _)| p).collect();
        for relay in reserved {
            net.unregister(&self.namespace, relay);
        }
        self.room.leave(now.ms);
        flush_transmits(&mut self.room, &mut self.peers, now.ms);
        self.capture.stop();
        self.video.stop_sending();
        let mut received = std::mem::take(&mut self.finished);
        let peers = std::mem::take(&mut self.peers);
        for (_, mut ctx) in peers {
            if let Some(mut r) = ctx.remote.take() {
                self.drain_receiver(&mut r, now.ms);
                received.push(r.report(
                    ctx.path.path(),
                    self.output_of(r.from()),
                    self.timeline_of(r.from()),
                ));
            }
            if let Some(q) = ctx.media_out.take() {
                q.close();
            }
        }
        finish_sink(self.sink.as_mut());
        if let Some(mut r) = self.recorder.take() {
            finish_sink(r.as_mut());
        }
        let end = CallEnd {
            ended_ms: now_ms(),
            error: self.error.take(),
            frames_captured: self.capture.frames_captured,
            sending: self.capture.sending_report(),
            sent: self.capture.sent(),
            received,
            admission_failures: self.room.counters().admission_failures,
        };
        info!(room = %self.room_hex, error = ?end.error.as_ref().map(|e| e.to_string()), "call ended");
        for reply in self.replies.drain(..) {
            let _ = reply.send(end.clone());
        }
        self.out.emit(CallEvent::Ended(Box::new(end)));
        self.out.close();
    }

    pub(super) fn drain_receiver(&mut self, r: &mut super::receive::Receiver, now_ms: u64) {
        let mut sinks: Vec<&mut dyn AudioSink> = vec![self.sink.as_mut()];
        if let Some(rec) = self.recorder.as_mut() {
            sinks.push(rec.as_mut());
        }
        r.drain(now_ms, &mut sinks);
    }

    /// A frame from the page (`None`: the page's queue closed).
    pub fn on_local_video(&mut self, frame: Option<super::video::LocalFrame>, now: Now) {
        match frame {
            Some(f) if self.capture.sending => self.video.send(&self.room, f, now.ms),
            Some(_) => {}
            None => self.video.page_gone(),
        }
    }

    /// A message on a member's video stream.
    pub fn on_video_inbound(&mut self, msg: crate::net::video::VideoInbound) {
        if self.peers.get(&msg.peer).is_some_and(|c| c.member) {
            self.video
                .on_message(&self.room, msg.peer, &msg.bytes, msg.at_ms);
        }
    }

    /// The next command from a handle, or frame from the page; never, while neither can
    /// come (no handles left, no page attached).
    pub async fn next_input(&mut self) -> CallInput {
        tokio::select! {
            cmd = recv_or_never(self.commands.as_mut()) => CallInput::Command(cmd),
            frame = recv_or_never(self.video.from_page()) => CallInput::Video(frame),
        }
    }

    /// Sessions being set up (a room stream, no admission yet).
    fn handshakes(&self) -> usize {
        self.peers
            .values()
            .filter(|c| c.room_stream.is_some() && !c.member)
            .count()
    }

    /// Whether a media sender should start toward members now.
    pub(super) fn sending(&self) -> bool {
        self.capture.sending
    }
}

/// What comes to a call from outside the network: its handles' commands (`None`: every
/// handle is gone) and its page's video frames (`None`: the page's queue closed).
pub enum CallInput {
    Command(Option<CallCommand>),
    Video(Option<super::video::LocalFrame>),
}

async fn recv_or_never<T>(rx: Option<&mut mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn finish_sink(sink: &mut dyn AudioSink) {
    if let Err(e) = sink.finish() {
        warn!(error = %e, "cannot finish writing what was heard");
    }
}

/// The ticket's members other than us, with their addresses.
fn bootstrap(ticket: &Ticket, me: PeerId) -> BTreeMap<PeerId, Vec<Multiaddr>> {
    let mut out = BTreeMap::new();
    for info in &ticket.bootstrap {
        let Some(pid) = peer_id(&info.peer_id) else {
            warn!("ticket names a peer id that does not parse; skipping it");
            continue;
        };
        if pid != me {
            out.insert(pid, parse_addrs(&info.addrs));
        }
    }
    out
}

/// The addresses of a ticket, Hello or roster entry that parse.
pub(super) fn parse_addrs(addrs: &[String]) -> Vec<Multiaddr> {
    addrs.iter().filter_map(|a| a.parse().ok()).collect()
}
