//! A sweep in slices: each machine (a Slurm array task, a GNU parallel job) runs the grid
//! points of its shard and writes them with a manifest; [`merge`] checks that the manifests
//! belong to one sweep and cover every point once, gathers the runs and writes what the
//! one-machine sweep writes. Runs are deterministic given the scenario and seed, so the
//! merged output is byte for byte the one-machine output (plus the manifests).

use std::path::{Path as FsPath, PathBuf};

use serde::{Deserialize, Serialize};

use super::{finish, grid, run_dir, run_points, Param, Rows};
use crate::error::{Error, Result};

/// Shard `index` of `count` (0-based): the grid points `i` with `i % count == index`. Taking
/// every `count`-th point spreads slow and fast corners of a grid over the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

/// Most shards a sweep may be cut into.
pub const MAX_SHARDS: usize = 100_000;

impl Shard {
    /// The whole grid as one shard.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Parses `I/N` (0 <= I < N <= [`MAX_SHARDS`]).
    pub fn parse(s: &str) -> Result<Shard> {
        let bad = |why: &str| Error::Param(s.to_string(), why.to_string());
        let (i, n) = s.split_once('/').ok_or_else(|| bad("expected I/N"))?;
        let index: usize = i.trim().parse().map_err(|_| bad("I is not a number"))?;
        let count: usize = n.trim().parse().map_err(|_| bad("N is not a number"))?;
        if count == 0 || count > MAX_SHARDS {
            return Err(bad("N must be between 1 and 100000"));
        }
        if index >= count {
            return Err(bad("I must be less than N (shards count from 0)"));
        }
        Ok(Shard { index, count })
    }

    pub(super) fn takes(&self, i: usize) -> bool {
        i % self.count == self.index
    }
}

/// What a shard did, written next to its runs as `shard-<I>-of-<N>.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Manifest {
    /// The scenario's name as given and its full text (after nothing was overridden).
    scenario_file: String,
    scenario: String,
    params: Vec<(String, Vec<String>)>,
    seed: Option<u64>,
    shard: (usize, usize),
    /// Grid indices this shard ran.
    runs: Vec<usize>,
}

impl Manifest {
    fn params(&self) -> Vec<Param> {
        self.params
            .iter()
            .map(|(key, values)| Param {
                key: key.clone(),
                values: values.clone(),
            })
            .collect()
    }

    /// Whether two manifests come from the same sweep (all but the shard's own part).
    fn same_sweep(&self, other: &Manifest) -> bool {
        self.scenario == other.scenario
            && self.params == other.params
            && self.seed == other.seed
            && self.shard.1 == other.shard.1
    }
}

fn manifest_name(shard: Shard) -> String {
    format!("shard-{}-of-{}.json", shard.index, shard.count)
}

/// Runs the grid points of `shard` into `out/run-<i>/` and writes its manifest; returns how
/// many points it ran. No `sweep.csv` or plots: [`merge`] writes those once all shards ran.
pub fn sweep_shard(
    src: &str,
    file: &str,
    params: &[Param],
    seed: Option<u64>,
    shard: Shard,
    out: &FsPath,
) -> Result<usize> {
    let grid = grid(params);
    let done = run_points(src, file, params, &grid, seed, shard, out)?;
    let manifest = Manifest {
        scenario_file: file.to_string(),
        scenario: src.to_string(),
        params: params
            .iter()
            .map(|p| (p.key.clone(), p.values.clone()))
            .collect(),
        seed,
        shard: (shard.index, shard.count),
        runs: done.iter().map(|(i, _)| *i).collect(),
    };
    let path = out.join(manifest_name(shard));
    let bytes = serde_json::to_vec_pretty(&manifest)?;
    std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
    Ok(done.len())
}

/// Every shard manifest in `dir`, with the directory it was found in.
fn manifests_in(dir: &FsPath) -> Result<Vec<(PathBuf, Manifest)>> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for e in entries {
        let path = e.map_err(|e| Error::io(dir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("shard-") && name.ends_with(".json") {
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            let m: Manifest = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Param(path.display().to_string(), e.to_string()))?;
            found.push((dir.to_path_buf(), m));
        }
    }
    Ok(found)
}

/// Checks that the manifests are one sweep's, every shard once, every grid point once;
/// returns the first manifest and, for each grid point, the directory holding its run.
fn check(manifests: &[(PathBuf, Manifest)]) -> Result<(Manifest, Vec<PathBuf>)> {
    let bad = |why: String| Error::Param("merge".into(), why);
    let (_, first) = manifests
        .first()
        .ok_or_else(|| bad("no shard manifest (shard-I-of-N.json) in the inputs".into()))?;
    let params = first.params();
    let points = grid(&params).len();
    let mut shards = vec![false; first.shard.1];
    let mut holder: Vec<Option<PathBuf>> = vec![None; points];
    for (dir, m) in manifests {
        if !m.same_sweep(first) {
            return Err(bad(format!(
                "{}: shard {}/{} is from another sweep (scenario, parameters, seed or shard count differ)",
                dir.display(),
                m.shard.0,
                m.shard.1
            )));
        }
        let seen = shards
            .get_mut(m.shard.0)
            .ok_or_else(|| bad(format!("shard {}/{} is out of range", m.shard.0, m.shard.1)))?;
        if std::mem::replace(seen, true) {
            return Err(bad(format!(
                "shard {}/{} is given twice",
                m.shard.0, m.shard.1
            )));
        }
        for &i in &m.runs {
            let slot = holder
                .get_mut(i)
                .ok_or_else(|| bad(format!("run {i} is outside the grid of {points}")))?;
            if slot.replace(dir.clone()).is_some() {
                return Err(bad(format!("run {i} is in two shards")));
            }
        }
    }
    if let Some(missing) = shards.iter().position(|s| !s) {
        return Err(bad(format!("shard {missing}/{} is missing", first.shard.1)));
    }
    let holder = holder
        .into_iter()
        .enumerate()
        .map(|(i, h)| h.ok_or_else(|| bad(format!("run {i} is in no shard"))))
        .collect::<Result<Vec<_>>>()?;
    Ok((first.clone(), holder))
}

/// Copies the directory tree `from` to `to`.
fn copy_tree(from: &FsPath, to: &FsPath) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    for e in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let src = e.map_err(|e| Error::io(from, e))?.path();
        let Some(name) = src.file_name() else {
            continue;
        };
        let dst = to.join(name);
        if src.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(|e| Error::io(&src, e))?;
        }
    }
    Ok(())
}

/// Joins the shards found in `inputs` (directories holding shard outputs; `out` may be one
/// of them) into `out`: the runs, `sweep.csv` and the plots, as [`super::sweep`] writes
/// them on one machine.
pub fn merge(inputs: &[PathBuf], metrics: &[String], out: &FsPath) -> Result<Rows> {
    let mut manifests = Vec::new();
    for dir in inputs {
        manifests.extend(manifests_in(dir)?);
    }
    let (first, holder) = check(&manifests)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let same = |a: &FsPath, b: &FsPath| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    let params = first.params();
    let mut rows = Rows::new();
    for (i, g) in grid(&params).into_iter().enumerate() {
        let dir = run_dir(i);
        if !same(&holder[i], out) {
            copy_tree(&holder[i].join(&dir), &out.join(&dir))?;
        }
        let path = out.join(&dir).join("summary.json");
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        rows.push((g, serde_json::from_slice(&bytes)?));
    }
    finish(&params, metrics, &rows, out)?;
    Ok(rows)
}
