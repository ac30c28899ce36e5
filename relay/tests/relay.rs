//! In-process integration tests: the real relay (`confab_relay::start`) on 127.0.0.1 and
//! real libp2p clients.

use std::{net::Ipv4Addr, path::Path, time::Duration};

use anyhow::{anyhow, bail, ensure, Context, Result};
use confab_relay::{
    client::{self, ClientBehaviour, TEST_PROTOCOL},
    AccessMode, Config, RelayHandle,
};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{multiaddr::Protocol, Multiaddr, Swarm};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const T: Duration = Duration::from_secs(10);

fn test_config(dir: &Path) -> Config {
    let mut c = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    c.listen = vec![Multiaddr::empty()
        .with(Protocol::Ip4(Ipv4Addr::LOCALHOST))
        .with(Protocol::Tcp(0))];
    c
}

fn tcp_addr(relay: &RelayHandle) -> Result<Multiaddr> {
    relay
        .listen_addrs()
        .iter()
        .find(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))))
        .cloned()
        .context("relay has no TCP address")
}

/// A client that holds a reservation on `relay` and accepts test streams, driven in the
/// background. Returns its circuit address and incoming streams.
async fn listening_client(
    relay_addr: &Multiaddr,
) -> Result<(
    Multiaddr,
    libp2p_stream::IncomingStreams,
    tokio::task::JoinHandle<()>,
)> {
    let mut a = client::new_client()?;
    let incoming = a
        .behaviour()
        .stream
        .new_control()
        .accept(TEST_PROTOCOL)
        .map_err(|e| anyhow!("{e}"))?;
    let circuit = client::reserve(&mut a, relay_addr, T)
        .await
        .map_err(|e| anyhow!("reservation failed: {e}"))?;
    Ok((circuit, incoming, client::spawn_driver(a)))
}

fn peer_of(addr: &Multiaddr) -> Result<libp2p::PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(p)) => Ok(p),
        _ => bail!("address {addr} does not end in /p2p"),
    }
}

/// Send `n` bytes from a fresh client to the client behind `circuit`, which echoes the
/// count back. Returns the count the receiver saw.
async fn push_bytes(
    circuit: &Multiaddr,
    mut incoming: libp2p_stream::IncomingStreams,
    n: usize,
) -> Result<u64> {
    let receiver = tokio::spawn(async move {
        let (_peer, mut stream) = incoming.next().await.context("no incoming stream")?;
        let mut buf = vec![0u8; 16 * 1024];
        let mut total = 0u64;
        loop {
            let k = stream.read(&mut buf).await?;
            if k == 0 {
                break;
            }
            total += k as u64;
        }
        stream.write_all(&total.to_be_bytes()).await?;
        stream.close().await?;
        anyhow::Ok(total)
    });
    let mut b: Swarm<ClientBehaviour> = client::new_client()?;
    let dst = peer_of(circuit)?;
    client::dial(&mut b, circuit, dst, T)
        .await
        .map_err(|e| anyhow!("circuit dial failed: {e}"))?;
    let mut control = b.behaviour().stream.new_control();
    let _driver = client::spawn_driver(b);
    let send = async {
        let mut s = control
            .open_stream(dst, TEST_PROTOCOL)
            .await
            .map_err(|e| anyhow!("open_stream: {e}"))?;
        let chunk = vec![0x5au8; 16 * 1024];
        let mut sent = 0;
        while sent < n {
            let k = chunk.len().min(n - sent);
            s.write_all(&chunk[..k]).await?;
            sent += k;
        }
        s.close().await?;
        let mut ack = [0u8; 8];
        s.read_exact(&mut ack).await?;
        anyhow::Ok(u64::from_be_bytes(ack))
    };
    let acked = tokio::time::timeout(Duration::from_secs(20), send)
        .await
        .context("transfer timed out")??;
    let seen = tokio::time::timeout(T, receiver)
        .await
        .context("receiver timed out")???;
    ensure!(acked == seen);
    Ok(seen)
}

#[tokio::test]
async fn circuit_outlives_library_byte_budget() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = confab_relay::start(test_config(dir.path())).await?;
    let relay_addr = tcp_addr(&relay)?;
    let (circuit, incoming, _a) = listening_client(&relay_addr).await?;
    // 512 KiB: four times libp2p's default circuit budget of 128 KiB.
    let n = 512 * 1024;
    assert_eq!(push_bytes(&circuit, incoming, n).await?, n as u64);
    let summary = relay.shutdown().await?;
    assert_eq!(summary.circuits_accepted, 1);
    assert_eq!(summary.reservations_accepted, 1);
    Ok(())
}

