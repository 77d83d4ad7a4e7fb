//! `cargo xtask reproduce [--grid FILE] [--only PATTERN] [--dry-run] [--gpus 0,1,…]
//! [--emit-slurm FILE]`: runs every cell of a grid that has not completed (an interrupted cell
//! resumes from its checkpoint, a completed one is never rerun), then writes
//! `results/<grid>.md` and learning curves.

use crate::commands::setup;
use crate::grid::{self, Cell, Grid};
use crate::results;
use crate::util::workspace_root;
use anyhow::{bail, Context, Result};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Grid file (default: experiments/cpu.toml).
    #[arg(long)]
    pub grid: Option<PathBuf>,
    /// Only cells whose name matches (substring, or a pattern with *).
    #[arg(long)]
    pub only: Option<String>,
    /// List the cells and which are done; run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Run cells in parallel, one per listed CUDA device (e.g. 0,1,2,3).
    #[arg(long, value_delimiter = ',')]
    pub gpus: Vec<usize>,
    /// Write a Slurm job-array script running the same cells (one array task per cell).
    #[arg(long)]
    pub emit_slurm: Option<PathBuf>,
    /// Device for the cells when --gpus is not given: auto | cpu | cuda | cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Root of the run directories (cells go to <runs>/<grid name>/<cell>/).
    #[arg(long)]
    pub runs: Option<PathBuf>,
    /// Where results/<grid>.md and the plots go.
    #[arg(long)]
    pub results: Option<PathBuf>,
}

