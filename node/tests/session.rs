//! In-process calls: several `Node`s (and an in-process `confab-relay`) in one tokio
//! runtime on loopback, steered through `CallHandle`s and observed through their events,
//! waiting on events instead of sleeping.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod inproc;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use confab_node::call::{CallConfig, CallEvent, CallEvents, CallHandle, Path};
use confab_node::clock::now_ms;
use confab_node::media::audio::AudioError;
use confab_node::media::sink::{AudioSink, Discard, Played};
use confab_node::media::source;
use confab_node::{Node, NodeConfig};
use confab_protocol::ticket::Ticket;
use inproc::{addrs_of, node, secret, ticket};

/// Every frame a sink was given: (sender, played at ms, RMS level 0..1).
type Heard = Arc<Mutex<Vec<(String, u64, f64)>>>;

struct Recorder(Heard);

impl AudioSink for Recorder {
    fn play(&mut self, f: Played<'_>) -> Result<(), AudioError> {
        let sq: f64 = f.pcm.iter().map(|s| f64::from(*s).powi(2)).sum();
        let rms = (sq / f.pcm.len().max(1) as f64).sqrt() / 32768.0;
        self.0
            .lock()
            .unwrap()
            .push((f.from.to_string(), f.at_ms, rms));
        Ok(())
    }
}

/// Waits (at most `within`) for an event that `pick` accepts.
async fn wait_for<T>(
    events: &mut CallEvents,
    within: Duration,
    mut pick: impl FnMut(&CallEvent) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let ev = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("timed out waiting for an event")
            .expect("the call ended");
        if let Some(t) = pick(&ev) {
            return t;
        }
        if let CallEvent::Ended(end) = &ev {
            panic!("the call ended: {:?}", end.error);
        }
    }
}

fn admitted(peer: &str) -> impl FnMut(&CallEvent) -> Option<Path> + '_ {
    move |ev| match ev {
        CallEvent::MemberAdmitted { peer: p, path, .. } if p == peer => Some(*path),
        _ => None,
    }
}

/// The first frame from `from` played at or after `since_ms` from which on everything
/// stays below (`quiet`) or above (`!quiet`) a level, if it exists yet.
fn settled_at(heard: &Heard, from: &str, since_ms: u64, quiet: bool) -> Option<u64> {
    let frames: Vec<(u64, f64)> = heard
        .lock()
        .unwrap()
        .iter()
        .filter(|(f, at, _)| f == from && *at >= since_ms)
        .map(|(_, at, rms)| (*at, *rms))
        .collect();
    let ok = |rms: f64| if quiet { rms < 1e-3 } else { rms > 0.01 };
    let first = frames
        .iter()
        .rposition(|(_, rms)| !ok(*rms))
        .map_or(0, |i| i + 1);
    // At least 10 frames (200 ms) of the new state, so a lull in the tone is not taken for it.
    (frames.len() >= first + 10).then(|| frames[first].0)
}

