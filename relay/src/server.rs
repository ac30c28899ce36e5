//! The relay swarm and its event loop.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    num::NonZeroU32,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use libp2p::{
    autonat, connection_limits,
    core::transport::ListenerId,
    identify,
    identity::Keypair,
    memory_connection_limits,
    metrics::{Metrics as Libp2pMetrics, Recorder},
    multiaddr::Protocol,
    noise, ping, relay,
    swarm::{behaviour::toggle::Toggle, ListenError, NetworkBehaviour, SwarmEvent},
    tcp, yamux, Multiaddr, PeerId, Swarm, SwarmBuilder,
};
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::{
    config::AccessMode,
    gate::{Gate, GateEvent, PerIpConnectionLimit, Policy, RefusedRequest, SharedLedger},
    iplimit::IpLimits,
    metrics::RelayMetrics,
    rendezvous, Config, Error,
};

/// Protocol version announced by identify.
const IDENTIFY_PROTOCOL: &str = "/confab/relay/1";
/// How long startup may take to bind all listeners.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

// Order matters: the limits come first, so that a connection they refuse never reaches
// the gate's per-IP count.
#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    memory: Toggle<memory_connection_limits::Behaviour>,
    relay: Gate,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    autonat: autonat::v2::server::Behaviour,
    rendezvous: rendezvous::Behaviour,
}

/// Counts reported when the relay stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Seconds the relay ran.
    pub uptime_secs: u64,
    /// Reservations accepted (new and renewed).
    pub reservations_accepted: u64,
    /// Reservations refused.
    pub reservations_refused: u64,
    /// Circuits accepted.
    pub circuits_accepted: u64,
    /// Circuits refused.
    pub circuits_refused: u64,
    /// Distinct peers seen.
    pub peers_seen: u64,
}

/// A running relay.
pub struct RelayHandle {
    peer_id: PeerId,
    listen_addrs: Vec<Multiaddr>,
    metrics_addr: Option<std::net::SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<Summary, Error>>,
    metrics_task: Option<tokio::task::JoinHandle<()>>,
}

