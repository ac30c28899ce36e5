//! Wire formats. See `docs/protocol.md` for the byte-level specification.
//!
//! Two streams carry confab traffic between a pair of members:
//!
//! * `/confab/room/1` — a sequence of [`RoomFrame`]s: Noise handshake messages, then Noise
//!   transport messages whose plaintext is one [`Control`] message each.
//! * `/confab/media/1` — a sequence of length-prefixed [`MediaFrame`]s, each encrypted end to
//!   end with the sender's key (see [`crate::crypto`]).
//!
//! Every decoder here checks lengths against the limits below before it allocates, rejects
//! trailing bytes, and never panics.

use crate::error::{Error, Result};

/// Version byte of every room frame and control message defined here.
pub const VERSION: u8 = 1;
/// Version byte of media frames: 2 since the header carries the frame duration and the
/// codec's look-ahead (version 1 had neither and is refused).
pub const MEDIA_VERSION: u8 = 2;
/// Largest room-stream frame body (after the 2-byte length prefix).
pub const MAX_ROOM_FRAME: usize = 16 * 1024;
/// Largest media frame (header + ciphertext + tag), after the 2-byte length prefix.
pub const MAX_MEDIA_FRAME: usize = 1500;
/// Largest Opus payload accepted inside a media frame.
pub const MAX_MEDIA_PAYLOAD: usize = MAX_MEDIA_FRAME - MEDIA_HEADER_LEN - 16 - 2;
/// Largest display name, in bytes of UTF-8.
pub const MAX_NAME: usize = 64;
/// Largest multiaddr string.
pub const MAX_ADDR_LEN: usize = 256;
/// Most addresses announced for one peer.
pub const MAX_ADDRS: usize = 8;
/// Largest peer id (multihash bytes).
pub const MAX_PEER_ID: usize = 64;
/// Most members in a roster message (and in a room).
pub const MAX_MEMBERS: usize = 64;
/// Longest chat message, in bytes of UTF-8.
pub const MAX_CHAT: usize = 2000;
/// Length of the cleartext media header.
pub const MEDIA_HEADER_LEN: usize = 21;
/// Frame durations a media header may declare, ms (Opus frame sizes from 10 ms up).
pub const FRAME_DURATIONS_MS: [u8; 4] = [10, 20, 40, 60];
/// Largest codec look-ahead a media header may declare, µs (Opus' is 2.5 or 6.5 ms).
pub const MAX_LOOKAHEAD_US: u16 = 20_000;
/// Length of the ChaCha20-Poly1305 / Noise authentication tag.
pub const TAG_LEN: usize = 16;
/// Shortest Noise handshake message body: message 1 is a bare 32-byte ephemeral key, and
/// every later one is longer.
pub const MIN_HANDSHAKE_BODY: usize = 32;
/// Shortest Noise transport message body: the smallest control message (version and
/// type) plus the tag.
pub const MIN_TRANSPORT_BODY: usize = 2 + TAG_LEN;
/// Shortest media ciphertext: the 2-byte payload length plus the tag.
pub const MIN_MEDIA_CIPHERTEXT: usize = 2 + TAG_LEN;

/// A cursor over untrusted bytes. All reads are bounds-checked.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(Error::Truncated {
                needed: n - self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A byte string with a one-byte length prefix, at most `limit` bytes.
    pub fn short_bytes(&mut self, what: &'static str, limit: usize) -> Result<&'a [u8]> {
        let len = usize::from(self.u8()?);
        if len > limit {
            return Err(Error::TooLong { what, len, limit });
        }
        self.bytes(len)
    }

    /// A UTF-8 string with a one-byte length prefix, at most `limit` bytes.
    pub fn short_str(&mut self, what: &'static str, limit: usize) -> Result<String> {
        let raw = self.short_bytes(what, limit)?;
        String::from_utf8(raw.to_vec()).map_err(|_| Error::Malformed(what))
    }

    /// A count prefix (one byte), at most `limit`.
    pub fn count(&mut self, what: &'static str, limit: usize) -> Result<usize> {
        let n = usize::from(self.u8()?);
        if n > limit {
            return Err(Error::TooLong {
                what,
                len: n,
                limit,
            });
        }
        Ok(n)
    }

    pub fn finish(self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::TrailingBytes(self.buf.len()))
        }
    }
}

