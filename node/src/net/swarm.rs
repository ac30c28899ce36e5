//! The libp2p side of a node: transports, behaviours and the two confab stream protocols.

use std::time::Duration;

use libp2p::{
    connection_limits, dcutr, identify, identity::Keypair, memory_connection_limits, noise, ping,
    relay, rendezvous, swarm::behaviour::toggle::Toggle, swarm::NetworkBehaviour, tcp, yamux,
    Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder,
};

/// One bidirectional stream per pair of members: Noise handshake, then control messages.
pub const ROOM_PROTOCOL: StreamProtocol = StreamProtocol::new("/confab/room/1");
/// One unidirectional stream per (sender → receiver): length-prefixed encrypted media frames.
pub const MEDIA_PROTOCOL: StreamProtocol = StreamProtocol::new("/confab/media/1");
/// One unidirectional stream per (sender → receiver) for video: fragments of sealed frames,
/// and keyframe requests (see `confab_protocol::video::wire`).
pub const VIDEO_PROTOCOL: StreamProtocol = StreamProtocol::new("/confab/video/1");
/// Identify protocol version string.
pub const AGENT_PROTOCOL: &str = "/confab/1";

/// Connections a node takes at once: enough for a full room over direct and relayed paths
/// with redials, not enough for one host to exhaust the node's memory or file descriptors.
pub const MAX_INCOMING_PENDING: u32 = 64;
pub const MAX_INCOMING: u32 = 256;
pub const MAX_PER_PEER: u32 = 4;
/// Above this process memory, new connections are refused.
pub const MAX_MEMORY_BYTES: usize = 512 * 1024 * 1024;

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Bounds on connections (first, so refusals happen before anything else is spent).
    pub limits: connection_limits::Behaviour,
    pub memory: memory_connection_limits::Behaviour,
    pub relay_client: relay::client::Behaviour,
    /// Hole punching; off only when a test wants a call to stay relayed.
    pub dcutr: Toggle<dcutr::Behaviour>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub stream: libp2p_stream::Behaviour,
    /// Room discovery at relays, under a hash of the room id.
    pub rendezvous: rendezvous::client::Behaviour,
}

/// Knobs of the swarm a call builds.
#[derive(Debug, Clone, Copy)]
pub struct NetConfig {
    /// Try DCUtR hole punches over relayed connections (default on).
    pub hole_punch: bool,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self { hole_punch: true }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot build the libp2p swarm: {0}")]
    Build(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("{0}")]
    Relay(String),
}

/// Builds a swarm for `key`: TCP (Noise + Yamux), QUIC, relay client, DCUtR, identify, ping
/// and raw streams.
pub fn build_swarm(key: Keypair) -> Result<Swarm<Behaviour>, NetError> {
    build_swarm_with(key, NetConfig::default())
}

/// [`build_swarm`] with explicit knobs.
pub fn build_swarm_with(key: Keypair, cfg: NetConfig) -> Result<Swarm<Behaviour>, NetError> {
    let err = |e: &dyn std::fmt::Display| NetError::Build(e.to_string());
    let swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| err(&e))?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| err(&e))?
        .with_behaviour(|key, relay_client| Behaviour {
            limits: connection_limits::Behaviour::new(
                connection_limits::ConnectionLimits::default()
                    .with_max_pending_incoming(Some(MAX_INCOMING_PENDING))
                    .with_max_established_incoming(Some(MAX_INCOMING))
                    .with_max_established_per_peer(Some(MAX_PER_PEER)),
            ),
            memory: memory_connection_limits::Behaviour::with_max_bytes(MAX_MEMORY_BYTES),
            relay_client,
            dcutr: Toggle::from(
                cfg.hole_punch
                    .then(|| dcutr::Behaviour::new(key.public().to_peer_id())),
            ),
            identify: identify::Behaviour::new(
                // Only confirmed external addresses are advertised, never every listen
                // address (LAN, VPN, container bridges) to whoever connects: members learn
                // each other's addresses from their Hellos, inside the room's sessions.
                identify::Config::new(AGENT_PROTOCOL.into(), key.public())
                    .with_agent_version(format!("confab/{}", env!("CARGO_PKG_VERSION")))
                    .with_hide_listen_addrs(true),
            ),
            ping: ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(Duration::from_secs(2))
                    .with_timeout(Duration::from_secs(5)),
            ),
            stream: libp2p_stream::Behaviour::new(),
            rendezvous: rendezvous::client::Behaviour::new(key.clone()),
        })
        .map_err(|e| err(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build();
    Ok(swarm)
}

/// The libp2p keypair of an account's Ed25519 secret.
pub fn keypair(secret: &[u8; 32]) -> Result<Keypair, NetError> {
    let mut bytes = *secret;
    Keypair::ed25519_from_bytes(&mut bytes).map_err(|e| NetError::Build(e.to_string()))
}

/// Whether an address goes through a relay circuit.
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter()
        .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2pCircuit))
}

/// The libp2p `PeerId` for peer id bytes from the protocol crate.
pub fn peer_id(bytes: &[u8]) -> Option<PeerId> {
    PeerId::from_bytes(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_peer_ids_match_libp2p() {
        let secret = [42u8; 32];
        let key = keypair(&secret).expect("key");
        let ours = confab_protocol::crypto::Identity::from_secret_bytes(&secret).peer_id();
        assert_eq!(key.public().to_peer_id().to_bytes(), ours);
    }
}
