//! A training run as data: `fpt train --config FILE.toml [--set key=value …]`.
//!
//! ```toml
//! seed = 0
//! [task]                     # fpt_tasks::TaskConfig: name plus the task's settings
//! name = "bit-xor"
//! [model]
//! backbone = "gpt2"          # preset, Hugging Face hub id (via the HF cache) or a directory
//! init = "pretrained"        # or "random" (Hugging Face's init, the backbone's shape)
//! freeze = "paper"           # FreezeSpec text: paper | full | all, then +group / -group
//! [train]
//! steps = 1000
//! batch_size = 16
//! lr = 1e-3
//! ```

use anyhow::{bail, Context, Result};
use fpt_model::FreezeSpec;
use fpt_tasks::{Split, TaskConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    #[serde(default)]
    pub seed: u64,
    /// Where this run's number sits in the paper (`experiments/paper_results.toml` key, e.g.
    /// "table1.fpt"); only the results table reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paper_ref: Option<String>,
    pub task: TaskConfig,
    pub model: ModelConfig,
    #[serde(default)]
    pub train: TrainConfig,
}

/// How the backbone's weights start. Written as text: `pretrained`, `random`, `statistics`,
/// or `checkpoint:DIR`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Init {
    /// The backbone's own weights.
    Pretrained,
    /// Hugging Face's random initialisation of the same architecture.
    Random,
    /// Random weights with each pretrained tensor's mean and standard deviation (the paper's
    /// Table 9 "statistics only" control).
    Statistics,
    /// The weights of another Hugging Face directory with the same architecture (e.g. a
    /// Bit-Memory-pretrained GPT-2 from `fpt pretrain`).
    Checkpoint(PathBuf),
}

impl TryFrom<String> for Init {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        match s.as_str() {
            "pretrained" => Ok(Init::Pretrained),
            "random" => Ok(Init::Random),
            "statistics" => Ok(Init::Statistics),
            other => match other.strip_prefix("checkpoint:") {
                Some(dir) if !dir.is_empty() => Ok(Init::Checkpoint(PathBuf::from(dir))),
                _ => Err(format!("model.init {other:?}: expected pretrained, random, statistics or checkpoint:DIR")),
            },
        }
    }
}

impl From<Init> for String {
    fn from(i: Init) -> String {
        match i {
            Init::Pretrained => "pretrained".into(),
            Init::Random => "random".into(),
            Init::Statistics => "statistics".into(),
            Init::Checkpoint(dir) => format!("checkpoint:{}", dir.display()),
        }
    }
}

/// `model.freeze`: the text as written, kept for the run's `config.toml`, and the
/// [`FreezeSpec`] parsed from it once, when the config is read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FreezeText {
    text: String,
    spec: FreezeSpec,
}

impl FreezeText {
    pub fn parse(text: &str) -> Result<Self> {
        Ok(FreezeText { text: text.to_string(), spec: FreezeSpec::parse(text)? })
    }

