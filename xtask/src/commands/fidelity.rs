//! `cargo xtask fidelity`: the same recipe trained by `fpt train` and by the authors' PyTorch
//! code (`benches/fidelity_ref.py`), for several seeds each, and the test accuracies compared.
//!
//! The cells are an ordinary grid (`experiments/fidelity.toml`, axes `cell` and `seed`); our side
//! runs each cell as `reproduce` does (resumable, locked, stopped cleanly by SIGTERM), and the
//! reference's arguments are translated from the same cell config, so one file says what both
//! sides run. Each run, ours or the reference's, is kept (`runs/fidelity/ours/<cell>/`,
//! `runs/fidelity/reference/<cell>.json`) and not redone: an interrupted table resumes.
//!
//! The rule, per cell group and evaluation step: the difference of the two means is at most one
//! point, or at most two standard errors of that difference (`sqrt(s₁²/n₁ + s₂²/n₂)`, sample
//! standard deviations over seeds). A group passes when every evaluation step passes and both
//! sides train the same number of parameters.

use crate::commands::reproduce::{run_cells, stop_on_signals, terminate, GridRun, Stop};
use crate::commands::setup;
use crate::grid::{self, Cell, Grid};
use crate::results::{read_eval_curve, read_summary};
use crate::util::{cores, describe, machine, share_cores, workspace_root, ExitWith};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Instant;
use toml::{Table, Value};

#[derive(clap::Args)]
pub struct Args {
    /// Seeds per cell (the grid's first N seeds).
    #[arg(long, default_value_t = 3)]
    pub seeds: usize,
    /// Only cells whose name contains this (or matches it, with `*`).
    #[arg(long)]
    pub only: Option<String>,
    /// Fail when a cell group misses the rule or is incomplete.
    #[arg(long)]
    pub check: bool,
    /// Grid file (default: experiments/fidelity.toml).
    #[arg(long)]
    pub grid: Option<PathBuf>,
    /// Where runs go (default: runs/).
    #[arg(long)]
    pub runs: Option<PathBuf>,
    /// Where the table goes (default: results/).
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Only rebuild the table from the runs present; train nothing.
    #[arg(long)]
    pub table_only: bool,
    /// Runs at a time (ours and the reference's alike), each given an equal share of the cores.
    /// On a 2-core CPU `--jobs 2` finishes the table about a third sooner: one thread per run
    /// does 0.67 of two threads' work per step (MiniLM, batch 32, both sides), so two runs side
    /// by side do 1.34 of it.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
}

/// Half-width of the agreement band that always passes, in accuracy (one point).
const ONE_POINT: f64 = 0.01;

/// The value at a dotted path (`train.steps`) of a config table.
fn lookup<'a>(table: &'a Table, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

