//! The node: a long-lived owner of the swarm, the relays' reservations and the identity, on
//! which calls are started one after another.
//!
//! [`Node::start`] spawns the driver ([`driver`]) on the current tokio runtime and returns a
//! handle; the driver runs until [`Node::shutdown`] or until every handle is dropped. One
//! call runs at a time; after it ends, the next one starts on the same swarm.

mod driver;

use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use crate::call::session::Start;
use crate::call::{handle, CallConfig, CallError, CallEvents, CallHandle};
use crate::clock::Now;
use crate::media::{AudioSink, AudioSource};
use crate::net::{Net, NetError, NetSetup};

/// Commands queued toward the node.
const INBOX: usize = 16;

/// How a node is set up (see [`NetSetup`]).
pub type NodeConfig = NetSetup;

/// What a node handle asks of its driver.
pub(crate) enum NodeCommand {
    StartCall {
        start: Box<Start>,
        reply: oneshot::Sender<Result<(), CallError>>,
    },
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Shutdown(oneshot::Sender<()>),
}

/// A running node.
pub struct Node {
    inbox: mpsc::Sender<NodeCommand>,
    peer_id: PeerId,
    identity: [u8; 32],
    task: tokio::task::JoinHandle<()>,
}

impl Node {
    /// Builds the swarm, starts listening and keeping reservations, and runs the driver on
    /// the current tokio runtime.
    pub fn start(config: NodeConfig) -> Result<Node, NetError> {
        let net = Net::new(&config, Now::read().at)?;
        let peer_id = net.me;
        let (inbox, rx) = mpsc::channel(INBOX);
        let task = tokio::spawn(driver::Driver::new(net, rx).run());
        Ok(Node {
            inbox,
            peer_id,
            identity: config.identity,
            task,
        })
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Starts a call: audio from `source`, what is heard into `sink`. Fails with
    /// [`CallError::Busy`] while another call runs on this node.
    pub async fn start_call(
        &self,
        config: CallConfig,
        source: Box<dyn AudioSource>,
        sink: Box<dyn AudioSink>,
    ) -> Result<(CallHandle, CallEvents), CallError> {
        let (call, events, commands, events_tx) = handle::channels();
        let start = Box::new(Start {
            config,
            identity: self.identity,
            source,
            sink,
            commands,
            events: events_tx,
        });
        let (reply, rx) = oneshot::channel();
        self.inbox
            .send(NodeCommand::StartCall { start, reply })
            .await
            .map_err(|_| CallError::NodeStopped)?;
        rx.await.map_err(|_| CallError::NodeStopped)??;
        Ok((call, events))
    }

    /// The node's direct listen addresses.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        let (tx, rx) = oneshot::channel();
        if self.inbox.send(NodeCommand::ListenAddrs(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Ends the running call (if any, without a drain) and stops the node.
    pub async fn shutdown(self) {
        let (tx, rx) = oneshot::channel();
        if self.inbox.send(NodeCommand::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let _ = self.task.await;
    }
}
