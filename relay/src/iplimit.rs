//! Limits per source address: peer ids are free, IP addresses are not.
//!
//! An [`IpKey`] is one IPv4 address or one IPv6 /64 (a host usually holds a whole /64).
//! [`IpLedger`] counts, per key, the peer ids holding a reservation, the circuits whose
//! source is there and the established incoming connections. The relay behaviour asks it
//! through its rate-limiter hook (see [`crate::gate`]), and the gate tells it when
//! reservations, circuits and connections end.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::{IpAddr, Ipv6Addr},
};

use libp2p::{multiaddr::Protocol, Multiaddr, PeerId};

/// One IPv4 address, or the /64 prefix of an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpKey {
    /// An IPv4 address (also an IPv4-mapped IPv6 one).
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6Prefix(u64),
}

impl IpKey {
    /// The key of `ip`.
    pub fn of(ip: IpAddr) -> IpKey {
        match ip {
            IpAddr::V4(v4) => IpKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey::V4(v4.octets()),
                None => IpKey::V6Prefix(prefix64(v6)),
            },
        }
    }

    /// The key of the first IP in `addr`, if it has one.
    pub fn of_multiaddr(addr: &Multiaddr) -> Option<IpKey> {
        addr.iter().find_map(|p| match p {
            Protocol::Ip4(a) => Some(IpKey::of(IpAddr::V4(a))),
            Protocol::Ip6(a) => Some(IpKey::of(IpAddr::V6(a))),
            _ => None,
        })
    }
}

fn prefix64(v6: Ipv6Addr) -> u64 {
    (u128::from(v6) >> 64) as u64
}

/// Ceilings; 0 means no limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct IpLimits {
    /// Peer ids holding a reservation from one key.
    pub reservations: usize,
    /// Circuits open (or being opened) whose source is at one key.
    pub circuits: usize,
    /// Established incoming connections from one key.
    pub connections: usize,
}

/// Counts per [`IpKey`].
#[derive(Debug, Default)]
pub struct IpLedger {
    limits: IpLimits,
    reserved: HashMap<IpKey, HashSet<PeerId>>,
    reserved_at: HashMap<PeerId, HashSet<IpKey>>,
    circuits: HashMap<IpKey, usize>,
    pending_circuits: HashMap<PeerId, VecDeque<IpKey>>,
    open_circuits: HashMap<(PeerId, PeerId), Vec<IpKey>>,
    connections: HashMap<IpKey, usize>,
    denied_reservations: HashMap<PeerId, u32>,
    denied_circuits: HashMap<PeerId, u32>,
}

fn under(limit: usize, n: usize) -> bool {
    limit == 0 || n < limit
}

impl IpLedger {
    /// An empty ledger with `limits`.
    pub fn new(limits: IpLimits) -> Self {
        IpLedger {
            limits,
            ..IpLedger::default()
        }
    }

    /// A reservation request from `peer` at `addr`: whether it is within the limit. A peer
    /// already holding a reservation from the same key (a renewal, or a second connection)
    /// is always within it. When `false`, the refusal is remembered for [`Self::take_reservation_denial`].
    pub fn try_reserve(&mut self, peer: PeerId, addr: &Multiaddr) -> bool {
        let Some(key) = IpKey::of_multiaddr(addr) else {
            return true;
        };
        let holders = self.reserved.entry(key).or_default();
        if holders.contains(&peer) {
            return true;
        }
        if !under(self.limits.reservations, holders.len()) {
            if holders.is_empty() {
                self.reserved.remove(&key);
            }
            *self.denied_reservations.entry(peer).or_default() += 1;
            return false;
        }
        holders.insert(peer);
        self.reserved_at.entry(peer).or_default().insert(key);
        true
    }

    /// `peer`'s reservation ended (expired, closed or failed): it no longer counts.
    pub fn reservation_ended(&mut self, peer: &PeerId) {
        for key in self.reserved_at.remove(peer).into_iter().flatten() {
            if let Some(set) = self.reserved.get_mut(&key) {
                set.remove(peer);
                if set.is_empty() {
                    self.reserved.remove(&key);
                }
            }
        }
    }

    /// Whether the last reservation refusal of `peer` was ours (per-IP).
    pub fn take_reservation_denial(&mut self, peer: &PeerId) -> bool {
        take(&mut self.denied_reservations, peer)
    }

    /// A circuit request from `src` at `addr`: whether it is within the limit.
    pub fn try_circuit(&mut self, src: PeerId, addr: &Multiaddr) -> bool {
        let Some(key) = IpKey::of_multiaddr(addr) else {
            return true;
        };
        let n = self.circuits.get(&key).copied().unwrap_or(0);
        if !under(self.limits.circuits, n) {
            *self.denied_circuits.entry(src).or_default() += 1;
            return false;
        }
        self.circuits.insert(key, n + 1);
        self.pending_circuits.entry(src).or_default().push_back(key);
        true
    }

    /// Whether the last circuit refusal of `src` was ours (per-IP).
    pub fn take_circuit_denial(&mut self, src: &PeerId) -> bool {
        take(&mut self.denied_circuits, src)
    }

    /// A circuit that `src` asked for was opened to `dst`.
    pub fn circuit_accepted(&mut self, src: PeerId, dst: PeerId) {
        if let Some(key) = pop_front(&mut self.pending_circuits, &src) {
            self.open_circuits.entry((src, dst)).or_default().push(key);
        }
    }