/// The reference script's arguments for a cell, translated from its `fpt train` config.
pub fn reference_args(cell: &Cell, root: &Path) -> Result<Vec<String>> {
    let c = &cell.config;
    let name = &cell.name;
    let get = |path: &str| lookup(c, path);
    let int = |path: &str| get(path).and_then(Value::as_integer);
    let float = |path: &str| get(path).and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)));
    let text = |path: &str| get(path).and_then(Value::as_str);
    let need_int = |path: &str| int(path).with_context(|| format!("fidelity cell {name}: {path} must be set (an integer)"));

    let task = text("task.name").with_context(|| format!("fidelity cell {name}: task.name is missing"))?;
    let backbone = text("model.backbone").with_context(|| format!("fidelity cell {name}: model.backbone is missing"))?;
    let steps = need_int("train.steps")?;
    let eval_every = int("train.eval_every").unwrap_or(100);
    if steps <= 0 || eval_every <= 0 {
        bail!("fidelity cell {name}: train.steps ({steps}) and train.eval_every ({eval_every}) must be positive");
    }
    // The steps `fpt train` evaluates at: every eval_every, and the last.
    let mut eval_at: Vec<i64> = (1..=steps / eval_every).map(|k| k * eval_every).collect();
    if eval_at.last() != Some(&steps) {
        eval_at.push(steps);
    }
    let mut args = vec!["--task".to_string(), task.to_string()];
    match task {
        "mnist" | "fashion-mnist" => {
            let dir = match text("task.path") {
                Some(p) => PathBuf::from(p),
                None if task == "mnist" => root.join("datasets/mnist"),
                None => {
                    let local = root.join("datasets/fashion-mnist");
                    if local.is_dir() {
                        local
                    } else {
                        PathBuf::from("/usr/share/datasets/fashion-mnist")
                    }
                }
            };
            args.extend(["--data".into(), dir.display().to_string(), "--patch".into(), int("task.patch").unwrap_or(4).to_string()]);
        }
        "bit-xor" => {
            if int("task.patterns").is_some_and(|p| p != 2) {
                bail!("fidelity cell {name}: the reference's bit XOR has 2 patterns");
            }
            args.extend(["--xor-n".into(), int("task.n").unwrap_or(5).to_string()]);
            args.extend(["--eval-examples".into(), int("task.eval_examples").unwrap_or(1000).to_string()]);
        }
        other => bail!("fidelity cell {name}: task {other:?} has no reference counterpart here (mnist, fashion-mnist, bit-xor)"),
    }
    match backbone {
        "minilm" => {
            let dir = std::env::var_os("FPT_MINILM_DIR").map(PathBuf::from).unwrap_or_else(|| root.join(".venv/minilm"));
            args.extend(["--backbone".into(), "minilm".into(), "--model-dir".into(), dir.display().to_string()]);
        }
        "lstm" => {
            args.extend(["--backbone".into(), "lstm".into()]);
            args.extend(["--lstm-layers".into(), int("model.shape.n_layer").unwrap_or(3).to_string()]);
            args.extend(["--lstm-width".into(), int("model.shape.n_embd").unwrap_or(768).to_string()]);
        }
        other => bail!("fidelity cell {name}: backbone {other:?} has no reference counterpart here (minilm, lstm)"),
    }
    let init = text("model.init").unwrap_or("pretrained");
    if !matches!(init, "pretrained" | "random") {
        bail!("fidelity cell {name}: model.init {init:?}: the reference runs pretrained or random");
    }
    if text("model.freeze").unwrap_or("paper") != "paper" {
        bail!("fidelity cell {name}: the reference script trains the paper's freeze only");
    }
    args.extend(["--init".into(), init.into()]);
    args.extend(["--steps".into(), steps.to_string()]);
    args.extend(["--eval-at".into(), eval_at.iter().map(i64::to_string).collect::<Vec<_>>().join(",")]);
    args.extend(["--batch".into(), int("train.batch_size").unwrap_or(16).to_string()]);
    args.extend(["--lr".into(), float("train.lr").unwrap_or(1e-3).to_string()]);
    args.extend(["--dropout".into(), float("model.dropout").unwrap_or(0.1).to_string()]);
    args.extend(["--seed".into(), int("seed").unwrap_or(0).to_string()]);
    match text("train.precision").unwrap_or("fp32") {
        "bf16" => args.push("--bf16".into()),
        "fp32" => {}
        other => bail!("fidelity cell {name}: train.precision {other:?}: expected fp32 or bf16"),
    }
    Ok(args)
}

#[derive(Debug, Deserialize)]
struct ReferenceEval {
    step: u64,
    eval_acc: f64,
}

#[derive(Debug, Deserialize)]
struct ReferenceResult {
    trainable_params: i64,
    evals: Vec<ReferenceEval>,
    wall_s: f64,
}

fn read_reference(path: &Path) -> Option<ReferenceResult> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// One side's results for one seed: accuracy per evaluated step, trainable parameters, seconds
/// (None where the run's summary has no `total_time_s`).
#[derive(Debug, Clone, Default)]
pub struct SideRun {
    pub acc: BTreeMap<u64, f64>,
    pub params: i64,
    pub seconds: Option<f64>,
}

/// The mean time of the runs that have one, and how many lack it.
fn mean_seconds(side: &[SideRun]) -> (Option<f64>, usize) {
    let known: Vec<f64> = side.iter().filter_map(|r| r.seconds).collect();
    let mean = (!known.is_empty()).then(|| known.iter().sum::<f64>() / known.len() as f64);
    (mean, side.len() - known.len())
}

