//! The relay against the obvious attacks: many peer ids from one IP, rendezvous discover
//! without a namespace, oversized registrations, and out-of-range config values. Real
//! libp2p peers on 127.0.0.1, in process.

use std::{net::Ipv4Addr, path::Path, time::Duration};

use anyhow::{anyhow, bail, Context, Result};
use confab_relay::{client, Config, RelayHandle};
use futures::StreamExt;
use libp2p::{multiaddr::Protocol, rendezvous, swarm::SwarmEvent, Multiaddr};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const T: Duration = Duration::from_secs(10);

fn test_config(dir: &Path) -> Result<Config> {
    let mut c = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    c.listen = vec![Multiaddr::empty()
        .with(Protocol::Ip4(Ipv4Addr::LOCALHOST))
        .with(Protocol::Tcp(0))];
    c.metrics = Some("127.0.0.1:0".parse()?);
    Ok(c)
}

fn tcp_addr(relay: &RelayHandle) -> Result<Multiaddr> {
    relay
        .listen_addrs()
        .iter()
        .find(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))))
        .cloned()
        .context("relay has no TCP address")
}

/// The value of one series in the relay's metrics (0 when absent).
async fn metric(relay: &RelayHandle, series: &str) -> Result<f64> {
    let addr = relay.metrics_addr().context("metrics off")?;
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let mut out = String::new();
    tokio::time::timeout(T, s.read_to_string(&mut out)).await??;
    Ok(out
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0))
}

/// Tries `attempt` every 50 ms until it gives a value, for at most [`T`]; `what` is the
/// error otherwise.
async fn eventually<V, F, Fut>(what: &str, mut attempt: F) -> Result<V>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<V>>>,
{
    let deadline = tokio::time::Instant::now() + T;
    loop {
        if let Some(v) = attempt().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn many_peer_ids_from_one_ip_are_refused_beyond_the_per_ip_limit() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = test_config(dir.path())?;
    // The default per-IP reservation limit, with the connection limit per IP out of the way
    // so that every attempt reaches the reservation check.
    let per_ip = Config::default().limits.max_reservations_per_ip;
    cfg.connections.max_established_per_ip = 0;
    let relay = confab_relay::start(cfg).await?;
    let relay_addr = tcp_addr(&relay)?;

    let mut held = Vec::new();
    let mut refused = 0usize;
    for i in 0..200 {
        let mut c = client::new_client()?;
        match client::reserve(&mut c, &relay_addr, T).await {
            Ok(_) => held.push(client::spawn_driver(c)),
            Err(e) if e.contains("resource limit exceeded") => refused += 1,
            Err(e) => bail!("attempt {i}: unexpected error {e}"),
        }
    }
    assert_eq!(held.len(), per_ip, "reservations accepted from one IP");
    assert_eq!(refused, 200 - per_ip);
    let counted = metric(
        &relay,
        "confab_relay_reservations_refused_total{reason=\"per_ip_limit\"}",
    )
    .await?;
    assert_eq!(counted, refused as f64);

    // A reservation that ends frees its place for another peer id.
    if let Some(h) = held.pop() {
        h.abort();
    }
    let driver = eventually("the freed place was not given to a new peer", || async {
        let mut c = client::new_client()?;
        let ok = client::reserve(&mut c, &relay_addr, T).await.is_ok();
        Ok(ok.then(|| client::spawn_driver(c)))
    })
    .await?;
    held.push(driver);
    Ok(())
}

#[tokio::test]
async fn per_ip_connection_limit_refuses_and_counts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = test_config(dir.path())?;
    cfg.connections.max_established_per_ip = 2;
    let relay = confab_relay::start(cfg).await?;
    let relay_addr = tcp_addr(&relay)?;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = client::new_client()?;
        client::reserve(&mut c, &relay_addr, T)
            .await
            .map_err(|e| anyhow!("reservation within the limit refused: {e}"))?;
        held.push(client::spawn_driver(c));
    }
    let mut c = client::new_client()?;
    assert!(client::reserve(&mut c, &relay_addr, T).await.is_err());
    let counted = metric(
        &relay,
        "confab_relay_connections_refused_total{reason=\"per_ip_limit\"}",
    )
    .await?;
    assert!(counted >= 1.0, "connection refusal not counted: {counted}");
    Ok(())
}