#[tokio::test]
async fn small_byte_budget_cuts_the_circuit() -> Result<()> {
    // The same transfer through a relay configured with a 64 KiB budget must fail: the
    // configured limit is what the circuit gets.
    let dir = tempfile::tempdir()?;
    let mut cfg = test_config(dir.path());
    cfg.limits.max_circuit_bytes = 64 * 1024;
    let relay = confab_relay::start(cfg).await?;
    let relay_addr = tcp_addr(&relay)?;
    let (circuit, incoming, _a) = listening_client(&relay_addr).await?;
    let result = push_bytes(&circuit, incoming, 512 * 1024).await;
    assert!(
        result.is_err(),
        "transfer past the budget succeeded: {result:?}"
    );
    Ok(())
}

#[tokio::test]
async fn circuit_limit_refuses_promptly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = test_config(dir.path());
    cfg.limits.max_circuits = 1;
    let relay = confab_relay::start(cfg).await?;
    let relay_addr = tcp_addr(&relay)?;
    let (circuit, _incoming, _a) = listening_client(&relay_addr).await?;
    let dst = peer_of(&circuit)?;

    let mut b = client::new_client()?;
    client::dial(&mut b, &circuit, dst, T)
        .await
        .map_err(|e| anyhow!("first circuit refused: {e}"))?;
    let _b = client::spawn_driver(b);

    let mut c = client::new_client()?;
    let started = std::time::Instant::now();
    let err = client::dial(&mut c, &circuit, dst, T)
        .await
        .err()
        .context("second circuit was accepted past max_circuits = 1")?;
    assert!(
        err.contains("resource limit exceeded"),
        "unexpected error: {err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    Ok(())
}

#[tokio::test]
async fn reservation_limit_refuses_promptly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = test_config(dir.path());
    cfg.limits.max_reservations = 1;
    let relay = confab_relay::start(cfg).await?;
    let relay_addr = tcp_addr(&relay)?;
    let (_circuit, _incoming, _a) = listening_client(&relay_addr).await?;

    let mut d = client::new_client()?;
    let started = std::time::Instant::now();
    let err = client::reserve(&mut d, &relay_addr, T)
        .await
        .err()
        .context("second reservation accepted past max_reservations = 1")?;
    assert!(
        err.contains("resource limit exceeded"),
        "unexpected error: {err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    Ok(())
}

#[tokio::test]
async fn per_peer_circuit_limit_is_exact() -> Result<()> {
    // libp2p admits one circuit more than its per-peer setting; the relay corrects that.
    let dir = tempfile::tempdir()?;
    let mut cfg = test_config(dir.path());
    cfg.limits.max_circuits_per_peer = 1;
    let relay = confab_relay::start(cfg).await?;
    let relay_addr = tcp_addr(&relay)?;
    let (circuit1, _i1, _a1) = listening_client(&relay_addr).await?;
    let (circuit2, _i2, _a2) = listening_client(&relay_addr).await?;
    let mut b = client::new_client()?;
    client::dial(&mut b, &circuit1, peer_of(&circuit1)?, T)
        .await
        .map_err(|e| anyhow!("first circuit refused: {e}"))?;
    let err = client::dial(&mut b, &circuit2, peer_of(&circuit2)?, T)
        .await
        .err()
        .context("second circuit of one peer accepted past max_circuits_per_peer = 1")?;
    assert!(
        err.contains("resource limit exceeded"),
        "unexpected error: {err}"
    );
    Ok(())
}

#[tokio::test]
async fn allowlist_refuses_others_promptly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let allowed_key = libp2p::identity::Keypair::generate_ed25519();
    let mut cfg = test_config(dir.path());
    cfg.access.mode = AccessMode::Allowlist;
    cfg.access.allowlist = vec![allowed_key.public().to_peer_id()];
    let relay = confab_relay::start(cfg).await?;
    let relay_addr = tcp_addr(&relay)?;

    // The allowed peer reserves.
    let mut a = client::new_client_with_key(allowed_key)?;
    let circuit = client::reserve(&mut a, &relay_addr, T)
        .await
        .map_err(|e| anyhow!("allowed peer refused: {e}"))?;
    let _a = client::spawn_driver(a);

    // Another peer may neither reserve ...
    let mut c = client::new_client()?;
    let started = std::time::Instant::now();
    let err = client::reserve(&mut c, &relay_addr, T)
        .await
        .err()
        .context("peer outside the allowlist got a reservation")?;
    assert!(
        err.contains("Reservation refused"),
        "unexpected error: {err}"
    );
    // ... nor open a circuit to the allowed peer.
    let mut e = client::new_client()?;
    let err = client::dial(&mut e, &circuit, peer_of(&circuit)?, T)
        .await
        .err()
        .context("peer outside the allowlist opened a circuit")?;
    assert!(err.contains("denied permission"), "unexpected error: {err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    Ok(())
}

