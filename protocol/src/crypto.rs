//! End-to-end cryptography.
//!
//! * **Identity.** A member is its Ed25519 key, the same key that is its libp2p identity;
//!   [`peer_id_bytes`] computes the libp2p peer id from the public key without libp2p.
//! * **Pairwise sessions.** `Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s` with the PSK derived from
//!   the room secret ([`room_psk`]) and the prologue binding the room id. Each side's handshake
//!   payload carries an identity proof: its Ed25519 public key and a signature over the Noise
//!   static key, so that the Noise session is bound to the peer id.
//! * **Sender keys.** Each member encrypts each media frame once with its own key for the
//!   current epoch (ChaCha20-Poly1305, nonce = epoch ‖ 0 ‖ seq, cleartext header as associated
//!   data). Receivers keep a replay window per epoch.
//!
//! Randomness always comes from the caller (a seed or an `RngCore`), never from the OS, so
//! the simulator can replay a run bit for bit.

use std::collections::BTreeMap;

use blake2::{Blake2s256, Digest};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use hkdf::Hkdf;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sha2::Sha256;
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use zeroize::Zeroize;

use crate::error::{Error, Result};
use crate::wire::{MediaFormat, MediaFrame, MediaHeader, FLAG_PADDED, MAX_MEDIA_PAYLOAD};
use crate::{RoomId, RoomSecret};

/// The Noise protocol name used on `/confab/room/1`.
pub const NOISE_PARAMS: &str = "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s";
const IDENTITY_CONTEXT: &[u8] = b"confab-noise-identity-v1";
const PSK_SALT: &[u8] = b"confab-room-psk-v1";
const RATCHET_INFO: &[u8] = b"confab-sender-key-ratchet-v1";
const NAMESPACE_CONTEXT: &[u8] = b"confab-rendezvous-v2";
/// Size of the identity proof in handshake payloads: public key + signature.
pub const IDENTITY_PROOF_LEN: usize = 32 + 64;
/// How many past epochs of one sender a receiver keeps keys for (in-flight frames).
pub const KEPT_EPOCHS: usize = 3;
/// How far ahead of the newest known epoch a receiver tries the forward ratchet.
pub const MAX_RATCHET_STEPS: u32 = 64;
/// Replay window width, in frames.
pub const REPLAY_WINDOW: u32 = 128;

/// A member's long-term identity: an Ed25519 signing key.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl Identity {
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(secret),
        }
    }

    pub fn generate(rng: &mut (impl RngCore + rand_core::CryptoRng)) -> Self {
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let id = Self::from_secret_bytes(&secret);
        secret.zeroize();
        id
    }

    pub fn secret_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    pub fn public_bytes(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The libp2p peer id bytes of this identity.
    pub fn peer_id(&self) -> Vec<u8> {
        peer_id_bytes(&self.public_bytes())
    }

    fn prove(&self, room_id: &RoomId, noise_static: &[u8]) -> [u8; IDENTITY_PROOF_LEN] {
        let sig = self.key.sign(&identity_message(room_id, noise_static));
        let mut out = [0u8; IDENTITY_PROOF_LEN];
        out[..32].copy_from_slice(&self.public_bytes());
        out[32..].copy_from_slice(&sig.to_bytes());
        out
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public_bytes())
            .finish_non_exhaustive()
    }
}

fn identity_message(room_id: &RoomId, noise_static: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(IDENTITY_CONTEXT.len() + 16 + noise_static.len());
    m.extend_from_slice(IDENTITY_CONTEXT);
    m.extend_from_slice(room_id);
    m.extend_from_slice(noise_static);
    m
}

fn verify_proof(proof: &[u8], room_id: &RoomId, noise_static: &[u8]) -> Result<Vec<u8>> {
    if proof.len() != IDENTITY_PROOF_LEN {
        return Err(Error::BadIdentity("proof has the wrong length"));
    }
    let mut pk = [0u8; 32];
    pk.copy_from_slice(&proof[..32]);
    let mut sig = [0u8; 64];
    sig.copy_from_slice(&proof[32..]);
    let vk = VerifyingKey::from_bytes(&pk).map_err(|_| Error::BadIdentity("bad public key"))?;
    vk.verify(
        &identity_message(room_id, noise_static),
        &Signature::from_bytes(&sig),
    )
    .map_err(|_| Error::BadIdentity("signature does not verify"))?;
    Ok(peer_id_bytes(&pk))
}

