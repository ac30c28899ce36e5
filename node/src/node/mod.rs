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

/// A node whose driver the caller runs (see [`Node::build`]).
pub struct DetachedNode {
    inbox: mpsc::Sender<NodeCommand>,
    peer_id: PeerId,
    identity: [u8; 32],
}

impl DetachedNode {
    /// The node, once its driver runs as `task`.
    pub fn with_task(self, task: tokio::task::JoinHandle<()>) -> Node {
        Node {
            inbox: self.inbox,
            peer_id: self.peer_id,
            identity: self.identity,
            task: Some(task),
        }
    }

    /// The node, with its driver run by the caller.
    pub fn attached(self) -> Node {
        Node {
            inbox: self.inbox,
            peer_id: self.peer_id,
            identity: self.identity,
            task: None,
        }
    }
}

/// A running node.
pub struct Node {
    inbox: mpsc::Sender<NodeCommand>,
    peer_id: PeerId,
    identity: [u8; 32],
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Builds the swarm, starts listening and keeping reservations, and runs the driver on
    /// the current tokio runtime.
    pub fn start(config: NodeConfig) -> Result<Node, NetError> {
        let (node, driver) = Self::build(config)?;
        Ok(node.with_task(tokio::spawn(driver)))
    }

    /// Like [`Node::start`], but hands the driver back for the caller to run where it wants
    /// (the command line runs it on the runtime's main thread, so that one thread does the
    /// driver's work and no worker hands each frame on). The node does nothing until the
    /// driver runs; [`Node::shutdown`] ends it.
    pub fn build(
        config: NodeConfig,
    ) -> Result<(DetachedNode, impl std::future::Future<Output = ()> + Send), NetError> {
        let net = Net::new(&config, Now::read().at)?;
        let peer_id = net.me;
        let (inbox, rx) = mpsc::channel(INBOX);
        let node = DetachedNode {
            inbox,
            peer_id,
            identity: config.identity,
        };
        Ok((node, driver::Driver::new(net, rx).run()))
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
        if let Some(task) = self.task {
            let _ = task.await;
        }
    }
}
