//! A call: the event loop that joins a room and moves audio.
//!
//! One tokio task owns the swarm, the [`Room`] state machine, the Opus codecs and the jitter
//! buffers, and reacts to four things: swarm events, frames from stream tasks, the 20 ms
//! capture clock, and the next playout or room deadline. Per stream there is one small task
//! that only reads or writes bytes. Every queue is bounded: media toward a peer holds at
//! most [`MEDIA_QUEUE_FRAMES`] frames (100 ms) and drops the oldest beyond that.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use confab_protocol::crypto::Identity;
use confab_protocol::jitter::{JitterBuffer, JitterConfig, Playout};
use confab_protocol::room::{AdmissionFailure, Event, LeaveReason, Room, RoomConfig};
use confab_protocol::ticket::Ticket;
use confab_protocol::wire::{length_prefixed, RejectReason, MAX_MEDIA_FRAME, MAX_ROOM_FRAME};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{rendezvous, Multiaddr, PeerId, Stream};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, warn};

use crate::audio::{self, FrameSource};
use crate::codec::{self, Decoder, Encoder, EncoderConfig, FRAME_SAMPLES};
use crate::net::{self, BehaviourEvent, MEDIA_PROTOCOL, ROOM_PROTOCOL};
use crate::relays::{self, Relays};

/// Most media frames queued toward one peer (100 ms at 20 ms frames).
pub const MEDIA_QUEUE_FRAMES: usize = 5;
/// Tracing target of one debug line per media frame sent or received (size and time, as
/// a network observer would see them): `RUST_LOG=confab::wire=debug`.
pub const WIRE_TARGET: &str = "confab::wire";
/// Plaintext size every media frame is padded to in constant-bitrate mode.
pub const CBR_PAD: usize = 160;
/// How long to wait for the first member before giving up.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(20);
/// After our own sending ends, how long we keep listening for the others to finish.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// Bound on inbound frames queued from stream tasks to the call loop.
const INBOUND_QUEUE: usize = 2048;
/// Most audio kept for output files, per sender (30 minutes).
const MAX_OUTPUT_SAMPLES: usize = 30 * 60 * 48_000;
/// How long we keep redialing a member whose connection broke (e.g. its relay restarted).
const RECONNECT_FOR: Duration = Duration::from_secs(30);
/// Without anyone admitted after this long, ask the relays' rendezvous for the room's members.
const DISCOVER_AFTER: Duration = Duration::from_secs(3);
/// After a direct connection to a relayed member appears (hole punch), how long the circuit
/// is kept before closing it, so that both ends know the direct connection first.
const CIRCUIT_GRACE: Duration = Duration::from_millis(500);
/// Ids of inbound media streams, so the end of an old stream is not taken for the end of a
/// newer one from the same sender.
static MEDIA_STREAM_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Where the audio we send comes from.
#[derive(Debug, Clone)]
pub enum Input {
    /// A WAV file (looped).
    Wav(PathBuf),
    /// A pure tone.
    Tone(f64),
    /// The speech-like test signal of the given index.
    Signal(usize),
}

#[derive(Debug, Clone)]
pub struct CallOptions {
    pub ticket: Ticket,
    pub identity: [u8; 32],
    pub name: String,
    pub listen: Vec<Multiaddr>,
    pub input: Input,
    /// Mix of everything heard, as a WAV file.
    pub output: Option<PathBuf>,
    /// One WAV file per sender (`<peer id>.wav`).
    pub output_dir: Option<PathBuf>,
    /// How long to send; `None` until Ctrl-C.
    pub duration: Option<Duration>,
    /// Constant bitrate, no DTX, padded frames.
    pub cbr: bool,
    /// Community relays (`…/p2p/<relay id>`): reserve a slot on each and announce the
    /// circuit addresses.
    pub relays: Vec<Multiaddr>,
    /// Dial and announce only circuit addresses (tests: a call that starts relayed).
    pub relay_only: bool,
    /// Try DCUtR hole punches over relayed connections (tests turn it off to stay relayed
    /// on loopback).
    pub hole_punch: bool,
    /// Append each encoded Opus packet (2-byte big-endian length + packet) to this file.
    pub dump_opus: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("admission refused by {peer}: {reason}")]
    Refused { peer: String, reason: String },
    #[error("could not reach any member of the room within {0:?}")]
    Unreachable(Duration),
    #[error("relay: {0}")]
    Relay(String),
    #[error(transparent)]
    Net(#[from] net::NetError),
    #[error(transparent)]
    Audio(#[from] audio::AudioError),
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
    #[error("{0}")]
    Other(String),
}

impl CallError {
    /// Exit code: 2 for refusals (bad input), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            CallError::Refused { .. } => 2,
            _ => 1,
        }
    }
}

/// What one receiver measured about one sender.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReceivedStream {
    pub from: String,
    pub name: String,
    pub path: String,
    pub frames_received: u64,
    pub frames_lost: u64,
    pub frames_late: u64,
    pub frames_concealed: u64,
    pub frames_played: u64,
    pub mouth_to_ear_p50_ms: Option<f64>,
    pub mouth_to_ear_p95_ms: Option<f64>,
    pub jitter_ms: f64,
    pub mos: f64,
    /// Sequence number of the first frame in the output file.
    pub first_seq: Option<u32>,
    pub output: Option<String>,
    pub recording: bool,
}

/// What we sent to one receiver.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SentStream {
    pub frames_sent: u64,
    pub frames_dropped: u64,
}

/// A membership change seen during the call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RosterEvent {
    pub at_ms: u64,
    pub peer: String,
    pub kind: String,
    pub detail: String,
}

/// The result of a call, printed by `confab call --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallReport {
    pub peer_id: String,
    pub name: String,
    pub room: String,
    pub started_ms: u64,
    pub ended_ms: u64,
    pub frames_captured: u64,
    pub sent: BTreeMap<String, SentStream>,
    pub received: Vec<ReceivedStream>,
    pub roster: Vec<RosterEvent>,
    pub admission_failures: u64,
    pub cpu_seconds: f64,
    pub max_rss_kb: u64,
}

/// Wall-clock milliseconds since the Unix epoch: the media clock shared by all nodes of a
/// host (mouth-to-ear figures are exact on one host, offset by clock skew across hosts).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A bounded queue that drops the oldest frame when full.
struct MediaQueue {
    inner: Mutex<(VecDeque<Vec<u8>>, bool)>,
    notify: Notify,
}

impl MediaQueue {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new((VecDeque::with_capacity(MEDIA_QUEUE_FRAMES), false)),
            notify: Notify::new(),
        })
    }

    /// Queues a frame; returns true if an older frame had to be dropped.
    fn push(&self, frame: Vec<u8>) -> bool {
        let mut dropped = false;
        if let Ok(mut g) = self.inner.lock() {
            if g.1 {
                return false;
            }
            if g.0.len() >= MEDIA_QUEUE_FRAMES {
                g.0.pop_front();
                dropped = true;
            }
            g.0.push_back(frame);
        }
        self.notify.notify_one();
        dropped
    }

    fn close(&self) {
        if let Ok(mut g) = self.inner.lock() {
            g.1 = true;
        }
        self.notify.notify_one();
    }

    /// The next frame, or None once closed and empty.
    async fn pop(&self) -> Option<Vec<u8>> {
        loop {
            if let Ok(mut g) = self.inner.lock() {
                if let Some(f) = g.0.pop_front() {
                    return Some(f);
                }
                if g.1 {
                    return None;
                }
            } else {
                return None;
            }
            self.notify.notified().await;
        }
    }
}