async fn rendezvous_answer(
    swarm: &mut libp2p::Swarm<client::ClientBehaviour>,
) -> Result<rendezvous::client::Event> {
    use client::ClientBehaviourEvent as E;
    tokio::time::timeout(T, async {
        loop {
            if let SwarmEvent::Behaviour(E::Rendezvous(ev)) = swarm.select_next_some().await {
                return ev;
            }
        }
    })
    .await
    .context("no rendezvous answer")
}

#[tokio::test]
async fn discover_without_namespace_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = confab_relay::start(test_config(dir.path())?).await?;
    let relay_addr = tcp_addr(&relay)?;
    let ns = rendezvous::Namespace::new("a-hashed-room-namespace".into())?;

    // A member registers ...
    let mut a = client::new_client()?;
    client::dial(&mut a, &relay_addr, relay.peer_id(), T)
        .await
        .map_err(|e| anyhow!("connect: {e}"))?;
    a.add_external_address("/ip4/192.0.2.7/tcp/4001".parse()?);
    a.behaviour_mut()
        .rendezvous
        .register(ns.clone(), relay.peer_id(), None)?;
    match rendezvous_answer(&mut a).await? {
        rendezvous::client::Event::Registered { .. } => {}
        other => bail!("registration: {other:?}"),
    }
    let _a = client::spawn_driver(a);

    // ... and a stranger asking for every namespace learns nothing.
    let mut b = client::new_client()?;
    client::dial(&mut b, &relay_addr, relay.peer_id(), T)
        .await
        .map_err(|e| anyhow!("connect: {e}"))?;
    b.behaviour_mut()
        .rendezvous
        .discover(None, None, None, relay.peer_id());
    match rendezvous_answer(&mut b).await? {
        rendezvous::client::Event::DiscoverFailed { error, .. } => {
            assert_eq!(error, rendezvous::ErrorCode::InvalidNamespace);
        }
        other => bail!("discover without a namespace was answered: {other:?}"),
    }
    let counted = metric(
        &relay,
        "confab_relay_rendezvous_refused_total{request=\"discover\",reason=\"no_namespace\"}",
    )
    .await?;
    assert_eq!(counted, 1.0);

    // With the namespace, the member is found.
    b.behaviour_mut()
        .rendezvous
        .discover(Some(ns), None, None, relay.peer_id());
    match rendezvous_answer(&mut b).await? {
        rendezvous::client::Event::Discovered { registrations, .. } => {
            assert_eq!(registrations.len(), 1);
        }
        other => bail!("discover: {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn oversized_registration_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = confab_relay::start(test_config(dir.path())?).await?;
    let relay_addr = tcp_addr(&relay)?;
    let ns = rendezvous::Namespace::new("a-hashed-room-namespace".into())?;
    let mut a = client::new_client()?;
    client::dial(&mut a, &relay_addr, relay.peer_id(), T)
        .await
        .map_err(|e| anyhow!("connect: {e}"))?;
    // About 5 KiB of addresses in the signed record (a swarm keeps at most 20 external
    // addresses, so long names): over the 4 KiB cap.
    for i in 0..20u16 {
        let label = "x".repeat(60);
        let name = format!("h{i:02}.{label}.{label}.{label}.example");
        a.add_external_address(
            Multiaddr::empty()
                .with(Protocol::Dns4(name.into()))
                .with(Protocol::Tcp(4001)),
        );
    }
    a.behaviour_mut()
        .rendezvous
        .register(ns.clone(), relay.peer_id(), None)?;
    match rendezvous_answer(&mut a).await? {
        rendezvous::client::Event::RegisterFailed { error, .. } => {
            assert_eq!(error, rendezvous::ErrorCode::InvalidSignedPeerRecord);
        }
        other => bail!("oversized registration accepted: {other:?}"),
    }
    let counted = metric(
        &relay,
        "confab_relay_rendezvous_refused_total{request=\"register\",reason=\"record_too_large\"}",
    )
    .await?;
    assert_eq!(counted, 1.0);
    Ok(())
}

#[tokio::test]
async fn reservation_duration_above_the_bound_is_a_config_error() -> Result<()> {
    let text = "[limits]\nreservation_duration_secs = 9223372036854775807\n";
    match Config::from_toml_str(text) {
        Ok(_) => bail!("u64::MAX accepted"),
        Err(e) => assert!(e.to_string().contains("reservation_duration_secs"), "{e}"),
    }
    let dir = tempfile::tempdir()?;
    let mut cfg = test_config(dir.path())?;
    cfg.limits.reservation_duration_secs = u64::MAX;
    match confab_relay::start(cfg).await {
        Ok(_) => bail!("relay started with a reservation duration of u64::MAX"),
        Err(e) => assert!(
            matches!(e, confab_relay::Error::Config(_)),
            "not a config error: {e}"
        ),
    }
    Ok(())
}

#[tokio::test]
async fn circuits_from_one_ip_are_refused_beyond_the_per_ip_limit() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = test_config(dir.path())?;
    let per_ip = 4;
    cfg.limits.max_circuits_per_ip = per_ip;
    cfg.connections.max_established_per_ip = 0;
    let relay = confab_relay::start(cfg).await?;
    let relay_addr = tcp_addr(&relay)?;
    // One destination holds a reservation; ten sources on the same IP (each its own peer id)
    // open a circuit to it and keep it.
    let mut dst = client::new_client()?;
    let dst_id = *dst.local_peer_id();
    let circuit = client::reserve(&mut dst, &relay_addr, T)
        .await
        .map_err(|e| anyhow!("reservation: {e}"))?;
    let _dst = client::spawn_driver(dst);
    let mut held = Vec::new();
    let mut refused = 0usize;
    for _ in 0..10 {
        let mut src = client::new_client()?;
        match client::dial(&mut src, &circuit, dst_id, T).await {
            Ok(()) => held.push(client::spawn_driver(src)),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(held.len(), per_ip, "circuits accepted from one IP");
    let series = "confab_relay_circuits_refused_total{reason=\"per_ip_limit\"}";
    assert_eq!(metric(&relay, series).await?, refused as f64);
    assert_eq!(refused, 10 - per_ip);
    // A circuit that ends gives its place to the next source.
    if let Some(h) = held.pop() {
        h.abort();
    }
    eventually(
        "the freed circuit place was not given to a new source",
        || async {
            let mut src = client::new_client()?;
            Ok(client::dial(&mut src, &circuit, dst_id, T).await.ok())
        },
    )
    .await
}

#[tokio::test]
async fn over_its_memory_ceiling_the_relay_refuses_connections_and_counts_them() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = test_config(dir.path())?;
    // Any process is over 1 MiB: every new connection meets the ceiling.
    cfg.connections.max_memory_mib = 1;
    let relay = confab_relay::start(cfg).await?;
    let relay_addr = tcp_addr(&relay)?;
    for _ in 0..3 {
        let mut c = client::new_client()?;
        assert!(
            client::reserve(&mut c, &relay_addr, T).await.is_err(),
            "a connection over the memory ceiling was served"
        );
    }
    let series = "confab_relay_connections_refused_total{reason=\"memory_limit\"}";
    let counted = metric(&relay, series).await?;
    assert!(counted >= 3.0, "memory refusals counted: {counted}");
    // The metrics endpoint still answers (it is not a libp2p connection), and the relay
    // serves again with room to spare.
    let dir2 = tempfile::tempdir()?;
    let relay2 = confab_relay::start(test_config(dir2.path())?).await?;
    let mut c = client::new_client()?;
    client::reserve(&mut c, &tcp_addr(&relay2)?, T)
        .await
        .map_err(|e| anyhow!("under the default ceiling: {e}"))?;
    Ok(())
}
