//! Transport connections: dialing, relay circuits, DCUtR-style hole punching, closing.

use crate::nat::{NatKind, Path};
use crate::timing::Setup;

use super::events::Ev;
use super::state::Conn;
use super::{key, path_idx, Key, Sim, MS};

impl Sim {
    /// One-way latency between `a` and `b` on `c`'s current path, before queueing and jitter.
    pub(super) fn base_oneway_us(&self, a: usize, b: usize, c: &Conn) -> u64 {
        let edge = self.nodes[a].access_us + self.nodes[b].access_us;
        match c.path {
            Path::Relayed => edge + c.relay_extra_us,
            _ => edge + c.core_us,
        }
    }

    /// `a` opens a transport connection to `b`.
    pub(super) fn dial(&mut self, a: usize, b: usize) {
        let k = key(a, b);
        if self.conns.get(&k).is_some_and(|c| c.open) {
            return;
        }
        let (na, nb) = (self.nodes[a].nat, self.nodes[b].nat);
        self.conn_stats.attempts += 1;
        self.pairs.entry((na, nb)).or_default().attempts += 1;
        let gen = self.next_gen;
        self.next_gen += 1;
        let core_us = (self.sc.network.core_latency_ms.sample(&mut self.rng) * MS as f64) as u64;
        let mut conn = Conn {
            gen,
            dialer: a,
            path: Path::Direct,
            up: false,
            open: true,
            relay: None,
            core_us,
            relay_extra_us: 0,
            last: [[0; 2]; 2],
            resolved: false,
            dialed_at: self.now,
        };
        let setup_us = if na.reachable() || nb.reachable() {
            self.direct_setup(&mut conn, b)
        } else {
            match self.relayed_setup(&mut conn, b) {
                Some(us) => us,
                None => return,
            }
        };
        self.open_by_path[path_idx(conn.path)] += 1;
        self.conns.insert(k, conn);
        self.nodes[a].conns.insert(b);
        self.nodes[b].conns.insert(a);
        self.at(self.now + setup_us, Ev::ConnUp { key: k, gen });
    }

    fn setup(&self) -> Setup {
        Setup {
            setup_rtts: self.sc.network.setup_rtts,
        }
    }

    /// Both ends' access latencies plus the core's, as a direct round trip.
    fn rtt_direct(&self, c: &Conn, b: usize) -> u64 {
        let edge = self.nodes[c.dialer].access_us + self.nodes[b].access_us;
        2 * (edge + c.core_us)
    }

    /// A direct connection to `b` (one side is reachable); returns its setup time.
    fn direct_setup(&mut self, conn: &mut Conn, b: usize) -> u64 {
        let (na, nb) = (self.nodes[conn.dialer].nat, self.nodes[b].nat);
        let rtt_direct = self.rtt_direct(conn, b);
        // Straight to the reachable side; if that is the dialer, the listener is asked
        // over its relay to dial back.
        let setup_us = self.setup().direct_us(rtt_direct, nb.reachable());
        conn.resolved = true;
        self.resolve(na, nb, Some(Path::Direct));
        setup_us
    }

    /// A circuit through `b`'s relay, with the first hole punch scheduled; returns its setup
    /// time, or `None` when the relay is full (the attempt is recorded as failed).
    fn relayed_setup(&mut self, conn: &mut Conn, b: usize) -> Option<u64> {
        let (na, nb) = (self.nodes[conn.dialer].nat, self.nodes[b].nat);
        let r = self.nodes[b].relay;
        if self.relays[r].active >= self.sc.relays.max_circuits {
            self.circuits_refused += 1;
            self.resolve(na, nb, None);
            return None;
        }
        let rel = &mut self.relays[r];
        rel.active += 1;
        rel.peak = rel.peak.max(rel.active);
        self.circuits_opened += 1;
        let c1 = self.sc.network.core_latency_ms.sample(&mut self.rng);
        let c2 = self.sc.network.core_latency_ms.sample(&mut self.rng);
        conn.relay_extra_us = ((c1 + c2) * MS as f64) as u64 + 2 * self.relays[r].extra_us;
        conn.relay = Some(r);
        conn.path = Path::Relayed;
        let edge = self.nodes[conn.dialer].access_us + self.nodes[b].access_us;
        let rtt_relay = 2 * (edge + conn.relay_extra_us);
        // Connect to the relay, then the circuit through it; then DCUtR.
        let setup_us = self.setup().relayed_us(rtt_relay);
        let rtt_direct = self.rtt_direct(conn, b);
        let first = self.setup().first_punch_us(rtt_relay, rtt_direct);
        self.at(
            self.now + first,
            Ev::Punch {
                key: key(conn.dialer, b),
                gen: conn.gen,
                attempt: 1,
            },
        );
        Some(setup_us)
    }