/// libp2p peer id bytes for an Ed25519 public key: the identity multihash of the
/// protobuf-encoded public key (`KeyType = Ed25519`, `Data = key`).
pub fn peer_id_bytes(ed25519_public: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(38);
    out.extend_from_slice(&[0x00, 0x24, 0x08, 0x01, 0x12, 0x20]);
    out.extend_from_slice(ed25519_public);
    out
}

/// The pre-shared key of a room's pairwise handshakes: HKDF-SHA256 of the room secret.
pub fn room_psk(room_id: &RoomId, secret: &RoomSecret) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(Some(PSK_SALT), secret);
    let mut out = [0u8; 32];
    // 32 bytes is always a valid HKDF-SHA256 output length.
    if hk.expand(room_id, &mut out).is_err() {
        unreachable_expand();
    }
    out
}

#[cold]
fn unreachable_expand() {
    // HKDF-SHA256 can produce up to 8160 bytes; 32 never fails. Kept as a function so the
    // call sites above stay free of panics.
}

/// The rendezvous namespace under which members of a room register at a relay: a keyed hash
/// of the room id under the room secret, so that the relay never learns the room id, and
/// nobody without the ticket can compute (or look up) a room's namespace even if the room
/// id is known.
pub fn rendezvous_namespace(room_id: &RoomId, room_secret: &[u8; 32]) -> String {
    let mut h = Blake2s256::new();
    h.update(NAMESPACE_CONTEXT);
    h.update(room_secret);
    h.update(room_id);
    let d = h.finalize();
    d[..20].iter().map(|b| format!("{b:02x}")).collect()
}

/// A snow resolver that takes its randomness from a caller-provided seed and everything
/// else from snow's default implementations.
struct SeededResolver {
    seed: [u8; 32],
}

struct SeededRandom(ChaCha20Rng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> std::result::Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRandom(ChaCha20Rng::from_seed(self.seed))))
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

fn snow_err(e: snow::Error) -> Error {
    Error::Handshake(e.to_string())
}

/// One side of a pairwise `Noise_XXpsk3` handshake in progress.
///
/// Message flow: initiator → `e`; responder → `e, ee, s, es` + responder's identity proof;
/// initiator → `s, se, psk` + initiator's identity proof. A wrong room secret shows at the
/// responder when it reads message 3 ([`Error::BadRoomSecret`]).
pub struct Handshake {
    state: snow::HandshakeState,
    proof: [u8; IDENTITY_PROOF_LEN],
    room_id: RoomId,
    remote_peer: Option<Vec<u8>>,
    reads: u8,
}

/// A member's X25519 static key for one room, with its identity proof: made once per room
/// and used for every handshake in it (one scalar multiplication and one signature per
/// room instead of per pair).
pub struct LocalStatic {
    secret: [u8; 32],
    proof: [u8; IDENTITY_PROOF_LEN],
}

impl Drop for LocalStatic {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

impl LocalStatic {
    /// Derives the static key from `seed` and signs it with `identity` for `room_id`.
    pub fn new(identity: &Identity, room_id: &RoomId, seed: [u8; 32]) -> Result<Self> {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let mut dh = DefaultResolver
            .resolve_dh(&DHChoice::Curve25519)
            .ok_or_else(|| Error::Handshake("no X25519 implementation".into()))?;
        dh.set(&secret);
        let proof = identity.prove(room_id, dh.pubkey());
        Ok(Self { secret, proof })
    }
}

/// What a [`Handshake`] step produced.
pub enum HandshakeStep {
    /// Send this message and keep going.
    Send(Vec<u8>),
    /// Nothing to send; wait for the peer's next message.
    Wait,
}

impl Handshake {
    /// Starts a handshake with our static key `local` (see [`LocalStatic`]). `seed` supplies
    /// every random byte this handshake uses (the ephemeral key).
    pub fn new(
        initiator: bool,
        local: &LocalStatic,
        room_id: &RoomId,
        psk: &[u8; 32],
        seed: [u8; 32],
    ) -> Result<Self> {
        let params: snow::params::NoiseParams = NOISE_PARAMS
            .parse()
            .map_err(|e: snow::Error| Error::Handshake(e.to_string()))?;
        let mut prologue = b"confab/room/1".to_vec();
        prologue.extend_from_slice(room_id);
        let builder = snow::Builder::with_resolver(params, Box::new(SeededResolver { seed }))
            .local_private_key(&local.secret)
            .map_err(snow_err)?
            .psk(3, psk)
            .map_err(snow_err)?
            .prologue(&prologue)
            .map_err(snow_err)?;
        let state = if initiator {
            builder.build_initiator()
        } else {
            builder.build_responder()
        }
        .map_err(snow_err)?;
        Ok(Self {
            state,
            proof: local.proof,
            room_id: *room_id,
            remote_peer: None,
            reads: 0,
        })
    }

