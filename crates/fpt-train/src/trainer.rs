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
use fpt_model::{checkpoint::load_weights, Fpt, FptConfig, FreezeSpec, InputSpec};
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
    let mut model = Fpt::new(&vs.root(), &backbone.config, &fpt_config(cfg, task), &freeze)?;
    if cfg.model.init != Init::Random {
        let dir = backbone.weights.as_ref().with_context(|| format!("model.init needs weights, but {} has none", backbone.source))?;
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

/// Trains (or resumes, or recognises as already done) the run in `opts.out`.
pub fn run(cfg_in: &RunConfig, opts: &RunOptions) -> Result<Summary> {
    let dir = &opts.out;
    std::fs::create_dir_all(dir).with_context(|| format!("creating run directory {}", dir.display()))?;
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
        let meta = run_checkpoint::load(dir, &mut adam)?;
        (meta.step, meta.wall_s)
    } else {
        (0, 0.0)
    };
    // Keep exactly the metrics up to the restored step: no gap, no duplicate.
    let mut lines: Vec<MetricsLine> = read_metrics(dir)?.into_iter().filter(|l| l.step <= step).collect();
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
    let stop_after: Option<u64> = std::env::var("FPT_STOP_AFTER_STEP").ok().and_then(|v| v.parse().ok());

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
        let is_eval = step % cfg.train.eval_every == 0 || step == steps;
        let is_checkpoint = step % cfg.train.checkpoint_every == 0 || step == steps;
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
