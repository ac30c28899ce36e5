//! Keeping reservations on community relays.
//!
//! A node given relays (`confab call --relay MA`, or the account's settings) connects to each
//! one, waits for the identify exchange with it (DCUtR needs the relay's view of our address
//! before any circuit is used), reserves a slot by listening on `<relay>/p2p-circuit`, and
//! keeps that slot: when the connection to the relay drops or the reservation is lost, it
//! reconnects and reserves again with a short backoff (250 ms doubling to 1 s), so a relay
//! that restarts is used again within about a second of being back. A relay that refuses
//! (limit reached, allowlist) is retried slowly; the refusal is kept so the call can explain
//! why nobody can reach it.
//!
//! This is sans-IO policy: [`Relays::poll`] says what is due at `now` as [`RelayAction`]s,
//! [`Relays::on_input`] follows what happened ([`RelayInput`], translated from swarm
//! events by the driver), and the driver reports back what its dials and listens did.

use std::time::Duration;

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::{relay, Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::swarm as net;
use crate::clock::Instant;

/// First retry delay after a transient failure; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// Longest delay between two attempts on a relay that is unreachable or restarting.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Delay before asking again a relay that refused us (limits, allowlist).
const REFUSED_BACKOFF: Duration = Duration::from_secs(10);
/// How long to wait for identify with the relay before reserving anyway.
const IDENTIFY_WAIT: Duration = Duration::from_secs(3);
/// A relay that gave no reservation for this long counts as failed.
const RESERVE_DEADLINE: Duration = Duration::from_secs(10);
/// Transient failures after which a relay that never gave us a reservation counts as failed.
const FAILED_AFTER: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting until `retry_at` to dial.
    Idle,
    Dialing,
    /// Connected; waiting for identify until the deadline.
    Identifying(Instant),
    Reserving(ListenerId),
    Reserved(ListenerId),
}

struct Relay {
    /// The relay's address, ending in `/p2p/<relay>`.
    addr: Multiaddr,
    peer: PeerId,
    phase: Phase,
    retry_at: Instant,
    backoff: Duration,
    /// Why the last attempt failed.
    failure: Option<String>,
    /// The last failure was a refusal by the relay (not a network problem).
    refused: bool,
    /// Consecutive failed attempts.
    failures: u32,
    ever_reserved: bool,
}

/// What changed after an event.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The set of reserved relays changed: announce new addresses.
    pub addrs: bool,
    /// This relay just (re)gave us a reservation.
    pub reserved: Option<PeerId>,
}

/// The relays of one call.
pub struct Relays {
    relays: Vec<Relay>,
    identified: std::collections::HashSet<PeerId>,
    started: Instant,
}

/// The relay's peer id from an address ending in `/p2p/<id>`.
pub fn relay_peer(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(p)) => Some(p),
        _ => None,
    }
}

/// Checks a relay address given by the user: it must end in `/p2p/<relay peer id>` and must
/// not itself be a circuit.
pub fn check_relay_addr(addr: &Multiaddr) -> Result<PeerId, String> {
    if net::is_relayed(addr) {
        return Err(format!(
            "{addr} is a circuit address; give the relay's own address"
        ));
    }
    relay_peer(addr)
        .ok_or_else(|| format!("relay address {addr} must end in /p2p/<the relay's peer id>"))
}

/// The address through which `me` is reachable on the relay at `relay_addr`.
pub fn circuit_addr(relay_addr: &Multiaddr, me: PeerId) -> Multiaddr {
    relay_addr
        .clone()
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(me))
}

/// Why a relay refused us: the reservation, or a circuit through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The relay's limits (reservations or circuits) are reached.
    AtLimit,
    /// The relay refused the reservation (allowlist).
    ReservationRefused,
    /// The relay denied the circuit (allowlist).
    CircuitDenied,
    /// The destination holds no reservation at that relay.
    NoReservation,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::AtLimit => "the relay is at its limit (resource limit exceeded)",
            Refusal::ReservationRefused => {
                "the relay refused the reservation (its allowlist does not include this node)"
            }
            Refusal::CircuitDenied => {
                "the relay denied the circuit (its allowlist does not include this node)"
            }
            Refusal::NoReservation => "the member holds no reservation at that relay",
        })
    }
}

