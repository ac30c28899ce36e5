//! A bounded rendezvous server (protocol `/rendezvous/1.0.0`, wire-compatible with
//! `libp2p::rendezvous::client`).
//!
//! libp2p's server keeps its store private and decides every request itself, so it cannot
//! be told to refuse a `discover` without a namespace (which lists every room's members) or
//! a registration whose signed record is large. This one keeps the same protocol and adds:
//!
//! - `discover` must name a namespace (otherwise `E_INVALID_NAMESPACE`);
//! - a request is at most `max_record_bytes + 4 KiB` on the wire (a larger one resets the
//!   stream) and a signed peer record at most `max_record_bytes` (`E_INVALID_SIGNED_PEER_RECORD`);
//! - registrations are capped per peer and in total (`E_UNAVAILABLE`), their TTL lies
//!   within `[min_ttl_secs, max_ttl_secs]` (`E_INVALID_TTL`), and a discover returns at
//!   most `max_discover_results` (clients page with the cookie).
//!
//! Registrations expire after their TTL and are removed when their peer unregisters.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{
    core::{transport::PortUse, Endpoint, PeerRecord, SignedEnvelope},
    request_response::{self, ProtocolSupport},
    swarm::{
        ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
        THandlerOutEvent, ToSwarm,
    },
    Multiaddr, PeerId, StreamProtocol,
};

use crate::config::RendezvousConfig;

/// The rendezvous protocol.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/rendezvous/1.0.0");
/// Longest namespace (the protocol's limit).
pub const MAX_NAMESPACE: usize = 255;
/// TTL of a registration that asks for none (the protocol's default).
pub const DEFAULT_TTL_SECS: u64 = 2 * 3600;
/// Wire room for a request besides its signed record.
const REQUEST_OVERHEAD: usize = 4096;
/// Time a peer gets to send its request and read the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests served at once on one connection.
const MAX_STREAMS_PER_CONNECTION: usize = 8;

// Message types and statuses from the rendezvous spec.
const TYPE_REGISTER: u64 = 0;
const TYPE_REGISTER_RESPONSE: u64 = 1;
const TYPE_UNREGISTER: u64 = 2;
const TYPE_DISCOVER: u64 = 3;
const TYPE_DISCOVER_RESPONSE: u64 = 4;

/// A response status of the rendezvous protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `OK`.
    Ok = 0,
    /// `E_INVALID_NAMESPACE`.
    InvalidNamespace = 100,
    /// `E_INVALID_SIGNED_PEER_RECORD`.
    InvalidSignedPeerRecord = 101,
    /// `E_INVALID_TTL`.
    InvalidTtl = 102,
    /// `E_INVALID_COOKIE`.
    InvalidCookie = 103,
    /// `E_NOT_AUTHORIZED`.
    NotAuthorized = 200,
    /// `E_UNAVAILABLE`.
    Unavailable = 400,
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `REGISTER`.
    Register {
        /// Namespace.
        ns: Option<String>,
        /// Signed peer record (envelope bytes).
        record: Option<Vec<u8>>,
        /// Requested TTL.
        ttl: Option<u64>,
    },
    /// `UNREGISTER`.
    Unregister {
        /// Namespace.
        ns: Option<String>,
    },
    /// `DISCOVER`.
    Discover {
        /// Namespace (required here).
        ns: Option<String>,
        /// Most results wanted.
        limit: Option<u64>,
        /// Cookie of an earlier answer.
        cookie: Option<Vec<u8>>,
    },
    /// Anything else (a response type, an unknown type, or no body).
    Malformed,
}

/// What the server did with a request; each refusal has a name for the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A registration was stored (or refreshed).
    Registered {
        /// The peer.
        peer: PeerId,
        /// Granted TTL.
        ttl: u64,
    },
    /// A discover request was answered with this many registrations.
    Discovered {
        /// The enquirer.
        peer: PeerId,
        /// Registrations returned.
        found: usize,
    },
    /// A peer took its registration back.
    Unregistered {
        /// The peer.
        peer: PeerId,
    },
    /// A request was refused.
    Refused {
        /// The peer.
        peer: PeerId,
        /// The request kind: `register`, `discover`, `unregister` or `malformed`.
        request: &'static str,
        /// Why (a metrics label).
        reason: &'static str,
    },
}

