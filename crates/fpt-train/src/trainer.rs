//! One training run: model and task from a [`RunConfig`], Adam with clipping and gradient
//! accumulation, whole-split evaluation, and a run directory that can be resumed.
//!
//! Run directory: `config.toml` (resolved), `metrics.jsonl` (one line per logged step),
//! `summary.json`, `checkpoint.safetensors`, and TensorBoard `events.out.tfevents.*` files.

use crate::adam::{Adam, AdamConfig};
use crate::backbone::{resolve, ResolvedBackbone};
use crate::config::{Init, RunConfig};
use crate::run_checkpoint::{self, CheckpointMeta};
use crate::tensorboard::EventWriter;
use anyhow::{bail, Context, Result};
use fpt_model::{checkpoint::{build_checked, load_weights}, Fpt, FptConfig, FreezeSpec, InputSpec};
use fpt_tasks::{load_task, loss_and_correct, EvalBatches, InputKind, Task, TrainStream};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

pub const METRICS: &str = "metrics.jsonl";
pub const SUMMARY: &str = "summary.json";
pub const CONFIG: &str = "config.toml";
/// Exit status of a run stopped by the `FPT_STOP_AFTER_STEP` testing hook (EX_TEMPFAIL).
pub const STOPPED_EXIT_CODE: i32 = 75;
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

/// The run stopped on a signal after writing its checkpoint; `--resume` continues it.
#[derive(Debug)]
pub struct Interrupted {
    pub signal: i32,
    pub step: u64,
    pub dir: PathBuf,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stopped by signal {} after step {}; checkpoint written, `fpt train --resume --out {}` continues", self.signal, self.step, self.dir.display())
    }
}

impl std::error::Error for Interrupted {}

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

/// `FPT_STOP_AFTER_STEP`, a testing hook: a step number, or unset.
fn stop_after_step() -> Result<Option<u64>> {
    match std::env::var("FPT_STOP_AFTER_STEP") {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Ok(v) => v.trim().parse().map(Some).with_context(|| format!("FPT_STOP_AFTER_STEP is {v:?}; expected a step number")),
        Err(e) => Err(e).context("FPT_STOP_AFTER_STEP"),
    }
}

/// Marks the summary of a run that stopped on an error as failed, with the error, so nothing
/// reads as `running` that is not. Best effort: the error being reported may be a full disk.
fn mark_failed(dir: &Path, err: &anyhow::Error) {
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
    pub eval_acc: Option<f64>,
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
}

pub struct RunOptions {
    pub out: PathBuf,
    pub device: Device,
    pub resume: bool,
}

pub fn read_summary(dir: &Path) -> Option<Summary> {
    let text = std::fs::read_to_string(dir.join(SUMMARY)).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn read_metrics(dir: &Path) -> Result<Vec<MetricsLine>> {
    let path = dir.join(METRICS);
    let Ok(file) = std::fs::File::open(&path) else { return Ok(Vec::new()) };
    let raw: Vec<String> = std::io::BufReader::new(file).lines().collect::<std::io::Result<_>>().with_context(|| format!("reading {}", path.display()))?;
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

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", tmp.display()))
}

fn summarise(cfg: &RunConfig, lines: &[MetricsLine], status: Status, steps_done: u64, wall_s: f64, trainable: i64, error: Option<String>) -> Summary {
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
    }
}

/// The FPT wrapper's settings for a task.
pub fn fpt_config(cfg: &RunConfig, task: &dyn Task) -> FptConfig {
    let spec = task.spec();
    FptConfig {
        input: match spec.input {
            InputKind::Dense { dim } => InputSpec::Dense { dim: dim as i64 },
            InputKind::Tokens { vocab } => InputSpec::Tokens { vocab: vocab as i64 },
        },
        classes: spec.outputs_per_readout_token() as i64,
        readout_tokens: spec.readout_tokens as i64,
        readout: cfg.model.readout,
        input_hidden: cfg.model.input_hidden.clone(),
        output_hidden: cfg.model.output_hidden.clone(),
        dropout: cfg.model.dropout,
        orth_gain: cfg.model.orth_gain,
    }
}

/// The backbone with `model.shape` applied.
pub fn backbone_for(cfg: &RunConfig) -> Result<ResolvedBackbone> {
    let mut resolved = resolve(&cfg.model)?;
    if let Some(s) = &cfg.model.shape {
        resolved.config = resolved.config.reshaped(s.n_layer, s.n_embd, s.n_head, s.n_positions, s.n_inner).context("model.shape")?;
    }
    Ok(resolved)
}

