//! Rooms of several members wired together in memory, with the real crypto.

use super::*;
use crate::crypto::{Handshake, HandshakeStep, Identity, LocalStatic, Session};

struct Net {
    rooms: BTreeMap<PeerKey, Room>,
    now: u64,
}

fn identity(i: u64) -> Identity {
    Identity::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(i))
}

impl Net {
    fn new(n: u64, secret: [u8; 32]) -> (Self, Vec<PeerKey>) {
        let mut rooms = BTreeMap::new();
        let mut ids = Vec::new();
        for i in 0..n {
            ids.push(Self::add_room(&mut rooms, i, secret));
        }
        (Self { rooms, now: 1_000 }, ids)
    }

    fn add_room(rooms: &mut BTreeMap<PeerKey, Room>, i: u64, secret: [u8; 32]) -> PeerKey {
        let id = identity(i + 1);
        let cfg = RoomConfig {
            name: format!("member-{i}"),
            addrs: vec![format!("/ip4/127.0.0.1/tcp/{}", 4000 + i)],
            ..RoomConfig::default()
        };
        let key = id.peer_id();
        rooms.insert(
            key.clone(),
            Room::new(cfg, id, [5; 16], &secret, [i as u8; 32]),
        );
        key
    }

    fn connect(&mut self, a: &PeerKey, b: &PeerKey) {
        let now = self.now;
        self.rooms
            .get_mut(a)
            .expect("a")
            .connect(now, b.clone(), true)
            .expect("connect a");
        self.rooms
            .get_mut(b)
            .expect("b")
            .connect(now, a.clone(), false)
            .expect("connect b");
        self.pump();
    }

