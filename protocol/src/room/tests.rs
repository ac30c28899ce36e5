//! Rooms of several members wired together in memory, with the real crypto.

use super::*;
use crate::crypto::Identity;

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
    assert!(net.events(&c).iter().any(|e| matches!(
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
