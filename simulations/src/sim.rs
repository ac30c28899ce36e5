//! The discrete-event engine.
//!
//! Virtual time is in microseconds (the protocol sees milliseconds). Events sit in a binary
//! heap ordered by (time, insertion counter), so ties resolve in insertion order. Every
//! random draw comes from one [`SimRng`] in the order the events are processed, every map is
//! a `BTreeMap`, and nothing reads a clock: the same scenario and seed replay the same run.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use confab_protocol::crypto::{Identity, OpenedFrame};
use confab_protocol::jitter::{JitterBuffer, JitterConfig, Playout};
use confab_protocol::room::{Event, Room, RoomConfig, RoomCounters};

use crate::link::{GeChannel, Pipe};
use crate::nat::{predict_path, punch_succeeds, NatKind, Path};
use crate::report::{
    round3, Connections, MediaStats, NatPair, Paths, Pct, RelayStats, RoomStats, RunOutput,
    SeriesRow, SizeRow, Summary,
};
use crate::rng::SimRng;
use crate::scenario::{Scenario, Transport};

const MS: u64 = 1_000;

type Key = (usize, usize);

fn key(a: usize, b: usize) -> Key {
    (a.min(b), a.max(b))
}

enum Ev {
    Join(usize),
    Leave {
        node: usize,
        session: u32,
    },
    ConnUp {
        key: Key,
        gen: u64,
    },
    Punch {
        key: Key,
        gen: u64,
        attempt: u32,
    },
    Frame {
        to: usize,
        from: usize,
        session: u32,
        frame: Vec<u8>,
        close: bool,
    },
    Disconnect {
        to: usize,
        from: usize,
        session: u32,
    },
    Media {
        to: usize,
        from: usize,
        session: u32,
        bytes: Vec<u8>,
    },
    Timer {
        node: usize,
        session: u32,
        at: u64,
    },
    Playout {
        node: usize,
        from: usize,
        at: u64,
    },
    Tick {
        node: usize,
        session: u32,
    },
    MediaEnd,
    Sample,
}

struct Entry {
    t: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.t, self.seq) == (o.t, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap, we want the earliest first.
        (o.t, o.seq).cmp(&(self.t, self.seq))
    }
}

struct Stream {
    jb: JitterBuffer,
    at: Option<u64>,
}

struct Node {
    room: usize,
    nat: NatKind,
    relay: usize,
    access_us: u64,
    up: Pipe,
    down: Pipe,
    ge_up: GeChannel,
    ge_down: GeChannel,
    identity: Identity,
    peer: Vec<u8>,
    state: Option<Room>,
    session: u32,
    timer_at: Option<u64>,
    joined_at: u64,
    admitted_once: bool,
    heard: bool,
    streams: BTreeMap<usize, Stream>,
    conns: BTreeSet<usize>,
    acc: RoomCounters,
    window_up_bytes: u64,
}

struct RoomInfo {
    size: u32,
    members: Vec<usize>,
    online: BTreeSet<usize>,
    id: [u8; 16],
    secret: [u8; 32],
    media: bool,
    churn: bool,
}

struct Conn {
    gen: u64,
    dialer: usize,
    path: Path,
    up: bool,
    open: bool,
    relay: Option<usize>,
    core_us: u64,
    relay_extra_us: u64,
    last: [[u64; 2]; 2],
    resolved: bool,
    dialed_at: u64,
}

struct Relay {
    extra_us: u64,
    pipe: Pipe,
    active: u32,
    peak: u32,
}

#[derive(Default)]
struct SizeAgg {
    rooms: u64,
    streams: u64,
    m2e: Vec<u64>,
    mos: Vec<f64>,
    frames_sent: u64,
    frames_dropped: u64,
    slots: u64,
    missed: u64,
    played: u64,
    concealed: u64,
    late: u64,
    up_kbps: Vec<f64>,
}

#[derive(Default)]
struct PairAgg {
    attempts: u64,
    direct: u64,
    punched: u64,
    relayed: u64,
    failed: u64,
}

/// A simulation in progress.
pub struct Sim {
    sc: Scenario,
    rng: SimRng,
    now: u64,
    end: u64,
    seq: u64,
    queue: BinaryHeap<Entry>,
    nodes: Vec<Node>,
    rooms: Vec<RoomInfo>,
    conns: BTreeMap<Key, Conn>,
    relays: Vec<Relay>,
    by_peer: BTreeMap<Vec<u8>, usize>,
    punch_table: BTreeMap<(NatKind, NatKind), bool>,
    next_gen: u64,
    media_on: bool,
    media_start: u64,
    media_end: u64,
    payload: Vec<u8>,
    jitter_cfg: JitterConfig,
    // metrics
    events: u64,
    conn_stats: Connections,
    first_try: u64,
    setup_ms: Vec<f64>,
    pairs: BTreeMap<(NatKind, NatKind), PairAgg>,
    open_by_path: [u64; 3],
    circuits_opened: u64,
    circuits_refused: u64,
    joins: u64,
    leaves: u64,
    fresh_rotations: u64,
    ratchets: u64,
    join_to_admitted: Vec<f64>,
    join_to_audio: Vec<f64>,
    sizes: BTreeMap<u32, SizeAgg>,
    frames_lost_net: u64,
    frames_played_total: u64,
    series: Vec<SeriesRow>,
}

fn path_idx(p: Path) -> usize {
    match p {
        Path::Direct => 0,
        Path::Punched => 1,
        Path::Relayed => 2,
    }
}

