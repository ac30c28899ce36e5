//! The call's policy in virtual time: no swarm, no sockets, no sleeping.

use std::collections::BTreeMap;
use std::time::Duration;

use confab_protocol::room::AdmissionFailure;
use confab_protocol::wire::RejectReason;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};

use super::join::{CIRCUIT_FALLBACK, DISCOVER_AFTER, JOIN_TIMEOUT, RECONNECT_FOR, RELAY_WAIT};
use super::path::{BROKEN_JUDGE, CIRCUIT_GRACE};
use super::*;
use crate::call::error::{CallError, RelayFailure};
use crate::clock::Instant;
use crate::net::relays::Refusal;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn direct() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/4001".parse().unwrap()
}

fn circuit(relay: PeerId, me: PeerId) -> Multiaddr {
    format!("/ip4/127.0.0.1/tcp/4002/p2p/{relay}/p2p-circuit/p2p/{me}")
        .parse()
        .unwrap()
}

struct Net {
    connected: Vec<PeerId>,
    settled: bool,
    failed: Option<String>,
    reserved: Vec<PeerId>,
    member: bool,
}

impl Net {
    fn new() -> Self {
        Self {
            connected: Vec::new(),
            settled: true,
            failed: None,
            reserved: Vec::new(),
            member: false,
        }
    }
}

fn poll(p: &mut JoinPolicy, now: Instant, net: &Net) -> Vec<JoinAction> {
    let connected = |peer: &PeerId| net.connected.contains(peer);
    let view = JoinView {
        connected: &connected,
        relays_settled: net.settled,
        relays_failed: net.failed.clone(),
        reserved_relays: net.reserved.clone(),
        any_member: net.member,
        sending: true,
    };
    p.poll(now, &view)
}

fn dials(actions: &[JoinAction]) -> Vec<(PeerId, usize, usize)> {
    actions
        .iter()
        .filter_map(|a| match a {
            JoinAction::Dial {
                peer,
                direct,
                circuits,
            } => Some((*peer, direct.len(), circuits.len())),
            _ => None,
        })
        .collect()
}

fn gave_up(actions: &[JoinAction]) -> Option<&CallError> {
    actions.iter().find_map(|a| match a {
        JoinAction::GiveUp(e) => Some(e),
        _ => None,
    })
}

fn joiner(t0: Instant, host: PeerId, addrs: Vec<Multiaddr>) -> JoinPolicy {
    JoinPolicy::new(t0, BTreeMap::from([(host, addrs)]), false)
}

#[test]
fn bootstrap_members_are_dialed_every_second_until_connected() {
    let t0 = Instant::now();
    let host = PeerId::random();
    let mut p = joiner(t0, host, vec![direct()]);
    let mut net = Net::new();
    assert_eq!(dials(&poll(&mut p, t0, &net)), vec![(host, 1, 0)]);
    assert!(dials(&poll(&mut p, t0 + ms(500), &net)).is_empty());
    assert_eq!(dials(&poll(&mut p, t0 + ms(1000), &net)).len(), 1);
    net.connected.push(host);
    assert!(dials(&poll(&mut p, t0 + ms(2000), &net)).is_empty());
}

#[test]
fn with_relays_the_first_dials_wait_until_they_answer_or_three_seconds() {
    let t0 = Instant::now();
    let host = PeerId::random();
    let mut p = joiner(t0, host, vec![direct()]);
    let mut net = Net::new();
    net.settled = false;
    assert!(dials(&poll(&mut p, t0, &net)).is_empty());
    assert!(dials(&poll(&mut p, t0 + RELAY_WAIT - ms(1), &net)).is_empty());
    assert_eq!(dials(&poll(&mut p, t0 + RELAY_WAIT, &net)).len(), 1);
}

#[test]
fn circuits_wait_a_second_behind_direct_addresses() {
    let t0 = Instant::now();
    let host = PeerId::random();
    let relay = PeerId::random();
    let mut p = joiner(t0, host, vec![direct(), circuit(relay, host)]);
    let net = Net::new();
    assert_eq!(dials(&poll(&mut p, t0, &net)), vec![(host, 1, 0)]);
    assert_eq!(
        dials(&poll(&mut p, t0 + CIRCUIT_FALLBACK, &net)),
        vec![(host, 1, 1)]
    );
    // A member reachable only through a relay is dialed there at once.
    let mut only = joiner(t0, host, vec![circuit(relay, host)]);
    assert_eq!(dials(&poll(&mut only, t0, &net)), vec![(host, 0, 1)]);
}

#[test]
fn relay_only_never_dials_direct_addresses() {
    let t0 = Instant::now();
    let host = PeerId::random();
    let relay = PeerId::random();
    let bootstrap = BTreeMap::from([(host, vec![direct(), circuit(relay, host)])]);
    let mut p = JoinPolicy::new(t0, bootstrap, true);
    assert_eq!(dials(&poll(&mut p, t0, &Net::new())), vec![(host, 0, 1)]);
}

