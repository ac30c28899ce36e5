//! Our video: each frame from the page sealed once, split, and queued to every member that
//! its congestion level admits it to.

use confab_protocol::room::Room;
use confab_protocol::video::seal::seal;
use confab_protocol::video::wire::VideoMessage;
use confab_protocol::video::FrameMeta;
use tracing::debug;

use super::{LocalFrame, VideoCall};

impl VideoCall {
    /// One frame the page encoded, at `now_ms`.
    pub fn send(&mut self, room: &Room, f: LocalFrame, now_ms: u64) {
        self.stats.frames_from_page += 1;
        let track = self.tracks.entry(f.kind).or_default();
        let seq = track.next_seq;
        track.next_seq = track.next_seq.wrapping_add(1);
        let base_seq = if f.keyframe {
            seq
        } else {
            track.last_base.unwrap_or(seq)
        };
        if f.layer == 0 {
            track.last_base = Some(seq);
        }
        let meta = FrameMeta {
            keyframe: f.keyframe,
            layer: f.layer,
            base_seq,
            width: f.width,
            height: f.height,
            capture_us: f.capture_us,
        };
        let (epoch, key) = room.media_key();
        let fragments = match seal(key, f.kind, epoch, seq, &meta, &f.data) {
            Ok(frags) => frags,
            Err(e) => {
                self.stats.seal_errors += 1;
                debug!(error = %e, "cannot seal a video frame");
                return;
            }
        };
        let messages: Vec<Vec<u8>> = fragments
            .into_iter()
            .map(|fr| VideoMessage::Fragment(fr).encode())
            .collect();
        let bytes: u64 = messages.iter().map(|m| m.len() as u64).sum();
        self.stats.frames_sealed += 1;
        self.stats.bytes_sealed += bytes;
        self.queue_to_peers(&messages, f.layer, bytes, now_ms);
    }

    fn queue_to_peers(&mut self, messages: &[Vec<u8>], layer: u8, bytes: u64, now_ms: u64) {
        for (pid, p) in self.peers.iter_mut() {
            if !p.congestion.admits(now_ms, layer) {
                continue;
            }
            let s = self.stats.sent.entry(pid.to_string()).or_default();
            if p.queue.push_frame(messages) {
                s.frames += 1;
                s.bytes += bytes;
            } else {
                s.dropped += 1;
                p.congestion.on_drop(now_ms);
            }
        }
    }
}