// ---- protobuf helpers -------------------------------------------------------------------

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
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

fn put_varint_field(out: &mut Vec<u8>, field: u64, v: u64) {
    put_varint(out, field << 3);
    put_varint(out, v);
}

fn put_bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn get_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
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

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// The fields of one protobuf message, in order; `None` if it is malformed.
fn fields(buf: &[u8]) -> Option<Vec<(u64, Value<'_>)>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let key = get_varint(buf, &mut pos)?;
        let field = key >> 3;
        match key & 7 {
            0 => out.push((field, Value::Varint(get_varint(buf, &mut pos)?))),
            2 => {
                let len = usize::try_from(get_varint(buf, &mut pos)?).ok()?;
                let end = pos.checked_add(len).filter(|e| *e <= buf.len())?;
                out.push((field, Value::Bytes(&buf[pos..end])));
                pos = end;
            }
            1 => pos = pos.checked_add(8).filter(|p| *p <= buf.len())?,
            5 => pos = pos.checked_add(4).filter(|p| *p <= buf.len())?,
            _ => return None,
        }
    }
    Some(out)
}

fn varint_of(fs: &[(u64, Value<'_>)], field: u64) -> Option<u64> {
    fs.iter().rev().find_map(|(f, v)| match v {
        Value::Varint(n) if *f == field => Some(*n),
        _ => None,
    })
}

fn bytes_of<'a>(fs: &[(u64, Value<'a>)], field: u64) -> Option<&'a [u8]> {
    fs.iter().rev().find_map(|(f, v)| match v {
        Value::Bytes(b) if *f == field => Some(*b),
        _ => None,
    })
}

fn string_of(fs: &[(u64, Value<'_>)], field: u64) -> Option<String> {
    bytes_of(fs, field).map(|b| String::from_utf8_lossy(b).into_owned())
}

/// Decode a request message (without its length prefix). Never panics.
pub fn decode_request(buf: &[u8]) -> Request {
    let Some(top) = fields(buf) else {
        return Request::Malformed;
    };
    let body = |field| bytes_of(&top, field).and_then(fields);
    match varint_of(&top, 1) {
        Some(TYPE_REGISTER) => match body(2) {
            Some(r) => Request::Register {
                ns: string_of(&r, 1),
                record: bytes_of(&r, 2).map(<[u8]>::to_vec),
                ttl: varint_of(&r, 3),
            },
            None => Request::Malformed,
        },
        Some(TYPE_UNREGISTER) => match body(4) {
            Some(u) => Request::Unregister {
                ns: string_of(&u, 1),
            },
            None => Request::Malformed,
        },
        Some(TYPE_DISCOVER) => match body(5) {
            Some(d) => Request::Discover {
                ns: string_of(&d, 1),
                limit: varint_of(&d, 2),
                cookie: bytes_of(&d, 3).map(<[u8]>::to_vec),
            },
            None => Request::Malformed,
        },
        _ => Request::Malformed,
    }
}

fn register_response(status: Status, ttl: u64) -> Vec<u8> {
    let mut body = Vec::new();
    put_varint_field(&mut body, 1, status as u64);
    if status == Status::Ok {
        put_varint_field(&mut body, 3, ttl);
    }
    let mut msg = Vec::new();
    put_varint_field(&mut msg, 1, TYPE_REGISTER_RESPONSE);
    put_bytes_field(&mut msg, 3, &body);
    msg
}

fn discover_response(status: Status, found: &[(&str, &[u8], u64)], cookie: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (ns, record, ttl) in found {
        let mut reg = Vec::new();
        put_bytes_field(&mut reg, 1, ns.as_bytes());
        put_bytes_field(&mut reg, 2, record);
        put_varint_field(&mut reg, 3, *ttl);
        put_bytes_field(&mut body, 1, &reg);
    }
    if status == Status::Ok {
        put_bytes_field(&mut body, 2, cookie);
    }
    put_varint_field(&mut body, 3, status as u64);
    let mut msg = Vec::new();
    put_varint_field(&mut msg, 1, TYPE_DISCOVER_RESPONSE);
    put_bytes_field(&mut msg, 6, &body);
    msg
}

// ---- codec ------------------------------------------------------------------------------

/// Length-prefixed messages with a size limit.
#[derive(Debug, Clone)]
pub struct Codec {
    max_message: usize,
}

async fn read_message<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut len = 0u64;
    let mut done = false;
    for i in 0..10 {
        let mut b = [0u8; 1];
        io.read_exact(&mut b).await?;
        len |= u64::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            done = true;
            break;
        }
    }
    let len = usize::try_from(len)
        .ok()
        .filter(|l| done && *l <= max)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "message too large"))?;
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_message<T: AsyncWrite + Unpin + Send>(io: &mut T, msg: Vec<u8>) -> io::Result<()> {
    let mut frame = Vec::with_capacity(msg.len() + 4);
    put_varint(&mut frame, msg.len() as u64);
    frame.extend_from_slice(&msg);
    io.write_all(&frame).await?;
    io.close().await
}