#[test]
fn a_joiner_gives_up_after_the_join_timeout_and_a_creator_never_does() {
    let t0 = Instant::now();
    let mut p = joiner(t0, PeerId::random(), vec![direct()]);
    let net = Net::new();
    assert!(gave_up(&poll(&mut p, t0 + JOIN_TIMEOUT, &net)).is_none());
    let e = poll(&mut p, t0 + JOIN_TIMEOUT + ms(1), &net);
    assert!(matches!(gave_up(&e), Some(CallError::Unreachable(_))));
    let mut creator = JoinPolicy::new(t0, BTreeMap::new(), false);
    assert!(creator.is_creator());
    assert!(gave_up(&poll(&mut creator, t0 + JOIN_TIMEOUT * 10, &net)).is_none());
}

#[test]
fn a_refusal_before_admission_ends_the_join_at_once() {
    let t0 = Instant::now();
    let host = PeerId::random();
    let mut p = joiner(t0, host, vec![direct()]);
    p.on_admission_failed(
        Some(host),
        &AdmissionFailure::Rejected(RejectReason::BadSecret),
    );
    let e = poll(&mut p, t0 + ms(100), &Net::new());
    match gave_up(&e) {
        Some(CallError::Refused { peer, .. }) => assert_eq!(*peer, host.to_string()),
        other => panic!("{other:?}"),
    }
    // After someone admitted us, a stranger's refusal changes nothing.
    let mut q = joiner(t0, host, vec![direct()]);
    q.on_admitted(host, vec![]);
    q.on_admission_failed(Some(PeerId::random()), &AdmissionFailure::BadSecret);
    assert!(gave_up(&poll(&mut q, t0 + JOIN_TIMEOUT * 2, &Net::new())).is_none());
    // A stranger's clear-text Reject is no refusal.
    let mut s = joiner(t0, host, vec![direct()]);
    s.on_admission_failed(
        Some(PeerId::random()),
        &AdmissionFailure::Rejected(RejectReason::BadSecret),
    );
    assert!(gave_up(&poll(&mut s, t0 + ms(100), &Net::new())).is_none());
    // A handshake that merely broke off is no refusal.
    let mut r = joiner(t0, host, vec![direct()]);
    r.on_admission_failed(Some(host), &AdmissionFailure::Incomplete);
    assert!(gave_up(&poll(&mut r, t0 + ms(100), &Net::new())).is_none());
}

#[test]
fn failed_relays_end_a_creator_at_once_and_a_joiner_after_a_grace() {
    let t0 = Instant::now();
    let mut net = Net::new();
    net.failed = Some("relay X: refused".into());
    let mut creator = JoinPolicy::new(t0, BTreeMap::new(), false);
    let e = poll(&mut creator, t0, &net);
    assert!(matches!(
        gave_up(&e),
        Some(CallError::Relay(RelayFailure::NoReservation(_)))
    ));
    let mut j = joiner(t0, PeerId::random(), vec![direct()]);
    assert!(gave_up(&poll(&mut j, t0, &net)).is_none());
    assert!(gave_up(&poll(&mut j, t0 + ms(2999), &net)).is_none());
    assert!(gave_up(&poll(&mut j, t0 + ms(3000), &net)).is_some());
}

#[test]
fn circuit_refusals_of_every_bootstrap_member_end_the_join() {
    let t0 = Instant::now();
    let host = PeerId::random();
    let mut p = joiner(t0, host, vec![circuit(PeerId::random(), host)]);
    let net = Net::new();
    p.on_circuit_refused(host, Refusal::AtLimit);
    assert!(gave_up(&poll(&mut p, t0, &net)).is_none());
    p.on_circuit_refused(host, Refusal::AtLimit);
    let e = poll(&mut p, t0 + ms(10), &net);
    assert!(matches!(
        gave_up(&e),
        Some(CallError::Relay(RelayFailure::CircuitsRefused(_)))
    ));
    // "No reservation" may be a member still reserving: it takes five.
    let mut q = joiner(t0, host, vec![circuit(PeerId::random(), host)]);
    for _ in 0..4 {
        q.on_circuit_refused(host, Refusal::NoReservation);
    }
    assert!(gave_up(&poll(&mut q, t0, &net)).is_none());
    q.on_circuit_refused(host, Refusal::NoReservation);
    assert!(gave_up(&poll(&mut q, t0 + ms(10), &net)).is_some());
}