#[tokio::test]
async fn identity_persists_across_restarts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let first = confab_relay::start(test_config(dir.path())).await?;
    let id = first.peer_id();
    first.shutdown().await?;
    let second = confab_relay::start(test_config(dir.path())).await?;
    assert_eq!(second.peer_id(), id);
    assert!(tcp_addr(&second)?.to_string().ends_with(&id.to_string()));
    Ok(())
}

#[tokio::test]
async fn corrupt_identity_is_an_error_and_left_untouched() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let key_path = dir.path().join("identity.key");
    // A valid key, truncated.
    let (key, _) = confab_relay::identity::load_or_create(&key_path)?;
    let bytes = key.to_protobuf_encoding()?;
    for bad in [
        &bytes[..bytes.len() / 2],
        b"not a key at all".as_slice(),
        b"",
    ] {
        std::fs::write(&key_path, bad)?;
        let err = match confab_relay::start(test_config(dir.path())).await {
            Ok(_) => bail!("relay started with a corrupt key"),
            Err(e) => e,
        };
        assert!(
            matches!(err, confab_relay::Error::CorruptIdentity { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("identity.key"), "{err}");
        assert_eq!(std::fs::read(&key_path)?, bad, "key file was modified");
    }
    Ok(())
}

async fn scrape(addr: std::net::SocketAddr) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let mut out = String::new();
    tokio::time::timeout(T, s.read_to_string(&mut out)).await??;
    let (head, body) = out.split_once("\r\n\r\n").context("no header end")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "bad status: {head}");
    ensure!(head.contains("application/openmetrics-text"));
    Ok(body.to_owned())
}

/// Check OpenMetrics text exposition; return (sample name with labels -> value).
fn parse_exposition(text: &str) -> Result<Vec<(String, f64)>> {
    let lines: Vec<&str> = text.lines().collect();
    ensure!(lines.last() == Some(&"# EOF"), "does not end with # EOF");
    let mut typed = std::collections::HashSet::new();
    let mut samples = Vec::new();
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut p = rest.split(' ');
            let name = p.next().context("TYPE without name")?;
            let kind = p.next().context("TYPE without type")?;
            ensure!(
                [
                    "counter",
                    "gauge",
                    "histogram",
                    "info",
                    "unknown",
                    "summary",
                    "stateset"
                ]
                .contains(&kind),
                "bad type in {line}"
            );
            typed.insert(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        ensure!(!line.starts_with('#'), "unexpected comment {line}");
        let (series, value) = line.rsplit_once(' ').context("sample without value")?;
        let value: f64 = value
            .parse()
            .with_context(|| format!("bad value in {line}"))?;
        let name = series.split('{').next().unwrap_or("");
        ensure!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                ensure!(
                    labels.starts_with('{') && labels.ends_with('}'),
                    "bad labels in {line}"
                );
                for pair in labels[1..labels.len() - 1].split(',') {
                    let (k, v) = pair.split_once('=').context("label without =")?;
                    ensure!(!k.is_empty() && v.starts_with('"') && v.ends_with('"'));
                }
            }
        }
        let family = typed.iter().any(|t| {
            name == t
                || name
                    .strip_prefix(t.as_str())
                    .is_some_and(|s| s.starts_with('_'))
        });
        ensure!(family, "sample {name} has no # TYPE line");
        samples.push((series.to_owned(), value));
    }
    Ok(samples)
}

fn sample(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .find(|(s, _)| s == series)
        .map(|(_, v)| *v)
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_are_valid_and_move() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = test_config(dir.path());
    cfg.metrics = Some("127.0.0.1:0".parse()?);
    cfg.limits.max_reservations = 1;
    let relay = confab_relay::start(cfg).await?;
    let maddr = relay.metrics_addr().context("metrics off")?;
    let before = parse_exposition(&scrape(maddr).await?)?;
    assert_eq!(
        sample(&before, "confab_relay_reservations_accepted_total"),
        0.0
    );

    let relay_addr = tcp_addr(&relay)?;
    let (circuit, incoming, _a) = listening_client(&relay_addr).await?;
    push_bytes(&circuit, incoming, 4096).await?;
    let mut d = client::new_client()?;
    assert!(client::reserve(&mut d, &relay_addr, T).await.is_err());

    let text = scrape(maddr).await?;
    let after = parse_exposition(&text)?;
    assert_eq!(
        sample(&after, "confab_relay_reservations_accepted_total"),
        1.0
    );
    assert_eq!(sample(&after, "confab_relay_reservations"), 1.0);
    assert_eq!(sample(&after, "confab_relay_circuits_accepted_total"), 1.0);
    assert_eq!(
        sample(
            &after,
            "confab_relay_reservations_refused_total{reason=\"resource_limit_exceeded\"}"
        ),
        1.0
    );
    let bytes: f64 = after
        .iter()
        .filter(|(s, _)| s.starts_with("libp2p_bandwidth_bytes_total"))
        .map(|(_, v)| v)
        .sum();
    assert!(bytes > 8192.0, "bandwidth counters did not move: {bytes}");
    assert!(!text.contains("127.0.0.1"), "metrics expose an address");
    Ok(())
}

