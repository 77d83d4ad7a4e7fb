//! `fpt pretrain --task bit-memory --model PRESET --out DIR`: trains a GPT-2 fully on a task (the
//! paper's Bit-Memory pretraining control, Table 2) and saves its backbone as a Hugging Face
//! directory — `config.json` + `model.safetensors` with `GPT2Model`'s names — that
//! `transformers` loads with `GPT2Model.from_pretrained` and run configs use as
//! `model.init = "checkpoint:DIR"`.

use crate::config::{Init, ModelConfig, RunConfig, TrainConfig};
use crate::device::parse_device;
use crate::model_build::{backbone_for, build_model};
use crate::run_checkpoint;
use crate::run_dir::{Status, CONFIG};
use crate::trainer::{self, RunOptions};
use anyhow::{bail, Context, Result};
use fpt_model::BackboneConfig;
use fpt_tasks::{load_task, TaskConfig};
use std::path::{Path, PathBuf};
use tch::Tensor;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The pretraining task (bit-memory for the paper's control; any task works).
    #[arg(long, default_value = "bit-memory")]
    pub task: String,
    /// GPT-2 preset (gpt2, gpt2-medium, …) giving the architecture; weights start random.
    #[arg(long, default_value = "gpt2")]
    pub model: String,
    /// Output Hugging Face directory; the training run goes to DIR/run.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    pub steps: u64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Further run-config overrides (e.g. task.n=100, model.shape.n_layer=2, train.lr=3e-4).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
}

pub fn run_cli(args: &Args) -> Result<()> {
    let device = parse_device(&args.device)?;
    let base = RunConfig {
        seed: args.seed,
        paper_ref: None,
        task: TaskConfig::named(&args.task, None)?,
        model: ModelConfig {
            backbone: args.model.clone(),
            init: Init::Random,
            freeze: crate::config::FreezeText::parse("full")?,
            dropout: 0.1,
            orth_gain: Some(1.41),
            readout: Default::default(),
            input_hidden: vec![],
            output_hidden: vec![],
            shape: None,
        },
        train: TrainConfig { steps: args.steps, ..TrainConfig::default() },
    };
    let mut table = toml::Table::try_from(&base).context("building the pretraining config")?;
    crate::config::apply_overrides(&mut table, &args.set)?;
    let cfg: RunConfig = toml::Value::Table(table).try_into().context("--set gave an invalid pretraining config")?;
    cfg.validate()?;
    let run_dir = args.out.join("run");
    crate::signals::install()?;
    let summary = trainer::run(&cfg, &RunOptions { out: run_dir.clone(), device, resume: true })?;
    if summary.status != Status::Completed {
        bail!("pretraining in {} did not complete", run_dir.display());
    }
    export_backbone(&run_dir, &args.out)?;
    println!(
        "pretrained on {} for {} steps (final eval accuracy {}); Hugging Face directory: {}",
        cfg.task.name(),
        summary.steps_done,
        summary.final_eval_acc.map(|a| format!("{:.2}%", a * 100.0)).unwrap_or_else(|| "-".into()),
        args.out.display()
    );
    Ok(())
}

/// Writes the backbone of a finished run as `config.json` + `model.safetensors` in `out`.
pub fn export_backbone(run_dir: &Path, out: &Path) -> Result<()> {
    let cfg = RunConfig::load(&run_dir.join(CONFIG), &[])?;
    let task = load_task(&cfg.task, cfg.seed)?;
    // Rebuilding with the run's seed reproduces the frozen tensors' init exactly; the checkpoint
    // then restores every trained tensor.
    let (vs, _model, trainable) = build_model(&cfg, task.as_ref(), tch::Device::Cpu)?;
    let mut adam = crate::adam::Adam::new(Default::default(), trainable);
    run_checkpoint::load(run_dir, &mut adam, cfg.train.steps)?;
    let backbone = backbone_for(&cfg)?;
    let BackboneConfig::Gpt2(gpt2) = &backbone.config else {
        bail!("export writes GPT-2 directories; this run's backbone is {}", backbone.config.model_type());
    };
    let mut tensors: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(n, _)| !fpt_model::checkpoint::WRAPPER_PREFIXES.iter().any(|p| n.starts_with(p)))
        .map(|(n, t)| (n, t.detach().contiguous()))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut json = serde_json::to_value(gpt2)?;
    json["architectures"] = serde_json::json!(["GPT2Model"]);
    json["model_type"] = serde_json::json!("gpt2");
    std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}/config.json", out.display()))?;
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            let values = Vec::<f32>::try_from(&t.flatten(0, -1))?;
            Ok((n.clone(), t.size().iter().map(|&d| d as usize).collect(), values.iter().flat_map(|v| v.to_le_bytes()).collect()))
        })
        .collect::<Result<_>>()?;
    let views = owned
        .iter()
        .map(|(n, shape, bytes)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .map_err(|e| anyhow::anyhow!("{n}: {e}"))?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let data = safetensors::serialize(views, Some(metadata)).map_err(|e| anyhow::anyhow!("serialising model.safetensors: {e}"))?;
    std::fs::write(out.join("model.safetensors"), data).with_context(|| format!("writing {}/model.safetensors", out.display()))?;
    Ok(())
}