    /// Delivers every queued transmit until the network is quiet.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            let keys: Vec<PeerKey> = self.rooms.keys().cloned().collect();
            for from in keys {
                while let Some(t) = self.rooms.get_mut(&from).and_then(Room::poll_transmit) {
                    moved = true;
                    let now = self.now;
                    if let Some(to) = self.rooms.get_mut(&t.peer) {
                        to.handle_frame(now, &from, &t.frame);
                        if t.close {
                            to.peer_disconnected(now, &from);
                        }
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn events(&mut self, who: &PeerKey) -> Vec<Event> {
        let room = self.rooms.get_mut(who).expect("room");
        std::iter::from_fn(|| room.poll_event()).collect()
    }

    /// Full mesh: connect everyone pairwise, dialing as the roster tells.
    fn mesh(&mut self, ids: &[PeerKey]) {
        for i in 1..ids.len() {
            self.connect(&ids[0], &ids[i]);
        }
        // Follow Dial events until none are left.
        loop {
            let mut dials = Vec::new();
            for id in ids {
                for e in self.events(id) {
                    if let Event::Dial(info) = e {
                        dials.push((id.clone(), info.peer_id));
                    }
                }
            }
            if dials.is_empty() {
                break;
            }
            for (a, b) in dials {
                let known = self.rooms[&a].knows(&b);
                if !known {
                    self.connect(&a, &b);
                }
            }
        }
    }

    fn send(&mut self, from: &PeerKey, payload: &[u8]) -> Vec<u8> {
        let now = self.now;
        self.rooms
            .get_mut(from)
            .expect("from")
            .encrypt_media(now, payload, None)
            .expect("encrypt")
    }

    fn open(&mut self, at: &PeerKey, from: &PeerKey, frame: &[u8]) -> Result<Option<OpenedFrame>> {
        let now = self.now;
        self.rooms
            .get_mut(at)
            .expect("at")
            .open_media(now, from, frame)
    }
}

#[test]
fn three_members_form_a_mesh_and_hear_each_other() {
    let (mut net, ids) = Net::new(3, [9; 32]);
    net.mesh(&ids);
    for id in &ids {
        assert_eq!(net.rooms[id].member_count(), 2, "everyone sees two others");
    }
    for from in &ids {
        let frame = net.send(from, b"audio");
        for to in ids.iter().filter(|t| *t != from) {
            let opened = net.open(to, from, &frame).expect("open").expect("not held");
            assert_eq!(opened.payload, b"audio");
        }
    }
}

#[test]
fn a_leaver_cannot_decrypt_frames_sent_after_it_left() {
    let (mut net, ids) = Net::new(3, [9; 32]);
    net.mesh(&ids);
    let (a, b, c) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    // C keeps a copy of its state (everything it knows) and leaves.
    let before = net.send(&a, b"before");
    assert!(net.open(&c, &a, &before).expect("c opens").is_some());
    // The strongest leaver: it keeps every key A ever sent it (and tries the ratchet).
    let mut leaver_keys = match net.rooms.get_mut(&c).expect("c").peers.get_mut(&a) {
        Some(PeerState::Member(m)) => std::mem::take(&mut m.keys),
        _ => panic!("c is in session with a"),
    };
    assert!(leaver_keys.newest_epoch().is_some());
    let now = net.now;
    net.rooms.get_mut(&c).expect("c").leave(now);
    net.pump();
    net.rooms.remove(&c);
    assert!(net
        .events(&a)
        .iter()
        .any(|e| matches!(e, Event::Left { peer, reason: LeaveReason::Left } if *peer == c)));
    assert!(net
        .events(&b)
        .iter()
        .any(|e| matches!(e, Event::Left { peer, .. } if *peer == c)));
    let after = net.send(&a, b"after");
    // B, who stayed, can read it.
    assert_eq!(
        net.open(&b, &a, &after)
            .expect("b opens")
            .expect("not held")
            .payload,
        b"after"
    );
    // C, with every key it was ever sent by A, cannot — not even via the ratchet.
    assert!(leaver_keys
        .open(&MediaFrame::decode(&after).expect("decode"))
        .is_err());
}

#[test]
fn wrong_secret_fails_admission_on_both_sides() {
    let mut rooms = BTreeMap::new();
    let a = Net::add_room(&mut rooms, 0, [9; 32]);
    let b = Net::add_room(&mut rooms, 1, [8; 32]);
    let mut net = Net { rooms, now: 0 };
    for (init, resp) in [(&a, &b), (&b, &a)] {
        net.connect(init, resp);
        for id in [&a, &b] {
            let ev = net.events(id);
            assert!(
                ev.iter().any(|e| matches!(e, Event::AdmissionFailed { reason, .. }
                    if matches!(reason, AdmissionFailure::BadSecret | AdmissionFailure::Rejected(RejectReason::BadSecret)))),
                "{ev:?}"
            );
            assert!(!ev.iter().any(|e| matches!(e, Event::Admitted { .. })));
            assert_eq!(net.rooms[id].member_count(), 0);
        }
    }
}

#[test]
fn a_joiner_cannot_read_frames_from_before_it_joined() {
    let (mut net, ids) = Net::new(2, [9; 32]);
    net.mesh(&ids);
    let early = net.send(&ids[0], b"early");
    let c = Net::add_room(&mut net.rooms, 7, [9; 32]);
    net.connect(&ids[0], &c);
    // The existing member follows the ratchet silently.
    let late = net.send(&ids[0], b"late");
    assert!(net
        .open(&ids[1], &ids[0], &late)
        .expect("b opens")
        .is_some());
    assert!(net
        .open(&c, &ids[0], &late)
        .expect("c opens late")
        .is_some());
    assert!(
        net.open(&c, &ids[0], &early).is_err(),
        "older epoch is unknown to the joiner"
    );
}

#[test]
fn replayed_and_tampered_frames_are_rejected_and_counted() {
    let (mut net, ids) = Net::new(2, [9; 32]);
    net.mesh(&ids);
    let f = net.send(&ids[0], b"x");
    assert!(net.open(&ids[1], &ids[0], &f).expect("first").is_some());
    assert!(matches!(
        net.open(&ids[1], &ids[0], &f),
        Err(Error::Replay { .. })
    ));
    let mut bad = net.send(&ids[0], b"y");
    let last = bad.len() - 1;
    bad[last] ^= 0x40;
    assert!(matches!(
        net.open(&ids[1], &ids[0], &bad),
        Err(Error::Decrypt)
    ));
    let c = net.rooms[&ids[1]].counters();
    assert_eq!((c.media_replays, c.media_decrypt_failures), (1, 1));
    // Garbage is a counted error, not a panic.
    assert!(net.open(&ids[1], &ids[0], &[1, 2, 3]).is_err());
}

#[test]
fn frames_that_overtake_their_key_are_held_then_released() {
    let (mut net, ids) = Net::new(3, [9; 32]);
    net.mesh(&ids);
    let (a, b, c) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    // C disconnects; A rotates, but hold A's transmits so that B sees media first.
    let now = net.now;
    net.rooms.get_mut(&a).expect("a").peer_disconnected(now, &c);
    let held: Vec<Transmit> =
        std::iter::from_fn(|| net.rooms.get_mut(&a).expect("a").poll_transmit()).collect();
    let f = net.send(&a, b"rotated");
    assert_eq!(net.open(&b, &a, &f).expect("held"), None);
    for t in held.into_iter().filter(|t| t.peer == b) {
        net.rooms
            .get_mut(&b)
            .expect("b")
            .handle_frame(now, &a, &t.frame);
    }
    let (from, opened) = net
        .rooms
        .get_mut(&b)
        .expect("b")
        .poll_media()
        .expect("released");
    assert_eq!((from, opened.payload), (a, b"rotated".to_vec()));
}

#[test]
fn silent_members_time_out_and_heartbeats_keep_live_ones() {
    let (mut net, ids) = Net::new(2, [9; 32]);
    net.mesh(&ids);
    let (a, b) = (ids[0].clone(), ids[1].clone());
    // Both tick for 4 s, exchanging heartbeats: nobody times out.
    for _ in 0..40 {
        net.now += 100;
        let now = net.now;
        for id in [&a, &b] {
            net.rooms.get_mut(id).expect("room").handle_timeout(now);
        }
        net.pump();
    }
    assert_eq!(net.rooms[&a].member_count(), 1);
    // Now B goes silent (we stop ticking it and drop its output).
    let deadline = net.rooms[&a].poll_timeout().expect("timer");
    assert!(deadline > net.now);
    net.now += 6_000;
    let now = net.now;
    net.rooms.get_mut(&a).expect("a").handle_timeout(now);
    assert!(net.events(&a).iter().any(|e| matches!(
        e,
        Event::Left {
            reason: LeaveReason::TimedOut,
            ..
        }
    )));
    assert_eq!(net.rooms[&a].member_count(), 0);
}

#[test]
fn a_full_room_refuses_newcomers() {
    let mut rooms = BTreeMap::new();
    let a = Net::add_room(&mut rooms, 0, [9; 32]);
    let b = Net::add_room(&mut rooms, 1, [9; 32]);
    let c = Net::add_room(&mut rooms, 2, [9; 32]);
    let mut net = Net { rooms, now: 0 };
    net.rooms.get_mut(&a).expect("a").cfg.max_members = 2;
    net.connect(&a, &b);
    net.connect(&c, &a);
    // C hears a refusal (unauthenticated, so reported as what the peer said); A reports
    // its own decision.
    assert!(net.events(&c).iter().any(|e| matches!(
        e,
        Event::AdmissionFailed {
            reason: AdmissionFailure::Rejected(RejectReason::RoomFull),
            ..
        }
    )));
    assert!(net.events(&a).iter().any(|e| matches!(
        e,
        Event::AdmissionFailed {
            reason: AdmissionFailure::RoomFull,
            ..
        }
    )));
    assert_eq!(net.rooms[&a].member_count(), 1);
}

#[test]
fn garbage_on_the_room_stream_fails_the_peer_without_panicking() {
    let (mut net, ids) = Net::new(2, [9; 32]);
    let now = net.now;
    let room = net.rooms.get_mut(&ids[0]).expect("a");
    room.connect(now, ids[1].clone(), false).expect("connect");
    for junk in [&[][..], &[9u8][..], &[2, 1, 2, 3][..], &[1; 300][..]] {
        room.handle_frame(now, &ids[1], junk);
    }
    room.handle_frame(now, b"stranger", &[2, 0, 0]);
    assert_eq!(room.member_count(), 0);
}

impl Net {
    fn room(&mut self, who: &PeerKey) -> &mut Room {
        self.rooms.get_mut(who).expect("room")
    }

    /// `from` sends `msg` to `to` over their session (whatever the state machine would do).
    fn inject(&mut self, from: &PeerKey, to: &PeerKey, msg: &Control) {
        let now = self.now;
        self.room(from).send_control(now, to, msg);
        self.pump();
    }
}

fn peer_keys(room: &Room, of: &[u8]) -> Option<u32> {
    match room.peers.get(of) {
        Some(PeerState::Member(m)) => m.keys.newest_epoch(),
        _ => None,
    }
}

/// A well-formed libp2p peer id (identity multihash of an Ed25519 key) that is nobody.
fn fake_peer(i: u8) -> PeerKey {
    let mut id = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
    id.extend_from_slice(&[i; 32]);
    id
}

/// A hostile peer that holds the ticket but drives the handshake by hand: it completes
/// the handshake with a room and then sends only what the test makes it send.
struct Raw {
    id: PeerKey,
    session: Session,
}

impl Raw {
    /// Runs the handshake with `a` (as initiator). Returns the peer and the control
    /// messages `a` sent it once the session was up.
    fn handshake(net: &mut Net, seed: u64, a: &PeerKey) -> (Self, Vec<Control>) {
        let who = identity(seed);
        let id = who.peer_id();
        let room_id = [5u8; 16];
        let local = LocalStatic::new(&who, &room_id, [seed as u8; 32]).expect("static");
        let psk = room_psk(&room_id, &[9; 32]);
        let mut hs =
            Handshake::new(true, &local, &room_id, &psk, [seed as u8 ^ 0x55; 32]).expect("hs");
        let now = net.now;
        net.room(a)
            .connect(now, id.clone(), false)
            .expect("connect");
        loop {
            while !hs.is_finished() {
                match hs.write().expect("write") {
                    HandshakeStep::Send(m) => {
                        net.room(a)
                            .handle_frame(now, &id, &RoomFrame::Handshake(m).encode());
                    }
                    HandshakeStep::Wait => break,
                }
            }
            if hs.is_finished() {
                break;
            }
            for frame in net.take_for(a, &id) {
                if let Ok(RoomFrame::Handshake(m)) = RoomFrame::decode(&frame) {
                    hs.read(&m).expect("read");
                }
            }
        }
        let mut raw = Raw {
            id,
            session: hs.into_session().expect("session"),
        };
        let got = raw.receive(net, a);
        (raw, got)
    }

    /// The control messages `a` has sent us since the last call.
    fn receive(&mut self, net: &mut Net, a: &PeerKey) -> Vec<Control> {
        net.take_for(a, &self.id)
            .into_iter()
            .filter_map(|f| match RoomFrame::decode(&f) {
                Ok(RoomFrame::Transport(ct)) => {
                    let pt = self.session.decrypt(&ct).expect("decrypt");
                    Some(Control::decode(&pt).expect("control"))
                }
                _ => None,
            })
            .collect()
    }

    /// Sends `msg` to `a` over the session.
    fn send(&mut self, net: &mut Net, a: &PeerKey, msg: &Control) {
        let ct = self.session.encrypt(&msg.encode()).expect("encrypt");
        let now = net.now;
        net.room(a)
            .handle_frame(now, &self.id, &RoomFrame::Transport(ct).encode());
        net.pump();
    }
}

impl Net {
    /// Delivers what `from` has queued, except frames for `to`, which are returned.
    fn take_for(&mut self, from: &PeerKey, to: &PeerKey) -> Vec<Vec<u8>> {
        let mut mine = Vec::new();
        let now = self.now;
        while let Some(t) = self.room(from).poll_transmit() {
            if t.peer == *to {
                mine.push(t.frame);
            } else if let Some(r) = self.rooms.get_mut(&t.peer) {
                r.handle_frame(now, from, &t.frame);
            }
        }
        self.pump();
        mine
    }
}

#[test]
fn a_session_without_hello_counts_but_is_sent_nothing() {
    let mut rooms = BTreeMap::new();
    let a = Net::add_room(&mut rooms, 0, [9; 32]);
    let b = Net::add_room(&mut rooms, 1, [9; 32]);
    let c = Net::add_room(&mut rooms, 3, [9; 32]);
    let mut net = Net { rooms, now: 1_000 };
    net.room(&a).cfg.max_members = 3;
    net.connect(&a, &b);
    let (mut s, got) = Raw::handshake(&mut net, 40, &a);
    // S holds a session with A (it holds the secret), but said no Hello: it takes a place,
    // it is no member, and all it got is A's Hello — no roster, no sender key.
    assert!(matches!(got.as_slice(), [Control::Hello { .. }]), "{got:?}");
    assert_eq!(net.rooms[&a].session_count(), 2);
    assert_eq!(net.rooms[&a].member_count(), 1);
    assert!(!net.rooms[&a].is_member(&s.id));
    let epoch = net.rooms[&a].epoch();
    // Heartbeats keep its session open but do not admit it.
    s.send(&mut net, &a, &Control::Heartbeat);
    assert!(net.rooms[&a].knows(&s.id) && !net.rooms[&a].is_member(&s.id));
    // Media from it is refused.
    let frame = net.send(&b, b"noise");
    assert!(net.open(&a, &s.id, &frame).is_err());
    assert_eq!(net.rooms[&a].counters().media_from_non_member, 1);
    // The room is full: C is refused.
    net.connect(&c, &a);
    assert!(net.events(&a).iter().any(|e| matches!(
        e,
        Event::AdmissionFailed { peer, reason: AdmissionFailure::RoomFull } if *peer == c
    )));
    // S's Hello deadline passes (B stays alive with heartbeats): S is dropped, and as it
    // never held the key, nothing needs to rotate.
    for _ in 0..100 {
        net.now += 100;
        let now = net.now;
        net.room(&a).handle_timeout(now);
        net.room(&b).handle_timeout(now);
        let _ = net.take_for(&a, &s.id);
    }
    let ev = net.events(&a);
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::AdmissionFailed { peer, reason: AdmissionFailure::Incomplete } if *peer == s.id
    )));
    assert!(!ev
        .iter()
        .any(|e| matches!(e, Event::Rekeyed { .. } | Event::Left { .. })));
    assert_eq!(net.rooms[&a].epoch(), epoch);
    assert_eq!(net.rooms[&a].session_count(), 1);
    // A later joiner gets in and can decrypt; so can B.
    net.connect(&c, &a);
    assert!(net.rooms[&a].is_member(&c));
    let frame = net.send(&a, b"after");
    for who in [&b, &c] {
        let opened = net.open(who, &a, &frame).expect("open").expect("not held");
        assert_eq!(opened.payload, b"after");
    }
}

