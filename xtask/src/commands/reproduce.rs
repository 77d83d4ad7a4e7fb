//! `cargo xtask reproduce [--grid FILE] [--only PATTERN] [--dry-run] [--gpus 0,1,… | --jobs N]
//! [--emit-slurm FILE]`: runs every cell of a grid that has not completed (an interrupted cell
//! resumes from its checkpoint, a completed one is never rerun), then writes
//! `results/<grid>.md` and learning curves.
//!
//! Several `reproduce` processes (or Slurm array tasks) may share one grid: `fpt train` locks
//! `<cell>/.lock` while it trains and exits with [`HELD_EXIT_CODE`] when another process holds
//! it, and the worker moves on to the next cell. SIGTERM or SIGINT stops the grid: no new cell
//! starts, every running `fpt train` gets SIGTERM (it checkpoints and exits with
//! [`INTERRUPTED_EXIT_CODE`]), and `reproduce` exits with 128 + the signal once they are gone.

use crate::commands::setup;
use crate::grid::{self, Cell, Grid};
use crate::results;
use crate::util::{cores, share_cores, workspace_root, ExitWith};
use anyhow::{bail, Context, Result};
use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `fpt train`'s exit status when another process holds the run directory's lock (EX_CANTCREAT).
/// Mirrors `fpt_train::trainer::IN_USE_EXIT_CODE` (xtask links no libtorch, so it cannot import
/// it); `fpt-train/tests/hostile.rs` pins fpt's side, the tests here this side.
pub const HELD_EXIT_CODE: i32 = 73;
/// `fpt train`'s exit status after SIGTERM, once it has written its checkpoint (128 + 15).
pub const INTERRUPTED_EXIT_CODE: i32 = 143;
/// The file in a run directory that `fpt train` holds locked (flock, exclusive) while it trains.
pub const LOCK_FILE: &str = ".lock";
/// How often a worker looks at its child and at the stop flag.
const POLL: Duration = Duration::from_millis(100);

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
    /// Cells at a time on that device, each with an equal share of the CPU cores
    /// (`OMP_NUM_THREADS`); not with --gpus. Small models use a second core poorly, so on a
    /// 2-core CPU two one-thread cells do more work than one two-thread cell: 1.34× for MiniLM
    /// (batch 32), 1.08× for SmolLM2 (batch 32, 49 tokens + BOS), measured.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
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

/// Asks a running grid to stop: the number of the signal that did (SIGTERM, SIGINT), 0 while
/// none has. The real command sets it from signal handlers ([`stop_on_signals`]), tests by hand.
pub type Stop = AtomicUsize;

/// Makes SIGTERM and SIGINT set the returned flag instead of killing the process, so the workers
/// can pass SIGTERM on to their `fpt train` children and wait for their checkpoints.
///
/// Only this process is handled: `cargo xtask` is `cargo run`, which on Unix execs xtask in
/// cargo's own process, and Slurm signals every process of a job step (our children included)
/// anyway; forwarding covers a signal sent to xtask alone (`kill PID`, a supervisor).
pub fn stop_on_signals() -> Result<Arc<Stop>> {
    let stop = Arc::new(Stop::new(0));
    for signal in [libc::SIGTERM, libc::SIGINT] {
        signal_hook::flag::register_usize(signal, stop.clone(), signal as usize)
            .with_context(|| format!("installing a handler for signal {signal}"))?;
    }
    Ok(stop)
}

fn signal_name(signal: usize) -> String {
    match signal as i32 {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGINT => "SIGINT".into(),
        other => format!("signal {other}"),
    }
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

/// Whether the record holds the cell finished, with its present config, while its run directory
/// here does not (absent, partial, or not completed).
pub fn finished_elsewhere(runs_dir: &Path, record: &results::Record, cell: &Cell) -> bool {
    cell_state(&runs_dir.join(&cell.name)) != CellState::Done && record.finished(cell).is_some()
}

/// Who holds the cell's lock right now (an `fpt train` training it), if anyone: the lock file's
/// text (`fpt train` writes "pid N" into it), or "" when it has none.
///
/// For `--dry-run`'s display only: the probe takes a shared lock and drops it at once, so an
/// `fpt train` starting in that same instant would find the cell held and skip it (a rerun picks
/// it up). Shared, because flock on NFS may refuse an exclusive lock on a read-only file.
pub fn held_elsewhere(dir: &Path) -> Option<String> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::File::open(&path).ok()?;
    match file.try_lock_shared() {
        Err(std::fs::TryLockError::WouldBlock) => Some(std::fs::read_to_string(&path).map(|t| t.trim().to_string()).unwrap_or_default()),
        _ => None,
    }
}

/// The `--dry-run` words for a cell's run directory.
pub fn describe_state(dir: &Path) -> String {
    if let Some(holder) = held_elsewhere(dir) {
        let holder = if holder.is_empty() { "another process".to_string() } else { holder };
        return format!("running elsewhere ({holder} holds its lock)");
    }
    match cell_state(dir) {
        CellState::Done => "done",
        CellState::Partial => "partial (resumes)",
        CellState::Pending => "pending",
    }
    .to_string()
}

