//! One training run: model and task from a [`RunConfig`], Adam with clipping and gradient
//! accumulation, whole-split evaluation, and a run directory that can be resumed — the loop.
//! The run directory's files are `run_dir.rs`'s, the model's construction `model_build.rs`'s
//! (both re-exported here, where they have always been reachable).
//!
//! Run directory: `config.toml` (resolved), `metrics.jsonl` (one line per logged step),
//! `summary.json`, `checkpoint.safetensors`, and TensorBoard `events.out.tfevents.*` files.

use crate::adam::{Adam, AdamConfig};
use crate::config::RunConfig;
use crate::run_checkpoint::{self, CheckpointMeta};
use crate::run_dir::{mark_failed, summarise, write_atomic};
use crate::tensorboard::EventWriter;
use anyhow::{bail, Context, Result};
use fpt_model::Fpt;
use fpt_tasks::{load_task, loss_and_correct, EvalBatches, Skipped, Task, TrainStream};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

pub use crate::model_build::{backbone_for, build_model, fpt_config, statistics_only};
pub use crate::run_dir::{
    lock_run_dir, read_metrics, read_summary, DataReport, MetricsLine, RunInUse, RunLock, Status, Summary, CONFIG, IN_USE_EXIT_CODE, LOCK,
    METRICS, SUMMARY,
};

/// Exit status of a run stopped by the `FPT_STOP_AFTER_STEP` testing hook (EX_TEMPFAIL).
pub const STOPPED_EXIT_CODE: i32 = 75;

/// The run stopped on a signal after writing its checkpoint; `--resume` continues it.
#[derive(Debug)]
pub struct Interrupted {
    pub signal: i32,
    pub step: u64,
    pub dir: PathBuf,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stopped by signal {} after step {}; checkpoint written, `fpt train --resume --out {}` continues",
            self.signal,
            self.step,
            self.dir.display()
        )
    }
}

impl std::error::Error for Interrupted {}

/// `FPT_STOP_AFTER_STEP`, a testing hook: a step number, or unset.
fn stop_after_step() -> Result<Option<u64>> {
    match std::env::var("FPT_STOP_AFTER_STEP") {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Ok(v) => v.trim().parse().map(Some).with_context(|| format!("FPT_STOP_AFTER_STEP is {v:?}; expected a step number")),
        Err(e) => Err(e).context("FPT_STOP_AFTER_STEP"),
    }
}

pub struct RunOptions {
    pub out: PathBuf,
    pub device: Device,
    pub resume: bool,
}

fn step_seed(seed: u64, step: u64) -> i64 {
    let mut z = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step.wrapping_add(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    ((z ^ (z >> 29)) >> 1) as i64
}

/// One evaluation pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    /// Mean loss over the examples evaluated.
    pub loss: f64,
    /// Accuracy as reported: `unscaled × task.accuracy_scale()`.
    pub acc: f64,
    /// Accuracy on the examples evaluated.
    pub unscaled: f64,
    pub examples: usize,
    /// Batches left out for holding an example over the length limit.
    pub skipped: Skipped,
}