/// Appends big-endian fields to a byte vector.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }
    /// One-byte length prefix; the caller guarantees `v.len() <= 255` (encoders truncate
    /// or validate before calling).
    pub fn short_bytes(&mut self, v: &[u8]) -> &mut Self {
        let len = v.len().min(255);
        self.buf.push(len as u8);
        self.buf.extend_from_slice(&v[..len]);
        self
    }
}

/// Truncates a UTF-8 string to at most `limit` bytes on a character boundary.
pub fn truncate_utf8(s: &str, limit: usize) -> &str {
    if s.len() <= limit {
        return s;
    }
    let mut end = limit;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Puts the 2-byte big-endian length prefix used on both streams in front of `body`.
pub fn length_prefixed(body: &[u8]) -> Result<Vec<u8>> {
    let len = u16::try_from(body.len()).map_err(|_| Error::TooLong {
        what: "frame",
        len: body.len(),
        limit: usize::from(u16::MAX),
    })?;
    let mut out = Vec::with_capacity(body.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

/// One frame on the `/confab/room/1` stream (after the length prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomFrame {
    /// A Noise handshake message.
    Handshake(Vec<u8>),
    /// A Noise transport message; its plaintext is an encoded [`Control`].
    Transport(Vec<u8>),
    /// Sent in clear by a side that refuses the other, right before closing the stream.
    Reject(RejectReason),
}

/// Why a member refused a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The handshake did not authenticate: the peer holds a different room secret.
    BadSecret,
    /// The identity proof in the handshake payload was missing or did not verify.
    BadIdentity,
    /// The room is at its member limit.
    RoomFull,
    /// Anything else (malformed message, protocol violation).
    Protocol,
}

impl RejectReason {
    fn to_byte(self) -> u8 {
        match self {
            RejectReason::BadSecret => 1,
            RejectReason::BadIdentity => 2,
            RejectReason::RoomFull => 3,
            RejectReason::Protocol => 4,
        }
    }
    fn from_byte(b: u8) -> Result<Self> {
        Ok(match b {
            1 => RejectReason::BadSecret,
            2 => RejectReason::BadIdentity,
            3 => RejectReason::RoomFull,
            4 => RejectReason::Protocol,
            _ => return Err(Error::Malformed("reject reason")),
        })
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RejectReason::BadSecret => "wrong room secret",
            RejectReason::BadIdentity => "invalid identity proof",
            RejectReason::RoomFull => "room is full",
            RejectReason::Protocol => "protocol violation",
        })
    }
}

impl RoomFrame {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            RoomFrame::Handshake(b) => w.u8(1).bytes(b),
            RoomFrame::Transport(b) => w.u8(2).bytes(b),
            RoomFrame::Reject(r) => w.u8(3).u8(r.to_byte()),
        };
        w.buf
    }

    /// Decodes one frame body. An empty frame, and a handshake or transport frame too
    /// short to hold any valid Noise message, are errors.
    pub fn decode(buf: &[u8]) -> Result<Self> {
        check_len("room frame", buf.len(), MAX_ROOM_FRAME)?;
        if buf.is_empty() {
            return Err(Error::Malformed("empty room frame"));
        }
        let mut r = Reader::new(buf);
        let kind = r.u8()?;
        let rest = r.bytes(r.remaining())?;
        match kind {
            1 => {
                check_min(rest.len(), MIN_HANDSHAKE_BODY)?;
                Ok(RoomFrame::Handshake(rest.to_vec()))
            }
            2 => {
                check_min(rest.len(), MIN_TRANSPORT_BODY)?;
                Ok(RoomFrame::Transport(rest.to_vec()))
            }
            3 => {
                let mut r = Reader::new(rest);
                let reason = RejectReason::from_byte(r.u8()?)?;
                r.finish()?;
                Ok(RoomFrame::Reject(reason))
            }
            t => Err(Error::UnknownType(t)),
        }
    }
}