/// Writes `<runs>/<cell>/cell.toml` (the cell's run config).
///
/// Another `reproduce` may be starting `fpt train` on the same cell and reading this file, so it
/// is left alone when unchanged and otherwise replaced by a rename, never truncated in place.
pub fn write_cell_config(runs_dir: &Path, cell: &Cell) -> Result<PathBuf> {
    let dir = runs_dir.join(&cell.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("cell.toml");
    let config = cell.config_toml()?;
    let text = format!("# Cell {} (generated from the grid; `fpt train` resolves it into config.toml)\n{config}", cell.name);
    if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
        return Ok(path);
    }
    let tmp = dir.join(format!(".cell.toml.{}.tmp", std::process::id()));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(path)
}

/// How one cell's `fpt train` ended, short of failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellEnd {
    /// Exited 0: completed (or was already).
    Done,
    /// Another process holds the cell's lock; it is left to that process.
    Held,
    /// Stopped by SIGTERM/SIGINT (ours or anyone's); the checkpoint is there, a rerun resumes.
    Interrupted,
}

fn classify(status: ExitStatus) -> Option<CellEnd> {
    match (status.code(), status.signal()) {
        (Some(0), _) => Some(CellEnd::Done),
        (Some(HELD_EXIT_CODE), _) => Some(CellEnd::Held),
        // 130: an `fpt train` that handles SIGINT (Ctrl-C reaches the whole foreground group) as
        // it does SIGTERM; killed outright by either signal, it resumes from its last checkpoint.
        (Some(INTERRUPTED_EXIT_CODE | 130), _) | (None, Some(libc::SIGTERM | libc::SIGINT)) => Some(CellEnd::Interrupted),
        _ => None,
    }
}

/// Sends SIGTERM to a child that has not been reaped yet.
pub fn terminate(child: &std::process::Child) -> Result<()> {
    let pid = libc::pid_t::try_from(child.id()).with_context(|| format!("child pid {} does not fit pid_t", child.id()))?;
    // The pid is still this child's: it is not reaped (so not reusable) until try_wait reports it.
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("sending SIGTERM to fpt (pid {pid})"));
    }
    Ok(())
}

/// The workers' devices (one entry per worker) and the environment of their `fpt` processes.
type Workers = (Vec<String>, Vec<(String, String)>);

/// One worker per listed GPU, or `--jobs` workers on `--device`, which share the `cores` evenly
/// (`OMP_NUM_THREADS`; with one job libtorch takes them all, as it would alone).
fn workers(args: &Args, cells: usize, cores: usize) -> Result<Workers> {
    if !args.gpus.is_empty() {
        if args.jobs > 1 {
            bail!("--jobs {} with --gpus: each listed GPU runs one cell at a time; list a GPU twice to run two cells on it", args.jobs);
        }
        let stand_in = std::env::var("FPT_GPU_STANDIN").ok();
        return Ok((args.gpus.iter().map(|g| stand_in.clone().unwrap_or_else(|| format!("cuda:{g}"))).collect(), Vec::new()));
    }
    if args.jobs == 0 {
        bail!("--jobs 0: at least one cell must run at a time");
    }
    let (jobs, threads) = share_cores(args.jobs, cores, cells);
    let env = if jobs > 1 { vec![("OMP_NUM_THREADS".to_string(), threads.to_string())] } else { Vec::new() };
    Ok((vec![args.device.clone(); jobs], env))
}

/// One cell's `fpt train`, resuming whatever is there; output appended to the cell's train.log.
/// Once `stop` is set, the child gets SIGTERM (once) and is waited for.
fn run_cell(run: &GridRun, cell: &Cell, device: &str, stop: &Stop) -> Result<CellEnd> {
    let config = write_cell_config(&run.runs_dir, cell)?;
    let dir = run.runs_dir.join(&cell.name);
    let log_path = dir.join("train.log");
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(&log_path).with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = Command::new(&run.fpt);
    cmd.args(["train", "--resume", "--device", device, "--config"]).arg(&config).arg("--out").arg(&dir);
    cmd.stdout(log.try_clone().with_context(|| format!("duplicating the handle of {}", log_path.display()))?).stderr(log);
    for (k, v) in &run.extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().with_context(|| format!("starting {}", run.fpt.display()))?;
    let mut forwarded = false;
    let status = loop {
        if let Some(status) = child.try_wait().with_context(|| format!("waiting for {} (cell {})", run.fpt.display(), cell.name))? {
            break status;
        }
        if !forwarded && stop.load(Ordering::SeqCst) != 0 {
            forwarded = true;
            if let Err(e) = terminate(&child) {
                eprintln!("[{device}] {}: {e:#}", cell.name);
            }
        }
        std::thread::sleep(POLL);
    };
    classify(status).with_context(|| format!("cell {} failed ({status}); see {}", cell.name, log_path.display()))
}

/// What happened to a grid's cells in one `run_cells`.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// (cell, start s, end s) of every cell a worker started.
    pub spans: Vec<(String, f64, f64)>,
    /// One message per failed cell.
    pub failures: Vec<String>,
    /// Cells another process was training (`fpt train` exited [`HELD_EXIT_CODE`]).
    pub held: Vec<String>,
    /// Cells stopped by a signal; they resume from their checkpoints on the next run.
    pub interrupted: Vec<String>,
    /// Cells not started because the grid was asked to stop.
    pub not_started: Vec<String>,
    /// The signal that stopped the grid (0: none).
    pub signal: usize,
}