/// Mean and sample standard deviation.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// The verdict for one evaluation step: (Δ of means, two standard errors of Δ, pass).
pub fn compare(ours: &[f64], theirs: &[f64]) -> (f64, f64, bool) {
    let (ma, sa) = mean_std(ours);
    let (mb, sb) = mean_std(theirs);
    let delta = ma - mb;
    let two_se = 2.0 * (sa * sa / ours.len() as f64 + sb * sb / theirs.len() as f64).sqrt();
    // 1e-12: a difference exactly at the band's edge is in it, whatever the float rounding.
    (delta, two_se, delta.abs() <= ONE_POINT + 1e-12 || delta.abs() <= two_se + 1e-12)
}

/// A cell group's row set: per evaluation step, both sides' seeds.
#[derive(Debug, Default)]
pub struct GroupResult {
    pub group: String,
    pub ours: Vec<SideRun>,
    pub theirs: Vec<SideRun>,
    pub expected_seeds: usize,
    pub precision: String,
}

impl GroupResult {
    fn steps(&self) -> Vec<u64> {
        let mut steps: Vec<u64> = self.ours.iter().chain(&self.theirs).flat_map(|r| r.acc.keys().copied()).collect();
        steps.sort_unstable();
        steps.dedup();
        steps
    }

    fn complete(&self) -> bool {
        self.ours.len() >= self.expected_seeds && self.theirs.len() >= self.expected_seeds
    }

    fn same_params(&self) -> bool {
        let mut all = self.ours.iter().chain(&self.theirs).map(|r| r.params);
        let first = all.next();
        all.all(|p| Some(p) == first)
    }

    /// Whether the group passes: complete, same parameter count, every step within the rule.
    pub fn passed(&self) -> bool {
        self.complete()
            && self.same_params()
            && self.steps().iter().all(|&s| {
                let (a, b) = (self.at(&self.ours, s), self.at(&self.theirs, s));
                a.len() >= self.expected_seeds && b.len() >= self.expected_seeds && compare(&a, &b).2
            })
    }

    fn at(&self, side: &[SideRun], step: u64) -> Vec<f64> {
        side.iter().filter_map(|r| r.acc.get(&step).copied()).collect()
    }
}

fn seed_of(cell: &Cell) -> i64 {
    lookup(&cell.config, "seed").and_then(Value::as_integer).unwrap_or(0)
}

fn ours_dir(runs: &Path, cell: &Cell) -> PathBuf {
    runs.join("ours").join(&cell.name)
}

fn reference_path(runs: &Path, cell: &Cell) -> PathBuf {
    runs.join("reference").join(format!("{}.json", cell.name))
}

/// Reads what the runs directory holds for `cells`, grouped. The first `seeds` seeds are the
/// ones a group needs; a later seed counts only where both sides finished it (runs made with a
/// larger `--seeds`), so the two sides are always compared on the same seeds.
pub fn collect(cells: &[Cell], runs: &Path, seeds: usize) -> Vec<GroupResult> {
    let mut groups: Vec<GroupResult> = Vec::new();
    for cell in cells {
        let index = match groups.iter().position(|g| g.group == cell.group) {
            Some(i) => i,
            None => {
                let precision = lookup(&cell.config, "train.precision").and_then(Value::as_str).unwrap_or("fp32").to_string();
                groups.push(GroupResult { group: cell.group.clone(), expected_seeds: seeds, precision, ..Default::default() });
                groups.len() - 1
            }
        };
        let dir = ours_dir(runs, cell);
        let ours = read_summary(&dir).filter(|s| s.status == "completed").map(|summary| SideRun {
            acc: read_eval_curve(&dir).into_iter().collect(),
            params: summary.trainable_params,
            seconds: summary.total_time_s,
        });
        let theirs = read_reference(&reference_path(runs, cell)).map(|r| SideRun {
            acc: r.evals.iter().map(|e| (e.step, e.eval_acc)).collect(),
            params: r.trainable_params,
            seconds: Some(r.wall_s),
        });
        let required = (seed_of(cell) as usize) < seeds;
        if !required && (ours.is_none() || theirs.is_none()) {
            continue;
        }
        let group = &mut groups[index];
        group.ours.extend(ours);
        group.theirs.extend(theirs);
    }
    groups
}

fn pct(x: f64) -> String {
    format!("{:.2}", 100.0 * x)
}