#[test]
fn the_rendezvous_is_asked_after_three_seconds_alone_and_every_three_after() {
    let t0 = Instant::now();
    let relay = PeerId::random();
    let mut p = joiner(t0, PeerId::random(), vec![direct()]);
    let mut net = Net::new();
    net.reserved.push(relay);
    let asks = |a: &[JoinAction]| {
        a.iter()
            .filter(|x| matches!(x, JoinAction::Discover { .. }))
            .count()
    };
    assert_eq!(asks(&poll(&mut p, t0 + DISCOVER_AFTER - ms(1), &net)), 0);
    assert_eq!(asks(&poll(&mut p, t0 + DISCOVER_AFTER, &net)), 1);
    assert_eq!(asks(&poll(&mut p, t0 + ms(4000), &net)), 0);
    assert_eq!(asks(&poll(&mut p, t0 + DISCOVER_AFTER * 2, &net)), 1);
    p.on_admitted(PeerId::random(), vec![]);
    assert_eq!(asks(&poll(&mut p, t0 + DISCOVER_AFTER * 4, &net)), 0);
    // A discovered member is dialed and becomes a bootstrap member.
    let found = PeerId::random();
    assert!(p.on_discovered(found, vec![direct()], t0).is_some());
    assert!(p.is_bootstrap(&found));
}

#[test]
fn a_member_whose_connection_broke_is_redialed_for_thirty_seconds() {
    let t0 = Instant::now();
    let host = PeerId::random();
    let mut p = joiner(t0, host, vec![direct()]);
    let mut net = Net::new();
    p.on_admitted(host, vec![direct()]);
    net.member = true;
    assert!(dials(&poll(&mut p, t0, &net)).is_empty());
    p.on_left(host, true, true, t0);
    assert_eq!(dials(&poll(&mut p, t0 + ms(1000), &net)).len(), 1);
    assert_eq!(dials(&poll(&mut p, t0 + ms(2000), &net)).len(), 1);
    assert!(dials(&poll(&mut p, t0 + RECONNECT_FOR + ms(1000), &net)).is_empty());
    // One that said goodbye is not.
    let mut q = joiner(t0, host, vec![direct()]);
    q.on_admitted(host, vec![direct()]);
    q.on_left(host, false, true, t0);
    assert!(dials(&poll(&mut q, t0 + ms(1000), &net)).is_empty());
}

#[test]
fn a_roster_member_is_dialed_until_admitted() {
    let t0 = Instant::now();
    let mut p = joiner(t0, PeerId::random(), vec![direct()]);
    let other = PeerId::random();
    assert!(p.on_roster_member(other, vec![direct()], t0).is_some());
    p.on_admitted(PeerId::random(), vec![]);
    let net = Net::new();
    assert!(dials(&poll(&mut p, t0 + ms(1000), &net))
        .iter()
        .any(|(peer, _, _)| *peer == other));
    p.on_admitted(other, vec![]);
    assert!(!dials(&poll(&mut p, t0 + ms(2000), &net))
        .iter()
        .any(|(peer, _, _)| *peer == other));
}

#[test]
fn a_direct_connection_next_to_a_circuit_is_a_punch_and_the_circuit_closes_after_a_grace() {
    let t0 = Instant::now();
    let mut s = PathState::default();
    let circuit_id = ConnectionId::new_unchecked(1);
    let direct_id = ConnectionId::new_unchecked(2);
    assert!(!s.on_connected(circuit_id, true, t0));
    assert_eq!(s.path(), Path::Relayed);
    assert!(s.on_connected(direct_id, false, t0 + ms(100)));
    assert_eq!(s.path(), Path::Punched);
    assert!(s.circuit_closing());
    assert!(s.poll(t0 + ms(100) + CIRCUIT_GRACE - ms(1)).is_empty());
    assert_eq!(
        s.poll(t0 + ms(100) + CIRCUIT_GRACE),
        vec![PathAction::CloseCircuits(vec![circuit_id])]
    );
    assert_eq!(s.on_closed(circuit_id), 1);
    assert!(s.direct_only_after_punch());
    assert!(!s.circuit_closing());
    assert_eq!(s.path(), Path::Punched);
}

#[test]
fn a_dcutr_success_schedules_the_circuit_close() {
    let t0 = Instant::now();
    let mut s = PathState::default();
    s.on_connected(ConnectionId::new_unchecked(1), true, t0);
    assert!(s.on_punched(t0));
    assert!(!s.on_punched(t0));
    assert_eq!(s.poll_timeout(), Some(t0 + CIRCUIT_GRACE));
    // Only a circuit: nothing to close yet (the direct connection has not arrived).
    assert!(s.poll(t0 + CIRCUIT_GRACE).is_empty());
}