    pub fn is_initiator(&self) -> bool {
        self.state.is_initiator()
    }

    pub fn is_finished(&self) -> bool {
        self.state.is_handshake_finished()
    }

    /// The peer id proven by the remote side, once its proof has been read.
    pub fn remote_peer(&self) -> Option<&[u8]> {
        self.remote_peer.as_deref()
    }

    /// Writes our next message if it is our turn.
    pub fn write(&mut self) -> Result<HandshakeStep> {
        if self.state.is_handshake_finished() || !self.state.is_my_turn() {
            return Ok(HandshakeStep::Wait);
        }
        // Message 1 carries no payload; messages 2 and 3 carry our identity proof.
        let payload: &[u8] = if self.is_initiator() && self.remote_peer.is_none() {
            &[]
        } else {
            &self.proof
        };
        let mut buf = vec![0u8; 512];
        let n = self
            .state
            .write_message(payload, &mut buf)
            .map_err(snow_err)?;
        buf.truncate(n);
        Ok(HandshakeStep::Send(buf))
    }

    /// Reads the peer's next message.
    pub fn read(&mut self, msg: &[u8]) -> Result<()> {
        if self.state.is_handshake_finished() || self.state.is_my_turn() {
            return Err(Error::Handshake("unexpected handshake message".into()));
        }
        let mut payload = vec![0u8; msg.len()];
        let n = match self.state.read_message(msg, &mut payload) {
            Ok(n) => n,
            // The responder's second read (message 3) is the first point where the PSK is
            // mixed in: a failure there means the peer holds another room secret.
            Err(_) if !self.is_initiator() && self.reads == 1 => return Err(Error::BadRoomSecret),
            Err(e) => return Err(snow_err(e)),
        };
        self.reads += 1;
        payload.truncate(n);
        if let Some(remote_static) = self.state.get_remote_static() {
            if self.remote_peer.is_none() {
                let remote_static = remote_static.to_vec();
                self.remote_peer = Some(verify_proof(&payload, &self.room_id, &remote_static)?);
            }
        } else if !payload.is_empty() {
            return Err(Error::Handshake("unexpected payload in message 1".into()));
        }
        Ok(())
    }

    /// Turns a finished handshake into a transport session.
    pub fn into_session(self) -> Result<Session> {
        let remote_peer = self
            .remote_peer
            .ok_or_else(|| Error::Handshake("handshake not finished".into()))?;
        let transport = self.state.into_transport_mode().map_err(snow_err)?;
        Ok(Session {
            transport,
            remote_peer,
        })
    }
}

/// An established pairwise session.
pub struct Session {
    transport: snow::TransportState,
    remote_peer: Vec<u8>,
}

impl Session {
    pub fn remote_peer(&self) -> &[u8] {
        &self.remote_peer
    }

    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; plaintext.len() + 16];
        let n = self
            .transport
            .write_message(plaintext, &mut buf)
            .map_err(snow_err)?;
        buf.truncate(n);
        Ok(buf)
    }

    pub fn decrypt(&mut self, ciphertext: &[u8]) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; ciphertext.len()];
        let n = self
            .transport
            .read_message(ciphertext, &mut buf)
            .map_err(|_| Error::Decrypt)?;
        buf.truncate(n);
        Ok(buf)
    }
}

/// A 32-byte media key; wiped on drop.
#[derive(Clone, PartialEq, Eq, Zeroize)]
#[zeroize(drop)]
pub struct MediaKey(pub [u8; 32]);

