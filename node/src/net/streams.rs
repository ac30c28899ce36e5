//! The small tasks that move bytes on the two confab stream protocols.
//!
//! Each task only reads or writes; everything it learns goes to the node's driver as an
//! [`Inbound`] message on one bounded queue. Room readers wait for room in that queue (control
//! traffic must not be lost); media readers never wait (a full queue drops the frame, and the
//! jitter buffer counts it as lost). Every write has a timeout.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use confab_protocol::wire::{length_prefixed, MAX_MEDIA_FRAME, MAX_ROOM_FRAME};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream};
use tokio::sync::{mpsc, Notify};
use tracing::debug;

use super::swarm::{MEDIA_PROTOCOL, ROOM_PROTOCOL};
use crate::clock::now_ms;

/// Most media frames queued toward one peer (100 ms at 20 ms frames).
pub const MEDIA_QUEUE_FRAMES: usize = 5;
/// Tracing target of one debug line per media frame sent or received (size and time, as
/// a network observer would see them): `RUST_LOG=confab::wire=debug`.
pub const WIRE_TARGET: &str = "confab::wire";
/// Bound on room-stream messages queued from stream tasks to the driver.
pub const INBOUND_QUEUE: usize = 1024;
/// Bound on media frames queued from stream tasks to the driver (its own queue, so no flood
/// of control frames can crowd media out).
pub const MEDIA_INBOUND_QUEUE: usize = 2048;
/// Room frames one stream may send per second on average, and in a burst: far above what a
/// session needs (a handshake, Hello, keys, heartbeats), far below a flood. A stream over
/// its budget is closed.
const ROOM_FRAMES_PER_SEC: f64 = 50.0;
const ROOM_FRAMES_BURST: f64 = 200.0;
/// Most room streams one peer may have open towards us at once.
const MAX_ROOM_STREAMS_PER_PEER: usize = 2;
/// Most inbound media streams one peer may hold open at once (one in use, the rest while a
/// broken one is being replaced); beyond that new ones are dropped.
const MAX_MEDIA_STREAMS_PER_PEER: usize = 4;
/// Frames queued toward one room stream's writer.
const ROOM_WRITER_QUEUE: usize = 64;
/// How often a media sender reopens a broken stream before giving up.
const MEDIA_OPEN_ATTEMPTS: u32 = 5;
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
const ROOM_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const MEDIA_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Ids of streams, so the end of an old stream is not taken for the end of a newer one from
/// the same peer.
static STREAM_IDS: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_stream_id() -> u64 {
    STREAM_IDS.fetch_add(1, Ordering::Relaxed)
}