impl Refusal {
    fn of_connect(e: &relay::outbound::hop::ConnectError) -> Option<Self> {
        use relay::outbound::hop::ConnectError as E;
        match e {
            E::ResourceLimitExceeded => Some(Refusal::AtLimit),
            E::PermissionDenied => Some(Refusal::CircuitDenied),
            E::NoReservation => Some(Refusal::NoReservation),
            _ => None,
        }
    }

    fn of_reserve(e: &relay::outbound::hop::ReserveError) -> Option<Self> {
        use relay::outbound::hop::ReserveError as E;
        match e {
            E::ResourceLimitExceeded => Some(Refusal::AtLimit),
            E::Refused => Some(Refusal::ReservationRefused),
            _ => None,
        }
    }

    fn of_one(e: &(dyn std::error::Error + 'static)) -> Option<Self> {
        if let Some(c) = e.downcast_ref::<relay::outbound::hop::ConnectError>() {
            return Self::of_connect(c);
        }
        if let Some(r) = e.downcast_ref::<relay::outbound::hop::ReserveError>() {
            return Self::of_reserve(r);
        }
        None
    }

    /// The refusal behind a failed dial (each address's transport error is searched).
    pub fn in_dial_error(e: &libp2p::swarm::DialError) -> Option<Self> {
        if let libp2p::swarm::DialError::Transport(list) = e {
            return list.iter().find_map(|(_, te)| Self::find(te));
        }
        Self::find(e)
    }

    /// The refusal somewhere in an error's chain, found by type. `io::Error` hides the error
    /// it wraps from `source()`, so each one is opened with `get_ref()` on the way down.
    pub fn find(e: &(dyn std::error::Error + 'static)) -> Option<Self> {
        let mut cur = Some(e);
        let mut depth = 0;
        while let Some(err) = cur {
            depth += 1;
            if depth > 32 {
                return None;
            }
            if let Some(r) = Self::of_one(err) {
                return Some(r);
            }
            let inner = err
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|i| i as &(dyn std::error::Error + 'static));
            if let Some(r) = inner.and_then(Self::find) {
                return Some(r);
            }
            cur = err.source();
        }
        None
    }
}

/// One line with an error and all its sources.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        cur = s.source();
    }
    out
}

/// What the driver should do on the swarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayAction {
    /// Dial the relay; report a failure to start with [`Relays::dial_failed`].
    Dial { relay: PeerId, addr: Multiaddr },
    /// Listen on this circuit address (reserve); report with [`Relays::reserving`].
    Reserve { relay: PeerId, addr: Multiaddr },
    /// Stop a listener whose relay connection is gone.
    RemoveListener(ListenerId),
}

/// What happened, as far as the relays are concerned.
#[derive(Debug, Clone)]
pub enum RelayInput {
    /// A direct (not relayed) connection to a peer opened.
    Connected(PeerId),
    /// Identify with a peer finished.
    Identified(PeerId),
    /// A relay accepted a reservation (or renewed it).
    Accepted { relay: PeerId, renewal: bool },
    /// A listener closed, with the error and the refusal found in it, if any.
    ListenerClosed {
        listener: ListenerId,
        error: Option<(String, Option<Refusal>)>,
    },
    /// The last connection to a peer closed.
    Disconnected(PeerId),
    /// A dial to a peer failed.
    DialFailed { peer: PeerId, error: String },
}

