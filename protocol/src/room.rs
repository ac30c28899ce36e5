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
//! `Hello`; the peer counts against `max_members` from then on. When the peer's `Hello`
//! arrives it is [`Event::Admitted`] and only then gets what a member is owed: our `Roster`
//! and our current `SenderKey`. Members that join make every member ratchet its sender key
//! forward (the joiner receives only the new key; the others follow the ratchet without
//! messages, and are sent the current key again before they could fall out of the
//! receivers' ratchet window); members that leave — by `Leave`, by disconnect or by silence —
//! make every member rotate to a fresh random key sent to those who remain, so the leaver
//! cannot decrypt what follows.
//!
//! Rule: nothing that changes state is accepted from a peer before it authenticated. A
//! clear-text `Reject` is acted on only while we are handshaking with that peer (reported as
//! [`AdmissionFailure::Rejected`], never as one of our own findings); control messages other
//! than `Hello`, `Leave` and `Heartbeat` before `Hello` are a protocol violation; roster
//! gossip yields a bounded number of [`Event::Dial`] suggestions with dialable addresses
//! only, and never replaces the addresses an admitted member announced itself. See
//! `docs/protocol.md`, "What is accepted from whom".

use std::collections::{BTreeMap, VecDeque};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::crypto::{
    room_psk, Handshake, HandshakeStep, Identity, LocalStatic, MediaKey, OpenedFrame, ReceiverKeys,
    SenderKey, Session, MAX_RATCHET_STEPS,
};
use crate::error::{Error, Result};
use crate::wire::{
    dialable_addrs, plausible_peer_id, Control, MediaFormat, MediaFrame, PeerInfo, RejectReason,
    RoomFrame, MAX_ADDRS, MAX_CHAT, MAX_MEMBERS, MAX_NAME,
};
use crate::{RoomId, RoomSecret};

/// Peer id bytes (libp2p multihash).
pub type PeerKey = Vec<u8>;

/// Most [`Event::Dial`] suggestions one roster message can yield (fewer when the room has
/// fewer free places).
pub const MAX_DIALS_PER_ROSTER: usize = 8;
/// Most addresses in one [`Event::Dial`] suggestion.
pub const MAX_DIAL_ADDRS: usize = 4;
/// A member that was last sent our key this many ratchet steps ago is sent the current key
/// again, so that no receiver ever needs more than this many ratchet steps (the receivers'
/// window is [`MAX_RATCHET_STEPS`]), however many joins happen between two of our frames.
pub const KEY_REFRESH_STEPS: u32 = MAX_RATCHET_STEPS / 2;
/// Most handshakes in progress at once; [`Room::connect`] refuses more.
pub const MAX_HANDSHAKES: usize = 2 * MAX_MEMBERS;
/// How many departed members' own announced addresses are remembered, so that roster
/// gossip about a lost member cannot replace them.
const REMEMBERED_PEERS: usize = MAX_MEMBERS;
/// Chat messages accepted from one member per [`CHAT_WINDOW_MS`]; more are dropped and
/// counted, so a member cannot flood the others' screens.
pub const CHAT_PER_WINDOW: u32 = 10;
pub const CHAT_WINDOW_MS: u64 = 5_000;