/// Runs the cells that are not done, one worker per device, until the queue is empty or `stop`
/// is set.
pub fn run_cells(run: &GridRun, cells: &[Cell], stop: &Stop) -> Outcome {
    let queue: Mutex<VecDeque<Cell>> =
        Mutex::new(cells.iter().filter(|c| cell_state(&run.runs_dir.join(&c.name)) != CellState::Done).cloned().collect());
    let outcome = Mutex::new(Outcome::default());
    let record = |f: &dyn Fn(&mut Outcome)| {
        if let Ok(mut o) = outcome.lock() {
            f(&mut o);
        }
    };
    let t0 = Instant::now();
    std::thread::scope(|scope| {
        for device in &run.devices {
            let (queue, record) = (&queue, &record);
            scope.spawn(move || loop {
                if stop.load(Ordering::SeqCst) != 0 {
                    break;
                }
                let Some(cell) = queue.lock().map(|mut q| q.pop_front()).unwrap_or(None) else { break };
                let start = t0.elapsed().as_secs_f64();
                eprintln!("[{device}] {} …", cell.name);
                let result = run_cell(run, &cell, device, stop);
                let end = t0.elapsed().as_secs_f64();
                let name = cell.name.clone();
                match result {
                    Ok(CellEnd::Done) => eprintln!("[{device}] {name} done in {:.0} s", end - start),
                    Ok(CellEnd::Held) => {
                        eprintln!("[{device}] {name} is being trained by another process; skipped");
                        record(&|o| o.held.push(name.clone()));
                    }
                    Ok(CellEnd::Interrupted) => {
                        eprintln!("[{device}] {name} interrupted after {:.0} s; its checkpoint is kept", end - start);
                        record(&|o| o.interrupted.push(name.clone()));
                    }
                    Err(e) => {
                        eprintln!("[{device}] {e:#}");
                        record(&|o| o.failures.push(format!("{e:#}")));
                    }
                }
                record(&|o| o.spans.push((name.clone(), start, end)));
            });
        }
    });
    let mut outcome = outcome.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    outcome.signal = stop.load(Ordering::SeqCst);
    if outcome.signal != 0 {
        outcome.not_started = queue.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner()).into_iter().map(|c| c.name).collect();
    }
    outcome
}

/// The line about cells left to other processes, if any.
pub fn held_note(outcome: &Outcome) -> Option<String> {
    (!outcome.held.is_empty()).then(|| {
        format!(
            "{} cell(s) skipped because another process is training them ({}); rerun when it has finished to include them in the results",
            outcome.held.len(),
            outcome.held.join(", ")
        )
    })
}

/// The end of a grid run: Ok, or an error naming the interrupted and failed cells, which exits
/// with 128 + the signal when one stopped the grid. `rerun` is the command that resumes it.
pub fn conclude(outcome: &Outcome, rerun: &str) -> Result<()> {
    let mut lines = Vec::new();
    if !outcome.interrupted.is_empty() {
        lines.push(format!("interrupted (checkpointed; `{rerun}` resumes them): {}", outcome.interrupted.join(", ")));
    }
    if !outcome.not_started.is_empty() {
        lines.push(format!("{} cell(s) not started", outcome.not_started.len()));
    }
    if !outcome.failures.is_empty() {
        lines.push(format!("{} cell(s) failed:\n  {}", outcome.failures.len(), outcome.failures.join("\n  ")));
    }
    if outcome.signal != 0 {
        let code = u8::try_from(128 + outcome.signal).unwrap_or(1);
        let message = format!("stopped by {}; {}", signal_name(outcome.signal), lines.join("; "));
        return Err(ExitWith { code, message }.into());
    }
    if !lines.is_empty() {
        bail!("{}", lines.join("; "));
    }
    Ok(())
}

/// A Slurm job-array script: array task i trains cell i into the same run directory. A task whose
/// cell another process holds exits 0 (nothing failed); one stopped by SIGTERM exits 143.
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
         {fpt} train --resume --device \"${{FPT_DEVICE:-cuda}}\" \\\n  --config {runs}/\"$CELL\"/cell.toml --out {runs}/\"$CELL\" &\n\
         pid=$!\n\
         # Slurm signals every process of the step; passing SIGTERM on also covers `scancel --batch`,\n\
         # which signals this shell only. fpt checkpoints and exits {interrupted}; a rerun resumes.\n\
         trap 'kill -TERM \"$pid\" 2>/dev/null || true' TERM INT\n\
         status=0\n\
         wait \"$pid\" || status=$?\n\
         # A trapped signal ends `wait` early (status > 128) while fpt is still checkpointing.\n\
         while [ \"$status\" -gt 128 ] && kill -0 \"$pid\" 2>/dev/null; do status=0; wait \"$pid\" || status=$?; done\n\
         if [ \"$status\" -eq {held} ]; then\n\
         \x20 echo \"cell $CELL is being trained by another process (fpt exit {held}); leaving it to that one\"\n\
         \x20 exit 0\n\
         fi\n\
         exit \"$status\"\n",
        grid = grid.name,
        n = cells.len(),
        last = cells.len().saturating_sub(1),
        runs = runs_dir.display(),
        cells = names.join("\n"),
        fpt = fpt.display(),
        held = HELD_EXIT_CODE,
        interrupted = INTERRUPTED_EXIT_CODE,
    );
    std::fs::write(path, script).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf())
    }
}