enum Inbound {
    RoomStream {
        peer: PeerId,
        stream: Stream,
        initiator: bool,
    },
    RoomFrame {
        peer: PeerId,
        stream_id: u64,
        bytes: Vec<u8>,
    },
    RoomClosed {
        peer: PeerId,
        stream_id: u64,
    },
    Media {
        peer: PeerId,
        stream_id: u64,
        bytes: Vec<u8>,
        at_ms: u64,
    },
    MediaEnd {
        peer: PeerId,
        stream_id: u64,
    },
    OpenFailed {
        peer: PeerId,
        reason: String,
    },
}

struct RemoteSender {
    name: String,
    jitter: JitterBuffer,
    decoder: Decoder,
    first_seq: Option<u32>,
    audio: Vec<i16>,
    media_ended: bool,
    recording: bool,
    first_capture_ms: Option<u64>,
    /// The newest inbound media stream seen from this sender.
    media_stream: u64,
}

/// Sends (frame, close-after) to a room stream's writer task.
type RoomWriter = mpsc::Sender<(Vec<u8>, bool)>;

#[derive(Default)]
struct PeerCtx {
    room_stream: Option<(u64, RoomWriter)>,
    media_out: Option<Arc<MediaQueue>>,
    remote: Option<RemoteSender>,
    relayed: bool,
    punched: bool,
    member: bool,
    /// A room stream is being opened by us.
    opening: bool,
    /// Room streams reopened after a handshake broke off.
    room_retries: u32,
    /// Open connections to this peer, and whether each goes through a relay circuit.
    conns: HashMap<ConnectionId, bool>,
    /// The session is moving from a closed circuit to the direct connection: the next
    /// departure and admission are not reported as a member leaving and joining.
    migrating: bool,
    /// When to close the relayed connections, now that a direct one exists.
    close_relayed_at: Option<tokio::time::Instant>,
    /// The room stream broke while the peer is still connected: decide at this time (once
    /// the swarm's connection events have caught up) whether the session is moving to a
    /// direct connection or the member is gone.
    broken_at: Option<tokio::time::Instant>,
}

impl PeerCtx {
    fn has_relayed(&self) -> bool {
        self.conns.values().any(|r| *r)
    }
    fn has_direct(&self) -> bool {
        self.conns.values().any(|r| !*r)
    }
}

/// Reads 2-byte length-prefixed frames of at most `limit` bytes.
async fn read_frame(
    stream: &mut (impl futures::AsyncRead + Unpin),
    limit: usize,
) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.ok()?;
    let len = usize::from(u16::from_be_bytes(len));
    if len > limit {
        return None;
    }
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await.ok()?;
    Some(buf)
}

