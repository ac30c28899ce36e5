//! Driving each member's room state machine: frames and disconnects in, timers, and
//! draining what the room wants sent, reported and played.

use confab_protocol::room::Event;

use super::events::Ev;
use super::{key, Sim, MS};

impl Sim {
    /// A room frame from `from` arrives at `to` (`close`: the sender closed the stream).
    pub(super) fn frame_in(
        &mut self,
        to: usize,
        from: usize,
        session: u32,
        frame: &[u8],
        close: bool,
    ) {
        if self.nodes[to].session != session {
            return;
        }
        let now = self.now_ms();
        let peer = self.nodes[from].peer.clone();
        let Some(room) = self.nodes[to].state.as_mut() else {
            return;
        };
        room.handle_frame(now, &peer, frame);
        if close {
            room.peer_disconnected(now, &peer);
            self.close_conn(key(to, from));
        }
        self.drain(to);
    }

    /// `to` learns that its connection to `from` is gone.
    pub(super) fn disconnect_in(&mut self, to: usize, from: usize, session: u32) {
        if self.nodes[to].session != session {
            return;
        }
        let now = self.now_ms();
        let peer = self.nodes[from].peer.clone();
        if let Some(room) = self.nodes[to].state.as_mut() {
            room.peer_disconnected(now, &peer);
            self.drain(to);
        }
    }

    /// The room timer of `node`, if it is still the armed one.
    pub(super) fn timer_fired(&mut self, node: usize, session: u32, at: u64) {
        let n = &mut self.nodes[node];
        if n.session != session || n.timer_at != Some(at) {
            return;
        }
        n.timer_at = None;
        let now = self.now / MS;
        if let Some(room) = n.state.as_mut() {
            room.handle_timeout(now);
            self.drain(node);
        }
    }

    /// Drains everything the room of `n` wants done, then re-arms its timer.
    pub(super) fn drain(&mut self, n: usize) {
        loop {
            let Some(room) = self.nodes[n].state.as_mut() else {
                return;
            };
            if let Some(t) = room.poll_transmit() {
                let Some(&to) = self.by_peer.get(&t.peer) else {
                    continue;
                };
                self.send_frame(n, to, t.frame, t.close);
                continue;
            }
            if let Some(e) = room.poll_event() {
                self.room_event(n, e);
                continue;
            }
            if let Some((peer, f)) = room.poll_media() {
                if let Some(&from) = self.by_peer.get(&peer) {
                    self.push_frame(n, from, f);
                }
                continue;
            }
            break;
        }
        self.arm_timer(n);
    }

    /// Sends one room frame from `n` to `to` if their connection is up.
    fn send_frame(&mut self, n: usize, to: usize, frame: Vec<u8>, close: bool) {
        let k = key(n, to);
        if !self.conns.get(&k).is_some_and(|c| c.up) {
            return;
        }
        let session = self.nodes[to].session;
        let size = frame.len() + 2;
        if let Some(at) = self.transfer(n, to, size, false) {
            self.at(
                at,
                Ev::Frame {
                    to,
                    from: n,
                    session,
                    frame,
                    close,
                },
            );
        }
        if close {
            self.close_conn(k);
        }
    }

    fn arm_timer(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        let Some(room) = node.state.as_ref() else {
            return;
        };
        let Some(t) = room.poll_timeout() else {
            return;
        };
        let tick = self.sc.room.timer_tick_ms;
        let t = if tick > 0 { t.div_ceil(tick) * tick } else { t };
        let t = (t * MS).max(self.now + MS);
        if node.timer_at.is_some_and(|cur| cur <= t) {
            return;
        }
        node.timer_at = Some(t);
        let session = node.session;
        self.at(
            t,
            Ev::Timer {
                node: n,
                session,
                at: t,
            },
        );
    }

    fn room_event(&mut self, n: usize, e: Event) {
        match e {
            Event::Admitted { .. } => {
                let node = &mut self.nodes[n];
                if !node.admitted_once {
                    node.admitted_once = true;
                    self.join_to_admitted
                        .push((self.now - node.joined_at) as f64 / MS as f64);
                }
            }
            Event::Left { peer, .. } | Event::AdmissionFailed { peer, .. } => {
                if let Some(&p) = self.by_peer.get(&peer) {
                    self.peer_gone(n, p);
                }
            }
            Event::Dial(info) => {
                if let Some(&p) = self.by_peer.get(&info.peer_id) {
                    // Both ends learn about each other; the lower index dials.
                    if n < p && self.nodes[p].state.is_some() {
                        self.dial(n, p);
                    }
                }
            }
            Event::Rekeyed { fresh, .. } => {
                if fresh {
                    self.fresh_rotations += 1;
                } else {
                    self.ratchets += 1;
                }
            }
            Event::Recording { .. } | Event::Muted { .. } | Event::Chat { .. } => {}
        }
    }

    /// `n`'s room says `p` left (or failed admission): end the stream from `p`, close the
    /// connection and tell `p` a one-way latency later.
    fn peer_gone(&mut self, n: usize, p: usize) {
        self.finish_stream(n, p);
        let k = key(n, p);
        if !self.conns.get(&k).is_some_and(|c| c.open) {
            return;
        }
        let oneway = self
            .conns
            .get(&k)
            .map(|c| self.base_oneway_us(n, p, c))
            .unwrap_or(0);
        self.close_conn(k);
        let session = self.nodes[p].session;
        self.at(
            self.now + oneway,
            Ev::Disconnect {
                to: p,
                from: n,
                session,
            },
        );
    }
}
