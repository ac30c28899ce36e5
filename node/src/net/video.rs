//! The tasks that move video on `/confab/video/1`, apart from audio.
//!
//! Toward each member: a [`VideoQueue`] bounded in bytes and in waiting time, into which
//! whole frames go or not at all (a frame that does not fit, or comes while the oldest one
//! has waited [`VIDEO_QUEUE_DELAY`], is dropped and reported, so the sender can thin what it
//! sends that peer), and a writer task that opens the stream when there is something to
//! send. From each member: reader tasks that hand every message to the driver on a queue of
//! its own ([`VIDEO_INBOUND_QUEUE`]), never waiting (a full queue drops the message).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confab_protocol::video::wire::MAX_VIDEO_MESSAGE;
use futures::{AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream};
use tokio::sync::{mpsc, Notify};
use tracing::debug;

use super::streams::{next_stream_id, read_frame, write_frame, Admitted, StreamSlot};
use super::swarm::VIDEO_PROTOCOL;

/// Bytes of video queued toward one peer (about 0.7 s of a 3 Mbit/s camera and screen).
pub const VIDEO_QUEUE_BYTES: usize = 256 * 1024;
/// A frame is refused while the oldest one queued has waited this long: the link toward
/// the peer does not keep up, and waiting longer would only add latency.
pub const VIDEO_QUEUE_DELAY: Duration = Duration::from_millis(150);
/// Small messages (keyframe requests) queued toward one peer beyond the byte bound.
const CONTROL_MESSAGES: usize = 8;
/// Video messages queued from stream tasks to the driver.
pub const VIDEO_INBOUND_QUEUE: usize = 2048;
/// Inbound video streams one peer may hold open at once.
const MAX_VIDEO_STREAMS_PER_PEER: usize = 2;
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the writer reopens a broken stream in a row before it gives up.
const OPEN_ATTEMPTS: u32 = 5;

/// One video message from a member.
pub struct VideoInbound {
    pub peer: PeerId,
    pub bytes: Vec<u8>,
    pub at_ms: u64,
}

#[derive(Default)]
struct QueueState {
    frames: VecDeque<(Instant, Vec<u8>)>,
    bytes: usize,
    controls: VecDeque<Vec<u8>>,
    closed: bool,
}

/// Messages waiting for one peer's video writer.
pub struct VideoQueue {
    inner: Mutex<QueueState>,
    notify: Notify,
    /// A user-space cap on the writer, bytes per second (tests of congestion).
    throttle: Option<u64>,
}

impl VideoQueue {
    pub fn new(throttle: Option<u64>) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(QueueState::default()),
            notify: Notify::new(),
            throttle,
        })
    }

    /// Queues every message of one frame, or none if they do not all fit (false).
    pub fn push_frame(&self, messages: &[Vec<u8>]) -> bool {
        let len: usize = messages.iter().map(Vec::len).sum();
        let Ok(mut g) = self.inner.lock() else {
            return false;
        };
        let now = Instant::now();
        let late = g
            .frames
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= VIDEO_QUEUE_DELAY);
        if g.closed || late || g.bytes + len > VIDEO_QUEUE_BYTES {
            return false;
        }
        g.bytes += len;
        g.frames.extend(messages.iter().map(|m| (now, m.clone())));
        drop(g);
        self.notify.notify_one();
        true
    }

    /// Queues a small control message (a keyframe request) ahead of the frames.
    pub fn push_control(&self, message: Vec<u8>) -> bool {
        let Ok(mut g) = self.inner.lock() else {
            return false;
        };
        if g.closed || g.controls.len() >= CONTROL_MESSAGES {
            return false;
        }
        g.controls.push_back(message);
        drop(g);
        self.notify.notify_one();
        true
    }

    /// Bytes waiting now.
    pub fn queued_bytes(&self) -> usize {
        self.inner.lock().map_or(0, |g| g.bytes)
    }

    pub fn close(&self) {
        if let Ok(mut g) = self.inner.lock() {
            g.closed = true;
        }
        self.notify.notify_one();
    }

    /// Waits for something to send (true) or the close (false); does not take it.
    async fn ready(&self) -> bool {
        loop {
            match self.inner.lock() {
                Ok(g) if !g.frames.is_empty() || !g.controls.is_empty() => return true,
                Ok(g) if g.closed => return false,
                Ok(_) => {}
                Err(_) => return false,
            }
            self.notify.notified().await;
        }
    }

    async fn pop(&self) -> Option<Vec<u8>> {
        loop {
            if let Ok(mut g) = self.inner.lock() {
                if let Some(m) = g.controls.pop_front() {
                    return Some(m);
                }
                if let Some((_, m)) = g.frames.pop_front() {
                    g.bytes -= m.len();
                    return Some(m);
                }
                if g.closed {
                    return None;
                }
            } else {
                return None;
            }
            self.notify.notified().await;
        }
    }
}

