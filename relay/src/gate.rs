//! Access policy in front of the circuit relay v2 server.
//!
//! libp2p's relay `Config` has no hook to refuse a peer, so [`Gate`] wraps the relay
//! behaviour: connections from peers that the policy allows get the relay's own handler;
//! any other peer gets a [`DenyHandler`] that speaks just enough of the hop protocol to
//! answer each request with a refusal status — `RESERVATION_REFUSED` for a reservation and
//! `PERMISSION_DENIED` for a circuit — so the client sees a clear error at once rather than
//! a hang or a generic "protocol not supported". Such a peer can hold no reservation, so
//! circuits *to* it are refused by the relay with `NO_RESERVATION`.
//!
//! Identify, ping, AutoNAT and rendezvous stay available to every peer.
//!
//! The gate also enforces the limits per source address ([`crate::iplimit`]): incoming
//! connections per IP are refused here, and reservations and circuits per IP through the
//! relay's rate-limiter hook ([`Gate::reservation_limiter`], [`Gate::circuit_limiter`]),
//! which answers `RESOURCE_LIMIT_EXCEEDED`; the gate recognises those refusals in the
//! relay's events and reports them as [`RefusalReason::PerIpLimit`].

use std::{
    collections::{HashMap, HashSet, VecDeque},
    convert::Infallible,
    io,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};

use futures::{
    future::BoxFuture, stream::FuturesUnordered, AsyncReadExt, AsyncWriteExt, StreamExt,
};
use libp2p::swarm::derive_prelude::Either;
use libp2p::{
    core::{transport::PortUse, upgrade::ReadyUpgrade, Endpoint},
    relay,
    swarm::{
        handler::{ConnectionEvent, FullyNegotiatedInbound},
        ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
        NetworkBehaviour, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
    },
    Multiaddr, PeerId, Stream,
};

use crate::iplimit::{IpKey, IpLedger, IpLimits};

/// Who may use the relay.
#[derive(Debug, Clone)]
pub enum Policy {
    /// Everyone.
    Open,
    /// Only these peers.
    Allowlist(HashSet<PeerId>),
}

impl Policy {
    /// Whether `peer` may reserve and open circuits.
    pub fn allows(&self, peer: &PeerId) -> bool {
        match self {
            Policy::Open => true,
            Policy::Allowlist(set) => set.contains(peer),
        }
    }
}

/// What a refused peer asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedRequest {
    /// A reservation.
    Reservation,
    /// A circuit.
    Circuit,
    /// Something unreadable on the hop protocol.
    Malformed,
}

/// Why the gate refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The peer is not on the allowlist.
    NotAllowed,
    /// Its IP address (IPv6: its /64) already holds as many as the per-IP limit allows.
    PerIpLimit,
}

impl RefusalReason {
    /// The metrics label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::NotAllowed => "not_allowed",
            RefusalReason::PerIpLimit => "per_ip_limit",
        }
    }
}

/// Events of the [`Gate`].
#[derive(Debug)]
pub enum GateEvent {
    /// An event of the wrapped relay behaviour.
    Relay(relay::Event),
    /// A request was refused by the gate.
    Refused {
        /// The refused peer.
        peer: PeerId,
        /// What it asked for.
        request: RefusedRequest,
        /// Why.
        reason: RefusalReason,
    },
}

/// An incoming connection refused because its IP already has as many as allowed.
#[derive(Debug, thiserror::Error)]
#[error("too many connections from one IP address")]
pub struct PerIpConnectionLimit;

/// Shared per-IP counts (the relay's rate-limiter hook and the gate both use them).
pub type SharedLedger = Arc<Mutex<IpLedger>>;

fn lock(ledger: &SharedLedger) -> MutexGuard<'_, IpLedger> {
    ledger
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The relay behaviour behind an access policy and per-IP limits.
pub struct Gate {
    inner: relay::Behaviour,
    policy: Policy,
    ledger: SharedLedger,
    connection_keys: HashMap<ConnectionId, IpKey>,
    denied_connections: HashSet<ConnectionId>,
    events: VecDeque<GateEvent>,
}