impl std::fmt::Debug for MediaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MediaKey(…)")
    }
}

impl MediaKey {
    /// The forward ratchet: the next epoch's key when nobody left (a join). Anyone with this
    /// key can compute later ones, nobody can compute earlier ones.
    pub fn ratchet(&self) -> MediaKey {
        let hk = Hkdf::<Sha256>::new(None, &self.0);
        let mut out = [0u8; 32];
        if hk.expand(RATCHET_INFO, &mut out).is_err() {
            unreachable_expand();
        }
        MediaKey(out)
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.0))
    }
}

fn nonce(epoch: u32, seq: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&epoch.to_be_bytes());
    n[8..].copy_from_slice(&seq.to_be_bytes());
    n
}

/// Our own sending state: the current epoch's key and the next sequence number.
pub struct SenderKey {
    epoch: u32,
    key: MediaKey,
    next_seq: u32,
    format: MediaFormat,
}

impl SenderKey {
    pub fn new(rng: &mut impl RngCore) -> Self {
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        Self {
            epoch: 0,
            key: MediaKey(key),
            next_seq: 0,
            format: MediaFormat::default(),
        }
    }

    /// The frame duration and look-ahead every frame from now on declares (checked).
    pub fn set_format(&mut self, format: MediaFormat) -> Result<()> {
        self.format = format.validate()?;
        Ok(())
    }

    pub fn format(&self) -> MediaFormat {
        self.format
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    pub fn key(&self) -> &MediaKey {
        &self.key
    }

    pub fn next_seq(&self) -> u32 {
        self.next_seq
    }

    /// Leaves out the next `n` sequence numbers (wrapping), as a sender does whose frames in
    /// between were never sent. Receivers must bear any jump: the hostile-peer tests use this
    /// to jump by millions. Nonces repeat only if one epoch's frames and skips together
    /// pass 2^32.
    pub fn skip(&mut self, n: u32) {
        self.next_seq = self.next_seq.wrapping_add(n);
    }

    /// New random key for the next epoch (someone left).
    pub fn rotate(&mut self, rng: &mut impl RngCore) {
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        self.key = MediaKey(key);
        self.epoch = self.epoch.wrapping_add(1);
    }

    /// Ratchet forward to the next epoch (someone joined).
    pub fn ratchet(&mut self) {
        self.key = self.key.ratchet();
        self.epoch = self.epoch.wrapping_add(1);
    }

    /// Encrypts one media payload. With `pad_to`, the plaintext is padded with zeros to that
    /// many bytes (constant-size frames); payloads longer than that are sent unpadded.
    pub fn encrypt(
        &mut self,
        capture_ts_ms: u64,
        payload: &[u8],
        pad_to: Option<usize>,
    ) -> Result<MediaFrame> {
        if payload.len() > MAX_MEDIA_PAYLOAD {
            return Err(Error::TooLong {
                what: "media payload",
                len: payload.len(),
                limit: MAX_MEDIA_PAYLOAD,
            });
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let mut plaintext = Vec::with_capacity(2 + payload.len());
        plaintext.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        plaintext.extend_from_slice(payload);
        let mut flags = 0;
        if let Some(target) = pad_to {
            let target = target.min(MAX_MEDIA_PAYLOAD + 2);
            if plaintext.len() <= target {
                plaintext.resize(target, 0);
                flags |= FLAG_PADDED;
            }
        }
        let header = MediaHeader {
            flags,
            format: self.format,
            epoch: self.epoch,
            seq,
            capture_ts_ms,
        };
        let aad = header.encode();
        let ciphertext = self
            .key
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce(self.epoch, seq)),
                Payload {
                    msg: &plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| Error::Decrypt)?;
        Ok(MediaFrame { header, ciphertext })
    }
}

/// Sliding replay window over sequence numbers.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    highest: Option<u32>,
    /// Bit i set: `highest - i` was seen.
    bits: u128,
}

impl ReplayWindow {
    /// Whether `seq` would be accepted (not seen, not too old).
    pub fn check(&self, seq: u32) -> bool {
        match self.highest {
            None => true,
            Some(h) if seq > h => true,
            Some(h) => {
                let back = h - seq;
                back < REPLAY_WINDOW && self.bits & (1u128 << back) == 0
            }
        }
    }