/// The markdown table of `groups`.
pub fn table(groups: &[GroupResult]) -> String {
    let mut md = String::from(
        "| cell | precision | step | fpt % (n) | reference % (n) | Δ points | 2·SE points | verdict | trainable params (fpt / reference) | s per run (fpt / reference) |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for g in groups {
        let params = |side: &[SideRun]| side.first().map(|r| r.params.to_string()).unwrap_or_else(|| "—".into());
        let secs = |side: &[SideRun]| match mean_seconds(side) {
            (None, _) => "—".to_string(),
            (Some(mean), 0) => format!("{mean:.0}"),
            (Some(mean), missing) => format!("{mean:.0} ({missing} without a time)"),
        };
        let steps = g.steps();
        if steps.is_empty() {
            let _ = writeln!(md, "| {} | {} | — | — | — | — | — | not run | — | — |", g.group, g.precision);
            continue;
        }
        for (i, &step) in steps.iter().enumerate() {
            let (a, b) = (g.at(&g.ours, step), g.at(&g.theirs, step));
            let side = |xs: &[f64]| {
                if xs.is_empty() {
                    "—".to_string()
                } else {
                    let (m, s) = mean_std(xs);
                    format!("{} ± {} ({})", pct(m), pct(s), xs.len())
                }
            };
            let (delta, two_se, verdict) = if a.is_empty() || b.is_empty() {
                ("—".into(), "—".into(), "incomplete".to_string())
            } else {
                let (d, se, ok) = compare(&a, &b);
                let complete = a.len() >= g.expected_seeds && b.len() >= g.expected_seeds;
                let verdict = match (ok, complete) {
                    (_, false) => format!("incomplete ({}/{} seeds)", a.len().min(b.len()), g.expected_seeds),
                    (true, true) => "pass".into(),
                    (false, true) => "**FAIL**".into(),
                };
                (format!("{:+.2}", 100.0 * d), format!("{:.2}", 100.0 * se), verdict)
            };
            let (params_cell, secs_cell) = if i == 0 {
                let mismatch = if g.same_params() { "" } else { " **differ**" };
                (format!("{} / {}{mismatch}", params(&g.ours), params(&g.theirs)), format!("{} / {}", secs(&g.ours), secs(&g.theirs)))
            } else {
                (String::new(), String::new())
            };
            let _ = writeln!(
                md,
                "| {} | {} | {step} | {} | {} | {delta} | {two_se} | {verdict} | {params_cell} | {secs_cell} |",
                g.group,
                g.precision,
                side(&a),
                side(&b)
            );
        }
    }
    md
}

/// The command and wall time that a results file written by [`write_results`] names, if it
/// names both.
fn previous_invocation(path: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let command = text.split_once("Made by `")?.1.split_once('`')?.0.to_string();
    let wall = text.split_once("(this invocation: ")?.1.split_once(')')?.0;
    Some((command, format!("this invocation: {wall}")))
}

fn write_results(path: &Path, groups: &[GroupResult], command: &str, elapsed: Option<&str>) -> Result<()> {
    let runs: Vec<&SideRun> = groups.iter().flat_map(|g| g.ours.iter().chain(&g.theirs)).collect();
    let total: f64 = runs.iter().filter_map(|r| r.seconds).sum();
    let untimed = runs.iter().filter(|r| r.seconds.is_none()).count();
    let untimed = if untimed == 0 { String::new() } else { format!(", {untimed} run(s) without a recorded time left out") };
    let passed = groups.iter().filter(|g| g.passed()).count();
    let mut md = String::new();
    let _ = writeln!(md, "# Fidelity: `fpt train` against the authors' PyTorch recipe\n");
    let _ = writeln!(
        md,
        "Made by `{command}` (cells: `experiments/fidelity.toml`; reference: `benches/fidelity_ref.py`, the recipe of the authors' \
         `fpt.py` and `trainer.py`). Machine: {}. Test accuracy on the whole test split (bit XOR: 1,000 fixed examples) at the \
         listed steps, mean ± sample std over seeds (n). Δ = fpt − reference. A step passes when |Δ| ≤ 1 point or |Δ| ≤ 2·SE, \
         SE = sqrt(s₁²/n₁ + s₂²/n₂); a cell passes when every step passes and both sides train the same parameters.\n",
        machine()
    );
    let _ = writeln!(
        md,
        "{passed} of {} cells pass. Training and evaluation time, both sides, all seeds: {:.0} min{untimed}{}.\n",
        groups.len(),
        total / 60.0,
        elapsed.map(|e| format!(" ({e})")).unwrap_or_default()
    );
    md.push_str(&table(groups));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, md).with_context(|| format!("writing {}", path.display()))
}