impl RelayHandle {
    /// The relay's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The addresses the relay listens on (ports resolved), each ending in `/p2p/<id>`.
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// The bound metrics address, when metrics are on.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// Stop accepting, close connections, and return the summary.
    pub async fn shutdown(mut self) -> Result<Summary, Error> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(m) = self.metrics_task.take() {
            m.abort();
        }
        (&mut self.task)
            .await
            .map_err(|e| Error::Task(e.to_string()))?
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        if let Some(m) = self.metrics_task.take() {
            m.abort();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn relay_config(config: &Config, ledger: &SharedLedger) -> relay::Config {
    let l = &config.limits;
    let mut rc = relay::Config {
        max_reservations: l.max_reservations,
        // libp2p refuses only when a peer already holds *more* than this many, so it admits
        // one more than the number given; subtract one to make the configured value exact.
        max_reservations_per_peer: l.max_reservations_per_peer.saturating_sub(1),
        reservation_duration: Duration::from_secs(l.reservation_duration_secs),
        reservation_rate_limiters: Vec::new(),
        max_circuits: l.max_circuits,
        max_circuits_per_peer: l.max_circuits_per_peer.saturating_sub(1),
        max_circuit_duration: Duration::from_secs(l.max_circuit_duration_secs),
        max_circuit_bytes: l.max_circuit_bytes,
        circuit_src_rate_limiters: Vec::new(),
    };
    let per_hour = |n: u32| -> Option<(NonZeroU32, Duration)> {
        let n = NonZeroU32::new(n)?;
        Some((n, Duration::from_secs(3600) / n.get()))
    };
    if let Some((n, i)) = per_hour(l.reservations_per_peer_per_hour) {
        rc = rc.reservation_rate_per_peer(n, i);
    }
    if let Some((n, i)) = per_hour(l.reservations_per_ip_per_hour) {
        rc = rc.reservation_rate_per_ip(n, i);
    }
    if let Some((n, i)) = per_hour(l.circuits_per_peer_per_hour) {
        rc = rc.circuit_src_per_peer(n, i);
    }
    if let Some((n, i)) = per_hour(l.circuits_per_ip_per_hour) {
        rc = rc.circuit_src_per_ip(n, i);
    }
    // Last, so that they count only requests that every other limit let through.
    rc.reservation_rate_limiters
        .push(Gate::reservation_limiter(ledger));
    rc.circuit_src_rate_limiters
        .push(Gate::circuit_limiter(ledger));
    rc
}

fn limit(n: u32) -> Option<u32> {
    (n > 0).then_some(n)
}

fn connection_limits_of(config: &Config) -> connection_limits::Behaviour {
    let c = &config.connections;
    connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_established(limit(c.max_established))
            .with_max_pending_incoming(limit(c.max_pending_incoming))
            .with_max_established_per_peer(limit(c.max_established_per_peer)),
    )
}

fn memory_limits(config: &Config) -> Toggle<memory_connection_limits::Behaviour> {
    let mib = config.connections.max_memory_mib;
    Toggle::from((mib > 0).then(|| {
        let bytes = usize::try_from(mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        memory_connection_limits::Behaviour::with_max_bytes(bytes)
    }))
}

/// The metrics name of a refused incoming connection.
fn connection_refusal(error: &ListenError) -> Option<&'static str> {
    let ListenError::Denied { cause } = error else {
        return None;
    };
    if cause.downcast_ref::<PerIpConnectionLimit>().is_some() {
        Some("per_ip_limit")
    } else if cause
        .downcast_ref::<memory_connection_limits::MemoryUsageLimitExceeded>()
        .is_some()
    {
        Some("memory_limit")
    } else if cause
        .downcast_ref::<connection_limits::Exceeded>()
        .is_some()
    {
        Some("connection_limit")
    } else {
        Some("denied")
    }
}

fn build_swarm(
    key: Keypair,
    config: &Config,
    registry: &mut Registry,
) -> Result<Swarm<Behaviour>, Error> {
    let policy = match config.access.mode {
        AccessMode::Open => Policy::Open,
        AccessMode::Allowlist => {
            Policy::Allowlist(config.access.allowlist.iter().copied().collect())
        }
    };
    let l = &config.limits;
    let ledger = crate::gate::ledger(IpLimits {
        reservations: l.max_reservations_per_ip,
        circuits: l.max_circuits_per_ip,
        connections: config.connections.max_established_per_ip as usize,
    });
    let relay_cfg = relay_config(config, &ledger);
    let rendezvous_cfg = config.rendezvous.clone();
    let idle = Duration::from_secs(config.idle_connection_timeout_secs);
    let swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| Error::Libp2p(e.to_string()))?
        .with_quic()
        .with_bandwidth_metrics(registry)
        .with_behaviour(|key| Behaviour {
            limits: connection_limits_of(config),
            memory: memory_limits(config),
            relay: Gate::new(
                relay::Behaviour::new(key.public().to_peer_id(), relay_cfg),
                policy,
                ledger,
            ),
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), key.public())
                    .with_agent_version(format!("confab-relay/{}", env!("CARGO_PKG_VERSION"))),
            ),
            ping: ping::Behaviour::new(ping::Config::new()),
            autonat: autonat::v2::server::Behaviour::default(),
            rendezvous: rendezvous::Behaviour::new(rendezvous_cfg),
        })
        .map_err(|e| Error::Libp2p(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
        .build();
    Ok(swarm)
}

/// Start a relay with `config`: load or create the identity, bind every listener (and the
/// metrics address), and return once all listeners have an address.
pub async fn start(config: Config) -> Result<RelayHandle, Error> {
    config.validate()?;
    let id_path = config.identity_path();
    let (key, created) = crate::identity::load_or_create(&id_path)?;
    let peer_id = key.public().to_peer_id();
    if created {
        info!(%peer_id, "created a new identity key");
    }

    let mut registry = Registry::default();
    let libp2p_metrics = Libp2pMetrics::new(&mut registry);
    let relay_metrics = RelayMetrics::register(&mut registry);
    let mut swarm = build_swarm(key, &config, &mut registry)?;
    let registry = Arc::new(registry);

    let (metrics_addr, metrics_task) = match config.metrics {
        Some(addr) => {
            let listener = crate::metrics::bind(addr).await?;
            let bound = listener
                .local_addr()
                .map_err(|source| Error::MetricsBind { addr, source })?;
            let task = tokio::spawn(crate::metrics::serve(listener, registry.clone()));
            (Some(bound), Some(task))
        }
        None => (None, None),
    };

    for addr in &config.external_addrs {
        swarm.add_external_address(addr.clone());
    }

    let mut listeners = HashMap::new();
    for addr in &config.listen {
        let id = swarm.listen_on(addr.clone()).map_err(|e| Error::Listen {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
        listeners.insert(id, addr.clone());
    }

    let (ready_tx, ready_rx) = oneshot::channel();
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let state = EventLoop {
        swarm,
        config,
        peer_id,
        listeners,
        bound: HashMap::new(),
        ready: Some(ready_tx),
        relay_metrics,
        libp2p_metrics,
        summary: Summary::default(),
        peers_seen: HashSet::new(),
        reservations: HashMap::new(),
        started: Instant::now(),
    };
    let task = tokio::spawn(state.run(shutdown_rx));

    let listen_addrs = match tokio::time::timeout(STARTUP_TIMEOUT, ready_rx).await {
        Ok(Ok(Ok(addrs))) => addrs,
        Ok(Ok(Err(e))) => return Err(e),
        Ok(Err(_)) => {
            return Err(match task.await {
                Ok(Err(e)) => e,
                _ => Error::Startup("the event loop ended during startup".into()),
            });
        }
        Err(_) => {
            task.abort();
            return Err(Error::Startup(
                "listeners did not come up within 10 s".into(),
            ));
        }
    };

    Ok(RelayHandle {
        peer_id,
        listen_addrs,
        metrics_addr,
        shutdown: Some(shutdown_tx),
        task,
        metrics_task,
    })
}

type ReadyTx = oneshot::Sender<Result<Vec<Multiaddr>, Error>>;

struct EventLoop {
    swarm: Swarm<Behaviour>,
    config: Config,
    peer_id: PeerId,
    /// Configured address of each listener.
    listeners: HashMap<ListenerId, Multiaddr>,
    /// Bound addresses per listener.
    bound: HashMap<ListenerId, Vec<Multiaddr>>,
    ready: Option<ReadyTx>,
    relay_metrics: RelayMetrics,
    libp2p_metrics: Libp2pMetrics,
    summary: Summary,
    peers_seen: HashSet<PeerId>,
    /// Reservations per peer, for the gauge.
    reservations: HashMap<PeerId, i64>,
    started: Instant,
}

impl EventLoop {
    async fn run(mut self, mut shutdown: oneshot::Receiver<()>) -> Result<Summary, Error> {
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                event = self.swarm.select_next_some() => self.on_event(event),
            }
        }
        Ok(self.stop().await)
    }

    async fn stop(mut self) -> Summary {
        for id in self.listeners.keys() {
            self.swarm.remove_listener(*id);
        }
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for p in peers {
            let _ = self.swarm.disconnect_peer_id(p);
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while self.swarm.connected_peers().next().is_some() {
            match tokio::time::timeout_at(deadline, self.swarm.select_next_some()).await {
                Ok(event) => self.on_event(event),
                Err(_) => break,
            }
        }
        self.summary.uptime_secs = self.started.elapsed().as_secs();
        self.summary.peers_seen = self.peers_seen.len() as u64;
        let s = &self.summary;
        info!(
            uptime_secs = s.uptime_secs,
            reservations_accepted = s.reservations_accepted,
            reservations_refused = s.reservations_refused,
            circuits_accepted = s.circuits_accepted,
            circuits_refused = s.circuits_refused,
            peers_seen = s.peers_seen,
            "relay stopped"
        );
        self.summary
    }

    fn log_ips(&self) -> bool {
        self.config.log_ips
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.libp2p_metrics.record(&event);
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Relay(ev)) => self.on_relay(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(ev)) => {
                self.libp2p_metrics.record(&ev);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ev)) => {
                self.libp2p_metrics.record(&ev);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(ev)) => {
                debug!(peer = %ev.client, ok = ev.result.is_ok(), "autonat dial-back test served");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rendezvous(ev)) => self.on_rendezvous(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Limits(v) | BehaviourEvent::Memory(v)) => {
                match v {}
            }
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => self.on_new_listen_addr(listener_id, address),
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                if self.log_ips() {
                    info!(%address, "listen address expired");
                }
                self.swarm.remove_external_address(&address);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                let configured = self
                    .listeners
                    .get(&listener_id)
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                if let Err(e) = reason {
                    let reason = e.to_string();
                    warn!(listener = %configured, error = %reason, "listener closed");
                    if let Some(tx) = self.ready.take() {
                        let _ = tx.send(Err(Error::Listen {
                            addr: configured,
                            reason,
                        }));
                    }
                }
            }
            SwarmEvent::ListenerError { error, .. } => {
                if self.log_ips() {
                    warn!(%error, "listener error");
                } else {
                    warn!(kind = ?error.kind(), "listener error");
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                self.peers_seen.insert(peer_id);
                if num_established.get() == 1 {
                    self.relay_metrics.connected_peers.inc();
                }
                if self.log_ips() {
                    debug!(peer = %peer_id, remote = %endpoint.get_remote_address(), "connected");
                } else {
                    debug!(peer = %peer_id, "connected");
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => {
                if num_established == 0 {
                    self.relay_metrics.connected_peers.dec();
                    if let Some(n) = self.reservations.remove(&peer_id) {
                        self.relay_metrics.reservations.dec_by(n);
                    }
                }
                debug!(peer = %peer_id, "disconnected");
            }
            SwarmEvent::IncomingConnectionError {
                error,
                send_back_addr,
                ..
            } => {
                if let Some(reason) = connection_refusal(&error) {
                    self.relay_metrics.connection_refused(reason);
                }
                if self.log_ips() {
                    debug!(remote = %send_back_addr, %error, "incoming connection failed");
                } else {
                    debug!(error = %ErrorKindOnly(&error), "incoming connection failed");
                }
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                if self.log_ips() {
                    info!(%address, "external address confirmed");
                } else {
                    info!("external address confirmed");
                }
            }
            _ => {}
        }
    }

    fn on_new_listen_addr(&mut self, listener_id: ListenerId, address: Multiaddr) {
        let configured_unspecified = self.listeners.get(&listener_id).is_some_and(is_unspecified);
        if self.config.listen_as_external
            && (!configured_unspecified || ip_of(&address).is_some_and(is_global))
        {
            self.swarm.add_external_address(address.clone());
        }
        if self.log_ips() {
            info!(%address, "listening");
        } else {
            info!("listening on a new address (not shown; see --log-ips)");
        }
        self.bound
            .entry(listener_id)
            .or_default()
            .push(address.with(Protocol::P2p(self.peer_id)));
        if self.ready.is_some() && self.listeners.keys().all(|id| self.bound.contains_key(id)) {
            let mut addrs: Vec<Multiaddr> = Vec::new();
            for id in self.listeners.keys() {
                addrs.extend(self.bound.get(id).into_iter().flatten().cloned());
            }
            addrs.sort_by_key(|a| a.to_string());
            if self.swarm.external_addresses().next().is_none() {
                warn!(
                    "this relay has no external address, so it refuses every reservation; \
                     set --external-addr (or external_addrs in the config) to its public address"
                );
            }
            info!(
                peer_id = %self.peer_id,
                access = ?self.config.access.mode,
                max_circuits = self.config.limits.max_circuits,
                max_circuit_duration_secs = self.config.limits.max_circuit_duration_secs,
                max_circuit_bytes = self.config.limits.max_circuit_bytes,
                "relay ready"
            );
            if let Some(tx) = self.ready.take() {
                let _ = tx.send(Ok(addrs));
            }
        }
    }

    fn on_relay(&mut self, event: GateEvent) {
        let m = &self.relay_metrics;
        match event {
            GateEvent::Refused {
                peer,
                request,
                reason,
            } => match request {
                RefusedRequest::Reservation => {
                    let reason = reason.as_str();
                    m.reservation_refused(reason);
                    self.summary.reservations_refused += 1;
                    info!(%peer, reason, "reservation refused");
                }
                RefusedRequest::Circuit => {
                    let reason = reason.as_str();
                    m.circuit_refused(reason);
                    self.summary.circuits_refused += 1;
                    debug!(src = %peer, reason, "circuit refused");
                }
                RefusedRequest::Malformed => {
                    debug!(%peer, "malformed hop request from a peer not on the allowlist");
                }
            },
            GateEvent::Relay(ev) => {
                self.libp2p_metrics.record(&ev);
                match ev {
                    relay::Event::ReservationReqAccepted {
                        src_peer_id,
                        renewed,
                    } => {
                        m.reservations_accepted.inc();
                        self.summary.reservations_accepted += 1;
                        if !renewed {
                            *self.reservations.entry(src_peer_id).or_default() += 1;
                            m.reservations.inc();
                        }
                        info!(peer = %src_peer_id, renewed, "reservation accepted");
                    }
                    relay::Event::ReservationReqDenied {
                        src_peer_id,
                        status,
                    } => {
                        let reason = status_reason(&status);
                        m.reservation_refused(reason);
                        self.summary.reservations_refused += 1;
                        info!(peer = %src_peer_id, reason, "reservation refused");
                    }
                    relay::Event::ReservationTimedOut { src_peer_id } => {
                        if let Some(n) = self.reservations.get_mut(&src_peer_id) {
                            if *n > 0 {
                                *n -= 1;
                                m.reservations.dec();
                            }
                        }
                        debug!(peer = %src_peer_id, "reservation expired");
                    }
                    relay::Event::CircuitReqAccepted {
                        src_peer_id,
                        dst_peer_id,
                    } => {
                        m.circuits_accepted.inc();
                        m.circuits.inc();
                        self.summary.circuits_accepted += 1;
                        debug!(src = %src_peer_id, dst = %dst_peer_id, "circuit opened");
                    }
                    relay::Event::CircuitReqDenied {
                        src_peer_id,
                        dst_peer_id,
                        status,
                    } => {
                        let reason = status_reason(&status);
                        m.circuit_refused(reason);
                        self.summary.circuits_refused += 1;
                        debug!(src = %src_peer_id, dst = %dst_peer_id, reason, "circuit refused");
                    }
                    relay::Event::CircuitClosed {
                        src_peer_id,
                        dst_peer_id,
                        error,
                    } => {
                        m.circuits.dec();
                        m.circuits_closed.inc();
                        debug!(
                            src = %src_peer_id,
                            dst = %dst_peer_id,
                            error = ?error.map(|e| e.kind()),
                            "circuit closed"
                        );
                    }
                    relay::Event::StatusChanged { status } => {
                        info!(?status, "relay advertisement status changed");
                    }
                    _ => {}
                }
            }
        }
    }

    fn on_rendezvous(&mut self, event: rendezvous::Event) {
        let m = &self.relay_metrics;
        match event {
            rendezvous::Event::Registered { peer, ttl } => {
                m.rendezvous_registrations.inc();
                debug!(%peer, ttl, "rendezvous registration");
            }
            rendezvous::Event::Discovered { peer, found } => {
                m.rendezvous_discoveries.inc();
                debug!(%peer, found, "rendezvous discover served");
            }
            rendezvous::Event::Unregistered { peer } => {
                debug!(%peer, "rendezvous unregistration");
            }
            rendezvous::Event::Refused {
                peer,
                request,
                reason,
            } => {
                m.rendezvous_refused(request, reason);
                debug!(%peer, request, reason, "rendezvous request refused");
            }
        }
    }
}

/// A listen error shown without the addresses that some of its variants carry.
struct ErrorKindOnly<'a>(&'a ListenError);