impl request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        Ok(decode_request(&read_message(io, self.max_message).await?))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_message(io, self.max_message).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        _io: &mut T,
        _req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the rendezvous server sends no requests",
        ))
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_message(io, res).await
    }
}

// ---- store ------------------------------------------------------------------------------

struct Entry {
    record: Vec<u8>,
    ttl: u64,
    seq: u64,
    expires: Instant,
}

/// Registrations, bounded, with expiry and cookie order.
pub struct Store {
    config: RendezvousConfig,
    entries: HashMap<(String, PeerId), Entry>,
    by_ns: HashMap<String, BTreeMap<u64, PeerId>>,
    per_peer: HashMap<PeerId, usize>,
    expiry: BTreeMap<(Instant, u64), (String, PeerId)>,
    next_seq: u64,
}

/// An answer: the response bytes (none for unregister) and the event.
type Answer = (Option<Vec<u8>>, Event);

impl Store {
    /// An empty store.
    pub fn new(config: RendezvousConfig) -> Self {
        Store {
            config,
            entries: HashMap::new(),
            by_ns: HashMap::new(),
            per_peer: HashMap::new(),
            expiry: BTreeMap::new(),
            next_seq: 1,
        }
    }

    /// Registrations held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn remove(&mut self, ns: &str, peer: &PeerId) {
        let Some(entry) = self.entries.remove(&(ns.to_owned(), *peer)) else {
            return;
        };
        self.expiry.remove(&(entry.expires, entry.seq));
        if let Some(m) = self.by_ns.get_mut(ns) {
            m.remove(&entry.seq);
            if m.is_empty() {
                self.by_ns.remove(ns);
            }
        }
        if let Some(n) = self.per_peer.get_mut(peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_peer.remove(peer);
            }
        }
    }

    fn purge(&mut self, now: Instant) {
        while let Some((&(at, seq), _)) = self.expiry.first_key_value() {
            if at > now {
                break;
            }
            if let Some((ns, peer)) = self.expiry.remove(&(at, seq)) {
                self.remove(&ns, &peer);
            }
        }
    }

    /// Serve one request from `peer`.
    pub fn handle(&mut self, peer: PeerId, request: Request, now: Instant) -> Answer {
        self.purge(now);
        match request {
            Request::Register { ns, record, ttl } => self.register(peer, ns, record, ttl, now),
            Request::Discover { ns, limit, cookie } => self.discover(peer, ns, limit, cookie),
            Request::Unregister { ns } => {
                if let Some(ns) = ns {
                    self.remove(&ns, &peer);
                }
                (None, Event::Unregistered { peer })
            }
            Request::Malformed => (
                None,
                Event::Refused {
                    peer,
                    request: "malformed",
                    reason: "malformed",
                },
            ),
        }
    }

    fn register(
        &mut self,
        peer: PeerId,
        ns: Option<String>,
        record: Option<Vec<u8>>,
        ttl: Option<u64>,
        now: Instant,
    ) -> Answer {
        let refuse = |status, reason| {
            (
                Some(register_response(status, 0)),
                Event::Refused {
                    peer,
                    request: "register",
                    reason,
                },
            )
        };
        let Some(ns) = ns.filter(|n| !n.is_empty() && n.len() <= MAX_NAMESPACE) else {
            return refuse(Status::InvalidNamespace, "invalid_namespace");
        };
        let Some(record) = record else {
            return refuse(Status::InvalidSignedPeerRecord, "invalid_record");
        };
        if record.len() > self.config.max_record_bytes {
            return refuse(Status::InvalidSignedPeerRecord, "record_too_large");
        }
        let signer = SignedEnvelope::from_protobuf_encoding(&record)
            .ok()
            .and_then(|env| PeerRecord::from_signed_envelope(env).ok())
            .map(|r| r.peer_id());
        match signer {
            None => return refuse(Status::InvalidSignedPeerRecord, "invalid_record"),
            Some(p) if p != peer => return refuse(Status::NotAuthorized, "not_authorized"),
            Some(_) => {}
        }
        let (min, max) = (self.config.min_ttl_secs, self.config.max_ttl_secs);
        let ttl = ttl.unwrap_or(DEFAULT_TTL_SECS.clamp(min, max));
        if !(min..=max).contains(&ttl) {
            return refuse(Status::InvalidTtl, "invalid_ttl");
        }
        let key = (ns.clone(), peer);
        if !self.entries.contains_key(&key) {
            if self.per_peer.get(&peer).copied().unwrap_or(0)
                >= self.config.max_registrations_per_peer
            {
                return refuse(Status::Unavailable, "per_peer_limit");
            }
            if self.entries.len() >= self.config.max_registrations_total {
                return refuse(Status::Unavailable, "total_limit");
            }
        }
        self.remove(&ns, &peer);
        let seq = self.next_seq;
        self.next_seq += 1;
        // `ttl` is bounded by the validated `max_ttl_secs`, so this cannot overflow.
        let expires = now + Duration::from_secs(ttl);
        self.entries.insert(
            key,
            Entry {
                record,
                ttl,
                seq,
                expires,
            },
        );
        self.by_ns.entry(ns.clone()).or_default().insert(seq, peer);
        *self.per_peer.entry(peer).or_default() += 1;
        self.expiry.insert((expires, seq), (ns, peer));
        (
            Some(register_response(Status::Ok, ttl)),
            Event::Registered { peer, ttl },
        )
    }

    fn discover(
        &mut self,
        peer: PeerId,
        ns: Option<String>,
        limit: Option<u64>,
        cookie: Option<Vec<u8>>,
    ) -> Answer {
        let refuse = |status, reason| {
            (
                Some(discover_response(status, &[], &[])),
                Event::Refused {
                    peer,
                    request: "discover",
                    reason,
                },
            )
        };
        let Some(ns) = ns.filter(|n| !n.is_empty() && n.len() <= MAX_NAMESPACE) else {
            return refuse(Status::InvalidNamespace, "no_namespace");
        };
        // A cookie is the last sequence number returned (8 bytes, big endian) and the
        // namespace, the layout libp2p's client expects.
        let after = match cookie {
            None => 0,
            Some(c) => match c.split_first_chunk::<8>() {
                Some((seq, rest)) if rest == ns.as_bytes() => u64::from_be_bytes(*seq),
                _ => return refuse(Status::InvalidCookie, "invalid_cookie"),
            },
        };
        let cap = self.config.max_discover_results;
        let limit = limit
            .and_then(|l| usize::try_from(l).ok())
            .filter(|l| *l > 0)
            .map_or(cap, |l| l.min(cap));
        let mut found = Vec::new();
        let mut last = after;
        if let Some(peers) = self.by_ns.get(&ns) {
            for (seq, p) in peers.range(after.saturating_add(1)..).take(limit) {
                if let Some(e) = self.entries.get(&(ns.clone(), *p)) {
                    found.push((ns.as_str(), e.record.as_slice(), e.ttl));
                    last = *seq;
                }
            }
        }
        let mut next_cookie = last.to_be_bytes().to_vec();
        next_cookie.extend_from_slice(ns.as_bytes());
        let n = found.len();
        (
            Some(discover_response(Status::Ok, &found, &next_cookie)),
            Event::Discovered { peer, found: n },
        )
    }
}

