//! The call's video: what the page encoded goes out sealed to every member, what members
//! send comes back opened, in order and decodable, to the page.
//!
//! The node has no video codec: the page encodes and decodes (WebCodecs). Video never
//! touches the audio path: its own stream protocol and per-peer queues
//! ([`crate::net::video`]), its own inbound queue, its own keys (derived from the audio's
//! sender keys, see [`confab_protocol::video::seal`]). Policy is sans-IO in
//! [`confab_protocol::video`]: reassembly, ordering, congestion, keyframe limits.
//!
//! * [`send`] — sealing our frames and queueing them per peer (thinned per peer when its
//!   queue overflows).
//! * [`receive`] — fragments in, frames out to the page, keyframe requests back.

pub mod receive;
pub mod send;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use confab_protocol::video::congestion::{KeyframeLimiter, PeerCongestion};
use confab_protocol::video::order::Orderer;
use confab_protocol::video::reassembly::{Limits, Reassembly, ReassemblyCounters};
use confab_protocol::video::seal::ReplayGuard;
use confab_protocol::video::{FrameMeta, TrackKind};
use libp2p::PeerId;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::net::video::VideoQueue;
use crate::net::Net;

/// Frames from the page waiting for the call.
pub const FROM_PAGE_QUEUE: usize = 16;
/// How often the shared statistics are brought up to date, ms.
const PUBLISH_EVERY_MS: u64 = 250;

/// One frame the page encoded.
#[derive(Debug, Clone)]
pub struct LocalFrame {
    pub kind: TrackKind,
    pub keyframe: bool,
    pub layer: u8,
    pub width: u16,
    pub height: u16,
    /// When the page captured it, µs since the Unix epoch.
    pub capture_us: u64,
    pub data: Vec<u8>,
}

/// One frame of a member, opened, in order and decodable.
#[derive(Debug, Clone)]
pub struct RemoteFrame {
    pub from: PeerId,
    pub kind: TrackKind,
    pub seq: u32,
    pub meta: FrameMeta,
    pub data: Vec<u8>,
}

/// Where received video goes (the page), and who is told when a keyframe is wanted.
pub trait VideoSink: Send {
    fn frame(&mut self, f: RemoteFrame);
    /// Our `kind` track should send a keyframe next.
    fn keyframe_wanted(&mut self, kind: TrackKind);
}

/// What a call's video is connected to.
pub struct VideoPorts {
    pub from_page: mpsc::Receiver<LocalFrame>,
    pub sink: Box<dyn VideoSink>,
    pub stats: Arc<Mutex<VideoStats>>,
}

/// What went to one peer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerSent {
    pub frames: u64,
    pub bytes: u64,
    /// Whole frames that did not fit the queue toward the peer.
    pub dropped: u64,
    /// Frames of upper temporal layers left out while the peer was congested.
    pub thinned: u64,
    /// Its congestion level now (0: everything goes).
    pub level: u8,
}

/// What came from one member, per track.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerReceived {
    pub frames: u64,
    pub bytes: u64,
    pub missing: u64,
    pub undecodable: u64,
    pub late: u64,
    pub keyframe_requests: u64,
}

/// The call's video counters, shared with whoever shows them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VideoStats {
    pub frames_from_page: u64,
    pub frames_sealed: u64,
    pub bytes_sealed: u64,
    pub seal_errors: u64,
    pub sent: BTreeMap<String, PeerSent>,
    /// Keyed `peer/track`.
    pub received: BTreeMap<String, PeerReceived>,
    pub reassembly: ReassemblyCounters,
    pub malformed: u64,
    pub unknown_epoch: u64,
    pub decrypt_failures: u64,
    pub replays: u64,
    pub keyframe_requests_in: u64,
    pub keyframes_asked_of_page: u64,
}

/// Our sending state of one track.
#[derive(Default)]
struct TrackOut {
    next_seq: u32,
    last_base: Option<u32>,
    limiter: KeyframeLimiter,
}

struct PeerOut {
    queue: Arc<VideoQueue>,
    congestion: PeerCongestion,
}

