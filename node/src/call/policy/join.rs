//! Joining and staying joined: whom to dial, when, and when to give up.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use confab_protocol::room::AdmissionFailure;
use libp2p::{Multiaddr, PeerId};

use crate::call::error::{CallError, RelayFailure};
use crate::clock::Instant;
use crate::net::is_relayed;
use crate::net::relays::Refusal;

/// How long to wait for the first member before giving up.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(20);
/// How often members we should be connected to are dialed again.
pub const DIAL_EVERY: Duration = Duration::from_secs(1);
/// With relays, how long the first dials wait for them to answer (circuits and hole punches
/// need the reservation and the identify exchange with the relay first).
pub const RELAY_WAIT: Duration = Duration::from_secs(3);
/// Without anyone admitted after this long, ask the relays' rendezvous for the room's
/// members, and again this often.
pub const DISCOVER_AFTER: Duration = Duration::from_secs(3);
/// How long we keep redialing a member whose connection broke (e.g. its relay restarted).
pub const RECONNECT_FOR: Duration = Duration::from_secs(30);
/// How long a member's direct addresses have before its circuit addresses are dialed too.
pub const CIRCUIT_FALLBACK: Duration = Duration::from_secs(1);
/// A joiner whose relays all failed may still get in directly: it gets this much longer.
pub const RELAY_FAILURE_GRACE: Duration = Duration::from_secs(3);
/// Most peers named only by rosters (not yet admitted) that we dial at once, each for at
/// most [`RECONNECT_FOR`]: however many rosters a member sends, its gossip cannot make us
/// dial (or remember) more than this many peers it made up.
pub const MAX_ROSTER_REDIALS: usize = 16;
/// Most addresses remembered for a peer named by rosters.
pub const MAX_GOSSIP_ADDRS: usize = 8;
/// Circuit refusals of every bootstrap member after which joining is given up (a member
/// without a reservation may still be reserving, so that refusal needs more).
const CIRCUIT_REFUSALS: u32 = 2;
const NO_RESERVATION_REFUSALS: u32 = 5;

/// What the policy needs to know of the network, read by the driver before each poll.
pub struct JoinView<'a> {
    /// Whether we hold a connection to a peer.
    pub connected: &'a dyn Fn(&PeerId) -> bool,
    /// Every relay has answered (reserved or failed).
    pub relays_settled: bool,
    /// Every relay has failed for good, and why.
    pub relays_failed: Option<String>,
    /// Relays that hold a reservation for us now.
    pub reserved_relays: Vec<PeerId>,
    /// Someone is a member of the room with us now.
    pub any_member: bool,
    /// We are still sending (not draining before a leave).
    pub sending: bool,
}

/// What the driver should do.
#[derive(Debug, Clone)]
pub enum JoinAction {
    /// Dial a member: direct addresses, and circuit addresses on a dial of their own.
    Dial {
        peer: PeerId,
        direct: Vec<Multiaddr>,
        circuits: Vec<Multiaddr>,
    },
    /// Ask these relays' rendezvous who is in the room.
    Discover { relays: Vec<PeerId> },
    /// Joining failed: end the call with this error.
    GiveUp(CallError),
}

/// The join policy of one call.
pub struct JoinPolicy {
    started: Instant,
    creator: bool,
    relay_only: bool,
    /// Members to reach until someone admits us (ticket, rendezvous).
    bootstrap: BTreeMap<PeerId, Vec<Multiaddr>>,
    /// Known addresses of members (ticket, Hello, roster, rendezvous).
    addrs: HashMap<PeerId, Vec<Multiaddr>>,
    /// Members to redial, until when.
    lost: HashMap<PeerId, Instant>,
    /// Peers whose addresses came from their own Hello (authenticated by their session):
    /// gossip about them never replaces those.
    from_hello: std::collections::HashSet<PeerId>,
    /// Peers known only from rosters, dialed until when (at most [`MAX_ROSTER_REDIALS`]).
    gossiped: HashMap<PeerId, Instant>,
    /// When a roster last made us dial a peer whose addresses came from its Hello.
    gossip_dialed: HashMap<PeerId, Instant>,
    /// Roster entries not dialed because [`MAX_ROSTER_REDIALS`] gossiped peers were pending.
    gossip_dropped: u64,
    /// When each member was first dialed (circuits wait for [`CIRCUIT_FALLBACK`]).
    first_dial: HashMap<PeerId, Instant>,
    /// Circuit dials to bootstrap members refused by a relay: count and the last reason.
    circuit_refusals: HashMap<PeerId, (u32, Refusal)>,
    last_dial: Option<Instant>,
    last_discover: Option<Instant>,
    relays_failed_at: Option<Instant>,
    ever_admitted: bool,
    refusal: Option<CallError>,
}