/// The model (seeded init, pretrained weights loaded when asked) and its trainable tensors by name.
pub fn build_model(cfg: &RunConfig, task: &dyn Task, device: Device) -> Result<(nn::VarStore, Fpt, Vec<(String, Tensor)>)> {
    let backbone = backbone_for(cfg)?;
    let spec = task.spec();
    if spec.seq_len as i64 > backbone.config.max_positions() {
        bail!(
            "task {} has {} tokens but the backbone has {} positions (shorten the task, e.g. max_len, or pick another backbone)",
            spec.name, spec.seq_len, backbone.config.max_positions()
        );
    }
    let freeze = FreezeSpec::parse(&cfg.model.freeze)?;
    tch::manual_seed(cfg.seed as i64);
    let vs = nn::VarStore::new(device);
    let weights = match cfg.model.init {
        Init::Random => None,
        _ => Some(backbone.weights.as_ref().with_context(|| format!("model.init needs weights, but {} has none", backbone.source))?),
    };
    let build = || Fpt::new(&vs.root(), &backbone.config, &fpt_config(cfg, task), &freeze);
    // With weights to load, every shape is checked against the checkpoint before allocation.
    let mut model = match weights {
        Some(dir) => build_checked(dir, build)?,
        None => build()?,
    };
    if let Some(dir) = weights {
        load_weights(&vs, dir).with_context(|| format!("loading weights from {}", dir.display()))?;
        if cfg.model.init == Init::Statistics {
            statistics_only(&vs);
        }
    }
    // After every weight is in place: bf16 converts the frozen matrices once, here.
    model.set_precision(&vs, cfg.train.precision).context("train.precision")?;
    let mut trainable: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    trainable.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((vs, model, trainable))
}

/// Replaces every backbone tensor by normal noise with that tensor's mean and standard
/// deviation (the paper's Table 9). The wrapper's own layers keep their init.
pub fn statistics_only(vs: &nn::VarStore) {
    tch::no_grad(|| {
        for (name, t) in vs.variables() {
            if fpt_model::checkpoint::WRAPPER_PREFIXES.iter().any(|p| name.starts_with(p)) {
                continue;
            }
            let (mean, std) = (t.mean(Kind::Float), if t.numel() > 1 { t.std(true) } else { t.zeros_like() });
            let noise = t.randn_like() * std + mean;
            t.shallow_clone().copy_(&noise);
        }
    });
}

