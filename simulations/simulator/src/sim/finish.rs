//! Turning a run's measurements into the report: shares, percentiles, per-pair and
//! per-room-size rows.

use confab_protocol::room::RoomCounters;

use crate::nat::predict_path;
use crate::report::{
    round3, MediaStats, NatPair, Paths, Pct, RelayStats, RoomStats, RunOutput, SizeRow, Summary,
};

use super::raw::Raw;
use super::state::SizeAgg;

impl Raw {
    /// The report of the run (its seed is filled in by the caller).
    pub(super) fn finish(mut self) -> RunOutput {
        let c = self.counters.clone();
        let cs = &mut self.conn_stats;
        cs.setup_ms = Pct::of(std::mem::take(&mut self.setup_ms));
        let punched = cs.punched;
        cs.holepunch_first_try_share =
            (punched > 0).then(|| round3(self.first_try as f64 / punched as f64));
        let has_nat = self
            .pairs
            .keys()
            .any(|(a, b)| !(a.reachable() || b.reachable()));
        let resolved = cs.resolved;
        let share = |x: u64| round3(x as f64 / resolved as f64);
        let paths = (resolved > 0).then(|| Paths {
            direct: share(cs.direct),
            punched: share(cs.punched),
            relayed: share(cs.relayed),
            failed: share(cs.failed),
        });
        let holepunch_success_rate = (has_nat && cs.holepunch_runs > 0)
            .then(|| round3(cs.punched as f64 / cs.holepunch_runs as f64));
        let nat_pairs = self.nat_pairs();
        let relays = self.relay_stats();
        let room = self.room_stats(&c);
        let media = self.media_enabled.then(|| self.media_stats());
        let summary = Summary {
            scenario: self.name.clone(),
            seed: 0,
            duration_s: self.duration_s,
            nodes: self.nodes,
            rooms: self.rooms,
            events: self.events,
            holepunch_success_rate,
            paths,
            connections: self.conn_stats.clone(),
            nat_census: self.census.clone(),
            nat_pairs,
            relays,
            room,
            media,
        };
        RunOutput {
            summary,
            series: self.series,
            join_to_audio: self.join_to_audio,
        }
    }

    fn nat_pairs(&self) -> Vec<NatPair> {
        self.pairs
            .iter()
            .map(|((a, b), p)| {
                let runs = p.punched + p.relayed;
                NatPair {
                    dialer: a.to_string(),
                    listener: b.to_string(),
                    predicted: predict_path(*a, *b).to_string(),
                    attempts: p.attempts,
                    direct: p.direct,
                    punched: p.punched,
                    relayed: p.relayed,
                    failed: p.failed,
                    holepunch_success_rate: (!(a.reachable() || b.reachable()) && runs > 0)
                        .then(|| round3(p.punched as f64 / runs as f64)),
                }
            })
            .collect()
    }

    fn relay_stats(&self) -> RelayStats {
        let nrelays = self.relay_peaks.len() as u32;
        RelayStats {
            count: nrelays,
            circuits_opened: self.circuits_opened,
            circuits_refused: self.circuits_refused,
            peak_circuits_max: self.relay_peaks.iter().copied().max().unwrap_or(0),
            peak_circuits: self.relay_peaks.clone(),
            relayed_mbytes: round3(self.relayed_bytes as f64 / 1e6),
            mean_kbps_per_relay: round3(
                self.relayed_bytes as f64 * 8.0
                    / 1000.0
                    / self.duration_s
                    / f64::from(nrelays.max(1)),
            ),
        }
    }

    fn room_stats(&mut self, c: &RoomCounters) -> RoomStats {
        let changes = self.joins + self.leaves;
        RoomStats {
            joins: self.joins,
            leaves: self.leaves,
            handshakes_started: c.handshakes_started,
            admissions: c.admissions,
            admission_failures: c.admission_failures,
            departures: c.departures,
            sender_key_messages: c.sender_key_messages_sent,
            control_messages: c.control_messages_sent,
            media_decrypt_failures: c.media_decrypt_failures,
            media_unknown_epoch: c.media_unknown_epoch,
            pending_dropped: c.pending_dropped,
            fresh_rotations: self.fresh_rotations,
            ratchets: self.ratchets,
            rekey_messages_per_change: (changes > 0)
                .then(|| round3(c.sender_key_messages_sent as f64 / changes as f64)),
            join_to_admitted_ms: Pct::of(std::mem::take(&mut self.join_to_admitted)),
        }
    }

    fn media_stats(&mut self) -> MediaStats {
        let mut all_m2e = Vec::new();
        let mut all_mos = Vec::new();
        let mut ms = MediaStats {
            rooms_with_media: self.rooms_with_media,
            frames_lost_in_network: self.frames_lost_net,
            join_to_first_audio_ms: Pct::of(self.join_to_audio.clone()),
            ..MediaStats::default()
        };
        let (mut slots, mut missed, mut up_sum, mut up_n) = (0u64, 0u64, 0.0, 0usize);
        for (size, a) in &self.sizes {
            ms.by_room_size.push(size_row(*size, a));
            ms.streams += a.streams;
            ms.frames_sent += a.frames_sent;
            ms.frames_dropped_at_sender += a.frames_dropped;
            ms.frames_played += a.played;
            ms.frames_concealed += a.concealed;
            ms.frames_late += a.late;
            slots += a.slots;
            missed += a.missed;
            up_sum += a.up_kbps.iter().sum::<f64>();
            up_n += a.up_kbps.len();
            all_m2e.extend(a.m2e.iter().copied());
            all_mos.extend(a.mos.iter().copied());
        }
        ms.frames_lost_ratio = if slots > 0 {
            round3(missed as f64 / slots as f64)
        } else {
            0.0
        };
        let m2e = Pct::of(all_m2e);
        ms.mouth_to_ear_p50_ms = m2e.p50;
        ms.mouth_to_ear_p95_ms = m2e.p95;
        ms.mos_mean = Pct::of(all_mos).mean;
        ms.upload_kbps_per_participant = if up_n > 0 {
            round3(up_sum / up_n as f64)
        } else {
            0.0
        };
        ms
    }
}

/// The media row of one room size.
fn size_row(size: u32, a: &SizeAgg) -> SizeRow {
    let m2e = Pct::of(a.m2e.clone());
    let mos = Pct::of(a.mos.clone());
    let up = if a.up_kbps.is_empty() {
        0.0
    } else {
        a.up_kbps.iter().sum::<f64>() / a.up_kbps.len() as f64
    };
    SizeRow {
        room_size: size,
        rooms: a.rooms,
        streams: a.streams,
        upload_kbps_per_participant: round3(up),
        mouth_to_ear_p50_ms: m2e.p50,
        mouth_to_ear_p95_ms: m2e.p95,
        mos_mean: mos.mean,
        mos_min: a.mos.iter().copied().min_by(f64::total_cmp).map(round3),
        frames_sent: a.frames_sent,
        frames_played: a.played,
        frames_lost_ratio: if a.slots > 0 {
            round3(a.missed as f64 / a.slots as f64)
        } else {
            0.0
        },
        frames_dropped_at_sender: a.frames_dropped,
    }
}
