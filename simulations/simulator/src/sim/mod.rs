//! The discrete-event engine.
//!
//! Virtual time is in microseconds (the protocol sees milliseconds). Events sit in a binary
//! heap ordered by (time, insertion counter), so ties resolve in insertion order. Every
//! random draw comes from one [`SimRng`] in the order the events are processed, every map is
//! a `BTreeMap`, and nothing reads a clock: the same scenario and seed replay the same run.
//!
//! The engine is one [`Sim`] whose methods are spread over this folder by what they do:
//!
//! * `events` — the event queue, the main loop and the dispatch of each event;
//! * `population` — building nodes, rooms and relays from the scenario;
//! * `membership` — members joining and leaving their room;
//! * `connect` — dialing, relay circuits and DCUtR-style hole punching;
//! * `transfer` — moving bytes over links, relays and retransmissions;
//! * `room` — driving each member's [`Room`](confab_protocol::room::Room) state machine;
//! * `media` — frame ticks, jitter buffers and playout;
//! * `sample` — the time series and the protocol's counters;
//! * `raw` — what a finished run measured, and merging shards;
//! * `finish` — turning the measurements into the report's [`Summary`](crate::report::Summary);
//! * `shard` — [`run`]: splitting a scenario into shards run on their own threads.

use std::collections::{BTreeMap, BinaryHeap};

use confab_protocol::jitter::JitterConfig;
use confab_protocol::wire::MediaFormat;

use crate::nat::{NatKind, Path};
use crate::report::{Connections, SeriesRow};
use crate::rng::SimRng;
use crate::scenario::Scenario;

mod connect;
mod events;
mod finish;
mod media;
mod membership;
mod population;
mod raw;
mod room;
mod sample;
mod shard;
mod state;
mod transfer;

pub use raw::Raw;
pub use shard::run;

use events::Entry;
use state::{Conn, Node, PairAgg, Relay, RoomInfo, SizeAgg};

/// Microseconds per millisecond.
const MS: u64 = 1_000;

/// A connection's key: the two node indices, lower first.
type Key = (usize, usize);

fn key(a: usize, b: usize) -> Key {
    (a.min(b), a.max(b))
}

fn path_idx(p: Path) -> usize {
    match p {
        Path::Direct => 0,
        Path::Punched => 1,
        Path::Relayed => 2,
    }
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

impl Sim {
    fn now_ms(&self) -> u64 {
        self.now / MS
    }

    /// The frame duration and look-ahead the members' media frames declare.
    fn media_format(&self) -> MediaFormat {
        MediaFormat {
            frame_ms: u8::try_from(self.sc.media.frame_ms).unwrap_or(20),
            lookahead_us: u16::try_from(self.jitter_cfg.lookahead_us).unwrap_or(6_500),
        }
    }
}
