//! The simulated world's parts: nodes, rooms, connections, relays, and the aggregates the
//! engine measures into.

use std::collections::{BTreeMap, BTreeSet};

use confab_protocol::crypto::Identity;
use confab_protocol::jitter::JitterBuffer;
use confab_protocol::room::{Room, RoomCounters};

use crate::link::{GeChannel, Pipe};
use crate::nat::{NatKind, Path};

/// One received media stream: its jitter buffer and its armed playout time.
pub(super) struct Stream {
    pub(super) jb: JitterBuffer,
    pub(super) at: Option<u64>,
}

/// One member: its access link, NAT, identity and, while it is in its room, the room's
/// state machine.
pub(super) struct Node {
    pub(super) room: usize,
    pub(super) nat: NatKind,
    pub(super) relay: usize,
    pub(super) access_us: u64,
    pub(super) up: Pipe,
    pub(super) down: Pipe,
    pub(super) ge_up: GeChannel,
    pub(super) ge_down: GeChannel,
    pub(super) identity: Identity,
    pub(super) peer: Vec<u8>,
    pub(super) state: Option<Room>,
    pub(super) session: u32,
    pub(super) timer_at: Option<u64>,
    pub(super) joined_at: u64,
    pub(super) admitted_once: bool,
    pub(super) heard: bool,
    pub(super) streams: BTreeMap<usize, Stream>,
    pub(super) conns: BTreeSet<usize>,
    pub(super) acc: RoomCounters,
    pub(super) window_up_bytes: u64,
}

/// One room: its members, who is online, its id and secret.
pub(super) struct RoomInfo {
    pub(super) size: u32,
    pub(super) members: Vec<usize>,
    pub(super) online: BTreeSet<usize>,
    pub(super) id: [u8; 16],
    pub(super) secret: [u8; 32],
    pub(super) media: bool,
    pub(super) churn: bool,
}

/// One transport connection between two nodes.
pub(super) struct Conn {
    pub(super) gen: u64,
    pub(super) dialer: usize,
    pub(super) path: Path,
    pub(super) up: bool,
    pub(super) open: bool,
    pub(super) relay: Option<usize>,
    pub(super) core_us: u64,
    pub(super) relay_extra_us: u64,
    /// Last arrival per direction and lane (control, media), for in-order reliable delivery.
    pub(super) last: [[u64; 2]; 2],
    pub(super) resolved: bool,
    pub(super) dialed_at: u64,
}

/// One relay: its extra latency, its bandwidth and its circuits.
pub(super) struct Relay {
    pub(super) extra_us: u64,
    pub(super) pipe: Pipe,
    pub(super) active: u32,
    pub(super) peak: u32,
}

/// Media measurements of every room of one size.
#[derive(Default)]
pub(super) struct SizeAgg {
    pub(super) rooms: u64,
    pub(super) streams: u64,
    /// Mouth-to-ear of every played frame, ms: the playout time of its samples minus their
    /// capture time (framing, look-ahead, network, jitter buffer).
    pub(super) m2e: Vec<f64>,
    pub(super) mos: Vec<f64>,
    pub(super) frames_sent: u64,
    pub(super) frames_dropped: u64,
    pub(super) slots: u64,
    pub(super) missed: u64,
    pub(super) played: u64,
    pub(super) concealed: u64,
    pub(super) late: u64,
    pub(super) up_kbps: Vec<f64>,
}

impl SizeAgg {
    /// Adds another shard's aggregate for the same room size.
    pub(super) fn merge(&mut self, v: SizeAgg) {
        self.rooms += v.rooms;
        self.streams += v.streams;
        self.m2e.extend(v.m2e);
        self.mos.extend(v.mos);
        self.frames_sent += v.frames_sent;
        self.frames_dropped += v.frames_dropped;
        self.slots += v.slots;
        self.missed += v.missed;
        self.played += v.played;
        self.concealed += v.concealed;
        self.late += v.late;
        self.up_kbps.extend(v.up_kbps);
    }
}

/// Connection outcomes of one (dialer NAT, listener NAT) pair.
#[derive(Default)]
pub(super) struct PairAgg {
    pub(super) attempts: u64,
    pub(super) direct: u64,
    pub(super) punched: u64,
    pub(super) relayed: u64,
    pub(super) failed: u64,
}

impl PairAgg {
    /// Adds another shard's outcomes for the same pair.
    pub(super) fn merge(&mut self, v: &PairAgg) {
        self.attempts += v.attempts;
        self.direct += v.direct;
        self.punched += v.punched;
        self.relayed += v.relayed;
        self.failed += v.failed;
    }
}
