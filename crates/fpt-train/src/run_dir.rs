//! The run directory's files: `config.toml` (the resolved config), `metrics.jsonl` (one line per
//! logged step), `summary.json`, and the `.lock` that marks a directory being trained in (the
//! checkpoint is `run_checkpoint.rs`'s, the TensorBoard events `tensorboard.rs`'s).

use crate::config::RunConfig;
use anyhow::{bail, Context, Result};
use fpt_tasks::{EvalBatches, Padding, Skipped, Split, SplitCounts, Task};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

pub const METRICS: &str = "metrics.jsonl";
pub const SUMMARY: &str = "summary.json";
pub const CONFIG: &str = "config.toml";
/// Exit status when another process holds the run directory (`cargo xtask reproduce` then
/// moves on to its next cell).
pub const IN_USE_EXIT_CODE: i32 = 73;
/// The lock file that marks a run directory as being trained in.
pub const LOCK: &str = ".lock";

/// Another process is training in the run directory.
#[derive(Debug)]
pub struct RunInUse {
    pub dir: PathBuf,
    pub holder: String,
}

impl std::fmt::Display for RunInUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is in use by another fpt process ({}); not touching it", self.dir.display(), self.holder)
    }
}

impl std::error::Error for RunInUse {}

/// Held while a process trains in a run directory: an exclusive `flock` on `<dir>/.lock`,
/// released by the kernel when the process ends, however it ends (no stale locks).
pub struct RunLock {
    _file: std::fs::File,
}

pub fn lock_run_dir(dir: &Path) -> Result<RunLock> {
    let path = dir.join(LOCK);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening the run lock {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
            return Err(RunInUse { dir: dir.to_path_buf(), holder: holder.unwrap_or_else(|| "pid unknown".into()) }.into());
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(e).with_context(|| format!("locking {}", path.display())),
    }
    // Who holds it, for the other process's message; the lock itself is the flock.
    file.set_len(0).and_then(|_| write!(file, "pid {}", std::process::id())).with_context(|| format!("writing {}", path.display()))?;
    Ok(RunLock { _file: file })
}

/// Marks the summary of a run that stopped on an error as failed, with the error, so nothing
/// reads as `running` that is not. Best effort: the error being reported may be a full disk.
pub(crate) fn mark_failed(dir: &Path, err: &anyhow::Error) {
    let Some(mut s) = read_summary(dir) else { return };
    s.status = Status::Failed;
    s.error = Some(format!("{err:#}"));
    let written = serde_json::to_string_pretty(&s).map_err(anyhow::Error::from).and_then(|text| write_atomic(&dir.join(SUMMARY), &text));
    if let Err(e) = written {
        eprintln!("fpt: could not mark {} failed: {e:#}", dir.join(SUMMARY).display());
    }
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsLine {
    pub step: u64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub eval_loss: Option<f64>,
    /// Evaluation accuracy as reported: on the examples evaluated, times the task's accuracy
    /// scale (1 but for the reference's remote homology, 0.9739).
    pub eval_acc: Option<f64>,
    /// The accuracy on the examples evaluated, before the scale; only where the scale is not 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_acc_unscaled: Option<f64>,
    pub samples_per_s: f64,
    pub wall_s: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Completed,
    Failed,
    /// Stopped on SIGTERM or SIGINT with a checkpoint; `--resume` continues it.
    Interrupted,
}

/// `summary.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub status: Status,
    pub steps: u64,
    pub steps_done: u64,
    pub final_eval_acc: Option<f64>,
    pub final_eval_loss: Option<f64>,
    pub best_eval_acc: Option<f64>,
    pub best_step: Option<u64>,
    pub target_accuracy: Option<f64>,
    /// First step whose evaluation reached `target_accuracy` (the paper's Table 6 measure).
    pub steps_to_target: Option<u64>,
    pub total_time_s: f64,
    pub trainable_params: i64,
    pub error: Option<String>,
    /// What the data pipeline left out or changed, so no example is lost silently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataReport>,
}

/// The data a run trained and evaluated on: per split what loading dropped or truncated, and
/// what batching skipped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataReport {
    /// Per split: examples in the source, kept, dropped, truncated, kept over the length limit,
    /// and the rule (empty for tasks that keep every example as it is).
    pub splits: Vec<SplitCounts>,
    /// How examples are padded (`none`, `masked`, `fixed`, `batch`: fpt_tasks::Padding).
    pub padding: Padding,
    pub eval_split: Split,
    /// Examples each evaluation visits.
    pub eval_examples: usize,
    /// Evaluation batches skipped (and their examples) for holding an example over the limit.
    pub eval_skipped: Skipped,
    /// Training batches skipped so far, for the same reason.
    pub train_skipped: Skipped,
    /// Reported accuracy = accuracy on the evaluated examples × this.
    pub accuracy_scale: f64,
}

impl DataReport {
    pub(crate) fn new(task: &dyn Task, eval_split: Split, evals: &EvalBatches) -> Self {
        DataReport {
            splits: task.counts(),
            padding: task.spec().padding,
            eval_split,
            eval_examples: evals.len(),
            eval_skipped: evals.skipped(),
            train_skipped: Skipped::default(),
            accuracy_scale: task.accuracy_scale(),
        }
    }
}

pub fn read_summary(dir: &Path) -> Option<Summary> {
    let text = std::fs::read_to_string(dir.join(SUMMARY)).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn read_metrics(dir: &Path) -> Result<Vec<MetricsLine>> {
    let path = dir.join(METRICS);
    let Ok(file) = std::fs::File::open(&path) else { return Ok(Vec::new()) };
    let raw: Vec<String> =
        std::io::BufReader::new(file).lines().collect::<std::io::Result<_>>().with_context(|| format!("reading {}", path.display()))?;
    let mut lines = Vec::new();
    for (i, line) in raw.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(record) => lines.push(record),
            // A process killed mid-write leaves a partial last line; the resume rewrites it.
            Err(_) if i + 1 == raw.len() => {}
            Err(e) => bail!("{}: line {} is not a metrics record ({e})", path.display(), i + 1),
        }
    }
    Ok(lines)
}

pub(crate) fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", tmp.display()))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn summarise(
    cfg: &RunConfig,
    lines: &[MetricsLine],
    status: Status,
    steps_done: u64,
    wall_s: f64,
    trainable: i64,
    error: Option<String>,
    data: Option<DataReport>,
) -> Summary {
    let evals: Vec<&MetricsLine> = lines.iter().filter(|l| l.eval_acc.is_some()).collect();
    let best = evals.iter().copied().fold(None::<&MetricsLine>, |b, l| match b {
        Some(b) if b.eval_acc >= l.eval_acc => Some(b),
        _ => Some(l),
    });
    let target = cfg.train.target_accuracy;
    Summary {
        status,
        steps: cfg.train.steps,
        steps_done,
        final_eval_acc: evals.last().and_then(|l| l.eval_acc),
        final_eval_loss: evals.last().and_then(|l| l.eval_loss),
        best_eval_acc: best.and_then(|l| l.eval_acc),
        best_step: best.map(|l| l.step),
        target_accuracy: target,
        steps_to_target: target.and_then(|t| evals.iter().find(|l| l.eval_acc.unwrap_or(0.0) >= t).map(|l| l.step)),
        total_time_s: wall_s,
        trainable_params: trainable,
        error,
        data,
    }
}
