//! `confab-sim testbed --matrix`: a two-home call for every ordered pair of kinds, each
//! compared with the simulator's prediction, written as matrix.csv and matrix.md.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};

use confab_simulator::nat::Transport;
use confab_simulator::realnat::{Home, Prediction};

use super::args::TestbedArgs;
use super::predict;
use super::report::{TestbedPair, TestbedReport};
use super::run;

/// One call of the matrix: A creates the room and listens, B joins from the ticket and
/// dials.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub a: Home,
    pub b: Home,
    pub hairpin: bool,
}

/// Every ordered pair of `kinds`; a pair of homes behind the carrier NAT runs twice, with
/// hairpinning on and off.
pub fn cases(kinds: &[Home]) -> Vec<Case> {
    let mut v = Vec::new();
    for &a in kinds {
        for &b in kinds {
            v.push(Case {
                a,
                b,
                hairpin: true,
            });
            if a.cgnat && b.cgnat {
                v.push(Case {
                    a,
                    b,
                    hairpin: false,
                });
            }
        }
    }
    v
}

/// One line of the comparison.
#[derive(Debug, Clone)]
pub struct Row {
    pub case: Case,
    /// The model over TCP (what the node punches on today) and over QUIC and TCP.
    pub predicted: Prediction,
    pub predicted_quic: Prediction,
    /// The testbed's path of each run (both directions agree; otherwise `b→a/a→b`).
    pub paths: Vec<String>,
    /// Medians over the runs of the later direction's set-up and punch times.
    pub setup_ms: Option<f64>,
    pub punched_ms: Option<f64>,
    /// Whether every call met the demo's targets in both directions.
    pub call_ok: bool,
}

impl Row {
    /// Every run ended on the predicted path.
    pub fn agrees(&self) -> bool {
        let want = self.predicted.path.to_string();
        !self.paths.is_empty() && self.paths.iter().all(|p| *p == want)
    }

