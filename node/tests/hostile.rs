//! Hostile peers against a running 3-person call, in process on loopback: strangers without
//! the ticket flood room streams, frames, zero-length frames and junk media, and a stranger
//! sends a forged `Reject` to a joiner; members with the ticket never say `Hello`, gossip
//! rosters of made-up peers, or jump their sequence numbers. The honest members must keep
//! at least 95 % of their frames and their mouth-to-ear p50 within 10 ms of the same call
//! without the attackers; nothing panics or hangs, and the process stays under 100 MB.
//!
//! The tests take turns (one lock): each compares a call with its attackers against the
//! same call without, and a neighbour's call on the same two cores would blur that.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod inproc;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use confab_node::call::{CallConfig, CallEnd, CallEvent, CallEvents, CallHandle};
use confab_node::clock::now_ms;
use confab_node::media::sink::{AudioSink, Discard, Tee, WavPerSender, WavTimeline};
use confab_node::media::source;
use confab_node::net::{build_swarm, keypair, MEDIA_PROTOCOL, ROOM_PROTOCOL};
use confab_node::Node;
use confab_protocol::crypto::SenderKey;
use confab_protocol::ticket::Ticket;
use confab_protocol::wire::Control;
use confab_protocol::wire::{RejectReason, RoomFrame};
use futures::{AsyncWriteExt, StreamExt};
use inproc::rogue::{made_up_roster, opus_packet, send_media, Rogue, RogueSession};
use inproc::{addrs_of, connected_peer, node, secret, ticket};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};

/// The node's first listen address, with its peer id.
async fn addr_of(node: &Node) -> Multiaddr {
    addrs_of(node).await[0]
        .clone()
        .with(libp2p::multiaddr::Protocol::P2p(node.peer_id()))
}

const CALL: Duration = Duration::from_secs(5);

/// One test at a time (see the module's note).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start(node: &Node, t: &Ticket, i: usize) -> (CallHandle, CallEvents) {
    start_with(node, t, i, Box::new(Discard)).await
}

async fn start_with(
    node: &Node,
    t: &Ticket,
    i: usize,
    sink: Box<dyn AudioSink>,
) -> (CallHandle, CallEvents) {
    node.start_call(
        CallConfig::new(t.clone(), format!("member-{i}")),
        Box::new(source::test_signal(i)),
        sink,
    )
    .await
    .expect("start call")
}

/// What member `i` plays into: nothing, or (with `out`) a WAV file per sender and the
/// playout timeline, as `confab call --output` records.
fn sink_for(out: Option<&Path>, i: usize) -> Box<dyn AudioSink> {
    let Some(dir) = out else {
        return Box::new(Discard);
    };
    let dir = dir.join(format!("member-{i}"));
    Box::new(Tee::new(vec![
        Box::new(WavPerSender::create(&dir).unwrap()),
        Box::new(WavTimeline::create(&dir.join("timeline"), now_ms()).unwrap()),
    ]))
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
    call_of_three_for(nodes, t, CALL, None, during).await
}

