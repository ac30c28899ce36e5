//! Hostile peers against a running 3-person call, in process on loopback: strangers without
//! the ticket flood room streams, frames, zero-length frames and junk media, and a stranger
//! sends a forged `Reject` to a joiner. The honest members must keep >= 95 % of their frames
//! and their mouth-to-ear p50 within 10 ms of the same call without the attackers; nothing
//! panics or hangs, and the process stays under 100 MB.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod inproc;

use std::time::Duration;

use confab_node::call::{CallConfig, CallEnd, CallEvent, CallEvents, CallHandle};
use confab_node::media::sink::Discard;
use confab_node::media::source;
use confab_node::net::{build_swarm, keypair, MEDIA_PROTOCOL, ROOM_PROTOCOL};
use confab_node::Node;
use confab_protocol::ticket::Ticket;
use confab_protocol::wire::{RejectReason, RoomFrame};
use futures::{AsyncWriteExt, StreamExt};
use inproc::{addrs_of, node, secret, ticket};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};

/// The node's first listen address, with its peer id.
async fn addr_of(node: &Node) -> Multiaddr {
    addrs_of(node).await[0]
        .clone()
        .with(libp2p::multiaddr::Protocol::P2p(node.peer_id()))
}

const CALL: Duration = Duration::from_secs(5);

async fn start(node: &Node, t: &Ticket, i: usize) -> (CallHandle, CallEvents) {
    node.start_call(
        CallConfig::new(t.clone(), format!("member-{i}")),
        Box::new(source::test_signal(i)),
        Box::new(Discard),
    )
    .await
    .expect("start call")
}

/// Waits until `events` has seen `n` members admitted.
async fn until_admitted(events: &mut CallEvents, n: usize) {
    let mut seen = 0;
    while seen < n {
        let ev = tokio::time::timeout(Duration::from_secs(15), events.next())
            .await
            .expect("admission in time")
            .expect("call running");
        match ev {
            CallEvent::MemberAdmitted { .. } => seen += 1,
            CallEvent::Ended(end) => panic!("the call ended: {:?}", end.error),
            _ => {}
        }
    }
}

/// One pair's figures: frames the sender sent to the receiver, frames received, p50.
struct PairFigures {
    sent: u64,
    received: u64,
    p50: f64,
}

/// Runs one 3-person call on the nodes for [`CALL`]; `during` runs meanwhile.
async fn call_of_three(
    nodes: &[Node; 3],
    t: &Ticket,
    during: impl std::future::Future<Output = ()>,
) -> Vec<PairFigures> {
    let mut calls = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        calls.push(start(n, t, i).await);
    }
    for (_, events) in calls.iter_mut() {
        until_admitted(events, 2).await;
    }
    tokio::select! {
        () = during => {}
        () = tokio::time::sleep(CALL) => {}
    }
    let mut ends: Vec<CallEnd> = Vec::new();
    for (h, _) in &calls {
        ends.push(
            h.leave_after_drain(Duration::from_secs(2))
                .await
                .expect("leave"),
        );
    }
    pairs(nodes, &ends)
}

fn pairs(nodes: &[Node; 3], ends: &[CallEnd]) -> Vec<PairFigures> {
    let ids: Vec<String> = nodes.iter().map(|n| n.peer_id().to_string()).collect();
    let mut out = Vec::new();
    for (ri, r) in ends.iter().enumerate() {
        for (si, s) in ends.iter().enumerate() {
            if si == ri {
                continue;
            }
            let sent = s.sent.get(&ids[ri]).map_or(0, |x| x.frames_sent);
            let rx = r
                .received
                .iter()
                .find(|x| x.from == ids[si])
                .expect("heard");
            out.push(PairFigures {
                sent,
                received: rx.frames_received,
                p50: rx.mouth_to_ear_p50_ms.unwrap_or(f64::MAX),
            });
        }
    }
    out
}

/// A stranger: a libp2p node of its own, without the ticket.
struct Stranger {
    control: libp2p_stream::Control,
    peer: PeerId,
}

impl Stranger {
    /// Connects to every address and keeps its swarm running.
    async fn connect(targets: &[Multiaddr]) -> Stranger {
        let mut swarm = build_swarm(keypair(&secret()).unwrap()).unwrap();
        let control = swarm.behaviour().stream.new_control();
        let peer = *swarm.local_peer_id();
        for a in targets {
            swarm.dial(a.clone()).unwrap();
        }
        let mut connected = 0;
        while connected < targets.len() {
            let ev = tokio::time::timeout(Duration::from_secs(10), swarm.select_next_some())
                .await
                .expect("the stranger connects");
            if let SwarmEvent::ConnectionEstablished { .. } = ev {
                connected += 1;
            }
        }
        tokio::spawn(async move {
            loop {
                swarm.select_next_some().await;
            }
        });
        Stranger { control, peer }
    }
}

fn frame(bytes: &[u8]) -> Vec<u8> {
    let mut v = (u16::try_from(bytes.len()).unwrap()).to_be_bytes().to_vec();
    v.extend_from_slice(bytes);
    v
}