/// An address list: a count, then each address as short bytes. Addresses over
/// [`MAX_ADDR_LEN`] are left out and at most [`MAX_ADDRS`] are written.
fn write_addrs(w: &mut Writer, addrs: &[String]) {
    let addrs: Vec<&String> = addrs
        .iter()
        .filter(|a| a.len() <= MAX_ADDR_LEN)
        .take(MAX_ADDRS)
        .collect();
    w.u8(addrs.len() as u8);
    for a in addrs {
        w.short_bytes(a.as_bytes());
    }
}

fn read_addrs(r: &mut Reader<'_>) -> Result<Vec<String>> {
    let n = r.count("address list", MAX_ADDRS)?;
    let mut addrs = Vec::with_capacity(n);
    for _ in 0..n {
        addrs.push(r.short_str("address", MAX_ADDR_LEN)?);
    }
    Ok(addrs)
}

/// `Err(TooLong)` when `len` exceeds `limit`.
fn check_len(what: &'static str, len: usize, limit: usize) -> Result<()> {
    if len > limit {
        return Err(Error::TooLong { what, len, limit });
    }
    Ok(())
}

/// `Err(Truncated)` when `len` is below `min`.
fn check_min(len: usize, min: usize) -> Result<()> {
    if len < min {
        return Err(Error::Truncated { needed: min - len });
    }
    Ok(())
}

/// Whether `addr` is a multiaddr (text form) that a node could dial: an `ip4`, `ip6` or
/// `dns*` host (not unspecified, multicast or broadcast) followed by known protocols with
/// well-formed values, including a `tcp` or `udp` port (not 0) unless it is a `dnsaddr`.
/// The protocol crate does not depend on libp2p; this is a conservative syntactic check,
/// and the node still parses what it dials.
pub fn is_dialable(addr: &str) -> bool {
    if addr.len() > MAX_ADDR_LEN {
        return false;
    }
    let Some(rest) = addr.strip_prefix('/') else {
        return false;
    };
    let mut parts = rest.split('/');
    let (Some(proto), Some(value)) = (parts.next(), parts.next()) else {
        return false;
    };
    let host_ok = match proto {
        "ip4" => value
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| !ip.is_unspecified() && !ip.is_multicast() && !ip.is_broadcast()),
        "ip6" => value
            .parse::<std::net::Ipv6Addr>()
            .is_ok_and(|ip| !ip.is_unspecified() && !ip.is_multicast()),
        "dns" | "dns4" | "dns6" | "dnsaddr" => is_hostname(value),
        _ => false,
    };
    if !host_ok {
        return false;
    }
    let mut has_port = proto == "dnsaddr";
    while let Some(proto) = parts.next() {
        let ok = match proto {
            "tcp" | "udp" => {
                has_port = true;
                parts
                    .next()
                    .and_then(|v| v.parse::<u16>().ok())
                    .is_some_and(|port| port != 0)
            }
            "p2p" | "ipfs" | "certhash" => parts.next().is_some_and(is_token),
            "sni" => parts.next().is_some_and(is_hostname),
            "quic" | "quic-v1" | "webtransport" | "ws" | "wss" | "tls" | "noise" | "http"
            | "https" | "webrtc" | "webrtc-direct" | "p2p-circuit" => true,
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    has_port
}

/// A DNS name: 1 to 253 bytes of letters, digits, `-` and `.`, no empty label.
fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A multibase/base58 value (peer id, certificate hash): 1 to 128 URL-safe characters.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Keeps the dialable addresses of `addrs` (duplicates removed), at most `limit` of them.
/// Also returns how many were dropped for not being dialable.
pub fn dialable_addrs(addrs: Vec<String>, limit: usize) -> (Vec<String>, usize) {
    let mut kept: Vec<String> = Vec::new();
    let mut dropped = 0;
    for a in addrs {
        if !is_dialable(&a) {
            dropped += 1;
        } else if kept.len() < limit && !kept.contains(&a) {
            kept.push(a);
        }
    }
    (kept, dropped)
}

/// Whether `bytes` have the shape of a libp2p peer id: a multihash with the identity
/// (`0x00`) or SHA2-256 (`0x12`) code and a one-byte length that matches the rest.
pub fn plausible_peer_id(bytes: &[u8]) -> bool {
    match bytes {
        [code, len, rest @ ..] => {
            (*code == 0x00 || *code == 0x12) && !rest.is_empty() && usize::from(*len) == rest.len()
        }
        _ => false,
    }
}

/// A peer and the addresses it can be reached at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerInfo {
    /// libp2p peer id bytes (multihash).
    pub peer_id: Vec<u8>,
    /// Multiaddrs as strings (the protocol crate does not parse them).
    pub addrs: Vec<String>,
}