/// What stream tasks tell the driver.
pub enum Inbound {
    /// A room stream was opened (by us: `initiator`) or accepted.
    RoomStream {
        peer: PeerId,
        stream: Stream,
        initiator: bool,
        /// The accepted stream's place in the peer's allowance, held while it runs.
        slot: Option<StreamSlot>,
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

/// Sends (frame, close-after) to a room stream's writer task.
pub type RoomWriter = mpsc::Sender<(Vec<u8>, bool)>;

/// A running room stream: its id, its writer's queue, and its reader, which stops when the
/// handle is dropped (a replaced or abandoned stream does not keep reading).
pub struct RoomStream {
    pub id: u64,
    pub writer: RoomWriter,
    reader: tokio::task::AbortHandle,
}

impl Drop for RoomStream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A token bucket: `allow()` says whether one more frame fits the budget.
struct Budget {
    tokens: f64,
    last: std::time::Instant,
}

impl Budget {
    fn new() -> Self {
        Self {
            tokens: ROOM_FRAMES_BURST,
            last: std::time::Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = std::time::Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * ROOM_FRAMES_PER_SEC;
        self.tokens = (self.tokens + refill).min(ROOM_FRAMES_BURST);
        self.last = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// The peers whose media we accept (those the room is handshaking with or has admitted);
/// the call keeps it current, the media acceptor reads it.
pub type Admitted = Arc<Mutex<std::collections::HashSet<PeerId>>>;

/// A bounded queue that drops the oldest frame when full.
pub struct MediaQueue {
    inner: Mutex<(VecDeque<Vec<u8>>, bool)>,
    notify: Notify,
}

impl MediaQueue {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new((VecDeque::with_capacity(MEDIA_QUEUE_FRAMES), false)),
            notify: Notify::new(),
        })
    }

    /// Queues a frame; returns true if an older frame had to be dropped.
    pub fn push(&self, frame: Vec<u8>) -> bool {
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

    /// No more frames: the sender finishes what is queued and closes its stream.
    pub fn close(&self) {
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

/// Reads 2-byte length-prefixed frames of at most `limit` bytes.
pub(crate) async fn read_frame(
    stream: &mut (impl futures::AsyncRead + Unpin),
    limit: usize,
) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.ok()?;
    let len = usize::from(u16::from_be_bytes(len));
    // No frame is empty: a zero-length one ends the stream like an oversized one.
    if len == 0 || len > limit {
        return None;
    }
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await.ok()?;
    Some(buf)
}

pub(crate) async fn write_frame(
    stream: &mut (impl futures::AsyncWrite + Unpin),
    frame: &[u8],
    timeout: Duration,
) -> bool {
    let Ok(bytes) = length_prefixed(frame) else {
        return true;
    };
    let write = async {
        stream.write_all(&bytes).await?;
        stream.flush().await
    };
    matches!(tokio::time::timeout(timeout, write).await, Ok(Ok(())))
}

/// Starts the reader and writer of a room stream.
pub fn spawn_room_stream(
    peer: PeerId,
    stream: Stream,
    slot: Option<StreamSlot>,
    inbound: mpsc::Sender<Inbound>,
) -> RoomStream {
    let stream_id = next_stream_id();
    let (mut reader, mut writer) = stream.split();
    let (tx, mut rx) = mpsc::channel::<(Vec<u8>, bool)>(ROOM_WRITER_QUEUE);
    let read = tokio::spawn(async move {
        let _slot = slot;
        let mut budget = Budget::new();
        while let Some(bytes) = read_frame(&mut reader, MAX_ROOM_FRAME).await {
            if !budget.allow() {
                debug!(%peer, "room stream over its frame budget; closing it");
                break;
            }
            let msg = Inbound::RoomFrame {
                peer,
                stream_id,
                bytes,
            };
            if inbound.send(msg).await.is_err() {
                return;
            }
        }
        let _ = inbound.send(Inbound::RoomClosed { peer, stream_id }).await;
    });
    tokio::spawn(async move {
        while let Some((frame, close)) = rx.recv().await {
            if !write_frame(&mut writer, &frame, ROOM_WRITE_TIMEOUT).await || close {
                break;
            }
        }
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer.close()).await;
    });
    RoomStream {
        id: stream_id,
        writer: tx,
        reader: read.abort_handle(),
    }
}

/// Opens a room stream to `peer`; the result arrives as [`Inbound::RoomStream`] or
/// [`Inbound::OpenFailed`].
pub fn open_room_stream(
    control: &libp2p_stream::Control,
    peer: PeerId,
    inbound: &mpsc::Sender<Inbound>,
) {
    let mut control = control.clone();
    let inbound = inbound.clone();
    tokio::spawn(async move {
        let opened = tokio::time::timeout(OPEN_TIMEOUT, control.open_stream(peer, ROOM_PROTOCOL));
        let msg = match opened.await {
            Ok(Ok(stream)) => Inbound::RoomStream {
                peer,
                stream,
                initiator: true,
                slot: None,
            },
            Ok(Err(e)) => Inbound::OpenFailed {
                peer,
                reason: e.to_string(),
            },
            Err(_) => Inbound::OpenFailed {
                peer,
                reason: "timed out opening the room stream".into(),
            },
        };
        let _ = inbound.send(msg).await;
    });
}

/// Sends queued media to `peer`, reopening the stream if it breaks (an inbound stream can be
/// dropped by the remote when several arrive at once), at most a few times.
pub fn spawn_media_sender(
    control: libp2p_stream::Control,
    peer: PeerId,
    queue: Arc<MediaQueue>,
    inbound: mpsc::Sender<Inbound>,
) {
    tokio::spawn(async move {
        let reason = send_media(control, peer, &queue).await;
        if let Err(reason) = reason {
            let _ = inbound.send(Inbound::OpenFailed { peer, reason }).await;
        }
    });
}

async fn send_media(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    queue: &MediaQueue,
) -> Result<(), String> {
    let mut last_error = String::new();
    let mut attempts = 0;
    while attempts < MEDIA_OPEN_ATTEMPTS {
        attempts += 1;
        let open = tokio::time::timeout(OPEN_TIMEOUT, control.open_stream(peer, MEDIA_PROTOCOL));
        let mut stream = match open.await {
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
        let (finished, sent) = pump_media(&mut stream, peer, queue).await;
        if finished {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, stream.close()).await;
            return Ok(());
        }
        if sent > 0 {
            // The stream worked for a while: this break is a new one, not a retry.
            attempts = 0;
        }
        debug!(%peer, "media stream broke; reopening it");
        last_error = "media stream broke".into();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last_error)
}

/// Writes queued frames until the queue closes (true) or the stream breaks (false); also
/// says how many frames went out.
async fn pump_media(stream: &mut Stream, peer: PeerId, queue: &MediaQueue) -> (bool, u64) {
    let mut sent = 0;
    while let Some(frame) = queue.pop().await {
        // What an observer of the wire sees: the size (the u16 prefix) and the time.
        debug!(target: WIRE_TARGET, %peer, len = frame.len(), at_ms = now_ms(), "media frame sent");
        if !write_frame(stream, &frame, MEDIA_WRITE_TIMEOUT).await {
            return (false, sent);
        }
        sent += 1;
    }
    (true, sent)
}

/// Takes inbound streams off libp2p-stream's accept channels as fast as they come (those
/// channels hold one stream; a second one arriving before the first is taken is dropped).
/// Media streams are taken only from peers in `admitted`; room streams from anyone (that is
/// how a newcomer asks in), at most [`MAX_ROOM_STREAMS_PER_PEER`] per peer at once.
pub fn spawn_acceptors(
    mut room_incoming: libp2p_stream::IncomingStreams,
    mut media_incoming: libp2p_stream::IncomingStreams,
    inbound: mpsc::Sender<Inbound>,
    media: mpsc::Sender<Inbound>,
    admitted: Admitted,
) {
    tokio::spawn(async move {
        let active: Arc<Mutex<HashMap<PeerId, usize>>> = Arc::default();
        while let Some((peer, stream)) = room_incoming.next().await {
            let Some(slot) = StreamSlot::take(&active, peer, MAX_ROOM_STREAMS_PER_PEER) else {
                debug!(%peer, "too many room streams from one peer; dropping one");
                continue;
            };
            let msg = Inbound::RoomStream {
                peer,
                stream,
                initiator: false,
                slot: Some(slot),
            };
            if inbound.send(msg).await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        let active: Arc<Mutex<HashMap<PeerId, usize>>> = Arc::default();
        while let Some((peer, stream)) = media_incoming.next().await {
            if !admitted.lock().is_ok_and(|a| a.contains(&peer)) {
                debug!(%peer, "media stream from a peer outside the room; dropping it");
                continue;
            }
            match StreamSlot::take(&active, peer, MAX_MEDIA_STREAMS_PER_PEER) {
                Some(slot) => spawn_media_receiver(peer, stream, media.clone(), slot),
                None => debug!(%peer, "too many media streams from one peer; dropping one"),
            }
        }
    });
}

/// One of a peer's inbound stream slots; released on drop.
pub struct StreamSlot {
    active: Arc<Mutex<HashMap<PeerId, usize>>>,
    peer: PeerId,
}

impl StreamSlot {
    pub(crate) fn take(
        active: &Arc<Mutex<HashMap<PeerId, usize>>>,
        peer: PeerId,
        max: usize,
    ) -> Option<Self> {
        let mut map = active.lock().ok()?;
        let n = map.entry(peer).or_insert(0);
        if *n >= max {
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
    let stream_id = next_stream_id();
    tokio::spawn(async move {
        let _slot = slot;
        while let Some(bytes) = read_frame(&mut stream, MAX_MEDIA_FRAME).await {
            let at_ms = now_ms();
            debug!(target: WIRE_TARGET, %peer, len = bytes.len(), at_ms, "media frame received");
            // Never block the reader on a busy driver: a full queue drops the frame (the
            // jitter buffer counts it as lost).
            let msg = Inbound::Media {
                peer,
                stream_id,
                bytes,
                at_ms,
            };
            match inbound.try_send(msg) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
        let _ = inbound.send(Inbound::MediaEnd { peer, stream_id }).await;
    });
}
