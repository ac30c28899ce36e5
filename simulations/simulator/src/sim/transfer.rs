//! Moving bytes between two connected nodes: uplink and downlink queues, access jitter and
//! burst loss, the relay's bandwidth, and retransmission on reliable transports.

use crate::nat::Path;
use crate::scenario::Transport;

use super::{key, Sim, MS};

impl Sim {
    /// Moves `bytes` from `from` to `to` over their connection; returns the arrival time, or
    /// `None` if the packet is dropped (only unreliable media can be).
    pub(super) fn transfer(
        &mut self,
        from: usize,
        to: usize,
        bytes: usize,
        media: bool,
    ) -> Option<u64> {
        let k = key(from, to);
        let (path, relay, oneway, dir) = {
            let c = self.conns.get(&k)?;
            let dir = usize::from(from != k.0);
            (c.path, c.relay, self.base_oneway_us(from, to, c), dir)
        };
        let reliable = !media || self.sc.network.media_transport == Transport::Reliable;
        let wire = u32::try_from(bytes).unwrap_or(u32::MAX) + self.sc.network.packet_overhead_bytes;
        if media && self.sender_queue_full(from, reliable) {
            return None;
        }
        let now = self.now;
        if now >= self.media_start && now < self.media_end {
            self.nodes[from].window_up_bytes += u64::from(wire);
        }
        let mut t = self.nodes[from].up.send(now, wire);
        let j1 = self.sc.access.jitter_ms.sample(&mut self.rng);
        let j2 = self.sc.access.jitter_ms.sample(&mut self.rng);
        t += oneway + ((j1 + j2) * MS as f64) as u64;
        if path == Path::Relayed {
            if let Some(r) = relay {
                t = t.max(self.relays[r].pipe.send(t, wire));
            }
        }
        let mut lost = self.lose(from, to);
        if lost && !reliable {
            self.frames_lost_net += 1;
            return None;
        }
        // Reliable: the loss is detected after 9/8 RTT (QUIC's time threshold) and the
        // packet sent again, until it gets through.
        let rto = (2 * oneway * 9 / 8).max(MS);
        let mut tries = 0;
        while lost && tries < 16 {
            t += rto;
            tries += 1;
            lost = self.lose(from, to);
        }
        t = self.nodes[to].down.send(t, wire);
        if reliable {
            if let Some(c) = self.conns.get_mut(&k) {
                let lane = usize::from(media);
                t = t.max(c.last[dir][lane]);
                c.last[dir][lane] = t;
            }
        }
        Some(t)
    }

    /// Whether media from `from` finds its sender queue (reliable) or access queue
    /// (unreliable) over its limit.
    fn sender_queue_full(&self, from: usize, reliable: bool) -> bool {
        let limit = if reliable {
            self.sc.media.sender_queue_ms
        } else {
            self.sc.access.queue_ms
        };
        self.nodes[from].up.backlog_us(self.now) as f64 > limit * MS as f64
    }

    /// One packet's fate on the sender's uplink and the receiver's downlink (both channels
    /// draw, in that order).
    fn lose(&mut self, from: usize, to: usize) -> bool {
        let loss = &self.sc.access.loss;
        self.nodes[from].ge_up.lose(loss, &mut self.rng)
            | self.nodes[to].ge_down.lose(loss, &mut self.rng)
    }
}
