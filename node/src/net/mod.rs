//! The libp2p side of a node: the swarm and its protocols, the relays it keeps reservations
//! on, and the small tasks that move bytes on streams.
//!
//! [`Net`] bundles what the node's driver owns on the network side and carries out what the
//! sans-IO policies decide (dials, reservations, closing circuits, opening streams).

pub mod relays;
pub mod streams;
pub mod swarm;
pub mod video;

use std::sync::Arc;

use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{identify, relay, rendezvous, Multiaddr, PeerId, Stream, Swarm};
use tokio::sync::mpsc;
use tracing::{debug, info};

pub use swarm::{
    build_swarm, build_swarm_with, is_relayed, keypair, peer_id, Behaviour, BehaviourEvent,
    NetConfig, NetError, MEDIA_PROTOCOL, ROOM_PROTOCOL, VIDEO_PROTOCOL,
};

use crate::clock::Instant;
use relays::{error_chain, Change, Refusal, RelayAction, RelayInput, Relays};
use streams::{
    Admitted, Inbound, MediaQueue, RoomStream, StreamSlot, INBOUND_QUEUE, MEDIA_INBOUND_QUEUE,
};

/// How a node's network side is set up.
#[derive(Debug, Clone)]
pub struct NetSetup {
    pub identity: [u8; 32],
    pub listen: Vec<Multiaddr>,
    /// Community relays (`…/p2p/<relay id>`): a reservation is kept on each.
    pub relays: Vec<Multiaddr>,
    /// Try DCUtR hole punches over relayed connections.
    pub hole_punch: bool,
    /// Dial and announce only circuit addresses (a call that must stay relayed).
    pub relay_only: bool,
}

/// The swarm and everything around it that the driver owns.
pub struct Net {
    pub swarm: Swarm<Behaviour>,
    pub control: libp2p_stream::Control,
    pub inbound_tx: mpsc::Sender<Inbound>,
    pub inbound_rx: mpsc::Receiver<Inbound>,
    /// Media frames, on a queue of their own.
    pub media_rx: mpsc::Receiver<Inbound>,
    /// Video messages, on a queue of their own.
    pub video_rx: mpsc::Receiver<video::VideoInbound>,
    /// The peers whose media streams are accepted.
    pub admitted: Admitted,
    pub relays: Relays,
    pub me: PeerId,
    pub relay_only: bool,
    listen_addrs: Vec<Multiaddr>,
    /// Listeners that have not reported an address yet, and until when relays wait for
    /// them: a relay dialed before the TCP listener is up leaves from an ephemeral port
    /// (no port reuse), so the relay observes, and identify advertises for hole punching,
    /// a port nobody can reach.
    pending_listeners: Vec<libp2p::core::transport::ListenerId>,
    listeners_deadline: Instant,
}