/// A new per-IP ledger with `limits`.
pub fn ledger(limits: IpLimits) -> SharedLedger {
    Arc::new(Mutex::new(IpLedger::new(limits)))
}

impl Gate {
    /// Wrap `inner` with `policy`. `ledger` must be the one whose
    /// [`Gate::reservation_limiter`] and [`Gate::circuit_limiter`] went into `inner`'s config.
    pub fn new(inner: relay::Behaviour, policy: Policy, ledger: SharedLedger) -> Self {
        Gate {
            inner,
            policy,
            ledger,
            connection_keys: HashMap::new(),
            denied_connections: HashSet::new(),
            events: VecDeque::new(),
        }
    }

    /// The relay rate limiter that enforces reservations per IP. It must come last in
    /// `reservation_rate_limiters`, so that it only counts requests that are accepted.
    pub fn reservation_limiter(ledger: &SharedLedger) -> Box<dyn relay::RateLimiter> {
        let ledger = ledger.clone();
        Box::new(move |peer: PeerId, addr: &Multiaddr, _now| lock(&ledger).try_reserve(peer, addr))
    }

    /// The relay rate limiter that enforces circuits per source IP; last in
    /// `circuit_src_rate_limiters`.
    pub fn circuit_limiter(ledger: &SharedLedger) -> Box<dyn relay::RateLimiter> {
        let ledger = ledger.clone();
        Box::new(move |peer: PeerId, addr: &Multiaddr, _now| lock(&ledger).try_circuit(peer, addr))
    }

    /// Update the ledger from a relay event; `Some` when the event is a per-IP refusal.
    #[allow(deprecated)]
    fn account(&mut self, event: &relay::Event) -> Option<GateEvent> {
        let mut l = lock(&self.ledger);
        match event {
            relay::Event::ReservationReqDenied {
                src_peer_id,
                status: relay::StatusCode::ResourceLimitExceeded,
            } if l.take_reservation_denial(src_peer_id) => {
                return Some(GateEvent::Refused {
                    peer: *src_peer_id,
                    request: RefusedRequest::Reservation,
                    reason: RefusalReason::PerIpLimit,
                });
            }
            relay::Event::ReservationTimedOut { src_peer_id }
            | relay::Event::ReservationClosed { src_peer_id }
            | relay::Event::ReservationReqAcceptFailed { src_peer_id, .. } => {
                l.reservation_ended(src_peer_id);
            }
            relay::Event::CircuitReqDenied {
                src_peer_id,
                status: relay::StatusCode::ResourceLimitExceeded,
                ..
            } if l.take_circuit_denial(src_peer_id) => {
                return Some(GateEvent::Refused {
                    peer: *src_peer_id,
                    request: RefusedRequest::Circuit,
                    reason: RefusalReason::PerIpLimit,
                });
            }
            // Refused by another limit before the per-IP check: nothing was counted.
            relay::Event::CircuitReqDenied {
                status: relay::StatusCode::ResourceLimitExceeded,
                ..
            } => {}
            relay::Event::CircuitReqDenyFailed { src_peer_id, .. }
                if l.take_circuit_denial(src_peer_id) => {}
            relay::Event::CircuitReqDenied { src_peer_id, .. }
            | relay::Event::CircuitReqDenyFailed { src_peer_id, .. }
            | relay::Event::CircuitReqAcceptFailed { src_peer_id, .. } => {
                l.circuit_failed(src_peer_id);
            }
            relay::Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            } => l.circuit_accepted(*src_peer_id, *dst_peer_id),
            relay::Event::CircuitClosed {
                src_peer_id,
                dst_peer_id,
                ..
            } => l.circuit_closed(*src_peer_id, *dst_peer_id),
            _ => {}
        }
        None
    }
}

type InnerHandler = THandler<relay::Behaviour>;

