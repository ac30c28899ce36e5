//! Running a scenario, split into shards that run on their own threads when it asks for
//! more than one.

use crate::report::RunOutput;
use crate::rng::SimRng;
use crate::scenario::Scenario;

use super::Sim;

/// Runs a scenario with `seed` (the scenario's own seed when `None`); with `shards > 1` the
/// shards run on their own threads and are merged in order (the result does not depend on
/// thread timing).
pub fn run(sc: &Scenario, seed: Option<u64>, progress: &mut dyn FnMut(u64, u64)) -> RunOutput {
    let seed = seed.unwrap_or(sc.seed);
    let shards = shard(sc, seed);
    let raw = match shards.split_first() {
        None => Sim::new(sc, seed).run_raw(progress),
        Some((first, rest)) => std::thread::scope(|s| {
            let handles: Vec<_> = rest
                .iter()
                .map(|(sc, sd)| s.spawn(move || Sim::new(sc, *sd).run_raw(&mut |_, _| {})))
                .collect();
            let mut raw = Sim::new(&first.0, first.1).run_raw(progress);
            for h in handles {
                match h.join() {
                    Ok(r) => raw.merge(r),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            raw
        }),
    };
    let mut out = raw.finish();
    out.summary.seed = seed;
    out
}

/// The per-shard scenarios and seeds (empty for one shard).
fn shard(sc: &Scenario, seed: u64) -> Vec<(Scenario, u64)> {
    let k = sc.shards.max(1);
    if k == 1 {
        return Vec::new();
    }
    let mut rng = SimRng::new(seed);
    let split = |total: u32, i: u32| total / k + u32::from(i < total % k);
    (0..k)
        .filter_map(|i| {
            let sub_seed = rng.u64();
            let mut s = sc.clone();
            s.shards = 1;
            s.relays.count = split(sc.relays.count, i).max(1);
            s.rooms = sc
                .rooms
                .iter()
                .map(|g| {
                    let mut g = g.clone();
                    g.count = split(g.count, i);
                    g
                })
                .filter(|g| g.count > 0)
                .collect();
            (!s.rooms.is_empty()).then_some((s, sub_seed))
        })
        .collect()
}
