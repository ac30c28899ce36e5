//! Parameter sweeps: the same scenario over a grid of overridden values, in parallel, on one
//! machine ([`sweep`]) or in slices on many ([`sweep_shard`], then [`merge`]).

use std::path::Path as FsPath;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::plot::{line_chart, Series};
use crate::report::{summary_json, write_all};
use crate::scenario::{override_param, Scenario};

mod shards;

pub use shards::{merge, sweep_shard, Shard};

/// One `--param KEY=V1,V2,...`.
#[derive(Debug, Clone)]
pub struct Param {
    pub key: String,
    pub values: Vec<String>,
}

impl Param {
    pub fn parse(s: &str) -> Result<Param> {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| Error::Param(s.to_string(), "expected KEY=V1,V2,...".into()))?;
        let values: Vec<String> = v
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect();
        if k.trim().is_empty() || values.is_empty() {
            return Err(Error::Param(s.to_string(), "expected KEY=V1,V2,...".into()));
        }
        Ok(Param {
            key: k.trim().to_string(),
            values,
        })
    }
}

/// Looks up a dotted path (`paths.relayed`, `media.mos_mean`) in a JSON value.
pub fn metric(v: &serde_json::Value, path: &str) -> Option<f64> {
    let mut cur = v;
    for seg in path.split('.') {
        cur = match seg.parse::<usize>() {
            Ok(i) => cur.get(i)?,
            Err(_) => cur.get(seg)?,
        };
    }
    cur.as_f64()
}

/// The metrics plotted by default when they exist in the summary.
pub const DEFAULT_METRICS: &[&str] = &[
    "holepunch_success_rate",
    "paths.direct",
    "paths.punched",
    "paths.relayed",
    "relays.peak_circuits_max",
    "media.mos_mean",
    "media.mouth_to_ear_p50_ms",
    "media.upload_kbps_per_participant",
    "media.frames_lost_ratio",
    "room.rekey_messages_per_change",
];

/// One sweep's rows: each grid point's values and its summary as JSON.
pub type Rows = Vec<(Vec<String>, serde_json::Value)>;

/// Runs the grid (the cartesian product of the params) in parallel; writes each run into
/// `out/run-<i>/`, a `sweep.csv` and one plot per metric against the first parameter.
pub fn sweep(
    src: &str,
    file: &str,
    params: &[Param],
    seed: Option<u64>,
    metrics: &[String],
    out: &FsPath,
) -> Result<Rows> {
    let grid = grid(params);
    let done = run_points(src, file, params, &grid, seed, Shard::ALL, out)?;
    let rows: Rows = grid
        .into_iter()
        .zip(done.into_iter().map(|(_, v)| v))
        .collect();
    finish(params, metrics, &rows, out)?;
    Ok(rows)
}

/// Runs the grid points `shard` takes, in parallel, each into `out/run-<i>/` (`i` its
/// index in the whole grid); returns each point's index and summary.
fn run_points(
    src: &str,
    file: &str,
    params: &[Param],
    grid: &[Vec<String>],
    seed: Option<u64>,
    shard: Shard,
    out: &FsPath,
) -> Result<Vec<(usize, serde_json::Value)>> {
    let mut scenarios = Vec::new();
    for (i, g) in grid.iter().enumerate().filter(|(i, _)| shard.takes(*i)) {
        let mut text = src.to_string();
        for (p, v) in params.iter().zip(g) {
            text = override_param(&text, &p.key, v)?;
        }
        scenarios.push((i, Scenario::parse(&text, file)?));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    scenarios
        .par_iter()
        .map(|(i, sc)| {
            let o = crate::sim::run(sc, seed, &mut |_, _| {});
            write_all(&o, &out.join(run_dir(*i)))?;
            let v: serde_json::Value = serde_json::from_slice(&summary_json(&o.summary)?)?;
            Ok((*i, v))
        })
        .collect()
}

/// The directory of grid point `i` in a sweep's output.
fn run_dir(i: usize) -> String {
    format!("run-{i:03}")
}

/// What a sweep writes once every point has run: `sweep.csv` and the plots.
fn finish(params: &[Param], metrics: &[String], rows: &Rows, out: &FsPath) -> Result<()> {
    let metrics: Vec<String> = if metrics.is_empty() {
        DEFAULT_METRICS
            .iter()
            .filter(|m| rows.iter().any(|(_, v)| metric(v, m).is_some()))
            .map(|m| m.to_string())
            .collect()
    } else {
        metrics.to_vec()
    };
    write_csv(params, &metrics, rows, out)?;
    if let Some(first) = params.first() {
        for m in &metrics {
            plot_metric(params, first, m, rows, out)?;
        }
    }
    Ok(())
}

/// The cartesian product of the params' values, the first param varying slowest.
pub fn grid(params: &[Param]) -> Vec<Vec<String>> {
    let mut grid: Vec<Vec<String>> = vec![Vec::new()];
    for p in params {
        let mut next = Vec::new();
        for g in &grid {
            for v in &p.values {
                let mut g = g.clone();
                g.push(v.clone());
                next.push(g);
            }
        }
        grid = next;
    }
    grid
}

/// `sweep.csv`: one line per run, its parameter values and metrics.
fn write_csv(params: &[Param], metrics: &[String], rows: &Rows, out: &FsPath) -> Result<()> {
    let mut csv = String::from("run,");
    csv.push_str(
        &params
            .iter()
            .map(|p| p.key.clone())
            .collect::<Vec<_>>()
            .join(","),
    );
    for m in metrics {
        csv.push(',');
        csv.push_str(m);
    }
    csv.push('\n');
    for (i, (g, v)) in rows.iter().enumerate() {
        csv.push_str(&format!("{i:03},{}", g.join(",")));
        for m in metrics {
            csv.push(',');
            if let Some(x) = metric(v, m) {
                csv.push_str(&x.to_string());
            }
        }
        csv.push('\n');
    }
    let p = out.join("sweep.csv");
    std::fs::write(&p, csv).map_err(|e| Error::io(&p, e))
}

/// One plot of metric `m` against the first parameter (one line per value of the others).
fn plot_metric(params: &[Param], first: &Param, m: &str, rows: &Rows, out: &FsPath) -> Result<()> {
    let mut series: std::collections::BTreeMap<String, Vec<(f64, f64)>> =
        std::collections::BTreeMap::new();
    for (g, v) in rows {
        let (Ok(x), Some(y)) = (g[0].parse::<f64>(), metric(v, m)) else {
            continue;
        };
        let rest: Vec<String> = params
            .iter()
            .zip(g)
            .skip(1)
            .map(|(p, v)| format!("{}={v}", p.key))
            .collect();
        let name = if rest.is_empty() {
            m.to_string()
        } else {
            rest.join(" ")
        };
        series.entry(name).or_default().push((x, y));
    }
    if series.is_empty() {
        return Ok(());
    }
    let s: Vec<Series> = series
        .into_iter()
        .map(|(n, mut pts)| {
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series::new(&n, pts)
        })
        .collect();
    let stem = out.join(format!("sweep-{}", m.replace('.', "_")));
    line_chart(&stem, &format!("{m} vs {}", first.key), &first.key, m, &s)
}