    /// Records the final outcome of one connection attempt (`None`: refused by the relay).
    fn resolve(&mut self, dialer: NatKind, listener: NatKind, path: Option<Path>) {
        let s = &mut self.conn_stats;
        s.resolved += 1;
        let p = self.pairs.entry((dialer, listener)).or_default();
        match path {
            Some(Path::Direct) => {
                s.direct += 1;
                p.direct += 1;
            }
            Some(Path::Punched) => {
                s.punched += 1;
                p.punched += 1;
            }
            Some(Path::Relayed) => {
                s.relayed += 1;
                p.relayed += 1;
            }
            None => {
                s.failed += 1;
                p.failed += 1;
            }
        }
    }

    pub(super) fn conn_up(&mut self, k: Key, gen: u64) {
        let Some(c) = self.conns.get_mut(&k) else {
            return;
        };
        if c.gen != gen || !c.open {
            return;
        }
        c.up = true;
        let dialer = c.dialer;
        let listener = if k.0 == dialer { k.1 } else { k.0 };
        let dialed_at = c.dialed_at;
        if self.nodes[dialer].state.is_none() || self.nodes[listener].state.is_none() {
            self.close_conn(k);
            return;
        }
        self.setup_ms
            .push((self.now - dialed_at) as f64 / MS as f64);
        let now = self.now_ms();
        for (me, other, initiator) in [(dialer, listener, true), (listener, dialer, false)] {
            let peer = self.nodes[other].peer.clone();
            if let Some(room) = self.nodes[me].state.as_mut() {
                // Only fails for a session with ourselves, which the simulator never asks for.
                let _ = room.connect(now, peer, initiator);
            }
        }
        self.drain(dialer);
        self.drain(listener);
    }

    /// One hole-punch attempt on a relayed connection.
    pub(super) fn punch(&mut self, k: Key, gen: u64, attempt: u32) {
        let Some(c) = self.conns.get(&k) else {
            return;
        };
        if c.gen != gen || !c.open || c.resolved {
            return;
        }
        let dialer = c.dialer;
        let listener = if k.0 == dialer { k.1 } else { k.0 };
        let (na, nb) = (self.nodes[dialer].nat, self.nodes[listener].nat);
        let feasible = self.punch_table.get(&(na, nb)).copied().unwrap_or(false);
        let ok = feasible && !self.rng.chance(self.sc.nat.attempt_failure);
        if ok {
            self.punched(k, attempt);
            self.resolve(na, nb, Some(Path::Punched));
        } else if attempt < self.sc.nat.punch_attempts {
            let edge = self.nodes[dialer].access_us + self.nodes[listener].access_us;
            let Some(c) = self.conns.get(&k) else {
                return;
            };
            let rtt_relay = 2 * (edge + c.relay_extra_us);
            let rtt_direct = 2 * (edge + c.core_us);
            let next = self.setup().retry_us(rtt_relay, rtt_direct);
            self.at(
                self.now + next,
                Ev::Punch {
                    key: k,
                    gen,
                    attempt: attempt + 1,
                },
            );
        } else {
            self.conn_stats.holepunch_runs += 1;
            if let Some(c) = self.conns.get_mut(&k) {
                c.resolved = true;
            }
            self.resolve(na, nb, Some(Path::Relayed));
        }
    }

    /// A punch got through: the connection goes direct and its circuit is released.
    fn punched(&mut self, k: Key, attempt: u32) {
        self.conn_stats.holepunch_runs += 1;
        if attempt == 1 {
            self.first_try += 1;
        }
        if let Some(c) = self.conns.get_mut(&k) {
            c.path = Path::Punched;
            c.resolved = true;
            let relay = c.relay.take();
            self.open_by_path[path_idx(Path::Relayed)] -= 1;
            self.open_by_path[path_idx(Path::Punched)] += 1;
            if let Some(r) = relay {
                self.relays[r].active -= 1;
            }
        }
    }

    pub(super) fn close_conn(&mut self, k: Key) {
        let Some(c) = self.conns.get_mut(&k) else {
            return;
        };
        if !c.open {
            return;
        }
        c.open = false;
        c.up = false;
        let path = c.path;
        if let Some(r) = c.relay.take() {
            self.relays[r].active -= 1;
        }
        self.open_by_path[path_idx(path)] -= 1;
        self.nodes[k.0].conns.remove(&k.1);
        self.nodes[k.1].conns.remove(&k.0);
    }
}
