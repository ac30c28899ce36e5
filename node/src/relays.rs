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
//! This is plain state driven by the call loop: [`Relays::poll`] starts what is due,
//! [`Relays::on_event`] follows the swarm's events.

use std::time::Duration;

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, relay, Multiaddr, PeerId, Swarm};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::net::{self, Behaviour, BehaviourEvent};

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

/// A short explanation of a relay refusal found in an error text, if it is one.
pub fn refusal_reason(text: &str) -> Option<&'static str> {
    let t = text.to_ascii_lowercase();
    if t.contains("resource limit exceeded") {
        Some("the relay is at its limit (resource limit exceeded)")
    } else if t.contains("reservation refused") {
        Some("the relay refused the reservation (its allowlist does not include this node)")
    } else if t.contains("denied permission") {
        Some("the relay denied the circuit (its allowlist does not include this node)")
    } else if t.contains("no reservation for destination") {
        Some("the member holds no reservation at that relay")
    } else {
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

impl Relays {
    /// Relays at `addrs` (each checked with [`check_relay_addr`]).
    pub fn new(addrs: &[Multiaddr]) -> Result<Self, String> {
        let now = Instant::now();
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
    pub fn all_failed(&self) -> Option<String> {
        if self.relays.is_empty() || self.reserved().next().is_some() {
            return None;
        }
        let waited = self.started.elapsed() >= RESERVE_DEADLINE;
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

    /// Starts the dials and reservations that are due.
    pub fn poll(&mut self, swarm: &mut Swarm<Behaviour>) {
        let now = Instant::now();
        for i in 0..self.relays.len() {
            let r = &mut self.relays[i];
            match r.phase {
                Phase::Idle if now >= r.retry_at => {
                    if swarm.is_connected(&r.peer) {
                        r.phase = Phase::Identifying(now + IDENTIFY_WAIT);
                        if self.identified.contains(&r.peer) {
                            self.reserve(i, swarm);
                        }
                        continue;
                    }
                    let opts = DialOpts::peer_id(r.peer)
                        .addresses(vec![r.addr.clone()])
                        .build();
                    match swarm.dial(opts) {
                        Ok(()) => r.phase = Phase::Dialing,
                        Err(e) => {
                            let text = error_chain(&e);
                            self.fail(i, format!("cannot dial the relay: {text}"), false);
                        }
                    }
                }
                Phase::Identifying(deadline) if now >= deadline => self.reserve(i, swarm),
                _ => {}
            }
        }
    }

    fn reserve(&mut self, i: usize, swarm: &mut Swarm<Behaviour>) {
        let r = &mut self.relays[i];
        match swarm.listen_on(r.addr.clone().with(Protocol::P2pCircuit)) {
            Ok(id) => r.phase = Phase::Reserving(id),
            Err(e) => {
                let text = error_chain(&e);
                self.fail(i, format!("cannot listen on the relay: {text}"), false);
            }
        }
    }

    fn fail(&mut self, i: usize, why: String, refused: bool) {
        let r = &mut self.relays[i];
        r.failures += 1;
        r.refused = refused;
        let delay = if refused { REFUSED_BACKOFF } else { r.backoff };
        r.backoff = (r.backoff * 2).min(MAX_BACKOFF);
        r.retry_at = Instant::now() + delay;
        r.phase = Phase::Idle;
        warn!(relay = %r.peer, reason = %why, "relay not usable; retrying in {delay:?}");
        r.failure = Some(why);
    }

    /// Follows one swarm event.
    pub fn on_event(
        &mut self,
        ev: &SwarmEvent<BehaviourEvent>,
        swarm: &mut Swarm<Behaviour>,
    ) -> Change {
        let mut change = Change::default();
        match ev {
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } if !endpoint.is_relayed() => {
                if let Some(i) = self.index(peer_id) {
                    if matches!(self.relays[i].phase, Phase::Dialing | Phase::Idle) {
                        self.relays[i].phase = Phase::Identifying(Instant::now() + IDENTIFY_WAIT);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                ..
            })) => {
                self.identified.insert(*peer_id);
                if let Some(i) = self.index(peer_id) {
                    if matches!(self.relays[i].phase, Phase::Identifying(_)) {
                        self.reserve(i, swarm);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                relay::client::Event::ReservationReqAccepted {
                    relay_peer_id,
                    renewal,
                    ..
                },
            )) => {
                if let Some(i) = self.index(relay_peer_id) {
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
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                let found = self.relays.iter().position(|r| {
                    matches!(r.phase, Phase::Reserving(id) | Phase::Reserved(id) if id == *listener_id)
                });
                if let Some(i) = found {
                    change.addrs = matches!(self.relays[i].phase, Phase::Reserved(_));
                    match reason {
                        Err(e) => {
                            let text = error_chain(e);
                            match refusal_reason(&text) {
                                Some(why) => self.fail(i, format!("{why} ({text})"), true),
                                None => self.fail(i, format!("reservation lost: {text}"), false),
                            }
                        }
                        Ok(()) => self.fail(i, "reservation ended".into(), false),
                    }
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.identified.remove(peer_id);
                if let Some(i) = self.index(peer_id) {
                    let phase = self.relays[i].phase;
                    if let Phase::Reserving(id) | Phase::Reserved(id) = phase {
                        swarm.remove_listener(id);
                    }
                    if phase != Phase::Idle {
                        change.addrs = matches!(phase, Phase::Reserved(_));
                        self.fail(i, "the connection to the relay closed".into(), false);
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer_id),
                error,
                ..
            } => {
                if let Some(i) = self.index(peer_id) {
                    if self.relays[i].phase == Phase::Dialing {
                        let text = error_chain(error);
                        self.fail(i, format!("cannot reach the relay: {text}"), false);
                    }
                }
            }
            _ => {}
        }
        change
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
    fn refusals_are_named() {
        for (text, word) in [
            ("x: Remote reported resource limit exceeded", "limit"),
            (
                "Failed to get Reservation.: Reservation refused.",
                "allowlist",
            ),
            ("Remote denied permission.", "allowlist"),
            (
                "Relay has no reservation for destination.",
                "no reservation",
            ),
        ] {
            assert!(refusal_reason(text).unwrap().contains(word), "{text}");
        }
        assert_eq!(refusal_reason("Connection refused (os error 111)"), None);
    }
}