/// The longest relays wait for the listeners to come up.
const LISTENERS_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Net {
    /// Builds the swarm, listens, and starts accepting the confab streams. Needs a tokio
    /// runtime.
    pub fn new(setup: &NetSetup, now: Instant) -> Result<Self, NetError> {
        let key = keypair(&setup.identity)?;
        let me = key.public().to_peer_id();
        let mut swarm = build_swarm_with(
            key,
            NetConfig {
                hole_punch: setup.hole_punch,
            },
        )?;
        let relays = Relays::new(&setup.relays, now).map_err(NetError::Relay)?;
        let mut pending_listeners = Vec::new();
        for addr in &setup.listen {
            pending_listeners.push(swarm.listen_on(addr.clone()).map_err(|e| {
                NetError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                }
            })?);
        }
        let mut control = swarm.behaviour().stream.new_control();
        let accept = |c: &mut libp2p_stream::Control, p: libp2p::StreamProtocol| {
            let name = p.to_string();
            c.accept(p)
                .map_err(|e| NetError::Build(format!("cannot accept {name}: {e}")))
        };
        let room_incoming = accept(&mut control, ROOM_PROTOCOL)?;
        let media_incoming = accept(&mut control, MEDIA_PROTOCOL)?;
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let (media_tx, media_rx) = mpsc::channel(MEDIA_INBOUND_QUEUE);
        let admitted = Admitted::default();
        streams::spawn_acceptors(
            room_incoming,
            media_incoming,
            inbound_tx.clone(),
            media_tx,
            admitted.clone(),
        );
        let (video_tx, video_rx) = mpsc::channel(video::VIDEO_INBOUND_QUEUE);
        video::spawn_video_acceptor(
            accept(&mut control, VIDEO_PROTOCOL)?,
            video_tx,
            admitted.clone(),
        );
        Ok(Self {
            swarm,
            control,
            inbound_tx,
            inbound_rx,
            media_rx,
            video_rx,
            admitted,
            relays,
            me,
            relay_only: setup.relay_only,
            listen_addrs: Vec::new(),
            pending_listeners,
            listeners_deadline: now + LISTENERS_WAIT,
        })
    }

    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.swarm.is_connected(peer)
    }

    /// Our direct listen addresses.
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// Starts the relay dials and reservations that are due.
    pub fn drive_relays(&mut self, now: Instant) {
        if !self.pending_listeners.is_empty() && now < self.listeners_deadline {
            return;
        }
        let swarm = &self.swarm;
        let actions = self.relays.poll(now, &|p| swarm.is_connected(p));
        self.apply_relay_actions(actions, now);
    }

    fn apply_relay_actions(&mut self, actions: Vec<RelayAction>, now: Instant) {
        for action in actions {
            match action {
                RelayAction::Dial { relay, addr } => {
                    let opts = DialOpts::peer_id(relay).addresses(vec![addr]).build();
                    if let Err(e) = self.swarm.dial(opts) {
                        self.relays.dial_failed(relay, &error_chain(&e), now);
                    }
                }
                RelayAction::Reserve { relay, addr } => {
                    let result = self.swarm.listen_on(addr).map_err(|e| error_chain(&e));
                    self.relays.reserving(relay, result, now);
                }
                RelayAction::RemoveListener(id) => {
                    self.swarm.remove_listener(id);
                }
            }
        }
    }

    /// Follows a swarm event on the node's side (listen addresses, relays); returns what
    /// changed for the relays.
    pub fn on_swarm_event(&mut self, ev: &SwarmEvent<BehaviourEvent>, now: Instant) -> Change {
        match ev {
            SwarmEvent::NewListenAddr {
                address,
                listener_id,
            } if !is_relayed(address) => {
                // Circuit addresses are announced from the reservations (`Relays`).
                info!(%address, "listening");
                self.listen_addrs.push(address.clone());
                self.pending_listeners.retain(|l| l != listener_id);
            }
            SwarmEvent::ListenerClosed { listener_id, .. } => {
                self.pending_listeners.retain(|l| l != listener_id);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| a != address);
            }
            _ => {}
        }
        let Some(input) = relay_input(ev) else {
            return Change::default();
        };
        let (change, actions) = self.relays.on_input(input, now);
        self.apply_relay_actions(actions, now);
        change
    }

    /// What we announce in Hello: circuit addresses first (they work from anywhere), then the
    /// direct listen addresses, at most [`confab_protocol::wire::MAX_ADDRS`].
    pub fn announced(&self) -> Vec<String> {
        let direct = self
            .listen_addrs
            .iter()
            .filter(|_| !self.relay_only)
            .cloned();
        self.relays
            .circuit_addrs(self.me)
            .into_iter()
            .chain(direct)
            .map(|a| a.to_string())
            .filter(|a| a.len() <= confab_protocol::wire::MAX_ADDR_LEN)
            .take(confab_protocol::wire::MAX_ADDRS)
            .collect()
    }

    /// Dials a member: direct addresses, and circuit addresses on a dial of their own (a
    /// pending direct dial must not hold the circuit back).
    pub fn dial(&mut self, peer: PeerId, direct: Vec<Multiaddr>, circuits: Vec<Multiaddr>) {
        if !direct.is_empty() {
            let _ = self
                .swarm
                .dial(DialOpts::peer_id(peer).addresses(direct).build());
        }
        if !circuits.is_empty() {
            let opts = DialOpts::peer_id(peer)
                .condition(PeerCondition::Always)
                .addresses(circuits)
                .build();
            let _ = self.swarm.dial(opts);
        }
    }

    pub fn close_connections(&mut self, ids: &[ConnectionId]) {
        for id in ids {
            debug!(connection = %id, "closing the circuit");
            self.swarm.close_connection(*id);
        }
    }

    pub fn open_room_stream(&self, peer: PeerId) {
        streams::open_room_stream(&self.control, peer, &self.inbound_tx);
    }

    /// Starts the reader and writer of a room stream.
    pub fn start_room_stream(
        &self,
        peer: PeerId,
        stream: Stream,
        slot: Option<StreamSlot>,
    ) -> RoomStream {
        streams::spawn_room_stream(peer, stream, slot, self.inbound_tx.clone())
    }

    /// Accept media streams from `peer` (in a handshake or admitted) or no longer.
    pub fn admit_media(&self, peer: PeerId, yes: bool) {
        if let Ok(mut set) = self.admitted.lock() {
            if yes {
                set.insert(peer);
            } else {
                set.remove(&peer);
            }
        }
    }

    /// Accept media from nobody (the call ended).
    pub fn admit_no_media(&self) {
        if let Ok(mut set) = self.admitted.lock() {
            set.clear();
        }
    }

    /// Starts sending media to `peer`; frames go into the returned queue.
    pub fn start_media_sender(&self, peer: PeerId) -> Arc<MediaQueue> {
        let q = MediaQueue::new();
        streams::spawn_media_sender(
            self.control.clone(),
            peer,
            q.clone(),
            self.inbound_tx.clone(),
        );
        q
    }

    /// Starts sending video to `peer`; messages go into the returned queue.
    pub fn start_video_sender(&self, peer: PeerId) -> Arc<video::VideoQueue> {
        let q = video::VideoQueue::new(video::throttle_for(&peer));
        video::spawn_video_sender(self.control.clone(), peer, q.clone());
        q
    }

    /// Asks `relays`' rendezvous who is registered under `namespace`.
    pub fn discover(&mut self, namespace: &rendezvous::Namespace, relays: &[PeerId]) {
        for relay in relays {
            debug!(%relay, "looking the room up at the relay's rendezvous");
            self.swarm.behaviour_mut().rendezvous.discover(
                Some(namespace.clone()),
                None,
                None,
                *relay,
            );
        }
    }

    /// Takes our registration under `namespace` back from `relay`'s rendezvous.
    pub fn unregister(&mut self, namespace: &rendezvous::Namespace, relay: PeerId) {
        self.swarm
            .behaviour_mut()
            .rendezvous
            .unregister(namespace.clone(), relay);
    }

    /// Registers us at `relay`'s rendezvous under `namespace`.
    pub fn register(&mut self, namespace: &rendezvous::Namespace, relay: PeerId) {
        if let Err(e) =
            self.swarm
                .behaviour_mut()
                .rendezvous
                .register(namespace.clone(), relay, None)
        {
            debug!(%relay, error = %e, "cannot register at the relay's rendezvous");
        }
    }
}

/// The relays' view of a swarm event.
fn relay_input(ev: &SwarmEvent<BehaviourEvent>) -> Option<RelayInput> {
    Some(match ev {
        SwarmEvent::ConnectionEstablished {
            peer_id, endpoint, ..
        } if !endpoint.is_relayed() => RelayInput::Connected(*peer_id),
        SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
            peer_id,
            ..
        })) => RelayInput::Identified(*peer_id),
        SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            },
        )) => RelayInput::Accepted {
            relay: *relay_peer_id,
            renewal: *renewal,
        },
        SwarmEvent::ListenerClosed {
            listener_id,
            reason,
            ..
        } => RelayInput::ListenerClosed {
            listener: *listener_id,
            error: reason
                .as_ref()
                .err()
                .map(|e| (error_chain(e), Refusal::find(e))),
        },
        SwarmEvent::ConnectionClosed {
            peer_id,
            num_established: 0,
            ..
        } => RelayInput::Disconnected(*peer_id),
        SwarmEvent::OutgoingConnectionError {
            peer_id: Some(peer_id),
            error,
            ..
        } => RelayInput::DialFailed {
            peer: *peer_id,
            error: error_chain(error),
        },
        _ => return None,
    })
}