/// Which implementation a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Ours,
    Reference,
}

/// The runs in the order they start: cell by cell, ours then the reference, so a partial table
/// holds complete pairs (with several jobs, only the pairs in flight may be half done).
fn run_order(cells: &[Cell]) -> VecDeque<(&Cell, Side)> {
    cells.iter().flat_map(|c| [(c, Side::Ours), (c, Side::Reference)]).collect()
}

/// Runs the reference for one cell unless its result exists. Returns false when a stop was asked.
fn run_reference(root: &Path, runs: &Path, cell: &Cell, threads: usize, stop: &Stop) -> Result<bool> {
    let out = reference_path(runs, cell);
    if read_reference(&out).is_some() {
        return Ok(true);
    }
    std::fs::create_dir_all(out.parent().expect("reference path has a parent")).with_context(|| format!("creating {}", runs.display()))?;
    let python = root.join(".venv/bin/python");
    let mut cmd = Command::new(&python);
    cmd.arg(root.join("benches/fidelity_ref.py")).args(reference_args(cell, root)?).arg("--out").arg(&out).current_dir(root);
    cmd.arg("--threads").arg(threads.to_string()).env("OMP_NUM_THREADS", threads.to_string());
    eprintln!("+ {}", describe(&cmd));
    let mut child = cmd.spawn().with_context(|| format!("starting {} (run `cargo xtask setup` first)", python.display()))?;
    loop {
        if let Some(status) = child.try_wait().context("waiting for the reference run")? {
            if !status.success() {
                bail!("reference run for {} failed with {status} ({})", cell.name, describe(&cmd));
            }
            return Ok(true);
        }
        if stop.load(Ordering::SeqCst) != 0 {
            // The reference keeps no checkpoint: it reruns from the start next time.
            terminate(&child)?;
            let _ = child.wait();
            return Ok(false);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf())
}

pub fn select(grid: &Grid, seeds: usize, only: Option<&str>) -> Vec<Cell> {
    grid.cells
        .iter()
        .filter(|c| (seed_of(c) as usize) < seeds && seed_of(c) >= 0)
        .filter(|c| only.is_none_or(|p| grid::matches(p, &c.name)))
        .cloned()
        .collect()
}

pub fn run(args: &Args) -> Result<()> {
    let root = workspace_root();
    let grid_path = args.grid.as_deref().map(absolute).unwrap_or_else(|| root.join("experiments/fidelity.toml"));
    let grid = grid::load(&grid_path)?;
    if args.seeds == 0 {
        bail!("--seeds 0: at least one seed is needed (two for a standard error)");
    }
    let cells = select(&grid, args.seeds, args.only.as_deref());
    if cells.is_empty() {
        bail!("no cell of {} matches --only {:?} with seeds below {}", grid_path.display(), args.only, args.seeds);
    }
    let available = grid.cells.iter().map(seed_of).filter(|s| *s >= 0).max().map_or(0, |m| m as usize + 1);
    if args.seeds > available {
        bail!("--seeds {}: {} lists seeds 0..{available} only", args.seeds, grid_path.display());
    }
    // Translate every cell first: a cell the reference cannot run fails before hours of training.
    for cell in &cells {
        reference_args(cell, &root)?;
    }
    let runs = args.runs.as_deref().map(absolute).unwrap_or_else(|| root.join("runs")).join(&grid.name);
    let results = args.results.as_deref().map(absolute).unwrap_or_else(|| root.join("results")).join(format!("{}.md", grid.name));
    let mut command = format!("cargo xtask fidelity --seeds {}", args.seeds);
    if let Some(only) = &args.only {
        let _ = write!(command, " --only '{only}'");
    }
    if args.jobs > 1 {
        let _ = write!(command, " --jobs {}", args.jobs);
    }
    let start = Instant::now();
    let mut parallel = None;
    // Runs that failed: the others go on, the table is written without them, and the command
    // then fails naming them.
    let mut failed_runs: Vec<String> = Vec::new();
    if !args.table_only {
        // FPT_BIN: an `fpt` built elsewhere (a copy kept stable while the tree changes); then
        // nothing is built here.
        let given = std::env::var_os("FPT_BIN").map(PathBuf::from);
        setup::run(&setup::Args { no_build: given.is_some() })?;
        let fpt = given.unwrap_or_else(|| root.join("target/release/fpt"));
        let stop = stop_on_signals()?;
        // Equal shares, so that the two sides of a cell run on equal footing.
        let (jobs, threads) = share_cores(args.jobs, cores(), cells.len() * 2);
        let run = GridRun {
            runs_dir: runs.join("ours"),
            fpt,
            devices: vec!["cpu".into()],
            extra_env: vec![("OMP_NUM_THREADS".into(), threads.to_string())],
        };
        let queue = Mutex::new(run_order(&cells));
        let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..jobs {
                scope.spawn(|| loop {
                    if stop.load(Ordering::SeqCst) != 0 {
                        break;
                    }
                    let Some((cell, side)) = queue.lock().map(|mut q| q.pop_front()).unwrap_or(None) else { break };
                    let problems: Vec<String> = match side {
                        Side::Ours => {
                            let outcome = run_cells(&run, std::slice::from_ref(cell), &stop);
                            outcome.failures.into_iter().chain(outcome.held).collect()
                        }
                        Side::Reference => match run_reference(&root, &runs, cell, threads, &stop) {
                            Ok(_) => Vec::new(),
                            Err(e) => vec![format!("{e:#}")],
                        },
                    };
                    for problem in problems {
                        eprintln!("fidelity: {problem}");
                        if let Ok(mut e) = errors.lock() {
                            e.push(problem);
                        }
                    }
                });
            }
        });
        let signal = stop.load(Ordering::SeqCst);
        if signal != 0 {
            return Err(ExitWith {
                code: 128 + signal as u8,
                message: format!("stopped by signal {signal}; `{command}` resumes where this stopped"),
            }
            .into());
        }
        failed_runs = errors.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
        parallel = Some((jobs, threads));
    }
    // The table covers the whole grid, whatever `--only` trained, so one results file holds
    // every cell's latest state.
    let everything: Vec<Cell> = grid.cells.iter().filter(|c| seed_of(c) >= 0).cloned().collect();
    let groups = collect(&everything, &runs, args.seeds);
    let elapsed = parallel.map(|(jobs, threads)| {
        let runs = if jobs == 1 { "one run at a time".to_string() } else { format!("{jobs} runs at a time") };
        let each = if threads == 1 { "1 thread".to_string() } else { format!("{threads} threads") };
        format!("this invocation: {:.0} min wall, {runs}, {each} each", start.elapsed().as_secs_f64() / 60.0)
    });
    // A rebuild of the table cannot know the training command's wall time: it keeps the
    // command and the time of the file it replaces.
    let (command, elapsed) = match (args.table_only, previous_invocation(&results)) {
        (true, Some((previous, wall))) => (previous, Some(wall)),
        _ => (command, elapsed),
    };
    write_results(&results, &groups, &command, elapsed.as_deref())?;
    print!("{}", table(&groups));
    println!("results: {}", results.display());
    if !failed_runs.is_empty() {
        bail!("fidelity: {} run(s) failed, and the table lacks them:\n  {}", failed_runs.len(), failed_runs.join("\n  "));
    }
    let failed: Vec<&str> = groups.iter().filter(|g| !g.passed()).map(|g| g.group.as_str()).collect();
    if args.check && !failed.is_empty() {
        bail!("fidelity: {} of {} cells miss the rule or are incomplete: {}", failed.len(), groups.len(), failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> Grid {
        grid::load(&workspace_root().join("experiments/fidelity.toml")).unwrap()
    }

    #[test]
    fn every_cell_translates_to_the_reference_with_the_same_settings() {
        let root = workspace_root();
        let g = grid();
        let cells = select(&g, 3, None);
        assert_eq!(cells.len(), 6 * 3);
        for cell in &cells {
            let args = reference_args(cell, &root).unwrap();
            let value = |flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].clone());
            let cfg = &cell.config;
            let train = cfg["train"].as_table().unwrap();
            assert_eq!(value("--steps").unwrap(), train["steps"].as_integer().unwrap().to_string(), "{}", cell.name);
            assert_eq!(value("--batch").unwrap(), "32");
            assert_eq!(value("--seed").unwrap(), cfg["seed"].as_integer().unwrap().to_string());
            assert_eq!(
                args.contains(&"--bf16".to_string()),
                train.get("precision").and_then(Value::as_str) == Some("bf16"),
                "{}",
                cell.name
            );
            let every = train["eval_every"].as_integer().unwrap();
            let steps = train["steps"].as_integer().unwrap();
            let eval_at: Vec<i64> = value("--eval-at").unwrap().split(',').map(|s| s.parse().unwrap()).collect();
            assert_eq!(*eval_at.last().unwrap(), steps);
            assert!(eval_at.iter().all(|s| s % every == 0 || *s == steps));
        }
        // The LSTM's shape reaches the reference.
        let lstm = cells.iter().find(|c| c.name.starts_with("mnist-lstm")).unwrap();
        let args = reference_args(lstm, &root).unwrap().join(" ");
        assert!(args.contains("--lstm-layers 3") && args.contains("--lstm-width 384") && args.contains("--patch 7"), "{args}");
    }

    #[test]
    fn cells_without_a_reference_counterpart_are_refused_up_front() {
        let root = workspace_root();
        let mut cell = select(&grid(), 1, Some("mnist-minilm__")).remove(0);
        cell.config["model"].as_table_mut().unwrap().insert("backbone".into(), Value::String("gpt2".into()));
        let err = reference_args(&cell, &root).unwrap_err().to_string();
        assert!(err.contains("gpt2") && err.contains(&cell.name), "{err}");
        let mut cell = select(&grid(), 1, Some("mnist-minilm__")).remove(0);
        cell.config["model"].as_table_mut().unwrap().insert("freeze".into(), Value::String("full".into()));
        assert!(reference_args(&cell, &root).is_err());
    }

    #[test]
    fn the_rule_passes_noise_and_catches_a_shift() {
        // Within a point: pass, whatever the spread.
        assert!(compare(&[0.90, 0.91, 0.92], &[0.905, 0.915, 0.925]).2);
        // Three points apart with tight seeds: fail.
        let (d, se, ok) = compare(&[0.90, 0.901, 0.899], &[0.93, 0.931, 0.929]);
        assert!(!ok && (d + 0.03).abs() < 1e-9 && se < 0.01, "{d} {se}");
        // Three points apart, but seeds spread by ±5 points: within two standard errors.
        assert!(compare(&[0.85, 0.90, 0.95], &[0.88, 0.93, 0.98]).2);
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12 && (s - 1.0).abs() < 1e-12);
    }

    #[test]
    fn seeds_past_the_required_count_join_only_when_both_sides_finished_them() {
        let runs = std::env::temp_dir().join(format!("fpt-fidelity-collect-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&runs);
        let cells: Vec<Cell> = grid().cells.into_iter().filter(|c| c.group == "mnist-minilm-random").collect();
        assert!(cells.len() >= 4, "the grid lists at least 4 seeds");
        let write_ours = |cell: &Cell, acc: f64| {
            let dir = ours_dir(&runs, cell);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("summary.json"),
                r#"{"status": "completed", "total_time_s": 1.0, "trainable_params": 7, "final_eval_acc": null, "steps_to_target": null}"#,
            )
            .unwrap();
            std::fs::write(dir.join("metrics.jsonl"), format!("{{\"step\": 1000, \"eval_acc\": {acc}}}\n")).unwrap();
        };
        let write_theirs = |cell: &Cell, acc: f64| {
            let path = reference_path(&runs, cell);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, format!(r#"{{"trainable_params": 7, "evals": [{{"step": 1000, "eval_acc": {acc}}}], "wall_s": 1.0}}"#))
                .unwrap();
        };
        let by_seed = |s: i64| cells.iter().find(|c| seed_of(c) == s).unwrap();
        for s in 0..2 {
            write_ours(by_seed(s), 0.8);
            write_theirs(by_seed(s), 0.8);
        }
        // Seed 2 finished on both sides; seed 3 on ours only: seed 3 must not join.
        write_ours(by_seed(2), 0.5);
        write_theirs(by_seed(2), 0.5);
        write_ours(by_seed(3), 0.1);
        let groups = collect(&cells, &runs, 2);
        assert_eq!((groups[0].ours.len(), groups[0].theirs.len()), (3, 3));
        assert!(groups[0].passed());
        // Required seeds count even when one side lacks them: the group is then incomplete.
        let groups = collect(&cells, &runs, 4);
        assert_eq!((groups[0].ours.len(), groups[0].theirs.len()), (4, 3));
        assert!(!groups[0].passed());
        let _ = std::fs::remove_dir_all(&runs);
    }

    #[test]
    fn the_table_marks_missing_seeds_and_parameter_mismatches() {
        let run = |acc: f64, params: i64| SideRun { acc: [(100, acc)].into_iter().collect(), params, seconds: Some(10.0) };
        let full = GroupResult {
            group: "x".into(),
            ours: vec![run(0.9, 5), run(0.91, 5)],
            theirs: vec![run(0.905, 5), run(0.9, 5)],
            expected_seeds: 2,
            precision: "fp32".into(),
        };
        assert!(full.passed());
        assert!(table(&[full]).contains("| pass |"));
        let partial = GroupResult {
            group: "y".into(),
            ours: vec![run(0.9, 5)],
            theirs: vec![run(0.9, 5), run(0.9, 5)],
            expected_seeds: 2,
            precision: "bf16".into(),
        };
        assert!(!partial.passed());
        assert!(table(&[partial]).contains("incomplete (1/2 seeds)"));
        let differ = GroupResult {
            group: "z".into(),
            ours: vec![run(0.9, 5), run(0.9, 5)],
            theirs: vec![run(0.9, 6), run(0.9, 6)],
            expected_seeds: 2,
            precision: "fp32".into(),
        };
        assert!(!differ.passed());
        assert!(table(&[differ]).contains("**differ**"));
    }

    #[test]
    fn a_run_without_a_time_is_left_out_of_the_mean_time_and_said_so() {
        let run = |seconds: Option<f64>| SideRun { acc: [(100, 0.9)].into_iter().collect(), params: 5, seconds };
        let group = GroupResult {
            group: "x".into(),
            ours: vec![run(Some(10.0)), run(None)],
            theirs: vec![run(None), run(None)],
            expected_seeds: 2,
            precision: "fp32".into(),
        };
        let md = table(std::slice::from_ref(&group));
        assert!(md.contains("| 10 (1 without a time) / — |"), "{md}");
        assert!(!md.contains("NaN"), "{md}");
        let path = std::env::temp_dir().join(format!("fpt-fidelity-untimed-{}.md", std::process::id()));
        write_results(&path, &[group], "cargo xtask fidelity", None).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(text.contains("all seeds: 0 min, 3 run(s) without a recorded time left out."), "{text}");
        assert!(!text.contains("NaN"), "{text}");
    }

    #[test]
    fn jobs_take_each_cell_ours_first() {
        let g = grid();
        let cells = select(&g, 2, Some("bit-xor*"));
        let order: Vec<(String, Side)> = run_order(&cells).into_iter().map(|(c, s)| (c.name.clone(), s)).collect();
        let names: Vec<&str> = order.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["bit-xor-minilm__s0", "bit-xor-minilm__s0", "bit-xor-minilm__s1", "bit-xor-minilm__s1"]);
        assert!(order.iter().step_by(2).all(|(_, s)| *s == Side::Ours));
        assert!(order.iter().skip(1).step_by(2).all(|(_, s)| *s == Side::Reference));
    }

    #[test]
    fn a_table_rebuild_keeps_the_training_command_and_its_wall_time() {
        let dir = std::env::temp_dir().join(format!("fpt-fidelity-results-{}", std::process::id()));
        let path = dir.join("fidelity.md");
        write_results(
            &path,
            &[],
            "cargo xtask fidelity --seeds 3 --jobs 2",
            Some("this invocation: 75 min wall, 2 runs at a time, 1 thread each"),
        )
        .unwrap();
        let (command, wall) = previous_invocation(&path).unwrap();
        assert_eq!(command, "cargo xtask fidelity --seeds 3 --jobs 2");
        assert_eq!(wall, "this invocation: 75 min wall, 2 runs at a time, 1 thread each");
        // A file from a rebuild without a time (or none at all) gives nothing to keep.
        write_results(&path, &[], "cargo xtask fidelity --seeds 3", None).unwrap();
        assert!(previous_invocation(&path).is_none());
        assert!(previous_invocation(&dir.join("missing.md")).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