impl JoinPolicy {
    /// A call that starts at `now` from the ticket's `bootstrap` members (none: we created
    /// the room). With `relay_only`, only circuit addresses are ever dialed.
    pub fn new(
        now: Instant,
        bootstrap: BTreeMap<PeerId, Vec<Multiaddr>>,
        relay_only: bool,
    ) -> Self {
        let bootstrap: BTreeMap<_, _> = bootstrap
            .into_iter()
            .map(|(p, a)| (p, usable(a, relay_only)))
            .collect();
        Self {
            started: now,
            creator: bootstrap.is_empty(),
            relay_only,
            addrs: bootstrap.clone().into_iter().collect(),
            bootstrap,
            lost: HashMap::new(),
            from_hello: std::collections::HashSet::new(),
            gossiped: HashMap::new(),
            gossip_dropped: 0,
            gossip_dialed: HashMap::new(),
            first_dial: HashMap::new(),
            circuit_refusals: HashMap::new(),
            last_dial: None,
            last_discover: None,
            relays_failed_at: None,
            ever_admitted: false,
            refusal: None,
        }
    }

    /// Whether this node created the room (nobody to join).
    pub fn is_creator(&self) -> bool {
        self.creator
    }

    /// Whether anyone has admitted us yet.
    pub fn ever_admitted(&self) -> bool {
        self.ever_admitted
    }

    /// The members from the ticket (and rendezvous).
    pub fn bootstrap_peers(&self) -> impl Iterator<Item = &PeerId> {
        self.bootstrap.keys()
    }

    /// Whether `peer` came from the ticket or a rendezvous.
    pub fn is_bootstrap(&self, peer: &PeerId) -> bool {
        self.bootstrap.contains_key(peer)
    }

    /// What is due at `now`.
    pub fn poll(&mut self, now: Instant, view: &JoinView<'_>) -> Vec<JoinAction> {
        let mut out = Vec::new();
        self.poll_dials(now, view, &mut out);
        self.poll_discover(now, view, &mut out);
        if let Some(e) = self.poll_give_up(now, view) {
            out.push(JoinAction::GiveUp(e));
        }
        out
    }