fn spawn_room_stream(
    peer: PeerId,
    stream: Stream,
    stream_id: u64,
    inbound: mpsc::Sender<Inbound>,
) -> mpsc::Sender<(Vec<u8>, bool)> {
    let (mut reader, mut writer) = stream.split();
    let (tx, mut rx) = mpsc::channel::<(Vec<u8>, bool)>(64);
    let inbound_r = inbound.clone();
    tokio::spawn(async move {
        while let Some(bytes) = read_frame(&mut reader, MAX_ROOM_FRAME).await {
            if inbound_r
                .send(Inbound::RoomFrame {
                    peer,
                    stream_id,
                    bytes,
                })
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = inbound_r
            .send(Inbound::RoomClosed { peer, stream_id })
            .await;
    });
    tokio::spawn(async move {
        while let Some((frame, close)) = rx.recv().await {
            let Ok(bytes) = length_prefixed(&frame) else {
                continue;
            };
            let write = async {
                writer.write_all(&bytes).await?;
                writer.flush().await
            };
            if tokio::time::timeout(Duration::from_secs(5), write)
                .await
                .map_or(true, |r| r.is_err())
            {
                break;
            }
            if close {
                break;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), writer.close()).await;
    });
    tx
}

/// Sends queued media to `peer`, reopening the stream if it breaks (an inbound stream can be
/// dropped by the remote when several arrive at once), at most a few times.
fn spawn_media_sender(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    queue: Arc<MediaQueue>,
    inbound: mpsc::Sender<Inbound>,
) {
    tokio::spawn(async move {
        let mut attempts = 0;
        let mut last_error = String::new();
        'open: while attempts < 5 {
            attempts += 1;
            let open = tokio::time::timeout(
                Duration::from_secs(10),
                control.open_stream(peer, MEDIA_PROTOCOL),
            )
            .await;
            let mut stream = match open {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    last_error = e.to_string();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(_) => {
                    last_error = "timed out opening the media stream".into();
                    continue;
                }
            };
            while let Some(frame) = queue.pop().await {
                let Ok(bytes) = length_prefixed(&frame) else {
                    continue;
                };
                // What an observer of the wire sees: the size (the u16 prefix) and the time.
                debug!(target: WIRE_TARGET, %peer, len = frame.len(), at_ms = now_ms(), "media frame sent");
                let write = async {
                    stream.write_all(&bytes).await?;
                    stream.flush().await
                };
                if tokio::time::timeout(Duration::from_secs(2), write)
                    .await
                    .map_or(true, |r| r.is_err())
                {
                    debug!(%peer, "media stream broke; reopening it");
                    last_error = "media stream broke".into();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'open;
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.close()).await;
            return;
        }
        let _ = inbound
            .send(Inbound::OpenFailed {
                peer,
                reason: last_error,
            })
            .await;
    });
}

/// Takes inbound streams off libp2p-stream's accept channels as fast as they come (those
/// channels hold one stream; a second one arriving before the first is taken is dropped).
fn spawn_acceptors(
    mut room_incoming: libp2p_stream::IncomingStreams,
    mut media_incoming: libp2p_stream::IncomingStreams,
    inbound: mpsc::Sender<Inbound>,
) {
    let tx = inbound.clone();
    tokio::spawn(async move {
        while let Some((peer, stream)) = room_incoming.next().await {
            let msg = Inbound::RoomStream {
                peer,
                stream,
                initiator: false,
            };
            if tx.send(msg).await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        let active: Arc<Mutex<HashMap<PeerId, usize>>> = Arc::default();
        while let Some((peer, stream)) = media_incoming.next().await {
            match StreamSlot::take(&active, peer) {
                Some(slot) => spawn_media_receiver(peer, stream, inbound.clone(), slot),
                None => debug!(%peer, "too many media streams from one peer; dropping one"),
            }
        }
    });
}

/// Most inbound media streams one peer may hold open at once (one in use, the rest while a
/// broken one is being replaced); beyond that new ones are dropped.
const MAX_MEDIA_STREAMS_PER_PEER: usize = 4;

/// One of a peer's inbound media stream slots; released on drop.
struct StreamSlot {
    active: Arc<Mutex<HashMap<PeerId, usize>>>,
    peer: PeerId,
}

impl StreamSlot {
    fn take(active: &Arc<Mutex<HashMap<PeerId, usize>>>, peer: PeerId) -> Option<Self> {
        let mut map = active.lock().ok()?;
        let n = map.entry(peer).or_insert(0);
        if *n >= MAX_MEDIA_STREAMS_PER_PEER {
            return None;
        }
        *n += 1;
        Some(Self {
            active: active.clone(),
            peer,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.active.lock() {
            if let Some(n) = map.get_mut(&self.peer) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&self.peer);
                }
            }
        }
    }
}

fn spawn_media_receiver(
    peer: PeerId,
    mut stream: Stream,
    inbound: mpsc::Sender<Inbound>,
    slot: StreamSlot,
) {
    let stream_id = MEDIA_STREAM_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tokio::spawn(async move {
        let _slot = slot;
        while let Some(bytes) = read_frame(&mut stream, MAX_MEDIA_FRAME).await {
            debug!(target: WIRE_TARGET, %peer, len = bytes.len(), at_ms = now_ms(), "media frame received");
            // Never block the reader on a busy call loop: a full queue drops the frame
            // (the jitter buffer counts it as lost).
            let msg = Inbound::Media {
                peer,
                stream_id,
                bytes,
                at_ms: now_ms(),
            };
            match inbound.try_send(msg) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
        let _ = inbound.send(Inbound::MediaEnd { peer, stream_id }).await;
    });
}

fn hex_room(ticket: &Ticket) -> String {
    ticket.room_id_hex()
}

/// Runs a call until `duration` has passed (or Ctrl-C), then drains and reports.
pub async fn run_call(opts: CallOptions) -> Result<CallReport, CallError> {
    let key = net::keypair(&opts.identity)?;
    let me = key.public().to_peer_id();
    let mut swarm = net::build_swarm_with(
        key,
        net::NetConfig {
            hole_punch: opts.hole_punch,
        },
    )?;
    let mut relays = Relays::new(&opts.relays).map_err(CallError::Relay)?;
    let namespace = rendezvous::Namespace::new(confab_protocol::crypto::rendezvous_namespace(
        &opts.ticket.room_id,
    ))
    .map_err(|e| CallError::Other(e.to_string()))?;
    for addr in &opts.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| net::NetError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
    }
    let mut control = swarm.behaviour().stream.new_control();
    let room_incoming = control
        .accept(ROOM_PROTOCOL)
        .map_err(|e| CallError::Other(e.to_string()))?;
    let media_incoming = control
        .accept(MEDIA_PROTOCOL)
        .map_err(|e| CallError::Other(e.to_string()))?;
    let (inbound_tx, mut inbound_rx) = mpsc::channel::<Inbound>(INBOUND_QUEUE);
    spawn_acceptors(room_incoming, media_incoming, inbound_tx.clone());

    let recording = opts.output.is_some() || opts.output_dir.is_some();
    let identity = Identity::from_secret_bytes(&opts.identity);
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
    let mut room = Room::new(
        RoomConfig {
            name: opts.name.clone(),
            recording,
            ..RoomConfig::default()
        },
        identity,
        opts.ticket.room_id,
        &opts.ticket.room_secret,
        seed,
    );

    // Audio in.
    let samples = match &opts.input {
        Input::Wav(p) => audio::read_wav(p)?,
        Input::Tone(hz) => audio::tone(*hz, 10.0),
        Input::Signal(i) => audio::test_signal(*i, 10.0),
    };
    let mut source = FrameSource::new(samples, true);
    let mut encoder = Encoder::new(&EncoderConfig {
        cbr: opts.cbr,
        dtx: false,
        ..EncoderConfig::default()
    })?;
    let mut dump = match &opts.dump_opus {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| CallError::Other(format!("cannot create {}: {e}", path.display())))?,
        )),
        None => None,
    };
    let pad_to = opts.cbr.then_some(CBR_PAD);

    // Bootstrap.
    let mut bootstrap: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
    for info in &opts.ticket.bootstrap {
        let Some(pid) = net::peer_id(&info.peer_id) else {
            warn!("ticket names a peer id that does not parse; skipping it");
            continue;
        };
        if pid == me {
            continue;
        }
        let addrs = usable_addrs(&info.addrs, opts.relay_only);
        bootstrap.insert(pid, addrs);
    }
    let creator = bootstrap.is_empty();
    let started_ms = now_ms();
    let started = tokio::time::Instant::now();
    let mut peers: HashMap<PeerId, PeerCtx> = HashMap::new();
    let mut sent: BTreeMap<PeerId, SentStream> = BTreeMap::new();
    let mut finished_senders: Vec<ReceivedStream> = Vec::new();
    let mut heard: Vec<(PeerId, Option<u64>, Vec<i16>)> = Vec::new();
    let mut roster: Vec<RosterEvent> = Vec::new();
    let mut next_stream_id = 0u64;
    let mut listen_addrs: Vec<Multiaddr> = Vec::new();
    let mut last_dial = tokio::time::Instant::now() - Duration::from_secs(10);
    // Known addresses of members (ticket, Hello, rendezvous), and members whose connection
    // broke, with the time until which we try to reach them again.
    let mut peer_addrs: HashMap<PeerId, Vec<Multiaddr>> = bootstrap.clone();
    let mut lost: HashMap<PeerId, tokio::time::Instant> = HashMap::new();
    // When we first dialed each member (circuit addresses wait for CIRCUIT_FALLBACK).
    let mut first_dial: HashMap<PeerId, tokio::time::Instant> = HashMap::new();
    // Circuit dials to bootstrap members refused by a relay: (count, reason).
    let mut circuit_refusals: HashMap<PeerId, (u32, String)> = HashMap::new();
    let mut last_discover: Option<tokio::time::Instant> = None;
    let mut relays_failed_at: Option<tokio::time::Instant> = None;
    let mut ever_admitted = false;
    let mut refusal: Option<CallError> = None;
    let mut frames_captured = 0u64;
    let capture_period = Duration::from_millis(u64::from(codec::FRAME_MS));
    let mut next_capture = started;
    let send_until = opts.duration.map(|d| started + d);
    let mut sending = true;
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;

    info!(peer_id = %me, room = %hex_room(&opts.ticket), "joining room");

    loop {
        let now_inst = tokio::time::Instant::now();
        let now = now_ms();

        relays.poll(&mut swarm);
        // (Re)dial bootstrap members until someone is in the room with us. With relays, wait
        // until they have answered (a few seconds at most): circuits and hole punches need
        // the reservation and the identify exchange with the relay first.
        let relays_ready =
            relays.settled() || now_inst.duration_since(started) >= Duration::from_secs(3);
        if now_inst.duration_since(last_dial) >= Duration::from_secs(1) && relays_ready {
            last_dial = now_inst;
            if !ever_admitted {
                for (pid, addrs) in &bootstrap {
                    if !swarm.is_connected(pid) && !addrs.is_empty() {
                        dial_member(&mut swarm, *pid, addrs.clone(), &mut first_dial, now_inst);
                    }
                }
            }
            // Members whose connection broke (a relay restart, a network change).
            lost.retain(|_, until| now_inst < *until);
            if sending {
                for pid in lost.keys() {
                    let addrs = peer_addrs.get(pid).cloned().unwrap_or_default();
                    if !swarm.is_connected(pid) && !addrs.is_empty() {
                        debug!(peer = %pid, "redialing a member we lost");
                        dial_member(&mut swarm, *pid, addrs, &mut first_dial, now_inst);
                    }
                }
            }
        }
        // Stale ticket: ask the relays' rendezvous who is in the room.
        if !ever_admitted
            && !creator
            && now_inst.duration_since(started) >= DISCOVER_AFTER
            && last_discover.is_none_or(|t| now_inst.duration_since(t) >= DISCOVER_AFTER)
        {
            let reserved: Vec<PeerId> = relays.reserved().map(|(p, _)| p).collect();
            if !reserved.is_empty() {
                last_discover = Some(now_inst);
                for relay in reserved {
                    debug!(%relay, "looking the room up at the relay's rendezvous");
                    swarm.behaviour_mut().rendezvous.discover(
                        Some(namespace.clone()),
                        None,
                        None,
                        relay,
                    );
                }
            }
        }
        // Direct connections replace circuits: close the relayed ones once due.
        for (pid, ctx) in peers.iter_mut() {
            if ctx.close_relayed_at.is_some_and(|t| now_inst >= t) {
                ctx.close_relayed_at = None;
                move_to_direct(&mut swarm, *pid, ctx, &mut room);
            }
            if ctx.broken_at.is_some_and(|t| now_inst >= t) {
                ctx.broken_at = None;
                if ctx.room_stream.is_none() && room.knows(&pid.to_bytes()) {
                    if ctx.punched && ctx.has_direct() {
                        ctx.migrating = true;
                    }
                    room.peer_disconnected(now_ms(), &pid.to_bytes());
                }
            }
        }
        // Relays that refuse us or cannot be reached: say so rather than wait in silence.
        if !ever_admitted && !peers.values().any(|c| c.member) {
            match relays.all_failed() {
                Some(why) => {
                    let since = *relays_failed_at.get_or_insert(now_inst);
                    // A joiner may still get in directly; give it a moment.
                    if creator
                        || opts.relay_only
                        || now_inst.duration_since(since) >= Duration::from_secs(3)
                    {
                        return Err(CallError::Relay(format!(
                            "no relay holds a reservation for this node, so nobody can reach it: {why}"
                        )));
                    }
                }
                None => relays_failed_at = None,
            }
            if !bootstrap.is_empty()
                && bootstrap.keys().all(|p| {
                    !swarm.is_connected(p)
                        && circuit_refusals.get(p).is_some_and(|(n, why)| {
                            *n >= if why.contains("no reservation") { 5 } else { 2 }
                        })
                })
            {
                let why: Vec<String> = circuit_refusals.values().map(|(_, w)| w.clone()).collect();
                return Err(CallError::Relay(format!(
                    "cannot reach the room's members through their relays: {}",
                    why.join("; ")
                )));
            }
        }
        if !ever_admitted && !creator && now_inst.duration_since(started) > JOIN_TIMEOUT {
            return Err(refusal.unwrap_or(CallError::Unreachable(JOIN_TIMEOUT)));
        }
        if let Some(err) = refusal.take() {
            if !ever_admitted && room.member_count() == 0 && !creator {
                return Err(err);
            }
        }

        // Sending ends: close our media streams, keep listening until the others end.
        if sending && (send_until.is_some_and(|t| now_inst >= t) || interrupted) {
            sending = false;
            for ctx in peers.values_mut() {
                if let Some(q) = ctx.media_out.take() {
                    q.close();
                }
            }
            drain_deadline = Some(
                now_inst
                    + if interrupted {
                        Duration::from_millis(500)
                    } else {
                        DRAIN_GRACE
                    },
            );
            info!(
                frames = frames_captured,
                "stopped sending; waiting for the others to finish"
            );
        }
        if let Some(deadline) = drain_deadline {
            let all_done = peers.values().all(|c| {
                !c.member
                    || c.remote
                        .as_ref()
                        .is_none_or(|r| r.media_ended && r.jitter.is_drained())
            });
            if all_done || now_inst >= deadline {
                break;
            }
        }

        // Wake at the earliest of: capture tick, playout deadline, room timer, redial.
        let mut wake = now_inst + Duration::from_millis(250);
        if sending {
            wake = wake.min(next_capture);
        }
        let to_inst = |ms: u64| now_inst + Duration::from_millis(ms.saturating_sub(now));
        if let Some(t) = room.poll_timeout() {
            wake = wake.min(to_inst(t));
        }
        if let Some(t) = relays.next_wake() {
            wake = wake.min(t.max(now_inst));
        }
        for ctx in peers.values() {
            if let Some(t) = ctx.remote.as_ref().and_then(|r| r.jitter.poll_timeout()) {
                wake = wake.min(to_inst(t));
            }
        }

        tokio::select! {
            ev = swarm.select_next_some() => {
                let change = relays.on_event(&ev, &mut swarm);
                if let Some(relay) = change.reserved {
                    // Members find each other here when the ticket's addresses are stale.
                    if let Err(e) = swarm.behaviour_mut().rendezvous.register(namespace.clone(), relay, None) {
                        debug!(%relay, error = %e, "cannot register at the relay's rendezvous");
                    }
                }
                match &ev {
                    SwarmEvent::OutgoingConnectionError { peer_id: Some(p), error, .. } if bootstrap.contains_key(p) => {
                        let text = relays::error_chain(error);
                        if let Some(why) = relays::refusal_reason(&text) {
                            let e = circuit_refusals.entry(*p).or_insert((0, String::new()));
                            e.0 += 1;
                            e.1 = format!("{why} ({p})");
                        }
                        debug!(peer = %p, error = %text, "cannot reach a member");
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Rendezvous(rendezvous::client::Event::Discovered { registrations, .. })) => {
                        for reg in registrations {
                            let pid = reg.record.peer_id();
                            if pid == me {
                                continue;
                            }
                            let addrs = usable_addrs(&reg.record.addresses().iter().map(|a| a.to_string()).collect::<Vec<_>>(), opts.relay_only);
                            info!(peer = %pid, "found a member through the relay's rendezvous");
                            peer_addrs.insert(pid, addrs.clone());
                            if !swarm.is_connected(&pid) {
                                dial_member(&mut swarm, pid, addrs.clone(), &mut first_dial, tokio::time::Instant::now());
                            }
                            bootstrap.insert(pid, addrs);
                        }
                    }
                    _ => {}
                }
                handle_swarm_event(ev, &me, &mut swarm, &mut peers, &relays, opts.relay_only, &mut listen_addrs, &mut room, &inbound_tx, &control);
                if change.addrs {
                    room.set_addrs(announced(&listen_addrs, relays.circuit_addrs(me), opts.relay_only));
                }
            }
            Some(msg) = inbound_rx.recv() => {
                let now = now_ms();
                match msg {
                    Inbound::RoomStream { peer, stream, initiator } => {
                        next_stream_id += 1;
                        let tx = spawn_room_stream(peer, stream, next_stream_id, inbound_tx.clone());
                        let ctx = peers.entry(peer).or_default();
                        if initiator {
                            ctx.opening = false;
                        }
                        ctx.room_stream = Some((next_stream_id, tx));
                        // A member opening a new session replaces the old one (after a hole
                        // punch closed the circuit it ran on): not a departure.
                        if room.is_member(&peer.to_bytes()) {
                            ctx.migrating = true;
                        }
                        if let Err(e) = room.connect(now, peer.to_bytes(), initiator) {
                            warn!(%peer, error = %e, "cannot start a session");
                        }
                    }
                    Inbound::RoomFrame { peer, stream_id, bytes } => {
                        if peers.get(&peer).and_then(|c| c.room_stream.as_ref()).is_some_and(|(id, _)| *id == stream_id) {
                            room.handle_frame(now, &peer.to_bytes(), &bytes);
                        }
                    }
                    Inbound::RoomClosed { peer, stream_id } => {
                        if let Some(ctx) = peers.get_mut(&peer) {
                            if ctx.room_stream.as_ref().is_some_and(|(id, _)| *id == stream_id) {
                                ctx.room_stream = None;
                                debug!(%peer, member = ctx.member, connected = swarm.is_connected(&peer), punched = ctx.punched, relayed = ctx.has_relayed(), direct = ctx.has_direct(), "room stream closed");
                                if ctx.member && swarm.is_connected(&peer) && (ctx.punched || ctx.has_relayed()) {
                                    // Maybe a circuit closed after a hole punch, and the
                                    // direct connection's events are not processed yet.
                                    ctx.broken_at = Some(tokio::time::Instant::now() + Duration::from_millis(300));
                                } else {
                                    room.peer_disconnected(now, &peer.to_bytes());
                                }
                            }
                        }
                    }
                    Inbound::Media { peer, stream_id, bytes, at_ms } => {
                        if let Some(r) = peers.get_mut(&peer).and_then(|c| c.remote.as_mut()) {
                            if stream_id > r.media_stream {
                                // A newer stream (after a reconnect or a move to a direct
                                // connection): the sender goes on.
                                r.media_stream = stream_id;
                                if r.media_ended {
                                    r.media_ended = false;
                                    r.jitter.resume();
                                }
                            }
                        }
                        match room.open_media(at_ms, &peer.to_bytes(), &bytes) {
                            Ok(Some(frame)) => deliver_media(&mut peers, peer, at_ms, frame),
                            Ok(None) => {}
                            Err(e) => debug!(%peer, error = %e, "media frame dropped"),
                        }
                    }
                    Inbound::MediaEnd { peer, stream_id } => {
                        if let Some(r) = peers.get_mut(&peer).and_then(|c| c.remote.as_mut()) {
                            if stream_id >= r.media_stream {
                                r.media_ended = true;
                                r.jitter.finish();
                            }
                        }
                    }
                    Inbound::OpenFailed { peer, reason } => {
                        if let Some(ctx) = peers.get_mut(&peer) {
                            ctx.opening = false;
                        }
                        debug!(%peer, %reason, "could not open a stream");
                    }
                }
            }
            _ = tokio::time::sleep_until(wake) => {}
            _ = &mut ctrl_c, if !interrupted => {
                info!("interrupted; leaving the call");
                interrupted = true;
            }
        }

        let now = now_ms();
        // Capture and send every frame that is due.
        while sending && tokio::time::Instant::now() >= next_capture {
            let capture_ts = started_ms + frames_captured * u64::from(codec::FRAME_MS);
            next_capture += capture_period;
            let Some(pcm) = source.next_frame() else {
                break;
            };
            frames_captured += 1;
            let packet = encoder.encode(&pcm)?;
            if let Some(w) = dump.as_mut() {
                let len = u16::try_from(packet.len()).unwrap_or(u16::MAX);
                if w.write_all(&len.to_be_bytes())
                    .and_then(|()| w.write_all(&packet))
                    .is_err()
                {
                    warn!("cannot write the Opus dump; stopping it");
                    dump = None;
                }
            }
            let frame = match room.encrypt_media(capture_ts, &packet, pad_to) {
                Ok(f) => f,
                Err(e) => {
                    warn!(error = %e, "cannot encrypt a media frame");
                    continue;
                }
            };
            for (pid, ctx) in peers.iter() {
                if let Some(q) = &ctx.media_out {
                    let s = sent.entry(*pid).or_default();
                    s.frames_sent += 1;
                    if q.push(frame.clone()) {
                        s.frames_dropped += 1;
                    }
                }
            }
        }

        // Playout.
        for ctx in peers.values_mut() {
            if let Some(r) = ctx.remote.as_mut() {
                play_out(r, now);
            }
        }

        room.handle_timeout(now);
        // Released media (frames that waited for their key).
        while let Some((peer, frame)) = room.poll_media() {
            if let Some(pid) = net::peer_id(&peer) {
                deliver_media(&mut peers, pid, now, frame);
            }
        }
        // Send what the room queued before acting on its events: a Reject must go out before
        // the event handler drops the stream.
        flush_transmits(&mut room, &mut peers);
        // Room events.
        while let Some(ev) = room.poll_event() {
            match ev {
                Event::Admitted {
                    peer,
                    name,
                    recording,
                    addrs,
                } => {
                    let Some(pid) = net::peer_id(&peer) else {
                        continue;
                    };
                    ever_admitted = true;
                    lost.remove(&pid);
                    let hello_addrs = usable_addrs(&addrs, opts.relay_only);
                    if !hello_addrs.is_empty() {
                        peer_addrs.insert(pid, hello_addrs);
                    }
                    let ctx = peers.entry(pid).or_default();
                    ctx.member = true;
                    let migrated = std::mem::take(&mut ctx.migrating);
                    if migrated {
                        info!(peer = %pid, "member moved to the direct connection");
                    } else {
                        info!(peer = %pid, %name, recording, "member admitted");
                        roster.push(RosterEvent {
                            at_ms: now,
                            peer: pid.to_string(),
                            kind: "admitted".into(),
                            detail: name.clone(),
                        });
                    }
                    if recording {
                        info!(peer = %pid, %name, "this member is recording the call");
                    }
                    if sending {
                        let q = MediaQueue::new();
                        spawn_media_sender(control.clone(), pid, q.clone(), inbound_tx.clone());
                        ctx.media_out = Some(q);
                        sent.entry(pid).or_default();
                    }
                    if let Some(r) = ctx.remote.as_mut() {
                        // Back after a broken connection: the same sender goes on.
                        r.name = name;
                        r.recording = recording;
                    } else {
                        let decoder = Decoder::new()?;
                        ctx.remote = Some(RemoteSender {
                            name,
                            jitter: JitterBuffer::new(JitterConfig::default()),
                            decoder,
                            first_seq: None,
                            audio: Vec::new(),
                            media_ended: false,
                            recording,
                            first_capture_ms: None,
                            media_stream: 0,
                        });
                    }
                }
                Event::Left { peer, reason } => {
                    let Some(pid) = net::peer_id(&peer) else {
                        continue;
                    };
                    let migrating = peers.get(&pid).is_some_and(|c| c.migrating);
                    // A broken connection may come back (relay restart): keep its sender
                    // state and try to reach it again for a while.
                    let broken =
                        matches!(reason, LeaveReason::Disconnected | LeaveReason::TimedOut);
                    if migrating {
                        debug!(peer = %pid, "session closed with the circuit; reopening it on the direct connection");
                    } else {
                        info!(peer = %pid, reason = ?reason, "member left");
                        roster.push(RosterEvent {
                            at_ms: now,
                            peer: pid.to_string(),
                            kind: "left".into(),
                            detail: format!("{reason:?}"),
                        });
                        if broken && sending && peer_addrs.contains_key(&pid) {
                            lost.insert(pid, now_inst + RECONNECT_FOR);
                        }
                    }
                    if let Some(ctx) = peers.get_mut(&pid) {
                        ctx.member = false;
                        if let Some(q) = ctx.media_out.take() {
                            q.close();
                        }
                        if let Some((_, tx)) = ctx.room_stream.take() {
                            drop(tx);
                        }
                        if migrating {
                            maybe_open_room_stream(&me, pid, ctx, &room, &control, &inbound_tx);
                        }
                        if migrating || broken {
                            // Kept: reported at the end, or continued if the member returns.
                        } else if let Some(mut r) = ctx.remote.take() {
                            r.jitter.finish();
                            while let Some(p) = r.jitter.poll_playout(u64::MAX) {
                                play_item(&mut r, p);
                            }
                            finished_senders.push(received_report(&pid, &r, ctx, &opts));
                            heard.push((pid, r.first_capture_ms, std::mem::take(&mut r.audio)));
                        }
                    }
                }
                Event::AdmissionFailed { peer, reason } => {
                    let pid = net::peer_id(&peer)
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "unknown peer".into());
                    let migrating = net::peer_id(&peer)
                        .and_then(|p| peers.get(&p))
                        .is_some_and(|c| c.migrating);
                    if migrating {
                        debug!(peer = %pid, %reason, "a session broke while moving to the direct connection");
                    } else {
                        warn!(peer = %pid, %reason, "admission failed");
                        roster.push(RosterEvent {
                            at_ms: now,
                            peer: pid.clone(),
                            kind: "admission_failed".into(),
                            detail: reason.to_string(),
                        });
                    }
                    if let Some((p, ctx)) =
                        net::peer_id(&peer).and_then(|p| peers.get_mut(&p).map(|c| (p, c)))
                    {
                        ctx.room_stream = None;
                        // A stream that broke during the handshake (e.g. dropped on arrival)
                        // is retried a few times while the connection is up.
                        if reason == AdmissionFailure::Incomplete
                            && ctx.room_retries < 3
                            && swarm.is_connected(&p)
                        {
                            ctx.room_retries += 1;
                            maybe_open_room_stream(&me, p, ctx, &room, &control, &inbound_tx);
                        }
                    }
                    let refused = matches!(
                        reason,
                        AdmissionFailure::BadSecret
                            | AdmissionFailure::Rejected(RejectReason::BadSecret)
                            | AdmissionFailure::RoomFull
                            | AdmissionFailure::Rejected(_)
                            | AdmissionFailure::BadIdentity
                    );
                    if refused && !ever_admitted && !creator {
                        let reason = match reason {
                            AdmissionFailure::BadSecret
                            | AdmissionFailure::Rejected(RejectReason::BadSecret) => {
                                "wrong room secret (the ticket does not match the room)".to_string()
                            }
                            other => other.to_string(),
                        };
                        refusal = Some(CallError::Refused { peer: pid, reason });
                    }
                }
                Event::Dial(info) => {
                    if let Some(pid) = net::peer_id(&info.peer_id) {
                        if pid != me && !swarm.is_connected(&pid) {
                            let addrs = usable_addrs(&info.addrs, opts.relay_only);
                            peer_addrs.insert(pid, addrs.clone());
                            debug!(peer = %pid, "dialing a member from the roster");
                            dial_member(&mut swarm, pid, addrs, &mut first_dial, now_inst);
                            // Keep dialing (circuits after the first second) until admitted.
                            lost.entry(pid).or_insert(now_inst + RECONNECT_FOR);
                        } else if pid != me {
                            let ctx = peers.entry(pid).or_default();
                            maybe_open_room_stream(&me, pid, ctx, &room, &control, &inbound_tx);
                        }
                    }
                }
                Event::Recording { peer, on } => {
                    if let Some(pid) = net::peer_id(&peer) {
                        let name = peers
                            .get(&pid)
                            .and_then(|c| c.remote.as_ref())
                            .map(|r| r.name.clone())
                            .unwrap_or_default();
                        if on {
                            info!(peer = %pid, %name, "this member started recording the call");
                        } else {
                            info!(peer = %pid, %name, "this member stopped recording");
                        }
                        if let Some(r) = peers.get_mut(&pid).and_then(|c| c.remote.as_mut()) {
                            r.recording = on;
                        }
                    }
                }
                Event::Rekeyed { epoch, fresh } => {
                    debug!(epoch, fresh, "sender key moved to a new epoch")
                }
            }
        }
        flush_transmits(&mut room, &mut peers);
    }

    // Leave: say goodbye, let the writers flush.
    room.leave(now_ms());
    flush_transmits(&mut room, &mut peers);
    let mut received = finished_senders;
    for (pid, ctx) in peers.iter_mut() {
        if let Some(mut r) = ctx.remote.take() {
            r.jitter.finish();
            while let Some(p) = r.jitter.poll_playout(u64::MAX) {
                play_item(&mut r, p);
            }
            received.push(received_report(pid, &r, ctx, &opts));
            heard.push((*pid, r.first_capture_ms, std::mem::take(&mut r.audio)));
        }
    }
    // Give the room stream writers a moment to deliver Leave.
    for ctx in peers.values_mut() {
        ctx.room_stream = None;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    if let Some(mut w) = dump.take() {
        if let Err(e) = w.flush() {
            warn!(error = %e, "cannot finish the Opus dump");
        }
    }
    write_outputs(&opts, started_ms, &heard)?;
    let (cpu_seconds, max_rss_kb) = process_usage();
    let report = CallReport {
        peer_id: me.to_string(),
        name: opts.name.clone(),
        room: hex_room(&opts.ticket),
        started_ms,
        ended_ms: now_ms(),
        frames_captured,
        sent: sent.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        received,
        roster,
        admission_failures: room.counters().admission_failures,
        cpu_seconds,
        max_rss_kb,
    };
    Ok(report)
}

