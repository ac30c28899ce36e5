//! What a finished simulation (or one shard of it) measured, and merging shards.

use std::collections::BTreeMap;

use confab_protocol::room::RoomCounters;

use crate::nat::NatKind;
use crate::report::{Connections, SeriesRow};

use super::sample::add_counters;
use super::state::{PairAgg, SizeAgg};
use super::Sim;

/// What a finished simulation (or one shard of it) measured, without its protocol state.
pub struct Raw {
    pub(super) name: String,
    pub(super) duration_s: f64,
    pub(super) media_enabled: bool,
    pub(super) nodes: u64,
    pub(super) rooms: u64,
    pub(super) rooms_with_media: u64,
    pub(super) events: u64,
    pub(super) counters: RoomCounters,
    pub(super) census: BTreeMap<String, u64>,
    pub(super) conn_stats: Connections,
    pub(super) setup_ms: Vec<f64>,
    pub(super) first_try: u64,
    pub(super) pairs: BTreeMap<(NatKind, NatKind), PairAgg>,
    pub(super) relay_peaks: Vec<u32>,
    pub(super) relayed_bytes: u64,
    pub(super) circuits_opened: u64,
    pub(super) circuits_refused: u64,
    pub(super) joins: u64,
    pub(super) leaves: u64,
    pub(super) fresh_rotations: u64,
    pub(super) ratchets: u64,
    pub(super) join_to_admitted: Vec<f64>,
    pub(super) join_to_audio: Vec<f64>,
    pub(super) sizes: BTreeMap<u32, SizeAgg>,
    pub(super) frames_lost_net: u64,
    pub(super) series: Vec<SeriesRow>,
}

impl Sim {
    /// Stops the simulation and keeps only what was measured.
    pub(super) fn into_raw(mut self) -> Raw {
        if self.media_on {
            for n in 0..self.nodes.len() {
                self.finish_streams(n);
            }
        }
        self.count_upload();
        let mut census = BTreeMap::new();
        for n in &self.nodes {
            *census.entry(n.nat.to_string()).or_insert(0u64) += 1;
        }
        Raw {
            counters: self.counters_now(),
            name: self.sc.name.clone(),
            duration_s: self.sc.duration_s,
            media_enabled: self.sc.media.enabled,
            nodes: self.nodes.len() as u64,
            rooms: self.rooms.len() as u64,
            rooms_with_media: self.rooms.iter().filter(|r| r.media).count() as u64,
            events: self.events,
            census,
            conn_stats: self.conn_stats,
            setup_ms: self.setup_ms,
            first_try: self.first_try,
            pairs: self.pairs,
            relay_peaks: self.relays.iter().map(|r| r.peak).collect(),
            relayed_bytes: self.relays.iter().map(|r| r.pipe.bytes).sum(),
            circuits_opened: self.circuits_opened,
            circuits_refused: self.circuits_refused,
            joins: self.joins,
            leaves: self.leaves,
            fresh_rotations: self.fresh_rotations,
            ratchets: self.ratchets,
            join_to_admitted: self.join_to_admitted,
            join_to_audio: self.join_to_audio,
            sizes: self.sizes,
            frames_lost_net: self.frames_lost_net,
            series: self.series,
        }
    }

    /// Upload per participant: every node of a media room, over the media window.
    fn count_upload(&mut self) {
        let window_s = (self.media_end.saturating_sub(self.media_start)) as f64 / 1e6;
        for r in &self.rooms {
            if !r.media {
                continue;
            }
            let agg = self.sizes.entry(r.size).or_default();
            agg.rooms += 1;
            for m in &r.members {
                if window_s > 0.0 {
                    agg.up_kbps
                        .push(self.nodes[*m].window_up_bytes as f64 * 8.0 / 1000.0 / window_s);
                }
            }
        }
    }
}

impl Raw {
    /// Adds another shard's measurements (shards are merged in shard order).
    pub(super) fn merge(&mut self, o: Raw) {
        self.nodes += o.nodes;
        self.rooms += o.rooms;
        self.rooms_with_media += o.rooms_with_media;
        self.events += o.events;
        add_counters(&mut self.counters, &o.counters);
        for (k, v) in o.census {
            *self.census.entry(k).or_insert(0) += v;
        }
        merge_connections(&mut self.conn_stats, &o.conn_stats);
        self.setup_ms.extend(o.setup_ms);
        self.first_try += o.first_try;
        for (k, v) in o.pairs {
            self.pairs.entry(k).or_default().merge(&v);
        }
        self.relay_peaks.extend(o.relay_peaks);
        self.relayed_bytes += o.relayed_bytes;
        self.circuits_opened += o.circuits_opened;
        self.circuits_refused += o.circuits_refused;
        self.joins += o.joins;
        self.leaves += o.leaves;
        self.fresh_rotations += o.fresh_rotations;
        self.ratchets += o.ratchets;
        self.join_to_admitted.extend(o.join_to_admitted);
        self.join_to_audio.extend(o.join_to_audio);
        for (k, v) in o.sizes {
            self.sizes.entry(k).or_default().merge(v);
        }
        self.frames_lost_net += o.frames_lost_net;
        merge_series(&mut self.series, o.series);
    }
}

fn merge_connections(a: &mut Connections, b: &Connections) {
    a.attempts += b.attempts;
    a.resolved += b.resolved;
    a.direct += b.direct;
    a.punched += b.punched;
    a.relayed += b.relayed;
    a.failed += b.failed;
    a.holepunch_runs += b.holepunch_runs;
}

/// Adds another shard's series row by row (the rows are at the same times).
fn merge_series(into: &mut Vec<SeriesRow>, other: Vec<SeriesRow>) {
    for (i, r) in other.into_iter().enumerate() {
        match into.get_mut(i) {
            Some(m) => {
                m.online += r.online;
                m.conns_direct += r.conns_direct;
                m.conns_punched += r.conns_punched;
                m.conns_relayed += r.conns_relayed;
                m.circuits += r.circuits;
                m.admissions += r.admissions;
                m.sender_key_messages += r.sender_key_messages;
                m.frames_played += r.frames_played;
                m.events += r.events;
            }
            None => into.push(r),
        }
    }
}
