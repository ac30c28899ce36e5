//! Bounded reassembly of video fragments into sealed frames.
//!
//! Fragments of a frame are held until all of them are in, at most [`Limits::timeout_ms`].
//! What is held is bounded per sender (bytes and frames) and in total; a new fragment that
//! would go over a bound first evicts the oldest incomplete frames (of that sender, else of
//! anyone). Duplicates, fragments that disagree with their frame and evictions are counted.
//! Nothing here trusts a sender: a sender that only ever sends first fragments costs at most
//! its share.

use std::collections::BTreeMap;

use super::wire::{Fragment, MAX_CHUNK};
use super::TrackKind;

/// The bounds of a [`Reassembly`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub per_sender_bytes: usize,
    pub per_sender_frames: usize,
    pub total_bytes: usize,
    pub timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_sender_bytes: 1024 * 1024,
            per_sender_frames: 8,
            total_bytes: 4 * 1024 * 1024,
            timeout_ms: 2_000,
        }
    }
}

/// A complete sealed frame, ready for [`super::seal::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub kind: TrackKind,
    pub epoch: u32,
    pub seq: u32,
    pub count: u16,
    pub ciphertext: Vec<u8>,
}

/// What reassembly dropped, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReassemblyCounters {
    pub frames: u64,
    pub duplicates: u64,
    pub mismatched: u64,
    pub evicted: u64,
    pub expired: u64,
}

struct Partial {
    started_ms: u64,
    epoch: u32,
    count: u16,
    chunks: Vec<Option<Vec<u8>>>,
    received: u16,
    bytes: usize,
}

type FrameKey<K> = (K, TrackKind, u32);

/// Frames being reassembled, from every sender `K`.
pub struct Reassembly<K: Ord + Clone> {
    limits: Limits,
    partial: BTreeMap<FrameKey<K>, Partial>,
    /// Bytes and frames held per sender.
    held: BTreeMap<K, (usize, usize)>,
    total: usize,
    pub counters: ReassemblyCounters,
}