impl Relays {
    /// Relays at `addrs` (each checked with [`check_relay_addr`]), from `now` on.
    pub fn new(addrs: &[Multiaddr], now: Instant) -> Result<Self, String> {
        let mut relays = Vec::new();
        for addr in addrs {
            let peer = check_relay_addr(addr)?;
            if relays.iter().any(|r: &Relay| r.peer == peer) {
                continue;
            }
            relays.push(Relay {
                addr: addr.clone(),
                peer,
                phase: Phase::Idle,
                retry_at: now,
                backoff: MIN_BACKOFF,
                failure: None,
                refused: false,
                failures: 0,
                ever_reserved: false,
            });
        }
        Ok(Self {
            relays,
            identified: Default::default(),
            started: now,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.relays.is_empty()
    }

    /// Whether `peer` is one of our relays.
    pub fn is_relay(&self, peer: &PeerId) -> bool {
        self.relays.iter().any(|r| r.peer == *peer)
    }

    /// Relays that hold a reservation for us now.
    pub fn reserved(&self) -> impl Iterator<Item = (PeerId, &Multiaddr)> {
        self.relays
            .iter()
            .filter(|r| matches!(r.phase, Phase::Reserved(_)))
            .map(|r| (r.peer, &r.addr))
    }

    /// Our circuit addresses on the relays that hold a reservation for us.
    pub fn circuit_addrs(&self, me: PeerId) -> Vec<Multiaddr> {
        self.reserved().map(|(_, a)| circuit_addr(a, me)).collect()
    }

    /// Every relay has either given us a reservation or failed at least once: dialing
    /// members through circuits now works (or will not get better soon).
    pub fn settled(&self) -> bool {
        self.relays
            .iter()
            .all(|r| matches!(r.phase, Phase::Reserved(_)) || r.failure.is_some())
    }

    /// If no relay holds a reservation and every one of them has failed for good (refused,
    /// unreachable twice, or no reservation within 10 s), why.
    pub fn all_failed(&self, now: Instant) -> Option<String> {
        if self.relays.is_empty() || self.reserved().next().is_some() {
            return None;
        }
        let waited = now.duration_since(self.started) >= RESERVE_DEADLINE;
        let mut reasons = Vec::new();
        for r in &self.relays {
            let failed = r.refused || r.failures >= FAILED_AFTER || waited;
            if !failed || r.ever_reserved && !r.refused {
                return None;
            }
            let why = r
                .failure
                .clone()
                .unwrap_or_else(|| "no reservation within 10 s".into());
            reasons.push(format!("relay {}: {why}", r.addr));
        }
        Some(reasons.join("; "))
    }

    /// The next time [`Relays::poll`] has something to do.
    pub fn next_wake(&self) -> Option<Instant> {
        self.relays
            .iter()
            .filter_map(|r| match r.phase {
                Phase::Idle => Some(r.retry_at),
                Phase::Identifying(deadline) => Some(deadline),
                _ => None,
            })
            .min()
    }

    /// The dials and reservations due at `now`.
    pub fn poll(&mut self, now: Instant, connected: &dyn Fn(&PeerId) -> bool) -> Vec<RelayAction> {
        let mut out = Vec::new();
        for i in 0..self.relays.len() {
            let r = &mut self.relays[i];
            match r.phase {
                Phase::Idle if now >= r.retry_at => {
                    if connected(&r.peer) {
                        r.phase = Phase::Identifying(now + IDENTIFY_WAIT);
                        if self.identified.contains(&r.peer) {
                            out.push(self.reserve_action(i));
                        }
                        continue;
                    }
                    r.phase = Phase::Dialing;
                    out.push(RelayAction::Dial {
                        relay: r.peer,
                        addr: r.addr.clone(),
                    });
                }
                Phase::Identifying(deadline) if now >= deadline => {
                    out.push(self.reserve_action(i));
                }
                _ => {}
            }
        }
        out
    }

    fn reserve_action(&self, i: usize) -> RelayAction {
        let r = &self.relays[i];
        RelayAction::Reserve {
            relay: r.peer,
            addr: r.addr.clone().with(Protocol::P2pCircuit),
        }
    }

    /// The driver could not start a dial to `relay`.
    pub fn dial_failed(&mut self, relay: PeerId, error: &str, now: Instant) {
        if let Some(i) = self.index(&relay) {
            self.fail(i, format!("cannot dial the relay: {error}"), false, now);
        }
    }

    /// What listening on `relay`'s circuit address gave.
    pub fn reserving(&mut self, relay: PeerId, result: Result<ListenerId, String>, now: Instant) {
        let Some(i) = self.index(&relay) else {
            return;
        };
        match result {
            Ok(id) => self.relays[i].phase = Phase::Reserving(id),
            Err(e) => self.fail(i, format!("cannot listen on the relay: {e}"), false, now),
        }
    }

    fn fail(&mut self, i: usize, why: String, refused: bool, now: Instant) {
        let r = &mut self.relays[i];
        r.failures += 1;
        r.refused = refused;
        let delay = if refused { REFUSED_BACKOFF } else { r.backoff };
        r.backoff = (r.backoff * 2).min(MAX_BACKOFF);
        r.retry_at = now + delay;
        r.phase = Phase::Idle;
        warn!(relay = %r.peer, reason = %why, "relay not usable; retrying in {delay:?}");
        r.failure = Some(why);
    }

    /// Follows one input; returns what changed and what to do now.
    pub fn on_input(&mut self, input: RelayInput, now: Instant) -> (Change, Vec<RelayAction>) {
        let mut change = Change::default();
        let mut out = Vec::new();
        match input {
            RelayInput::Connected(peer) => {
                if let Some(i) = self.index(&peer) {
                    if matches!(self.relays[i].phase, Phase::Dialing | Phase::Idle) {
                        self.relays[i].phase = Phase::Identifying(now + IDENTIFY_WAIT);
                    }
                }
            }
            RelayInput::Identified(peer) => {
                self.identified.insert(peer);
                if let Some(i) = self.index(&peer) {
                    if matches!(self.relays[i].phase, Phase::Identifying(_)) {
                        out.push(self.reserve_action(i));
                    }
                }
            }
            RelayInput::Accepted { relay, renewal } => {
                self.on_accepted(relay, renewal, &mut change)
            }
            RelayInput::ListenerClosed { listener, error } => {
                self.on_listener_closed(listener, error, now, &mut change);
            }
            RelayInput::Disconnected(peer) => {
                self.identified.remove(&peer);
                if let Some(i) = self.index(&peer) {
                    let phase = self.relays[i].phase;
                    if let Phase::Reserving(id) | Phase::Reserved(id) = phase {
                        out.push(RelayAction::RemoveListener(id));
                    }
                    if phase != Phase::Idle {
                        change.addrs = matches!(phase, Phase::Reserved(_));
                        self.fail(i, "the connection to the relay closed".into(), false, now);
                    }
                }
            }
            RelayInput::DialFailed { peer, error } => {
                if let Some(i) = self.index(&peer) {
                    if self.relays[i].phase == Phase::Dialing {
                        self.fail(i, format!("cannot reach the relay: {error}"), false, now);
                    }
                }
            }
        }
        (change, out)
    }

    fn on_accepted(&mut self, relay: PeerId, renewal: bool, change: &mut Change) {
        let Some(i) = self.index(&relay) else {
            return;
        };
        let r = &mut self.relays[i];
        if let Phase::Reserving(id) = r.phase {
            r.phase = Phase::Reserved(id);
            r.failure = None;
            r.refused = false;
            r.failures = 0;
            r.backoff = MIN_BACKOFF;
            r.ever_reserved = true;
            info!(relay = %r.peer, "reserved a slot on the relay");
            change.addrs = true;
            change.reserved = Some(r.peer);
        } else if !renewal {
            change.reserved = Some(r.peer);
        }
    }

    fn on_listener_closed(
        &mut self,
        listener: ListenerId,
        error: Option<(String, Option<Refusal>)>,
        now: Instant,
        change: &mut Change,
    ) {
        let found = self.relays.iter().position(
            |r| matches!(r.phase, Phase::Reserving(id) | Phase::Reserved(id) if id == listener),
        );
        let Some(i) = found else {
            return;
        };
        change.addrs = matches!(self.relays[i].phase, Phase::Reserved(_));
        match error {
            Some((text, Some(why))) => self.fail(i, format!("{why} ({text})"), true, now),
            Some((text, None)) => self.fail(i, format!("reservation lost: {text}"), false, now),
            None => self.fail(i, "reservation ended".into(), false, now),
        }
    }

    fn index(&self, peer: &PeerId) -> Option<usize> {
        self.relays.iter().position(|r| r.peer == *peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_addresses_need_a_peer_id_and_no_circuit() {
        let id = PeerId::random();
        let ok: Multiaddr = format!("/ip4/127.0.0.1/tcp/4001/p2p/{id}").parse().unwrap();
        assert_eq!(check_relay_addr(&ok), Ok(id));
        let bare: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        assert!(check_relay_addr(&bare).unwrap_err().contains("/p2p/"));
        let circuit = circuit_addr(&ok, PeerId::random());
        assert!(check_relay_addr(&circuit).is_err());
        assert!(net::is_relayed(&circuit));
        assert_eq!(
            circuit.to_string(),
            format!("{ok}/p2p-circuit/p2p/{}", relay_peer(&circuit).unwrap())
        );
    }

    #[test]
    fn refusals_are_found_by_type_inside_io_errors() {
        use relay::outbound::hop::{ConnectError, ReserveError};
        let wrapped = std::io::Error::other(ConnectError::ResourceLimitExceeded);
        assert_eq!(Refusal::find(&wrapped), Some(Refusal::AtLimit));
        let denied = std::io::Error::other(ConnectError::PermissionDenied);
        assert_eq!(Refusal::find(&denied), Some(Refusal::CircuitDenied));
        let none = std::io::Error::other(ConnectError::NoReservation);
        assert_eq!(Refusal::find(&none), Some(Refusal::NoReservation));
        assert_eq!(
            Refusal::find(&ReserveError::Refused),
            Some(Refusal::ReservationRefused)
        );
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(Refusal::find(&plain), None);
        assert!(Refusal::AtLimit.to_string().contains("limit"));
        assert!(Refusal::CircuitDenied.to_string().contains("allowlist"));
    }

    fn relay_addr() -> (PeerId, Multiaddr) {
        let id = PeerId::random();
        (
            id,
            format!("/ip4/127.0.0.1/tcp/4001/p2p/{id}").parse().unwrap(),
        )
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_relay_is_dialed_then_reserved_after_identify_or_three_seconds() {
        let t0 = Instant::now();
        let (id, addr) = relay_addr();
        let mut r = Relays::new(std::slice::from_ref(&addr), t0).unwrap();
        let none = |_: &PeerId| false;
        assert_eq!(
            r.poll(t0, &none),
            vec![RelayAction::Dial {
                relay: id,
                addr: addr.clone()
            }]
        );
        assert!(r.poll(t0 + ms(10), &none).is_empty());
        let (_, acts) = r.on_input(RelayInput::Connected(id), t0 + ms(20));
        assert!(acts.is_empty());
        // Identify never comes: reserve anyway after the wait.
        assert!(r
            .poll(t0 + ms(20) + IDENTIFY_WAIT - ms(1), &none)
            .is_empty());
        let acts = r.poll(t0 + ms(20) + IDENTIFY_WAIT, &none);
        assert!(matches!(acts.as_slice(), [RelayAction::Reserve { relay, .. }] if *relay == id));
        let listener = ListenerId::next();
        r.reserving(id, Ok(listener), t0 + ms(3100));
        let (change, _) = r.on_input(
            RelayInput::Accepted {
                relay: id,
                renewal: false,
            },
            t0 + ms(3200),
        );
        assert!(change.addrs);
        assert_eq!(change.reserved, Some(id));
        assert!(r.settled());
        assert_eq!(r.circuit_addrs(PeerId::random()).len(), 1);
    }

    #[test]
    fn a_lost_relay_is_retried_with_a_doubling_backoff_and_a_refusal_slowly() {
        let t0 = Instant::now();
        let (id, addr) = relay_addr();
        let mut r = Relays::new(&[addr], t0).unwrap();
        let none = |_: &PeerId| false;
        r.poll(t0, &none);
        r.on_input(
            RelayInput::DialFailed {
                peer: id,
                error: "refused".into(),
            },
            t0,
        );
        assert!(r.poll(t0 + MIN_BACKOFF - ms(1), &none).is_empty());
        let t1 = t0 + MIN_BACKOFF;
        assert_eq!(r.poll(t1, &none).len(), 1);
        r.on_input(
            RelayInput::DialFailed {
                peer: id,
                error: "refused".into(),
            },
            t1,
        );
        assert!(r.poll(t1 + MIN_BACKOFF, &none).is_empty());
        assert_eq!(r.poll(t1 + MIN_BACKOFF * 2, &none).len(), 1);
        // Two transient failures without a reservation: the relay counts as failed.
        assert!(r.all_failed(t1).is_some());
        // A refusal waits ten seconds.
        let listener = ListenerId::next();
        r.reserving(id, Ok(listener), t1);
        let err = Some(("x".to_string(), Some(Refusal::AtLimit)));
        r.on_input(
            RelayInput::ListenerClosed {
                listener,
                error: err,
            },
            t1,
        );
        assert!(r.poll(t1 + REFUSED_BACKOFF - ms(1), &none).is_empty());
        assert_eq!(r.poll(t1 + REFUSED_BACKOFF, &none).len(), 1);
        assert!(r.all_failed(t1).unwrap().contains("limit"));
    }

    #[test]
    fn an_unanswering_relay_counts_as_failed_after_the_deadline() {
        let t0 = Instant::now();
        let (_, addr) = relay_addr();
        let mut r = Relays::new(&[addr], t0).unwrap();
        r.poll(t0, &|_: &PeerId| false);
        assert!(r.all_failed(t0 + RESERVE_DEADLINE - ms(1)).is_none());
        assert!(r.all_failed(t0 + RESERVE_DEADLINE).is_some());
    }
}