/// Checks every cell's run config with `fpt train --check` (the run config's own parser and
/// validation, nothing trained), so a dry run catches a grid that would fail cell by cell.
/// Returns one line per invalid cell.
fn check_cell_configs(fpt: &Path, cells: &[Cell]) -> Result<Vec<String>> {
    let dir = std::env::temp_dir().join(format!("fpt-dry-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut invalid = Vec::new();
    for cell in cells {
        let path = dir.join(format!("{}.toml", cell.name));
        let text = toml::to_string(&cell.config).with_context(|| format!("cell {}: writing its config as TOML", cell.name))?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        let out = Command::new(fpt)
            .args(["train", "--check", "--config"])
            .arg(&path)
            .output()
            .with_context(|| format!("running {}", fpt.display()))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
            invalid.push(format!("  {}: {err}", cell.name));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(invalid)
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
    // Cells finished elsewhere (another machine, a clone whose runs/ is gone) are not rerun.
    let record_file = results::record_path(&results_dir, &grid.name);
    let record = results::Record::load(&record_file)?;
    let recorded = |cell: &Cell| finished_elsewhere(&runs_dir, &record, cell);

    if args.dry_run {
        println!("grid {} ({}): {} cells → {}", grid.name, grid_path.display(), cells.len(), runs_dir.display());
        let invalid = if fpt.is_file() {
            check_cell_configs(&fpt, &cells)?
        } else {
            println!("(cell configs not checked: {} is not built; `cargo xtask setup` builds it)", fpt.display());
            Vec::new()
        };
        for cell in &cells {
            let state = if recorded(cell) {
                format!("done (recorded in {})", record_file.display())
            } else {
                describe_state(&runs_dir.join(&cell.name))
            };
            println!("  {:<40} {state}", cell.name);
        }
        if !invalid.is_empty() {
            bail!("{} of {} cells have an invalid run config:\n{}", invalid.len(), cells.len(), invalid.join("\n"));
        }
        return Ok(());
    }
    if let Some(path) = &args.emit_slurm {
        let path = absolute(path);
        emit_slurm(&grid, &cells, &runs_dir, &fpt, &path)?;
        println!(
            "wrote {} ({} array tasks); submit with `sbatch {}` after `cargo xtask setup`",
            path.display(),
            cells.len(),
            path.display()
        );
        return Ok(());
    }
    let (done_elsewhere, cells): (Vec<Cell>, Vec<Cell>) = cells.into_iter().partition(|c| recorded(c));
    if !done_elsewhere.is_empty() {
        eprintln!("{} cells finished elsewhere, as {} records: not rerun", done_elsewhere.len(), record_file.display());
    }
    let (devices, extra_env) = workers(args, cells.len(), cores())?;
    setup::run(&setup::Args { no_build: false })?;
    let run = GridRun { runs_dir: runs_dir.clone(), fpt, devices, extra_env };
    // Installed only now: a signal during set-up (a cargo build) should still just end us.
    let stop = stop_on_signals()?;
    let outcome = run_cells(&run, &cells, &stop);
    let command = format!("cargo xtask reproduce --grid {}", grid_path.strip_prefix(&root).unwrap_or(&grid_path).display());
    let rerun = match &args.only {
        Some(only) => format!("{command} --only '{only}'"),
        None => command.clone(),
    };
    // After a signal the job manager wants us gone; the rerun writes the table.
    if outcome.signal == 0 {
        let paper = results::load_paper(&root.join("experiments/paper_results.toml"))?;
        let md = results::write(&grid, &runs_dir, &results_dir, &paper, &command)?;
        println!("results: {}", md.display());
    }
    if let Some(note) = held_note(&outcome) {
        eprintln!("{note}");
    }
    conclude(&outcome, &rerun)
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

    /// A cell the grid record holds finished (a fresh clone, another machine) is not run again,
    /// unless the grid now gives it another config; a finished run directory here is not
    /// "elsewhere", and an unfinished one does not hide the record's result.
    #[test]
    fn recorded_cells_are_not_rerun_unless_their_config_changed() {
        let dir = scratch("recorded");
        let grid = grid::parse(TINY, Path::new("tiny.toml")).unwrap();
        let (a, b) = (&grid.cells[0], &grid.cells[1]);
        let runs = dir.join("runs");
        let mut record = results::Record::default();
        let summary = serde_json::json!({"status": "completed", "final_eval_acc": 1.0, "total_time_s": 1.0, "trainable_params": 7});
        let entry = results::RecordedCell { config: a.config_toml().unwrap(), summary, eval_curve: Vec::new(), note: None };
        record.cells.insert(a.name.clone(), entry);
        assert!(finished_elsewhere(&runs, &record, a));
        assert!(!finished_elsewhere(&runs, &record, b));
        std::fs::create_dir_all(runs.join("a")).unwrap();
        std::fs::write(runs.join("a/metrics.jsonl"), "{\"step\": 10}\n").unwrap();
        assert_eq!(cell_state(&runs.join("a")), CellState::Partial);
        assert!(finished_elsewhere(&runs, &record, a));
        std::fs::write(runs.join("a/summary.json"), r#"{"status": "completed", "total_time_s": 1.0, "trainable_params": 7}"#).unwrap();
        assert!(!finished_elsewhere(&runs, &record, a), "done here");
        let changed = grid::parse(&TINY.replace("\"train.steps\" = 40", "\"train.steps\" = 50"), Path::new("tiny.toml")).unwrap();
        assert_eq!(changed.cells[0].name, a.name);
        assert!(!finished_elsewhere(&dir.join("elsewhere"), &record, &changed.cells[0]));
        // The keys' order in the grid file does not matter.
        let reordered =
            grid::parse(&TINY.replace("batch_size = 8\nlog_every = 10", "log_every = 10\nbatch_size = 8"), Path::new("tiny.toml")).unwrap();
        assert_ne!(reordered.cells[0].config_toml().unwrap(), a.config_toml().unwrap());
        assert!(finished_elsewhere(&dir.join("elsewhere"), &record, &reordered.cells[0]));
    }

    #[test]
    fn a_killed_cell_resumes_and_completed_cells_are_never_rerun() {
        let dir = scratch("kill");
        let grid = grid::parse(TINY, Path::new("tiny.toml")).unwrap();
        let runs = dir.join("runs");
        let mut run = GridRun {
            runs_dir: runs.clone(),
            fpt: fpt(),
            devices: vec!["cpu".into()],
            extra_env: vec![("FPT_STOP_AFTER_STEP".into(), "120".into())],
        };
        let failures = run_cells(&run, &grid.cells, &Stop::new(0)).failures;
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].contains("cell b failed"));
        assert_eq!(cell_state(&runs.join("a")), CellState::Done);
        assert_eq!(cell_state(&runs.join("b")), CellState::Partial);
        let a_summary = std::fs::metadata(runs.join("a/summary.json")).unwrap().modified().unwrap();

        run.extra_env.clear();
        let Outcome { spans, failures, .. } = run_cells(&run, &grid.cells, &Stop::new(0));
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(spans.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(), vec!["b"], "only the unfinished cell runs");
        assert_eq!(std::fs::metadata(runs.join("a/summary.json")).unwrap().modified().unwrap(), a_summary);
        let steps: Vec<u64> = metrics(&runs.join("b")).iter().map(|l| l["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, (1..=20).map(|i| i * 10).collect::<Vec<_>>(), "no gap, no duplicate");

        // The resumed cell's curve equals an uninterrupted run of the same cell.
        let straight = GridRun { runs_dir: dir.join("straight"), fpt: fpt(), devices: vec!["cpu".into()], extra_env: Vec::new() };
        let f = run_cells(&straight, &grid.cells[1..], &Stop::new(0)).failures;
        assert!(f.is_empty());
        assert_eq!(values(&metrics(&runs.join("b"))), values(&metrics(&dir.join("straight/b"))));

        // A third pass runs nothing; the results table counts each cell once.
        let spans = run_cells(&run, &grid.cells, &Stop::new(0)).spans;
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
        let Outcome { spans, failures, .. } = run_cells(&run, &grid.cells, &Stop::new(0));
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(spans.len(), 2);
        let (a, b) = (&spans[0], &spans[1]);
        assert!(a.1 < b.2 && b.1 < a.2, "the two cells did not overlap in time: {spans:?}");
    }

    /// `--jobs N`: N workers on the one device, sharing the cores through OMP_NUM_THREADS;
    /// `--gpus`: one worker per GPU; the two together are refused.
    #[test]
    fn jobs_and_gpus_decide_the_workers() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let workers_of = |line: &str, cells: usize, cores: usize| {
            let cli = <Cli as clap::Parser>::try_parse_from(line.split_whitespace()).unwrap();
            workers(&cli.args, cells, cores)
        };
        let env = |threads: &str| vec![("OMP_NUM_THREADS".to_string(), threads.to_string())];
        assert_eq!(workers_of("reproduce", 9, 2).unwrap(), (vec!["auto".to_string()], vec![]));
        assert_eq!(workers_of("reproduce --jobs 2 --device cpu", 9, 2).unwrap(), (vec!["cpu".to_string(); 2], env("1")));
        assert_eq!(workers_of("reproduce --jobs 4", 9, 16).unwrap(), (vec!["auto".to_string(); 4], env("4")));
        // No more workers than cells.
        assert_eq!(workers_of("reproduce --jobs 4 --device cpu", 1, 16).unwrap(), (vec!["cpu".to_string()], vec![]));
        assert!(workers_of("reproduce --jobs 0", 9, 2).unwrap_err().to_string().contains("--jobs 0"));
        if std::env::var_os("FPT_GPU_STANDIN").is_none() {
            assert_eq!(workers_of("reproduce --gpus 0,1", 9, 2).unwrap(), (vec!["cuda:0".to_string(), "cuda:1".to_string()], vec![]));
        }
        assert!(workers_of("reproduce --gpus 0,1 --jobs 2", 9, 2).unwrap_err().to_string().contains("--gpus"));
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
        let status = Command::new("bash")
            .arg(&script)
            .env("SLURM_ARRAY_TASK_ID", "1")
            .env("FPT_DEVICE", "cpu")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(cell_state(&runs.join("b")), CellState::Done);
        assert_eq!(cell_state(&runs.join("a")), CellState::Pending);
    }

    #[test]
    fn regress_fails_when_an_expectation_is_raised() {
        let dir = scratch("regress");
        let base = TINY.replace(
            "[axes.cell]\na = { \"train.steps\" = 40 }\nb = { \"train.steps\" = 200 }\n",
            "[axes.cell]\nxor = { \"train.steps\" = 30 }\n",
        );
        for (expected, should_pass) in [(0.0, true), (1.01, false)] {
            let grid_file = dir.join(format!("grid-{expected}.toml"));
            std::fs::write(
                &grid_file,
                format!("{base}\n[expectations.xor]\naccuracy = {expected}\ntolerance = 0.0\nproduced_by = \"test\"\n"),
            )
            .unwrap();
            let rows = regress::regress(&grid_file, &dir.join("runs"), &fpt(), "cpu").unwrap();
            assert_eq!(rows.len(), 1);
            assert!(rows[0].got.is_some());
            assert_eq!(rows[0].passed(), should_pass, "{rows:?}");
        }
        let missing = dir.join("noexp.toml");
        std::fs::write(&missing, &base).unwrap();
        assert!(regress::regress(&missing, &dir.join("runs"), &fpt(), "cpu").is_err());
    }

    /// Sharing a grid between processes (the lock, exit 73) and stopping it by signal, with a
    /// stand-in for `fpt train`, so none of this needs the real binary.
    mod sharing {
        use super::*;
        use std::os::unix::fs::MetadataExt;
        use std::process::Stdio;

        /// Stands in for `fpt train … --out DIR`; what a cell does comes from `FAKE_<cell>`:
        /// ok (writes a completed summary), held (exit 73), fail (exit 1), train (runs until
        /// SIGTERM, then "checkpoints" for 0.3 s and exits 143). Each step goes to DIR/events.
        const FAKE_FPT: &str = r#"#!/usr/bin/env bash
[ "${1:-}" = probe ] && exit 0
out="${@: -1}"
cell=$(basename "$out")
var="FAKE_$cell"
echo started >> "$out/events"
case "${!var:-ok}" in
  ok) echo '{"status":"completed","final_eval_acc":1.0,"steps_to_target":null,"total_time_s":1.0,"trainable_params":7}' > "$out/summary.json" ;;
  held) echo "fpt: $out is in use by another fpt process (pid 1); not touching it" >&2; exit 73 ;;
  fail) echo "fpt: boom" >&2; exit 1 ;;
  train)
    trap 'echo interrupted >> "$out/events"; sleep 0.3; echo checkpointed >> "$out/events"; exit 143' TERM
    # Bounded, so a broken test leaves no stray process for long.
    for _ in $(seq 400); do sleep 0.05; done
    echo "never signalled" >> "$out/events"; exit 1 ;;
esac
"#;

        fn fake_fpt(dir: &Path) -> PathBuf {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.join("fpt");
            std::fs::write(&path, FAKE_FPT).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            // A child forked by another test thread while the script was open for writing keeps
            // it "busy" (ETXTBSY) until that child execs; wait until it runs.
            for _ in 0..100 {
                match Command::new(&path).arg("probe").status() {
                    Ok(s) if s.success() => return path,
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            panic!("{} never became runnable", path.display());
        }

        fn fake_grid(cells: &[&str]) -> Grid {
            let header = &TINY[..TINY.find("[axes.cell]").unwrap()];
            let axis: String = cells.iter().map(|c| format!("{c} = {{ \"train.steps\" = 1 }}\n")).collect();
            grid::parse(&format!("{header}[axes.cell]\n{axis}"), Path::new("fake.toml")).unwrap()
        }

        fn fake_run(dir: &Path, devices: usize, behaviours: &[(&str, &str)]) -> GridRun {
            GridRun {
                runs_dir: dir.join("runs"),
                fpt: fake_fpt(dir),
                devices: vec!["cpu".into(); devices],
                extra_env: behaviours.iter().map(|(cell, b)| (format!("FAKE_{cell}"), b.to_string())).collect(),
            }
        }

        fn events(run: &GridRun, cell: &str) -> Vec<String> {
            std::fs::read_to_string(run.runs_dir.join(cell).join("events"))
                .map(|t| t.lines().map(String::from).collect())
                .unwrap_or_default()
        }

        /// Polls until `cond` holds; false after `secs`.
        fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(secs) {
                if cond() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        }

        #[test]
        fn a_held_cell_is_skipped_not_failed_and_the_table_still_builds() {
            let dir = scratch("held");
            let grid = fake_grid(&["a", "b", "c"]);
            let run = fake_run(&dir, 1, &[("a", "held"), ("c", "fail")]);
            let outcome = run_cells(&run, &grid.cells, &Stop::new(0));
            assert_eq!(outcome.held, vec!["a"]);
            assert_eq!(outcome.failures.len(), 1, "{outcome:?}");
            assert!(outcome.failures[0].contains("cell c failed"), "{outcome:?}");
            assert!(outcome.interrupted.is_empty() && outcome.signal == 0, "{outcome:?}");
            assert_eq!(events(&run, "b"), vec!["started"], "the worker went on after the held cell");
            assert_eq!(cell_state(&run.runs_dir.join("a")), CellState::Pending);
            assert_eq!(cell_state(&run.runs_dir.join("b")), CellState::Done);
            let note = held_note(&outcome).unwrap();
            assert!(note.starts_with("1 cell(s) skipped because another process is training them (a)"), "{note}");
            let err = conclude(&outcome, "rerun").unwrap_err();
            assert_eq!(crate::util::exit_code(&err), 1);
            assert!(!format!("{err:#}").contains("cell a"), "a held cell is not a failure: {err:#}");

            // The table is written from whatever completed: n = 0/1 for the held cell.
            let md = results::write(&grid, &run.runs_dir, &dir.join("results"), &toml::Table::new(), "test").unwrap();
            let text = std::fs::read_to_string(md).unwrap();
            assert!(text.contains("| bit-xor | a | 0/1 | — |") && text.contains("| bit-xor | b | 1/1 | 100.0 |"), "{text}");

            // Held alone ends well: the other process is doing the work.
            let run = fake_run(&dir, 1, &[("a", "held"), ("c", "ok")]);
            let outcome = run_cells(&run, &grid.cells, &Stop::new(0));
            assert_eq!((outcome.held.clone(), outcome.failures.len()), (vec!["a".to_string()], 0));
            assert!(conclude(&outcome, "rerun").is_ok());
        }

        #[test]
        fn a_stop_sends_sigterm_to_every_running_cell_waits_for_them_and_starts_no_other() {
            let dir = scratch("stop");
            let grid = fake_grid(&["a", "b", "c"]);
            let run = fake_run(&dir, 2, &[("a", "train"), ("b", "train")]);
            let stop = Stop::new(0);
            let outcome = std::thread::scope(|scope| {
                scope.spawn(|| {
                    // Both workers are training; then the "signal" arrives (set anyway on timeout,
                    // so a broken run fails the asserts instead of hanging).
                    eventually(20, || events(&run, "a") == ["started"] && events(&run, "b") == ["started"]);
                    stop.store(libc::SIGTERM as usize, Ordering::SeqCst);
                });
                run_cells(&run, &grid.cells, &stop)
            });
            let mut interrupted = outcome.interrupted.clone();
            interrupted.sort();
            assert_eq!(interrupted, vec!["a", "b"], "{outcome:?}");
            assert!(outcome.failures.is_empty(), "exit 143 after our SIGTERM is no failure: {outcome:?}");
            assert_eq!(outcome.not_started, vec!["c"]);
            assert!(!run.runs_dir.join("c").exists(), "no new cell started after the stop");
            for cell in ["a", "b"] {
                // "checkpointed" comes 0.3 s after the signal: run_cells waited for the exit.
                assert_eq!(events(&run, cell), vec!["started", "interrupted", "checkpointed"], "cell {cell}");
            }
            let err = conclude(&outcome, "cargo xtask reproduce --grid fake.toml").unwrap_err();
            assert_eq!(crate::util::exit_code(&err), 143);
            let text = format!("{err:#}");
            assert!(
                text.starts_with("stopped by SIGTERM") && (text.contains("resumes them): a, b") || text.contains("resumes them): b, a")),
                "{text}"
            );
            assert!(text.contains("1 cell(s) not started"), "{text}");

            let by_sigint = Outcome { signal: libc::SIGINT as usize, ..outcome };
            assert_eq!(crate::util::exit_code(&conclude(&by_sigint, "rerun").unwrap_err()), 130);
        }

        #[test]
        fn how_fpt_ends_decides_skip_interrupt_or_failure() {
            let end = |raw| classify(ExitStatus::from_raw(raw));
            assert_eq!(end(0), Some(CellEnd::Done));
            assert_eq!(end(HELD_EXIT_CODE << 8), Some(CellEnd::Held));
            assert_eq!(end(INTERRUPTED_EXIT_CODE << 8), Some(CellEnd::Interrupted));
            assert_eq!(end(130 << 8), Some(CellEnd::Interrupted));
            assert_eq!(end(libc::SIGTERM), Some(CellEnd::Interrupted), "killed by SIGTERM outright");
            assert_eq!(end(libc::SIGKILL), None, "SIGKILL (e.g. the OOM killer) is a failure");
            assert_eq!(end(75 << 8), None, "FPT_STOP_AFTER_STEP's exit is a failure");
            assert_eq!(end(1 << 8), None);
        }

        /// Set in the copy of this test binary that the real-signal test starts.
        const CHILD_ENV: &str = "XTASK_TEST_SIGTERM_CHILD_DIR";

        #[test]
        fn a_real_sigterm_is_forwarded_and_the_process_exits_143() {
            let grid = fake_grid(&["a", "b"]);
            if let Some(dir) = std::env::var_os(CHILD_ENV) {
                // The child: the same path as `cargo xtask reproduce`, minus set-up and results.
                let dir = PathBuf::from(dir);
                let run = GridRun {
                    runs_dir: dir.join("runs"),
                    fpt: dir.join("fpt"),
                    devices: vec!["cpu".into()],
                    extra_env: vec![("FAKE_a".into(), "train".into())],
                };
                let stop = stop_on_signals().unwrap();
                let outcome = run_cells(&run, &grid.cells, &stop);
                let code = conclude(&outcome, "rerun").map_or_else(
                    |e| {
                        eprintln!("{}", crate::util::error_text(&e));
                        crate::util::exit_code(&e)
                    },
                    |()| 0,
                );
                std::process::exit(code.into());
            }
            let dir = scratch("sigterm");
            fake_fpt(&dir);
            let name = format!("{}::a_real_sigterm_is_forwarded_and_the_process_exits_143", module_path!().split_once("::").unwrap().1);
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, &dir)
                // A user's stop is reported without a stack backtrace even where they are on.
                .env("RUST_BACKTRACE", "1")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let a_events = dir.join("runs/a/events");
            let started = eventually(30, || std::fs::read_to_string(&a_events).is_ok_and(|t| t == "started\n"));
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let exited = eventually(30, || matches!(child.try_wait(), Ok(Some(_))));
            if !exited {
                let _ = child.kill();
            }
            let output = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(started && exited, "started {started}, exited {exited}: {stderr}");
            assert_eq!(output.status.code(), Some(143), "{stderr}");
            assert_eq!(std::fs::read_to_string(&a_events).unwrap(), "started\ninterrupted\ncheckpointed\n", "forwarded, and waited for");
            assert!(!dir.join("runs/b").exists(), "no cell started after the signal");
            assert!(stderr.contains("Error: stopped by SIGTERM; interrupted (checkpointed; `rerun` resumes them): a"), "{stderr}");
            assert!(!stderr.contains("backtrace"), "a stop the user asked for is not a bug: {stderr}");
        }

        #[test]
        fn a_locked_run_directory_shows_as_running_elsewhere() {
            let dir = scratch("locked");
            assert_eq!(describe_state(&dir), "pending", "no lock file: nobody holds it");
            let mut lock = std::fs::File::create(dir.join(LOCK_FILE)).unwrap();
            assert_eq!(describe_state(&dir), "pending", "a lock file nobody holds");
            // flock locks belong to the open file, so this one conflicts with the probe's.
            lock.lock().unwrap();
            assert_eq!(held_elsewhere(&dir).as_deref(), Some(""));
            assert_eq!(describe_state(&dir), "running elsewhere (another process holds its lock)");
            std::io::Write::write_all(&mut lock, b"pid 4242\n").unwrap();
            assert_eq!(describe_state(&dir), "running elsewhere (pid 4242 holds its lock)");
            lock.unlock().unwrap();
            assert_eq!(held_elsewhere(&dir), None);
            assert_eq!(describe_state(&dir), "pending");
        }

        #[test]
        fn a_cell_config_is_replaced_by_rename_and_only_when_it_changed() {
            let dir = scratch("cellconfig");
            let mut grid = fake_grid(&["a"]);
            let path = write_cell_config(&dir, &grid.cells[0]).unwrap();
            let inode = std::fs::metadata(&path).unwrap().ino();
            write_cell_config(&dir, &grid.cells[0]).unwrap();
            assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode, "unchanged: left alone");
            grid.cells[0].config.insert("seed".into(), toml::Value::Integer(7));
            write_cell_config(&dir, &grid.cells[0]).unwrap();
            assert_ne!(std::fs::metadata(&path).unwrap().ino(), inode, "changed: a new file renamed over it");
            assert!(std::fs::read_to_string(&path).unwrap().contains("seed = 7"));
            let names: Vec<String> =
                std::fs::read_dir(dir.join("a")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
            assert_eq!(names, vec!["cell.toml"], "no temp file left");
        }

        #[test]
        fn a_slurm_task_leaves_a_held_cell_alone_and_passes_sigterm_on() {
            let dir = scratch("slurm-fake");
            let grid = fake_grid(&["a", "b", "c"]);
            let runs = dir.join("runs");
            let script = dir.join("job.sh");
            emit_slurm(&grid, &grid.cells, &runs, &fake_fpt(&dir), &script).unwrap();
            let task = |i: &str| {
                let mut cmd = Command::new("bash");
                cmd.arg(&script).env("SLURM_ARRAY_TASK_ID", i).env("FAKE_a", "held").env("FAKE_b", "fail").env("FAKE_c", "train");
                cmd
            };
            let held = task("0").output().unwrap();
            assert_eq!(held.status.code(), Some(0), "{held:?}");
            assert!(String::from_utf8_lossy(&held.stdout).contains("cell a is being trained by another process"), "{held:?}");
            assert_eq!(
                task("1").stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap().code(),
                Some(1),
                "a failure still fails the task"
            );

            let mut shell = task("2").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
            let c_events = runs.join("c/events");
            let started = eventually(20, || std::fs::read_to_string(&c_events).is_ok_and(|t| t == "started\n"));
            // Only the shell is signalled, as `scancel --batch` does.
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(shell.id() as libc::pid_t, libc::SIGTERM) };
            let exited = eventually(20, || matches!(shell.try_wait(), Ok(Some(_))));
            if !exited {
                let _ = shell.kill();
            }
            let status = shell.wait().unwrap();
            assert!(started && exited, "started {started}, exited {exited}");
            assert_eq!(status.code(), Some(143), "fpt's own exit status");
            assert_eq!(std::fs::read_to_string(&c_events).unwrap(), "started\ninterrupted\ncheckpointed\n");
        }
    }
}