impl<K: Ord + Clone> Reassembly<K> {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            partial: BTreeMap::new(),
            held: BTreeMap::new(),
            total: 0,
            counters: ReassemblyCounters::default(),
        }
    }

    /// Bytes held now, in total.
    pub fn held_bytes(&self) -> usize {
        self.total
    }

    /// Frames being reassembled now.
    pub fn held_frames(&self) -> usize {
        self.partial.len()
    }

    /// Takes one fragment from `sender`; returns the frame it completed, if any.
    pub fn push(&mut self, now_ms: u64, sender: K, f: Fragment) -> Option<Sealed> {
        self.expire(now_ms);
        let key = (sender.clone(), f.kind, f.seq);
        if let Some(p) = self.partial.get(&key) {
            if p.count != f.count || p.epoch != f.epoch {
                self.counters.mismatched += 1;
                self.remove(&key);
                return None;
            }
            if p.chunks
                .get(usize::from(f.index))
                .is_none_or(Option::is_some)
            {
                self.counters.duplicates += 1;
                return None;
            }
        } else if f.count == 1 {
            self.counters.frames += 1;
            return Some(Sealed {
                kind: f.kind,
                epoch: f.epoch,
                seq: f.seq,
                count: 1,
                ciphertext: f.chunk,
            });
        }
        let len = f.chunk.len();
        if !self.make_room(&key, len) {
            return None;
        }
        self.insert(now_ms, key, f)
    }

    fn insert(&mut self, now_ms: u64, key: FrameKey<K>, f: Fragment) -> Option<Sealed> {
        let fresh = !self.partial.contains_key(&key);
        let p = self.partial.entry(key.clone()).or_insert_with(|| Partial {
            started_ms: now_ms,
            epoch: f.epoch,
            count: f.count,
            chunks: vec![None; usize::from(f.count)],
            received: 0,
            bytes: 0,
        });
        let len = f.chunk.len();
        let slot = p.chunks.get_mut(usize::from(f.index))?;
        *slot = Some(f.chunk);
        p.received += 1;
        p.bytes += len;
        let held = self.held.entry(key.0.clone()).or_insert((0, 0));
        held.0 += len;
        held.1 += usize::from(fresh);
        self.total += len;
        if p.received < p.count {
            return None;
        }
        let epoch = p.epoch;
        let count = p.count;
        let chunks = self.remove(&key)?;
        let mut ciphertext = Vec::with_capacity(usize::from(count) * MAX_CHUNK);
        for c in chunks.into_iter().flatten() {
            ciphertext.extend_from_slice(&c);
        }
        self.counters.frames += 1;
        Some(Sealed {
            kind: key.1,
            epoch,
            seq: key.2,
            count,
            ciphertext,
        })
    }

    /// Evicts the oldest incomplete frames until `len` more bytes of `key`'s sender fit;
    /// false if they cannot (the frame itself was evicted).
    fn make_room(&mut self, key: &FrameKey<K>, len: usize) -> bool {
        let is_new = !self.partial.contains_key(key);
        loop {
            let (bytes, frames) = self.held.get(&key.0).copied().unwrap_or((0, 0));
            let sender_full = bytes + len > self.limits.per_sender_bytes
                || (is_new && frames >= self.limits.per_sender_frames);
            let total_full = self.total + len > self.limits.total_bytes;
            if !sender_full && !total_full {
                return true;
            }
            let victim = if sender_full {
                self.oldest(|k| k.0 == key.0)
            } else {
                self.oldest(|_| true)
            };
            let Some(victim) = victim else {
                self.counters.evicted += 1;
                return false;
            };
            self.counters.evicted += 1;
            self.remove(&victim);
            if &victim == key {
                return false;
            }
        }
    }

    fn oldest(&self, pick: impl Fn(&FrameKey<K>) -> bool) -> Option<FrameKey<K>> {
        self.partial
            .iter()
            .filter(|(k, _)| pick(k))
            .min_by_key(|(k, p)| (p.started_ms, k.2))
            .map(|(k, _)| k.clone())
    }

    fn remove(&mut self, key: &FrameKey<K>) -> Option<Vec<Option<Vec<u8>>>> {
        let p = self.partial.remove(key)?;
        self.total -= p.bytes;
        if let Some(h) = self.held.get_mut(&key.0) {
            h.0 -= p.bytes;
            h.1 -= 1;
            if h.1 == 0 {
                self.held.remove(&key.0);
            }
        }
        Some(p.chunks)
    }

    /// Drops incomplete frames older than the timeout.
    pub fn expire(&mut self, now_ms: u64) {
        let timeout = self.limits.timeout_ms;
        let old: Vec<FrameKey<K>> = self
            .partial
            .iter()
            .filter(|(_, p)| now_ms.saturating_sub(p.started_ms) > timeout)
            .map(|(k, _)| k.clone())
            .collect();
        for k in old {
            self.counters.expired += 1;
            self.remove(&k);
        }
    }

    /// Forgets everything of `sender` (it left).
    pub fn forget(&mut self, sender: &K) {
        let keys: Vec<FrameKey<K>> = self
            .partial
            .keys()
            .filter(|k| &k.0 == sender)
            .cloned()
            .collect();
        for k in keys {
            self.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frag(seq: u32, index: u16, count: u16) -> Fragment {
        let len = if index + 1 == count { 10 } else { MAX_CHUNK };
        Fragment {
            kind: TrackKind::Camera,
            epoch: 0,
            seq,
            index,
            count,
            chunk: vec![index as u8; len],
        }
    }

    #[test]
    fn fragments_in_any_order_make_the_frame() {
        let mut r: Reassembly<u8> = Reassembly::new(Limits::default());
        assert!(r.push(0, 1, frag(4, 2, 3)).is_none());
        assert!(r.push(1, 1, frag(4, 0, 3)).is_none());
        assert!(r.push(1, 1, frag(4, 0, 3)).is_none(), "duplicate");
        let s = r.push(2, 1, frag(4, 1, 3)).expect("complete");
        assert_eq!(s.ciphertext.len(), 2 * MAX_CHUNK + 10);
        assert_eq!(s.ciphertext[MAX_CHUNK], 1);
        assert_eq!(r.counters.duplicates, 1);
        assert_eq!(r.held_bytes(), 0);
        assert_eq!(r.held_frames(), 0);
    }

    #[test]
    fn a_fragment_that_disagrees_drops_the_frame() {
        let mut r: Reassembly<u8> = Reassembly::new(Limits::default());
        r.push(0, 1, frag(1, 0, 3));
        assert!(r.push(0, 1, frag(1, 1, 4)).is_none());
        assert_eq!(r.counters.mismatched, 1);
        assert_eq!(r.held_bytes(), 0);
    }

    #[test]
    fn incomplete_frames_expire() {
        let mut r: Reassembly<u8> = Reassembly::new(Limits::default());
        r.push(0, 1, frag(1, 0, 2));
        r.expire(1_000);
        assert_eq!(r.held_frames(), 1);
        r.expire(2_001);
        assert_eq!(r.held_frames(), 0);
        assert_eq!(r.counters.expired, 1);
    }

    #[test]
    fn one_sender_cannot_crowd_out_another() {
        let limits = Limits {
            per_sender_bytes: 10 * MAX_CHUNK,
            per_sender_frames: 4,
            total_bytes: 16 * MAX_CHUNK,
            timeout_ms: 10_000,
        };
        let mut r: Reassembly<u8> = Reassembly::new(limits);
        r.push(0, 2, frag(0, 0, 3));
        for seq in 0..100 {
            r.push(u64::from(seq), 1, frag(seq, 0, 50));
        }
        assert!(r
            .held
            .get(&1)
            .is_some_and(|h| h.0 <= 10 * MAX_CHUNK && h.1 <= 4));
        r.push(200, 2, frag(0, 1, 3));
        assert!(
            r.push(201, 2, frag(0, 2, 3)).is_some(),
            "the other sender's frame survived"
        );
    }

    proptest! {
        #[test]
        fn held_bytes_stay_bounded(ops in proptest::collection::vec((0u8..4, 0u32..20, 0u16..40, 1u16..40, 0u64..50), 1..400)) {
            let limits = Limits { per_sender_bytes: 8 * MAX_CHUNK, per_sender_frames: 3, total_bytes: 20 * MAX_CHUNK, timeout_ms: 500 };
            let mut r: Reassembly<u8> = Reassembly::new(limits);
            let mut now = 0;
            for (sender, seq, index, count, dt) in ops {
                now += dt;
                let index = index % count;
                let _ = r.push(now, sender, frag(seq, index, count));
                prop_assert!(r.held_bytes() <= limits.total_bytes);
                for h in r.held.values() {
                    prop_assert!(h.0 <= limits.per_sender_bytes && h.1 <= limits.per_sender_frames);
                }
            }
            let sum: usize = r.partial.values().map(|p| p.bytes).sum();
            prop_assert_eq!(sum, r.held_bytes());
        }
    }
}