impl PeerInfo {
    pub(crate) fn write(&self, w: &mut Writer) {
        w.short_bytes(&self.peer_id);
        write_addrs(w, &self.addrs);
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self> {
        let peer_id = r.short_bytes("peer id", MAX_PEER_ID)?.to_vec();
        if peer_id.is_empty() {
            return Err(Error::Malformed("empty peer id"));
        }
        let addrs = read_addrs(r)?;
        Ok(Self { peer_id, addrs })
    }
}

/// Control messages, carried inside the pairwise Noise session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// First message each side sends after the handshake.
    Hello {
        /// Display name (at most [`MAX_NAME`] bytes).
        name: String,
        /// Where the sender can be reached.
        addrs: Vec<String>,
        /// Whether the sender is recording the call.
        recording: bool,
    },
    /// The members the sender is in session with, so that the receiver can complete the mesh.
    Roster { members: Vec<PeerInfo> },
    /// The sender's media key for `epoch`. `fresh` is false when the key was derived from the
    /// previous epoch's key by the forward ratchet (sent to a joiner).
    SenderKey {
        epoch: u32,
        key: [u8; 32],
        fresh: bool,
    },
    /// The sender starts or stops recording.
    Recording { on: bool },
    /// The sender leaves the room.
    Leave,
    /// Keep-alive; carries nothing.
    Heartbeat,
    /// A chat message to the room (at most [`MAX_CHAT`] bytes), sent to each member over its
    /// pairwise session.
    Chat { text: String },
    /// The sender muted or unmuted its microphone.
    Muted { on: bool },
}

impl Control {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(VERSION);
        match self {
            Control::Hello {
                name,
                addrs,
                recording,
            } => {
                w.u8(1)
                    .short_bytes(truncate_utf8(name, MAX_NAME).as_bytes())
                    .u8(u8::from(*recording));
                write_addrs(&mut w, addrs);
            }
            Control::Roster { members } => {
                w.u8(2);
                let n = members.len().min(MAX_MEMBERS);
                w.u8(n as u8);
                for m in &members[..n] {
                    m.write(&mut w);
                }
            }
            Control::SenderKey { epoch, key, fresh } => {
                w.u8(3).u32(*epoch).bytes(key).u8(u8::from(*fresh));
            }
            Control::Recording { on } => {
                w.u8(4).u8(u8::from(*on));
            }
            Control::Leave => {
                w.u8(5);
            }
            Control::Heartbeat => {
                w.u8(6);
            }
            Control::Chat { text } => {
                let text = truncate_utf8(text, MAX_CHAT).as_bytes();
                w.u8(7).u16(text.len() as u16).bytes(text);
            }
            Control::Muted { on } => {
                w.u8(8).u8(u8::from(*on));
            }
        }
        w.buf
    }

    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = Reader::new(buf);
        let version = r.u8()?;
        if version != VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let msg = match r.u8()? {
            1 => {
                let name = r.short_str("name", MAX_NAME)?;
                let recording = read_bool(&mut r)?;
                let addrs = read_addrs(&mut r)?;
                Control::Hello {
                    name,
                    addrs,
                    recording,
                }
            }
            2 => {
                let n = r.count("roster", MAX_MEMBERS)?;
                let mut members = Vec::with_capacity(n);
                for _ in 0..n {
                    members.push(PeerInfo::read(&mut r)?);
                }
                Control::Roster { members }
            }
            3 => Control::SenderKey {
                epoch: r.u32()?,
                key: r.array()?,
                fresh: read_bool(&mut r)?,
            },
            4 => Control::Recording {
                on: read_bool(&mut r)?,
            },
            5 => Control::Leave,
            6 => Control::Heartbeat,
            7 => Control::Chat {
                text: read_chat(&mut r)?,
            },
            8 => Control::Muted {
                on: read_bool(&mut r)?,
            },
            t => return Err(Error::UnknownType(t)),
        };
        r.finish()?;
        Ok(msg)
    }
}