#[test]
fn a_direct_member_stays_direct_and_a_broken_stream_on_it_is_final() {
    let t0 = Instant::now();
    let mut s = PathState::default();
    s.on_connected(ConnectionId::new_unchecked(1), false, t0);
    assert_eq!(s.path(), Path::Direct);
    assert!(!s.on_room_stream_closed(true, true, t0));
    assert!(s.poll(t0 + BROKEN_JUDGE * 2).is_empty());
}

#[test]
fn a_broken_stream_on_a_moving_path_is_judged_later() {
    let t0 = Instant::now();
    let mut s = PathState::default();
    s.on_connected(ConnectionId::new_unchecked(1), true, t0);
    assert!(s.on_room_stream_closed(true, true, t0));
    assert!(s.poll(t0 + BROKEN_JUDGE - ms(1)).is_empty());
    assert_eq!(s.poll(t0 + BROKEN_JUDGE), vec![PathAction::JudgeBroken]);
    // Not a member, or not connected: final at once.
    assert!(!s.on_room_stream_closed(false, true, t0));
    assert!(!s.on_room_stream_closed(true, false, t0));
}

#[test]
fn gossip_never_replaces_a_members_own_addresses() {
    let t0 = Instant::now();
    let host = PeerId::random();
    let mut p = joiner(t0, host, vec![direct()]);
    let real: Multiaddr = "/ip4/127.0.0.1/tcp/5000".parse().unwrap();
    let fake: Multiaddr = "/ip4/10.0.0.1/tcp/22".parse().unwrap();
    let member = PeerId::random();
    p.on_admitted(host, vec![]);
    p.on_admitted(member, vec![real.clone()]);
    // A member that said goodbye, named by a roster: dialed at its own address, once a
    // second however many rosters name it.
    match p.on_roster_member(member, vec![fake.clone()], t0) {
        Some(JoinAction::Dial { direct, .. }) => assert_eq!(direct, vec![real.clone()]),
        other => panic!("{other:?}"),
    }
    assert!(p
        .on_roster_member(member, vec![fake.clone()], t0 + ms(500))
        .is_none());
    assert!(p
        .on_roster_member(member, vec![fake.clone()], t0 + ms(1000))
        .is_some());
    // A member whose connection broke is redialed by the loop at its own address; a roster
    // naming it dials nothing more.
    p.on_left(member, true, true, t0 + ms(1000));
    assert!(p
        .on_roster_member(member, vec![fake], t0 + ms(2500))
        .is_none());
    let redials = poll(&mut p, t0 + ms(3000), &Net::new());
    match redials.as_slice() {
        [JoinAction::Dial { peer, direct, .. }] => {
            assert_eq!((*peer, direct.clone()), (member, vec![real]));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn gossip_dials_a_bounded_set_of_peers_and_forgets_them() {
    use super::join::{MAX_GOSSIP_ADDRS, MAX_ROSTER_REDIALS};
    let t0 = Instant::now();
    let host = PeerId::random();
    let mut p = joiner(t0, host, vec![direct()]);
    p.on_admitted(host, vec![]);
    // Rosters naming a hundred made-up peers: only the first 16 are dialed or remembered.
    let strangers: Vec<PeerId> = (0..100).map(|_| PeerId::random()).collect();
    let dialed = strangers
        .iter()
        .filter(|s| p.on_roster_member(**s, vec![direct()], t0).is_some())
        .count();
    assert_eq!(dialed, MAX_ROSTER_REDIALS);
    assert_eq!(p.gossip_dropped(), (100 - MAX_ROSTER_REDIALS) as u64);
    // The same rosters again dial nothing at once; new addresses for a known one are
    // dialed, up to MAX_GOSSIP_ADDRS remembered in all.
    assert!(p
        .on_roster_member(strangers[0], vec![direct()], t0)
        .is_none());
    let many: Vec<Multiaddr> = (0..20)
        .map(|i| format!("/ip4/127.0.0.1/tcp/{}", 6000 + i).parse().unwrap())
        .collect();
    match p.on_roster_member(strangers[0], many, t0) {
        Some(JoinAction::Dial { direct, .. }) => assert_eq!(direct.len(), MAX_GOSSIP_ADDRS - 1),
        other => panic!("{other:?}"),
    }
    // The loop redials the 16 each second, and no others.
    let redials = dials(&poll(&mut p, t0 + ms(1000), &Net::new()));
    assert_eq!(redials.len(), MAX_ROSTER_REDIALS);
    assert!(redials
        .iter()
        .all(|(peer, ..)| strangers[..MAX_ROSTER_REDIALS].contains(peer)));
    // After RECONNECT_FOR they are forgotten, and gossip is heard again.
    let later = t0 + RECONNECT_FOR + ms(1);
    assert!(dials(&poll(&mut p, later, &Net::new())).is_empty());
    assert!(p
        .on_roster_member(strangers[50], vec![direct()], later)
        .is_some());
}
