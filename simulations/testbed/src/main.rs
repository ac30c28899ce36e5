//! `confab-sim`: run scenarios, sweep parameters and benchmark the simulator
//! (`confab-simulator`), and run the real-NAT testbed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use confab_simulator::report::write_all;
use confab_simulator::scenario::Scenario;
use confab_simulator::sweep::{merge, sweep, sweep_shard, Param, Shard};

mod testbed;

#[derive(Parser)]
#[command(
    name = "confab-sim",
    version,
    about = "Deterministic network simulations of confab"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one scenario and write summary.json, CSV series and plots.
    Run {
        /// Scenario file (TOML), e.g. simulations/scenarios/nat-census.toml.
        scenario: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Seed (default: the scenario's `seed`).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Run a scenario over a grid of parameter values, in parallel.
    Sweep {
        scenario: PathBuf,
        /// KEY=V1,V2,... with a dotted key of the scenario (e.g. nat.attempt_failure=0,0.1).
        /// Repeat for a grid.
        #[arg(long, required = true)]
        param: Vec<String>,
        /// Summary metric to plot (dotted path, e.g. paths.relayed); repeatable.
        #[arg(long)]
        metric: Vec<String>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        seed: Option<u64>,
        /// Run only shard I of N (0-based: the grid points i with i % N == I) and write its
        /// runs with a manifest; `confab-sim merge` joins the shards.
        #[arg(long, value_name = "I/N")]
        shard: Option<String>,
    },
    /// Join the shards of a sweep (directories written by `sweep --shard`) into one output:
    /// the runs, sweep.csv and the plots, as the sweep on one machine writes them.
    Merge {
        /// Directories holding shard outputs (the output directory may be one of them).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Summary metric to plot (dotted path); repeatable; as for `sweep`.
        #[arg(long)]
        metric: Vec<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Run the real binaries in network namespaces behind kernel NAT and hold one call
    /// (two or more homes), or with --matrix one call per pair of NAT kinds, compared with
    /// the simulator's predictions.
    Testbed(testbed::TestbedArgs),
    /// Run a scenario (default scale-10k) and print wall time and events per second.
    Bench {
        #[arg(default_value = "simulations/scenarios/scale-10k.toml")]
        scenario: PathBuf,
        /// Repetitions.
        #[arg(long, default_value_t = 1)]
        runs: u32,
        #[arg(long)]
        seed: Option<u64>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Run {
            scenario,
            out,
            seed,
        } => run(&scenario, &out, seed),
        Cmd::Sweep {
            scenario,
            param,
            metric,
            out,
            seed,
            shard,
        } => match shard {
            Some(shard) => run_shard(&scenario, &param, &shard, &out, seed),
            None => run_sweep(&scenario, &param, &metric, &out, seed),
        },
        Cmd::Merge {
            inputs,
            metric,
            out,
        } => {
            let rows = merge(&inputs, &metric, &out)?;
            println!(
                "{} runs merged; wrote {}",
                rows.len(),
                out.join("sweep.csv").display()
            );
            Ok(())
        }
        Cmd::Testbed(args) => testbed::main(&args),
        Cmd::Bench {
            scenario,
            runs,
            seed,
        } => bench(&scenario, runs, seed),
    }
}

fn bar(total_s: f64) -> ProgressBar {
    let pb =
        ProgressBar::with_draw_target(Some((total_s * 10.0) as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} simulated {msg} [{bar:40}] {percent}% elapsed {elapsed_precise} eta {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

/// `confab-sim run`.
fn run(scenario: &Path, out: &Path, seed: Option<u64>) -> Result<()> {
    let sc = Scenario::load(scenario)?;
    let pb = bar(sc.duration_s);
    let o = confab_simulator::sim::run(&sc, seed, &mut |done, total| {
        pb.set_position(done / 100_000);
        pb.set_message(format!(
            "{:.0}/{:.0} s",
            done as f64 / 1e6,
            total as f64 / 1e6
        ));
    });
    pb.finish_and_clear();
    write_all(&o, out).with_context(|| format!("writing {}", out.display()))?;
    let s = &o.summary;
    println!(
        "{}: {} nodes, {} rooms, {} events",
        s.scenario, s.nodes, s.rooms, s.events
    );
    if let Some(p) = &s.paths {
        println!(
            "paths: direct {:.3} punched {:.3} relayed {:.3} failed {:.3}; hole punch success {}",
            p.direct,
            p.punched,
            p.relayed,
            p.failed,
            s.holepunch_success_rate
                .map(|x| format!("{x:.3}"))
                .unwrap_or_else(|| "n/a".into())
        );
    }
    println!("wrote {}", out.join("summary.json").display());
    Ok(())
}

/// A sweep's scenario text and its parsed `--param`s.
fn load_sweep(scenario: &Path, param: &[String]) -> Result<(String, Vec<Param>)> {
    let src = std::fs::read_to_string(scenario)
        .with_context(|| format!("reading {}", scenario.display()))?;
    let params = param
        .iter()
        .map(|p| Param::parse(p))
        .collect::<confab_simulator::Result<Vec<_>>>()?;
    Ok((src, params))
}

/// `confab-sim sweep`.
fn run_sweep(
    scenario: &Path,
    param: &[String],
    metric: &[String],
    out: &Path,
    seed: Option<u64>,
) -> Result<()> {
    let (src, params) = load_sweep(scenario, param)?;
    let rows = sweep(
        &src,
        &scenario.display().to_string(),
        &params,
        seed,
        metric,
        out,
    )?;
    println!(
        "{} runs; wrote {}",
        rows.len(),
        out.join("sweep.csv").display()
    );
    Ok(())
}

/// `confab-sim sweep --shard I/N`.
fn run_shard(
    scenario: &Path,
    param: &[String],
    shard: &str,
    out: &Path,
    seed: Option<u64>,
) -> Result<()> {
    let (src, params) = load_sweep(scenario, param)?;
    let shard = Shard::parse(shard)?;
    let n = sweep_shard(
        &src,
        &scenario.display().to_string(),
        &params,
        seed,
        shard,
        out,
    )?;
    println!(
        "shard {}/{}: {n} runs in {}",
        shard.index,
        shard.count,
        out.display()
    );
    Ok(())
}

/// `confab-sim bench`.
fn bench(scenario: &Path, runs: u32, seed: Option<u64>) -> Result<()> {
    let sc = Scenario::load(scenario)?;
    println!(
        "| run | nodes | rooms | simulated s | wall s | events | events/s | sim s per wall s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for i in 0..runs.max(1) {
        let start = Instant::now();
        let o = confab_simulator::sim::run(&sc, seed, &mut |_, _| {});
        let wall = start.elapsed().as_secs_f64();
        let s = &o.summary;
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {} | {:.0} | {:.1} |",
            i + 1,
            s.nodes,
            s.rooms,
            s.duration_s,
            wall,
            s.events,
            s.events as f64 / wall,
            s.duration_s / wall
        );
    }
    Ok(())
}
