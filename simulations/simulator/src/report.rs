//! Outputs: `summary.json`, CSV time series and plots.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path as FsPath;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::plot::{line_chart, Series};

/// Percentiles of a sample, ms.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Pct {
    pub n: u64,
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub max: Option<f64>,
}

impl Pct {
    pub fn of(mut v: Vec<f64>) -> Pct {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let at = |p: f64| -> Option<f64> {
            if n == 0 {
                None
            } else {
                let i = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
                Some(round3(v[i]))
            }
        };
        Pct {
            n: n as u64,
            mean: (n > 0).then(|| round3(v.iter().sum::<f64>() / n as f64)),
            p50: at(0.5),
            p95: at(0.95),
            max: v.last().copied().map(round3),
        }
    }
}

/// Rounds to 3 decimals, so the JSON stays readable.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Shares of connection outcomes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Paths {
    pub direct: f64,
    pub punched: f64,
    pub relayed: f64,
    pub failed: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Connections {
    /// Transport connections dialed.
    pub attempts: u64,
    /// Attempts whose outcome is known (the others were torn down before DCUtR finished).
    pub resolved: u64,
    pub direct: u64,
    pub punched: u64,
    pub relayed: u64,
    /// Refused by a full relay.
    pub failed: u64,
    /// DCUtR runs that finished (succeeded, or gave up after every attempt).
    pub holepunch_runs: u64,
    /// Successful punches that needed only the first attempt, as a share of successes.
    pub holepunch_first_try_share: Option<f64>,
    /// From dial to an open room stream, ms.
    pub setup_ms: Pct,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NatPair {
    pub dialer: String,
    pub listener: String,
    /// What `nat::predict_path` says for this pair.
    pub predicted: String,
    pub attempts: u64,
    pub direct: u64,
    pub punched: u64,
    pub relayed: u64,
    pub failed: u64,
    pub holepunch_success_rate: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RelayStats {
    pub count: u32,
    pub circuits_opened: u64,
    pub circuits_refused: u64,
    /// Highest number of concurrent circuits on each relay.
    pub peak_circuits: Vec<u32>,
    pub peak_circuits_max: u32,
    pub relayed_mbytes: f64,
    /// Mean forwarded rate per relay over the run, kbit/s.
    pub mean_kbps_per_relay: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RoomStats {
    pub joins: u64,
    pub leaves: u64,
    /// From `Room::counters()`, summed over every room object of every node.
    pub handshakes_started: u64,
    pub admissions: u64,
    pub admission_failures: u64,
    pub departures: u64,
    pub sender_key_messages: u64,
    pub control_messages: u64,
    pub media_decrypt_failures: u64,
    pub media_unknown_epoch: u64,
    pub pending_dropped: u64,
    /// `Rekeyed { fresh: true }` events (rotations after a departure).
    pub fresh_rotations: u64,
    /// `Rekeyed { fresh: false }` events (ratchets after an admission).
    pub ratchets: u64,
    /// sender_key_messages / (joins + leaves).
    pub rekey_messages_per_change: Option<f64>,
    /// From a join to the first admission by a member, ms (joins with someone to meet).
    pub join_to_admitted_ms: Pct,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SizeRow {
    pub room_size: u32,
    pub rooms: u64,
    pub streams: u64,
    pub upload_kbps_per_participant: f64,
    pub mouth_to_ear_p50_ms: Option<f64>,
    pub mouth_to_ear_p95_ms: Option<f64>,
    pub mos_mean: Option<f64>,
    pub mos_min: Option<f64>,
    pub frames_sent: u64,
    pub frames_played: u64,
    /// Missed playout slots (lost or late) / all slots.
    pub frames_lost_ratio: f64,
    pub frames_dropped_at_sender: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MediaStats {
    pub rooms_with_media: u64,
    pub streams: u64,
    pub frames_sent: u64,
    pub frames_dropped_at_sender: u64,
    pub frames_lost_in_network: u64,
    pub frames_played: u64,
    pub frames_concealed: u64,
    pub frames_late: u64,
    pub frames_lost_ratio: f64,
    pub mouth_to_ear_p50_ms: Option<f64>,
    pub mouth_to_ear_p95_ms: Option<f64>,
    pub mos_mean: Option<f64>,
    pub upload_kbps_per_participant: f64,
    /// From a join (during the media window) to the first frame this node could decrypt.
    pub join_to_first_audio_ms: Pct,
    pub by_room_size: Vec<SizeRow>,
}

/// Everything a run reports; serialised as `summary.json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub seed: u64,
    pub duration_s: f64,
    pub nodes: u64,
    pub rooms: u64,
    pub events: u64,
    /// Successful DCUtR runs / finished DCUtR runs; `null` without NATed pairs.
    pub holepunch_success_rate: Option<f64>,
    /// Shares of resolved connection attempts.
    pub paths: Option<Paths>,
    pub connections: Connections,
    /// Nodes of each NAT kind.
    pub nat_census: BTreeMap<String, u64>,
    pub nat_pairs: Vec<NatPair>,
    pub relays: RelayStats,
    pub room: RoomStats,
    pub media: Option<MediaStats>,
}

/// One row of the time series.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SeriesRow {
    pub t_s: f64,
    pub online: u64,
    pub conns_direct: u64,
    pub conns_punched: u64,
    pub conns_relayed: u64,
    pub circuits: u64,
    pub admissions: u64,
    pub sender_key_messages: u64,
    pub frames_played: u64,
    pub events: u64,
}

impl SeriesRow {
    pub const HEADER: &'static str = "t_s,online,conns_direct,conns_punched,conns_relayed,circuits,admissions,sender_key_messages,frames_played,events";

    fn csv(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{},{},{}",
            self.t_s,
            self.online,
            self.conns_direct,
            self.conns_punched,
            self.conns_relayed,
            self.circuits,
            self.admissions,
            self.sender_key_messages,
            self.frames_played,
            self.events
        )
    }
}

/// The result of one run.
#[derive(Debug, Clone, Default)]
pub struct RunOutput {
    pub summary: Summary,
    pub series: Vec<SeriesRow>,
    /// Join → first audio samples, ms (for the CDF plot).
    pub join_to_audio: Vec<f64>,
}

fn write(path: &FsPath, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))
}