    pub fn spec(&self) -> &FreezeSpec {
        &self.spec
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl TryFrom<String> for FreezeText {
    type Error = String;
    fn try_from(text: String) -> std::result::Result<Self, String> {
        FreezeText::parse(&text).map_err(|e| format!("model.freeze: {e:#}"))
    }
}

impl From<FreezeText> for String {
    fn from(f: FreezeText) -> String {
        f.text
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub backbone: String,
    #[serde(default = "d::init")]
    pub init: Init,
    #[serde(default = "d::freeze")]
    pub freeze: FreezeText,
    #[serde(default = "d::dropout")]
    pub dropout: f64,
    /// Orthogonal-init gain of the dense input layers, or "none" for PyTorch's default init.
    #[serde(default = "d::orth_gain", with = "fpt_model::orth_gain_text")]
    pub orth_gain: Option<f64>,
    /// Which tokens the output layer reads: "last" (default) or "first" (bidirectional
    /// backbones only make the first token see the whole input).
    #[serde(default)]
    pub readout: fpt_model::Readout,
    #[serde(default)]
    pub input_hidden: Vec<i64>,
    #[serde(default)]
    pub output_hidden: Vec<i64>,
    /// Shape changes for a random-init backbone (tiny models for tests and CPU grids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<ShapeOverride>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ShapeOverride {
    pub n_layer: Option<i64>,
    pub n_embd: Option<i64>,
    pub n_head: Option<i64>,
    pub n_positions: Option<i64>,
    pub n_inner: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    #[serde(default = "d::steps")]
    pub steps: u64,
    #[serde(default = "d::batch_size")]
    pub batch_size: usize,
    /// Examples per forward/backward pass; gradients accumulate over batch_size / micro_batch_size
    /// passes before each update. Defaults to batch_size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub micro_batch_size: Option<usize>,
    #[serde(default = "d::lr")]
    pub lr: f64,
    #[serde(default = "d::betas")]
    pub betas: [f64; 2],
    #[serde(default = "d::eps")]
    pub eps: f64,
    #[serde(default = "d::grad_clip")]
    pub grad_clip: f64,
    #[serde(default = "d::yes")]
    pub augment: bool,
    #[serde(default = "d::log_every")]
    pub log_every: u64,
    #[serde(default = "d::eval_every")]
    pub eval_every: u64,
    #[serde(default = "d::eval_split")]
    pub eval_split: Split,
    #[serde(default = "d::eval_batch_size")]
    pub eval_batch_size: usize,
    #[serde(default = "d::checkpoint_every")]
    pub checkpoint_every: u64,
    /// Eval accuracy whose first attainment is reported as steps-to-threshold (paper Table 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_accuracy: Option<f64>,
    /// "fp32" (default) or "bf16": frozen weight matrices converted to bf16 once at load, the
    /// transformer layers computing in bf16, everything trained and the loss in fp32
    /// (`fpt_model::Precision`).
    #[serde(default)]
    pub precision: fpt_model::Precision,
}

impl Default for TrainConfig {
    fn default() -> Self {
        toml::from_str("").expect("every field has a default")
    }
}

mod d {
    use super::Init;
    use fpt_tasks::Split;
    pub fn init() -> Init {
        Init::Pretrained
    }
    pub fn freeze() -> super::FreezeText {
        super::FreezeText::parse("paper").expect("the default freeze spec parses")
    }
    pub fn dropout() -> f64 {
        0.1
    }
    pub fn orth_gain() -> Option<f64> {
        Some(1.41)
    }
    pub fn steps() -> u64 {
        1000
    }
    pub fn batch_size() -> usize {
        16
    }
    pub fn lr() -> f64 {
        1e-3
    }
    pub fn betas() -> [f64; 2] {
        [0.9, 0.999]
    }
    pub fn eps() -> f64 {
        1e-8
    }
    pub fn grad_clip() -> f64 {
        1.0
    }
    pub fn yes() -> bool {
        true
    }
    pub fn log_every() -> u64 {
        10
    }
    pub fn eval_every() -> u64 {
        100
    }
    pub fn eval_split() -> Split {
        Split::Test
    }
    pub fn eval_batch_size() -> usize {
        64
    }
    pub fn checkpoint_every() -> u64 {
        100
    }
}

impl RunConfig {
    /// Reads a TOML file and applies `key=value` overrides (dotted keys; values parsed as TOML,
    /// falling back to a string).
    pub fn load(path: &Path, overrides: &[String]) -> Result<RunConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading run config {}", path.display()))?;
        let table: toml::Table = toml::from_str(&text).with_context(|| format!("{}: not valid TOML", path.display()))?;
        let resolve = |overrides: &[String]| -> Result<RunConfig> {
            let mut table = table.clone();
            apply_overrides(&mut table, overrides)?;
            let cfg: RunConfig = toml::Value::Table(table).try_into().context("not a valid run config")?;
            cfg.validate()?;
            Ok(cfg)
        };
        match resolve(overrides) {
            Ok(cfg) => Ok(cfg),
            // Blame what broke it: the file alone, or the first --set that breaks a valid file.
            Err(e) => match resolve(&[]) {
                Err(_) => Err(e).with_context(|| format!("run config {}", path.display())),
                Ok(_) => {
                    let culprit = overrides.iter().find(|o| resolve(std::slice::from_ref(*o)).is_err());
                    match culprit {
                        Some(o) => Err(e).with_context(|| format!("--set {o} (on {})", path.display())),
                        None => Err(e).with_context(|| format!("the --set values together (on {})", path.display())),
                    }
                }
            },
        }
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).context("serialising the resolved run config")
    }

    pub fn validate(&self) -> Result<()> {
        let t = &self.train;
        if t.steps == 0 || t.batch_size == 0 || t.eval_batch_size == 0 {
            bail!("train.steps, train.batch_size and train.eval_batch_size must be positive");
        }
        let micro = t.micro_batch_size.unwrap_or(t.batch_size);
        if micro == 0 || t.batch_size % micro != 0 {
            bail!("train.micro_batch_size {micro} must divide train.batch_size {}", t.batch_size);
        }
        if t.log_every == 0 || t.eval_every == 0 || t.checkpoint_every == 0 {
            bail!("train.log_every, train.eval_every and train.checkpoint_every must be positive");
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) || !(t.eps > 0.0 && t.eps.is_finite()) || t.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            bail!(
                "train.lr ({}) and train.eps ({}) must be positive finite numbers and train.betas ({:?}) in [0, 1)",
                t.lr,
                t.eps,
                t.betas
            );
        }
        if !(t.grad_clip > 0.0) {
            bail!("train.grad_clip must be positive");
        }
        if let Some(target) = t.target_accuracy {
            if !(0.0..=1.0).contains(&target) {
                bail!("train.target_accuracy {target} must be a fraction in [0, 1]");
            }
        }
        if self.model.shape.is_some() && self.model.init != Init::Random {
            bail!("model.shape changes the architecture, so it needs model.init = \"random\"");
        }
        Ok(())
    }