    /// Marks `seq` as seen; call only after the frame authenticated.
    pub fn accept(&mut self, seq: u32) {
        match self.highest {
            None => {
                self.highest = Some(seq);
                self.bits = 1;
            }
            Some(h) if seq > h => {
                let shift = seq - h;
                self.bits = if shift >= REPLAY_WINDOW {
                    0
                } else {
                    self.bits << shift
                };
                self.bits |= 1;
                self.highest = Some(seq);
            }
            Some(h) => {
                let back = h - seq;
                if back < REPLAY_WINDOW {
                    self.bits |= 1u128 << back;
                }
            }
        }
    }
}

/// A decrypted media frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedFrame {
    pub header: MediaHeader,
    pub payload: Vec<u8>,
}

/// The keys we hold for one remote sender, by epoch, with a replay window each.
#[derive(Default)]
pub struct ReceiverKeys {
    epochs: BTreeMap<u32, (MediaKey, ReplayWindow)>,
}

impl ReceiverKeys {
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs the key for `epoch` (from a `SenderKey` message). Keeps only the newest
    /// [`KEPT_EPOCHS`] epochs.
    pub fn install(&mut self, epoch: u32, key: MediaKey) {
        self.epochs
            .entry(epoch)
            .or_insert_with(|| (key, ReplayWindow::default()));
        while self.epochs.len() > KEPT_EPOCHS {
            self.epochs.pop_first();
        }
    }

    pub fn newest_epoch(&self) -> Option<u32> {
        self.epochs.keys().next_back().copied()
    }

    pub fn has_epoch(&self, epoch: u32) -> bool {
        self.epochs.contains_key(&epoch)
    }

    /// The key of `epoch`, if held, or computed with the forward ratchet from the newest
    /// held one when `epoch` is at most [`MAX_RATCHET_STEPS`] ahead (nothing is installed:
    /// the video track borrows the audio's keys without changing them).
    pub fn key_for(&self, epoch: u32) -> Option<MediaKey> {
        if let Some((k, _)) = self.epochs.get(&epoch) {
            return Some(k.clone());
        }
        let newest = self.newest_epoch()?;
        let steps = epoch.wrapping_sub(newest);
        if epoch <= newest || steps > MAX_RATCHET_STEPS {
            return None;
        }
        let mut key = self.epochs.get(&newest)?.0.clone();
        for _ in 0..steps {
            key = key.ratchet();
        }
        Some(key)
    }

    /// Drops every key (the sender left).
    pub fn clear(&mut self) {
        self.epochs.clear();
    }

    /// Authenticates and decrypts a frame. Unknown epochs just ahead of the newest known
    /// one are tried with the forward ratchet; a key found that way is installed.
    pub fn open(&mut self, frame: &MediaFrame) -> Result<OpenedFrame> {
        let h = frame.header;
        let aad = h.encode();
        let n = nonce(h.epoch, h.seq);
        let try_open = |key: &MediaKey| {
            key.cipher()
                .decrypt(
                    Nonce::from_slice(&n),
                    Payload {
                        msg: &frame.ciphertext,
                        aad: &aad,
                    },
                )
                .ok()
        };
        let plaintext = if let Some((key, window)) = self.epochs.get_mut(&h.epoch) {
            if !window.check(h.seq) {
                return Err(Error::Replay {
                    epoch: h.epoch,
                    seq: h.seq,
                });
            }
            let pt = try_open(key).ok_or(Error::Decrypt)?;
            window.accept(h.seq);
            pt
        } else {
            let newest = self.newest_epoch().ok_or(Error::UnknownEpoch(h.epoch))?;
            let steps = h.epoch.wrapping_sub(newest);
            if h.epoch <= newest || steps > MAX_RATCHET_STEPS {
                return Err(Error::UnknownEpoch(h.epoch));
            }
            let mut key = self
                .epochs
                .get(&newest)
                .map(|(k, _)| k.clone())
                .ok_or(Error::UnknownEpoch(h.epoch))?;
            for _ in 0..steps {
                key = key.ratchet();
            }
            let pt = try_open(&key).ok_or(Error::UnknownEpoch(h.epoch))?;
            self.install(h.epoch, key);
            if let Some((_, window)) = self.epochs.get_mut(&h.epoch) {
                window.accept(h.seq);
            }
            pt
        };
        let payload = unpad(&plaintext)?;
        Ok(OpenedFrame { header: h, payload })
    }
}