/// How long a member's direct addresses have before its circuit addresses are dialed too.
const CIRCUIT_FALLBACK: Duration = Duration::from_secs(1);

/// Dials a member, preferring a direct path: direct addresses at once, circuit addresses
/// only when there are no direct ones or from [`CIRCUIT_FALLBACK`] after the first dial on
/// (so that a reachable member is not reached through a relay first). Circuit addresses go
/// on a dial of their own every time: a direct address that goes nowhere (a private address
/// behind NAT) keeps its dial pending for seconds, and libp2p ignores new dials to a peer
/// that is being dialled, which would hold the circuit back too.
fn dial_member(
    swarm: &mut libp2p::Swarm<net::Behaviour>,
    pid: PeerId,
    addrs: Vec<Multiaddr>,
    first_dial: &mut HashMap<PeerId, tokio::time::Instant>,
    now: tokio::time::Instant,
) {
    let (circuits, direct): (Vec<_>, Vec<_>) = addrs.into_iter().partition(net::is_relayed);
    let since = *first_dial.entry(pid).or_insert(now);
    let circuits_due = direct.is_empty() || now.duration_since(since) >= CIRCUIT_FALLBACK;
    if !direct.is_empty() {
        let _ = swarm.dial(DialOpts::peer_id(pid).addresses(direct).build());
    }
    if !circuits.is_empty() && circuits_due {
        let _ = swarm.dial(
            DialOpts::peer_id(pid)
                .condition(PeerCondition::Always)
                .addresses(circuits)
                .build(),
        );
    }
}