impl NetworkBehaviour for Gate {
    type ConnectionHandler = Either<InnerHandler, DenyHandler>;
    type ToSwarm = GateEvent;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let key = IpKey::of_multiaddr(remote_addr);
        if let Some(key) = key {
            if !lock(&self.ledger).try_connection(key) {
                return Err(ConnectionDenied::new(PerIpConnectionLimit));
            }
        }
        let handler = if self.policy.allows(&peer) {
            self.inner
                .handle_established_inbound_connection(connection_id, peer, local_addr, remote_addr)
                .map(Either::Left)
        } else {
            self.denied_connections.insert(connection_id);
            Ok(Either::Right(DenyHandler::default()))
        };
        if let Some(key) = key {
            if handler.is_ok() {
                self.connection_keys.insert(connection_id, key);
            } else {
                lock(&self.ledger).connection_closed(key);
            }
        }
        handler
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if self.policy.allows(&peer) {
            self.inner
                .handle_established_outbound_connection(
                    connection_id,
                    peer,
                    addr,
                    role_override,
                    port_use,
                )
                .map(Either::Left)
        } else {
            self.denied_connections.insert(connection_id);
            Ok(Either::Right(DenyHandler::default()))
        }
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(closed) = &event {
            self.denied_connections.remove(&closed.connection_id);
            let mut l = lock(&self.ledger);
            if let Some(key) = self.connection_keys.remove(&closed.connection_id) {
                l.connection_closed(key);
            }
            if closed.remaining_established == 0 {
                l.peer_gone(&closed.peer_id);
            }
        }
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {
            Either::Left(ev) => self
                .inner
                .on_connection_handler_event(peer, connection_id, ev),
            Either::Right(request) => self.events.push_back(GateEvent::Refused {
                peer,
                request,
                reason: RefusalReason::NotAllowed,
            }),
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<GateEvent, THandlerInEvent<Self>>> {
        if let Some(ev) = self.events.pop_front() {
            return Poll::Ready(ToSwarm::GenerateEvent(ev));
        }
        loop {
            match self.inner.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(ToSwarm::NotifyHandler {
                    handler: libp2p::swarm::NotifyHandler::One(id),
                    ..
                }) if self.denied_connections.contains(&id) => {
                    // The relay tells every connection about status changes; connections
                    // of refused peers run the deny handler and need not know.
                    continue;
                }
                Poll::Ready(ToSwarm::GenerateEvent(ev)) => {
                    let out = self.account(&ev).unwrap_or(GateEvent::Relay(ev));
                    return Poll::Ready(ToSwarm::GenerateEvent(out));
                }
                Poll::Ready(action) => {
                    return Poll::Ready(action.map_out(GateEvent::Relay).map_in(Either::Left));
                }
            }
        }
    }
}

/// Time a refused peer gets to send its request.
const DENY_TIMEOUT: Duration = Duration::from_secs(10);
/// Hop requests answered at once on one connection; more are dropped.
const MAX_PENDING_DENIALS: usize = 4;
/// Largest hop message we read (the protocol's own limit is 4 KiB).
const MAX_HOP_MESSAGE: usize = 4096;

// Hop message field numbers and enum values from the circuit relay v2 spec.
const HOP_TYPE_RESERVE: u64 = 0;
const HOP_TYPE_CONNECT: u64 = 1;
const HOP_TYPE_STATUS: u64 = 2;
const STATUS_RESERVATION_REFUSED: u64 = 200;
const STATUS_PERMISSION_DENIED: u64 = 202;
const STATUS_MALFORMED_MESSAGE: u64 = 400;

/// Connection handler for peers outside the allowlist: answers every hop request with a
/// refusal.
#[derive(Default)]
pub struct DenyHandler {
    pending: FuturesUnordered<BoxFuture<'static, io::Result<RefusedRequest>>>,
}

impl ConnectionHandler for DenyHandler {
    type FromBehaviour = Infallible;
    type ToBehaviour = RefusedRequest;
    type InboundProtocol = ReadyUpgrade<libp2p::StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<libp2p::StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = Infallible;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, ()> {
        SubstreamProtocol::new(ReadyUpgrade::new(relay::HOP_PROTOCOL_NAME), ())
    }