fn unpad(plaintext: &[u8]) -> Result<Vec<u8>> {
    if plaintext.len() < 2 {
        return Err(Error::Malformed("media plaintext"));
    }
    let len = usize::from(u16::from_be_bytes([plaintext[0], plaintext[1]]));
    plaintext
        .get(2..2 + len)
        .map(<[u8]>::to_vec)
        .ok_or(Error::Malformed("media payload length"))
}

#[cfg(test)]
mod tests {
    use super::*;
    fn rng(seed: u64) -> rand_chacha::ChaCha20Rng {
        <rand_chacha::ChaCha20Rng as SeedableRng>::seed_from_u64(seed)
    }

    pub(crate) fn handshake_pair(
        a: &Identity,
        b: &Identity,
        room: &RoomId,
        psk_a: &[u8; 32],
        psk_b: &[u8; 32],
    ) -> Result<(Session, Session)> {
        let la = LocalStatic::new(a, room, [3; 32])?;
        let lb = LocalStatic::new(b, room, [4; 32])?;
        let mut i = Handshake::new(true, &la, room, psk_a, [1; 32])?;
        let mut r = Handshake::new(false, &lb, room, psk_b, [2; 32])?;
        loop {
            match i.write()? {
                HandshakeStep::Send(m) => r.read(&m)?,
                HandshakeStep::Wait => {}
            }
            match r.write()? {
                HandshakeStep::Send(m) => i.read(&m)?,
                HandshakeStep::Wait => {}
            }
            if i.is_finished() && r.is_finished() {
                break;
            }
        }
        Ok((i.into_session()?, r.into_session()?))
    }

    #[test]
    fn handshake_binds_identities_and_sessions_work() {
        let a = Identity::generate(&mut rng(1));
        let b = Identity::generate(&mut rng(2));
        let room = [7u8; 16];
        let psk = room_psk(&room, &[9u8; 32]);
        let (mut sa, mut sb) = handshake_pair(&a, &b, &room, &psk, &psk).expect("handshake");
        assert_eq!(sa.remote_peer(), b.peer_id().as_slice());
        assert_eq!(sb.remote_peer(), a.peer_id().as_slice());
        let ct = sa.encrypt(b"hello").expect("encrypt");
        assert_eq!(sb.decrypt(&ct).expect("decrypt"), b"hello");
        let ct = sb.encrypt(b"back").expect("encrypt");
        assert_eq!(sa.decrypt(&ct).expect("decrypt"), b"back");
    }

    #[test]
    fn wrong_secret_is_detected_by_the_responder() {
        let a = Identity::generate(&mut rng(1));
        let b = Identity::generate(&mut rng(2));
        let room = [7u8; 16];
        let good = room_psk(&room, &[9u8; 32]);
        let bad = room_psk(&room, &[8u8; 32]);
        assert!(matches!(
            handshake_pair(&a, &b, &room, &bad, &good),
            Err(Error::BadRoomSecret)
        ));
        assert!(matches!(
            handshake_pair(&a, &b, &room, &good, &bad),
            Err(Error::BadRoomSecret)
        ));
    }

    #[test]
    fn other_room_id_does_not_authenticate() {
        let a = Identity::generate(&mut rng(1));
        let b = Identity::generate(&mut rng(2));
        let psk = room_psk(&[1; 16], &[9u8; 32]);
        let la = LocalStatic::new(&a, &[1; 16], [3; 32]).expect("static");
        let lb = LocalStatic::new(&b, &[2; 16], [4; 32]).expect("static");
        let mut i = Handshake::new(true, &la, &[1; 16], &psk, [1; 32]).expect("new");
        let mut r = Handshake::new(false, &lb, &[2; 16], &psk, [2; 32]).expect("new");
        let HandshakeStep::Send(m1) = i.write().expect("w1") else {
            panic!("no message 1")
        };
        // With a PSK pattern the first message is already authenticated over the prologue,
        // so a different room id fails right there.
        assert!(r.read(&m1).is_err());
    }