fn read_chat(r: &mut Reader<'_>) -> Result<String> {
    let len = usize::from(r.u16()?);
    check_len("chat message", len, MAX_CHAT)?;
    let bytes = r.bytes(len)?;
    let text = std::str::from_utf8(bytes).map_err(|_| Error::Malformed("chat is not UTF-8"))?;
    if text.is_empty() {
        return Err(Error::Malformed("empty chat message"));
    }
    Ok(text.to_owned())
}

fn read_bool(r: &mut Reader<'_>) -> Result<bool> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(Error::Malformed("boolean")),
    }
}

/// How a sender's audio is framed: the duration of one frame and its encoder's look-ahead.
/// Together they are the algorithmic delay of the stream (the first sample of a frame waits
/// `frame_ms` for the frame to fill, every sample `lookahead_us` more in the encoder), the
/// floor under any honest mouth-to-ear figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaFormat {
    /// Audio per frame, ms: one of [`FRAME_DURATIONS_MS`].
    pub frame_ms: u8,
    /// The encoder's look-ahead, µs (at most [`MAX_LOOKAHEAD_US`]).
    pub lookahead_us: u16,
}

impl Default for MediaFormat {
    /// 20 ms frames, Opus' 6.5 ms look-ahead (2.5 ms of CELT overlap and 4 ms of delay
    /// compensation in its VoIP and audio modes).
    fn default() -> Self {
        Self {
            frame_ms: 20,
            lookahead_us: 6_500,
        }
    }
}

impl MediaFormat {
    /// Checks the bounds: a supported frame duration, a look-ahead within the limit.
    pub fn validate(self) -> Result<Self> {
        if !FRAME_DURATIONS_MS.contains(&self.frame_ms) {
            return Err(Error::Malformed("media frame duration"));
        }
        if self.lookahead_us > MAX_LOOKAHEAD_US {
            return Err(Error::Malformed("media look-ahead"));
        }
        Ok(self)
    }

    /// The algorithmic delay of this format, ms: frame duration plus look-ahead.
    pub fn algorithmic_delay_ms(self) -> f64 {
        f64::from(self.frame_ms) + f64::from(self.lookahead_us) / 1000.0
    }
}

/// Cleartext header of a media frame; authenticated as associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaHeader {
    /// Bit 0: the plaintext is padded to a constant size (CBR mode).
    pub flags: u8,
    /// Frame duration and codec look-ahead of this sender's stream.
    pub format: MediaFormat,
    /// The sender's key epoch this frame is encrypted under.
    pub epoch: u32,
    /// Frame sequence number, +1 per frame, per sender.
    pub seq: u32,
    /// The sender's capture time of the frame's first sample, in ms on the sender's clock
    /// (the frame is complete `format.frame_ms` later).
    pub capture_ts_ms: u64,
}

pub const FLAG_PADDED: u8 = 0x01;

