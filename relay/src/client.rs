//! A minimal relay *client*, used by the tests and the benchmark (and a reference for
//! how a node talks to this relay): TCP + Noise + Yamux, the relay client transport,
//! identify, ping and `libp2p-stream`.

use std::{error::Error as StdError, time::Duration};

use futures::StreamExt;
use libp2p::{
    identify, identity::Keypair, multiaddr::Protocol, noise, ping, relay, swarm::NetworkBehaviour,
    swarm::SwarmEvent, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder,
};

use crate::Error;

/// Protocol of the test and benchmark streams.
pub const TEST_PROTOCOL: StreamProtocol = StreamProtocol::new("/confab-relay/test/1");

/// Behaviour of the test client.
#[derive(NetworkBehaviour)]
pub struct ClientBehaviour {
    /// Relay client.
    pub relay: relay::client::Behaviour,
    /// Ping (also over circuits).
    pub ping: ping::Behaviour,
    /// Identify (the relay learns nothing it needs from it, but real nodes run it).
    pub identify: identify::Behaviour,
    /// Raw streams.
    pub stream: libp2p_stream::Behaviour,
    /// Rendezvous client (room discovery by hashed namespace).
    pub rendezvous: libp2p::rendezvous::client::Behaviour,
}

/// A client swarm with a fresh identity.
pub fn new_client() -> Result<Swarm<ClientBehaviour>, Error> {
    new_client_with_key(Keypair::generate_ed25519())
}

/// A client swarm with `key`.
pub fn new_client_with_key(key: Keypair) -> Result<Swarm<ClientBehaviour>, Error> {
    let swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| Error::Libp2p(e.to_string()))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| Error::Libp2p(e.to_string()))?
        .with_behaviour(|key, relay| ClientBehaviour {
            relay,
            ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(1))),
            identify: identify::Behaviour::new(identify::Config::new(
                "/confab/test/1".into(),
                key.public(),
            )),
            stream: libp2p_stream::Behaviour::new(),
            rendezvous: libp2p::rendezvous::client::Behaviour::new(key.clone()),
        })
        .map_err(|e| Error::Libp2p(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    Ok(swarm)
}

/// Render an error and all its sources on one line.
pub fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// The circuit address through which `peer` is reachable on `relay_addr`.
pub fn circuit_addr(relay_addr: &Multiaddr, peer: PeerId) -> Multiaddr {
    relay_addr
        .clone()
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(peer))
}

/// Reserve a slot on the relay at `relay_addr` (which ends in `/p2p/<relay id>`).
///
/// Returns the circuit address others can dial, or the refusal as text (the full error
/// chain, e.g. "...: Failed to get Reservation.: Reservation refused.").
pub async fn reserve(
    swarm: &mut Swarm<ClientBehaviour>,
    relay_addr: &Multiaddr,
    timeout: Duration,
) -> Result<Multiaddr, String> {
    let listen = relay_addr.clone().with(Protocol::P2pCircuit);
    let id = swarm
        .listen_on(listen)
        .map_err(|e| format!("listen_on: {}", error_chain(&e)))?;
    let local = *swarm.local_peer_id();
    let fut = async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(ClientBehaviourEvent::Relay(
                    relay::client::Event::ReservationReqAccepted { .. },
                )) => return Ok(circuit_addr(relay_addr, local)),
                SwarmEvent::ListenerClosed {
                    listener_id,
                    reason: Err(e),
                    ..
                } if listener_id == id => return Err(error_chain(&e)),
                SwarmEvent::ListenerClosed { listener_id, .. } if listener_id == id => {
                    return Err("listener closed without error".into());
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| Err(format!("no answer to the reservation within {timeout:?}")))
}

/// Dial `addr` and wait until a connection to `peer` is up (or the dial fails).
pub async fn dial(
    swarm: &mut Swarm<ClientBehaviour>,
    addr: &Multiaddr,
    peer: PeerId,
    timeout: Duration,
) -> Result<(), String> {
    swarm
        .dial(addr.clone())
        .map_err(|e| format!("dial: {}", error_chain(&e)))?;
    let fut = async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == peer => {
                    return Ok(());
                }
                SwarmEvent::OutgoingConnectionError {
                    peer_id: Some(p),
                    error,
                    ..
                } if p == peer => return Err(error_chain(&error)),
                _ => {}
            }
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| Err(format!("no connection within {timeout:?}")))
}

/// Keep driving `swarm` in the background (until the task is aborted).
pub fn spawn_driver(mut swarm: Swarm<ClientBehaviour>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let _ = swarm.select_next_some().await;
        }
    })
}
