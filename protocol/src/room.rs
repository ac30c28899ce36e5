//! The room state machine: admission, roster, join/leave and key epochs.
//!
//! One [`Room`] is one member's view of one room. It is sans-IO in the style of quinn-proto:
//! the caller feeds it what happened (`connect`, `handle_frame`, `peer_disconnected`,
//! `handle_timeout`, all with the current time in ms) and drains what it wants done
//! (`poll_transmit`, `poll_event`, `poll_media`, `poll_timeout`). It never reads a clock,
//! never touches the network and takes its randomness from the seed it was created with.
//!
//! Life of a pair of members: the node opens one `/confab/room/1` stream per pair and calls
//! [`Room::connect`] on both ends (initiator on the side that opened it). The Noise
//! handshake runs; a wrong room secret ends it with [`Event::AdmissionFailed`] on both sides
//! (the side that detects it sends a clear `Reject`). Once the session is up each side sends
//! `Hello`, `Roster` and its current `SenderKey`; the peer is [`Event::Admitted`] when its
//! `Hello` arrives. Members that join make every member ratchet its sender key forward (the
//! joiner receives only the new key; the others follow the ratchet without messages);
//! members that leave — by `Leave`, by disconnect or by silence — make every member rotate
//! to a fresh random key sent to those who remain, so the leaver cannot decrypt what follows.

use std::collections::{BTreeMap, VecDeque};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::crypto::{
    room_psk, Handshake, HandshakeStep, Identity, LocalStatic, MediaKey, OpenedFrame, ReceiverKeys,
    SenderKey, Session,
};
use crate::error::{Error, Result};
use crate::wire::{Control, MediaFrame, PeerInfo, RejectReason, RoomFrame, MAX_MEMBERS, MAX_NAME};
use crate::{RoomId, RoomSecret};

/// Peer id bytes (libp2p multihash).
pub type PeerKey = Vec<u8>;

/// Tunables of a room. All times in milliseconds.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// Our display name, announced in `Hello`.
    pub name: String,
    /// Addresses we can be reached at, announced in `Hello` and passed on in rosters.
    pub addrs: Vec<String>,
    /// Whether we record the call (announced to everyone).
    pub recording: bool,
    /// Most members, ourselves included.
    pub max_members: usize,
    /// A handshake that takes longer than this fails.
    pub handshake_timeout_ms: u64,
    /// Send a heartbeat when nothing else was sent for this long.
    pub heartbeat_interval_ms: u64,
    /// A member we heard nothing from for this long is dropped from the roster.
    pub idle_timeout_ms: u64,
    /// Media frames held per sender while waiting for their epoch's key.
    pub pending_frames: usize,
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            addrs: Vec::new(),
            recording: false,
            max_members: 16,
            handshake_timeout_ms: 10_000,
            heartbeat_interval_ms: 1_000,
            idle_timeout_ms: 5_000,
            pending_frames: 16,
        }
    }
}

/// Something to send on the room stream to `peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub peer: PeerKey,
    /// An encoded [`RoomFrame`]; the caller adds the 2-byte length prefix.
    pub frame: Vec<u8>,
    /// Close the stream after sending this.
    pub close: bool,
}

/// Why a peer did not get in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdmissionFailure {
    /// We detected that the peer holds another room secret.
    BadSecret,
    /// The peer refused us, saying why.
    Rejected(RejectReason),
    /// The peer's identity proof did not verify, or it is not the peer we connected to.
    BadIdentity,
    /// The room is full.
    RoomFull,
    /// The handshake did not finish in time, or the stream closed during it.
    Incomplete,
    /// Anything else that broke the handshake.
    Protocol(String),
}

impl std::fmt::Display for AdmissionFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdmissionFailure::BadSecret => f.write_str("the peer holds a different room secret"),
            AdmissionFailure::Rejected(r) => write!(f, "refused by the peer: {r}"),
            AdmissionFailure::BadIdentity => f.write_str("the peer's identity proof is invalid"),
            AdmissionFailure::RoomFull => f.write_str("the room is full"),
            AdmissionFailure::Incomplete => f.write_str("the handshake did not complete"),
            AdmissionFailure::Protocol(m) => write!(f, "protocol error: {m}"),
        }
    }
}

/// Why a member left the roster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// It said goodbye.
    Left,
    /// Its connection went away.
    Disconnected,
    /// We heard nothing from it for `idle_timeout_ms`.
    TimedOut,
    /// It sent something that does not authenticate or decode.
    Misbehaved,
}