/// [`call_of_three`] for `length`, recording into `out` if given.
async fn call_of_three_for(
    nodes: &[Node; 3],
    t: &Ticket,
    length: Duration,
    out: Option<&Path>,
    during: impl std::future::Future<Output = ()>,
) -> Vec<PairFigures> {
    let mut calls = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        calls.push(start_with(n, t, i, sink_for(out, i)).await);
    }
    for (_, events) in calls.iter_mut() {
        until_admitted(events, 2).await;
    }
    tokio::select! {
        () = during => {}
        () = tokio::time::sleep(length) => {}
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
        let (control, peer) = connected_peer(&secret(), targets).await;
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

/// Three nodes on loopback and a ticket for a room the first one creates.
struct Room {
    nodes: [Node; 3],
    addrs: Vec<Multiaddr>,
    ids: Vec<PeerId>,
    ticket: Ticket,
}

impl Room {
    async fn new() -> Room {
        let secrets = [secret(), secret(), secret()];
        let nodes = [node(secrets[0]), node(secrets[1]), node(secrets[2])];
        let mut addrs = Vec::new();
        for n in &nodes {
            addrs.push(addr_of(n).await);
        }
        let ticket = ticket(&secrets[0], std::slice::from_ref(&addrs[0]));
        let ids = nodes.iter().map(Node::peer_id).collect();
        Room {
            nodes,
            addrs,
            ids,
            ticket,
        }
    }

    async fn shutdown(self) {
        for n in self.nodes {
            tokio::time::timeout(Duration::from_secs(5), n.shutdown())
                .await
                .expect("no hang on shutdown");
        }
    }
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

fn check_rss() {
    let rss = peak_rss_mb();
    assert!(rss < 100.0, "peak RSS {rss:.1} MB");
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
    let _serial = SERIAL.lock().await;
    let Room {
        nodes,
        addrs,
        ids,
        ticket: t,
    } = Room::new().await;
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
    check_rss();
    for n in nodes {
        tokio::time::timeout(Duration::from_secs(5), n.shutdown())
            .await
            .expect("no hang on shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_forged_reject_does_not_end_a_join() {
    let _serial = SERIAL.lock().await;
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
    let _serial = SERIAL.lock().await;
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

/// The Hello deadline of a session (the room's `handshake_timeout_ms`, from the start of
/// the handshake).
const HELLO_DEADLINE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_that_never_say_hello_get_no_key_and_are_dropped() {
    let _serial = SERIAL.lock().await;
    let room = Room::new().await;
    let (nodes, t) = (&room.nodes, &room.ticket);
    let baseline = call_of_three(nodes, t, std::future::pending()).await;
    // Three members with the ticket per node complete the handshake and then say nothing.
    let sessions: Arc<Mutex<Vec<RogueSession>>> = Arc::default();
    let attack = async {
        for _ in 0..3 {
            let rogue = Rogue::connect(&room.addrs).await;
            for id in &room.ids {
                let s = rogue.handshake(*id, t).await;
                sessions.lock().unwrap().push(s);
            }
            std::mem::forget(rogue);
        }
        std::future::pending::<()>().await;
    };
    let length = HELLO_DEADLINE + Duration::from_secs(3);
    let attacked = call_of_three_for(nodes, t, length, None, attack).await;
    check(&baseline, &attacked);
    check_rss();
    let sessions = std::mem::take(&mut *sessions.lock().unwrap());
    assert_eq!(sessions.len(), 9);
    for s in &sessions {
        assert!(!s.got_key(), "a member without Hello got the media key");
        let closed = s
            .closed_after()
            .expect("the session without Hello was dropped");
        assert!(
            closed <= HELLO_DEADLINE + Duration::from_secs(2),
            "dropped only after {closed:?}"
        );
        let heard = s.heard.lock().unwrap();
        assert!(
            !heard
                .controls
                .iter()
                .any(|c| matches!(c, Control::Roster { .. })),
            "a member without Hello was told the roster"
        );
    }
    room.shutdown().await;
}

/// A TCP listener on loopback that counts the connections made to it: where a made-up
/// roster sends the members' dials.
fn dial_target() -> (u16, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if conn.is_ok() {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    (port, count)
}

/// Most peers named only by rosters a node dials at once (the node's `MAX_ROSTER_REDIALS`).
const ROSTER_REDIALS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_made_up_gossip_makes_few_dials() {
    let _serial = SERIAL.lock().await;
    let room = Room::new().await;
    let (nodes, t) = (&room.nodes, &room.ticket);
    let baseline = call_of_three(nodes, t, std::future::pending()).await;
    let (port, dials) = dial_target();
    // Each entry: the counting listener, and junk no node may dial.
    let addrs = vec![
        format!("/ip4/127.0.0.1/tcp/{port}"),
        "/ip4/0.0.0.0/tcp/22".to_string(),
        "/ip4/1.2.3.4".to_string(),
        "not an address".to_string(),
    ];
    let attack = async {
        let rogue = Rogue::connect(&room.addrs).await;
        let key = SenderKey::new(&mut rand::rngs::OsRng);
        let mut sessions = rogue.join(&room.ids, t, "gossip", &key).await;
        // 40 rosters a second, each naming 64 made-up peers (the room frame budget is 50).
        loop {
            for s in &mut sessions {
                s.send(&made_up_roster(64, &addrs)).await;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };
    let attacked = call_of_three(nodes, t, attack).await;
    check(&baseline, &attacked);
    check_rss();
    // Every node dials at most ROSTER_REDIALS made-up peers, once a second, while the call
    // and its 2 s drain last (once more as each is first named, and two rounds of slack).
    let seconds = (CALL + Duration::from_secs(2)).as_secs() as usize + 1;
    let bound = 3 * ROSTER_REDIALS * (seconds + 3);
    let made = dials.load(Ordering::Relaxed);
    eprintln!("dials to a made-up address: {made} (bound {bound})");
    assert!(
        made <= bound,
        "{made} dials to a made-up address (bound {bound})"
    );
    room.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_sequence_jumps_cost_neither_memory_nor_disk() {
    let _serial = SERIAL.lock().await;
    let room = Room::new().await;
    let (nodes, t) = (&room.nodes, &room.ticket);
    let out = tempfile::tempdir().unwrap();
    let baseline =
        call_of_three_for(nodes, t, CALL, Some(out.path()), std::future::pending()).await;
    let rogue_peer: Arc<Mutex<Option<PeerId>>> = Arc::default();
    let attack = async {
        let rogue = Rogue::connect(&room.addrs).await;
        *rogue_peer.lock().unwrap() = Some(rogue.peer);
        let mut key = SenderKey::new(&mut rand::rngs::OsRng);
        let mut media = Vec::new();
        let sessions = rogue.join(&room.ids, t, "jumper", &key).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        for id in &room.ids {
            media.push(rogue.media_stream(*id).await);
        }
        let packet = opus_packet();
        // Forward by a million, back by most of the range (a wrap), by 2^16, by one.
        let jumps = [1_000_000u32, 3_000_000_000, 65_536, 1];
        for i in 0usize.. {
            if i % 5 == 4 {
                key.skip(jumps[(i / 5) % jumps.len()]);
            }
            let frame = key.encrypt(now_ms(), &packet, None).unwrap().encode();
            for m in &mut media {
                send_media(m, &frame).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(sessions);
    };
    let length = Duration::from_secs(8);
    let out2 = tempfile::tempdir().unwrap();
    let attacked = call_of_three_for(nodes, t, length, Some(out2.path()), attack).await;
    check(&baseline, &attacked);
    check_rss();
    // The jumper's file at each member: frames and silence no longer than the call.
    let rogue = rogue_peer.lock().unwrap().expect("the rogue connected");
    let call_secs = (length + Duration::from_secs(4)).as_secs();
    for i in 0..3 {
        let f = out2.path().join(format!("member-{i}/{rogue}.wav"));
        let len = std::fs::metadata(&f)
            .expect("the jumper was recorded")
            .len();
        eprintln!("member-{i}: the jumper's file is {len} bytes");
        assert!(
            len <= call_secs * 96_000 + 1024,
            "{} bytes for a sender heard for under {call_secs} s",
            len
        );
    }
    room.shutdown().await;
}