/// Opens the room stream to `peer` unless one exists or is being opened. The lower peer
/// id of a pair opens it; the other side waits for it.
fn maybe_open_room_stream(
    me: &PeerId,
    peer: PeerId,
    ctx: &mut PeerCtx,
    room: &Room,
    control: &libp2p_stream::Control,
    inbound: &mpsc::Sender<Inbound>,
) {
    // After a hole punch, wait until the circuit is gone: libp2p-stream picks any
    // connection to the peer, and the session must not land on the circuit again.
    let circuit_closing = ctx.punched && ctx.has_direct() && ctx.has_relayed();
    if me.to_bytes() < peer.to_bytes()
        && ctx.room_stream.is_none()
        && !ctx.opening
        && !circuit_closing
        && !room.knows(&peer.to_bytes())
    {
        ctx.opening = true;
        open_room_stream(control, peer, inbound);
    }
}

fn open_room_stream(
    control: &libp2p_stream::Control,
    peer: PeerId,
    inbound: &mpsc::Sender<Inbound>,
) {
    let mut control = control.clone();
    let inbound = inbound.clone();
    tokio::spawn(async move {
        match tokio::time::timeout(
            Duration::from_secs(10),
            control.open_stream(peer, ROOM_PROTOCOL),
        )
        .await
        {
            Ok(Ok(stream)) => {
                let _ = inbound
                    .send(Inbound::RoomStream {
                        peer,
                        stream,
                        initiator: true,
                    })
                    .await;
            }
            Ok(Err(e)) => {
                let _ = inbound
                    .send(Inbound::OpenFailed {
                        peer,
                        reason: e.to_string(),
                    })
                    .await;
            }
            Err(_) => {
                let _ = inbound
                    .send(Inbound::OpenFailed {
                        peer,
                        reason: "timed out opening the room stream".into(),
                    })
                    .await;
            }
        }
    });
}

