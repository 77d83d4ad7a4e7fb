//! `cargo xtask regress`: trains the cells of `experiments/regression.toml` from scratch (tiny
//! models, fixed seeds, on the CPU unless `--device` says otherwise) and fails when a cell's final
//! accuracy is below its stored expectation minus its tolerance. The expectations were measured
//! on CPUs; on CUDA (`benches/gpu_check.sh`) the same cells show how far another device's kernels
//! move them.
//!
//! The grid file carries the expectations:
//! ```toml
//! [expectations.bit-xor__full]
//! accuracy = 1.0          # final eval accuracy, fraction
//! tolerance = 0.0
//! produced_by = "cargo xtask regress on the 2-core build machine, 2026-11-27: 1.0000"
//! ```

use crate::commands::reproduce::{run_cells, GridRun, Stop};
use crate::commands::setup;
use crate::grid::{self, Grid};
use crate::results::read_summary;
use crate::util::workspace_root;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// Regression grid (default: experiments/regression.toml).
    #[arg(long)]
    pub grid: Option<PathBuf>,
    /// Device for every cell: cpu | cuda | cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Do not run `cargo xtask setup` first (use the fpt binary as it is: a host that builds
    /// nothing, as in benches/gpu_check.sh).
    #[arg(long)]
    pub no_setup: bool,
}

impl Default for Args {
    fn default() -> Self {
        Args { grid: None, device: "cpu".into(), no_setup: false }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub cell: String,
    pub expected: f64,
    pub tolerance: f64,
    pub got: Option<f64>,
}

impl Row {
    pub fn passed(&self) -> bool {
        self.got.is_some_and(|g| g + 1e-9 >= self.expected - self.tolerance)
    }
}

fn expectations(grid: &Grid, origin: &Path) -> Result<Vec<(String, f64, f64)>> {
    let table = grid
        .extra
        .get("expectations")
        .and_then(|v| v.as_table())
        .with_context(|| format!("{}: no [expectations] table", origin.display()))?;
    let mut out = Vec::new();
    for cell in &grid.cells {
        let e = table
            .get(&cell.name)
            .and_then(|v| v.as_table())
            .with_context(|| format!("{}: no expectations.{} for cell {}", origin.display(), cell.name, cell.name))?;
        let num = |k: &str| e.get(k).and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)));
        let accuracy = num("accuracy").with_context(|| format!("{}: expectations.{}.accuracy missing", origin.display(), cell.name))?;
        let tolerance = num("tolerance").unwrap_or(0.0);
        if e.get("produced_by").and_then(|v| v.as_str()).is_none() {
            bail!("{}: expectations.{} needs produced_by (the command and figure that set it)", origin.display(), cell.name);
        }
        out.push((cell.name.clone(), accuracy, tolerance));
    }
    Ok(out)
}

/// Trains every cell of `grid_path` afresh in `runs_root` on `device` and compares with the
/// expectations.
pub fn regress(grid_path: &Path, runs_root: &Path, fpt: &Path, device: &str) -> Result<Vec<Row>> {
    let grid = grid::load(grid_path)?;
    let expected = expectations(&grid, grid_path)?;
    let runs_dir = runs_root.join(&grid.name);
    // Always from scratch: stale runs must not hide a regression.
    let _ = std::fs::remove_dir_all(&runs_dir);
    let run = GridRun { runs_dir: runs_dir.clone(), fpt: fpt.to_path_buf(), devices: vec![device.to_string()], extra_env: Vec::new() };
    // No signal handling here: a stopped regress is simply rerun from scratch.
    let outcome = run_cells(&run, &grid.cells, &Stop::new(0));
    for f in &outcome.failures {
        eprintln!("regress: {f}");
    }
    for cell in &outcome.held {
        eprintln!("regress: {cell} is being trained by another process; it counts as failed here");
    }
    Ok(expected
        .into_iter()
        .map(|(cell, expected, tolerance)| {
            let got = read_summary(&runs_dir.join(&cell)).filter(|s| s.status == "completed").and_then(|s| s.final_eval_acc);
            Row { cell, expected, tolerance, got }
        })
        .collect())
}

pub fn print_table(rows: &[Row]) {
    println!("{:<32} {:>9} {:>9} {:>9}  result", "cell", "expected", "tolerance", "got");
    for r in rows {
        let got = r.got.map(|g| format!("{g:.4}")).unwrap_or_else(|| "failed".into());
        println!("{:<32} {:>9.4} {:>9.4} {:>9}  {}", r.cell, r.expected, r.tolerance, got, if r.passed() { "ok" } else { "BELOW" });
    }
}

pub fn run(args: &Args) -> Result<()> {
    if !args.no_setup {
        setup::run(&setup::Args { no_build: false })?;
    }
    let root = workspace_root();
    let grid = args.grid.clone().unwrap_or_else(|| root.join("experiments/regression.toml"));
    println!("regress: {} on {}", grid.display(), args.device);
    let rows = regress(&grid, &root.join("runs"), &root.join("target/release/fpt"), &args.device)?;
    print_table(&rows);
    let below: Vec<&Row> = rows.iter().filter(|r| !r.passed()).collect();
    if !below.is_empty() {
        bail!("{} of {} regression cells are below expectation", below.len(), rows.len());
    }
    println!("regress: {} passed, 0 failed", rows.len());
    Ok(())
}