#[test]
fn control_messages_before_hello_are_a_violation() {
    let fakes = || Control::Roster {
        members: (0..8)
            .map(|i| PeerInfo {
                peer_id: fake_peer(i),
                addrs: vec!["/ip4/10.0.0.1/tcp/22".into()],
            })
            .collect(),
    };
    let key = Control::SenderKey {
        epoch: 7,
        key: [1; 32],
        fresh: true,
    };
    for msg in [fakes(), key, Control::Recording { on: true }] {
        let mut rooms = BTreeMap::new();
        let a = Net::add_room(&mut rooms, 0, [9; 32]);
        let mut net = Net { rooms, now: 1_000 };
        let (mut s, _) = Raw::handshake(&mut net, 41, &a);
        net.events(&a);
        s.send(&mut net, &a, &msg);
        let ev = net.events(&a);
        assert!(
            !ev.iter()
                .any(|e| matches!(e, Event::Dial(_) | Event::Recording { .. })),
            "{ev:?}"
        );
        assert!(ev.iter().any(|e| matches!(
            e,
            Event::AdmissionFailed { peer, reason: AdmissionFailure::Protocol(_) } if *peer == s.id
        )));
        assert!(!net.rooms[&a].knows(&s.id));
    }
}

#[test]
fn a_reject_counts_only_from_a_peer_in_a_handshake() {
    let (mut net, ids) = Net::new(3, [9; 32]);
    net.mesh(&ids);
    let (a, b, c) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    for id in &ids {
        net.events(id);
    }
    let now = net.now;
    let reject = RoomFrame::Reject(RejectReason::BadSecret).encode();
    // From a stranger we have nothing with: ignored.
    net.room(&a).handle_frame(now, &fake_peer(1), &reject);
    assert!(net.events(&a).is_empty());
    assert_eq!(net.rooms[&a].counters().rejects_ignored, 1);
    assert_eq!(net.rooms[&a].member_count(), 2);
    // During a handshake: the handshake fails, reported as the peer's claim.
    let x = Net::add_room(&mut net.rooms, 5, [9; 32]);
    net.room(&a).connect(now, x.clone(), true).expect("connect");
    net.room(&a).handle_frame(now, &x, &reject);
    assert_eq!(
        net.events(&a),
        vec![Event::AdmissionFailed {
            peer: x.clone(),
            reason: AdmissionFailure::Rejected(RejectReason::BadSecret),
        }]
    );
    assert_eq!(net.rooms[&a].counters().rejects_received, 1);
    // On an established member's own stream: a protocol violation of that member, which
    // leaves (and the key rotates); nobody else is touched.
    net.room(&a).handle_frame(now, &b, &reject);
    net.pump();
    let ev = net.events(&a);
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::Left { peer, reason: LeaveReason::Misbehaved } if *peer == b
    )));
    assert!(!ev
        .iter()
        .any(|e| matches!(e, Event::AdmissionFailed { .. })));
    assert!(net.rooms[&a].is_member(&c));
    let frame = net.send(&a, b"still here");
    assert!(net.open(&c, &a, &frame).expect("c opens").is_some());
}