    #[test]
    fn peer_id_bytes_have_the_libp2p_layout() {
        let id = peer_id_bytes(&[0xaa; 32]);
        assert_eq!(id.len(), 38);
        assert_eq!(&id[..6], &[0x00, 0x24, 0x08, 0x01, 0x12, 0x20]);
    }

    #[test]
    fn media_roundtrip_replay_and_tamper() {
        let mut tx = SenderKey::new(&mut rng(3));
        let mut rx = ReceiverKeys::new();
        rx.install(tx.epoch(), tx.key().clone());
        let f = tx.encrypt(1000, b"opus bytes", None).expect("encrypt");
        let wire = f.encode();
        let opened = rx
            .open(&MediaFrame::decode(&wire).expect("decode"))
            .expect("open");
        assert_eq!(opened.payload, b"opus bytes");
        assert_eq!(opened.header.capture_ts_ms, 1000);
        // Replay.
        assert!(matches!(
            rx.open(&MediaFrame::decode(&wire).expect("decode")),
            Err(Error::Replay { .. })
        ));
        // Tampered ciphertext and tampered header both fail.
        let f2 = tx.encrypt(1020, b"more", None).expect("encrypt");
        let mut bad = f2.clone();
        bad.ciphertext[0] ^= 1;
        assert_eq!(rx.open(&bad), Err(Error::Decrypt));
        let mut bad = f2.clone();
        bad.header.capture_ts_ms += 1;
        assert_eq!(rx.open(&bad), Err(Error::Decrypt));
        // The failed attempts did not burn the sequence number.
        assert!(rx.open(&f2).is_ok());
    }

    #[test]
    fn the_media_format_is_carried_and_authenticated() {
        let mut tx = SenderKey::new(&mut rng(4));
        let mut rx = ReceiverKeys::new();
        rx.install(tx.epoch(), tx.key().clone());
        let ten = MediaFormat {
            frame_ms: 10,
            lookahead_us: 2_500,
        };
        tx.set_format(ten).expect("a valid format");
        assert!(tx
            .set_format(MediaFormat {
                frame_ms: 7,
                lookahead_us: 0
            })
            .is_err());
        assert_eq!(tx.format(), ten);
        let f = tx.encrypt(1000, b"opus", None).expect("encrypt");
        let mut bad = f.clone();
        bad.header.format.frame_ms = 20;
        assert_eq!(rx.open(&bad), Err(Error::Decrypt));
        let opened = rx.open(&f).expect("open");
        assert_eq!(opened.header.format, ten);
    }

    #[test]
    fn replay_window_accepts_reordering_and_refuses_old() {
        let mut w = ReplayWindow::default();
        for s in [5u32, 3, 4, 10, 7] {
            assert!(w.check(s));
            w.accept(s);
        }
        for s in [5u32, 3, 4, 10, 7] {
            assert!(!w.check(s));
        }
        w.accept(500);
        assert!(!w.check(300), "older than the window");
        assert!(w.check(499));
    }

    #[test]
    fn padding_makes_frames_the_same_size() {
        let mut tx = SenderKey::new(&mut rng(4));
        let a = tx.encrypt(0, &[1u8; 10], Some(200)).expect("a").encode();
        let b = tx.encrypt(20, &[2u8; 150], Some(200)).expect("b").encode();
        assert_eq!(a.len(), b.len());
        let mut rx = ReceiverKeys::new();
        rx.install(0, tx.key().clone());
        let opened = rx
            .open(&MediaFrame::decode(&b).expect("decode"))
            .expect("open");
        assert_eq!(opened.payload, vec![2u8; 150]);
    }

    #[test]
    fn ratchet_is_followed_but_rotation_is_not() {
        let mut tx = SenderKey::new(&mut rng(5));
        let mut rx = ReceiverKeys::new();
        rx.install(0, tx.key().clone());
        tx.ratchet();
        let f = tx.encrypt(0, b"after join", None).expect("encrypt");
        assert_eq!(
            rx.open(&f).expect("ratchet followed").payload,
            b"after join"
        );
        tx.rotate(&mut rng(6));
        let f = tx.encrypt(20, b"after leave", None).expect("encrypt");
        assert_eq!(rx.open(&f), Err(Error::UnknownEpoch(2)));
    }
}
