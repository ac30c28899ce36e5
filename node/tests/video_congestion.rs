//! Video congestion, in process: three nodes on loopback, Ann sends a 30 fps camera track
//! (synthetic frames: the node needs no codec, only sizes, keyframes and temporal layers of
//! an `L1T2` stream) while her video writer toward Bob is throttled in user space to less
//! than the track's rate (`CONFAB_TEST_VIDEO_THROTTLE`). Checks: Bob's video degrades (fewer
//! frames, the upper layer thinned, latency bounded) while Cat's is untouched, and Ann's
//! audio at Bob keeps >= 95 % of its frames and the latency it has at Cat.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod inproc;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use confab_node::call::video::{LocalFrame, RemoteFrame, VideoPorts, VideoSink, VideoStats};
use confab_node::call::{CallConfig, CallEvent, CallEvents, CallHandle};
use confab_node::clock::now_ms;
use confab_node::media::sink::Discard;
use confab_node::media::source;
use confab_node::Node;
use confab_protocol::ticket::Ticket;
use confab_protocol::video::TrackKind;
use inproc::{addrs_of, node, secret, ticket};
use tokio::sync::mpsc;

const FPS: u64 = 30;
/// Bytes per synthetic frame: 30 fps of them is 150 kB/s (1.2 Mbit/s).
const FRAME_BYTES: usize = 5_000;
/// Ann's video writer toward Bob: enough for the base layer (75 kB/s), not for both.
const THROTTLE: u64 = 100_000;
const SECS: u64 = 8;

/// What a node's page would get: (sender, seq, layer, received ms, capture ms).
type Got = Arc<Mutex<Vec<(String, u32, u8, u64, u64)>>>;

struct Page {
    got: Got,
    keyframe: Arc<AtomicBool>,
}

impl VideoSink for Page {
    fn frame(&mut self, f: RemoteFrame) {
        let row = (
            f.from.to_string(),
            f.seq,
            f.meta.layer,
            now_ms(),
            f.meta.capture_us / 1000,
        );
        self.got.lock().unwrap().push(row);
    }

    fn keyframe_wanted(&mut self, _kind: TrackKind) {
        self.keyframe.store(true, Ordering::SeqCst);
    }
}

struct Member {
    node: Node,
    handle: CallHandle,
    events: CallEvents,
    peer: String,
    got: Got,
    keyframe: Arc<AtomicBool>,
    stats: Arc<Mutex<VideoStats>>,
    frames: mpsc::Sender<LocalFrame>,
}

async fn join(node: Node, t: &Ticket, name: &str, hz: f64) -> Member {
    let (handle, events) = node
        .start_call(
            CallConfig::new(t.clone(), name),
            Box::new(source::tone(hz)),
            Box::new(Discard),
        )
        .await
        .expect("start call");
    let (frames, from_page) = mpsc::channel(16);
    let got = Got::default();
    let keyframe = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Mutex::new(VideoStats::default()));
    handle
        .attach_video(VideoPorts {
            from_page,
            sink: Box::new(Page {
                got: got.clone(),
                keyframe: keyframe.clone(),
            }),
            stats: stats.clone(),
        })
        .await
        .expect("video");
    Member {
        peer: node.peer_id().to_string(),
        node,
        handle,
        events,
        got,
        keyframe,
        stats,
        frames,
    }
}

async fn wait_members(m: &mut Member, n: usize) {
    let mut seen = 0;
    while seen < n {
        let ev = tokio::time::timeout(Duration::from_secs(15), m.events.next())
            .await
            .expect("admissions in time")
            .expect("the call goes on");
        if matches!(ev, CallEvent::MemberAdmitted { .. }) {
            seen += 1;
        }
    }
}

/// Sends an `L1T2` camera track for [`SECS`]: even frames base layer, odd upper; a keyframe
/// first and whenever the node asks for one.
async fn send_camera(m: &Member) -> u64 {
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / FPS));
    let mut sent = 0;
    for i in 0..SECS * FPS {
        tick.tick().await;
        let keyframe = i == 0 || m.keyframe.swap(false, Ordering::SeqCst);
        let f = LocalFrame {
            kind: TrackKind::Camera,
            keyframe,
            layer: if keyframe { 0 } else { (i % 2) as u8 },
            width: 640,
            height: 360,
            capture_us: now_ms() * 1000,
            data: vec![(i % 251) as u8; FRAME_BYTES],
        };
        m.frames.send(f).await.expect("the call takes frames");
        sent += 1;
    }
    sent
}