// ---- behaviour --------------------------------------------------------------------------

/// The rendezvous server behaviour.
pub struct Behaviour {
    inner: request_response::Behaviour<Codec>,
    store: Store,
}

impl Behaviour {
    /// A server with `config` (validated by [`crate::Config::validate`]).
    pub fn new(config: RendezvousConfig) -> Self {
        let codec = Codec {
            max_message: config.max_record_bytes.saturating_add(REQUEST_OVERHEAD),
        };
        let rr = request_response::Config::default()
            .with_request_timeout(REQUEST_TIMEOUT)
            .with_max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
        Behaviour {
            inner: request_response::Behaviour::with_codec(
                codec,
                std::iter::once((PROTOCOL, ProtocolSupport::Inbound)),
                rr,
            ),
            store: Store::new(config),
        }
    }

    /// Registrations held now.
    pub fn registrations(&self) -> usize {
        self.store.len()
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = THandler<request_response::Behaviour<Codec>>;
    type ToSwarm = Event;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner
            .handle_established_inbound_connection(id, peer, local, remote)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addrs: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner
            .handle_pending_outbound_connection(id, peer, addrs, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner
            .handle_established_outbound_connection(id, peer, addr, role, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner.on_connection_handler_event(peer, id, event);
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        loop {
            match self.inner.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(ToSwarm::GenerateEvent(request_response::Event::Message {
                    peer,
                    message:
                        request_response::Message::Request {
                            request, channel, ..
                        },
                    ..
                })) => {
                    let (response, event) = self.store.handle(peer, request, Instant::now());
                    if let Some(bytes) = response {
                        // A peer that went away gets no answer; nothing else to do.
                        let _ = self.inner.send_response(channel, bytes);
                    }
                    return Poll::Ready(ToSwarm::GenerateEvent(event));
                }
                Poll::Ready(ToSwarm::GenerateEvent(_)) => continue,
                Poll::Ready(other) => {
                    // Not an event (dial, notify handler, ...): the closure is never called.
                    return Poll::Ready(other.map_out(|_| Event::Unregistered {
                        peer: PeerId::random(),
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;

    fn record_of(key: &Keypair, addrs: usize) -> Vec<u8> {
        let addrs: Vec<Multiaddr> = (0..addrs)
            .map(|i| {
                Multiaddr::empty()
                    .with(libp2p::multiaddr::Protocol::Ip4([192, 0, 2, 1].into()))
                    .with(libp2p::multiaddr::Protocol::Tcp(i as u16))
            })
            .collect();
        PeerRecord::new(key, addrs)
            .map(|r| r.into_signed_envelope().into_protobuf_encoding())
            .unwrap_or_default()
    }

    fn register(ns: &str, record: Vec<u8>) -> Request {
        Request::Register {
            ns: Some(ns.into()),
            record: Some(record),
            ttl: None,
        }
    }

    #[test]
    fn register_then_discover_with_cookie() {
        let mut s = Store::new(RendezvousConfig::default());
        let now = Instant::now();
        let keys: Vec<Keypair> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
        for k in &keys {
            let peer = k.public().to_peer_id();
            let (_, ev) = s.handle(peer, register("room", record_of(k, 2)), now);
            assert!(matches!(ev, Event::Registered { .. }), "{ev:?}");
        }
        let me = PeerId::random();
        let disc = |limit, cookie| Request::Discover {
            ns: Some("room".into()),
            limit,
            cookie,
        };
        let (_, ev) = s.handle(me, disc(Some(2), None), now);
        assert_eq!(ev, Event::Discovered { peer: me, found: 2 });
        let mut cookie = 2u64.to_be_bytes().to_vec();
        cookie.extend_from_slice(b"room");
        let (_, ev) = s.handle(me, disc(None, Some(cookie)), now);
        assert_eq!(ev, Event::Discovered { peer: me, found: 1 });
        // Expiry.
        let later = now + Duration::from_secs(DEFAULT_TTL_SECS + 1);
        let (_, ev) = s.handle(me, disc(None, None), later);
        assert_eq!(ev, Event::Discovered { peer: me, found: 0 });
        assert!(s.is_empty());
    }

    #[test]
    fn refusals_are_named() {
        let mut s = Store::new(RendezvousConfig {
            max_registrations_per_peer: 1,
            ..RendezvousConfig::default()
        });
        let now = Instant::now();
        let k = Keypair::generate_ed25519();
        let peer = k.public().to_peer_id();
        let reason = |a: Answer| match a.1 {
            Event::Refused { reason, .. } => reason,
            _ => "accepted",
        };
        let no_ns = Request::Discover {
            ns: None,
            limit: None,
            cookie: None,
        };
        assert_eq!(reason(s.handle(peer, no_ns, now)), "no_namespace");
        assert_eq!(
            reason(s.handle(peer, register("a", record_of(&k, 500)), now)),
            "record_too_large"
        );
        let other = Keypair::generate_ed25519();
        assert_eq!(
            reason(s.handle(peer, register("a", record_of(&other, 1)), now)),
            "not_authorized"
        );
        assert_eq!(
            reason(s.handle(peer, register("a", b"junk".to_vec()), now)),
            "invalid_record"
        );
        assert_eq!(
            reason(s.handle(peer, register("a", record_of(&k, 1)), now)),
            "accepted"
        );
        assert_eq!(
            reason(s.handle(peer, register("a", record_of(&k, 1)), now)),
            "accepted",
            "a refresh is not a new registration"
        );
        assert_eq!(
            reason(s.handle(peer, register("b", record_of(&k, 1)), now)),
            "per_peer_limit"
        );
        let long_ttl = Request::Register {
            ns: Some("a".into()),
            record: Some(record_of(&k, 1)),
            ttl: Some(u64::MAX),
        };
        assert_eq!(reason(s.handle(peer, long_ttl, now)), "invalid_ttl");
        s.handle(
            peer,
            Request::Unregister {
                ns: Some("a".into()),
            },
            now,
        );
        assert!(s.is_empty());
    }

    #[test]
    fn decoder_roundtrips_and_survives_junk() {
        let mut reg = Vec::new();
        put_bytes_field(&mut reg, 1, b"ns");
        put_bytes_field(&mut reg, 2, b"rec");
        put_varint_field(&mut reg, 3, 7200);
        let mut msg = Vec::new();
        put_varint_field(&mut msg, 1, TYPE_REGISTER);
        put_bytes_field(&mut msg, 2, &reg);
        assert_eq!(
            decode_request(&msg),
            Request::Register {
                ns: Some("ns".into()),
                record: Some(b"rec".to_vec()),
                ttl: Some(7200)
            }
        );
        for junk in [&[][..], &[0xff; 12], &[0x08, 0x03], &[0x12, 0x80]] {
            assert!(matches!(
                decode_request(junk),
                Request::Malformed | Request::Discover { .. }
            ));
        }
    }
}