#[allow(clippy::too_many_arguments)]
fn handle_swarm_event(
    ev: SwarmEvent<BehaviourEvent>,
    me: &PeerId,
    _swarm: &mut libp2p::Swarm<net::Behaviour>,
    peers: &mut HashMap<PeerId, PeerCtx>,
    relays: &Relays,
    relay_only: bool,
    listen_addrs: &mut Vec<Multiaddr>,
    room: &mut Room,
    inbound: &mpsc::Sender<Inbound>,
    control: &libp2p_stream::Control,
) {
    let circuits = relays.circuit_addrs(*me);
    match ev {
        SwarmEvent::NewListenAddr { address, .. } => {
            // Circuit addresses are announced from the reservations (`Relays`).
            if !net::is_relayed(&address) {
                info!(%address, "listening");
                listen_addrs.push(address);
            }
            room.set_addrs(announced(listen_addrs, circuits, relay_only));
        }
        SwarmEvent::ExpiredListenAddr { address, .. } => {
            listen_addrs.retain(|a| *a != address);
            room.set_addrs(announced(listen_addrs, circuits, relay_only));
        }
        SwarmEvent::ConnectionEstablished {
            peer_id,
            endpoint,
            connection_id,
            ..
        } => {
            if relays.is_relay(&peer_id) {
                return;
            }
            let relayed = endpoint.is_relayed();
            let ctx = peers.entry(peer_id).or_default();
            ctx.conns.insert(connection_id, relayed);
            if !relayed && ctx.relayed {
                // A direct connection next to a circuit: a hole punch (DCUtR reports it
                // too), or a direct dial that got through after all.
                ctx.punched = true;
                ctx.close_relayed_at
                    .get_or_insert(tokio::time::Instant::now() + CIRCUIT_GRACE);
            }
            ctx.relayed = relayed && !ctx.punched;
            maybe_open_room_stream(me, peer_id, ctx, room, control, inbound);
        }
        SwarmEvent::ConnectionClosed {
            peer_id,
            connection_id,
            num_established,
            ..
        } => {
            let Some(ctx) = peers.get_mut(&peer_id) else {
                return;
            };
            ctx.conns.remove(&connection_id);
            debug!(peer = %peer_id, num_established, "connection closed");
            if num_established == 0 {
                ctx.migrating = false;
                room.peer_disconnected(now_ms(), &peer_id.to_bytes());
                ctx.room_stream = None;
            } else {
                // The circuit is gone and the direct connection stays: reopen the session
                // there if it broke with the circuit.
                if ctx.punched && !ctx.has_relayed() && ctx.room_stream.is_none() {
                    maybe_open_room_stream(me, peer_id, ctx, room, control, inbound);
                }
            }
        }
        SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
            debug!(peer = ?peer_id, %error, "dial failed");
        }
        SwarmEvent::Behaviour(BehaviourEvent::Dcutr(e)) => match e.result {
            Ok(_) => {
                info!(peer = %e.remote_peer_id, "hole punch succeeded; moving to the direct connection");
                let ctx = peers.entry(e.remote_peer_id).or_default();
                ctx.punched = true;
                ctx.relayed = false;
                // Not at once: the other side may not have finished upgrading its end of
                // the direct connection, and would take the circuit's end for the end of
                // the member.
                ctx.close_relayed_at = Some(tokio::time::Instant::now() + CIRCUIT_GRACE);
            }
            Err(err) => {
                info!(peer = %e.remote_peer_id, error = %err, "hole punch failed; staying on the relay");
            }
        },
        _ => {}
    }
}

