//! Members' video: fragments joined (bounded), opened with the sender's key of the epoch,
//! checked against replays, ordered, and handed to the page; keyframe requests both ways.

use confab_protocol::room::Room;
use confab_protocol::video::order::{OrderConfig, Orderer};
use confab_protocol::video::reassembly::Sealed;
use confab_protocol::video::seal::open;
use confab_protocol::video::wire::VideoMessage;
use confab_protocol::video::TrackKind;
use libp2p::PeerId;

use super::{RemoteFrame, VideoCall};

impl VideoCall {
    /// One message from `peer`'s video stream.
    pub fn on_message(&mut self, room: &Room, peer: PeerId, bytes: &[u8], at_ms: u64) {
        let msg = match VideoMessage::decode(bytes) {
            Ok(m) => m,
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        match msg {
            VideoMessage::KeyframeRequest { kind } => {
                self.stats.keyframe_requests_in += 1;
                // Only for a track we send, and only from a member we send to.
                if self.peers.contains_key(&peer) {
                    if let Some(t) = self.tracks.get_mut(&kind) {
                        t.limiter.request();
                    }
                }
            }
            VideoMessage::Fragment(f) => {
                if let Some(sealed) = self.reassembly.push(at_ms, peer, f) {
                    self.on_sealed(room, peer, sealed, at_ms);
                }
            }
        }
    }

    fn on_sealed(&mut self, room: &Room, peer: PeerId, s: Sealed, at_ms: u64) {
        let Some(key) = room.member_key(&peer.to_bytes(), s.epoch) else {
            self.stats.unknown_epoch += 1;
            return;
        };
        let guard = self.replay.entry(peer).or_default();
        if !guard.check(s.kind, s.epoch, s.seq) {
            self.stats.replays += 1;
            return;
        }
        let frame = match open(&key, &s) {
            Ok(f) => f,
            Err(_) => {
                self.stats.decrypt_failures += 1;
                return;
            }
        };
        guard.accept(s.kind, s.epoch, s.seq);
        let r = self
            .stats
            .received
            .entry(format!("{peer}/{}", s.kind.name()))
            .or_default();
        r.frames += 1;
        r.bytes += frame.data.len() as u64;
        self.remote
            .entry((peer, s.kind))
            .or_insert_with(|| Orderer::new(OrderConfig::default()))
            .push(at_ms, frame);
        self.drain_one(peer, s.kind, at_ms);
    }

    /// Hands on every due frame of every member, and asks for keyframes where owed.
    pub(super) fn drain_remote(&mut self, now_ms: u64) {
        let keys: Vec<(PeerId, TrackKind)> = self.remote.keys().copied().collect();
        for (peer, kind) in keys {
            self.drain_one(peer, kind, now_ms);
        }
    }

    fn drain_one(&mut self, peer: PeerId, kind: TrackKind, now_ms: u64) {
        let Some(o) = self.remote.get_mut(&(peer, kind)) else {
            return;
        };
        while let Some(f) = o.pop(now_ms) {
            if let Some(sink) = self.sink.as_mut() {
                sink.frame(RemoteFrame {
                    from: peer,
                    kind,
                    seq: f.seq,
                    meta: f.meta,
                    data: f.data,
                });
            }
        }
        if o.wants_keyframe(now_ms) {
            if let Some(p) = self.peers.get(&peer) {
                p.queue
                    .push_control(VideoMessage::KeyframeRequest { kind }.encode());
            }
        }
    }
}