impl Sim {
    /// Builds the population from the scenario; `seed` replaces the scenario's seed.
    pub fn new(sc: &Scenario, seed: u64) -> Sim {
        let mut rng = SimRng::new(seed);
        let sc = sc.clone();
        let mix = sc.nat_mix();
        let weights: Vec<f64> = mix.iter().map(|m| m.1).collect();
        let relays: Vec<Relay> = (0..sc.relays.count)
            .map(|_| Relay {
                extra_us: (sc.relays.latency_ms.sample(&mut rng) * MS as f64) as u64,
                pipe: Pipe::new(sc.relays.bandwidth_kbps),
                active: 0,
                peak: 0,
            })
            .collect();
        let mut nodes = Vec::new();
        let mut rooms = Vec::new();
        let mut by_peer = BTreeMap::new();
        let mut joins = Vec::new();
        for g in &sc.rooms {
            for _ in 0..g.count {
                let r = rooms.len();
                let mut id = [0u8; 16];
                id.copy_from_slice(&rng.seed32()[..16]);
                let media = sc.media.enabled && rng.chance(sc.media.rooms_share);
                let churn = sc.churn.as_ref().is_some_and(|c| rng.chance(c.rooms_share));
                let mut info = RoomInfo {
                    size: g.size,
                    members: Vec::new(),
                    online: BTreeSet::new(),
                    id,
                    secret: rng.seed32(),
                    media,
                    churn,
                };
                for _ in 0..g.size {
                    let idx = nodes.len();
                    let nat = mix[rng.weighted(&weights)].0;
                    let identity = Identity::generate(rng.inner());
                    let peer = identity.peer_id();
                    by_peer.insert(peer.clone(), idx);
                    let up = sc.access.uplink_kbps.sample(&mut rng).max(8.0);
                    let down = sc.access.downlink_kbps.sample(&mut rng).max(8.0);
                    nodes.push(Node {
                        room: r,
                        nat,
                        relay: rng.below(u64::from(sc.relays.count)) as usize,
                        access_us: (sc.access.latency_ms.sample(&mut rng) * MS as f64) as u64,
                        up: Pipe::new(up),
                        down: Pipe::new(down),
                        ge_up: GeChannel::default(),
                        ge_down: GeChannel::default(),
                        identity,
                        peer,
                        state: None,
                        session: 0,
                        timer_at: None,
                        joined_at: 0,
                        admitted_once: false,
                        heard: false,
                        streams: BTreeMap::new(),
                        conns: BTreeSet::new(),
                        acc: RoomCounters::default(),
                        window_up_bytes: 0,
                    });
                    info.members.push(idx);
                    let t = g.start_s + g.join_spread_s * rng.f64();
                    joins.push(((t * 1e6) as u64, idx));
                }
                rooms.push(info);
            }
        }
        let mut punch_table = BTreeMap::new();
        for a in NatKind::all() {
            for b in NatKind::all() {
                punch_table.insert((a, b), punch_succeeds(a, b));
            }
        }
        let end = (sc.duration_s * 1e6) as u64;
        let media_start = (sc.media.start_s * 1e6) as u64;
        let media_end = if sc.media.duration_s > 0.0 {
            ((sc.media.start_s + sc.media.duration_s) * 1e6) as u64
        } else {
            end
        }
        .min(end);
        let jitter_cfg = JitterConfig {
            frame_ms: sc.media.frame_ms,
            min_delay_ms: sc.media.jitter_min_delay_ms,
            max_delay_ms: sc.media.jitter_max_delay_ms,
            percentile: sc.media.jitter_percentile,
            ..JitterConfig::default()
        };
        let mut sim = Sim {
            payload: vec![0x55; sc.media.payload_bytes as usize],
            rng,
            now: 0,
            end,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            rooms,
            conns: BTreeMap::new(),
            relays,
            by_peer,
            punch_table,
            next_gen: 1,
            media_on: sc.media.enabled,
            media_start,
            media_end,
            jitter_cfg,
            events: 0,
            conn_stats: Connections::default(),
            first_try: 0,
            setup_ms: Vec::new(),
            pairs: BTreeMap::new(),
            open_by_path: [0; 3],
            circuits_opened: 0,
            circuits_refused: 0,
            joins: 0,
            leaves: 0,
            fresh_rotations: 0,
            ratchets: 0,
            join_to_admitted: Vec::new(),
            join_to_audio: Vec::new(),
            sizes: BTreeMap::new(),
            frames_lost_net: 0,
            frames_played_total: 0,
            series: Vec::new(),
            sc,
        };
        for (t, n) in joins {
            sim.at(t, Ev::Join(n));
        }
        if sim.sc.media.enabled {
            sim.at(sim.media_end, Ev::MediaEnd);
        }
        sim.at(0, Ev::Sample);
        sim
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Entry {
            t: t.max(self.now),
            seq: self.seq,
            ev,
        });
    }

    fn now_ms(&self) -> u64 {
        self.now / MS
    }

    /// Runs to the end; `progress(done_us, total_us)` is called about every 1% of simulated
    /// time. Returns the raw measurements.
    fn run_raw(mut self, progress: &mut dyn FnMut(u64, u64)) -> Raw {
        let step = (self.end / 100).max(1);
        let mut next_report = 0;
        while let Some(e) = self.queue.pop() {
            if e.t > self.end {
                break;
            }
            self.now = e.t;
            self.events += 1;
            if self.now >= next_report {
                progress(self.now, self.end);
                next_report = self.now + step;
            }
            self.handle(e.ev);
        }
        self.now = self.end;
        progress(self.end, self.end);
        self.into_raw()
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Join(n) => self.join(n),
            Ev::Leave { node, session } => {
                if self.nodes[node].session == session && self.nodes[node].state.is_some() {
                    self.leave(node);
                }
            }
            Ev::ConnUp { key, gen } => self.conn_up(key, gen),
            Ev::Punch { key, gen, attempt } => self.punch(key, gen, attempt),
            Ev::Frame {
                to,
                from,
                session,
                frame,
                close,
            } => {
                if self.nodes[to].session != session {
                    return;
                }
                let now = self.now_ms();
                let peer = self.nodes[from].peer.clone();
                let Some(room) = self.nodes[to].state.as_mut() else {
                    return;
                };
                room.handle_frame(now, &peer, &frame);
                if close {
                    room.peer_disconnected(now, &peer);
                    self.close_conn(key(to, from));
                }
                self.drain(to);
            }
            Ev::Disconnect { to, from, session } => {
                if self.nodes[to].session != session {
                    return;
                }
                let now = self.now_ms();
                let peer = self.nodes[from].peer.clone();
                if let Some(room) = self.nodes[to].state.as_mut() {
                    room.peer_disconnected(now, &peer);
                    self.drain(to);
                }
            }
            Ev::Media {
                to,
                from,
                session,
                bytes,
            } => self.media_in(to, from, session, &bytes),
            Ev::Timer { node, session, at } => {
                let n = &mut self.nodes[node];
                if n.session != session || n.timer_at != Some(at) {
                    return;
                }
                n.timer_at = None;
                let now = self.now / MS;
                if let Some(room) = n.state.as_mut() {
                    room.handle_timeout(now);
                    self.drain(node);
                }
            }
            Ev::Playout { node, from, at } => self.playout(node, from, at),
            Ev::Tick { node, session } => self.tick(node, session),
            Ev::MediaEnd => {
                self.media_on = false;
                for n in 0..self.nodes.len() {
                    self.finish_streams(n);
                }
            }
            Ev::Sample => {
                self.sample();
                let dt = (self.sc.output.series_interval_s * 1e6) as u64;
                self.at(self.now + dt.max(1), Ev::Sample);
            }
        }
    }

    // ----- membership -----

    fn join(&mut self, n: usize) {
        if self.nodes[n].state.is_some() {
            return;
        }
        let r = self.nodes[n].room;
        let p = &self.sc.room;
        let cfg = RoomConfig {
            name: format!("node-{n}"),
            addrs: Vec::new(),
            recording: false,
            max_members: p.max_members,
            handshake_timeout_ms: p.handshake_timeout_ms,
            heartbeat_interval_ms: p.heartbeat_interval_ms,
            idle_timeout_ms: p.idle_timeout_ms,
            pending_frames: RoomConfig::default().pending_frames,
        };
        let seed = self.rng.seed32();
        let info = &self.rooms[r];
        let room = Room::new(
            cfg,
            self.nodes[n].identity.clone(),
            info.id,
            &info.secret,
            seed,
        );
        let bootstrap = info.online.iter().copied().find(|m| *m != n);
        let (media, churn) = (info.media, info.churn);
        self.rooms[r].online.insert(n);
        self.joins += 1;
        let node = &mut self.nodes[n];
        node.state = Some(room);
        node.session += 1;
        node.timer_at = None;
        node.joined_at = self.now;
        node.admitted_once = false;
        node.heard = false;
        let session = node.session;
        match bootstrap {
            Some(b) => self.dial(n, b),
            // Nobody to meet yet: not a join-to-admission sample.
            None => self.nodes[n].admitted_once = true,
        }
        if media && self.media_on && self.now < self.media_end {
            let phase = self.rng.below(u64::from(self.sc.media.frame_ms) * MS);
            let start = self.now.max(self.media_start) + phase;
            self.at(start, Ev::Tick { node: n, session });
        }
        if churn {
            if let Some(c) = &self.sc.churn {
                let stay = self.rng.exp(c.mean_stay_s);
                let from = self.now.max((c.start_s * 1e6) as u64);
                self.at(from + (stay * 1e6) as u64, Ev::Leave { node: n, session });
            }
        }
    }

    fn leave(&mut self, n: usize) {
        let now = self.now_ms();
        if let Some(room) = self.nodes[n].state.as_mut() {
            room.leave(now);
        }
        self.drain(n);
        self.finish_streams(n);
        let peers: Vec<usize> = self.nodes[n].conns.iter().copied().collect();
        for p in peers {
            self.close_conn(key(n, p));
        }
        let r = self.nodes[n].room;
        self.rooms[r].online.remove(&n);
        self.leaves += 1;
        let node = &mut self.nodes[n];
        if let Some(room) = node.state.take() {
            add_counters(&mut node.acc, room.counters());
        }
        node.session += 1;
        node.timer_at = None;
        if let Some(c) = &self.sc.churn {
            if c.mean_away_s > 0.0 {
                let away = self.rng.exp(c.mean_away_s);
                self.at(self.now + (away * 1e6) as u64, Ev::Join(n));
            }
        }
    }

    // ----- connections -----

    fn base_oneway_us(&self, a: usize, b: usize, c: &Conn) -> u64 {
        let edge = self.nodes[a].access_us + self.nodes[b].access_us;
        match c.path {
            Path::Relayed => edge + c.relay_extra_us,
            _ => edge + c.core_us,
        }
    }

    /// `a` opens a transport connection to `b`.
    fn dial(&mut self, a: usize, b: usize) {
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
        let edge = self.nodes[a].access_us + self.nodes[b].access_us;
        let rtt_direct = 2 * (edge + core_us);
        let setup_rtts = self.sc.network.setup_rtts;
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
        let setup_us;
        if na.reachable() || nb.reachable() {
            // Straight to the reachable side; if that is the dialer, the listener is asked
            // over its relay to dial back (one relayed round trip more).
            setup_us = (rtt_direct as f64 * setup_rtts) as u64
                + if nb.reachable() { 0 } else { rtt_direct };
            conn.resolved = true;
            self.resolve(na, nb, Some(Path::Direct));
        } else {
            let r = self.nodes[b].relay;
            if self.relays[r].active >= self.sc.relays.max_circuits {
                self.circuits_refused += 1;
                self.resolve(na, nb, None);
                return;
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
            let rtt_relay = 2 * (edge + conn.relay_extra_us);
            // Connect to the relay, then the circuit through it.
            setup_us = (rtt_relay as f64 * setup_rtts) as u64 + rtt_relay / 2;
            // DCUtR: Connect exchange over the circuit (measures the RTT), Sync, then dial
            // after RTT/2 and the direct handshake.
            let first =
                setup_us + rtt_relay + rtt_relay / 2 + (rtt_direct as f64 * setup_rtts) as u64;
            self.at(
                self.now + first,
                Ev::Punch {
                    key: k,
                    gen,
                    attempt: 1,
                },
            );
        }
        self.open_by_path[path_idx(conn.path)] += 1;
        self.conns.insert(k, conn);
        self.nodes[a].conns.insert(b);
        self.nodes[b].conns.insert(a);
        self.at(self.now + setup_us, Ev::ConnUp { key: k, gen });
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

    fn conn_up(&mut self, k: Key, gen: u64) {
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

    fn punch(&mut self, k: Key, gen: u64, attempt: u32) {
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
            self.resolve(na, nb, Some(Path::Punched));
        } else if attempt < self.sc.nat.punch_attempts {
            let edge = self.nodes[dialer].access_us + self.nodes[listener].access_us;
            let rtt_relay = 2 * (edge + c.relay_extra_us);
            let rtt_direct = 2 * (edge + c.core_us);
            let next = rtt_relay + rtt_relay / 2 + rtt_direct;
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

    fn close_conn(&mut self, k: Key) {
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

    /// Moves `bytes` from `from` to `to` over their connection; returns the arrival time, or
    /// `None` if the packet is dropped (only unreliable media can be).
    fn transfer(&mut self, from: usize, to: usize, bytes: usize, media: bool) -> Option<u64> {
        let k = key(from, to);
        let (path, relay, oneway, dir) = {
            let c = self.conns.get(&k)?;
            let dir = usize::from(from != k.0);
            (c.path, c.relay, self.base_oneway_us(from, to, c), dir)
        };
        let reliable = !media || self.sc.network.media_transport == Transport::Reliable;
        let wire = u32::try_from(bytes).unwrap_or(u32::MAX) + self.sc.network.packet_overhead_bytes;
        if media {
            let limit = if reliable {
                self.sc.media.sender_queue_ms
            } else {
                self.sc.access.queue_ms
            };
            if self.nodes[from].up.backlog_us(self.now) as f64 > limit * MS as f64 {
                return None;
            }
        }
        let now = self.now;
        if now >= self.media_start && now < self.media_end {
            self.nodes[from].window_up_bytes += u64::from(wire);
        }
        let mut t = self.nodes[from].up.send(now, wire);
        let j1 = self.sc.access.jitter_ms.sample(&mut self.rng);
        let j2 = self.sc.access.jitter_ms.sample(&mut self.rng);
        t += oneway + ((j1 + j2) * MS as f64) as u64;
        if path == Path::Relayed {
            if let Some(r) = relay {
                t = t.max(self.relays[r].pipe.send(t, wire));
            }
        }
        let loss = self.sc.access.loss.clone();
        let mut lost = self.nodes[from].ge_up.lose(&loss, &mut self.rng)
            | self.nodes[to].ge_down.lose(&loss, &mut self.rng);
        if lost && !reliable {
            self.frames_lost_net += 1;
            return None;
        }
        // Reliable: the loss is detected after 9/8 RTT (QUIC's time threshold) and the
        // packet sent again, until it gets through.
        let rto = (2 * oneway * 9 / 8).max(MS);
        let mut tries = 0;
        while lost && tries < 16 {
            t += rto;
            tries += 1;
            lost = self.nodes[from].ge_up.lose(&loss, &mut self.rng)
                | self.nodes[to].ge_down.lose(&loss, &mut self.rng);
        }
        t = self.nodes[to].down.send(t, wire);
        if reliable {
            if let Some(c) = self.conns.get_mut(&k) {
                let lane = usize::from(media);
                t = t.max(c.last[dir][lane]);
                c.last[dir][lane] = t;
            }
        }
        Some(t)
    }

    // ----- the room -----

    /// Drains everything the room of `n` wants done, then re-arms its timer.
    fn drain(&mut self, n: usize) {
        loop {
            let Some(room) = self.nodes[n].state.as_mut() else {
                return;
            };
            if let Some(t) = room.poll_transmit() {
                let Some(&to) = self.by_peer.get(&t.peer) else {
                    continue;
                };
                let k = key(n, to);
                if self.conns.get(&k).is_some_and(|c| c.up) {
                    let session = self.nodes[to].session;
                    let size = t.frame.len() + 2;
                    if let Some(at) = self.transfer(n, to, size, false) {
                        self.at(
                            at,
                            Ev::Frame {
                                to,
                                from: n,
                                session,
                                frame: t.frame,
                                close: t.close,
                            },
                        );
                    }
                    if t.close {
                        self.close_conn(k);
                    }
                }
                continue;
            }
            if let Some(e) = room.poll_event() {
                self.room_event(n, e);
                continue;
            }
            if let Some((peer, f)) = room.poll_media() {
                if let Some(&from) = self.by_peer.get(&peer) {
                    self.push_frame(n, from, f);
                }
                continue;
            }
            break;
        }
        self.arm_timer(n);
    }

    fn arm_timer(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        let Some(room) = node.state.as_ref() else {
            return;
        };
        let Some(t) = room.poll_timeout() else {
            return;
        };
        let tick = self.sc.room.timer_tick_ms;
        let t = if tick > 0 { t.div_ceil(tick) * tick } else { t };
        let t = (t * MS).max(self.now + MS);
        if node.timer_at.is_some_and(|cur| cur <= t) {
            return;
        }
        node.timer_at = Some(t);
        let session = node.session;
        self.at(
            t,
            Ev::Timer {
                node: n,
                session,
                at: t,
            },
        );
    }

    fn room_event(&mut self, n: usize, e: Event) {
        match e {
            Event::Admitted { .. } => {
                let node = &mut self.nodes[n];
                if !node.admitted_once {
                    node.admitted_once = true;
                    self.join_to_admitted
                        .push((self.now - node.joined_at) as f64 / MS as f64);
                }
            }
            Event::Left { peer, .. } | Event::AdmissionFailed { peer, .. } => {
                if let Some(&p) = self.by_peer.get(&peer) {
                    self.finish_stream(n, p);
                    let k = key(n, p);
                    if self.conns.get(&k).is_some_and(|c| c.open) {
                        let oneway = self
                            .conns
                            .get(&k)
                            .map(|c| self.base_oneway_us(n, p, c))
                            .unwrap_or(0);
                        self.close_conn(k);
                        let session = self.nodes[p].session;
                        self.at(
                            self.now + oneway,
                            Ev::Disconnect {
                                to: p,
                                from: n,
                                session,
                            },
                        );
                    }
                }
            }
            Event::Dial(info) => {
                if let Some(&p) = self.by_peer.get(&info.peer_id) {
                    // Both ends learn about each other; the lower index dials.
                    if n < p && self.nodes[p].state.is_some() {
                        self.dial(n, p);
                    }
                }
            }
            Event::Rekeyed { fresh, .. } => {
                if fresh {
                    self.fresh_rotations += 1;
                } else {
                    self.ratchets += 1;
                }
            }
            Event::Recording { .. } => {}
        }
    }

    // ----- media -----

    fn tick(&mut self, n: usize, session: u32) {
        if self.nodes[n].session != session || !self.media_on || self.now >= self.media_end {
            return;
        }
        let now_ms = self.now_ms();
        let Some(room) = self.nodes[n].state.as_mut() else {
            return;
        };
        let members: Vec<Vec<u8>> = room.members().map(|(k, _, _)| k.clone()).collect();
        if !members.is_empty() {
            if let Ok(frame) = room.encrypt_media(now_ms, &self.payload, None) {
                let size = self.rooms[self.nodes[n].room].size;
                for peer in members {
                    let Some(&to) = self.by_peer.get(&peer) else {
                        continue;
                    };
                    if !self.conns.get(&key(n, to)).is_some_and(|c| c.up) {
                        continue;
                    }
                    let agg = self.sizes.entry(size).or_default();
                    agg.frames_sent += 1;
                    match self.transfer(n, to, frame.len() + 2, true) {
                        Some(at) => {
                            let session = self.nodes[to].session;
                            self.at(
                                at,
                                Ev::Media {
                                    to,
                                    from: n,
                                    session,
                                    bytes: frame.clone(),
                                },
                            );
                        }
                        None => {
                            if let Some(a) = self.sizes.get_mut(&size) {
                                a.frames_dropped += 1;
                            }
                        }
                    }
                }
            }
        }
        let next = self.now + u64::from(self.sc.media.frame_ms) * MS;
        self.at(next, Ev::Tick { node: n, session });
    }

    fn media_in(&mut self, to: usize, from: usize, session: u32, bytes: &[u8]) {
        if self.nodes[to].session != session || !self.media_on {
            return;
        }
        let now = self.now_ms();
        let peer = self.nodes[from].peer.clone();
        let Some(room) = self.nodes[to].state.as_mut() else {
            return;
        };
        if let Ok(Some(f)) = room.open_media(now, &peer, bytes) {
            self.push_frame(to, from, f);
        }
        self.drain(to);
    }

    fn push_frame(&mut self, n: usize, from: usize, f: OpenedFrame) {
        if !self.media_on {
            return;
        }
        let now_ms = self.now_ms();
        let node = &mut self.nodes[n];
        if !node.heard {
            node.heard = true;
            if node.joined_at >= self.media_start {
                self.join_to_audio
                    .push((self.now - node.joined_at) as f64 / MS as f64);
            }
        }
        let cfg = self.jitter_cfg.clone();
        let s = node.streams.entry(from).or_insert_with(|| Stream {
            jb: JitterBuffer::new(cfg),
            at: None,
        });
        s.jb.push(now_ms, f.header.seq, f.header.capture_ts_ms, f.payload);
        self.arm_playout(n, from);
    }

    fn arm_playout(&mut self, n: usize, from: usize) {
        let now = self.now;
        let Some(s) = self.nodes[n].streams.get_mut(&from) else {
            return;
        };
        let Some(t) = s.jb.poll_timeout() else {
            return;
        };
        let t = (t * MS).max(now);
        if s.at.is_some_and(|cur| cur <= t) {
            return;
        }
        s.at = Some(t);
        self.at(
            t,
            Ev::Playout {
                node: n,
                from,
                at: t,
            },
        );
    }

    fn playout(&mut self, n: usize, from: usize, at: u64) {
        let now_ms = self.now_ms();
        let size = self.rooms[self.nodes[n].room].size;
        let Some(s) = self.nodes[n].streams.get_mut(&from) else {
            return;
        };
        if s.at != Some(at) {
            return;
        }
        s.at = None;
        let agg = self.sizes.entry(size).or_default();
        while let Some(p) = s.jb.poll_playout(now_ms) {
            if let Playout::Frame { capture_ts_ms, .. } = p {
                agg.m2e.push(now_ms.saturating_sub(capture_ts_ms));
                self.frames_played_total += 1;
            }
        }
        self.arm_playout(n, from);
    }

    fn finish_stream(&mut self, n: usize, from: usize) {
        let size = self.rooms[self.nodes[n].room].size;
        let Some(s) = self.nodes[n].streams.remove(&from) else {
            return;
        };
        let st = s.jb.stats();
        let agg = self.sizes.entry(size).or_default();
        agg.streams += 1;
        agg.slots += st.slots();
        agg.missed += st.missed_slots();
        agg.played += st.frames_played;
        agg.concealed += st.frames_concealed;
        agg.late += st.frames_late;
        if st.slots() >= 50 {
            agg.mos.push(st.mos());
        }
    }

    fn finish_streams(&mut self, n: usize) {
        let froms: Vec<usize> = self.nodes[n].streams.keys().copied().collect();
        for f in froms {
            self.finish_stream(n, f);
        }
    }

    // ----- output -----

    fn counters_now(&self) -> RoomCounters {
        let mut c = RoomCounters::default();
        for n in &self.nodes {
            add_counters(&mut c, &n.acc);
            if let Some(r) = &n.state {
                add_counters(&mut c, r.counters());
            }
        }
        c
    }

    fn sample(&mut self) {
        let c = self.counters_now();
        let online = self.nodes.iter().filter(|n| n.state.is_some()).count() as u64;
        self.series.push(SeriesRow {
            t_s: round3(self.now as f64 / 1e6),
            online,
            conns_direct: self.open_by_path[0],
            conns_punched: self.open_by_path[1],
            conns_relayed: self.open_by_path[2],
            circuits: self.relays.iter().map(|r| u64::from(r.active)).sum(),
            admissions: c.admissions,
            sender_key_messages: c.sender_key_messages_sent,
            frames_played: self.frames_played_total,
            events: self.events,
        });
    }

    /// Stops the simulation and keeps only what was measured.
    fn into_raw(mut self) -> Raw {
        if self.media_on {
            for n in 0..self.nodes.len() {
                self.finish_streams(n);
            }
        }
        let window_s = (self.media_end.saturating_sub(self.media_start)) as f64 / 1e6;
        // Upload per participant: every node of a media room, over the media window.
        for r in &self.rooms {
            if !r.media {
                continue;
            }
            let agg = self.sizes.entry(r.size).or_default();
            agg.rooms += 1;
            for m in &r.members {
                if window_s > 0.0 {
                    agg.up_kbps
                        .push(self.nodes[*m].window_up_bytes as f64 * 8.0 / 1000.0 / window_s);
                }
            }
        }
        let mut census = BTreeMap::new();
        for n in &self.nodes {
            *census.entry(n.nat.to_string()).or_insert(0u64) += 1;
        }
        Raw {
            counters: self.counters_now(),
            name: self.sc.name.clone(),
            duration_s: self.sc.duration_s,
            media_enabled: self.sc.media.enabled,
            nodes: self.nodes.len() as u64,
            rooms: self.rooms.len() as u64,
            rooms_with_media: self.rooms.iter().filter(|r| r.media).count() as u64,
            events: self.events,
            census,
            conn_stats: self.conn_stats,
            setup_ms: self.setup_ms,
            first_try: self.first_try,
            pairs: self.pairs,
            relay_peaks: self.relays.iter().map(|r| r.peak).collect(),
            relayed_bytes: self.relays.iter().map(|r| r.pipe.bytes).sum(),
            circuits_opened: self.circuits_opened,
            circuits_refused: self.circuits_refused,
            joins: self.joins,
            leaves: self.leaves,
            fresh_rotations: self.fresh_rotations,
            ratchets: self.ratchets,
            join_to_admitted: self.join_to_admitted,
            join_to_audio: self.join_to_audio,
            sizes: self.sizes,
            frames_lost_net: self.frames_lost_net,
            series: self.series,
        }
    }
}

/// What a finished simulation (or one shard of it) measured, without its protocol state.
pub struct Raw {
    name: String,
    duration_s: f64,
    media_enabled: bool,
    nodes: u64,
    rooms: u64,
    rooms_with_media: u64,
    events: u64,
    counters: RoomCounters,
    census: BTreeMap<String, u64>,
    conn_stats: Connections,
    setup_ms: Vec<f64>,
    first_try: u64,
    pairs: BTreeMap<(NatKind, NatKind), PairAgg>,
    relay_peaks: Vec<u32>,
    relayed_bytes: u64,
    circuits_opened: u64,
    circuits_refused: u64,
    joins: u64,
    leaves: u64,
    fresh_rotations: u64,
    ratchets: u64,
    join_to_admitted: Vec<f64>,
    join_to_audio: Vec<f64>,
    sizes: BTreeMap<u32, SizeAgg>,
    frames_lost_net: u64,
    series: Vec<SeriesRow>,
}

impl Raw {
    /// Adds another shard's measurements (shards are merged in shard order).
    fn merge(&mut self, o: Raw) {
        self.nodes += o.nodes;
        self.rooms += o.rooms;
        self.rooms_with_media += o.rooms_with_media;
        self.events += o.events;
        add_counters(&mut self.counters, &o.counters);
        for (k, v) in o.census {
            *self.census.entry(k).or_insert(0) += v;
        }
        let (a, b) = (&mut self.conn_stats, &o.conn_stats);
        a.attempts += b.attempts;
        a.resolved += b.resolved;
        a.direct += b.direct;
        a.punched += b.punched;
        a.relayed += b.relayed;
        a.failed += b.failed;
        a.holepunch_runs += b.holepunch_runs;
        self.setup_ms.extend(o.setup_ms);
        self.first_try += o.first_try;
        for (k, v) in o.pairs {
            let p = self.pairs.entry(k).or_default();
            p.attempts += v.attempts;
            p.direct += v.direct;
            p.punched += v.punched;
            p.relayed += v.relayed;
            p.failed += v.failed;
        }
        self.relay_peaks.extend(o.relay_peaks);
        self.relayed_bytes += o.relayed_bytes;
        self.circuits_opened += o.circuits_opened;
        self.circuits_refused += o.circuits_refused;
        self.joins += o.joins;
        self.leaves += o.leaves;
        self.fresh_rotations += o.fresh_rotations;
        self.ratchets += o.ratchets;
        self.join_to_admitted.extend(o.join_to_admitted);
        self.join_to_audio.extend(o.join_to_audio);
        for (k, v) in o.sizes {
            let a = self.sizes.entry(k).or_default();
            a.rooms += v.rooms;
            a.streams += v.streams;
            a.m2e.extend(v.m2e);
            a.mos.extend(v.mos);
            a.frames_sent += v.frames_sent;
            a.frames_dropped += v.frames_dropped;
            a.slots += v.slots;
            a.missed += v.missed;
            a.played += v.played;
            a.concealed += v.concealed;
            a.late += v.late;
            a.up_kbps.extend(v.up_kbps);
        }
        self.frames_lost_net += o.frames_lost_net;
        for (i, r) in o.series.into_iter().enumerate() {
            match self.series.get_mut(i) {
                Some(m) => {
                    m.online += r.online;
                    m.conns_direct += r.conns_direct;
                    m.conns_punched += r.conns_punched;
                    m.conns_relayed += r.conns_relayed;
                    m.circuits += r.circuits;
                    m.admissions += r.admissions;
                    m.sender_key_messages += r.sender_key_messages;
                    m.frames_played += r.frames_played;
                    m.events += r.events;
                }
                None => self.series.push(r),
            }
        }
    }

    fn finish(mut self) -> RunOutput {
        let c = self.counters.clone();
        let cs = &mut self.conn_stats;
        cs.setup_ms = Pct::of(std::mem::take(&mut self.setup_ms));
        let punched = cs.punched;
        cs.holepunch_first_try_share =
            (punched > 0).then(|| round3(self.first_try as f64 / punched as f64));
        let has_nat = self
            .pairs
            .keys()
            .any(|(a, b)| !(a.reachable() || b.reachable()));
        let resolved = cs.resolved;
        let share = |x: u64| round3(x as f64 / resolved as f64);
        let paths = (resolved > 0).then(|| Paths {
            direct: share(cs.direct),
            punched: share(cs.punched),
            relayed: share(cs.relayed),
            failed: share(cs.failed),
        });
        let holepunch_success_rate = (has_nat && cs.holepunch_runs > 0)
            .then(|| round3(cs.punched as f64 / cs.holepunch_runs as f64));
        let nat_pairs = self
            .pairs
            .iter()
            .map(|((a, b), p)| {
                let runs = p.punched + p.relayed;
                NatPair {
                    dialer: a.to_string(),
                    listener: b.to_string(),
                    predicted: predict_path(*a, *b).to_string(),
                    attempts: p.attempts,
                    direct: p.direct,
                    punched: p.punched,
                    relayed: p.relayed,
                    failed: p.failed,
                    holepunch_success_rate: (!(a.reachable() || b.reachable()) && runs > 0)
                        .then(|| round3(p.punched as f64 / runs as f64)),
                }
            })
            .collect();
        let duration_s = self.duration_s;
        let nrelays = self.relay_peaks.len() as u32;
        let relays = RelayStats {
            count: nrelays,
            circuits_opened: self.circuits_opened,
            circuits_refused: self.circuits_refused,
            peak_circuits_max: self.relay_peaks.iter().copied().max().unwrap_or(0),
            peak_circuits: self.relay_peaks.clone(),
            relayed_mbytes: round3(self.relayed_bytes as f64 / 1e6),
            mean_kbps_per_relay: round3(
                self.relayed_bytes as f64 * 8.0 / 1000.0 / duration_s / f64::from(nrelays.max(1)),
            ),
        };
        let changes = self.joins + self.leaves;
        let room = RoomStats {
            joins: self.joins,
            leaves: self.leaves,
            handshakes_started: c.handshakes_started,
            admissions: c.admissions,
            admission_failures: c.admission_failures,
            departures: c.departures,
            sender_key_messages: c.sender_key_messages_sent,
            control_messages: c.control_messages_sent,
            media_decrypt_failures: c.media_decrypt_failures,
            media_unknown_epoch: c.media_unknown_epoch,
            pending_dropped: c.pending_dropped,
            fresh_rotations: self.fresh_rotations,
            ratchets: self.ratchets,
            rekey_messages_per_change: (changes > 0)
                .then(|| round3(c.sender_key_messages_sent as f64 / changes as f64)),
            join_to_admitted_ms: Pct::of(std::mem::take(&mut self.join_to_admitted)),
        };
        let media = self.media_enabled.then(|| self.media_stats());
        let summary = Summary {
            scenario: self.name.clone(),
            seed: 0,
            duration_s,
            nodes: self.nodes,
            rooms: self.rooms,
            events: self.events,
            holepunch_success_rate,
            paths,
            connections: self.conn_stats.clone(),
            nat_census: self.census.clone(),
            nat_pairs,
            relays,
            room,
            media,
        };
        RunOutput {
            summary,
            series: self.series,
            join_to_audio: self.join_to_audio,
        }
    }

    fn media_stats(&mut self) -> MediaStats {
        let mut all_m2e = Vec::new();
        let mut all_mos = Vec::new();
        let mut ms = MediaStats {
            rooms_with_media: self.rooms_with_media,
            frames_lost_in_network: self.frames_lost_net,
            join_to_first_audio_ms: Pct::of(self.join_to_audio.clone()),
            ..MediaStats::default()
        };
        let (mut slots, mut missed, mut up_sum, mut up_n) = (0u64, 0u64, 0.0, 0usize);
        for (size, a) in &self.sizes {
            let m2e = Pct::of(a.m2e.iter().map(|x| *x as f64).collect());
            let mos = Pct::of(a.mos.clone());
            let up = if a.up_kbps.is_empty() {
                0.0
            } else {
                a.up_kbps.iter().sum::<f64>() / a.up_kbps.len() as f64
            };
            ms.by_room_size.push(SizeRow {
                room_size: *size,
                rooms: a.rooms,
                streams: a.streams,
                upload_kbps_per_participant: round3(up),
                mouth_to_ear_p50_ms: m2e.p50,
                mouth_to_ear_p95_ms: m2e.p95,
                mos_mean: mos.mean,
                mos_min: a.mos.iter().copied().min_by(f64::total_cmp).map(round3),
                frames_sent: a.frames_sent,
                frames_played: a.played,
                frames_lost_ratio: if a.slots > 0 {
                    round3(a.missed as f64 / a.slots as f64)
                } else {
                    0.0
                },
                frames_dropped_at_sender: a.frames_dropped,
            });
            ms.streams += a.streams;
            ms.frames_sent += a.frames_sent;
            ms.frames_dropped_at_sender += a.frames_dropped;
            ms.frames_played += a.played;
            ms.frames_concealed += a.concealed;
            ms.frames_late += a.late;
            slots += a.slots;
            missed += a.missed;
            up_sum += a.up_kbps.iter().sum::<f64>();
            up_n += a.up_kbps.len();
            all_m2e.extend(a.m2e.iter().map(|x| *x as f64));
            all_mos.extend(a.mos.iter().copied());
        }
        ms.frames_lost_ratio = if slots > 0 {
            round3(missed as f64 / slots as f64)
        } else {
            0.0
        };
        let m2e = Pct::of(all_m2e);
        ms.mouth_to_ear_p50_ms = m2e.p50;
        ms.mouth_to_ear_p95_ms = m2e.p95;
        ms.mos_mean = Pct::of(all_mos).mean;
        ms.upload_kbps_per_participant = if up_n > 0 {
            round3(up_sum / up_n as f64)
        } else {
            0.0
        };
        ms
    }
}

fn add_counters(acc: &mut RoomCounters, c: &RoomCounters) {
    acc.handshakes_started += c.handshakes_started;
    acc.admissions += c.admissions;
    acc.admission_failures += c.admission_failures;
    acc.departures += c.departures;
    acc.sender_key_messages_sent += c.sender_key_messages_sent;
    acc.control_messages_sent += c.control_messages_sent;
    acc.media_decrypt_failures += c.media_decrypt_failures;
    acc.media_replays += c.media_replays;
    acc.media_unknown_epoch += c.media_unknown_epoch;
    acc.media_from_non_member += c.media_from_non_member;
    acc.pending_dropped += c.pending_dropped;
    acc.malformed_frames += c.malformed_frames;
}

/// Runs a scenario with `seed` (the scenario's own seed when `None`); with `shards > 1` the
/// shards run on their own threads and are merged in order (the result does not depend on
/// thread timing).
pub fn run(sc: &Scenario, seed: Option<u64>, progress: &mut dyn FnMut(u64, u64)) -> RunOutput {
    let seed = seed.unwrap_or(sc.seed);
    let shards = shard(sc, seed);
    let raw = match shards.split_first() {
        None => Sim::new(sc, seed).run_raw(progress),
        Some((first, rest)) => std::thread::scope(|s| {
            let handles: Vec<_> = rest
                .iter()
                .map(|(sc, sd)| s.spawn(move || Sim::new(sc, *sd).run_raw(&mut |_, _| {})))
                .collect();
            let mut raw = Sim::new(&first.0, first.1).run_raw(progress);
            for h in handles {
                match h.join() {
                    Ok(r) => raw.merge(r),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            raw
        }),
    };
    let mut out = raw.finish();
    out.summary.seed = seed;
    out
}

/// The per-shard scenarios and seeds (empty for one shard).
fn shard(sc: &Scenario, seed: u64) -> Vec<(Scenario, u64)> {
    let k = sc.shards.max(1);
    if k == 1 {
        return Vec::new();
    }
    let mut rng = SimRng::new(seed);
    let split = |total: u32, i: u32| total / k + u32::from(i < total % k);
    (0..k)
        .filter_map(|i| {
            let sub_seed = rng.u64();
            let mut s = sc.clone();
            s.shards = 1;
            s.relays.count = split(sc.relays.count, i).max(1);
            s.rooms = sc
                .rooms
                .iter()
                .map(|g| {
                    let mut g = g.clone();
                    g.count = split(g.count, i);
                    g
                })
                .filter(|g| g.count > 0)
                .collect();
            (!s.rooms.is_empty()).then_some((s, sub_seed))
        })
        .collect()
}