    /// A circuit that `src` asked for was not opened (after the per-IP check passed).
    pub fn circuit_failed(&mut self, src: &PeerId) {
        if let Some(key) = pop_front(&mut self.pending_circuits, src) {
            self.release_circuit(key);
        }
    }

    /// An open circuit from `src` to `dst` ended.
    pub fn circuit_closed(&mut self, src: PeerId, dst: PeerId) {
        let pair = (src, dst);
        let key = self.open_circuits.get_mut(&pair).and_then(Vec::pop);
        if self.open_circuits.get(&pair).is_some_and(Vec::is_empty) {
            self.open_circuits.remove(&pair);
        }
        if let Some(key) = key {
            self.release_circuit(key);
        }
    }

    fn release_circuit(&mut self, key: IpKey) {
        if let Some(n) = self.circuits.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.circuits.remove(&key);
            }
        }
    }

    /// `peer` has no connection left: drop what only a connection could hold.
    pub fn peer_gone(&mut self, peer: &PeerId) {
        self.reservation_ended(peer);
        for key in self.pending_circuits.remove(peer).into_iter().flatten() {
            self.release_circuit(key);
        }
        self.denied_reservations.remove(peer);
        self.denied_circuits.remove(peer);
    }

    /// An incoming connection from `key` is established: whether it is within the limit
    /// (counted when it is).
    pub fn try_connection(&mut self, key: IpKey) -> bool {
        let n = self.connections.get(&key).copied().unwrap_or(0);
        if !under(self.limits.connections, n) {
            return false;
        }
        self.connections.insert(key, n + 1);
        true
    }

    /// A counted connection from `key` closed.
    pub fn connection_closed(&mut self, key: IpKey) {
        if let Some(n) = self.connections.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.connections.remove(&key);
            }
        }
    }

    /// Keys tracked (for tests: the ledger does not grow without bound).
    pub fn tracked_keys(&self) -> usize {
        self.reserved.len() + self.circuits.len() + self.connections.len()
    }
}

fn take(map: &mut HashMap<PeerId, u32>, peer: &PeerId) -> bool {
    match map.get_mut(peer) {
        Some(n) if *n > 1 => {
            *n -= 1;
            true
        }
        Some(_) => {
            map.remove(peer);
            true
        }
        None => false,
    }
}

fn pop_front(map: &mut HashMap<PeerId, VecDeque<IpKey>>, peer: &PeerId) -> Option<IpKey> {
    let queue = map.get_mut(peer)?;
    let key = queue.pop_front();
    if queue.is_empty() {
        map.remove(peer);
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap_or_else(|_| Multiaddr::empty())
    }

    #[test]
    fn ipv6_hosts_share_their_64() {
        let a = addr("/ip6/2001:db8:1:2:aaaa::1/tcp/1");
        let b = addr("/ip6/2001:db8:1:2:bbbb::9/tcp/2");
        let c = addr("/ip6/2001:db8:1:3::1/tcp/1");
        assert_eq!(IpKey::of_multiaddr(&a), IpKey::of_multiaddr(&b));
        assert_ne!(IpKey::of_multiaddr(&a), IpKey::of_multiaddr(&c));
        let mapped = addr("/ip6/::ffff:192.0.2.1/tcp/1");
        assert_eq!(
            IpKey::of_multiaddr(&mapped),
            IpKey::of_multiaddr(&addr("/ip4/192.0.2.1/tcp/1"))
        );
    }

    #[test]
    fn reservations_per_key() {
        let mut l = IpLedger::new(IpLimits {
            reservations: 2,
            ..IpLimits::default()
        });
        let ip = addr("/ip4/192.0.2.1/tcp/1");
        let (p1, p2, p3) = (PeerId::random(), PeerId::random(), PeerId::random());
        assert!(l.try_reserve(p1, &ip));
        assert!(l.try_reserve(p2, &ip));
        assert!(l.try_reserve(p1, &ip), "renewal");
        assert!(!l.try_reserve(p3, &ip));
        assert!(l.take_reservation_denial(&p3));
        assert!(!l.take_reservation_denial(&p3));
        assert!(l.try_reserve(p3, &addr("/ip4/192.0.2.2/tcp/1")));
        l.reservation_ended(&p1);
        assert!(l.try_reserve(PeerId::random(), &ip));
        for p in [p1, p2, p3] {
            l.peer_gone(&p);
        }
    }

    #[test]
    fn circuits_per_key_are_released() {
        let mut l = IpLedger::new(IpLimits {
            circuits: 1,
            ..IpLimits::default()
        });
        let ip = addr("/ip4/192.0.2.1/tcp/1");
        let (src, dst) = (PeerId::random(), PeerId::random());
        assert!(l.try_circuit(src, &ip));
        assert!(!l.try_circuit(src, &ip));
        assert!(l.take_circuit_denial(&src));
        l.circuit_accepted(src, dst);
        assert!(!l.try_circuit(PeerId::random(), &ip));
        l.circuit_closed(src, dst);
        assert!(l.try_circuit(src, &ip));
        l.circuit_failed(&src);
        assert!(l.try_circuit(src, &ip));
        l.peer_gone(&src);
        assert_eq!(l.tracked_keys(), 0);
    }

    #[test]
    fn connections_per_key() {
        let mut l = IpLedger::new(IpLimits {
            connections: 1,
            ..IpLimits::default()
        });
        let key = IpKey::of(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)));
        assert!(l.try_connection(key));
        assert!(!l.try_connection(key));
        l.connection_closed(key);
        assert!(l.try_connection(key));
        l.connection_closed(key);
        assert_eq!(l.tracked_keys(), 0);
    }
}