    /// The path of every run, or how many runs ended on each.
    pub fn testbed_path(&self) -> String {
        match self.paths.as_slice() {
            [first, rest @ ..] if rest.iter().all(|p| p == first) => first.clone(),
            _ => {
                let mut seen: Vec<(String, usize)> = Vec::new();
                for p in &self.paths {
                    match seen.iter_mut().find(|(q, _)| q == p) {
                        Some((_, n)) => *n += 1,
                        None => seen.push((p.clone(), 1)),
                    }
                }
                let n = self.paths.len();
                seen.iter()
                    .map(|(p, k)| format!("{p} {k}/{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        }
    }
}

/// Runs the matrix, writes matrix.csv, matrix.md and each call's report into `--out`, and
/// prints the table. Fails if a call could not be run at all; disagreements are results.
pub fn main(args: &TestbedArgs) -> Result<()> {
    let kinds = if args.kinds.is_empty() {
        Home::all()
    } else {
        args.kinds.clone()
    };
    let cases = cases(&kinds);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        eprintln!(
            "matrix {}/{}: a {} / b {}, hairpin {}",
            n + 1,
            cases.len(),
            case.a,
            case.b,
            on_off(case.hairpin)
        );
        let mut one = args.clone();
        one.matrix = false;
        one.homes = vec![case.a, case.b];
        one.hairpin = case.hairpin;
        let mut reports = Vec::new();
        for k in 0..args.runs.max(1) {
            match run::run(&one) {
                Ok(out) => {
                    let name = format!(
                        "{n:02}-{}-{}-hairpin-{}-run-{k}.json",
                        case.a,
                        case.b,
                        on_off(case.hairpin)
                    );
                    std::fs::write(args.out.join(name), serde_json::to_string(&out.report)?)?;
                    reports.push(out.report);
                }
                Err(e) => errors.push(format!("a {} / b {}: {e:#}", case.a, case.b)),
            }
        }
        let row = row(*case, &reports);
        eprintln!(
            "  -> {} (predicted {})",
            row.testbed_path(),
            row.predicted.path
        );
        rows.push(row);
    }
    write_outputs(&args.out, &rows)?;
    print!("{}", markdown(&rows));
    if !errors.is_empty() {
        bail!(
            "{} call(s) did not run:\n{}",
            errors.len(),
            errors.join("\n")
        );
    }
    Ok(())
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// The row of one case, from the reports of its runs (none: no call ran).
pub fn row(case: Case, reports: &[TestbedReport]) -> Row {
    let homes = [case.a, case.b];
    let predicted = predict::pair(&homes, 1, 0, case.hairpin);
    let both = [Transport::Quic, Transport::Tcp];
    let predicted_quic = predict::predict_over(&homes, 1, 0, case.hairpin, &both);
    let median_of = |f: fn(&TestbedPair) -> Option<f64>| {
        median(
            reports
                .iter()
                .filter_map(|r| r.pairs.iter().filter_map(f).reduce(f64::max))
                .collect(),
        )
    };
    Row {
        case,
        predicted,
        predicted_quic,
        paths: reports.iter().map(run_path).collect(),
        setup_ms: median_of(|p| p.setup_ms),
        punched_ms: median_of(|p| p.punched_ms),
        call_ok: !reports.is_empty() && reports.iter().all(|r| r.ok),
    }
}

/// One run's path: both directions', if they agree.
fn run_path(r: &TestbedReport) -> String {
    let paths: Vec<&str> = r.pairs.iter().map(|p| p.pair.path.as_str()).collect();
    match paths.as_slice() {
        [] => "none".to_string(),
        [first, rest @ ..] if rest.iter().all(|p| p == first) => first.to_string(),
        _ => paths.join("/"),
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

fn ms(v: Option<f64>) -> String {
    v.map_or(String::new(), |v| format!("{v:.1}"))
}

fn hairpin_cell(c: &Case) -> &'static str {
    if c.a.cgnat && c.b.cgnat {
        on_off(c.hairpin)
    } else {
        "-"
    }
}

/// The CSV: one line per case.
pub fn csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "a,b,hairpin,runs,predicted_path_tcp,predicted_open_ms,predicted_punched_ms,testbed_path_tcp,testbed_setup_ms,testbed_punched_ms,agree,call_ok,predicted_path_quic,testbed_path_quic\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{:.2},{},\"{}\",{},{},{},{},{},n/a",
            r.case.a,
            r.case.b,
            hairpin_cell(&r.case),
            r.paths.len(),
            r.predicted.path,
            r.predicted.open_ms,
            r.predicted
                .punched_ms
                .map_or(String::new(), |v| format!("{v:.2}")),
            r.testbed_path(),
            ms(r.setup_ms),
            ms(r.punched_ms),
            r.agrees(),
            r.call_ok,
            r.predicted_quic.path,
        );
    }
    s
}

/// The Markdown table, with the agreement count under it.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| A (creates, listens) | B (joins, dials) | hairpin | predicted (TCP) | testbed (TCP) | agree | predicted set-up / punch, ms | testbed set-up / punch, ms | call ok | predicted with QUIC | testbed QUIC |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let pred = match r.predicted.punched_ms {
            Some(p) => format!("{:.2} / {p:.2}", r.predicted.open_ms),
            None => format!("{:.2}", r.predicted.open_ms),
        };
        let got = match (r.setup_ms, r.punched_ms) {
            (Some(s), Some(p)) => format!("{s:.0} / {p:.0}"),
            (Some(s), None) => format!("{s:.0}"),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {pred} | {got} | {} | {} | n/a (no QUIC punching in the node) |",
            r.case.a,
            r.case.b,
            hairpin_cell(&r.case),
            r.predicted.path,
            r.testbed_path(),
            if r.agrees() { "yes" } else { "**no**" },
            if r.call_ok { "yes" } else { "no" },
            r.predicted_quic.path,
        );
    }
    let agree = rows.iter().filter(|r| r.agrees()).count();
    let _ = writeln!(
        s,
        "\n{agree} of {} cases agree ({:.0} %).",
        rows.len(),
        100.0 * agree as f64 / rows.len().max(1) as f64
    );
    s
}

fn write_outputs(dir: &Path, rows: &[Row]) -> Result<()> {
    for (name, text) in [("matrix.csv", csv(rows)), ("matrix.md", markdown(rows))] {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    eprintln!("wrote {} and matrix.md", dir.join("matrix.csv").display());
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn h(s: &str) -> Home {
        Home::parse(s).expect("home")
    }

    #[test]
    fn every_ordered_pair_and_both_hairpin_settings_for_carrier_neighbours() {
        let c = cases(&[h("public"), h("eim-apdf@cgnat")]);
        assert_eq!(c.len(), 5);
        assert_eq!(c.iter().filter(|c| !c.hairpin).count(), 1);
    }

    #[test]
    fn a_case_that_did_not_run_disagrees_and_says_so() {
        let r = row(
            Case {
                a: h("eim-apdf"),
                b: h("eim-apdf"),
                hairpin: true,
            },
            &[],
        );
        assert!(!r.agrees());
        assert_eq!(r.testbed_path(), "");
        assert!(csv(std::slice::from_ref(&r)).contains("eim-apdf,eim-apdf,-,0,punched"));
        assert!(markdown(&[r]).contains("0 of 1 cases agree"));
    }
}
