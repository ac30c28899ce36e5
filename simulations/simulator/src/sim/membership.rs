//! Members joining and leaving their room (and coming back, with churn).

use confab_protocol::room::{Room, RoomConfig};

use super::events::Ev;
use super::sample::add_counters;
use super::{key, Sim, MS};

impl Sim {
    pub(super) fn join(&mut self, n: usize) {
        if self.nodes[n].state.is_some() {
            return;
        }
        let r = self.nodes[n].room;
        let room = self.new_room_state(n, r);
        let info = &self.rooms[r];
        let bootstrap = info.online.iter().copied().find(|m| *m != n);
        let (media, churn) = (info.media, info.churn);
        self.rooms[r].online.insert(n);
        self.joins += 1;
        let node = &mut self.nodes[n];
        node.state = Some(room);
        node.session += 1;
        node.timer_at = None;
        node.joined_at = self.now;
        node.admitted_once = false;
        node.heard = false;
        let session = node.session;
        match bootstrap {
            Some(b) => self.dial(n, b),
            // Nobody to meet yet: not a join-to-admission sample.
            None => self.nodes[n].admitted_once = true,
        }
        if media && self.media_on && self.now < self.media_end {
            let phase = self.rng.below(u64::from(self.sc.media.frame_ms) * MS);
            let start = self.now.max(self.media_start) + phase;
            self.at(start, Ev::Tick { node: n, session });
        }
        if churn {
            self.schedule_leave(n, session);
        }
    }

    /// A fresh room state machine for node `n` joining room `r` (draws its seed).
    fn new_room_state(&mut self, n: usize, r: usize) -> Room {
        let p = &self.sc.room;
        let cfg = RoomConfig {
            name: format!("node-{n}"),
            addrs: Vec::new(),
            recording: false,
            muted: false,
            max_members: p.max_members,
            handshake_timeout_ms: p.handshake_timeout_ms,
            heartbeat_interval_ms: p.heartbeat_interval_ms,
            idle_timeout_ms: p.idle_timeout_ms,
            pending_frames: RoomConfig::default().pending_frames,
        };
        let seed = self.rng.seed32();
        let info = &self.rooms[r];
        let mut room = Room::new(
            cfg,
            self.nodes[n].identity.clone(),
            info.id,
            &info.secret,
            seed,
        );
        // The scenario's frame and look-ahead were checked when it was loaded; a format the
        // header cannot carry would leave the default (20 ms, 6.5 ms) in place.
        let _ = room.set_media_format(self.media_format());
        room
    }

    /// With churn: when this session of `n` ends.
    fn schedule_leave(&mut self, n: usize, session: u32) {
        if let Some(c) = &self.sc.churn {
            let stay = self.rng.exp(c.mean_stay_s);
            let from = self.now.max((c.start_s * 1e6) as u64);
            self.at(from + (stay * 1e6) as u64, Ev::Leave { node: n, session });
        }
    }

    /// A scheduled departure, unless the node has left and rejoined since.
    pub(super) fn leave_if_current(&mut self, n: usize, session: u32) {
        if self.nodes[n].session == session && self.nodes[n].state.is_some() {
            self.leave(n);
        }
    }

    fn leave(&mut self, n: usize) {
        let now = self.now_ms();
        if let Some(room) = self.nodes[n].state.as_mut() {
            room.leave(now);
        }
        self.drain(n);
        self.finish_streams(n);
        let peers: Vec<usize> = self.nodes[n].conns.iter().copied().collect();
        for p in peers {
            self.close_conn(key(n, p));
        }
        let r = self.nodes[n].room;
        self.rooms[r].online.remove(&n);
        self.leaves += 1;
        let node = &mut self.nodes[n];
        if let Some(room) = node.state.take() {
            add_counters(&mut node.acc, room.counters());
        }
        node.session += 1;
        node.timer_at = None;
        if let Some(c) = &self.sc.churn {
            if c.mean_away_s > 0.0 {
                let away = self.rng.exp(c.mean_away_s);
                self.at(self.now + (away * 1e6) as u64, Ev::Join(n));
            }
        }
    }
}
