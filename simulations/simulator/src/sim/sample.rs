//! The time series (one row per `output.series_interval_s`) and the protocol's counters.

use confab_protocol::room::RoomCounters;

use crate::report::{round3, SeriesRow};

use super::events::Ev;
use super::Sim;

impl Sim {
    /// Every room's counters so far: those of finished sessions plus the live ones.
    pub(super) fn counters_now(&self) -> RoomCounters {
        let mut c = RoomCounters::default();
        for n in &self.nodes {
            add_counters(&mut c, &n.acc);
            if let Some(r) = &n.state {
                add_counters(&mut c, r.counters());
            }
        }
        c
    }

    /// Takes one row of the time series and schedules the next.
    pub(super) fn sample_and_rearm(&mut self) {
        self.sample();
        let dt = (self.sc.output.series_interval_s * 1e6) as u64;
        self.at(self.now + dt.max(1), Ev::Sample);
    }

    fn sample(&mut self) {
        let c = self.counters_now();
        let online = self.nodes.iter().filter(|n| n.state.is_some()).count() as u64;
        self.series.push(SeriesRow {
            t_s: round3(self.now as f64 / 1e6),
            online,
            conns_direct: self.open_by_path[0],
            conns_punched: self.open_by_path[1],
            conns_relayed: self.open_by_path[2],
            circuits: self.relays.iter().map(|r| u64::from(r.active)).sum(),
            admissions: c.admissions,
            sender_key_messages: c.sender_key_messages_sent,
            frames_played: self.frames_played_total,
            events: self.events,
        });
    }
}

/// Adds the counters `c` to `acc`.
pub(super) fn add_counters(acc: &mut RoomCounters, c: &RoomCounters) {
    acc.handshakes_started += c.handshakes_started;
    acc.admissions += c.admissions;
    acc.admission_failures += c.admission_failures;
    acc.departures += c.departures;
    acc.sender_key_messages_sent += c.sender_key_messages_sent;
    acc.control_messages_sent += c.control_messages_sent;
    acc.media_decrypt_failures += c.media_decrypt_failures;
    acc.media_replays += c.media_replays;
    acc.media_unknown_epoch += c.media_unknown_epoch;
    acc.media_from_non_member += c.media_from_non_member;
    acc.pending_dropped += c.pending_dropped;
    acc.malformed_frames += c.malformed_frames;
}