    /// When [`JoinPolicy::poll`] next has something to do (at the latest).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let dial = self.last_dial.map(|t| t + DIAL_EVERY);
        let discover = (!self.ever_admitted && !self.creator).then(|| {
            self.last_discover
                .map_or(self.started + DISCOVER_AFTER, |t| t + DISCOVER_AFTER)
        });
        [dial, discover].into_iter().flatten().min()
    }

    fn poll_dials(&mut self, now: Instant, view: &JoinView<'_>, out: &mut Vec<JoinAction>) {
        let relays_ready = view.relays_settled || now.duration_since(self.started) >= RELAY_WAIT;
        if !relays_ready
            || self
                .last_dial
                .is_some_and(|t| now.duration_since(t) < DIAL_EVERY)
        {
            return;
        }
        self.last_dial = Some(now);
        let mut due: Vec<(PeerId, Vec<Multiaddr>)> = Vec::new();
        if !self.ever_admitted {
            due.extend(self.bootstrap.iter().map(|(p, a)| (*p, a.clone())));
        }
        self.lost.retain(|_, until| now < *until);
        self.forget_stale_gossip(now);
        if view.sending {
            for pid in self.lost.keys() {
                due.push((*pid, self.addrs.get(pid).cloned().unwrap_or_default()));
            }
        }
        for (pid, addrs) in due {
            if !(view.connected)(&pid) && !addrs.is_empty() {
                out.extend(self.plan_dial(pid, addrs, now));
            }
        }
    }

    fn poll_discover(&mut self, now: Instant, view: &JoinView<'_>, out: &mut Vec<JoinAction>) {
        if self.ever_admitted
            || self.creator
            || now.duration_since(self.started) < DISCOVER_AFTER
            || self
                .last_discover
                .is_some_and(|t| now.duration_since(t) < DISCOVER_AFTER)
            || view.reserved_relays.is_empty()
        {
            return;
        }
        self.last_discover = Some(now);
        out.push(JoinAction::Discover {
            relays: view.reserved_relays.clone(),
        });
    }

    fn poll_give_up(&mut self, now: Instant, view: &JoinView<'_>) -> Option<CallError> {
        if self.ever_admitted {
            return None;
        }
        if !view.any_member {
            if let Some(e) = self.relays_failed(now, view) {
                return Some(e);
            }
            if let Some(e) = self.circuits_refused(view) {
                return Some(e);
            }
        }
        if self.creator {
            return None;
        }
        if now.duration_since(self.started) > JOIN_TIMEOUT {
            return Some(
                self.refusal
                    .take()
                    .unwrap_or(CallError::Unreachable(JOIN_TIMEOUT)),
            );
        }
        if !view.any_member {
            return self.refusal.take();
        }
        None
    }

    /// Relays that refuse us or cannot be reached: say so rather than wait in silence.
    fn relays_failed(&mut self, now: Instant, view: &JoinView<'_>) -> Option<CallError> {
        let Some(why) = &view.relays_failed else {
            self.relays_failed_at = None;
            return None;
        };
        let since = *self.relays_failed_at.get_or_insert(now);
        let waited = now.duration_since(since) >= RELAY_FAILURE_GRACE;
        (self.creator || self.relay_only || waited)
            .then(|| RelayFailure::NoReservation(why.clone()).into())
    }

    /// Every bootstrap member is unreachable because its relay refuses the circuit.
    fn circuits_refused(&self, view: &JoinView<'_>) -> Option<CallError> {
        if self.bootstrap.is_empty() {
            return None;
        }
        let all_refused = self.bootstrap.keys().all(|p| {
            !(view.connected)(p)
                && self.circuit_refusals.get(p).is_some_and(|(n, why)| {
                    *n >= if *why == Refusal::NoReservation {
                        NO_RESERVATION_REFUSALS
                    } else {
                        CIRCUIT_REFUSALS
                    }
                })
        });
        all_refused.then(|| {
            let why = self
                .circuit_refusals
                .iter()
                .map(|(p, (_, r))| (p.to_string(), *r))
                .collect();
            RelayFailure::CircuitsRefused(why).into()
        })
    }

    /// Dials a member, preferring a direct path: direct addresses at once, circuit addresses
    /// only when there are no direct ones or from [`CIRCUIT_FALLBACK`] after the first dial
    /// on (so that a reachable member is not reached through a relay first). Circuits go on
    /// a dial of their own: a direct address that goes nowhere (a private address behind
    /// NAT) keeps its dial pending for seconds, which would hold the circuit back too.
    pub fn plan_dial(
        &mut self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        now: Instant,
    ) -> Option<JoinAction> {
        let (circuits, direct): (Vec<_>, Vec<_>) = usable(addrs, self.relay_only)
            .into_iter()
            .partition(is_relayed);
        let since = *self.first_dial.entry(peer).or_insert(now);
        let circuits_due = direct.is_empty() || now.duration_since(since) >= CIRCUIT_FALLBACK;
        let circuits = if circuits_due { circuits } else { Vec::new() };
        (!direct.is_empty() || !circuits.is_empty()).then_some(JoinAction::Dial {
            peer,
            direct,
            circuits,
        })
    }

    /// A member admitted us (or we it), announcing `addrs` in its Hello.
    pub fn on_admitted(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        self.ever_admitted = true;
        self.lost.remove(&peer);
        self.gossiped.remove(&peer);
        let addrs = usable(addrs, self.relay_only);
        if !addrs.is_empty() {
            self.addrs.insert(peer, addrs);
            self.from_hello.insert(peer);
        }
    }

    /// A member left; one whose connection broke (not one that said goodbye) is redialed
    /// for [`RECONNECT_FOR`] while we are sending.
    pub fn on_left(&mut self, peer: PeerId, broken: bool, sending: bool, now: Instant) {
        if broken && sending && self.addrs.contains_key(&peer) {
            self.lost.insert(peer, now + RECONNECT_FOR);
        }
    }

    /// A roster names a member we are not connected to: dial it, and keep dialing (circuits
    /// after the first second) until it is admitted or [`RECONNECT_FOR`] has passed.
    pub fn on_roster_member(
        &mut self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        now: Instant,
    ) -> Option<JoinAction> {
        // Gossip is a member's word, not the peer's: it never replaces addresses the peer
        // gave in its own Hello, and at most MAX_ROSTER_REDIALS gossiped peers are dialed.
        if self.from_hello.contains(&peer) {
            // Being redialed already, or dialed for a roster less than a second ago: the
            // same roster sent again and again dials nothing more.
            let recent = self
                .gossip_dialed
                .get(&peer)
                .is_some_and(|t| now.duration_since(*t) < DIAL_EVERY);
            if recent || self.lost.contains_key(&peer) {
                return None;
            }
            self.gossip_dialed.insert(peer, now);
            let known = self.addrs.get(&peer).cloned().unwrap_or_default();
            return self.plan_dial(peer, known, now);
        }
        self.forget_stale_gossip(now);
        let known = self.bootstrap.contains_key(&peer) || self.gossiped.contains_key(&peer);
        if !known {
            if self.gossiped.len() >= MAX_ROSTER_REDIALS {
                self.gossip_dropped += 1;
                return None;
            }
            self.gossiped.insert(peer, now + RECONNECT_FOR);
        }
        let until = self.gossiped.get(&peer).copied();
        self.lost
            .entry(peer)
            .or_insert_with(|| until.unwrap_or(now + RECONNECT_FOR));
        // Only addresses not heard before are dialed now (the redial loop does the rest):
        // the same roster sent again and again dials nothing.
        let fresh = self.merge_addrs(peer, usable(addrs, self.relay_only));
        if fresh.is_empty() {
            return None;
        }
        self.plan_dial(peer, fresh, now)
    }

    /// Adds to `peer`'s known addresses those of `addrs` it lacks, up to
    /// [`MAX_GOSSIP_ADDRS`] in all; returns the ones added.
    fn merge_addrs(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
        let known = self.addrs.entry(peer).or_default();
        let mut fresh = Vec::new();
        for a in addrs {
            if known.len() >= MAX_GOSSIP_ADDRS {
                break;
            }
            if !known.contains(&a) {
                known.push(a.clone());
                fresh.push(a);
            }
        }
        fresh
    }

    /// Roster entries dropped because too many gossiped peers were pending.
    pub fn gossip_dropped(&self) -> u64 {
        self.gossip_dropped
    }

    /// Gossiped peers that were not admitted within [`RECONNECT_FOR`] are forgotten with
    /// their addresses.
    fn forget_stale_gossip(&mut self, now: Instant) {
        let stale: Vec<PeerId> = self
            .gossiped
            .iter()
            .filter(|(_, until)| now >= **until)
            .map(|(p, _)| *p)
            .collect();
        for p in stale {
            self.gossiped.remove(&p);
            if !self.from_hello.contains(&p) && !self.bootstrap.contains_key(&p) {
                self.addrs.remove(&p);
                self.first_dial.remove(&p);
                self.lost.remove(&p);
            }
        }
    }

    /// A relay's rendezvous lists a member of the room: dial it like a ticket's member.
    pub fn on_discovered(
        &mut self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        now: Instant,
    ) -> Option<JoinAction> {
        let addrs = usable(addrs, self.relay_only);
        self.addrs.insert(peer, addrs.clone());
        self.bootstrap.insert(peer, addrs.clone());
        self.plan_dial(peer, addrs, now)
    }

    /// A relay refused our circuit to `peer`.
    pub fn on_circuit_refused(&mut self, peer: PeerId, why: Refusal) {
        if self.bootstrap.contains_key(&peer) {
            let e = self.circuit_refusals.entry(peer).or_insert((0, why));
            e.0 += 1;
            e.1 = why;
        }
    }

    /// A handshake failed. A refusal (wrong secret, full room, bad identity) by a member of
    /// the ticket before anyone admitted us ends a joiner's call; anyone else's "refusal" is
    /// a stranger talking (the Reject is not authenticated by the room) and changes nothing.
    pub fn on_admission_failed(&mut self, peer: Option<PeerId>, reason: &AdmissionFailure) {
        if !peer.is_some_and(|p| self.bootstrap.contains_key(&p)) {
            return;
        }
        let refused = matches!(
            reason,
            AdmissionFailure::BadSecret
                | AdmissionFailure::RoomFull
                | AdmissionFailure::Rejected(_)
                | AdmissionFailure::BadIdentity
        );
        if refused && !self.ever_admitted && !self.creator {
            self.refusal = Some(CallError::Refused {
                peer: peer.map_or_else(|| "unknown peer".into(), |p| p.to_string()),
                reason: reason.clone(),
            });
        }
    }
}

/// The addresses we will dial: all of them, or only circuit addresses with `relay_only`.
pub fn usable(addrs: Vec<Multiaddr>, relay_only: bool) -> Vec<Multiaddr> {
    addrs
        .into_iter()
        .filter(|a| !relay_only || is_relayed(a))
        .collect()
}