/// What the room tells its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A member's session is up and its `Hello` arrived: media may flow both ways.
    Admitted {
        peer: PeerKey,
        name: String,
        addrs: Vec<String>,
        recording: bool,
    },
    /// A member is gone; close its streams.
    Left { peer: PeerKey, reason: LeaveReason },
    /// A handshake failed; close the stream.
    AdmissionFailed {
        peer: PeerKey,
        reason: AdmissionFailure,
    },
    /// A member told us about a member we are not connected to: dial it.
    Dial(PeerInfo),
    /// A member started or stopped recording.
    Recording { peer: PeerKey, on: bool },
    /// Our own sender key moved to a new epoch.
    Rekeyed { epoch: u32, fresh: bool },
}

/// Counters of a room, for statistics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomCounters {
    pub handshakes_started: u64,
    pub admissions: u64,
    pub admission_failures: u64,
    pub departures: u64,
    pub sender_key_messages_sent: u64,
    pub control_messages_sent: u64,
    pub media_decrypt_failures: u64,
    pub media_replays: u64,
    pub media_unknown_epoch: u64,
    pub media_from_non_member: u64,
    pub pending_dropped: u64,
    pub malformed_frames: u64,
}

struct Member {
    session: Session,
    /// The peer's first transport message authenticated (proves it holds the secret).
    confirmed: bool,
    hello: Option<(String, Vec<String>, bool)>,
    keys: ReceiverKeys,
    pending: VecDeque<MediaFrame>,
    last_rx_ms: u64,
    last_tx_ms: u64,
}

enum PeerState {
    Handshaking { hs: Box<Handshake>, started_ms: u64 },
    Member(Box<Member>),
}

/// One member's view of a room.
pub struct Room {
    cfg: RoomConfig,
    identity: Identity,
    me: PeerKey,
    room_id: RoomId,
    psk: [u8; 32],
    rng: ChaCha20Rng,
    /// Our X25519 static key and identity proof for this room, made on first use.
    local_static: Option<LocalStatic>,
    sender: SenderKey,
    peers: BTreeMap<PeerKey, PeerState>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    media: VecDeque<(PeerKey, OpenedFrame)>,
    counters: RoomCounters,
}

