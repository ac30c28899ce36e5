//! Media: each member's frame tick, frames in, jitter buffers, playout, and the per-stream
//! quality counted when a stream ends.

use confab_protocol::crypto::OpenedFrame;
use confab_protocol::jitter::{JitterBuffer, Playout};

use super::events::Ev;
use super::state::Stream;
use super::{key, Sim, MS};

impl Sim {
    /// One frame interval of `n`: encrypt one frame and send it to every connected member.
    pub(super) fn tick(&mut self, n: usize, session: u32) {
        if self.nodes[n].session != session || !self.media_on || self.now >= self.media_end {
            return;
        }
        // The frame sent at this tick holds the audio of the frame interval before it: its
        // first sample was captured a frame ago.
        let captured_ms = self
            .now_ms()
            .saturating_sub(u64::from(self.sc.media.frame_ms));
        let Some(room) = self.nodes[n].state.as_mut() else {
            return;
        };
        let members: Vec<Vec<u8>> = room.members().map(|(k, _, _)| k.clone()).collect();
        if !members.is_empty() {
            if let Ok(frame) = room.encrypt_media(captured_ms, &self.payload, None) {
                self.send_media(n, &members, &frame);
            }
        }
        let next = self.now + u64::from(self.sc.media.frame_ms) * MS;
        self.at(next, Ev::Tick { node: n, session });
    }

    /// Sends one encrypted frame from `n` to each of `members` that it is connected to.
    fn send_media(&mut self, n: usize, members: &[Vec<u8>], frame: &[u8]) {
        let size = self.rooms[self.nodes[n].room].size;
        for peer in members {
            let Some(&to) = self.by_peer.get(peer) else {
                continue;
            };
            if !self.conns.get(&key(n, to)).is_some_and(|c| c.up) {
                continue;
            }
            let agg = self.sizes.entry(size).or_default();
            agg.frames_sent += 1;
            match self.transfer(n, to, frame.len() + 2, true) {
                Some(at) => {
                    let session = self.nodes[to].session;
                    self.at(
                        at,
                        Ev::Media {
                            to,
                            from: n,
                            session,
                            bytes: frame.to_vec(),
                        },
                    );
                }
                None => {
                    if let Some(a) = self.sizes.get_mut(&size) {
                        a.frames_dropped += 1;
                    }
                }
            }
        }
    }

    /// An encrypted media frame from `from` arrives at `to`.
    pub(super) fn media_in(&mut self, to: usize, from: usize, session: u32, bytes: &[u8]) {
        if self.nodes[to].session != session || !self.media_on {
            return;
        }
        let now = self.now_ms();
        let peer = self.nodes[from].peer.clone();
        let Some(room) = self.nodes[to].state.as_mut() else {
            return;
        };
        if let Ok(Some(f)) = room.open_media(now, &peer, bytes) {
            self.push_frame(to, from, f);
        }
        self.drain(to);
    }

    /// A decrypted frame from `from` goes into `n`'s jitter buffer for that sender.
    pub(super) fn push_frame(&mut self, n: usize, from: usize, f: OpenedFrame) {
        if !self.media_on {
            return;
        }
        let now_ms = self.now_ms();
        let node = &mut self.nodes[n];
        if !node.heard {
            node.heard = true;
            if node.joined_at >= self.media_start {
                self.join_to_audio
                    .push((self.now - node.joined_at) as f64 / MS as f64);
            }
        }
        let cfg = self.jitter_cfg.clone();
        let s = node.streams.entry(from).or_insert_with(|| Stream {
            jb: JitterBuffer::new(cfg),
            at: None,
        });
        s.jb.push(now_ms, f.header.seq, f.header.capture_ts_ms, f.payload);
        self.arm_playout(n, from);
    }

    fn arm_playout(&mut self, n: usize, from: usize) {
        let now = self.now;
        let Some(s) = self.nodes[n].streams.get_mut(&from) else {
            return;
        };
        let Some(t) = s.jb.poll_timeout() else {
            return;
        };
        let t = (t * MS).max(now);
        if s.at.is_some_and(|cur| cur <= t) {
            return;
        }
        s.at = Some(t);
        self.at(
            t,
            Ev::Playout {
                node: n,
                from,
                at: t,
            },
        );
    }

    /// The playout deadline of `n`'s stream from `from`, if it is still the armed one.
    pub(super) fn playout(&mut self, n: usize, from: usize, at: u64) {
        let now_ms = self.now_ms();
        let size = self.rooms[self.nodes[n].room].size;
        let Some(s) = self.nodes[n].streams.get_mut(&from) else {
            return;
        };
        if s.at != Some(at) {
            return;
        }
        s.at = None;
        let agg = self.sizes.entry(size).or_default();
        let lookahead_ms = f64::from(s.jb.config().lookahead_us) / 1e3;
        let frame_ms = u64::from(s.jb.config().frame_ms);
        while let Some(p) = s.jb.poll_playout(now_ms) {
            if let Playout::Frame { capture_ts_ms, .. } = p {
                // The sample captured at `t` plays at `t` + this: the frame's wait from its
                // first sample to playout, plus the codec's look-ahead.
                let waited = now_ms.saturating_sub(capture_ts_ms).max(frame_ms);
                agg.m2e.push(waited as f64 + lookahead_ms);
                self.frames_played_total += 1;
            }
        }
        self.arm_playout(n, from);
    }

    /// The end of the media window: every stream is scored and media stops.
    pub(super) fn media_end_reached(&mut self) {
        self.media_on = false;
        for n in 0..self.nodes.len() {
            self.finish_streams(n);
        }
    }

    /// Ends `n`'s stream from `from` and adds its quality to its room size's aggregate.
    pub(super) fn finish_stream(&mut self, n: usize, from: usize) {
        let size = self.rooms[self.nodes[n].room].size;
        let Some(s) = self.nodes[n].streams.remove(&from) else {
            return;
        };
        let st = s.jb.stats();
        let agg = self.sizes.entry(size).or_default();
        agg.streams += 1;
        agg.slots += st.slots();
        agg.missed += st.missed_slots();
        agg.played += st.frames_played;
        agg.concealed += st.frames_concealed;
        agg.late += st.frames_late;
        if st.slots() >= 50 {
            agg.mos.push(st.mos());
        }
    }

    pub(super) fn finish_streams(&mut self, n: usize) {
        let froms: Vec<usize> = self.nodes[n].streams.keys().copied().collect();
        for f in froms {
            self.finish_stream(n, f);
        }
    }
}