/// `summary.json` bytes: pretty JSON with a final newline.
pub fn summary_json(s: &Summary) -> Result<Vec<u8>> {
    let mut v = serde_json::to_vec_pretty(s)?;
    v.push(b'\n');
    Ok(v)
}

/// Writes summary.json, series.csv, nat_pairs.csv, by_room_size.csv (when there is media)
/// and the plots into `dir`.
pub fn write_all(out: &RunOutput, dir: &FsPath) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write(&dir.join("summary.json"), &summary_json(&out.summary)?)?;
    write_series(out, dir)?;
    let s = &out.summary;
    if !s.nat_pairs.is_empty() {
        write_nat_pairs(&s.nat_pairs, dir)?;
    }
    plot_connections(out, dir)?;
    if let Some(m) = &s.media {
        write_by_room_size(&m.by_room_size, dir)?;
        if m.by_room_size.len() > 1 {
            plot_by_room_size(&m.by_room_size, dir)?;
        }
    }
    if !out.join_to_audio.is_empty() {
        plot_join_to_audio(&out.join_to_audio, dir)?;
    }
    Ok(())
}

fn write_series(out: &RunOutput, dir: &FsPath) -> Result<()> {
    let mut csv = String::from(SeriesRow::HEADER);
    csv.push('\n');
    for r in &out.series {
        csv.push_str(&r.csv());
        csv.push('\n');
    }
    write(&dir.join("series.csv"), csv.as_bytes())
}

