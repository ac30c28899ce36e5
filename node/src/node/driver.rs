//! The node's driver: one task that owns the swarm and the running call, with a short loop
//! that waits for the next thing to happen and hands it to a handler.

use std::future::pending;

use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use tokio::sync::mpsc;
use tracing::debug;

use super::NodeCommand;
use crate::call::session::{CallInput, Session};
use crate::clock::{Instant, Now};
use crate::net::streams::Inbound;
use crate::net::{BehaviourEvent, Net};

/// The longest the driver sleeps with nothing due.
const IDLE_WAKE: std::time::Duration = std::time::Duration::from_millis(250);

pub(super) struct Driver {
    net: Net,
    call: Option<Session>,
    inbox: mpsc::Receiver<NodeCommand>,
    stopping: bool,
}

impl Driver {
    pub(super) fn new(net: Net, inbox: mpsc::Receiver<NodeCommand>) -> Self {
        Self {
            net,
            call: None,
            inbox,
            stopping: false,
        }
    }

    pub(super) async fn run(mut self) {
        while !self.stopping {
            let now = Now::read();
            self.net.drive_relays(now.at);
            let wake = self.next_wake(now);
            tokio::select! {
                ev = self.net.swarm.select_next_some() => self.on_swarm_event(ev),
                Some(msg) = self.net.media_rx.recv() => self.on_inbound(msg),
                Some(msg) = self.net.inbound_rx.recv() => self.on_inbound(msg),
                Some(msg) = self.net.video_rx.recv() => self.on_video(msg),
                cmd = self.inbox.recv() => self.on_command(cmd),
                input = next_call_input(&mut self.call) => self.on_call_input(input),
                _ = tokio::time::sleep_until(wake) => {}
            }
            self.on_tick();
        }
        if let Some(call) = self.call.take() {
            call.finish(&mut self.net, Now::read());
        }
    }

    fn next_wake(&self, now: Now) -> Instant {
        let mut wake = now.at + IDLE_WAKE;
        if let Some(t) = self.net.relays.next_wake() {
            wake = wake.min(t.max(now.at));
        }
        if let Some(call) = &self.call {
            wake = wake.min(call.poll_timeout(now).max(now.at));
        }
        wake
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        let now = Now::read();
        let change = self.net.on_swarm_event(&ev, now.at);
        if let Some(call) = self.call.as_mut() {
            call.on_swarm_event(&mut self.net, &ev, change, now);
        }
    }

    fn on_inbound(&mut self, msg: Inbound) {
        match self.call.as_mut() {
            Some(call) => call.on_inbound(&mut self.net, msg, Now::read()),
            // Between calls nobody may open a session: the stream is dropped.
            None => {
                if let Inbound::RoomStream { peer, .. } = msg {
                    debug!(%peer, "room stream while no call runs; closing it");
                }
            }
        }
    }

    fn on_video(&mut self, msg: crate::net::video::VideoInbound) {
        if let Some(call) = self.call.as_mut() {
            call.on_video_inbound(msg);
        }
    }

    fn on_command(&mut self, cmd: Option<NodeCommand>) {
        let Some(cmd) = cmd else {
            self.stopping = true;
            return;
        };
        match cmd {
            NodeCommand::StartCall { start, reply } => {
                let result = if self.call.is_some() {
                    Err(crate::call::CallError::Busy)
                } else {
                    Session::start(&mut self.net, *start, Now::read()).map(|s| {
                        self.call = Some(s);
                    })
                };
                let _ = reply.send(result);
            }
            NodeCommand::ListenAddrs(reply) => {
                let _ = reply.send(self.net.listen_addrs().to_vec());
            }
            NodeCommand::Shutdown(reply) => {
                self.stopping = true;
                if let Some(call) = self.call.take() {
                    call.finish(&mut self.net, Now::read());
                }
                let _ = reply.send(());
            }
        }
    }

    fn on_call_input(&mut self, input: CallInput) {
        let Some(call) = self.call.as_mut() else {
            return;
        };
        match input {
            CallInput::Command(cmd) => call.on_command(cmd, Now::read()),
            CallInput::Video(frame) => call.on_local_video(frame, Now::read()),
        }
    }

    fn on_tick(&mut self) {
        let Some(call) = self.call.as_mut() else {
            return;
        };
        let now = Now::read();
        call.on_tick(&mut self.net, now);
        if call.is_done() {
            if let Some(call) = self.call.take() {
                call.finish(&mut self.net, now);
            }
        }
    }
}

/// The running call's next command or video frame from its page; never, while no call
/// runs.
async fn next_call_input(call: &mut Option<Session>) -> CallInput {
    match call.as_mut() {
        Some(c) => c.next_input().await,
        None => pending().await,
    }
}
