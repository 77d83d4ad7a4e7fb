//! The model of a run config: its backbone resolved (`model.backbone`, `model.shape`), the FPT
//! wrapper's settings for the task, the seeded init, the freeze spec applied (parsed once, with
//! the config), the pretrained weights loaded and the precision set.

use crate::backbone::{resolve, ResolvedBackbone};
use crate::config::{Init, RunConfig};
use anyhow::{bail, Context, Result};
use fpt_model::{
    checkpoint::{build_checked, load_weights},
    Fpt, FptConfig, InputSpec,
};
use fpt_tasks::{InputKind, Task};
use tch::{nn, Device, Kind, Tensor};

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
    if spec.seq_len as i64 > backbone.config.max_input_tokens() {
        bail!(
            "task {} has {} tokens but the backbone takes at most {} ({} positions{}; shorten the task, e.g. max_len, or pick another backbone)",
            spec.name,
            spec.seq_len,
            backbone.config.max_input_tokens(),
            backbone.config.max_positions(),
            if backbone.config.max_input_tokens() < backbone.config.max_positions() { ", one taken by the BOS row" } else { "" }
        );
    }
    tch::manual_seed(cfg.seed as i64);
    let vs = nn::VarStore::new(device);
    let weights = match cfg.model.init {
        Init::Random => None,
        _ => Some(backbone.weights.as_ref().with_context(|| format!("model.init needs weights, but {} has none", backbone.source))?),
    };
    let build = || Fpt::new(&vs.root(), &backbone.config, &fpt_config(cfg, task));
    // With weights to load, every shape is checked against the checkpoint before allocation.
    let mut model = match weights {
        Some(dir) => build_checked(dir, build)?,
        None => build()?,
    };
    model.freeze(&vs, cfg.model.freeze.spec())?;
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
