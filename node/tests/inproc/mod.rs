//! Helpers shared by the in-process node tests (`session.rs`, `hostile.rs`): nodes on
//! loopback, their addresses, and tickets for rooms they create.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use confab_node::net::{build_swarm, keypair};
use confab_node::{Node, NodeConfig};
use confab_protocol::crypto::Identity;
use confab_protocol::ticket::Ticket;
use confab_protocol::wire::PeerInfo;
use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use rand::RngCore;

/// 32 random bytes: an identity or a room secret.
pub fn secret() -> [u8; 32] {
    let mut s = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut s);
    s
}

/// A node listening on a free loopback port, without relays or hole punching.
pub fn node(identity: [u8; 32]) -> Node {
    Node::start(NodeConfig {
        identity,
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        relays: vec![],
        hole_punch: false,
        relay_only: false,
    })
    .expect("node")
}

/// The node's listen addresses, once it has any.
pub async fn addrs_of(node: &Node) -> Vec<Multiaddr> {
    for _ in 0..200 {
        let a = node.listen_addrs().await;
        if !a.is_empty() {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the node never listened");
}

/// A ticket for a new room whose creator (identity `creator`) is at `addrs`.
pub fn ticket(creator: &[u8; 32], addrs: &[Multiaddr]) -> Ticket {
    let mut room_id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut room_id);
    Ticket {
        room_id,
        room_secret: secret(),
        bootstrap: vec![PeerInfo {
            peer_id: Identity::from_secret_bytes(creator).peer_id(),
            addrs: addrs.iter().map(|a| a.to_string()).collect(),
        }],
    }
}

/// A libp2p peer of its own with `identity`, connected to every address of `targets` (each
/// with its `/p2p/`), its swarm driven by a task from then on: its stream control and id.
pub async fn connected_peer(
    identity: &[u8; 32],
    targets: &[Multiaddr],
) -> (libp2p_stream::Control, PeerId) {
    let mut swarm = build_swarm(keypair(identity).unwrap()).unwrap();
    let control = swarm.behaviour().stream.new_control();
    let peer = *swarm.local_peer_id();
    for a in targets {
        swarm.dial(a.clone()).unwrap();
    }
    let mut connected = 0;
    while connected < targets.len() {
        let ev = tokio::time::timeout(Duration::from_secs(10), swarm.select_next_some())
            .await
            .expect("the peer connects");
        if let SwarmEvent::ConnectionEstablished { .. } = ev {
            connected += 1;
        }
    }
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    (control, peer)
}

pub mod rogue;