    pub fn micro_batch_size(&self) -> usize {
        self.train.micro_batch_size.unwrap_or(self.train.batch_size)
    }
}

/// Sets `a.b.c = value` in a TOML table for each `a.b.c=value` override.
pub fn apply_overrides(table: &mut toml::Table, overrides: &[String]) -> Result<()> {
    for item in overrides {
        let Some((key, raw)) = item.split_once('=') else {
            bail!("--set {item:?}: expected key=value (e.g. train.lr=3e-4)");
        };
        let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()));
        let parts: Vec<&str> = key.trim().split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            bail!("--set {item:?}: empty key segment");
        }
        let mut node = &mut *table;
        for part in &parts[..parts.len() - 1] {
            let entry = node.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            node = entry.as_table_mut().with_context(|| format!("--set {item:?}: {part} is not a table"))?;
        }
        node.insert(parts[parts.len() - 1].to_string(), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_set_nested_values() {
        let mut t: toml::Table = toml::from_str("seed = 1\n[train]\nlr = 0.1\n").unwrap();
        apply_overrides(&mut t, &["train.lr=3e-4".into(), "model.freeze=full".into(), "task.name=\"bit-xor\"".into(), "seed=7".into()])
            .unwrap();
        assert_eq!(t["train"]["lr"].as_float(), Some(3e-4));
        assert_eq!(t["model"]["freeze"].as_str(), Some("full"));
        assert_eq!(t["task"]["name"].as_str(), Some("bit-xor"));
        assert_eq!(t["seed"].as_integer(), Some(7));
        assert!(apply_overrides(&mut t, &["nokey".into()]).is_err());
        assert!(apply_overrides(&mut t, &["seed.x=1".into()]).is_err());
    }

    #[test]
    fn parses_and_validates() {
        let text = "[task]\nname = \"bit-xor\"\n[model]\nbackbone = \"gpt2\"\ninit = \"random\"\n[model.shape]\nn_layer = 2\n[train]\nbatch_size = 8\nmicro_batch_size = 4\n";
        let cfg: RunConfig = toml::from_str(text).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.micro_batch_size(), 4);
        assert_eq!(cfg.train.lr, 1e-3);
        let back: RunConfig = toml::from_str(&cfg.to_toml().unwrap()).unwrap();
        assert_eq!(back, cfg);
        let mut bad = cfg.clone();
        bad.train.micro_batch_size = Some(3);
        assert!(bad.validate().is_err());
        let mut bad = cfg.clone();
        bad.model.init = Init::Pretrained;
        assert!(bad.validate().unwrap_err().to_string().contains("model.shape"));
        assert!(toml::from_str::<RunConfig>("[task]\nname=\"bit-xor\"\n[model]\nbackbone=\"gpt2\"\nbogus=1\n").is_err());
        // The freeze spec is parsed as the config is read, and written back as it was given.
        assert_eq!(cfg.model.freeze.spec(), &FreezeSpec::paper());
        let edited: RunConfig =
            toml::from_str(&text.replace("init = \"random\"", "init = \"random\"\nfreeze = \"paper,+attn,+ff\"")).unwrap();
        assert_eq!(edited.model.freeze.spec(), &FreezeSpec::full());
        assert!(edited.to_toml().unwrap().contains("freeze = \"paper,+attn,+ff\""));
        let err = toml::from_str::<RunConfig>(&text.replace("init = \"random\"", "init = \"random\"\nfreeze = \"papr\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("model.freeze") && err.contains("freeze spec"), "{err}");
    }
}