/// Tunables of a room. All times in milliseconds.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// Our display name, announced in `Hello`.
    pub name: String,
    /// Addresses we can be reached at, announced in `Hello` and passed on in rosters.
    pub addrs: Vec<String>,
    /// Whether we record the call (announced to everyone).
    pub recording: bool,
    /// Whether our microphone is muted (announced to everyone).
    pub muted: bool,
    /// Most members, ourselves included. Every peer whose session is up counts, whether or
    /// not its `Hello` arrived yet.
    pub max_members: usize,
    /// A handshake that takes longer than this fails; so does a session whose `Hello` has
    /// not arrived this long after its handshake started.
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
            muted: false,
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
///
/// [`AdmissionFailure::Rejected`] is the only variant that reports what the *peer* said (a
/// clear-text, unauthenticated `Reject`, acted on only while we were handshaking with that
/// peer); every other variant is something *we* found or decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdmissionFailure {
    /// We detected that the peer holds another room secret.
    BadSecret,
    /// The peer refused us, saying why. Unauthenticated: any peer we handshake with can
    /// send it, whether or not it holds the room secret.
    Rejected(RejectReason),
    /// The peer's identity proof did not verify, or it is not the peer we connected to.
    BadIdentity,
    /// We refused the peer because our room is full (a peer that says our room is full
    /// is reported as `Rejected(RejectReason::RoomFull)`).
    RoomFull,
    /// The handshake did not finish in time, the stream closed during it, or the peer's
    /// `Hello` did not arrive in time.
    Incomplete,
    /// Anything else that broke the handshake, or a protocol violation before `Hello`.
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
        /// The member's own announced addresses, dialable ones only.
        addrs: Vec<String>,
        recording: bool,
    },
    /// A member is gone; close its streams.
    Left { peer: PeerKey, reason: LeaveReason },
    /// A handshake failed, or a session ended before its `Hello`; close the stream.
    AdmissionFailed {
        peer: PeerKey,
        reason: AdmissionFailure,
    },
    /// A member told us about a member we are not connected to: dial it. At most
    /// [`MAX_DIALS_PER_ROSTER`] per roster message, each with at most [`MAX_DIAL_ADDRS`]
    /// dialable addresses (possibly none: the peer id alone may do when a connection
    /// exists). For a member we admitted before, its own announced addresses come first.
    Dial(PeerInfo),
    /// A member started or stopped recording.
    Recording { peer: PeerKey, on: bool },
    /// A member muted or unmuted its microphone.
    Muted { peer: PeerKey, on: bool },
    /// A member's chat message (control characters other than newlines removed).
    Chat { peer: PeerKey, text: String },
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
    /// `Reject`s acted on (from a peer we were handshaking with).
    pub rejects_received: u64,
    /// `Reject`s from peers we had no handshake with, ignored.
    pub rejects_ignored: u64,
    /// [`Event::Dial`] suggestions made from roster messages.
    pub dials_suggested: u64,
    /// Roster entries not suggested because a bound was reached or the peer id is not one.
    pub roster_entries_dropped: u64,
    /// Addresses (in `Hello` or roster entries) dropped because they are not dialable.
    pub addrs_dropped: u64,
    /// Current keys sent again to members that would otherwise fall out of the ratchet window.
    pub key_refreshes: u64,
    /// Chat messages dropped because their sender went over [`CHAT_PER_WINDOW`].
    pub chat_dropped: u64,
}

/// What a member announced in its `Hello`: name, dialable addresses, recording.
type Announced = (String, Vec<String>, bool);

struct Member {
    session: Session,
    /// The peer's first transport message authenticated (proves it holds the secret).
    confirmed: bool,
    hello: Option<Announced>,
    /// When a session without `Hello` is given up.
    hello_deadline_ms: u64,
    /// The epoch of the newest of our sender keys this member was sent.
    key_epoch: Option<u32>,
    keys: ReceiverKeys,
    pending: VecDeque<MediaFrame>,
    last_rx_ms: u64,
    last_tx_ms: u64,
    /// Start of the current chat window and the messages accepted in it.
    chat_window: (u64, u32),
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
    /// Departed members and the addresses they announced themselves, newest last.
    past: VecDeque<(PeerKey, Vec<String>)>,
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
            past: VecDeque::new(),
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

    /// Peers whose session is up, admitted or still waiting for their `Hello`: what counts
    /// against `max_members` (besides ourselves).
    pub fn session_count(&self) -> usize {
        self.peers
            .values()
            .filter(|s| matches!(s, PeerState::Member(_)))
            .count()
    }

    fn handshake_count(&self) -> usize {
        self.peers.len() - self.session_count()
    }

    fn limit(&self) -> usize {
        self.cfg.max_members.min(MAX_MEMBERS)
    }

    fn seed(&mut self) -> [u8; 32] {
        let mut s = [0u8; 32];
        self.rng.fill_bytes(&mut s);
        s
    }

