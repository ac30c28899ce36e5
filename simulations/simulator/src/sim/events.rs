//! The event queue, the main loop, and the dispatch of each event to its handler.

use std::cmp::Ordering;

use super::raw::Raw;
use super::{Key, Sim};

/// Everything that can happen at one instant of virtual time.
pub(super) enum Ev {
    Join(usize),
    Leave {
        node: usize,
        session: u32,
    },
    ConnUp {
        key: Key,
        gen: u64,
    },
    Punch {
        key: Key,
        gen: u64,
        attempt: u32,
    },
    Frame {
        to: usize,
        from: usize,
        session: u32,
        frame: Vec<u8>,
        close: bool,
    },
    Disconnect {
        to: usize,
        from: usize,
        session: u32,
    },
    Media {
        to: usize,
        from: usize,
        session: u32,
        bytes: Vec<u8>,
    },
    Timer {
        node: usize,
        session: u32,
        at: u64,
    },
    Playout {
        node: usize,
        from: usize,
        at: u64,
    },
    Tick {
        node: usize,
        session: u32,
    },
    MediaEnd,
    Sample,
}

/// A queued event; ordered by (time, insertion counter), earliest first.
pub(super) struct Entry {
    t: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.t, self.seq) == (o.t, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap, we want the earliest first.
        (o.t, o.seq).cmp(&(self.t, self.seq))
    }
}

impl Sim {
    /// Queues `ev` at `t` (never before now).
    pub(super) fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Entry {
            t: t.max(self.now),
            seq: self.seq,
            ev,
        });
    }

    /// Runs to the end; `progress(done_us, total_us)` is called about every 1% of simulated
    /// time. Returns the raw measurements.
    pub(super) fn run_raw(mut self, progress: &mut dyn FnMut(u64, u64)) -> Raw {
        let step = (self.end / 100).max(1);
        let mut next_report = 0;
        while let Some(e) = self.queue.pop() {
            if e.t > self.end {
                break;
            }
            self.now = e.t;
            self.events += 1;
            if self.now >= next_report {
                progress(self.now, self.end);
                next_report = self.now + step;
            }
            self.handle(e.ev);
        }
        self.now = self.end;
        progress(self.end, self.end);
        self.into_raw()
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Join(n) => self.join(n),
            Ev::Leave { node, session } => self.leave_if_current(node, session),
            Ev::ConnUp { key, gen } => self.conn_up(key, gen),
            Ev::Punch { key, gen, attempt } => self.punch(key, gen, attempt),
            Ev::Frame {
                to,
                from,
                session,
                frame,
                close,
            } => self.frame_in(to, from, session, &frame, close),
            Ev::Disconnect { to, from, session } => self.disconnect_in(to, from, session),
            Ev::Media {
                to,
                from,
                session,
                bytes,
            } => self.media_in(to, from, session, &bytes),
            Ev::Timer { node, session, at } => self.timer_fired(node, session, at),
            Ev::Playout { node, from, at } => self.playout(node, from, at),
            Ev::Tick { node, session } => self.tick(node, session),
            Ev::MediaEnd => self.media_end_reached(),
            Ev::Sample => self.sample_and_rearm(),
        }
    }
}
