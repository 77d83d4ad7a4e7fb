//! A trained run, opened for `fpt eval` and `fpt predict`: its config, its `model.json`
//! ([`crate::run_info`]), and its trained parameters on the frozen backbone it was trained with
//! (checked by identity before anything is evaluated).

use crate::adam::Adam;
use crate::config::RunConfig;
use crate::model_build::build_model;
use crate::run_checkpoint;
use crate::run_dir::{read_summary, Summary, CONFIG};
use crate::run_info::{self, RunModel};
use anyhow::{bail, Context, Result};
use fpt_model::Fpt;
use fpt_tasks::{load_task, Batch, Task, TaskConfig, TaskSpec};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{nn, Device, Tensor};

pub struct TrainedRun {
    pub dir: PathBuf,
    pub cfg: RunConfig,
    /// `model.json`; `None` for runs trained before it existed.
    pub recorded: Option<RunModel>,
    pub summary: Option<Summary>,
}

/// The model of a trained run with its parameters loaded.
pub struct LoadedModel {
    pub _vs: nn::VarStore,
    pub model: Fpt,
    /// The training step the checkpoint holds.
    pub step: u64,
    /// The backbone's identity, checked against the run's.
    pub backbone: String,
}

impl TrainedRun {
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            bail!("{}: no such run directory", dir.display());
        }
        let config = dir.join(CONFIG);
        if !config.is_file() {
            bail!("{}: no {CONFIG}; expected a run directory written by fpt train", dir.display());
        }
        let cfg = RunConfig::load(&config, &[])?;
        if !dir.join(run_checkpoint::FILE).is_file() {
            bail!("{}: no {} (the run has not reached its first checkpoint); nothing trained to use", dir.display(), run_checkpoint::FILE);
        }
        let recorded = run_info::read(dir)?;
        if recorded.is_none() {
            eprintln!(
                "note: {} has no {} (trained before fpt recorded its backbone); the backbone cannot be checked",
                dir.display(),
                run_info::FILE
            );
        }
        Ok(TrainedRun { dir: dir.to_path_buf(), cfg, recorded, summary: read_summary(dir) })
    }

    /// The run's task config, with the run's data settings pinned ([`TaskConfig::pin_to_run`])
    /// and, when given, another data folder.
    pub fn task_config(&self, path: Option<&Path>) -> Result<TaskConfig> {
        let mut task = self.cfg.task.clone();
        if let Some(p) = path {
            task.set_path(p.to_path_buf()).context("--task-path")?;
        }
        if let Some(r) = &self.recorded {
            task.pin_to_run(&r.data, &r.task);
        }
        Ok(task)
    }

    /// The run's task shape: recorded, or (older runs) from loading its task.
    pub fn spec(&self) -> Result<(TaskSpec, fpt_tasks::DataFacts)> {
        match &self.recorded {
            Some(r) => Ok((r.task.clone(), r.data.clone())),
            None => {
                let task = load_task(&self.cfg.task, self.cfg.seed).context("loading the run's task to learn its shape")?;
                Ok((task.spec().clone(), task.facts()))
            }
        }
    }

    pub fn class_names(&self) -> Option<Vec<String>> {
        self.recorded.as_ref().and_then(|r| r.data.class_names.clone())
    }

    /// Fails unless `task` has the shape the run was trained for (same input, predictions,
    /// classes and read-out tokens; the number of tokens may differ).
    pub fn check_shape(&self, task: &dyn Task, what: &str) -> Result<()> {
        let Some(r) = &self.recorded else { return Ok(()) };
        let (want, got) = (&r.task, task.spec());
        let mut diffs = Vec::new();
        if want.input != got.input {
            diffs.push(format!("input {:?} vs the run's {:?}", got.input, want.input));
        }
        if want.predictions != got.predictions || want.readout_tokens != got.readout_tokens {
            diffs.push(format!(
                "{} prediction(s) from {} read-out token(s) vs the run's {} from {}",
                got.predictions, got.readout_tokens, want.predictions, want.readout_tokens
            ));
        }
        if want.classes != got.classes {
            diffs.push(format!("{} classes vs the run's {}", got.classes, want.classes));
        }
        if !diffs.is_empty() {
            bail!("{what} does not have the shape {} was trained for: {}", self.dir.display(), diffs.join("; "));
        }
        Ok(())
    }

    /// Builds the run's model for `task`'s shape on `device`, checks that the frozen backbone is
    /// the one the run was trained on, and loads the trained parameters.
    pub fn load_model(&self, task: &Arc<dyn Task>, device: Device) -> Result<LoadedModel> {
        let current = run_info::backbone_record(&self.cfg, device)?;
        if let Some(r) = &self.recorded {
            run_info::check_backbone(&self.dir, &r.backbone, &current)?;
        }
        let (vs, model, trainable) = build_model(&self.cfg, task.as_ref(), device)?;
        let mut adam = Adam::new(Default::default(), trainable);
        let meta = run_checkpoint::load(&self.dir, &mut adam, self.cfg.train.steps)
            .with_context(|| format!("{} has no usable checkpoint", self.dir.display()))?;
        Ok(LoadedModel { _vs: vs, model, step: meta.step, backbone: current.identity })
    }
}

/// Logits of a batch in eval mode, `[batch, predictions, classes]`, as the trainer computes
/// them (padded batches read out at each example's last real token).
pub fn logits(model: &Fpt, batch: &Batch, spec: &TaskSpec) -> Result<Tensor> {
    let out = tch::no_grad(|| model.forward_padded(&batch.x, batch.lengths.as_ref(), false))?;
    Ok(out.reshape([batch.len as i64, spec.predictions as i64, spec.classes as i64]))
}