/// Opens streams of `protocol` to `target` over and over and writes `payload` into each as
/// fast as the stream takes it, until the test stops it.
fn flood(
    mut control: libp2p_stream::Control,
    target: PeerId,
    protocol: libp2p::StreamProtocol,
    payload: Vec<u8>,
) {
    tokio::spawn(async move {
        loop {
            let Ok(Ok(mut s)) = tokio::time::timeout(
                Duration::from_secs(1),
                control.open_stream(target, protocol.clone()),
            )
            .await
            else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            // About a thousand frames a second per flood: the attacker shares these two
            // cores with its victims, and must not win by starving them of CPU.
            for _ in 0..10_000 {
                if s.write_all(&payload).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
}

/// Opens `n` room streams to `target` and leaves them open and silent.
fn hoard_streams(mut control: libp2p_stream::Control, target: PeerId, n: usize) {
    tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..n {
            if let Ok(Ok(s)) = tokio::time::timeout(
                Duration::from_millis(200),
                control.open_stream(target, ROOM_PROTOCOL),
            )
            .await
            {
                held.push(s);
            }
        }
        std::future::pending::<()>().await;
        drop(held);
    });
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn check(baseline: &[PairFigures], attacked: &[PairFigures]) {
    for (b, a) in baseline.iter().zip(attacked) {
        assert!(
            a.sent > 0 && a.received as f64 >= 0.95 * a.sent as f64,
            "frames {} of {}",
            a.received,
            a.sent
        );
        assert!(
            a.p50 <= b.p50 + 10.0,
            "p50 {} ms against {} ms without attackers",
            a.p50,
            b.p50
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_flooding_a_call_do_not_disturb_it() {
    let secrets = [secret(), secret(), secret()];
    let nodes = [node(secrets[0]), node(secrets[1]), node(secrets[2])];
    let mut addrs = Vec::new();
    for n in &nodes {
        addrs.push(addr_of(n).await);
    }
    let t = ticket(&secrets[0], std::slice::from_ref(&addrs[0]));
    let ids: Vec<PeerId> = nodes.iter().map(Node::peer_id).collect();
    let baseline = call_of_three(&nodes, &t, std::future::pending()).await;

    let attack = async {
        let junk_room = frame(&[0xee; 1000]);
        let zero = vec![0u8, 0u8];
        let junk_media = frame(&[0x55; 200]);
        for round in 0..3 {
            let s = Stranger::connect(&addrs).await;
            let (a, b, c) = (ids[0], ids[1], ids[2]);
            match round {
                0 => {
                    flood(s.control.clone(), a, ROOM_PROTOCOL, junk_room.clone());
                    flood(s.control.clone(), b, ROOM_PROTOCOL, zero.clone());
                    hoard_streams(s.control.clone(), c, 1000);
                }
                1 => {
                    for target in [a, b, c] {
                        flood(
                            s.control.clone(),
                            target,
                            MEDIA_PROTOCOL,
                            junk_media.clone(),
                        );
                    }
                }
                _ => {
                    // A handshake started and dropped, many times over.
                    for target in [a, b, c] {
                        flood(s.control.clone(), target, ROOM_PROTOCOL, frame(&[1, 0, 32]));
                    }
                }
            }
            let _ = s.peer;
            std::mem::forget(s);
        }
        std::future::pending::<()>().await;
    };
    let attacked = call_of_three(&nodes, &t, attack).await;
    check(&baseline, &attacked);
    let rss = peak_rss_mb();
    assert!(rss < 100.0, "peak RSS {rss:.1} MB");
    for n in nodes {
        tokio::time::timeout(Duration::from_secs(5), n.shutdown())
            .await
            .expect("no hang on shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_forged_reject_does_not_end_a_join() {
    let (sa, sb) = (secret(), secret());
    let (na, nb) = (node(sa), node(sb));
    let (a_addr, b_addr) = (addr_of(&na).await, addr_of(&nb).await);
    let t = ticket(&sa, std::slice::from_ref(&a_addr));
    let (a, mut a_events) = start(&na, &t, 0).await;
    // The stranger is connected to the joiner before the joiner's call starts, and sends
    // "wrong room secret" on a room stream of its own the moment it can.
    let s = Stranger::connect(std::slice::from_ref(&b_addr)).await;
    let mut control = s.control.clone();
    let b_id = nb.peer_id();
    let reject = frame(&RoomFrame::Reject(RejectReason::BadSecret).encode());
    let (b, mut b_events) = start(&nb, &t, 1).await;
    for _ in 0..20 {
        if let Ok(Ok(mut st)) = tokio::time::timeout(
            Duration::from_millis(200),
            control.open_stream(b_id, ROOM_PROTOCOL),
        )
        .await
        {
            let _ = st.write_all(&reject).await;
            let _ = st.flush().await;
        }
    }
    until_admitted(&mut b_events, 1).await;
    until_admitted(&mut a_events, 1).await;
    b.leave().await.unwrap();
    a.leave().await.unwrap();
    na.shutdown().await;
    nb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_tells_a_stranger_none_of_the_nodes_listen_addresses() {
    let n = node(secret());
    let addr = addr_of(&n).await;
    let listen = n.listen_addrs().await;
    let mut swarm = build_swarm(keypair(&secret()).unwrap()).unwrap();
    swarm.dial(addr).unwrap();
    let info = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let SwarmEvent::Behaviour(confab_node::net::BehaviourEvent::Identify(
                libp2p::identify::Event::Received { peer_id, info, .. },
            )) = swarm.select_next_some().await
            {
                if peer_id == n.peer_id() {
                    return info;
                }
            }
        }
    })
    .await
    .expect("identify arrives");
    assert!(!listen.is_empty());
    for a in &listen {
        assert!(
            !info.listen_addrs.contains(a),
            "{a} advertised to a stranger"
        );
    }
    n.shutdown().await;
}
