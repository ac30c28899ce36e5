//! The call's view of each peer: its streams, its path, and what we hear from it.

use std::sync::Arc;

use confab_protocol::room::Room;
use libp2p::dcutr;
use libp2p::swarm::ConnectionId;
use libp2p::PeerId;
use tracing::{debug, info};

use super::events::CallEvent;
use super::policy::PathState;
use super::receive::Receiver;
use super::session::Session;
use crate::clock::Now;
use crate::net::streams::{MediaQueue, RoomStream};
use crate::net::{peer_id, Net};

/// One peer of the call (a member, or one that is connecting).
#[derive(Default)]
pub struct PeerCtx {
    /// The room stream (dropping it stops its reader).
    pub room_stream: Option<RoomStream>,
    pub media_out: Option<Arc<MediaQueue>>,
    pub remote: Option<Receiver>,
    pub path: PathState,
    pub member: bool,
    /// A room stream is being opened by us.
    pub opening: bool,
    /// Room streams reopened after a handshake broke off.
    pub room_retries: u32,
}

impl PeerCtx {
    pub fn room_stream_id(&self) -> Option<u64> {
        self.room_stream.as_ref().map(|s| s.id)
    }

    /// Nothing here is worth keeping once the peer is gone: not a member, nothing heard.
    pub fn is_stale(&self) -> bool {
        !self.member && self.remote.is_none() && self.room_stream.is_none() && !self.opening
    }
}

/// Opens the room stream to `peer` unless one exists or is being opened. The lower peer id
/// of a pair opens it; the other side waits for it.
pub fn maybe_open_room_stream(
    me: &PeerId,
    peer: PeerId,
    ctx: &mut PeerCtx,
    room: &Room,
    net: &Net,
) {
    if me.to_bytes() < peer.to_bytes()
        && ctx.room_stream.is_none()
        && !ctx.opening
        && !ctx.path.circuit_closing()
        && !room.knows(&peer.to_bytes())
    {
        ctx.opening = true;
        net.open_room_stream(peer);
    }
}

/// Hands what the room queued to the room streams' writers, never waiting: a writer that
/// is stuck loses its stream (the peer is not keeping up with control traffic), and the room
/// is told that the session is gone.
pub fn flush_transmits(
    room: &mut Room,
    peers: &mut std::collections::HashMap<PeerId, PeerCtx>,
    now_ms: u64,
) {
    let mut stuck = Vec::new();
    while let Some(t) = room.poll_transmit() {
        let Some(pid) = peer_id(&t.peer) else {
            continue;
        };
        let Some(ctx) = peers.get_mut(&pid) else {
            continue;
        };
        if let Some(s) = &ctx.room_stream {
            if s.writer.try_send((t.frame, t.close)).is_err() {
                debug!(peer = %pid, "room stream writer stuck; ending the session");
                ctx.room_stream = None;
                stuck.push(t.peer);
                continue;
            }
        }
        if t.close {
            ctx.room_stream = None;
        }
    }
    for peer in stuck {
        room.peer_disconnected(now_ms, &peer);
    }
}

impl Session {
    pub(super) fn on_connected(
        &mut self,
        net: &mut Net,
        peer: PeerId,
        id: ConnectionId,
        relayed: bool,
        now: Now,
    ) {
        if net.relays.is_relay(&peer) {
            return;
        }
        let ctx = self.peers.entry(peer).or_default();
        // A direct connection next to a circuit: a hole punch (DCUtR reports it too), or a
        // direct dial that got through after all.
        if ctx.path.on_connected(id, relayed, now.at) && ctx.member {
            self.out.emit(CallEvent::PathChanged {
                at_ms: now.ms,
                peer: peer.to_string(),
                path: ctx.path.path(),
            });
        }
        maybe_open_room_stream(&self.me, peer, ctx, &self.room, net);
    }

    pub(super) fn on_connection_closed(
        &mut self,
        net: &mut Net,
        peer: PeerId,
        id: ConnectionId,
        remaining: u32,
        now: Now,
    ) {
        let Some(ctx) = self.peers.get_mut(&peer) else {
            return;
        };
        ctx.path.on_closed(id);
        debug!(%peer, remaining, "connection closed");
        if remaining == 0 {
            ctx.path.migrating = false;
            self.room.peer_disconnected(now.ms, &peer.to_bytes());
            ctx.room_stream = None;
            if ctx.is_stale() {
                self.peers.remove(&peer);
            }
        } else if ctx.path.direct_only_after_punch() && ctx.room_stream.is_none() {
            // The circuit is gone and the direct connection stays: reopen the session there
            // if it broke with the circuit.
            maybe_open_room_stream(&self.me, peer, ctx, &self.room, net);
        }
    }

    pub(super) fn on_dcutr(&mut self, e: &dcutr::Event, now: Now) {
        match &e.result {
            Ok(_) => {
                info!(peer = %e.remote_peer_id, "hole punch succeeded; moving to the direct connection");
                let ctx = self.peers.entry(e.remote_peer_id).or_default();
                if ctx.path.on_punched(now.at) && ctx.member {
                    self.out.emit(CallEvent::PathChanged {
                        at_ms: now.ms,
                        peer: e.remote_peer_id.to_string(),
                        path: ctx.path.path(),
                    });
                }
            }
            Err(err) => {
                info!(peer = %e.remote_peer_id, error = %err, "hole punch failed; staying on the relay");
            }
        }
    }
}
