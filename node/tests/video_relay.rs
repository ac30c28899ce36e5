//! A relayed video call: two nodes that may only reach each other through an in-process
//! `confab-relay`, with a TCP forwarder in front of the relay that records every byte the
//! relay gets and sends. Ann sends camera frames of random bytes; Bob's page side gets every
//! one of them intact, and the capture of what the relay forwarded contains none of them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod inproc;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use confab_node::call::video::{LocalFrame, RemoteFrame, VideoPorts, VideoSink, VideoStats};
use confab_node::call::{CallConfig, CallEvent, Path};
use confab_node::clock::now_ms;
use confab_node::media::sink::Discard;
use confab_node::media::source;
use confab_node::{Node, NodeConfig};
use confab_protocol::video::TrackKind;
use inproc::{secret, ticket};
use libp2p::multiaddr::Protocol;
use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const FRAMES: usize = 60;
const FRAME_BYTES: usize = 6_000;
/// Most bytes kept per direction of one forwarded connection.
const CAPTURE_LIMIT: usize = 16 * 1024 * 1024;

type Capture = Arc<Mutex<Vec<Vec<u8>>>>;

/// Copies `from` to `to`, keeping what passed in a new entry of `capture`.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    capture: Capture,
) {
    let slot = {
        let mut c = capture.lock().unwrap();
        c.push(Vec::new());
        c.len() - 1
    };
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        let mut c = capture.lock().unwrap();
        if c[slot].len() + n <= CAPTURE_LIMIT {
            c[slot].extend_from_slice(&buf[..n]);
        }
    }
    let _ = to.shutdown().await;
}

/// A forwarder to `target` on a port of its own; returns that port.
async fn forwarder(target: u16, capture: Capture) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                continue;
            };
            let (ir, iw) = inbound.into_split();
            let (or, ow) = outbound.into_split();
            tokio::spawn(pipe(ir, ow, capture.clone()));
            tokio::spawn(pipe(or, iw, capture.clone()));
        }
    });
    port
}

/// A page that hands on the frames it gets.
struct Keep(mpsc::UnboundedSender<Vec<u8>>);

impl VideoSink for Keep {
    fn frame(&mut self, f: RemoteFrame) {
        let _ = self.0.send(f.data);
    }

    fn keyframe_wanted(&mut self, _kind: TrackKind) {}
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_forwards_no_video_frame_it_could_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = confab_relay::Config {
        data_dir: dir.path().to_path_buf(),
        ..confab_relay::Config::default()
    };
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    let relay = confab_relay::start(cfg).await.expect("relay");
    let relay_port = relay
        .listen_addrs()
        .iter()
        .find_map(|a| {
            a.iter().find_map(|p| match p {
                Protocol::Tcp(port) => Some(port),
                _ => None,
            })
        })
        .expect("relay port");
    let capture = Capture::default();
    let port = forwarder(relay_port, capture.clone()).await;
    let relay_addr: libp2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
    let relay_addr = relay_addr.with(Protocol::P2p(relay.peer_id()));
    let relayed = |identity| {
        Node::start(NodeConfig {
            identity,
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            relays: vec![relay_addr.clone()],
            hole_punch: false,
            relay_only: true,
        })
        .expect("node")
    };
    let (sa, sb) = (secret(), secret());
    let (na, nb) = (relayed(sa), relayed(sb));
    let circuit = relay_addr
        .clone()
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(na.peer_id()));
    let t = ticket(&sa, &[circuit]);
    let config = |name: &str| CallConfig::new(t.clone(), name);
    let tone = || Box::new(source::tone(440.0));
    let (a, mut a_events) = na
        .start_call(config("ann"), tone(), Box::new(Discard))
        .await
        .expect("call");
    let (b, _b_events) = nb
        .start_call(config("bob"), tone(), Box::new(Discard))
        .await
        .expect("call");
    let b_id = nb.peer_id().to_string();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), a_events.next())
            .await
            .expect("admitted in time")
            .expect("call");
        if let CallEvent::MemberAdmitted { peer, path, .. } = ev {
            assert_eq!(peer, b_id);
            assert_eq!(path, Path::Relayed);
            break;
        }
    }
    let (tx, from_page) = mpsc::channel(16);
    let stats = Arc::new(Mutex::new(VideoStats::default()));
    a.attach_video(VideoPorts {
        from_page,
        sink: Box::new(Keep(mpsc::unbounded_channel().0)),
        stats: stats.clone(),
    })
    .await
    .unwrap();
    let (got_tx, mut got_rx) = mpsc::unbounded_channel();
    let (_unused, from_bob_page) = mpsc::channel(1);
    b.attach_video(VideoPorts {
        from_page: from_bob_page,
        sink: Box::new(Keep(got_tx)),
        stats: Arc::new(Mutex::new(VideoStats::default())),
    })
    .await
    .unwrap();
    let mut sent = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(33));
    for i in 0..FRAMES {
        tick.tick().await;
        let mut data = vec![0u8; FRAME_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut data);
        sent.push(data.clone());
        tx.send(LocalFrame {
            kind: TrackKind::Camera,
            keyframe: i == 0,
            layer: 0,
            width: 640,
            height: 360,
            capture_us: now_ms() * 1000,
            data,
        })
        .await
        .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < FRAMES {
        match tokio::time::timeout_at(deadline, got_rx.recv()).await {
            Ok(Some(f)) => got.push(f),
            _ => break,
        }
    }
    assert_eq!(
        got.len(),
        FRAMES,
        "Bob got {} of {FRAMES} frames",
        got.len()
    );
    assert!(got == sent, "Bob got exactly what Ann sent, in order");
    // A copy: the forwarder's tasks take the lock, so none is held while anything is awaited.
    let capture = capture.lock().unwrap().clone();
    let total: usize = capture.iter().map(Vec::len).sum();
    eprintln!(
        "the relay forwarded {total} bytes over {} directions",
        capture.len()
    );
    assert!(
        total >= FRAMES * FRAME_BYTES,
        "the video went through the relay ({total} bytes captured)"
    );
    for (i, f) in sent.iter().enumerate() {
        for probe in [&f[..32], &f[FRAME_BYTES / 2..FRAME_BYTES / 2 + 32]] {
            assert!(
                !capture.iter().any(|c| contains(c, probe)),
                "frame {i} can be read in what the relay forwarded"
            );
        }
    }
    b.leave().await.unwrap();
    a.leave().await.unwrap();
    na.shutdown().await;
    nb.shutdown().await;
    relay.shutdown().await.unwrap();
}