/// The video side of a running call.
pub struct VideoCall {
    from_page: Option<mpsc::Receiver<LocalFrame>>,
    sink: Option<Box<dyn VideoSink>>,
    shared: Option<Arc<Mutex<VideoStats>>>,
    tracks: BTreeMap<TrackKind, TrackOut>,
    peers: HashMap<PeerId, PeerOut>,
    reassembly: Reassembly<PeerId>,
    remote: BTreeMap<(PeerId, TrackKind), Orderer>,
    replay: HashMap<PeerId, ReplayGuard>,
    stats: VideoStats,
    next_publish: u64,
}

impl Default for VideoCall {
    fn default() -> Self {
        Self {
            from_page: None,
            sink: None,
            shared: None,
            tracks: BTreeMap::new(),
            peers: HashMap::new(),
            reassembly: Reassembly::new(Limits::default()),
            remote: BTreeMap::new(),
            replay: HashMap::new(),
            stats: VideoStats::default(),
            next_publish: 0,
        }
    }
}

impl VideoCall {
    /// Connects the page (replacing an earlier one).
    pub fn attach(&mut self, ports: VideoPorts) {
        self.from_page = Some(ports.from_page);
        self.sink = Some(ports.sink);
        self.shared = Some(ports.stats);
        for t in self.tracks.values_mut() {
            t.limiter.request();
        }
    }

    /// The page's frames, while a page is attached.
    pub fn from_page(&mut self) -> Option<&mut mpsc::Receiver<LocalFrame>> {
        self.from_page.as_mut()
    }

    /// The page is gone (its queue closed).
    pub fn page_gone(&mut self) {
        self.from_page = None;
    }

    /// A member was admitted: start its queue, and send it keyframes of our tracks.
    pub fn add_peer(&mut self, net: &Net, peer: PeerId) {
        if let Some(old) = self.peers.remove(&peer) {
            old.queue.close();
        }
        self.peers.insert(
            peer,
            PeerOut {
                queue: net.start_video_sender(peer),
                congestion: PeerCongestion::default(),
            },
        );
        for t in self.tracks.values_mut() {
            t.limiter.request();
        }
    }

    /// A member left: its queue closes, what it sent is forgotten.
    pub fn remove_peer(&mut self, peer: &PeerId) {
        if let Some(p) = self.peers.remove(peer) {
            p.queue.close();
        }
        self.reassembly.forget(peer);
        self.remote.retain(|(p, _), _| p != peer);
        self.replay.remove(peer);
    }

    /// We stop sending (leaving): every queue finishes and closes.
    pub fn stop_sending(&mut self) {
        for p in self.peers.values() {
            p.queue.close();
        }
        self.peers.clear();
        self.from_page = None;
    }

    /// Hands on what is due at `now_ms`: frames, keyframe requests both ways, statistics.
    pub fn on_tick(&mut self, now_ms: u64) {
        self.drain_remote(now_ms);
        self.reassembly.expire(now_ms);
        for (kind, t) in self.tracks.iter_mut() {
            if t.limiter.poll(now_ms) {
                self.stats.keyframes_asked_of_page += 1;
                if let Some(s) = self.sink.as_mut() {
                    s.keyframe_wanted(*kind);
                }
            }
        }
        if now_ms >= self.next_publish {
            self.next_publish = now_ms + PUBLISH_EVERY_MS;
            self.publish();
        }
    }

    /// The earliest time, ms, at which [`VideoCall::on_tick`] has something to do.
    pub fn poll_timeout(&self) -> Option<u64> {
        let orders = self.remote.values().filter_map(Orderer::poll_timeout);
        let limits = self
            .tracks
            .values()
            .filter_map(|t| t.limiter.poll_timeout());
        orders.chain(limits).min()
    }

    fn publish(&mut self) {
        self.stats.reassembly = self.reassembly.counters;
        for (pid, p) in &self.peers {
            let s = self.stats.sent.entry(pid.to_string()).or_default();
            s.thinned = p.congestion.thinned;
            s.level = p.congestion.level();
        }
        for ((pid, kind), o) in &self.remote {
            let r = self
                .stats
                .received
                .entry(format!("{pid}/{}", kind.name()))
                .or_default();
            r.missing = o.counters.missing;
            r.undecodable = o.counters.undecodable;
            r.late = o.counters.late;
            r.keyframe_requests = o.counters.keyframe_requests;
        }
        if let Some(shared) = &self.shared {
            if let Ok(mut g) = shared.lock() {
                *g = self.stats.clone();
            }
        }
    }
}