    fn on_behaviour_event(&mut self, event: Infallible) {
        match event {}
    }

    fn connection_keep_alive(&self) -> bool {
        !self.pending.is_empty()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, Infallible, RefusedRequest>> {
        while let Poll::Ready(Some(result)) = self.pending.poll_next_unpin(cx) {
            if let Ok(request) = result {
                return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(request));
            }
        }
        Poll::Pending
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol, (), Infallible>,
    ) {
        if let ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
            protocol: stream,
            ..
        }) = event
        {
            if self.pending.len() < MAX_PENDING_DENIALS {
                self.pending.push(Box::pin(async move {
                    tokio::time::timeout(DENY_TIMEOUT, refuse(stream))
                        .await
                        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
                }));
            }
        }
    }
}

/// Read one hop request and answer it with a refusal.
async fn refuse(mut stream: Stream) -> io::Result<RefusedRequest> {
    let len = read_varint_async(&mut stream).await?;
    let len = usize::try_from(len)
        .ok()
        .filter(|l| *l <= MAX_HOP_MESSAGE)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "hop message too large"))?;
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    let (request, status) = match hop_message_type(&buf) {
        Some(HOP_TYPE_RESERVE) => (RefusedRequest::Reservation, STATUS_RESERVATION_REFUSED),
        Some(HOP_TYPE_CONNECT) => (RefusedRequest::Circuit, STATUS_PERMISSION_DENIED),
        _ => (RefusedRequest::Malformed, STATUS_MALFORMED_MESSAGE),
    };
    let mut body = Vec::with_capacity(8);
    body.push(0x08); // field 1 (type), varint
    write_varint(&mut body, HOP_TYPE_STATUS);
    body.push(0x28); // field 5 (status), varint
    write_varint(&mut body, status);
    let mut frame = Vec::with_capacity(body.len() + 1);
    write_varint(&mut frame, body.len() as u64);
    frame.extend_from_slice(&body);
    stream.write_all(&frame).await?;
    stream.flush().await?;
    stream.close().await?;
    Ok(request)
}

fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

async fn read_varint_async(stream: &mut Stream) -> io::Result<u64> {
    let mut value = 0u64;
    for i in 0..10 {
        let mut b = [0u8; 1];
        stream.read_exact(&mut b).await?;
        value |= u64::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "varint too long",
    ))
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..10 {
        let b = *buf.get(*pos)?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The `type` field (1) of an encoded HopMessage, skipping other fields.
fn hop_message_type(buf: &[u8]) -> Option<u64> {
    let mut pos = 0;
    while pos < buf.len() {
        let key = read_varint(buf, &mut pos)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                let v = read_varint(buf, &mut pos)?;
                if field == 1 {
                    return Some(v);
                }
            }
            2 => {
                let len = usize::try_from(read_varint(buf, &mut pos)?).ok()?;
                pos = pos.checked_add(len).filter(|p| *p <= buf.len())?;
            }
            1 => pos = pos.checked_add(8).filter(|p| *p <= buf.len())?,
            5 => pos = pos.checked_add(4).filter(|p| *p <= buf.len())?,
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_type_after_other_fields() {
        // field 2 (peer, bytes) then field 1 = CONNECT
        let msg = [0x12, 0x02, 0xaa, 0xbb, 0x08, 0x01];
        assert_eq!(hop_message_type(&msg), Some(HOP_TYPE_CONNECT));
        assert_eq!(hop_message_type(&[0x08, 0x00]), Some(HOP_TYPE_RESERVE));
        assert_eq!(hop_message_type(&[0x12, 0x09, 0x00]), None);
        assert_eq!(hop_message_type(&[]), None);
    }

    #[test]
    fn varint_roundtrip() {
        for v in [0u64, 1, 127, 128, 200, 300, 16_384, u64::MAX] {
            let mut out = Vec::new();
            write_varint(&mut out, v);
            let mut pos = 0;
            assert_eq!(read_varint(&out, &mut pos), Some(v));
            assert_eq!(pos, out.len());
        }
    }
}