/// How to run a grid's cells.
pub struct GridRun {
    pub runs_dir: PathBuf,
    pub fpt: PathBuf,
    /// One worker per entry; each runs its cells on that device.
    pub devices: Vec<String>,
    /// Extra environment for the `fpt` processes (tests use it to simulate kills).
    pub extra_env: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellState {
    Done,
    Partial,
    Pending,
}

pub fn cell_state(dir: &Path) -> CellState {
    match results::read_summary(dir) {
        Some(s) if s.status == "completed" => CellState::Done,
        Some(_) => CellState::Partial,
        None if dir.join("metrics.jsonl").exists() => CellState::Partial,
        None => CellState::Pending,
    }
}

/// Writes `<runs>/<cell>/cell.toml` (the cell's run config).
pub fn write_cell_config(runs_dir: &Path, cell: &Cell) -> Result<PathBuf> {
    let dir = runs_dir.join(&cell.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("cell.toml");
    let text = format!("# Cell {} (generated from the grid; `fpt train` resolves it into config.toml)\n{}", cell.name, toml::to_string(&cell.config)?);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// One cell's `fpt train`, resuming whatever is there; output appended to the cell's train.log.
fn run_cell(run: &GridRun, cell: &Cell, device: &str) -> Result<()> {
    let config = write_cell_config(&run.runs_dir, cell)?;
    let dir = run.runs_dir.join(&cell.name);
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("train.log"))?;
    let mut cmd = Command::new(&run.fpt);
    cmd.args(["train", "--resume", "--device", device, "--config"]).arg(&config).arg("--out").arg(&dir);
    cmd.stdout(log.try_clone()?).stderr(log);
    for (k, v) in &run.extra_env {
        cmd.env(k, v);
    }
    let status = cmd.status().with_context(|| format!("starting {}", run.fpt.display()))?;
    if !status.success() {
        bail!("cell {} failed ({status}); see {}", cell.name, dir.join("train.log").display());
    }
    Ok(())
}

/// Runs the cells that are not done; returns (cell, start, end) of each run, and the failures.
pub fn run_cells(run: &GridRun, cells: &[Cell]) -> (Vec<(String, f64, f64)>, Vec<String>) {
    let queue: Arc<Mutex<VecDeque<Cell>>> =
        Arc::new(Mutex::new(cells.iter().filter(|c| cell_state(&run.runs_dir.join(&c.name)) != CellState::Done).cloned().collect()));
    let spans = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    std::thread::scope(|scope| {
        for device in &run.devices {
            let (queue, spans, failures) = (queue.clone(), spans.clone(), failures.clone());
            scope.spawn(move || loop {
                let Some(cell) = queue.lock().map(|mut q| q.pop_front()).unwrap_or(None) else { break };
                let start = t0.elapsed().as_secs_f64();
                eprintln!("[{device}] {} …", cell.name);
                let result = run_cell(run, &cell, device);
                let end = t0.elapsed().as_secs_f64();
                match result {
                    Ok(()) => eprintln!("[{device}] {} done in {:.0} s", cell.name, end - start),
                    Err(e) => {
                        eprintln!("[{device}] {e:#}");
                        if let Ok(mut f) = failures.lock() {
                            f.push(format!("{e:#}"));
                        }
                    }
                }
                if let Ok(mut s) = spans.lock() {
                    s.push((cell.name.clone(), start, end));
                }
            });
        }
    });
    let spans = spans.lock().map(|s| s.clone()).unwrap_or_default();
    let failures = failures.lock().map(|f| f.clone()).unwrap_or_default();
    (spans, failures)
}

/// A Slurm job-array script: array task i trains cell i into the same run directory.
pub fn emit_slurm(grid: &Grid, cells: &[Cell], runs_dir: &Path, fpt: &Path, path: &Path) -> Result<()> {
    for cell in cells {
        write_cell_config(runs_dir, cell)?;
    }
    let names: Vec<String> = cells.iter().map(|c| format!("  {}", c.name)).collect();
    let script = format!(
        "#!/usr/bin/env bash\n\
         # Generated by `cargo xtask reproduce --emit-slurm` for grid {grid}: {n} cells, one array task each.\n\
         # Each task trains (or resumes) its cell with the same run directory as a local run, so\n\
         # `cargo xtask reproduce --grid … --dry-run` and the results table see Slurm's work too.\n\
         #SBATCH --job-name=fpt-{grid}\n\
         #SBATCH --array=0-{last}\n\
         #SBATCH --gres=gpu:1\n\
         #SBATCH --cpus-per-task=8\n\
         #SBATCH --output={runs}/slurm-%A_%a.out\n\
         set -euo pipefail\n\
         CELLS=(\n{cells}\n)\n\
         CELL=\"${{CELLS[$SLURM_ARRAY_TASK_ID]}}\"\n\
         exec {fpt} train --resume --device \"${{FPT_DEVICE:-cuda}}\" \\\n  --config {runs}/\"$CELL\"/cell.toml --out {runs}/\"$CELL\"\n",
        grid = grid.name,
        n = cells.len(),
        last = cells.len().saturating_sub(1),
        runs = runs_dir.display(),
        cells = names.join("\n"),
        fpt = fpt.display(),
    );
    std::fs::write(path, script).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf()) }
}