#[test]
fn example_toml_equals_defaults() -> Result<()> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/example.toml"))?;
    assert_eq!(Config::from_toml_str(&text)?, Config::default());
    Ok(())
}

#[test]
fn unknown_field_is_named() {
    let err = Config::from_toml_str("log_ips = true\nlisten_adress = []\n")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("listen_adress"), "{err}");
}

#[test]
fn flags_override_file() -> Result<()> {
    use clap::Parser as _;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("relay.toml");
    std::fs::write(
        &path,
        "log_ips = false\n[limits]\nmax_circuits = 5\nmax_reservations = 9\n",
    )?;
    let p = path.to_string_lossy().into_owned();
    let cli = confab_relay::cli::Cli::try_parse_from([
        "confab-relay",
        "--config",
        &p,
        "--max-circuits",
        "7",
        "--log-ips",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ])?;
    let cfg = cli.opts.resolve()?;
    assert_eq!(cfg.limits.max_circuits, 7);
    assert_eq!(cfg.limits.max_reservations, 9);
    assert!(cfg.log_ips);
    assert_eq!(cfg.listen.len(), 1);
    Ok(())
}

#[tokio::test]
async fn rendezvous_serves_hashed_namespaces() -> Result<()> {
    use client::ClientBehaviourEvent as E;
    use libp2p::{rendezvous, swarm::SwarmEvent};
    let dir = tempfile::tempdir()?;
    let relay = confab_relay::start(test_config(dir.path())).await?;
    let relay_addr = tcp_addr(&relay)?;
    // Nodes register under a hash of the room id; the relay only ever sees this string.
    let ns = rendezvous::Namespace::new(
        "3f1c9a5e0b7d4c2a8e6f1b3d5c7a9e0f2b4d6c8a1e3f5b7d9c0a2e4f6b8d1c3a".into(),
    )?;

    let mut a = client::new_client()?;
    let circuit = client::reserve(&mut a, &relay_addr, T)
        .await
        .map_err(|e| anyhow!("reservation: {e}"))?;
    a.add_external_address(circuit.clone());
    a.behaviour_mut()
        .rendezvous
        .register(ns.clone(), relay.peer_id(), None)?;
    tokio::time::timeout(T, async {
        loop {
            match a.select_next_some().await {
                SwarmEvent::Behaviour(E::Rendezvous(rendezvous::client::Event::Registered {
                    ..
                })) => return Ok(()),
                SwarmEvent::Behaviour(E::Rendezvous(
                    rendezvous::client::Event::RegisterFailed { error, .. },
                )) => bail!("register failed: {error:?}"),
                _ => {}
            }
        }
    })
    .await
    .context("registration timed out")??;
    let a_id = *a.local_peer_id();
    let _a = client::spawn_driver(a);

    let mut b = client::new_client()?;
    client::dial(&mut b, &relay_addr, relay.peer_id(), T)
        .await
        .map_err(|e| anyhow!("connect: {e}"))?;
    b.behaviour_mut()
        .rendezvous
        .discover(Some(ns), None, None, relay.peer_id());
    let found = tokio::time::timeout(T, async {
        loop {
            match b.select_next_some().await {
                SwarmEvent::Behaviour(E::Rendezvous(rendezvous::client::Event::Discovered {
                    registrations,
                    ..
                })) => return Ok(registrations),
                SwarmEvent::Behaviour(E::Rendezvous(
                    rendezvous::client::Event::DiscoverFailed { error, .. },
                )) => bail!("discover failed: {error:?}"),
                _ => {}
            }
        }
    })
    .await
    .context("discover timed out")??;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].record.peer_id(), a_id);
    assert!(found[0].record.addresses().contains(&circuit));
    Ok(())
}
