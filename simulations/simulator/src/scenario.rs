//! Scenario files: TOML, every field documented in `docs/simulations.md`.
//!
//! Parsing is strict: unknown fields are errors, and every error names the field and the
//! line. Ranges are checked after parsing, and those errors name the field and its line too.

use std::collections::BTreeMap;
use std::path::Path as FsPath;

use confab_protocol::wire::{FRAME_DURATIONS_MS, MAX_LOOKAHEAD_US};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::nat::NatKind;
use crate::rng::SimRng;

/// A distribution of a non-negative quantity. In a file: a bare number (a constant), or a
/// table `{ dist = "uniform", min = 5, max = 15 }`, `{ dist = "normal", mean, std }`,
/// `{ dist = "exponential", mean }`, `{ dist = "lognormal", median, sigma }`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Dist {
    Const(f64),
    Uniform { min: f64, max: f64 },
    Normal { mean: f64, std: f64 },
    Exponential { mean: f64 },
    LogNormal { median: f64, sigma: f64 },
}

#[derive(Deserialize)]
#[serde(tag = "dist", rename_all = "lowercase", deny_unknown_fields)]
enum DistTable {
    Const { value: f64 },
    Uniform { min: f64, max: f64 },
    Normal { mean: f64, std: f64 },
    Exponential { mean: f64 },
    LogNormal { median: f64, sigma: f64 },
}