#[test]
fn receivers_follow_a_hundred_handshakes_between_two_frames() {
    let mut rooms = BTreeMap::new();
    let a = Net::add_room(&mut rooms, 0, [9; 32]);
    let b = Net::add_room(&mut rooms, 1, [9; 32]);
    let mut net = Net { rooms, now: 1_000 };
    net.room(&a).cfg.max_members = MAX_MEMBERS;
    net.connect(&a, &b);
    let first = net.send(&a, b"first");
    assert!(net.open(&b, &a, &first).expect("first").is_some());
    let start = net.rooms[&a].epoch();
    let mut joined: VecDeque<PeerKey> = VecDeque::new();
    for i in 0..100 {
        if net.rooms[&a].session_count() + 1 >= MAX_MEMBERS {
            // Full: the oldest joiner leaves (a fresh key goes to everyone who stays).
            let old = joined.pop_front().expect("a joiner");
            let now = net.now;
            net.room(&old).leave(now);
            net.pump();
            net.rooms.remove(&old);
        }
        let j = Net::add_room(&mut net.rooms, 100 + i, [9; 32]);
        net.connect(&j, &a);
        assert!(net.rooms[&a].is_member(&j), "joiner {i}");
        joined.push_back(j);
    }
    assert_eq!(net.rooms[&a].counters().handshakes_started, 101);
    assert!(net.rooms[&a].epoch() - start >= 100);
    // No member is ever more ratchet steps behind than the refresh bound.
    assert!(net.rooms[&a].counters().key_refreshes > 0);
    for who in std::iter::once(&b).chain(joined.iter()) {
        let known = peer_keys(&net.rooms[who], &a).expect("a key");
        assert!(net.rooms[&a].epoch() - known < KEY_REFRESH_STEPS);
    }
    let second = net.send(&a, b"second");
    for who in std::iter::once(b.clone()).chain(joined.iter().cloned()) {
        let opened = net
            .open(&who, &a, &second)
            .expect("open")
            .expect("not held");
        assert_eq!(opened.payload, b"second");
    }
}

