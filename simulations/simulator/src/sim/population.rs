//! Building the simulated world from a scenario: relays, rooms and their members, and the
//! first events.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use confab_protocol::crypto::Identity;
use confab_protocol::jitter::JitterConfig;
use confab_protocol::room::RoomCounters;

use crate::link::{GeChannel, Pipe};
use crate::nat::{punch_succeeds, NatKind};
use crate::report::Connections;
use crate::rng::SimRng;
use crate::scenario::{RoomGroup, Scenario};

use super::events::Ev;
use super::state::{Node, Relay, RoomInfo};
use super::{Sim, MS};

/// Nodes and rooms as drawn, with each node's join time.
#[derive(Default)]
struct Population {
    nodes: Vec<Node>,
    rooms: Vec<RoomInfo>,
    by_peer: BTreeMap<Vec<u8>, usize>,
    joins: Vec<(u64, usize)>,
}

impl Sim {
    /// Builds the population from the scenario; `seed` replaces the scenario's seed.
    pub fn new(sc: &Scenario, seed: u64) -> Sim {
        let mut rng = SimRng::new(seed);
        let sc = sc.clone();
        let relays = new_relays(&sc, &mut rng);
        let pop = populate(&sc, &mut rng);
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
            lookahead_us: (sc.media.lookahead_ms * 1e3).round() as u32,
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
            nodes: pop.nodes,
            rooms: pop.rooms,
            conns: BTreeMap::new(),
            relays,
            by_peer: pop.by_peer,
            punch_table: punch_table(),
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
        for (t, n) in pop.joins {
            sim.at(t, Ev::Join(n));
        }
        if sim.sc.media.enabled {
            sim.at(sim.media_end, Ev::MediaEnd);
        }
        sim.at(0, Ev::Sample);
        sim
    }
}

fn new_relays(sc: &Scenario, rng: &mut SimRng) -> Vec<Relay> {
    (0..sc.relays.count)
        .map(|_| Relay {
            extra_us: (sc.relays.latency_ms.sample(rng) * MS as f64) as u64,
            pipe: Pipe::new(sc.relays.bandwidth_kbps),
            active: 0,
            peak: 0,
        })
        .collect()
}

/// Whether a hole punch between each pair of NAT kinds can succeed.
fn punch_table() -> BTreeMap<(NatKind, NatKind), bool> {
    let mut t = BTreeMap::new();
    for a in NatKind::all() {
        for b in NatKind::all() {
            t.insert((a, b), punch_succeeds(a, b));
        }
    }
    t
}

/// Every room of every group, in order, with its members.
fn populate(sc: &Scenario, rng: &mut SimRng) -> Population {
    let mix = sc.nat_mix();
    let weights: Vec<f64> = mix.iter().map(|m| m.1).collect();
    let mut pop = Population::default();
    for g in &sc.rooms {
        for _ in 0..g.count {
            let r = pop.rooms.len();
            let mut info = new_room_info(sc, g, rng);
            for _ in 0..g.size {
                let idx = pop.nodes.len();
                let nat = mix[rng.weighted(&weights)].0;
                let node = new_node(sc, r, nat, rng);
                pop.by_peer.insert(node.peer.clone(), idx);
                pop.nodes.push(node);
                info.members.push(idx);
                let t = g.start_s + g.join_spread_s * rng.f64();
                pop.joins.push(((t * 1e6) as u64, idx));
            }
            pop.rooms.push(info);
        }
    }
    pop
}

/// One room of group `g`: its id, whether it sends media and churns, its secret.
fn new_room_info(sc: &Scenario, g: &RoomGroup, rng: &mut SimRng) -> RoomInfo {
    let mut id = [0u8; 16];
    id.copy_from_slice(&rng.seed32()[..16]);
    let media = sc.media.enabled && rng.chance(sc.media.rooms_share);
    let churn = sc.churn.as_ref().is_some_and(|c| rng.chance(c.rooms_share));
    RoomInfo {
        size: g.size,
        members: Vec::new(),
        online: BTreeSet::new(),
        id,
        secret: rng.seed32(),
        media,
        churn,
    }
}

/// One member of room `r` behind `nat`: identity, access link, relay.
fn new_node(sc: &Scenario, r: usize, nat: NatKind, rng: &mut SimRng) -> Node {
    let identity = Identity::generate(rng.inner());
    let peer = identity.peer_id();
    let up = sc.access.uplink_kbps.sample(rng).max(8.0);
    let down = sc.access.downlink_kbps.sample(rng).max(8.0);
    Node {
        room: r,
        nat,
        relay: rng.below(u64::from(sc.relays.count)) as usize,
        access_us: (sc.access.latency_ms.sample(rng) * MS as f64) as u64,
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
    }
}