pub fn run(args: &Args) -> Result<()> {
    let root = workspace_root();
    let grid_path = args.grid.as_deref().map(absolute).unwrap_or_else(|| root.join("experiments/cpu.toml"));
    let grid = grid::load(&grid_path)?;
    let cells: Vec<Cell> = grid.cells.iter().filter(|c| args.only.as_deref().is_none_or(|p| grid::matches(p, &c.name))).cloned().collect();
    if cells.is_empty() {
        bail!("no cell of {} matches {:?}", grid_path.display(), args.only);
    }
    let runs_dir = args.runs.as_deref().map(absolute).unwrap_or_else(|| root.join("runs")).join(&grid.name);
    let results_dir = args.results.as_deref().map(absolute).unwrap_or_else(|| root.join("results"));
    let fpt = root.join("target/release/fpt");

    if args.dry_run {
        println!("grid {} ({}): {} cells → {}", grid.name, grid_path.display(), cells.len(), runs_dir.display());
        for cell in &cells {
            let state = match cell_state(&runs_dir.join(&cell.name)) {
                CellState::Done => "done",
                CellState::Partial => "partial (resumes)",
                CellState::Pending => "pending",
            };
            println!("  {:<40} {state}", cell.name);
        }
        return Ok(());
    }
    if let Some(path) = &args.emit_slurm {
        let path = absolute(path);
        emit_slurm(&grid, &cells, &runs_dir, &fpt, &path)?;
        println!("wrote {} ({} array tasks); submit with `sbatch {}` after `cargo xtask setup`", path.display(), cells.len(), path.display());
        return Ok(());
    }
    setup::run(&setup::Args { no_build: false })?;
    let stand_in = std::env::var("FPT_GPU_STANDIN").ok();
    let devices: Vec<String> = if args.gpus.is_empty() {
        vec![args.device.clone()]
    } else {
        args.gpus.iter().map(|g| stand_in.clone().unwrap_or_else(|| format!("cuda:{g}"))).collect()
    };
    let run = GridRun { runs_dir: runs_dir.clone(), fpt, devices, extra_env: Vec::new() };
    let (_, failures) = run_cells(&run, &cells);
    let paper = results::load_paper(&root.join("experiments/paper_results.toml"))?;
    let command = format!("cargo xtask reproduce --grid {}", grid_path.strip_prefix(&root).unwrap_or(&grid_path).display());
    let md = results::write(&grid, &runs_dir, &results_dir, &paper, &command)?;
    println!("results: {}", md.display());
    if !failures.is_empty() {
        bail!("{} cell(s) failed:\n  {}", failures.len(), failures.join("\n  "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::regress;

    /// The release `fpt` that `cargo xtask test` builds before running the tests.
    fn fpt() -> PathBuf {
        let fpt = workspace_root().join("target/release/fpt");
        assert!(fpt.is_file(), "{} is missing: run `cargo xtask setup` (or cargo build --release) first", fpt.display());
        fpt
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = workspace_root().join("target/tmp").join(format!("xtask-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const TINY: &str = r#"
name = "tiny"
[defaults]
seed = 0
[defaults.task]
name = "bit-xor"
eval_examples = 100
[defaults.model]
backbone = "gpt2"
init = "random"
freeze = "paper"
[defaults.model.shape]
n_layer = 1
n_embd = 32
n_head = 2
n_positions = 16
[defaults.train]
batch_size = 8
log_every = 10
eval_every = 50
checkpoint_every = 50
[axes.cell]
a = { "train.steps" = 40 }
b = { "train.steps" = 200 }
"#;

    fn metrics(dir: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn values(lines: &[serde_json::Value]) -> Vec<String> {
        lines.iter().map(|l| format!("{} {} {} {} {}", l["step"], l["train_loss"], l["train_acc"], l["eval_loss"], l["eval_acc"])).collect()
    }

    #[test]
    fn a_killed_cell_resumes_and_completed_cells_are_never_rerun() {
        let dir = scratch("kill");
        let grid = grid::parse(TINY, Path::new("tiny.toml")).unwrap();
        let runs = dir.join("runs");
        let mut run = GridRun { runs_dir: runs.clone(), fpt: fpt(), devices: vec!["cpu".into()], extra_env: vec![("FPT_STOP_AFTER_STEP".into(), "120".into())] };
        let (_, failures) = run_cells(&run, &grid.cells);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].contains("cell b failed"));
        assert_eq!(cell_state(&runs.join("a")), CellState::Done);
        assert_eq!(cell_state(&runs.join("b")), CellState::Partial);
        let a_summary = std::fs::metadata(runs.join("a/summary.json")).unwrap().modified().unwrap();

        run.extra_env.clear();
        let (spans, failures) = run_cells(&run, &grid.cells);
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(spans.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(), vec!["b"], "only the unfinished cell runs");
        assert_eq!(std::fs::metadata(runs.join("a/summary.json")).unwrap().modified().unwrap(), a_summary);
        let steps: Vec<u64> = metrics(&runs.join("b")).iter().map(|l| l["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, (1..=20).map(|i| i * 10).collect::<Vec<_>>(), "no gap, no duplicate");

        // The resumed cell's curve equals an uninterrupted run of the same cell.
        let straight = GridRun { runs_dir: dir.join("straight"), fpt: fpt(), devices: vec!["cpu".into()], extra_env: Vec::new() };
        let (_, f) = run_cells(&straight, &grid.cells[1..]);
        assert!(f.is_empty());
        assert_eq!(values(&metrics(&runs.join("b"))), values(&metrics(&dir.join("straight/b"))));

        // A third pass runs nothing; the results table counts each cell once.
        let (spans, _) = run_cells(&run, &grid.cells);
        assert!(spans.is_empty());
        let md = crate::results::write(&grid, &runs, &dir.join("results"), &toml::Table::new(), "test").unwrap();
        let text = std::fs::read_to_string(md).unwrap();
        assert!(text.contains("| bit-xor | a | 1/1 |") && text.contains("| bit-xor | b | 1/1 |"), "{text}");
        assert!(dir.join("results/tiny-bit-xor.png").is_file(), "learning-curve plot");
    }

    #[test]
    fn gpus_run_cells_in_parallel_with_cpu_stand_ins() {
        let dir = scratch("gpus");
        let text = TINY.replace("\"train.steps\" = 40", "\"train.steps\" = 300").replace("\"train.steps\" = 200", "\"train.steps\" = 300");
        let grid = grid::parse(&text, Path::new("tiny.toml")).unwrap();
        let run = GridRun { runs_dir: dir.join("runs"), fpt: fpt(), devices: vec!["cpu".into(), "cpu".into()], extra_env: Vec::new() };
        let (spans, failures) = run_cells(&run, &grid.cells);
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(spans.len(), 2);
        let (a, b) = (&spans[0], &spans[1]);
        assert!(a.1 < b.2 && b.1 < a.2, "the two cells did not overlap in time: {spans:?}");
    }

    #[test]
    fn slurm_script_runs_the_same_cells() {
        let dir = scratch("slurm");
        let grid = grid::parse(TINY, Path::new("tiny.toml")).unwrap();
        let runs = dir.join("runs");
        let script = dir.join("job.sh");
        emit_slurm(&grid, &grid.cells, &runs, &fpt(), &script).unwrap();
        let text = std::fs::read_to_string(&script).unwrap();
        assert!(text.contains("#SBATCH --array=0-1") && text.contains("  a\n  b\n"), "{text}");
        assert!(Command::new("bash").arg("-n").arg(&script).status().unwrap().success());
        // Array task 1 on a CPU stand-in trains cell b into the grid's run directory.
        let status = Command::new("bash").arg(&script).env("SLURM_ARRAY_TASK_ID", "1").env("FPT_DEVICE", "cpu").stdout(std::process::Stdio::null()).status().unwrap();
        assert!(status.success());
        assert_eq!(cell_state(&runs.join("b")), CellState::Done);
        assert_eq!(cell_state(&runs.join("a")), CellState::Pending);
    }

    #[test]
    fn regress_fails_when_an_expectation_is_raised() {
        let dir = scratch("regress");
        let base = TINY.replace("[axes.cell]\na = { \"train.steps\" = 40 }\nb = { \"train.steps\" = 200 }\n", "[axes.cell]\nxor = { \"train.steps\" = 30 }\n");
        for (expected, should_pass) in [(0.0, true), (1.01, false)] {
            let grid_file = dir.join(format!("grid-{expected}.toml"));
            std::fs::write(&grid_file, format!("{base}\n[expectations.xor]\naccuracy = {expected}\ntolerance = 0.0\nproduced_by = \"test\"\n")).unwrap();
            let rows = regress::regress(&grid_file, &dir.join("runs"), &fpt()).unwrap();
            assert_eq!(rows.len(), 1);
            assert!(rows[0].got.is_some());
            assert_eq!(rows[0].passed(), should_pass, "{rows:?}");
        }
        let missing = dir.join("noexp.toml");
        std::fs::write(&missing, &base).unwrap();
        assert!(regress::regress(&missing, &dir.join("runs"), &fpt()).is_err());
    }
}