impl std::fmt::Display for ErrorKindOnly<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            ListenError::Aborted => "aborted",
            ListenError::WrongPeerId { .. } => "wrong peer id",
            ListenError::LocalPeerId { .. } => "local peer id",
            ListenError::Denied { .. } => "denied",
            ListenError::Transport(_) => "transport error",
        })
    }
}

fn status_reason(status: &relay::StatusCode) -> &'static str {
    match status {
        relay::StatusCode::OK => "ok",
        relay::StatusCode::ReservationRefused => "reservation_refused",
        relay::StatusCode::ResourceLimitExceeded => "resource_limit_exceeded",
        relay::StatusCode::PermissionDenied => "permission_denied",
        relay::StatusCode::ConnectionFailed => "connection_failed",
        relay::StatusCode::NoReservation => "no_reservation",
        relay::StatusCode::MalformedMessage => "malformed_message",
        relay::StatusCode::UnexpectedMessage => "unexpected_message",
    }
}

fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(a) => Some(IpAddr::V4(a)),
        Protocol::Ip6(a) => Some(IpAddr::V6(a)),
        _ => None,
    })
}

fn is_unspecified(addr: &Multiaddr) -> bool {
    ip_of(addr).is_some_and(|ip| ip.is_unspecified())
}

/// Whether `ip` is a public unicast address (not loopback, private, link-local, CGNAT,
/// documentation or unique-local).
fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || (o[0] == 100 && (o[1] & 0xc0) == 64))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || s[0] == 0x2001 && s[1] == 0x0db8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_addresses() {
        for (ip, global) in [
            ("127.0.0.1", false),
            ("10.1.2.3", false),
            ("192.168.1.1", false),
            ("100.64.0.1", false),
            ("203.0.113.5", false),
            ("8.8.8.8", true),
            ("::1", false),
            ("fe80::1", false),
            ("fd00::1", false),
            ("2a01:4f8::1", true),
        ] {
            let ip: IpAddr = ip
                .parse()
                .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
            assert_eq!(is_global(ip), global, "{ip}");
        }
    }
}