/// Frames from `from` in the last `secs` of the sending, and their latency p50, ms.
fn video_at(got: &Got, from: &str, since_ms: u64) -> (usize, u64) {
    let g = got.lock().unwrap();
    let mut lat: Vec<u64> = g
        .iter()
        .filter(|r| r.0 == from && r.4 >= since_ms)
        .map(|r| r.3.saturating_sub(r.4))
        .collect();
    lat.sort_unstable();
    let p50 = lat.get(lat.len() / 2).copied().unwrap_or(u64::MAX);
    (lat.len(), p50)
}

/// Ann's audio at `m`: (share of frames received, mouth-to-ear p50 ms).
async fn audio_from(m: &Member, ann: &str) -> (f64, f64) {
    let s = m.handle.stats().await.expect("stats");
    let st = s
        .streams
        .iter()
        .find(|x| x.from == ann)
        .expect("Ann's audio");
    let share = st.frames_received as f64 / (st.frames_received + st.frames_lost).max(1) as f64;
    (share, st.mouth_to_ear_p50_ms.unwrap_or(f64::MAX))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_peer_gets_less_video_and_the_others_and_audio_do_not_suffer() {
    let (sa, sb, sc) = (secret(), secret(), secret());
    let (na, nb, nc) = (node(sa), node(sb), node(sc));
    // The only test in this binary: the variable is read when Ann's writer toward Bob starts.
    std::env::set_var(
        "CONFAB_TEST_VIDEO_THROTTLE",
        format!("{}={THROTTLE}", nb.peer_id()),
    );
    let t = ticket(&sa, &addrs_of(&na).await);
    let mut ann = join(na, &t, "ann", 440.0).await;
    let mut bob = join(nb, &t, "bob", 550.0).await;
    let mut cat = join(nc, &t, "cat", 660.0).await;
    for m in [&mut ann, &mut bob, &mut cat] {
        wait_members(m, 2).await;
    }
    let started = now_ms();
    let sent = send_camera(&ann).await;
    // The last frames in flight arrive (or are dropped) within the queue's bound.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let measured_from = started + 3_000;
    let window_frames = (SECS - 3) * FPS;
    let (at_bob, bob_p50) = video_at(&bob.got, &ann.peer, measured_from);
    let (at_cat, cat_p50) = video_at(&cat.got, &ann.peer, measured_from);
    let (bob_audio, bob_ear) = audio_from(&bob, &ann.peer).await;
    let (cat_audio, cat_ear) = audio_from(&cat, &ann.peer).await;
    let stats = ann.stats.lock().unwrap().clone();
    let to_bob = stats.sent.get(&bob.peer).cloned().unwrap_or_default();
    eprintln!(
        "sent {sent}; in the last {} s: Bob {at_bob} frames (p50 {bob_p50} ms), Cat {at_cat} (p50 {cat_p50} ms); \
         toward Bob {to_bob:?}; audio share/p50 at Bob {bob_audio:.3}/{bob_ear:.0} ms, at Cat {cat_audio:.3}/{cat_ear:.0} ms",
        SECS - 3
    );
    assert!(
        at_cat as f64 >= 0.95 * window_frames as f64,
        "Cat got {at_cat} of {window_frames}"
    );
    assert!(cat_p50 <= 50, "Cat's video p50 {cat_p50} ms");
    assert!(
        to_bob.thinned > 0 && to_bob.dropped > 0,
        "Bob was never thinned: {to_bob:?}"
    );
    assert!(
        (at_bob as f64) < 0.8 * window_frames as f64 && at_bob as f64 > 0.3 * window_frames as f64,
        "Bob's video degrades but goes on: {at_bob} of {window_frames}"
    );
    assert!(bob_p50 <= 400, "Bob's video p50 {bob_p50} ms");
    assert!(
        bob_audio >= 0.95,
        "Ann's audio at Bob: {bob_audio:.3} of the frames"
    );
    assert!(
        (bob_ear - cat_ear).abs() <= 20.0,
        "Ann's audio latency at Bob {bob_ear:.0} ms, at Cat {cat_ear:.0} ms"
    );
    for m in [ann, bob, cat] {
        m.handle.leave().await.expect("leave");
        m.node.shutdown().await;
    }
}