impl Room {
    /// Creates our view of a room. `seed` is the only source of randomness.
    pub fn new(
        cfg: RoomConfig,
        identity: Identity,
        room_id: RoomId,
        secret: &RoomSecret,
        seed: [u8; 32],
    ) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let sender = SenderKey::new(&mut rng);
        Self {
            me: identity.peer_id(),
            psk: room_psk(&room_id, secret),
            cfg,
            identity,
            room_id,
            rng,
            local_static: None,
            sender,
            peers: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            media: VecDeque::new(),
            counters: RoomCounters::default(),
        }
    }

    pub fn local_peer(&self) -> &[u8] {
        &self.me
    }

    pub fn room_id(&self) -> &RoomId {
        &self.room_id
    }

    pub fn counters(&self) -> &RoomCounters {
        &self.counters
    }

    pub fn epoch(&self) -> u32 {
        self.sender.epoch()
    }

    /// Admitted members (not counting ourselves), with their names and recording flags.
    pub fn members(&self) -> impl Iterator<Item = (&PeerKey, &str, bool)> {
        self.peers.iter().filter_map(|(k, s)| match s {
            PeerState::Member(m) => m
                .hello
                .as_ref()
                .map(|(name, _, rec)| (k, name.as_str(), *rec)),
            PeerState::Handshaking { .. } => None,
        })
    }

    pub fn is_member(&self, peer: &[u8]) -> bool {
        matches!(self.peers.get(peer), Some(PeerState::Member(m)) if m.hello.is_some())
    }

    /// Whether a handshake or session with `peer` exists.
    pub fn knows(&self, peer: &[u8]) -> bool {
        self.peers.contains_key(peer)
    }

    pub fn member_count(&self) -> usize {
        self.members().count()
    }

    fn seed(&mut self) -> [u8; 32] {
        let mut s = [0u8; 32];
        self.rng.fill_bytes(&mut s);
        s
    }

    /// A fresh room stream to `peer` is open; `initiator` on the side that opened it.
    /// Replaces any earlier session with that peer (it reconnected).
    pub fn connect(&mut self, now: u64, peer: PeerKey, initiator: bool) -> Result<()> {
        if peer == self.me {
            return Err(Error::Handshake("refusing a session with ourselves".into()));
        }
        if self.local_static.is_none() {
            let seed = self.seed();
            self.local_static = Some(LocalStatic::new(&self.identity, &self.room_id, seed)?);
        }
        let seed = self.seed();
        let local = self
            .local_static
            .as_ref()
            .ok_or_else(|| Error::Handshake("no static key".into()))?;
        let hs = Handshake::new(initiator, local, &self.room_id, &self.psk, seed)?;
        if let Some(PeerState::Member(_)) = self.peers.get(&peer) {
            self.remove_member(now, &peer, LeaveReason::Disconnected);
        }
        self.peers.insert(
            peer.clone(),
            PeerState::Handshaking {
                hs: Box::new(hs),
                started_ms: now,
            },
        );
        self.counters.handshakes_started += 1;
        self.advance_handshake(now, &peer);
        Ok(())
    }

    /// One frame arrived on `peer`'s room stream.
    pub fn handle_frame(&mut self, now: u64, peer: &[u8], bytes: &[u8]) {
        let frame = match RoomFrame::decode(bytes) {
            Ok(f) => f,
            Err(e) => {
                self.counters.malformed_frames += 1;
                self.fail_peer(now, peer, AdmissionFailure::Protocol(e.to_string()));
                return;
            }
        };
        match frame {
            RoomFrame::Reject(reason) => {
                if self.peers.contains_key(peer) {
                    let failure = match reason {
                        RejectReason::RoomFull => AdmissionFailure::RoomFull,
                        r => AdmissionFailure::Rejected(r),
                    };
                    self.fail_or_remove(now, peer, failure);
                }
            }
            RoomFrame::Handshake(msg) => self.handle_handshake(now, peer, &msg),
            RoomFrame::Transport(ct) => self.handle_transport(now, peer, &ct),
        }
    }

    fn handle_handshake(&mut self, now: u64, peer: &[u8], msg: &[u8]) {
        let Some(PeerState::Handshaking { hs, .. }) = self.peers.get_mut(peer) else {
            self.counters.malformed_frames += 1;
            self.fail_or_remove(
                now,
                peer,
                AdmissionFailure::Protocol("handshake message outside a handshake".into()),
            );
            return;
        };
        if let Err(e) = hs.read(msg) {
            let (reason, reject) = match e {
                Error::BadRoomSecret => (AdmissionFailure::BadSecret, RejectReason::BadSecret),
                Error::BadIdentity(_) => (AdmissionFailure::BadIdentity, RejectReason::BadIdentity),
                e => (
                    AdmissionFailure::Protocol(e.to_string()),
                    RejectReason::Protocol,
                ),
            };
            self.reject(now, peer, reject, reason);
            return;
        }
        if let Some(remote) = hs.remote_peer() {
            if remote != peer {
                self.reject(
                    now,
                    peer,
                    RejectReason::BadIdentity,
                    AdmissionFailure::BadIdentity,
                );
                return;
            }
        }
        self.advance_handshake(now, peer);
    }

    fn reject(&mut self, _now: u64, peer: &[u8], reject: RejectReason, reason: AdmissionFailure) {
        self.transmits.push_back(Transmit {
            peer: peer.to_vec(),
            frame: RoomFrame::Reject(reject).encode(),
            close: true,
        });
        self.peers.remove(peer);
        self.counters.admission_failures += 1;
        self.events.push_back(Event::AdmissionFailed {
            peer: peer.to_vec(),
            reason,
        });
    }

    /// Writes handshake messages while it is our turn; moves a finished handshake to a session.
    fn advance_handshake(&mut self, now: u64, peer: &[u8]) {
        loop {
            let Some(PeerState::Handshaking { hs, .. }) = self.peers.get_mut(peer) else {
                return;
            };
            if hs.is_finished() {
                break;
            }
            match hs.write() {
                Ok(HandshakeStep::Send(msg)) => self.transmits.push_back(Transmit {
                    peer: peer.to_vec(),
                    frame: RoomFrame::Handshake(msg).encode(),
                    close: false,
                }),
                Ok(HandshakeStep::Wait) => return,
                Err(e) => {
                    let reason = AdmissionFailure::Protocol(e.to_string());
                    self.reject(now, peer, RejectReason::Protocol, reason);
                    return;
                }
            }
        }
        let Some(PeerState::Handshaking { hs, .. }) = self.peers.remove(peer) else {
            return;
        };
        let session = match hs.into_session() {
            Ok(s) => s,
            Err(e) => {
                let reason = AdmissionFailure::Protocol(e.to_string());
                self.reject(now, peer, RejectReason::Protocol, reason);
                return;
            }
        };
        // Ourselves, the members so far and the newcomer.
        if self.member_count() + 2 > self.cfg.max_members.min(MAX_MEMBERS) {
            self.reject(
                now,
                peer,
                RejectReason::RoomFull,
                AdmissionFailure::RoomFull,
            );
            return;
        }
        self.peers.insert(
            peer.to_vec(),
            PeerState::Member(Box::new(Member {
                session,
                confirmed: false,
                hello: None,
                keys: ReceiverKeys::new(),
                pending: VecDeque::new(),
                last_rx_ms: now,
                last_tx_ms: now,
            })),
        );
        // A newcomer must not read what was sent before it came: ratchet our key forward
        // (the others follow without a message) and give the newcomer only the new key.
        self.sender.ratchet();
        self.events.push_back(Event::Rekeyed {
            epoch: self.sender.epoch(),
            fresh: false,
        });
        let hello = Control::Hello {
            name: self.cfg.name.clone(),
            addrs: self.cfg.addrs.clone(),
            recording: self.cfg.recording,
        };
        let roster = Control::Roster {
            members: self.roster_for(peer),
        };
        let key = self.sender_key_message(false);
        for msg in [hello, roster, key] {
            self.send_control(now, peer, &msg);
        }
    }

    /// The members we are in session with, except `exclude`, with their announced addresses.
    fn roster_for(&self, exclude: &[u8]) -> Vec<PeerInfo> {
        self.peers
            .iter()
            .filter(|(k, _)| k.as_slice() != exclude)
            .filter_map(|(k, s)| match s {
                PeerState::Member(m) => m.hello.as_ref().map(|(_, addrs, _)| PeerInfo {
                    peer_id: k.clone(),
                    addrs: addrs.clone(),
                }),
                PeerState::Handshaking { .. } => None,
            })
            .take(MAX_MEMBERS)
            .collect()
    }

    fn sender_key_message(&self, fresh: bool) -> Control {
        Control::SenderKey {
            epoch: self.sender.epoch(),
            key: self.sender.key().0,
            fresh,
        }
    }

    fn send_control(&mut self, now: u64, peer: &[u8], msg: &Control) {
        let Some(PeerState::Member(m)) = self.peers.get_mut(peer) else {
            return;
        };
        match m.session.encrypt(&msg.encode()) {
            Ok(ct) => {
                m.last_tx_ms = now;
                if matches!(msg, Control::SenderKey { .. }) {
                    self.counters.sender_key_messages_sent += 1;
                }
                self.counters.control_messages_sent += 1;
                self.transmits.push_back(Transmit {
                    peer: peer.to_vec(),
                    frame: RoomFrame::Transport(ct).encode(),
                    close: matches!(msg, Control::Leave),
                });
            }
            Err(_) => self.remove_member(now, peer, LeaveReason::Misbehaved),
        }
    }

    fn handle_transport(&mut self, now: u64, peer: &[u8], ct: &[u8]) {
        let Some(PeerState::Member(m)) = self.peers.get_mut(peer) else {
            self.counters.malformed_frames += 1;
            self.fail_or_remove(
                now,
                peer,
                AdmissionFailure::Protocol("transport message before the handshake ended".into()),
            );
            return;
        };
        let plaintext = match m.session.decrypt(ct) {
            Ok(p) => p,
            Err(_) => {
                self.counters.malformed_frames += 1;
                if m.confirmed {
                    self.remove_member(now, peer, LeaveReason::Misbehaved);
                } else {
                    // Our handshake message 3 was the first to carry the PSK; a peer with
                    // another secret cannot produce a valid transport message.
                    self.peers.remove(peer);
                    self.counters.admission_failures += 1;
                    self.events.push_back(Event::AdmissionFailed {
                        peer: peer.to_vec(),
                        reason: AdmissionFailure::BadSecret,
                    });
                }
                return;
            }
        };
        m.confirmed = true;
        m.last_rx_ms = now;
        let msg = match Control::decode(&plaintext) {
            Ok(msg) => msg,
            Err(_) => {
                self.counters.malformed_frames += 1;
                self.remove_member(now, peer, LeaveReason::Misbehaved);
                return;
            }
        };
        self.handle_control(now, peer, msg);
    }

    fn handle_control(&mut self, now: u64, peer: &[u8], msg: Control) {
        let Some(PeerState::Member(m)) = self.peers.get_mut(peer) else {
            return;
        };
        match msg {
            Control::Hello {
                name,
                addrs,
                recording,
            } => {
                if m.hello.is_some() {
                    return;
                }
                let name: String = name.chars().filter(|c| !c.is_control()).collect();
                let name = crate::wire::truncate_utf8(&name, MAX_NAME).to_string();
                m.hello = Some((name.clone(), addrs.clone(), recording));
                self.counters.admissions += 1;
                self.events.push_back(Event::Admitted {
                    peer: peer.to_vec(),
                    name,
                    addrs: addrs.clone(),
                    recording,
                });
                // Tell the other members about the newcomer so that the mesh closes even
                // when several join at once.
                let info = PeerInfo {
                    peer_id: peer.to_vec(),
                    addrs,
                };
                let others: Vec<PeerKey> = self
                    .members()
                    .map(|(k, _, _)| k.clone())
                    .filter(|k| k.as_slice() != peer)
                    .collect();
                for other in others {
                    let roster = Control::Roster {
                        members: vec![info.clone()],
                    };
                    self.send_control(now, &other, &roster);
                }
            }
            Control::Roster { members } => {
                for info in members {
                    if info.peer_id != self.me && !self.peers.contains_key(&info.peer_id) {
                        self.events.push_back(Event::Dial(info));
                    }
                }
            }
            Control::SenderKey { epoch, key, .. } => {
                m.keys.install(epoch, MediaKey(key));
                let pending = std::mem::take(&mut m.pending);
                for frame in pending {
                    match m.keys.open(&frame) {
                        Ok(opened) => self.media.push_back((peer.to_vec(), opened)),
                        Err(Error::UnknownEpoch(_))
                            if m.pending.len() < self.cfg.pending_frames =>
                        {
                            m.pending.push_back(frame)
                        }
                        Err(_) => self.counters.pending_dropped += 1,
                    }
                }
            }
            Control::Recording { on } => {
                if let Some(h) = m.hello.as_mut() {
                    h.2 = on;
                }
                self.events.push_back(Event::Recording {
                    peer: peer.to_vec(),
                    on,
                });
            }
            Control::Leave => self.remove_member(now, peer, LeaveReason::Left),
            Control::Heartbeat => {}
        }
    }

    /// The room stream or the connection to `peer` is gone.
    pub fn peer_disconnected(&mut self, now: u64, peer: &[u8]) {
        match self.peers.get(peer) {
            Some(PeerState::Member(_)) => self.remove_member(now, peer, LeaveReason::Disconnected),
            Some(PeerState::Handshaking { .. }) => {
                self.fail_peer(now, peer, AdmissionFailure::Incomplete)
            }
            None => {}
        }
    }

    fn fail_or_remove(&mut self, now: u64, peer: &[u8], failure: AdmissionFailure) {
        match self.peers.get(peer) {
            Some(PeerState::Member(m)) if m.confirmed => {
                self.remove_member(now, peer, LeaveReason::Misbehaved)
            }
            Some(_) => self.fail_peer(now, peer, failure),
            None => {}
        }
    }

    fn fail_peer(&mut self, _now: u64, peer: &[u8], reason: AdmissionFailure) {
        if self.peers.remove(peer).is_some() {
            self.counters.admission_failures += 1;
            self.events.push_back(Event::AdmissionFailed {
                peer: peer.to_vec(),
                reason,
            });
        }
    }

    fn remove_member(&mut self, now: u64, peer: &[u8], reason: LeaveReason) {
        let Some(PeerState::Member(m)) = self.peers.remove(peer) else {
            return;
        };
        if m.hello.is_none() {
            self.counters.admission_failures += 1;
            self.events.push_back(Event::AdmissionFailed {
                peer: peer.to_vec(),
                reason: AdmissionFailure::Incomplete,
            });
            return;
        }
        self.counters.departures += 1;
        self.events.push_back(Event::Left {
            peer: peer.to_vec(),
            reason,
        });
        // Whoever left must not read what follows: a fresh key, sent only to those who stay.
        self.sender.rotate(&mut self.rng);
        self.events.push_back(Event::Rekeyed {
            epoch: self.sender.epoch(),
            fresh: true,
        });
        let msg = self.sender_key_message(true);
        let stay: Vec<PeerKey> = self
            .peers
            .iter()
            .filter(|(_, s)| matches!(s, PeerState::Member(_)))
            .map(|(k, _)| k.clone())
            .collect();
        for p in stay {
            self.send_control(now, &p, &msg);
        }
    }

    /// We leave: say goodbye to everyone and forget them.
    pub fn leave(&mut self, now: u64) {
        let members: Vec<PeerKey> = self.peers.keys().cloned().collect();
        for p in &members {
            self.send_control(now, p, &Control::Leave);
        }
        self.peers.clear();
        self.media.clear();
    }

    /// Starts or stops recording and tells everyone.
    pub fn set_recording(&mut self, now: u64, on: bool) {
        self.cfg.recording = on;
        let members: Vec<PeerKey> = self.members().map(|(k, _, _)| k.clone()).collect();
        for p in members {
            self.send_control(now, &p, &Control::Recording { on });
        }
    }

    /// Updates the addresses announced to members admitted from now on.
    pub fn set_addrs(&mut self, addrs: Vec<String>) {
        self.cfg.addrs = addrs;
    }

    /// Encrypts one media payload once, for every member. Returns the encoded frame.
    pub fn encrypt_media(
        &mut self,
        capture_ts_ms: u64,
        payload: &[u8],
        pad_to: Option<usize>,
    ) -> Result<Vec<u8>> {
        Ok(self
            .sender
            .encrypt(capture_ts_ms, payload, pad_to)?
            .encode())
    }

    /// A media frame arrived from `peer`. `Ok(None)` means it is held until its epoch's
    /// key arrives; it then comes out of [`Room::poll_media`].
    pub fn open_media(
        &mut self,
        _now: u64,
        peer: &[u8],
        bytes: &[u8],
    ) -> Result<Option<OpenedFrame>> {
        let frame = MediaFrame::decode(bytes).inspect_err(|_| {
            self.counters.malformed_frames += 1;
        })?;
        let Some(PeerState::Member(m)) = self.peers.get_mut(peer) else {
            self.counters.media_from_non_member += 1;
            return Err(Error::NoSession);
        };
        match m.keys.open(&frame) {
            Ok(opened) => Ok(Some(opened)),
            Err(Error::UnknownEpoch(e)) => {
                let newer = m.keys.newest_epoch().is_none_or(|n| e > n);
                if newer && m.pending.len() < self.cfg.pending_frames {
                    m.pending.push_back(frame);
                    Ok(None)
                } else {
                    self.counters.media_unknown_epoch += 1;
                    Err(Error::UnknownEpoch(e))
                }
            }
            Err(e @ Error::Replay { .. }) => {
                self.counters.media_replays += 1;
                Err(e)
            }
            Err(e) => {
                self.counters.media_decrypt_failures += 1;
                Err(e)
            }
        }
    }

    /// Advances timers: handshake deadlines, heartbeats, idle members.
    pub fn handle_timeout(&mut self, now: u64) {
        let mut expired_hs = Vec::new();
        let mut idle = Vec::new();
        let mut heartbeat = Vec::new();
        for (k, s) in &self.peers {
            match s {
                PeerState::Handshaking { started_ms, .. } => {
                    if now.saturating_sub(*started_ms) >= self.cfg.handshake_timeout_ms {
                        expired_hs.push(k.clone());
                    }
                }
                PeerState::Member(m) => {
                    if now.saturating_sub(m.last_rx_ms) >= self.cfg.idle_timeout_ms {
                        idle.push(k.clone());
                    } else if now.saturating_sub(m.last_tx_ms) >= self.cfg.heartbeat_interval_ms {
                        heartbeat.push(k.clone());
                    }
                }
            }
        }
        for k in expired_hs {
            self.fail_peer(now, &k, AdmissionFailure::Incomplete);
        }
        for k in idle {
            self.remove_member(now, &k, LeaveReason::TimedOut);
        }
        for k in heartbeat {
            if matches!(self.peers.get(&k), Some(PeerState::Member(_))) {
                self.send_control(now, &k, &Control::Heartbeat);
            }
        }
    }

    /// The next time [`Room::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.peers
            .values()
            .map(|s| match s {
                PeerState::Handshaking { started_ms, .. } => {
                    started_ms.saturating_add(self.cfg.handshake_timeout_ms)
                }
                PeerState::Member(m) => m
                    .last_rx_ms
                    .saturating_add(self.cfg.idle_timeout_ms)
                    .min(m.last_tx_ms.saturating_add(self.cfg.heartbeat_interval_ms)),
            })
            .min()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Media frames released after their key arrived.
    pub fn poll_media(&mut self) -> Option<(PeerKey, OpenedFrame)> {
        self.media.pop_front()
    }
}

#[cfg(test)]
mod tests;