#[test]
fn the_key_is_refreshed_before_ratchets_outrun_the_window() {
    // 62 joins and no departure: without refreshes B would need 62 ratchet steps.
    let mut rooms = BTreeMap::new();
    let a = Net::add_room(&mut rooms, 0, [9; 32]);
    let b = Net::add_room(&mut rooms, 1, [9; 32]);
    let mut net = Net { rooms, now: 1_000 };
    net.room(&a).cfg.max_members = MAX_MEMBERS;
    net.connect(&a, &b);
    for i in 0..(MAX_MEMBERS as u64 - 2) {
        let j = Net::add_room(&mut net.rooms, 200 + i, [9; 32]);
        net.connect(&j, &a);
        let behind = net.rooms[&a].epoch() - peer_keys(&net.rooms[&b], &a).expect("key");
        assert!(
            behind < KEY_REFRESH_STEPS,
            "{behind} steps behind after {i} joins"
        );
    }
    assert_eq!(net.rooms[&a].session_count(), MAX_MEMBERS - 1);
    assert!(!net
        .events(&a)
        .iter()
        .any(|e| matches!(e, Event::Left { .. })));
}

#[test]
fn roster_gossip_is_bounded_and_filtered() {
    let (mut net, ids) = Net::new(3, [9; 32]);
    net.mesh(&ids);
    let (a, b, c) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    // C is lost; A remembers the addresses C announced itself.
    let now = net.now;
    net.room(&a).peer_disconnected(now, &c);
    net.room(&b).peer_disconnected(now, &c);
    net.rooms.remove(&c);
    net.pump();
    for id in [&a, &b] {
        net.events(id);
    }
    let c_own = "/ip4/127.0.0.1/tcp/4002".to_string();
    let junk = |i: u8| {
        vec![
            "/ip4/0.0.0.0/tcp/1".to_string(),
            "/unix/run/x".into(),
            format!("/ip4/10.0.{i}.1/tcp/22"),
            "not an address".into(),
            format!("/ip4/10.0.{i}.2/tcp/22"),
            format!("/ip4/10.0.{i}.3/tcp/22"),
            format!("/ip4/10.0.{i}.4/tcp/22"),
            format!("/ip4/10.0.{i}.5/tcp/22"),
        ]
    };
    let mut members = vec![
        PeerInfo {
            peer_id: c.clone(),
            addrs: junk(0),
        },
        PeerInfo {
            peer_id: a.clone(),
            addrs: junk(0),
        },
        PeerInfo {
            peer_id: b"not a peer id".to_vec(),
            addrs: junk(0),
        },
    ];
    members.extend((1..=40).map(|i| PeerInfo {
        peer_id: fake_peer(i),
        addrs: junk(i),
    }));
    members.push(members[3].clone());
    net.inject(&b, &a, &Control::Roster { members });
    let dials: Vec<PeerInfo> = net
        .events(&a)
        .into_iter()
        .filter_map(|e| match e {
            Event::Dial(info) => Some(info),
            _ => None,
        })
        .collect();
    assert_eq!(dials.len(), MAX_DIALS_PER_ROSTER);
    for d in &dials {
        assert!(d.addrs.len() <= MAX_DIAL_ADDRS);
        assert!(d.addrs.iter().all(|x| crate::wire::is_dialable(x)));
        assert!(d.peer_id != a && d.peer_id != b);
    }
    // The lost member's own address comes first; gossip only fills up behind it.
    assert_eq!(dials[0].peer_id, c);
    assert_eq!(dials[0].addrs[0], c_own);
    let counters = net.rooms[&a].counters();
    assert_eq!(counters.dials_suggested, MAX_DIALS_PER_ROSTER as u64);
    assert!(counters.addrs_dropped > 0);
    // A room with one free place yields one suggestion.
    net.room(&a).cfg.max_members = 3;
    let members = (50..60)
        .map(|i| PeerInfo {
            peer_id: fake_peer(i),
            addrs: vec![],
        })
        .collect();
    net.inject(&b, &a, &Control::Roster { members });
    let n = net
        .events(&a)
        .iter()
        .filter(|e| matches!(e, Event::Dial(_)))
        .count();
    assert_eq!(n, 1);
}