impl<'de> Deserialize<'de> for Dist {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Dist;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number or a table with `dist = \"uniform\"|\"normal\"|\"exponential\"|\"lognormal\"|\"const\"`")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Dist, E> {
                Ok(Dist::Const(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Dist, E> {
                Ok(Dist::Const(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Dist, E> {
                Ok(Dist::Const(v as f64))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<Dist, A::Error> {
                let t = DistTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(match t {
                    DistTable::Const { value } => Dist::Const(value),
                    DistTable::Uniform { min, max } => Dist::Uniform { min, max },
                    DistTable::Normal { mean, std } => Dist::Normal { mean, std },
                    DistTable::Exponential { mean } => Dist::Exponential { mean },
                    DistTable::LogNormal { median, sigma } => Dist::LogNormal { median, sigma },
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl Dist {
    /// Draws a value, clamped at 0.
    pub fn sample(&self, rng: &mut SimRng) -> f64 {
        let v = match *self {
            Dist::Const(v) => v,
            Dist::Uniform { min, max } => min + (max - min) * rng.f64(),
            Dist::Normal { mean, std } => rng.normal(mean, std),
            Dist::Exponential { mean } => rng.exp(mean),
            Dist::LogNormal { median, sigma } => median * rng.normal(0.0, sigma).exp(),
        };
        v.max(0.0)
    }

    /// The mean of the distribution (before clamping).
    pub fn mean(&self) -> f64 {
        match *self {
            Dist::Const(v) => v,
            Dist::Uniform { min, max } => (min + max) / 2.0,
            Dist::Normal { mean, .. } | Dist::Exponential { mean } => mean,
            Dist::LogNormal { median, sigma } => median * (sigma * sigma / 2.0).exp(),
        }
    }

    fn check(&self, field: &str, errs: &mut Vec<(String, String)>) {
        let bad = |m: &str| (field.to_string(), m.to_string());
        let finite = |v: f64| v.is_finite() && v >= 0.0;
        match *self {
            Dist::Const(v) if !finite(v) => errs.push(bad("must be a finite number >= 0")),
            Dist::Uniform { min, max } if !(finite(min) && finite(max) && min <= max) => {
                errs.push(bad("uniform needs 0 <= min <= max"))
            }
            Dist::Normal { mean, std } if !(finite(mean) && finite(std)) => {
                errs.push(bad("normal needs mean >= 0 and std >= 0"))
            }
            Dist::Exponential { mean } if !finite(mean) => {
                errs.push(bad("exponential needs mean >= 0"))
            }
            Dist::LogNormal { median, sigma } if !(finite(median) && finite(sigma)) => {
                errs.push(bad("lognormal needs median >= 0 and sigma >= 0"))
            }
            _ => {}
        }
    }
}

/// A whole scenario.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in outputs.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Seed of the one random number generator (overridden by `--seed`).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Simulated time, seconds.
    pub duration_s: f64,
    /// Split the rooms (and relays) into this many independent shards that run on their own
    /// threads with their own seeds derived from `seed`; results are merged in shard order,
    /// so the output stays deterministic. 1 = one simulation.
    #[serde(default = "one_u32")]
    pub shards: u32,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub access: Access,
    #[serde(default)]
    pub nat: NatSpec,
    #[serde(default)]
    pub relays: Relays,
    #[serde(default)]
    pub room: RoomParams,
    /// Groups of rooms.
    pub rooms: Vec<RoomGroup>,
    #[serde(default)]
    pub media: Media,
    #[serde(default)]
    pub churn: Option<Churn>,
    #[serde(default)]
    pub output: Output,
}

fn one_u32() -> u32 {
    1
}

fn default_seed() -> u64 {
    1
}

/// How media frames travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Reliable ordered streams (what the node does over libp2p): a lost packet is
    /// retransmitted and holds up the frames behind it.
    Reliable,
    /// Unreliable datagrams: a lost packet is a lost frame.
    Datagram,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    /// One-way latency across the core between two access networks (per connection), ms.
    pub core_latency_ms: Dist,
    /// Bytes of IP/UDP/QUIC (or TCP/Noise/yamux) overhead added to every packet.
    pub packet_overhead_bytes: u32,
    /// Round trips needed to set up a transport connection (QUIC: 1).
    pub setup_rtts: f64,
    pub media_transport: Transport,
}

impl Default for Network {
    fn default() -> Self {
        Self {
            core_latency_ms: Dist::Uniform {
                min: 1.0,
                max: 10.0,
            },
            packet_overhead_bytes: 60,
            setup_rtts: 1.0,
            media_transport: Transport::Reliable,
        }
    }
}

/// Gilbert–Elliott two-state loss model, evaluated per packet.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GilbertElliott {
    /// Probability of moving from the good to the bad state, per packet.
    pub p_good_to_bad: f64,
    /// Probability of moving from the bad to the good state, per packet.
    pub p_bad_to_good: f64,
    /// Loss probability in the good state.
    pub loss_good: f64,
    /// Loss probability in the bad state.
    pub loss_bad: f64,
}

impl Default for GilbertElliott {
    fn default() -> Self {
        Self {
            p_good_to_bad: 0.0,
            p_bad_to_good: 1.0,
            loss_good: 0.0,
            loss_bad: 0.0,
        }
    }
}

/// Every node's access link (drawn once per node, except jitter which is per packet).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Access {
    /// One-way latency from the host to the core, ms (drawn per node).
    pub latency_ms: Dist,
    /// Extra one-way delay per packet and access leg, ms (drawn per packet).
    pub jitter_ms: Dist,
    /// Uplink capacity, kbit/s (drawn per node).
    pub uplink_kbps: Dist,
    /// Downlink capacity, kbit/s (drawn per node).
    pub downlink_kbps: Dist,
    /// Longest queue (in ms of sending time) before the uplink drops datagrams.
    pub queue_ms: f64,
    pub loss: GilbertElliott,
}

impl Default for Access {
    fn default() -> Self {
        Self {
            latency_ms: Dist::Uniform {
                min: 5.0,
                max: 12.0,
            },
            jitter_ms: Dist::Exponential { mean: 1.0 },
            uplink_kbps: Dist::Const(10_000.0),
            downlink_kbps: Dist::Const(50_000.0),
            queue_ms: 200.0,
            loss: GilbertElliott::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatSpec {
    /// Share of nodes of each kind: `public`, `udp-blocked`, `<mapping>-<filtering>` with
    /// mapping `eim|adm|apdm` and filtering `eif|adf|apdf`, or the testbed names
    /// `port-preserving` and `random-port`. Weights are normalised.
    pub mix: BTreeMap<String, f64>,
    /// DCUtR attempts before giving up (libp2p: 3).
    pub punch_attempts: u32,
    /// Chance that one attempt fails although the NATs would allow it (packets lost,
    /// synchronisation off).
    pub attempt_failure: f64,
}

impl Default for NatSpec {
    fn default() -> Self {
        Self {
            mix: [("public".to_string(), 1.0)].into(),
            punch_attempts: 3,
            attempt_failure: 0.02,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Relays {
    /// Number of relays; NATed nodes hold a reservation on one drawn at random.
    pub count: u32,
    /// Concurrent circuits one relay accepts; more are refused.
    pub max_circuits: u32,
    /// Forwarding capacity of one relay, kbit/s.
    pub bandwidth_kbps: f64,
    /// One-way latency from a relay to the core, ms (drawn per relay).
    pub latency_ms: Dist,
}

impl Default for Relays {
    fn default() -> Self {
        Self {
            count: 4,
            max_circuits: 1024,
            bandwidth_kbps: 100_000.0,
            latency_ms: Dist::Const(2.0),
        }
    }
}

/// The protocol's `RoomConfig` timers, passed unchanged to every `Room`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomParams {
    pub max_members: usize,
    pub handshake_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub idle_timeout_ms: u64,
    /// Simulator only: round every room timer up to a multiple of this many ms (0 = exact),
    /// so that a node's per-peer heartbeats fall on one tick; saves events at scale.
    pub timer_tick_ms: u64,
}

impl Default for RoomParams {
    fn default() -> Self {
        let c = confab_protocol::room::RoomConfig::default();
        Self {
            max_members: c.max_members,
            handshake_timeout_ms: c.handshake_timeout_ms,
            heartbeat_interval_ms: c.heartbeat_interval_ms,
            idle_timeout_ms: c.idle_timeout_ms,
            timer_tick_ms: 0,
        }
    }
}

/// `count` rooms of `size` members each; every member joins at a uniform time in
/// `[start_s, start_s + join_spread_s]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoomGroup {
    pub count: u32,
    pub size: u32,
    #[serde(default)]
    pub start_s: f64,
    #[serde(default = "default_spread")]
    pub join_spread_s: f64,
}

fn default_spread() -> f64 {
    5.0
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Media {
    /// Whether any media flows.
    pub enabled: bool,
    /// Share of rooms that carry media (the others only signal): media can be sampled.
    pub rooms_share: f64,
    /// When the talkers start, s.
    pub start_s: f64,
    /// How long they talk, s (0 = until the end).
    pub duration_s: f64,
    /// Audio per frame, ms: 10, 20, 40 or 60 (what the media header carries).
    pub frame_ms: u32,
    /// The codec's look-ahead, ms (Opus: 6.5; 2.5 in its low-delay mode). With the frame it
    /// is the algorithmic delay that mouth-to-ear includes.
    pub lookahead_ms: f64,
    /// Encoded frame size, bytes (80 = 32 kbit/s at 20 ms).
    pub payload_bytes: u32,
    /// A sender drops a frame rather than queue more than this much toward the uplink, ms.
    pub sender_queue_ms: f64,
    /// Jitter buffer bounds and percentile (the protocol's `JitterConfig`).
    pub jitter_min_delay_ms: u32,
    pub jitter_max_delay_ms: u32,
    pub jitter_percentile: f64,
}

impl Default for Media {
    fn default() -> Self {
        Self {
            enabled: false,
            rooms_share: 1.0,
            start_s: 10.0,
            duration_s: 0.0,
            frame_ms: 20,
            lookahead_ms: 6.5,
            payload_bytes: 80,
            sender_queue_ms: 100.0,
            jitter_min_delay_ms: 5,
            jitter_max_delay_ms: 500,
            jitter_percentile: 0.95,
        }
    }
}

/// Members leave and come back.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Churn {
    /// From when on members leave, s.
    #[serde(default)]
    pub start_s: f64,
    /// Mean time a member stays before leaving (exponential), s.
    pub mean_stay_s: f64,
    /// Mean time away before joining again (exponential), s; 0 = never comes back.
    #[serde(default)]
    pub mean_away_s: f64,
    /// Share of rooms with churn.
    #[serde(default = "one")]
    pub rooms_share: f64,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Output {
    /// Interval of the CSV time series, s.
    pub series_interval_s: f64,
}

impl Default for Output {
    fn default() -> Self {
        Self {
            series_interval_s: 1.0,
        }
    }
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &FsPath) -> Result<Scenario> {
        let src = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Scenario::parse(&src, &path.display().to_string())
    }

    /// Parses and validates scenario text; `file` is used in error messages.
    pub fn parse(src: &str, file: &str) -> Result<Scenario> {
        let sc: Scenario = toml::from_str(src).map_err(|e| {
            let (line, field) = match e.span() {
                Some(span) => field_at(src, span.start),
                None => (0, String::new()),
            };
            Error::Scenario {
                file: file.to_string(),
                line,
                field,
                message: e.message().to_string(),
            }
        })?;
        let errs = sc.validate();
        if let Some((field, message)) = errs.into_iter().next() {
            return Err(Error::Scenario {
                file: file.to_string(),
                line: line_of(src, &field),
                field,
                message,
            });
        }
        Ok(sc)
    }

    /// NAT kinds with their normalised weights, in a fixed order.
    pub fn nat_mix(&self) -> Vec<(NatKind, f64)> {
        let total: f64 = self.nat.mix.values().sum();
        let mut v: Vec<(NatKind, f64)> = self
            .nat
            .mix
            .iter()
            .filter_map(|(k, w)| NatKind::parse(k).map(|n| (n, *w / total)))
            .collect();
        v.sort_by_key(|a| a.0);
        v
    }

    /// Total number of nodes.
    pub fn nodes(&self) -> u64 {
        self.rooms
            .iter()
            .map(|g| u64::from(g.count) * u64::from(g.size))
            .sum()
    }

    /// Every range check, as (field path, message), in a fixed order (the first one is
    /// the one reported).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut e: Vec<(String, String)> = Vec::new();
        self.check_run(&mut e);
        self.check_network(&mut e);
        self.check_nat(&mut e);
        self.check_relays(&mut e);
        self.check_room(&mut e);
        self.check_groups(&mut e);
        self.check_media(&mut e);
        self.check_churn(&mut e);
        self.check_output_and_distributions(&mut e);
        e
    }

    fn check_run(&self, e: &mut Vec<(String, String)>) {
        if !pos(self.duration_s) || self.duration_s > 86_400.0 {
            bad(e, "duration_s", "must be > 0 and at most 86400");
        }
        if !(1..=64).contains(&self.shards) {
            bad(e, "shards", "must be between 1 and 64");
        } else if self.relays.count < self.shards {
            bad(
                e,
                "relays.count",
                "must be at least `shards` (relays are split among shards)",
            );
        }
    }

    fn check_network(&self, e: &mut Vec<(String, String)>) {
        if !(1.0..=16.0).contains(&self.network.setup_rtts) {
            bad(e, "network.setup_rtts", "must be between 1 and 16");
        }
        if self.network.packet_overhead_bytes > 1000 {
            bad(e, "network.packet_overhead_bytes", "must be at most 1000");
        }
        if !nonneg(self.access.queue_ms) {
            bad(e, "access.queue_ms", "must be >= 0");
        }
        let ge = &self.access.loss;
        for (name, v) in [
            ("p_good_to_bad", ge.p_good_to_bad),
            ("p_bad_to_good", ge.p_bad_to_good),
            ("loss_good", ge.loss_good),
            ("loss_bad", ge.loss_bad),
        ] {
            if !prob(v) {
                bad(
                    e,
                    &format!("access.loss.{name}"),
                    "must be a probability in [0, 1]",
                );
            }
        }
        if ge.p_good_to_bad > 0.0 && ge.p_bad_to_good <= 0.0 {
            bad(
                e,
                "access.loss.p_bad_to_good",
                "must be > 0 when the bad state can be entered",
            );
        }
    }

    fn check_nat(&self, e: &mut Vec<(String, String)>) {
        if self.nat.mix.is_empty() {
            bad(e, "nat.mix", "needs at least one kind");
        }
        for (k, w) in &self.nat.mix {
            if NatKind::parse(k).is_none() {
                bad(
                    e,
                    &format!("nat.mix.{k}"),
                    "unknown NAT kind (public, udp-blocked, port-preserving, random-port, or <eim|adm|apdm>-<eif|adf|apdf>)",
                );
            } else if !nonneg(*w) {
                bad(e, &format!("nat.mix.{k}"), "weight must be >= 0");
            }
        }
        if self.nat.mix.values().sum::<f64>() <= 0.0 {
            bad(e, "nat.mix", "weights must not all be 0");
        }
        if !(1..=10).contains(&self.nat.punch_attempts) {
            bad(e, "nat.punch_attempts", "must be between 1 and 10");
        }
        if !prob(self.nat.attempt_failure) {
            bad(e, "nat.attempt_failure", "must be a probability in [0, 1]");
        }
    }

    fn check_relays(&self, e: &mut Vec<(String, String)>) {
        if self.relays.count == 0 || self.relays.count > 100_000 {
            bad(e, "relays.count", "must be between 1 and 100000");
        }
        if !pos(self.relays.bandwidth_kbps) {
            bad(e, "relays.bandwidth_kbps", "must be > 0");
        }
    }

    fn check_room(&self, e: &mut Vec<(String, String)>) {
        let r = &self.room;
        if !(2..=confab_protocol::wire::MAX_MEMBERS).contains(&r.max_members) {
            bad(e, "room.max_members", "must be between 2 and 64");
        }
        if r.heartbeat_interval_ms == 0 || r.heartbeat_interval_ms >= r.idle_timeout_ms {
            bad(
                e,
                "room.heartbeat_interval_ms",
                "must be > 0 and below room.idle_timeout_ms",
            );
        }
        if r.timer_tick_ms > r.heartbeat_interval_ms {
            bad(
                e,
                "room.timer_tick_ms",
                "must be at most room.heartbeat_interval_ms",
            );
        }
        if r.handshake_timeout_ms == 0 {
            bad(e, "room.handshake_timeout_ms", "must be > 0");
        }
    }

    fn check_groups(&self, e: &mut Vec<(String, String)>) {
        if self.rooms.is_empty() {
            bad(e, "rooms", "needs at least one [[rooms]] group");
        }
        for (i, g) in self.rooms.iter().enumerate() {
            if g.count == 0 {
                bad(e, &format!("rooms.{i}.count"), "must be >= 1");
            }
            if g.size < 1 || g.size as usize > self.room.max_members {
                bad(
                    e,
                    &format!("rooms.{i}.size"),
                    "must be between 1 and room.max_members",
                );
            }
            if !nonneg(g.start_s) || g.start_s >= self.duration_s {
                bad(
                    e,
                    &format!("rooms.{i}.start_s"),
                    "must be >= 0 and before duration_s",
                );
            }
            if !nonneg(g.join_spread_s) {
                bad(e, &format!("rooms.{i}.join_spread_s"), "must be >= 0");
            }
        }
        if self.nodes() > 1_000_000 {
            bad(e, "rooms", "more than 1,000,000 nodes in total");
        }
    }

    fn check_media(&self, e: &mut Vec<(String, String)>) {
        let m = &self.media;
        if !prob(m.rooms_share) {
            bad(e, "media.rooms_share", "must be in [0, 1]");
        }
        if !nonneg(m.start_s) {
            bad(e, "media.start_s", "must be >= 0");
        }
        if !nonneg(m.duration_s) {
            bad(e, "media.duration_s", "must be >= 0");
        }
        if !u8::try_from(m.frame_ms).is_ok_and(|f| FRAME_DURATIONS_MS.contains(&f)) {
            bad(e, "media.frame_ms", "must be 10, 20, 40 or 60");
        }
        if !(nonneg(m.lookahead_ms) && m.lookahead_ms <= f64::from(MAX_LOOKAHEAD_US) / 1e3) {
            bad(e, "media.lookahead_ms", "must be between 0 and 20");
        }
        if m.payload_bytes == 0 || m.payload_bytes > 1200 {
            bad(e, "media.payload_bytes", "must be between 1 and 1200");
        }
        if !pos(m.sender_queue_ms) {
            bad(e, "media.sender_queue_ms", "must be > 0");
        }
        if m.jitter_max_delay_ms < m.jitter_min_delay_ms {
            bad(
                e,
                "media.jitter_max_delay_ms",
                "must be >= media.jitter_min_delay_ms",
            );
        }
        if !prob(m.jitter_percentile) {
            bad(e, "media.jitter_percentile", "must be in [0, 1]");
        }
    }

    fn check_churn(&self, e: &mut Vec<(String, String)>) {
        let Some(c) = &self.churn else {
            return;
        };
        if !pos(c.mean_stay_s) {
            bad(e, "churn.mean_stay_s", "must be > 0");
        }
        if !nonneg(c.mean_away_s) {
            bad(e, "churn.mean_away_s", "must be >= 0");
        }
        if !nonneg(c.start_s) {
            bad(e, "churn.start_s", "must be >= 0");
        }
        if !prob(c.rooms_share) {
            bad(e, "churn.rooms_share", "must be in [0, 1]");
        }
    }

    fn check_output_and_distributions(&self, e: &mut Vec<(String, String)>) {
        if !pos(self.output.series_interval_s) {
            bad(e, "output.series_interval_s", "must be > 0");
        }
        for (f, d) in [
            ("network.core_latency_ms", &self.network.core_latency_ms),
            ("access.latency_ms", &self.access.latency_ms),
            ("access.jitter_ms", &self.access.jitter_ms),
            ("access.uplink_kbps", &self.access.uplink_kbps),
            ("access.downlink_kbps", &self.access.downlink_kbps),
            ("relays.latency_ms", &self.relays.latency_ms),
        ] {
            d.check(f, e);
        }
        for (f, d) in [
            ("access.uplink_kbps", &self.access.uplink_kbps),
            ("access.downlink_kbps", &self.access.downlink_kbps),
        ] {
            if d.mean() < 8.0 {
                bad(e, f, "mean must be at least 8 kbit/s");
            }
        }
    }
}

/// Records one range-check finding.
fn bad(e: &mut Vec<(String, String)>, field: &str, message: &str) {
    e.push((field.to_string(), message.to_string()));
}

fn pos(v: f64) -> bool {
    v.is_finite() && v > 0.0
}

fn nonneg(v: f64) -> bool {
    v.is_finite() && v >= 0.0
}

fn prob(v: f64) -> bool {
    (0.0..=1.0).contains(&v)
}

/// The 1-based line of byte offset `at`, and the key written on that line (or the table
/// header), to name the field in a parse error.
fn field_at(src: &str, at: usize) -> (usize, String) {
    let at = at.min(src.len());
    let line_no = src[..at].matches('\n').count() + 1;
    let line = src.lines().nth(line_no - 1).unwrap_or("").trim();
    let field = if let Some(h) = line.strip_prefix('[') {
        h.trim_matches(|c| c == '[' || c == ']').trim().to_string()
    } else {
        line.split('=').next().unwrap_or("").trim().to_string()
    };
    (line_no, field)
}

/// The line where the dotted field path (`a.b.0.c`) is written, found through the TOML
/// document's spans; falls back to the nearest enclosing table, then to 0.
pub fn line_of(src: &str, path: &str) -> usize {
    let Ok(doc) = toml_edit::ImDocument::parse(src) else {
        return 0;
    };
    let segs: Vec<&str> = path.split('.').collect();
    find_span(doc.as_table(), &segs, None)
        .map(|s| src[..s.start.min(src.len())].matches('\n').count() + 1)
        .unwrap_or(0)
}

type Span = Option<std::ops::Range<usize>>;

fn find_span(t: &dyn toml_edit::TableLike, segs: &[&str], best: Span) -> Span {
    let Some((seg, rest)) = segs.split_first() else {
        return best;
    };
    let Some((k, v)) = t.get_key_value(seg) else {
        return best;
    };
    let best = k.span().or(v.span()).or(best);
    if rest.is_empty() {
        return best;
    }
    if let toml_edit::Item::ArrayOfTables(a) = v {
        let Some(tbl) = rest[0].parse::<usize>().ok().and_then(|i| a.get(i)) else {
            return best;
        };
        let best = tbl.span().or(best);
        return find_span(tbl, &rest[1..], best);
    }
    match v.as_table_like() {
        Some(inner) => find_span(inner, rest, best),
        None => best,
    }
}

/// Applies `key=value` (dotted key, `rooms.0.size` for an array of tables; the value is TOML,
/// a bare word is taken as a string) to the scenario text and returns the new text.
pub fn override_param(src: &str, key: &str, value: &str) -> Result<String> {
    let mut doc: toml_edit::DocumentMut = src
        .parse()
        .map_err(|e: toml_edit::TomlError| Error::Param(key.to_string(), e.to_string()))?;
    let v: toml_edit::Value = value
        .trim()
        .parse()
        .unwrap_or_else(|_| toml_edit::Value::from(value.trim()));
    let segs: Vec<&str> = key.split('.').collect();
    set_path(doc.as_table_mut(), &segs, v, key)?;
    Ok(doc.to_string())
}

fn set_path(
    t: &mut dyn toml_edit::TableLike,
    segs: &[&str],
    v: toml_edit::Value,
    key: &str,
) -> Result<()> {
    let err = |m: &str| Error::Param(key.to_string(), m.to_string());
    let Some((seg, rest)) = segs.split_first() else {
        return Err(err("empty key"));
    };
    if rest.is_empty() {
        t.insert(seg, toml_edit::Item::Value(v));
        return Ok(());
    }
    if t.get(seg).is_none() {
        t.insert(seg, toml_edit::Item::Table(toml_edit::Table::new()));
    }
    let item = t
        .get_mut(seg)
        .ok_or_else(|| err("cannot create the table"))?;
    if let toml_edit::Item::ArrayOfTables(a) = item {
        let i: usize = rest[0]
            .parse()
            .map_err(|_| err("an array of tables needs an index, e.g. rooms.0.size"))?;
        let tbl = a.get_mut(i).ok_or_else(|| err("no such element"))?;
        return set_path(tbl, &rest[1..], v, key);
    }
    let inner = item
        .as_table_like_mut()
        .ok_or_else(|| err("a part of the key is not a table"))?;
    set_path(inner, rest, v, key)
}