fn write_nat_pairs(pairs: &[NatPair], dir: &FsPath) -> Result<()> {
    let mut c = String::from(
        "dialer,listener,predicted,attempts,direct,punched,relayed,failed,holepunch_success_rate\n",
    );
    for p in pairs {
        c.push_str(&format!(
            "{},{},{},{},{},{},{},{},{}\n",
            p.dialer,
            p.listener,
            p.predicted,
            p.attempts,
            p.direct,
            p.punched,
            p.relayed,
            p.failed,
            p.holepunch_success_rate
                .map(|x| x.to_string())
                .unwrap_or_default()
        ));
    }
    write(&dir.join("nat_pairs.csv"), c.as_bytes())
}

fn plot_connections(out: &RunOutput, dir: &FsPath) -> Result<()> {
    let t: Vec<f64> = out.series.iter().map(|r| r.t_s).collect();
    let col = |f: fn(&SeriesRow) -> u64| -> Vec<(f64, f64)> {
        t.iter()
            .zip(out.series.iter())
            .map(|(t, r)| (*t, f(r) as f64))
            .collect()
    };
    line_chart(
        &dir.join("connections"),
        &format!("{}: open connections by path", out.summary.scenario),
        "simulated time (s)",
        "connections",
        &[
            Series::new("direct", col(|r| r.conns_direct)),
            Series::new("punched", col(|r| r.conns_punched)),
            Series::new("relayed", col(|r| r.conns_relayed)),
            Series::new("relay circuits", col(|r| r.circuits)),
        ],
    )
}

fn write_by_room_size(rows: &[SizeRow], dir: &FsPath) -> Result<()> {
    let mut c = String::from("room_size,rooms,streams,upload_kbps_per_participant,mouth_to_ear_p50_ms,mouth_to_ear_p95_ms,mos_mean,mos_min,frames_sent,frames_played,frames_lost_ratio,frames_dropped_at_sender\n");
    let o = |x: Option<f64>| x.map(|v| v.to_string()).unwrap_or_default();
    for r in rows {
        c.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{}\n",
            r.room_size,
            r.rooms,
            r.streams,
            r.upload_kbps_per_participant,
            o(r.mouth_to_ear_p50_ms),
            o(r.mouth_to_ear_p95_ms),
            o(r.mos_mean),
            o(r.mos_min),
            r.frames_sent,
            r.frames_played,
            r.frames_lost_ratio,
            r.frames_dropped_at_sender
        ));
    }
    write(&dir.join("by_room_size.csv"), c.as_bytes())
}

fn plot_by_room_size(rows: &[SizeRow], dir: &FsPath) -> Result<()> {
    let pts = |f: fn(&SizeRow) -> Option<f64>| -> Vec<(f64, f64)> {
        rows.iter()
            .filter_map(|r| f(r).map(|y| (f64::from(r.room_size), y)))
            .collect()
    };
    line_chart(
        &dir.join("upload_vs_room_size"),
        "upload per participant vs room size (full mesh)",
        "room size (members)",
        "upload (kbit/s)",
        &[Series::new(
            "upload kbit/s",
            pts(|r| Some(r.upload_kbps_per_participant)),
        )],
    )?;
    line_chart(
        &dir.join("latency_vs_room_size"),
        "mouth-to-ear latency vs room size",
        "room size (members)",
        "ms",
        &[
            Series::new("p50", pts(|r| r.mouth_to_ear_p50_ms)),
            Series::new("p95", pts(|r| r.mouth_to_ear_p95_ms)),
        ],
    )?;
    line_chart(
        &dir.join("mos_vs_room_size"),
        "E-model MOS vs room size",
        "room size (members)",
        "MOS",
        &[
            Series::new("mean", pts(|r| r.mos_mean)),
            Series::new("min", pts(|r| r.mos_min)),
        ],
    )
}

fn plot_join_to_audio(join_to_audio: &[f64], dir: &FsPath) -> Result<()> {
    let mut v = join_to_audio.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    let cdf: Vec<(f64, f64)> = v
        .iter()
        .enumerate()
        .map(|(i, x)| (*x, (i + 1) as f64 / n))
        .collect();
    line_chart(
        &dir.join("join_to_audio_cdf"),
        "time from join to first decryptable audio (CDF)",
        "ms",
        "share of joins",
        &[Series::new("CDF", cdf)],
    )
}