fn step_seed(seed: u64, step: u64) -> i64 {
    let mut z = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step.wrapping_add(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    ((z ^ (z >> 29)) >> 1) as i64
}

/// Mean loss and accuracy over a whole split (eval mode, no gradients).
pub fn evaluate(model: &Fpt, task: &Arc<dyn Task>, cfg: &RunConfig, device: Device) -> Result<(f64, f64)> {
    let spec = task.spec().clone();
    let mut loss_sum = Tensor::zeros([], (Kind::Float, device));
    let mut correct = Tensor::zeros([], (Kind::Int64, device));
    let mut examples = 0usize;
    for batch in EvalBatches::new(task.clone(), cfg.train.eval_split, cfg.train.eval_batch_size, device)? {
        let (loss, c) = tch::no_grad(|| -> Result<(Tensor, Tensor)> {
            let logits = model.forward(&batch.x, false)?;
            loss_and_correct(&spec, &logits, &batch.y)
        })?;
        loss_sum += loss * batch.len as f64;
        correct += c;
        examples += batch.len;
    }
    if examples == 0 {
        bail!("evaluation split {} of task {} is empty (set train.eval_split)", cfg.train.eval_split, spec.name);
    }
    let loss = loss_sum.double_value(&[]) / examples as f64;
    let acc = correct.int64_value(&[]) as f64 / (examples * spec.predictions) as f64;
    Ok((loss, acc))
}

/// Trains (or resumes, or recognises as already done) the run in `opts.out`, holding the run
/// directory's lock throughout. A run that fails after it started is marked failed in its
/// summary, with the error.
pub fn run(cfg_in: &RunConfig, opts: &RunOptions) -> Result<Summary> {
    let dir = &opts.out;
    std::fs::create_dir_all(dir).with_context(|| format!("creating run directory {}", dir.display()))?;
    let _lock = lock_run_dir(dir)?;
    let stop_after = stop_after_step()?;
    let mut started = false;
    let result = crate::oom::catch(|| train(cfg_in, opts, stop_after, &mut started));
    if let Err(e) = &result {
        if started && e.downcast_ref::<Interrupted>().is_none() {
            mark_failed(dir, e);
        }
    }
    result
}

fn train(cfg_in: &RunConfig, opts: &RunOptions, stop_after: Option<u64>, started_summary: &mut bool) -> Result<Summary> {
    let dir = &opts.out;
    let has_checkpoint = dir.join(run_checkpoint::FILE).is_file();
    let started = dir.join(METRICS).exists() || has_checkpoint;
    if let Some(s) = read_summary(dir) {
        if s.status == Status::Completed {
            if opts.resume {
                eprintln!("{}: already completed ({} steps); nothing to do", dir.display(), s.steps_done);
                return Ok(s);
            }
            bail!("{} holds a completed run; choose another --out", dir.display());
        }
    }
    if started && !opts.resume {
        bail!("{} already holds a run; pass --resume to continue it or choose another --out", dir.display());
    }
    // A resumed run keeps the configuration it was started with.
    let cfg = if opts.resume && dir.join(CONFIG).is_file() {
        let stored = RunConfig::load(&dir.join(CONFIG), &[])?;
        if &stored != cfg_in {
            eprintln!("note: resuming with the configuration stored in {}, not the one given", dir.join(CONFIG).display());
        }
        stored
    } else {
        write_atomic(&dir.join(CONFIG), &cfg_in.to_toml()?)?;
        cfg_in.clone()
    };

    let device = opts.device;
    let task = load_task(&cfg.task, cfg.seed)?;
    let (_vs, model, trainable) = build_model(&cfg, task.as_ref(), device)?;
    let n_trainable: i64 = trainable.iter().map(|(_, t)| t.numel() as i64).sum();
    let [beta1, beta2] = cfg.train.betas;
    let mut adam = Adam::new(AdamConfig { lr: cfg.train.lr, beta1, beta2, eps: cfg.train.eps }, trainable);

    let (mut step, wall0) = if opts.resume && has_checkpoint {
        let meta = run_checkpoint::load(dir, &mut adam, cfg.train.steps)?;
        (meta.step, meta.wall_s)
    } else {
        (0, 0.0)
    };
    // Keep exactly the metrics up to the restored step: no gap, no duplicate.
    let (mut lines, dropped): (Vec<MetricsLine>, Vec<MetricsLine>) = read_metrics(dir)?.into_iter().partition(|l| l.step <= step);
    if !dropped.is_empty() {
        // Steps past the checkpoint are retrained; their old lines are kept aside, not lost.
        let aside = dir.join("metrics.discarded.jsonl");
        let mut text = String::new();
        for l in &dropped {
            text.push_str(&serde_json::to_string(l)?);
            text.push('\n');
        }
        std::fs::OpenOptions::new().create(true).append(true).open(&aside).and_then(|mut f| f.write_all(text.as_bytes()))
            .with_context(|| format!("keeping {} metrics lines past step {step} in {}", dropped.len(), aside.display()))?;
        eprintln!("note: resuming at step {step}; {} metrics lines after it moved to {}", dropped.len(), aside.display());
    }
    let mut metrics_text = String::new();
    for l in &lines {
        metrics_text.push_str(&serde_json::to_string(l)?);
        metrics_text.push('\n');
    }
    write_atomic(&dir.join(METRICS), &metrics_text)?;
    let mut metrics = std::fs::OpenOptions::new().append(true).open(dir.join(METRICS)).context("opening metrics.jsonl")?;
    let mut tb = EventWriter::create(dir)?;
    if step > 0 {
        tb.session_start(step as i64 + 1)?;
    }

    let steps = cfg.train.steps;
    let batch_size = cfg.train.batch_size;
    let micro = cfg.micro_batch_size();
    let accum = batch_size / micro;
    let spec = task.spec().clone();
    let mut stream = TrainStream::new(task.clone(), batch_size, cfg.seed, cfg.train.augment)?.at_step(step);
    let bar = progress_bar(steps, step);
    let start = Instant::now();
    let mut window_loss = Tensor::zeros([], (Kind::Float, device));
    let mut window_correct = Tensor::zeros([], (Kind::Int64, device));
    let mut window_batches = 0u64;
    let mut window_time = 0.0f64;
    // Filled on the device (a host scalar copied over every step would make CUDA wait).
    let mut first_bad = Tensor::full([], -1, (Kind::Int64, device));

    let write_summary = |status: Status, done: u64, lines: &[MetricsLine], error: Option<String>| -> Result<Summary> {
        let s = summarise(&cfg, lines, status, done, wall0 + start.elapsed().as_secs_f64(), n_trainable, error);
        write_atomic(&dir.join(SUMMARY), &serde_json::to_string_pretty(&s)?)?;
        Ok(s)
    };
    write_summary(Status::Running, step, &lines, None)?;
    *started_summary = true;

    while step < steps {
        step += 1;
        let t0 = Instant::now();
        tch::manual_seed(step_seed(cfg.seed, step));
        let batch = stream.next_batch(device);
        adam.zero_grad();
        for i in 0..accum {
            let (x, y) = if accum == 1 {
                (batch.x.shallow_clone(), batch.y.shallow_clone())
            } else {
                (batch.x.narrow(0, (i * micro) as i64, micro as i64), batch.y.narrow(0, (i * micro) as i64, micro as i64))
            };
            let logits = model.forward(&x, true)?;
            let (loss, correct) = loss_and_correct(&spec, &logits, &y)?;
            (&loss / accum as f64).backward();
            let loss = loss.detach();
            // Remember the first step with a non-finite loss without a host sync; read when logging.
            let newly_bad = loss.isfinite().logical_not().logical_and(&first_bad.lt(0));
            first_bad = Tensor::full([], step as i64, (Kind::Int64, device)).where_self(&newly_bad, &first_bad);
            window_loss += loss / accum as f64;
            window_correct += correct;
        }
        let _ = adam.clip_grad_norm(cfg.train.grad_clip);
        adam.step();
        window_batches += 1;
        window_time += t0.elapsed().as_secs_f64();

        if stop_after == Some(step) && step < steps {
            // Testing hook: die like a killed process, leaving whatever is on disk.
            eprintln!("FPT_STOP_AFTER_STEP={step}: exiting as if killed");
            std::process::exit(STOPPED_EXIT_CODE);
        }
        let signal = crate::signals::received();
        let is_eval = step % cfg.train.eval_every == 0 || step == steps;
        let is_checkpoint = step % cfg.train.checkpoint_every == 0 || step == steps || signal.is_some();
        if !(step % cfg.train.log_every == 0 || is_eval || is_checkpoint) {
            continue;
        }
        let bad = first_bad.int64_value(&[]);
        if bad >= 0 {
            let msg = format!("non-finite training loss at step {bad}; the run is marked failed");
            bar.abandon();
            write_summary(Status::Failed, step, &lines, Some(msg.clone()))?;
            bail!(msg);
        }
        let train_loss = window_loss.double_value(&[]) / window_batches as f64;
        let train_acc = window_correct.int64_value(&[]) as f64 / (window_batches as usize * batch_size * spec.predictions) as f64;
        let samples_per_s = (window_batches as usize * batch_size) as f64 / window_time.max(1e-9);
        let (eval_loss, eval_acc) = if is_eval {
            let (l, a) = evaluate(&model, &task, &cfg, device)?;
            (Some(l), Some(a))
        } else {
            (None, None)
        };
        let line = MetricsLine { step, train_loss, train_acc, eval_loss, eval_acc, samples_per_s, wall_s: wall0 + start.elapsed().as_secs_f64() };
        writeln!(metrics, "{}", serde_json::to_string(&line)?).context("appending to metrics.jsonl")?;
        metrics.flush()?;
        tb.scalar("train/loss", step as i64, train_loss as f32)?;
        tb.scalar("train/accuracy", step as i64, train_acc as f32)?;
        tb.scalar("train/samples_per_s", step as i64, samples_per_s as f32)?;
        if let (Some(l), Some(a)) = (eval_loss, eval_acc) {
            tb.scalar("eval/loss", step as i64, l as f32)?;
            tb.scalar("eval/accuracy", step as i64, a as f32)?;
        }
        tb.flush()?;
        report(&bar, &line, steps);
        lines.push(line);
        window_loss = Tensor::zeros([], (Kind::Float, device));
        window_correct = Tensor::zeros([], (Kind::Int64, device));
        window_batches = 0;
        window_time = 0.0;
        if is_checkpoint {
            run_checkpoint::save(dir, &adam, CheckpointMeta { step, wall_s: wall0 + start.elapsed().as_secs_f64() })?;
            if let Some(signal) = signal.filter(|_| step < steps) {
                bar.abandon();
                write_summary(Status::Interrupted, step, &lines, None)?;
                return Err(Interrupted { signal, step, dir: dir.clone() }.into());
            }
            write_summary(Status::Running, step, &lines, None)?;
        }
    }
    bar.finish_and_clear();
    write_summary(Status::Completed, step, &lines, None)
}

fn progress_bar(steps: u64, at: u64) -> indicatif::ProgressBar {
    if !std::io::stdout().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(steps);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(at);
    bar
}

fn report(bar: &indicatif::ProgressBar, line: &MetricsLine, steps: u64) {
    let eval = line.eval_acc.map(|a| format!(" eval_acc {:.2}%", a * 100.0)).unwrap_or_default();
    let text = format!("loss {:.4} acc {:.2}%{eval} {:.1} samples/s", line.train_loss, line.train_acc * 100.0, line.samples_per_s);
    if bar.is_hidden() {
        println!("step {}/{steps} {text}", line.step);
    } else {
        bar.set_position(line.step);
        bar.set_message(text);
    }
}