/// Mean loss and accuracy over a whole split (eval mode, no gradients), less the batches the
/// task's length batching skips (counted in the result).
pub fn evaluate(model: &Fpt, task: &Arc<dyn Task>, cfg: &RunConfig, device: Device) -> Result<Evaluation> {
    let spec = task.spec().clone();
    let mut loss_sum = Tensor::zeros([], (Kind::Float, device));
    let mut correct = Tensor::zeros([], (Kind::Int64, device));
    let mut examples = 0usize;
    let batches = EvalBatches::new(task.clone(), cfg.train.eval_split, cfg.train.eval_batch_size, device)?;
    let skipped = batches.skipped();
    for batch in batches {
        let (loss, c) = tch::no_grad(|| -> Result<(Tensor, Tensor)> {
            let logits = model.forward_padded(&batch.x, batch.lengths.as_ref(), false)?;
            loss_and_correct(&spec, &logits, &batch.y)
        })?;
        loss_sum += loss * batch.len as f64;
        correct += c;
        examples += batch.len;
    }
    if examples == 0 {
        let why = if skipped.batches > 0 {
            format!("all {} of its batches hold an example over the length limit and were skipped", skipped.batches)
        } else {
            "it is empty".to_string()
        };
        bail!("evaluation split {} of task {}: {why} (set train.eval_split)", cfg.train.eval_split, spec.name);
    }
    let loss = loss_sum.double_value(&[]) / examples as f64;
    let unscaled = correct.int64_value(&[]) as f64 / (examples * spec.predictions) as f64;
    Ok(Evaluation { loss, acc: unscaled * task.accuracy_scale(), unscaled, examples, skipped })
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
    // Which frozen backbone, task shape and class names the run has (fpt eval / predict check them).
    crate::run_info::record(dir, &cfg, task.as_ref(), device)?;
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
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&aside)
            .and_then(|mut f| f.write_all(text.as_bytes()))
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
    let mut data = DataReport::new(
        task.as_ref(),
        cfg.train.eval_split,
        &EvalBatches::new(task.clone(), cfg.train.eval_split, cfg.train.eval_batch_size, device)?,
    );
    data.train_skipped = stream.skipped();
    let bar = progress_bar(steps, step);
    let start = Instant::now();
    let mut window_loss = Tensor::zeros([], (Kind::Float, device));
    let mut window_correct = Tensor::zeros([], (Kind::Int64, device));
    let mut window_batches = 0u64;
    let mut window_time = 0.0f64;
    // Filled on the device (a host scalar copied over every step would make CUDA wait).
    let mut first_bad = Tensor::full([], -1, (Kind::Int64, device));

    let write_summary = |status: Status, done: u64, lines: &[MetricsLine], error: Option<String>, data: &DataReport| -> Result<Summary> {
        let s = summarise(&cfg, lines, status, done, wall0 + start.elapsed().as_secs_f64(), n_trainable, error, Some(data.clone()));
        write_atomic(&dir.join(SUMMARY), &serde_json::to_string_pretty(&s)?)?;
        Ok(s)
    };
    write_summary(Status::Running, step, &lines, None, &data)?;
    *started_summary = true;

    while step < steps {
        step += 1;
        let t0 = Instant::now();
        tch::manual_seed(step_seed(cfg.seed, step));
        let batch = stream.next_batch(device);
        adam.zero_grad();
        for i in 0..accum {
            let part = if accum == 1 { None } else { Some(batch.narrow(i * micro, micro)) };
            let b = part.as_ref().unwrap_or(&batch);
            let logits = model.forward_padded(&b.x, b.lengths.as_ref(), true)?;
            let (loss, correct) = loss_and_correct(&spec, &logits, &b.y)?;
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
            write_summary(Status::Failed, step, &lines, Some(msg.clone()), &data)?;
            bail!(msg);
        }
        let train_loss = window_loss.double_value(&[]) / window_batches as f64;
        let train_acc = window_correct.int64_value(&[]) as f64 / (window_batches as usize * batch_size * spec.predictions) as f64;
        let samples_per_s = (window_batches as usize * batch_size) as f64 / window_time.max(1e-9);
        let evaluation = if is_eval { Some(evaluate(&model, &task, &cfg, device)?) } else { None };
        let (eval_loss, eval_acc) = (evaluation.map(|e| e.loss), evaluation.map(|e| e.acc));
        let eval_acc_unscaled = evaluation.filter(|_| task.accuracy_scale() != 1.0).map(|e| e.unscaled);
        data.train_skipped = stream.skipped();
        let line = MetricsLine {
            step,
            train_loss,
            train_acc,
            eval_loss,
            eval_acc,
            eval_acc_unscaled,
            samples_per_s,
            wall_s: wall0 + start.elapsed().as_secs_f64(),
        };
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
                write_summary(Status::Interrupted, step, &lines, None, &data)?;
                return Err(Interrupted { signal, step, dir: dir.clone() }.into());
            }
            write_summary(Status::Running, step, &lines, None, &data)?;
        }
    }
    bar.finish_and_clear();
    data.train_skipped = stream.skipped();
    write_summary(Status::Completed, step, &lines, None, &data)
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