    /// A fresh room stream to `peer` is open; `initiator` on the side that opened it.
    /// Replaces any earlier session with that peer (it reconnected). Refused while
    /// [`MAX_HANDSHAKES`] handshakes with other peers are in progress.
    pub fn connect(&mut self, now: u64, peer: PeerKey, initiator: bool) -> Result<()> {
        if peer == self.me {
            return Err(Error::Handshake("refusing a session with ourselves".into()));
        }
        if !self.peers.contains_key(&peer) && self.handshake_count() >= MAX_HANDSHAKES {
            return Err(Error::Handshake("too many handshakes in progress".into()));
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

    /// One frame arrived on `peer`'s room stream. The caller passes only frames of the
    /// stream the current session with `peer` runs on (the one given to the latest
    /// [`Room::connect`] for `peer`), never frames of an older or a second stream.
    ///
    /// A frame that does not decode (empty, too short for its kind, unknown kind, too
    /// long) is counted in `malformed_frames` and changes nothing: it is not traffic (it
    /// does not keep a session alive), it does not advance or fail a handshake and it does
    /// not end a session.
    pub fn handle_frame(&mut self, now: u64, peer: &[u8], bytes: &[u8]) {
        let Ok(frame) = RoomFrame::decode(bytes) else {
            self.counters.malformed_frames += 1;
            return;
        };
        match frame {
            RoomFrame::Reject(reason) => self.handle_reject(now, peer, reason),
            RoomFrame::Handshake(msg) => self.handle_handshake(now, peer, &msg),
            RoomFrame::Transport(ct) => self.handle_transport(now, peer, &ct),
        }
    }

    /// A clear-text `Reject` is believed only from a peer we are handshaking with (its
    /// session has not authenticated a single message yet); it is then reported as
    /// [`AdmissionFailure::Rejected`]. On an authenticated session it is a protocol
    /// violation of that member; from a peer we have nothing with it is ignored.
    fn handle_reject(&mut self, now: u64, peer: &[u8], reason: RejectReason) {
        let handshaking = match self.peers.get(peer) {
            Some(PeerState::Handshaking { .. }) => true,
            Some(PeerState::Member(m)) => !m.confirmed,
            None => {
                self.counters.rejects_ignored += 1;
                return;
            }
        };
        if handshaking {
            self.counters.rejects_received += 1;
            self.fail_peer(now, peer, AdmissionFailure::Rejected(reason));
        } else {
            self.counters.malformed_frames += 1;
            self.remove_member(now, peer, LeaveReason::Misbehaved);
        }
    }

    fn handle_handshake(&mut self, now: u64, peer: &[u8], msg: &[u8]) {
        let Some(PeerState::Handshaking { hs, .. }) = self.peers.get_mut(peer) else {
            if self.peers.contains_key(peer) {
                self.counters.malformed_frames += 1;
            }
            self.drop_peer(
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

    /// Writes handshake messages while it is our turn; moves a finished handshake to a
    /// session, which counts against `max_members` from now on. Only our `Hello` goes out
    /// now: the roster and our key wait for the peer's `Hello`.
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
        let Some(PeerState::Handshaking { hs, started_ms }) = self.peers.remove(peer) else {
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
        // Ourselves, every session so far (with or without Hello) and the newcomer.
        if self.session_count() + 2 > self.limit() {
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
                hello_deadline_ms: started_ms.saturating_add(self.cfg.handshake_timeout_ms),
                key_epoch: None,
                keys: ReceiverKeys::new(),
                pending: VecDeque::new(),
                last_rx_ms: now,
                last_tx_ms: now,
                chat_window: (now, 0),
            })),
        );
        let hello = Control::Hello {
            name: self.cfg.name.clone(),
            addrs: self.cfg.addrs.clone(),
            recording: self.cfg.recording,
        };
        self.send_control(now, peer, &hello);
    }

    /// The admitted members, except `exclude`, with their announced addresses.
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

    fn admitted_except(&self, exclude: &[u8]) -> Vec<PeerKey> {
        self.members()
            .map(|(k, _, _)| k.clone())
            .filter(|k| k.as_slice() != exclude)
            .collect()
    }

    /// Sends our current sender key to `peer` and notes which epoch it now has.
    fn send_key(&mut self, now: u64, peer: &[u8], fresh: bool) {
        let msg = Control::SenderKey {
            epoch: self.sender.epoch(),
            key: self.sender.key().0,
            fresh,
        };
        self.send_control(now, peer, &msg);
        if let Some(PeerState::Member(m)) = self.peers.get_mut(peer) {
            m.key_epoch = Some(self.sender.epoch());
        }
    }

    /// Sends the current key again to every admitted member that would otherwise need more
    /// than [`KEY_REFRESH_STEPS`] ratchet steps to follow us.
    fn refresh_lagging_keys(&mut self, now: u64) {
        let epoch = self.sender.epoch();
        let lagging: Vec<PeerKey> = self
            .peers
            .iter()
            .filter_map(|(k, s)| match s {
                PeerState::Member(m) => m
                    .key_epoch
                    .filter(|e| epoch.wrapping_sub(*e) >= KEY_REFRESH_STEPS)
                    .map(|_| k.clone()),
                PeerState::Handshaking { .. } => None,
            })
            .collect();
        for p in lagging {
            self.counters.key_refreshes += 1;
            self.send_key(now, &p, false);
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
            if self.peers.contains_key(peer) {
                self.counters.malformed_frames += 1;
            }
            self.drop_peer(
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
                    self.fail_peer(now, peer, AdmissionFailure::BadSecret);
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
        let admitted = m.hello.is_some();
        match msg {
            Control::Hello {
                name,
                addrs,
                recording,
            } => {
                // A second Hello changes nothing.
                if !admitted {
                    self.admit(now, peer, &name, addrs, recording);
                }
            }
            Control::Leave => self.remove_member(now, peer, LeaveReason::Left),
            Control::Heartbeat => {}
            // Nothing else is accepted before the peer said who it is.
            _ if !admitted => {
                self.counters.malformed_frames += 1;
                self.remove_member(now, peer, LeaveReason::Misbehaved);
            }
            Control::Roster { members } => self.handle_roster(members),
            Control::SenderKey { epoch, key, .. } => self.install_key(peer, epoch, key),
            Control::Recording { on } => {
                if let Some(h) = m.hello.as_mut() {
                    h.2 = on;
                }
                self.events.push_back(Event::Recording {
                    peer: peer.to_vec(),
                    on,
                });
            }
            Control::Muted { on } => self.events.push_back(Event::Muted {
                peer: peer.to_vec(),
                on,
            }),
            Control::Chat { text } => self.handle_chat(now, peer, text),
        }
    }

    fn handle_chat(&mut self, now: u64, peer: &[u8], text: String) {
        let Some(PeerState::Member(m)) = self.peers.get_mut(peer) else {
            return;
        };
        let (start, count) = &mut m.chat_window;
        if now.saturating_sub(*start) >= CHAT_WINDOW_MS {
            *start = now;
            *count = 0;
        }
        if *count >= CHAT_PER_WINDOW {
            self.counters.chat_dropped += 1;
            return;
        }
        *count += 1;
        let text: String = text
            .chars()
            .filter(|c| *c == '\n' || !c.is_control())
            .collect();
        if text.trim().is_empty() {
            return;
        }
        self.events.push_back(Event::Chat {
            peer: peer.to_vec(),
            text,
        });
    }

    /// The peer's `Hello` arrived: it is a member now and gets what members are owed.
    fn admit(&mut self, now: u64, peer: &[u8], name: &str, addrs: Vec<String>, recording: bool) {
        let name: String = name.chars().filter(|c| !c.is_control()).collect();
        let name = crate::wire::truncate_utf8(&name, MAX_NAME).to_string();
        let (addrs, dropped) = dialable_addrs(addrs, MAX_ADDRS);
        self.counters.addrs_dropped += dropped as u64;
        let Some(PeerState::Member(m)) = self.peers.get_mut(peer) else {
            return;
        };
        m.hello = Some((name.clone(), addrs.clone(), recording));
        self.past.retain(|(k, _)| k.as_slice() != peer);
        self.counters.admissions += 1;
        self.events.push_back(Event::Admitted {
            peer: peer.to_vec(),
            name,
            addrs: addrs.clone(),
            recording,
        });
        // The newcomer must not read what was sent before it came: ratchet our key forward
        // (the others follow without a message) and give the newcomer only the new key.
        self.sender.ratchet();
        self.events.push_back(Event::Rekeyed {
            epoch: self.sender.epoch(),
            fresh: false,
        });
        let roster = Control::Roster {
            members: self.roster_for(peer),
        };
        self.send_control(now, peer, &roster);
        self.send_key(now, peer, false);
        if self.cfg.muted {
            self.send_control(now, peer, &Control::Muted { on: true });
        }
        // Tell the other members about the newcomer so that the mesh closes even when
        // several join at once.
        let info = PeerInfo {
            peer_id: peer.to_vec(),
            addrs,
        };
        for other in self.admitted_except(peer) {
            let roster = Control::Roster {
                members: vec![info.clone()],
            };
            self.send_control(now, &other, &roster);
        }
        self.refresh_lagging_keys(now);
    }

    /// Roster gossip from an admitted member: hearsay, so bounded. Peers we know (in a
    /// handshake or a session) and ourselves are skipped; at most [`MAX_DIALS_PER_ROSTER`]
    /// new peers, and no more than the room has free places, are suggested; each with at
    /// most [`MAX_DIAL_ADDRS`] dialable addresses, the ones a former member announced
    /// itself first.
    fn handle_roster(&mut self, members: Vec<PeerInfo>) {
        let free = self.limit().saturating_sub(1 + self.peers.len());
        let budget = free.min(MAX_DIALS_PER_ROSTER);
        let mut suggested: Vec<PeerKey> = Vec::new();
        for info in members {
            if info.peer_id == self.me
                || self.peers.contains_key(&info.peer_id)
                || suggested.contains(&info.peer_id)
            {
                continue;
            }
            if suggested.len() >= budget || !plausible_peer_id(&info.peer_id) {
                self.counters.roster_entries_dropped += 1;
                continue;
            }
            let mut addrs: Vec<String> = self
                .past
                .iter()
                .find(|(k, _)| *k == info.peer_id)
                .map(|(_, a)| a.clone())
                .unwrap_or_default();
            let (heard, dropped) = dialable_addrs(info.addrs, MAX_ADDRS);
            self.counters.addrs_dropped += dropped as u64;
            for a in heard {
                if !addrs.contains(&a) {
                    addrs.push(a);
                }
            }
            addrs.truncate(MAX_DIAL_ADDRS);
            suggested.push(info.peer_id.clone());
            self.counters.dials_suggested += 1;
            self.events.push_back(Event::Dial(PeerInfo {
                peer_id: info.peer_id,
                addrs,
            }));
        }
    }

    /// A member's sender key arrived: install it and release the frames it unlocks.
    fn install_key(&mut self, peer: &[u8], epoch: u32, key: [u8; 32]) {
        let Some(PeerState::Member(m)) = self.peers.get_mut(peer) else {
            return;
        };
        m.keys.install(epoch, MediaKey(key));
        let pending = std::mem::take(&mut m.pending);
        for frame in pending {
            match m.keys.open(&frame) {
                Ok(opened) if opened.payload.is_empty() => self.counters.malformed_frames += 1,
                Ok(opened) => self.media.push_back((peer.to_vec(), opened)),
                Err(Error::UnknownEpoch(_)) if m.pending.len() < self.cfg.pending_frames => {
                    m.pending.push_back(frame)
                }
                Err(_) => self.counters.pending_dropped += 1,
            }
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

    /// Ends whatever we have with `peer` after it broke the protocol: an admitted member
    /// leaves (and the key rotates), anyone else fails admission with `failure`.
    fn drop_peer(&mut self, now: u64, peer: &[u8], failure: AdmissionFailure) {
        match self.peers.get(peer) {
            Some(PeerState::Member(m)) if m.hello.is_some() => {
                self.remove_member(now, peer, LeaveReason::Misbehaved)
            }
            Some(_) => self.fail_peer(now, peer, failure),
            None => {}
        }
    }

    /// Forgets a peer that never became a member (it was sent nothing a member is owed).
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
        let Some(PeerState::Member(m)) = self.peers.get(peer) else {
            return;
        };
        let Some((_, addrs, _)) = m.hello.as_ref() else {
            // Never admitted: it holds neither our key nor our roster.
            let failure = match reason {
                LeaveReason::Misbehaved => {
                    AdmissionFailure::Protocol("protocol violation before Hello".into())
                }
                _ => AdmissionFailure::Incomplete,
            };
            self.fail_peer(now, peer, failure);
            return;
        };
        let addrs = addrs.clone();
        self.peers.remove(peer);
        self.past.retain(|(k, _)| k.as_slice() != peer);
        self.past.push_back((peer.to_vec(), addrs));
        while self.past.len() > REMEMBERED_PEERS {
            self.past.pop_front();
        }
        self.counters.departures += 1;
        self.events.push_back(Event::Left {
            peer: peer.to_vec(),
            reason,
        });
        // Whoever left must not read what follows: a fresh key, sent only to the admitted
        // members who stay (a session still waiting for its Hello gets it with its Hello).
        self.sender.rotate(&mut self.rng);
        self.events.push_back(Event::Rekeyed {
            epoch: self.sender.epoch(),
            fresh: true,
        });
        for p in self.admitted_except(peer) {
            self.send_key(now, &p, true);
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

    /// Mutes or unmutes and tells everyone (members admitted later are told on admission).
    pub fn set_muted(&mut self, now: u64, on: bool) {
        self.cfg.muted = on;
        let members: Vec<PeerKey> = self.members().map(|(k, _, _)| k.clone()).collect();
        for p in members {
            self.send_control(now, &p, &Control::Muted { on });
        }
    }

    /// Sends a chat message to every admitted member over its pairwise session; returns
    /// how many members it went to.
    pub fn send_chat(&mut self, now: u64, text: &str) -> Result<usize> {
        if text.trim().is_empty() {
            return Err(Error::Malformed("empty chat message"));
        }
        if text.len() > MAX_CHAT {
            return Err(Error::TooLong {
                what: "chat message",
                len: text.len(),
                limit: MAX_CHAT,
            });
        }
        let members: Vec<PeerKey> = self.members().map(|(k, _, _)| k.clone()).collect();
        let msg = Control::Chat {
            text: text.to_owned(),
        };
        for p in &members {
            self.send_control(now, p, &msg);
        }
        Ok(members.len())
    }

    /// Updates the addresses announced to members admitted from now on.
    pub fn set_addrs(&mut self, addrs: Vec<String>) {
        self.cfg.addrs = addrs;
    }

    /// The frame duration and codec look-ahead our media frames declare from now on.
    pub fn set_media_format(&mut self, format: MediaFormat) -> Result<()> {
        self.sender.set_format(format)
    }

    /// Encrypts one media payload once, for every member. Returns the encoded frame.
    /// An empty payload is refused (receivers drop it as malformed).
    pub fn encrypt_media(
        &mut self,
        capture_ts_ms: u64,
        payload: &[u8],
        pad_to: Option<usize>,
    ) -> Result<Vec<u8>> {
        if payload.is_empty() {
            return Err(Error::Malformed("empty media payload"));
        }
        Ok(self
            .sender
            .encrypt(capture_ts_ms, payload, pad_to)?
            .encode())
    }

    /// A media frame arrived from `peer`. `Ok(None)` means it is held until its epoch's
    /// key arrives; it then comes out of [`Room::poll_media`]. Frames from peers that are
    /// not admitted members, and frames with an empty payload, are refused and counted.
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
        if m.hello.is_none() {
            self.counters.media_from_non_member += 1;
            return Err(Error::NoSession);
        }
        match m.keys.open(&frame) {
            Ok(opened) if opened.payload.is_empty() => {
                self.counters.malformed_frames += 1;
                Err(Error::Malformed("empty media payload"))
            }
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

    /// Our current sender key and its epoch (the video track derives its keys from it).
    pub fn media_key(&self) -> (u32, &MediaKey) {
        (self.sender.epoch(), self.sender.key())
    }

    /// The media key of `epoch` of `peer`, an admitted member (see
    /// [`crate::crypto::ReceiverKeys::key_for`]).
    pub fn member_key(&self, peer: &[u8], epoch: u32) -> Option<MediaKey> {
        match self.peers.get(peer) {
            Some(PeerState::Member(m)) if m.hello.is_some() => m.keys.key_for(epoch),
            _ => None,
        }
    }

    /// Advances timers: handshake and Hello deadlines, heartbeats, idle members.
    pub fn handle_timeout(&mut self, now: u64) {
        let mut expired = Vec::new();
        let mut idle = Vec::new();
        let mut heartbeat = Vec::new();
        for (k, s) in &self.peers {
            match s {
                PeerState::Handshaking { started_ms, .. } => {
                    if now.saturating_sub(*started_ms) >= self.cfg.handshake_timeout_ms {
                        expired.push(k.clone());
                    }
                }
                PeerState::Member(m) if m.hello.is_none() && now >= m.hello_deadline_ms => {
                    expired.push(k.clone());
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
        for k in expired {
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
                PeerState::Member(m) => {
                    let live = m
                        .last_rx_ms
                        .saturating_add(self.cfg.idle_timeout_ms)
                        .min(m.last_tx_ms.saturating_add(self.cfg.heartbeat_interval_ms));
                    if m.hello.is_none() {
                        live.min(m.hello_deadline_ms)
                    } else {
                        live
                    }
                }
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
