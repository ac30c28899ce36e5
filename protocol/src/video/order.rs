//! Per sender and track, at the receiver: frames in order, and only decodable ones.
//!
//! The video stream is reliable and ordered, so a missing sequence number is lost for good
//! (the sender's queue or ours dropped it). A frame is decodable when it is a keyframe, or
//! when the frame it refers to (its `base_seq`: the previous base-layer frame) was handed on
//! and no keyframe is owed. A decodable frame goes at once, gap or not: a frame of an upper
//! temporal layer that was dropped leaves nothing behind it broken. An undecodable frame
//! waits briefly (its reference may still come out of order), then is dropped and a
//! keyframe is asked for, at most once per [`OrderConfig::request_every_ms`].

use std::collections::BTreeMap;

use super::VideoFrame;

#[derive(Debug, Clone, Copy)]
pub struct OrderConfig {
    /// How long an undecodable frame waits for what it refers to.
    pub wait_ms: u64,
    /// Most frames held.
    pub hold: usize,
    /// Keyframe requests at most this often.
    pub request_every_ms: u64,
}

impl Default for OrderConfig {
    fn default() -> Self {
        Self {
            wait_ms: 60,
            hold: 16,
            request_every_ms: 300,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct OrderCounters {
    pub delivered: u64,
    /// Arrived after a later frame had been handed on (or twice).
    pub late: u64,
    /// Dropped: what they refer to never came.
    pub undecodable: u64,
    /// Sequence numbers that never arrived.
    pub missing: u64,
    pub keyframe_requests: u64,
}

/// The ordering state of one sender's track.
pub struct Orderer {
    cfg: OrderConfig,
    last: Option<u32>,
    base: Option<u32>,
    need_key: bool,
    held: BTreeMap<u32, (u64, VideoFrame)>,
    last_request: Option<u64>,
    pub counters: OrderCounters,
}

impl Orderer {
    pub fn new(cfg: OrderConfig) -> Self {
        Self {
            cfg,
            last: None,
            base: None,
            need_key: true,
            held: BTreeMap::new(),
            last_request: None,
            counters: OrderCounters::default(),
        }
    }

    pub fn push(&mut self, now_ms: u64, f: VideoFrame) {
        if self.last.is_some_and(|l| f.seq <= l) || self.held.contains_key(&f.seq) {
            self.counters.late += 1;
            return;
        }
        self.held.insert(f.seq, (now_ms, f));
    }

    fn decodable(&self, f: &VideoFrame) -> bool {
        f.meta.keyframe || (!self.need_key && self.base == Some(f.meta.base_seq))
    }

    /// The next frame to hand on, if one is due.
    pub fn pop(&mut self, now_ms: u64) -> Option<VideoFrame> {
        loop {
            let (&seq, (arrived, f)) = self.held.first_key_value()?;
            let ok = self.decodable(f);
            let waited = now_ms.saturating_sub(*arrived) >= self.cfg.wait_ms;
            if !ok && !waited && self.held.len() <= self.cfg.hold {
                return None;
            }
            let (_, (_, f)) = self.held.pop_first()?;
            let expected = self.last.map_or(seq, |l| l.wrapping_add(1));
            self.counters.missing += u64::from(seq.saturating_sub(expected));
            self.last = Some(seq);
            if !ok {
                self.counters.undecodable += 1;
                self.need_key = true;
                continue;
            }
            if f.meta.keyframe {
                self.need_key = false;
            }
            if f.meta.layer == 0 {
                self.base = Some(seq);
            }
            self.counters.delivered += 1;
            return Some(f);
        }
    }

    /// When [`Orderer::pop`] may have something: the oldest held frame's deadline.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.held
            .first_key_value()
            .map(|(_, (at, _))| at + self.cfg.wait_ms)
    }

    /// Whether to ask the sender for a keyframe now (and note that we did).
    pub fn wants_keyframe(&mut self, now_ms: u64) -> bool {
        let owed = self.need_key
            || self
                .held
                .first_key_value()
                .is_some_and(|(_, (_, f))| !self.decodable(f));
        let due = self
            .last_request
            .is_none_or(|t| now_ms.saturating_sub(t) >= self.cfg.request_every_ms);
        if owed && due {
            self.last_request = Some(now_ms);
            self.counters.keyframe_requests += 1;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::{FrameMeta, TrackKind};
    use proptest::prelude::*;

    /// An L1T2 stream: even frames base layer, odd upper; keyframes where asked.
    fn frame(seq: u32, key: bool) -> VideoFrame {
        let layer = if key { 0 } else { (seq % 2) as u8 };
        let base_seq = if key {
            seq
        } else if layer == 0 {
            seq - 2
        } else {
            seq - 1
        };
        VideoFrame {
            kind: TrackKind::Camera,
            epoch: 0,
            seq,
            meta: FrameMeta {
                keyframe: key,
                layer,
                base_seq,
                width: 640,
                height: 360,
                capture_us: 0,
            },
            data: vec![1],
        }
    }

    fn drain(o: &mut Orderer, now: u64) -> Vec<u32> {
        std::iter::from_fn(|| o.pop(now)).map(|f| f.seq).collect()
    }

    #[test]
    fn starts_at_a_keyframe_and_asks_for_one() {
        let mut o = Orderer::new(OrderConfig::default());
        o.push(0, frame(3, false));
        assert!(o.wants_keyframe(0));
        assert!(!o.wants_keyframe(100), "rate-limited");
        assert_eq!(drain(&mut o, 100), Vec::<u32>::new());
        assert_eq!(o.counters.undecodable, 1);
        assert!(o.wants_keyframe(300));
        o.push(310, frame(4, true));
        o.push(320, frame(5, false));
        o.push(330, frame(6, false));
        assert_eq!(drain(&mut o, 330), vec![4, 5, 6]);
        assert!(!o.wants_keyframe(1_000));
    }

    #[test]
    fn a_dropped_upper_layer_frame_breaks_nothing() {
        let mut o = Orderer::new(OrderConfig::default());
        o.push(0, frame(0, true));
        o.push(0, frame(2, false)); // 1 was dropped: upper layer
        o.push(0, frame(3, false));
        assert_eq!(drain(&mut o, 0), vec![0, 2, 3], "no waiting for 1");
        assert_eq!(o.counters.missing, 1);
        assert!(!o.wants_keyframe(0));
    }

    #[test]
    fn a_lost_base_frame_costs_a_keyframe() {
        let mut o = Orderer::new(OrderConfig::default());
        o.push(0, frame(0, true));
        o.push(0, frame(1, false));
        // 2 (base layer) lost.
        o.push(10, frame(3, false));
        o.push(20, frame(4, false));
        assert_eq!(drain(&mut o, 20), vec![0, 1], "3 waits for 2");
        assert!(o.wants_keyframe(20));
        assert_eq!(drain(&mut o, 80), Vec::<u32>::new());
        assert_eq!(o.counters.undecodable, 2);
        o.push(90, frame(5, false));
        o.push(100, frame(6, true));
        assert_eq!(drain(&mut o, 200), vec![6]);
    }

    #[test]
    fn late_and_duplicate_frames_are_dropped() {
        let mut o = Orderer::new(OrderConfig::default());
        o.push(0, frame(0, true));
        o.push(0, frame(1, false));
        assert_eq!(drain(&mut o, 0), vec![0, 1]);
        o.push(0, frame(1, false));
        o.push(0, frame(0, true));
        assert_eq!(o.counters.late, 2);
    }

    #[test]
    fn an_out_of_order_reference_is_waited_for() {
        let mut o = Orderer::new(OrderConfig::default());
        o.push(0, frame(0, true));
        assert_eq!(drain(&mut o, 0), vec![0]);
        o.push(5, frame(3, false)); // refers to 2
        assert_eq!(drain(&mut o, 10), Vec::<u32>::new());
        o.push(20, frame(2, false));
        assert_eq!(drain(&mut o, 20), vec![2, 3]);
        assert_eq!(o.counters.undecodable, 0);
    }

    proptest! {
        #[test]
        fn handed_on_frames_are_increasing_and_decodable(
            events in proptest::collection::vec((0u32..60, any::<bool>(), 0u64..30), 1..200)
        ) {
            let mut o = Orderer::new(OrderConfig::default());
            let mut now = 0;
            let mut out = Vec::new();
            for (seq, key, dt) in events {
                now += dt;
                o.push(now, frame(seq + 2, key));
                out.extend(std::iter::from_fn(|| o.pop(now)));
                prop_assert!(o.held.len() <= OrderConfig::default().hold + 1);
            }
            for w in out.windows(2) {
                prop_assert!(w[0].seq < w[1].seq);
            }
            if let Some(first) = out.first() {
                prop_assert!(first.meta.keyframe);
            }
        }
    }
}