impl MediaHeader {
    pub fn encode(&self) -> [u8; MEDIA_HEADER_LEN] {
        let mut out = [0u8; MEDIA_HEADER_LEN];
        out[0] = MEDIA_VERSION;
        out[1] = self.flags;
        out[2] = self.format.frame_ms;
        out[3..5].copy_from_slice(&self.format.lookahead_us.to_be_bytes());
        out[5..9].copy_from_slice(&self.epoch.to_be_bytes());
        out[9..13].copy_from_slice(&self.seq.to_be_bytes());
        out[13..21].copy_from_slice(&self.capture_ts_ms.to_be_bytes());
        out
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let version = r.u8()?;
        if version != MEDIA_VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let flags = r.u8()?;
        if flags & !FLAG_PADDED != 0 {
            return Err(Error::Malformed("media flags"));
        }
        let frame_ms = r.u8()?;
        let lookahead_us = r.u16()?;
        let format = MediaFormat {
            frame_ms,
            lookahead_us,
        }
        .validate()?;
        Ok(Self {
            flags,
            format,
            epoch: r.u32()?,
            seq: r.u32()?,
            capture_ts_ms: r.u64()?,
        })
    }
}

/// An encrypted media frame as it travels: header plus ciphertext (which ends in the
/// 16-byte Poly1305 tag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaFrame {
    pub header: MediaHeader,
    pub ciphertext: Vec<u8>,
}