/// Closes `ctx`'s relayed connections (a direct one replaces them) and ends the session
/// that may run on them; it is reopened (by the lower peer id) on the direct connection once
/// the circuits are gone, and the member is not reported as leaving.
fn move_to_direct(
    swarm: &mut libp2p::Swarm<net::Behaviour>,
    peer: PeerId,
    ctx: &mut PeerCtx,
    room: &mut Room,
) {
    if !ctx.has_direct() || !ctx.has_relayed() {
        return;
    }
    for (id, relayed) in &ctx.conns {
        if *relayed {
            debug!(connection = %id, "closing the circuit");
            swarm.close_connection(*id);
        }
    }
    if ctx.member {
        ctx.migrating = true;
        ctx.room_stream = None;
        room.peer_disconnected(now_ms(), &peer.to_bytes());
    }
}

/// The addresses of a ticket, Hello or rendezvous record that we will dial: all of them,
/// or only circuit addresses with `relay_only`.
fn usable_addrs(addrs: &[String], relay_only: bool) -> Vec<Multiaddr> {
    addrs
        .iter()
        .filter_map(|a| a.parse::<Multiaddr>().ok())
        .filter(|a| !relay_only || net::is_relayed(a))
        .collect()
}

/// What we announce in Hello: circuit addresses first (they work from anywhere), then the
/// direct listen addresses, at most [`confab_protocol::wire::MAX_ADDRS`].
fn announced(listen: &[Multiaddr], circuits: Vec<Multiaddr>, relay_only: bool) -> Vec<String> {
    let direct = listen.iter().filter(|_| !relay_only).cloned();
    circuits
        .into_iter()
        .chain(direct)
        .map(|a| a.to_string())
        .filter(|a| a.len() <= confab_protocol::wire::MAX_ADDR_LEN)
        .take(confab_protocol::wire::MAX_ADDRS)
        .collect()
}