#[test]
fn malformed_and_empty_frames_change_nothing() {
    let (mut net, ids) = Net::new(2, [9; 32]);
    net.mesh(&ids);
    let (a, b) = (ids[0].clone(), ids[1].clone());
    net.events(&a);
    let now = net.now;
    let before = net.rooms[&a].counters().malformed_frames;
    for junk in [
        &[][..],
        &[1u8][..],
        &[2u8][..],
        &[2, 0, 0][..],
        &[9, 9][..],
        &[3][..],
    ] {
        net.room(&a).handle_frame(now, &b, junk);
    }
    assert_eq!(net.rooms[&a].counters().malformed_frames, before + 6);
    assert!(net.events(&a).is_empty());
    assert!(net.rooms[&a].is_member(&b));
    // Junk is not traffic: it does not keep B alive.
    net.now += 6_000;
    let now = net.now;
    for _ in 0..10 {
        net.room(&a).handle_frame(now, &b, &[]);
    }
    net.room(&a).handle_timeout(now);
    assert!(!net.rooms[&a].is_member(&b));
}

#[test]
fn empty_media_frames_and_payloads_are_refused() {
    let (mut net, ids) = Net::new(2, [9; 32]);
    net.mesh(&ids);
    let (a, b) = (ids[0].clone(), ids[1].clone());
    assert!(net.room(&a).encrypt_media(0, &[], None).is_err());
    assert!(net.open(&b, &a, &[]).is_err());
    // A sender that bypasses the check: the empty payload authenticates but is refused.
    let frame = net
        .room(&a)
        .sender
        .encrypt(0, &[], None)
        .expect("encrypt")
        .encode();
    assert!(matches!(net.open(&b, &a, &frame), Err(Error::Malformed(_))));
    assert_eq!(net.rooms[&b].counters().malformed_frames, 2);
    let ok = net.send(&a, b"x");
    assert!(net.open(&b, &a, &ok).expect("open").is_some());
}