impl MediaFrame {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MEDIA_HEADER_LEN + self.ciphertext.len());
        out.extend_from_slice(&self.header.encode());
        out.extend_from_slice(&self.ciphertext);
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Self> {
        check_len("media frame", buf.len(), MAX_MEDIA_FRAME)?;
        let mut r = Reader::new(buf);
        let header = MediaHeader::decode(&mut r)?;
        check_min(r.remaining(), MIN_MEDIA_CIPHERTEXT)?;
        let ciphertext = r.bytes(r.remaining())?.to_vec();
        Ok(Self { header, ciphertext })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr() -> impl Strategy<Value = String> {
        "[a-z0-9/.]{1,40}"
    }

    fn peer_info() -> impl Strategy<Value = PeerInfo> {
        (
            proptest::collection::vec(any::<u8>(), 1..=MAX_PEER_ID),
            proptest::collection::vec(addr(), 0..=MAX_ADDRS),
        )
            .prop_map(|(peer_id, addrs)| PeerInfo { peer_id, addrs })
    }

    fn control() -> impl Strategy<Value = Control> {
        prop_oneof![
            (
                "[a-zA-Zé ]{0,20}",
                proptest::collection::vec(addr(), 0..=MAX_ADDRS),
                any::<bool>()
            )
                .prop_map(|(name, addrs, recording)| Control::Hello {
                    name,
                    addrs,
                    recording
                }),
            proptest::collection::vec(peer_info(), 0..6)
                .prop_map(|members| Control::Roster { members }),
            (any::<u32>(), any::<[u8; 32]>(), any::<bool>())
                .prop_map(|(epoch, key, fresh)| Control::SenderKey { epoch, key, fresh }),
            any::<bool>().prop_map(|on| Control::Recording { on }),
            any::<bool>().prop_map(|on| Control::Muted { on }),
            "[^\\x00]{1,300}".prop_map(|text| Control::Chat { text }),
            Just(Control::Leave),
            Just(Control::Heartbeat),
        ]
    }

    proptest! {
        #[test]
        fn control_roundtrip(msg in control()) {
            let bytes = msg.encode();
            prop_assert_eq!(Control::decode(&bytes), Ok(msg));
        }

        #[test]
        fn control_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Control::decode(&bytes);
        }

        #[test]
        fn control_truncation_is_an_error(msg in control(), cut in 0usize..1000) {
            let bytes = msg.encode();
            let cut = cut % bytes.len();
            prop_assert!(Control::decode(&bytes[..cut]).is_err());
        }

        #[test]
        fn room_frame_roundtrip(kind in 0u8..3, body in proptest::collection::vec(any::<u8>(), MIN_HANDSHAKE_BODY..2000), reason in 0u8..4) {
            let frame = match kind {
                0 => RoomFrame::Handshake(body),
                1 => RoomFrame::Transport(body),
                _ => RoomFrame::Reject([RejectReason::BadSecret, RejectReason::BadIdentity, RejectReason::RoomFull, RejectReason::Protocol][usize::from(reason)]),
            };
            prop_assert_eq!(RoomFrame::decode(&frame.encode()), Ok(frame));
        }

        #[test]
        fn room_frame_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = RoomFrame::decode(&bytes);
        }

        #[test]
        fn media_roundtrip(flags in 0u8..2, frame in 0usize..4, lookahead_us in 0..=MAX_LOOKAHEAD_US, epoch: u32, seq: u32, ts: u64, ct in proptest::collection::vec(any::<u8>(), MIN_MEDIA_CIPHERTEXT..1400)) {
            let format = MediaFormat { frame_ms: FRAME_DURATIONS_MS[frame], lookahead_us };
            let frame = MediaFrame { header: MediaHeader { flags, format, epoch, seq, capture_ts_ms: ts }, ciphertext: ct };
            prop_assert_eq!(MediaFrame::decode(&frame.encode()), Ok(frame));
        }

        #[test]
        fn media_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
            let _ = MediaFrame::decode(&bytes);
        }
    }

    #[test]
    fn oversized_inputs_are_refused_before_allocation() {
        assert!(matches!(
            RoomFrame::decode(&vec![2u8; MAX_ROOM_FRAME + 1]),
            Err(Error::TooLong { .. })
        ));
        assert!(matches!(
            MediaFrame::decode(&vec![1u8; MAX_MEDIA_FRAME + 1]),
            Err(Error::TooLong { .. })
        ));
        // A roster that claims more members than allowed.
        let bytes = [VERSION, 2, 200];
        assert!(matches!(
            Control::decode(&bytes),
            Err(Error::TooLong { what: "roster", .. })
        ));
    }

    #[test]
    fn zero_length_and_too_short_frames_are_errors() {
        assert!(RoomFrame::decode(&[]).is_err());
        for kind in [1u8, 2, 3] {
            assert!(
                RoomFrame::decode(&[kind]).is_err(),
                "kind {kind} without a body"
            );
        }
        assert!(RoomFrame::decode(&[&[1u8][..], &[0; MIN_HANDSHAKE_BODY - 1]].concat()).is_err());
        assert!(RoomFrame::decode(&[&[2u8][..], &[0; MIN_TRANSPORT_BODY - 1]].concat()).is_err());
        assert!(RoomFrame::decode(&[&[1u8][..], &[0; MIN_HANDSHAKE_BODY]].concat()).is_ok());
        assert!(RoomFrame::decode(&[&[2u8][..], &[0; MIN_TRANSPORT_BODY]].concat()).is_ok());
        assert!(MediaFrame::decode(&[]).is_err());
        let header = MediaHeader {
            flags: 0,
            format: MediaFormat::default(),
            epoch: 0,
            seq: 0,
            capture_ts_ms: 0,
        }
        .encode();
        assert!(MediaFrame::decode(&header).is_err(), "header only");
        let short = [&header[..], &[0; MIN_MEDIA_CIPHERTEXT - 1]].concat();
        assert!(MediaFrame::decode(&short).is_err(), "tag without a length");
        let ok = [&header[..], &[0; MIN_MEDIA_CIPHERTEXT]].concat();
        assert!(MediaFrame::decode(&ok).is_ok());
        assert!(Control::decode(&[]).is_err());
        assert!(Control::decode(&[VERSION]).is_err());
    }

    #[test]
    fn media_formats_out_of_bounds_and_old_versions_are_refused() {
        let good = MediaHeader {
            flags: 0,
            format: MediaFormat {
                frame_ms: 10,
                lookahead_us: 2_500,
            },
            epoch: 1,
            seq: 2,
            capture_ts_ms: 3,
        };
        let frame = |h: [u8; MEDIA_HEADER_LEN]| [&h[..], &[0; MIN_MEDIA_CIPHERTEXT]].concat();
        assert_eq!(
            MediaFrame::decode(&frame(good.encode())).map(|f| f.header),
            Ok(good)
        );
        for frame_ms in [0u8, 5, 15, 30, 80, 255] {
            let mut h = good.encode();
            h[2] = frame_ms;
            assert!(MediaFrame::decode(&frame(h)).is_err(), "{frame_ms} ms");
        }
        let mut h = good.encode();
        h[3..5].copy_from_slice(&(MAX_LOOKAHEAD_US + 1).to_be_bytes());
        assert!(MediaFrame::decode(&frame(h)).is_err(), "look-ahead");
        let mut h = good.encode();
        h[0] = 1;
        assert_eq!(
            MediaFrame::decode(&frame(h)),
            Err(Error::UnsupportedVersion(1))
        );
        assert!((MediaFormat::default().algorithmic_delay_ms() - 26.5).abs() < 1e-9);
        assert!(good.format.validate().is_ok());
    }

    #[test]
    fn only_dialable_addresses_pass() {
        for good in [
            "/ip4/127.0.0.1/tcp/4001",
            "/ip4/192.0.2.7/udp/4001/quic-v1",
            "/ip6/::1/tcp/4001/p2p/12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo",
            "/dns4/relay.example.org/tcp/443/wss",
            "/ip4/198.51.100.1/tcp/4001/p2p/12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo/p2p-circuit/p2p/12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo",
            "/dnsaddr/bootstrap.example.org",
        ] {
            assert!(is_dialable(good), "{good}");
        }
        for bad in [
            "",
            "/",
            "ip4/127.0.0.1/tcp/1",
            "/ip4/127.0.0.1",
            "/ip4/127.0.0.1/tcp/0",
            "/ip4/127.0.0.1/tcp/70000",
            "/ip4/0.0.0.0/tcp/4001",
            "/ip4/255.255.255.255/udp/9/quic-v1",
            "/ip4/224.0.0.1/udp/5353/quic-v1",
            "/ip6/::/tcp/1",
            "/ip6/ff02::1/tcp/1",
            "/ip4/999.1.1.1/tcp/1",
            "/unix/tmp/sock",
            "/memory/1234",
            "/ip4/127.0.0.1/tcp/1/",
            "/ip4/127.0.0.1/tcp/1/p2p",
            "/ip4/127.0.0.1/tcp/1/bogus",
            "/dns4/bad_name/tcp/1",
            "/dns4/a..b/tcp/1",
        ] {
            assert!(!is_dialable(bad), "{bad}");
        }
        assert!(!is_dialable(&format!("/dns4/{}/tcp/1", "a".repeat(300))));
        let (kept, dropped) = dialable_addrs(
            vec![
                "/ip4/127.0.0.1/tcp/1".into(),
                "junk".into(),
                "/ip4/127.0.0.1/tcp/1".into(),
                "/ip4/127.0.0.1/tcp/2".into(),
                "/ip4/127.0.0.1/tcp/3".into(),
            ],
            2,
        );
        assert_eq!(kept, vec!["/ip4/127.0.0.1/tcp/1", "/ip4/127.0.0.1/tcp/2"]);
        assert_eq!(dropped, 1);
    }

    #[test]
    fn peer_ids_must_look_like_multihashes() {
        let mut ed = vec![0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
        ed.extend_from_slice(&[7; 32]);
        assert!(plausible_peer_id(&ed));
        let mut sha = vec![0x12, 0x20];
        sha.extend_from_slice(&[1; 32]);
        assert!(plausible_peer_id(&sha));
        assert!(!plausible_peer_id(b"stranger"));
        assert!(!plausible_peer_id(&[0x00, 0x00]));
        assert!(!plausible_peer_id(&ed[..20]));
    }

    #[test]
    fn wrong_version_is_refused() {
        let mut bytes = Control::Leave.encode();
        bytes[0] = 9;
        assert_eq!(Control::decode(&bytes), Err(Error::UnsupportedVersion(9)));
    }

    #[test]
    fn long_names_are_truncated_on_a_char_boundary() {
        let name = "é".repeat(100);
        let msg = Control::Hello {
            name,
            addrs: vec![],
            recording: false,
        };
        match Control::decode(&msg.encode()) {
            Ok(Control::Hello { name, .. }) => {
                assert!(name.len() <= MAX_NAME);
                assert!(name.chars().all(|c| c == 'é'));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