fn flush_transmits(room: &mut Room, peers: &mut HashMap<PeerId, PeerCtx>) {
    while let Some(t) = room.poll_transmit() {
        let Some(pid) = net::peer_id(&t.peer) else {
            continue;
        };
        if let Some(ctx) = peers.get_mut(&pid) {
            if let Some((_, tx)) = &ctx.room_stream {
                if tx.try_send((t.frame, t.close)).is_err() {
                    // The writer is stuck: the peer is not keeping up with control traffic.
                    ctx.room_stream = None;
                }
            }
            if t.close {
                ctx.room_stream = None;
            }
        }
    }
}

fn deliver_media(
    peers: &mut HashMap<PeerId, PeerCtx>,
    peer: PeerId,
    at_ms: u64,
    frame: confab_protocol::crypto::OpenedFrame,
) {
    if let Some(r) = peers.get_mut(&peer).and_then(|c| c.remote.as_mut()) {
        r.jitter.push(
            at_ms,
            frame.header.seq,
            frame.header.capture_ts_ms,
            frame.payload,
        );
    }
}

fn play_out(r: &mut RemoteSender, now: u64) {
    while let Some(p) = r.jitter.poll_playout(now) {
        play_item(r, p);
    }
}

fn play_item(r: &mut RemoteSender, p: Playout) {
    let (seq, pcm) = match p {
        Playout::Frame {
            seq,
            payload,
            capture_ts_ms,
        } => {
            r.first_capture_ms.get_or_insert(capture_ts_ms);
            (seq, r.decoder.decode(&payload))
        }
        Playout::Conceal { seq, fec } => (seq, r.decoder.conceal(fec.as_deref())),
    };
    let pcm = match pcm {
        Ok(pcm) => pcm,
        Err(e) => {
            debug!(error = %e, "decode failed; inserting silence");
            vec![0; FRAME_SAMPLES]
        }
    };
    let first = *r.first_seq.get_or_insert(seq);
    let offset = (seq.saturating_sub(first) as usize).saturating_mul(FRAME_SAMPLES);
    if offset + FRAME_SAMPLES > MAX_OUTPUT_SAMPLES {
        return;
    }
    if r.audio.len() < offset + FRAME_SAMPLES {
        r.audio.resize(offset + FRAME_SAMPLES, 0);
    }
    let n = pcm.len().min(FRAME_SAMPLES);
    r.audio[offset..offset + n].copy_from_slice(&pcm[..n]);
}

fn received_report(
    pid: &PeerId,
    r: &RemoteSender,
    ctx: &PeerCtx,
    opts: &CallOptions,
) -> ReceivedStream {
    let snap = r.jitter.stats().snapshot();
    let path = if ctx.punched {
        "punched"
    } else if ctx.relayed {
        "relayed"
    } else {
        "direct"
    };
    ReceivedStream {
        from: pid.to_string(),
        name: r.name.clone(),
        path: path.into(),
        frames_received: snap.frames_received,
        frames_lost: snap.frames_lost,
        frames_late: snap.frames_late,
        frames_concealed: snap.frames_concealed,
        frames_played: snap.frames_played,
        mouth_to_ear_p50_ms: snap.mouth_to_ear_p50_ms,
        mouth_to_ear_p95_ms: snap.mouth_to_ear_p95_ms,
        jitter_ms: snap.jitter_ms,
        mos: snap.mos,
        first_seq: r.first_seq,
        output: opts
            .output_dir
            .as_ref()
            .map(|d| d.join(format!("{pid}.wav")).display().to_string()),
        recording: r.recording,
    }
}

/// Writes what we heard: one WAV per sender into `output_dir`, and the mix into `output`
/// (each sender placed at its capture time relative to the start of our call).
fn write_outputs(
    opts: &CallOptions,
    started_ms: u64,
    heard: &[(PeerId, Option<u64>, Vec<i16>)],
) -> Result<(), CallError> {
    if let Some(dir) = &opts.output_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| CallError::Other(format!("cannot create {}: {e}", dir.display())))?;
        for (pid, _, samples) in heard {
            audio::write_wav(&dir.join(format!("{pid}.wav")), samples)?;
        }
    }
    if let Some(path) = &opts.output {
        let mut mix: Vec<i32> = Vec::new();
        for (_, first_capture, samples) in heard {
            let offset_ms = first_capture.map_or(0, |t| t.saturating_sub(started_ms));
            let offset = usize::try_from(offset_ms)
                .unwrap_or(0)
                .saturating_mul(48)
                .min(MAX_OUTPUT_SAMPLES);
            if mix.len() < offset + samples.len() {
                mix.resize(offset + samples.len(), 0);
            }
            for (i, s) in samples.iter().enumerate() {
                mix[offset + i] += i32::from(*s);
            }
        }
        let mix: Vec<i16> = mix
            .into_iter()
            .map(|v| v.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16)
            .collect();
        audio::write_wav(path, &mix)?;
    }
    Ok(())
}

/// CPU seconds used by this process so far and its peak resident set, from /proc.
pub fn process_usage() -> (f64, u64) {
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    (cpu, rss)
}