/// Starts the writer of `queue` toward `peer`.
pub fn spawn_video_sender(control: libp2p_stream::Control, peer: PeerId, queue: Arc<VideoQueue>) {
    tokio::spawn(async move {
        if let Err(reason) = send_video(control, peer, &queue).await {
            debug!(%peer, %reason, "video writer gave up");
        }
        // Nothing is written any more: let pushes fail rather than pile up.
        queue.close();
    });
}

async fn send_video(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    queue: &VideoQueue,
) -> Result<(), String> {
    let mut attempts = 0;
    let mut last_error = String::new();
    while attempts < OPEN_ATTEMPTS {
        if !queue.ready().await {
            return Ok(());
        }
        attempts += 1;
        let open = tokio::time::timeout(OPEN_TIMEOUT, control.open_stream(peer, VIDEO_PROTOCOL));
        let mut stream = match open.await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                last_error = e.to_string();
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(_) => {
                last_error = "timed out opening the video stream".into();
                continue;
            }
        };
        let (finished, sent) = pump(&mut stream, queue).await;
        if finished {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, stream.close()).await;
            return Ok(());
        }
        if sent > 0 {
            attempts = 0;
        }
        last_error = "video stream broke".into();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last_error)
}

/// Writes until the queue closes (true) or the stream breaks (false), with the count sent.
async fn pump(stream: &mut Stream, queue: &VideoQueue) -> (bool, u64) {
    let mut sent = 0;
    let started = tokio::time::Instant::now();
    let mut bytes: u64 = 0;
    while let Some(m) = queue.pop().await {
        if !write_frame(stream, &m, WRITE_TIMEOUT).await {
            return (false, sent);
        }
        sent += 1;
        bytes += m.len() as u64 + 2;
        if let Some(rate) = queue.throttle.filter(|r| *r > 0) {
            let due = started + Duration::from_secs_f64(bytes as f64 / rate as f64);
            tokio::time::sleep_until(due).await;
        }
    }
    (true, sent)
}

/// Takes inbound video streams from admitted peers and reads them.
pub fn spawn_video_acceptor(
    mut incoming: libp2p_stream::IncomingStreams,
    tx: mpsc::Sender<VideoInbound>,
    admitted: Admitted,
) {
    tokio::spawn(async move {
        let active: Arc<Mutex<HashMap<PeerId, usize>>> = Arc::default();
        while let Some((peer, stream)) = incoming.next().await {
            if !admitted.lock().is_ok_and(|a| a.contains(&peer)) {
                debug!(%peer, "video stream from a peer outside the room; dropping it");
                continue;
            }
            match StreamSlot::take(&active, peer, MAX_VIDEO_STREAMS_PER_PEER) {
                Some(slot) => spawn_reader(peer, stream, tx.clone(), slot),
                None => debug!(%peer, "too many video streams from one peer; dropping one"),
            }
        }
    });
}

fn spawn_reader(
    peer: PeerId,
    mut stream: Stream,
    tx: mpsc::Sender<VideoInbound>,
    slot: StreamSlot,
) {
    let _id = next_stream_id();
    tokio::spawn(async move {
        let _slot = slot;
        while let Some(bytes) = read_frame(&mut stream, MAX_VIDEO_MESSAGE).await {
            let msg = VideoInbound {
                peer,
                bytes,
                at_ms: crate::clock::now_ms(),
            };
            match tx.try_send(msg) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    });
}

/// A test's cap on the video writer toward one peer: `CONFAB_TEST_VIDEO_THROTTLE` holds
/// `PEER_ID=BYTES_PER_SECOND`.
pub fn throttle_for(peer: &PeerId) -> Option<u64> {
    let v = std::env::var("CONFAB_TEST_VIDEO_THROTTLE").ok()?;
    let (p, rate) = v.split_once('=')?;
    (p == peer.to_string()).then(|| rate.parse().ok()).flatten()
}