#[test]
fn chat_reaches_every_member_and_a_flood_is_cut_and_counted() {
    let (mut net, ids) = Net::new(3, [11; 32]);
    net.mesh(&ids);
    for id in &ids {
        net.events(id);
    }
    let now = net.now;
    let sent = net
        .room(&ids[0])
        .send_chat(now, "hello\u{7}\nall")
        .expect("chat");
    assert_eq!(sent, 2);
    net.pump();
    for to in &ids[1..] {
        let chats: Vec<_> = net
            .events(to)
            .into_iter()
            .filter_map(|e| match e {
                Event::Chat { peer, text } => Some((peer, text)),
                _ => None,
            })
            .collect();
        assert_eq!(chats, vec![(ids[0].clone(), "hello\nall".to_string())]);
    }
    assert!(net.room(&ids[0]).send_chat(now, "  ").is_err());
    assert!(net
        .room(&ids[0])
        .send_chat(now, &"x".repeat(MAX_CHAT + 1))
        .is_err());
    // A flood, in a new window: only CHAT_PER_WINDOW arrive; the rest are counted.
    net.now += CHAT_WINDOW_MS;
    let now = net.now;
    for i in 0..(CHAT_PER_WINDOW + 5) {
        net.room(&ids[0])
            .send_chat(now, &format!("m{i}"))
            .expect("chat");
    }
    net.pump();
    let got = net
        .events(&ids[1])
        .into_iter()
        .filter(|e| matches!(e, Event::Chat { .. }))
        .count();
    assert_eq!(got, CHAT_PER_WINDOW as usize);
    assert_eq!(net.room(&ids[1]).counters().chat_dropped, 5);
    assert!(
        net.room(&ids[1]).is_member(&ids[0]),
        "a flood is dropped, not punished"
    );
}

#[test]
fn mute_state_reaches_members_and_later_joiners() {
    let (mut net, ids) = Net::new(2, [12; 32]);
    net.mesh(&ids);
    net.events(&ids[1]);
    let now = net.now;
    net.room(&ids[0]).set_muted(now, true);
    net.pump();
    let muted = |evs: Vec<Event>, who: &PeerKey| {
        evs.into_iter()
            .any(|e| matches!(e, Event::Muted { peer, on: true } if peer == *who))
    };
    assert!(muted(net.events(&ids[1]), &ids[0]));
    // A newcomer learns of the mute on admission.
    let late = Net::add_room(&mut net.rooms, 3, [12; 32]);
    net.connect(&ids[0], &late);
    assert!(muted(net.events(&late), &ids[0]));
}