async fn wait_settled(heard: &Heard, from: &str, since_ms: u64, quiet: bool) -> u64 {
    for _ in 0..300 {
        if let Some(at) = settled_at(heard, from, since_ms, quiet) {
            return at;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "{from}'s audio never became {}",
        if quiet { "silent" } else { "audible" }
    );
}

async fn join(
    node: &Node,
    ticket: &Ticket,
    name: &str,
    hz: f64,
    sink: Box<dyn AudioSink>,
) -> (CallHandle, CallEvents) {
    node.start_call(
        CallConfig::new(ticket.clone(), name),
        Box::new(source::tone(hz)),
        sink,
    )
    .await
    .expect("start call")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mute_unmute_leave_and_rejoin_on_the_same_node() {
    let (sa, sb) = (secret(), secret());
    let (na, nb) = (node(sa), node(sb));
    let t = ticket(&sa, &addrs_of(&na).await);
    let (a_id, b_id) = (na.peer_id().to_string(), nb.peer_id().to_string());
    let heard: Heard = Arc::default();

    let (a, mut a_events) = join(&na, &t, "alice", 440.0, Box::new(Recorder(heard.clone()))).await;
    let (b, mut b_events) = join(&nb, &t, "bob", 660.0, Box::new(Discard)).await;
    let path = wait_for(&mut a_events, Duration::from_secs(10), admitted(&b_id)).await;
    assert_eq!(path, Path::Direct);
    wait_for(&mut b_events, Duration::from_secs(10), admitted(&a_id)).await;
    wait_settled(&heard, &b_id, 0, false).await;

    // Mute: what alice plays of bob falls to silence within 200 ms.
    let muted_at = now_ms();
    b.mute(true).await.unwrap();
    let silent_at = wait_settled(&heard, &b_id, muted_at, true).await;
    assert!(
        silent_at.saturating_sub(muted_at) <= 200,
        "silent {} ms after the mute",
        silent_at - muted_at
    );
    let unmuted_at = now_ms();
    b.mute(false).await.unwrap();
    let back_at = wait_settled(&heard, &b_id, unmuted_at, false).await;
    assert!(back_at.saturating_sub(unmuted_at) <= 200);
    let stats = b.stats().await.unwrap();
    assert!(!stats.muted && stats.frames_captured > 0);

    // Statistics ticks, one a second, with bob's stream in them.
    let mut ticks = Vec::new();
    while ticks.len() < 3 {
        let at = wait_for(&mut a_events, Duration::from_secs(3), |ev| match ev {
            CallEvent::Stats(s) => Some((s.at_ms, s.streams.iter().any(|x| x.from == b_id))),
            _ => None,
        })
        .await;
        ticks.push(at);
    }
    assert!(ticks.iter().all(|(_, has_bob)| *has_bob));
    for w in ticks.windows(2) {
        let gap = w[1].0 - w[0].0;
        assert!((800..=1300).contains(&gap), "ticks {gap} ms apart");
    }

    // Alice starts and stops recording: bob is told both times.
    a.start_recording(Box::new(Discard)).await.unwrap();
    let recording = |want: bool| {
        let a_id = a_id.clone();
        move |ev: &CallEvent| match ev {
            CallEvent::RecordingChanged { peer, on, .. } if *peer == a_id && *on == want => {
                Some(())
            }
            _ => None,
        }
    };
    wait_for(&mut b_events, Duration::from_secs(5), recording(true)).await;
    a.stop_recording().await.unwrap();
    wait_for(&mut b_events, Duration::from_secs(5), recording(false)).await;
    // A new source is heard: bob switches to silence.
    let switched_at = now_ms();
    b.set_source(Box::new(source::Silence)).await.unwrap();
    wait_settled(&heard, &b_id, switched_at, true).await;

    // Bob leaves; alice sees him go.
    let end = b.leave().await.unwrap();
    assert!(end.error.is_none(), "{:?}", end.error);
    assert!(end.sent.contains_key(&a_id));
    let reason = wait_for(&mut a_events, Duration::from_secs(5), |ev| match ev {
        CallEvent::MemberLeft { peer, reason, .. } if *peer == b_id => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reason, "Left");
    while let Some(ev) = b_events.next().await {
        if matches!(ev, CallEvent::Ended(_)) {
            break;
        }
    }
    assert!(b.is_closed() || b.stats().await.is_err());

    // A third call on bob's node, same swarm (same peer id), joins the same room.
    let (c, _c_events) = join(&nb, &t, "bob again", 880.0, Box::new(Discard)).await;
    let again = wait_for(&mut a_events, Duration::from_secs(10), admitted(&b_id)).await;
    assert_eq!(again, Path::Direct);
    c.leave().await.unwrap();
    a.leave().await.unwrap();
    na.shutdown().await;
    nb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_call_on_a_busy_node_is_refused_and_a_stranger_is_not_admitted() {
    let (sa, sb) = (secret(), secret());
    let (na, nb) = (node(sa), node(sb));
    let t = ticket(&sa, &addrs_of(&na).await);
    let (a, mut a_events) = join(&na, &t, "alice", 440.0, Box::new(Discard)).await;
    let busy = na
        .start_call(
            CallConfig::new(t.clone(), "again"),
            Box::new(source::Silence),
            Box::new(Discard),
        )
        .await;
    assert!(matches!(busy, Err(confab_node::call::CallError::Busy)));
    // Same room id and address, another secret: refused on both sides.
    let mut forged = t.clone();
    forged.room_secret = secret();
    let (_s, mut s_events) = join(&nb, &forged, "stranger", 660.0, Box::new(Discard)).await;
    let refused = wait_for(&mut s_events, Duration::from_secs(10), |ev| match ev {
        CallEvent::Ended(end) => Some(end.error.clone()),
        _ => None,
    })
    .await;
    let text = refused.expect("refused").to_string();
    assert!(text.contains("wrong room secret"), "{text}");
    wait_for(&mut a_events, Duration::from_secs(5), |ev| {
        matches!(ev, CallEvent::AdmissionFailed { .. }).then_some(())
    })
    .await;
    a.leave().await.unwrap();
    na.shutdown().await;
    nb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_an_in_process_relay_is_relayed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = confab_relay::Config {
        data_dir: dir.path().to_path_buf(),
        ..confab_relay::Config::default()
    };
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    let relay = confab_relay::start(cfg).await.expect("relay");
    let relay_addr = relay
        .listen_addrs()
        .iter()
        .find(|a| a.to_string().contains("/tcp/"))
        .cloned()
        .unwrap();
    let relay_addr = if relay_addr.to_string().contains("/p2p/") {
        relay_addr
    } else {
        relay_addr.with(libp2p::multiaddr::Protocol::P2p(relay.peer_id()))
    };
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
    let a_id = na.peer_id();
    let circuit = relay_addr
        .clone()
        .with(libp2p::multiaddr::Protocol::P2pCircuit)
        .with(libp2p::multiaddr::Protocol::P2p(a_id));
    let t = ticket(&sa, &[circuit]);
    let (a, mut a_events) = join(&na, &t, "alice", 440.0, Box::new(Discard)).await;
    let (b, _b_events) = join(&nb, &t, "bob", 660.0, Box::new(Discard)).await;
    let b_id = nb.peer_id().to_string();
    let path = wait_for(&mut a_events, Duration::from_secs(20), admitted(&b_id)).await;
    assert_eq!(path, Path::Relayed);
    // Audio flows through the circuit.
    let flowing = wait_for(&mut a_events, Duration::from_secs(5), |ev| match ev {
        CallEvent::Stats(s) => s
            .streams
            .iter()
            .find(|x| x.from == b_id && x.frames_received > 10)
            .map(|x| x.path),
        _ => None,
    })
    .await;
    assert_eq!(flowing, Path::Relayed);
    b.leave().await.unwrap();
    a.leave().await.unwrap();
    na.shutdown().await;
    nb.shutdown().await;
    relay.shutdown().await.unwrap();
}

/// One member sends 10 ms frames, the other 20 ms, in the same call: each hears the other
/// (the receiver follows the sender's frame size), and every mouth-to-ear figure is at least
/// the sender's algorithmic delay, transit and buffer plus frame plus look-ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_and_twenty_ms_senders_in_one_call() {
    let (sa, sb) = (secret(), secret());
    let (na, nb) = (node(sa), node(sb));
    let t = ticket(&sa, &addrs_of(&na).await);
    let (a_id, b_id) = (na.peer_id().to_string(), nb.peer_id().to_string());
    let (_a, mut a_events) = join(&na, &t, "alice", 440.0, Box::new(Discard)).await;
    let mut ten = CallConfig::new(t.clone(), "bob");
    ten.frame_ms = 10;
    let (_b, mut b_events) = nb
        .start_call(ten, Box::new(source::tone(660.0)), Box::new(Discard))
        .await
        .expect("start call");
    wait_for(&mut a_events, Duration::from_secs(10), admitted(&b_id)).await;
    wait_for(&mut b_events, Duration::from_secs(10), admitted(&a_id)).await;
    // Two ticks after both hear something: alice hears bob's 10 ms frames, bob alice's 20.
    for (events, from, algo) in [(&mut a_events, &b_id, 16.5), (&mut b_events, &a_id, 26.5)] {
        let mut seen = 0;
        while seen < 2 {
            let s = wait_for(events, Duration::from_secs(3), |ev| match ev {
                CallEvent::Stats(s) => s
                    .streams
                    .iter()
                    .find(|x| &x.from == from && x.frames_played > 20)
                    .cloned(),
                _ => None,
            })
            .await;
            let m2e = s.mouth_to_ear_p50_ms.expect("p50");
            let tb = s.transit_buffer_p50_ms.expect("t+b p50");
            assert!(m2e >= algo, "{from}: {m2e} < {algo}");
            assert!((m2e - tb - algo).abs() < 1e-9, "{m2e} = {tb} + {algo}");
            assert!(s.mouth_to_ear_p95_ms.expect("p95") >= m2e);
            assert_eq!(s.frames_concealed, 0, "{s:?}");
            seen += 1;
        }
    }
}
