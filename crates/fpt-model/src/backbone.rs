//! The backbones an FPT can wrap, chosen by a checkpoint's `config.json` (`model_type`).

use crate::bert::{Bert, BertConfig};
use crate::config::Gpt2Config;
use crate::freeze::FreezeSpec;
use crate::gpt2::Gpt2;
use crate::lstm::{Lstm, LstmConfig};
use anyhow::{bail, Context, Result};
use std::path::Path;
use tch::{nn, Tensor};

/// A backbone architecture and its hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum BackboneConfig {
    Gpt2(Gpt2Config),
    Bert(BertConfig),
    /// The paper's layer-norm LSTM baseline (no checkpoint format: random init only).
    Lstm(LstmConfig),
}

impl From<Gpt2Config> for BackboneConfig {
    fn from(c: Gpt2Config) -> Self {
        BackboneConfig::Gpt2(c)
    }
}

impl BackboneConfig {
    /// Reads a Hugging Face `config.json`; `model_type` picks the architecture ("gpt2" or
    /// "bert"; a file without it is read as GPT-2, as old GPT-2 configs have none).
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading model config {}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
        match value.get("model_type").and_then(|v| v.as_str()) {
            None | Some("gpt2") => Ok(BackboneConfig::Gpt2(Gpt2Config::from_json_file(path)?)),
            Some("bert") => {
                let cfg: BertConfig = serde_json::from_value(value)
                    .with_context(|| format!("{}: not a valid BERT config.json (expected BertConfig's fields)", path.display()))?;
                cfg.validate().with_context(|| format!("model config {}", path.display()))?;
                Ok(BackboneConfig::Bert(cfg))
            }
            Some(other) => bail!("{}: model_type {other:?} is not supported (expected \"gpt2\" or \"bert\")", path.display()),
        }
    }

    pub fn width(&self) -> i64 {
        match self {
            BackboneConfig::Gpt2(c) => c.n_embd,
            BackboneConfig::Bert(c) => c.hidden_size,
            BackboneConfig::Lstm(c) => c.hidden_size,
        }
    }

    /// Longest input; the LSTM has no position table and takes any length.
    pub fn max_positions(&self) -> i64 {
        match self {
            BackboneConfig::Gpt2(c) => c.n_positions,
            BackboneConfig::Bert(c) => c.max_position_embeddings,
            BackboneConfig::Lstm(_) => i64::MAX,
        }
    }

    pub fn layers(&self) -> i64 {
        match self {
            BackboneConfig::Gpt2(c) => c.n_layer,
            BackboneConfig::Bert(c) => c.num_hidden_layers,
            BackboneConfig::Lstm(c) => c.num_layers,
        }
    }

    /// Attention heads (0 for the LSTM).
    pub fn heads(&self) -> i64 {
        match self {
            BackboneConfig::Gpt2(c) => c.n_head,
            BackboneConfig::Bert(c) => c.num_attention_heads,
            BackboneConfig::Lstm(_) => 0,
        }
    }

    pub fn model_type(&self) -> &'static str {
        match self {
            BackboneConfig::Gpt2(_) => "gpt2",
            BackboneConfig::Bert(_) => "bert",
            BackboneConfig::Lstm(_) => "lstm",
        }
    }

    /// Every dropout probability set to `p`.
    pub fn with_dropout(self, p: f64) -> Self {
        match self {
            BackboneConfig::Gpt2(c) => BackboneConfig::Gpt2(c.with_dropout(p)),
            BackboneConfig::Bert(c) => BackboneConfig::Bert(c.with_dropout(p)),
            BackboneConfig::Lstm(c) => BackboneConfig::Lstm(LstmConfig { dropout: p, ..c }),
        }
    }

    /// Changes the shape (random-init experiments): layers, width, heads, positions, FF width.
    pub fn reshaped(mut self, layers: Option<i64>, width: Option<i64>, heads: Option<i64>, positions: Option<i64>, inner: Option<i64>) -> Result<Self> {
        match &mut self {
            BackboneConfig::Gpt2(c) => {
                c.n_layer = layers.unwrap_or(c.n_layer);
                c.n_embd = width.unwrap_or(c.n_embd);
                c.n_head = heads.unwrap_or(c.n_head);
                c.n_positions = positions.unwrap_or(c.n_positions);
                c.n_inner = inner.or(c.n_inner);
                c.validate()?;
            }
            BackboneConfig::Bert(c) => {
                c.num_hidden_layers = layers.unwrap_or(c.num_hidden_layers);
                c.hidden_size = width.unwrap_or(c.hidden_size);
                c.num_attention_heads = heads.unwrap_or(c.num_attention_heads);
                c.max_position_embeddings = positions.unwrap_or(c.max_position_embeddings);
                c.intermediate_size = inner.unwrap_or(c.intermediate_size);
                c.validate()?;
            }
            BackboneConfig::Lstm(c) => {
                if heads.is_some() || positions.is_some() || inner.is_some() {
                    bail!("the LSTM has no heads, positions or feed-forward width; set only n_layer and n_embd");
                }
                c.num_layers = layers.unwrap_or(c.num_layers);
                c.hidden_size = width.unwrap_or(c.hidden_size);
                c.validate()?;
            }
        }
        Ok(self)
    }
}

/// A backbone module: token features in, `last_hidden_state` out.
#[derive(Debug)]
pub enum Backbone {
    Gpt2(Gpt2),
    Bert(Bert),
    Lstm(Lstm),
}

impl Backbone {
    /// Builds the variables under `path` with Hugging Face's names and random init.
    pub fn new(path: &nn::Path, cfg: &BackboneConfig, freeze: &FreezeSpec) -> Result<Self> {
        Ok(match cfg {
            BackboneConfig::Gpt2(c) => Backbone::Gpt2(Gpt2::new(path, c, freeze)?),
            BackboneConfig::Bert(c) => Backbone::Bert(Bert::new(path, c, freeze)?),
            BackboneConfig::Lstm(c) => Backbone::Lstm(Lstm::new(path, c, freeze)?),
        })
    }

    pub fn forward_embeds(&self, inputs_embeds: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Backbone::Gpt2(m) => m.forward_embeds(inputs_embeds, train),
            Backbone::Bert(m) => m.forward_embeds(inputs_embeds, train),
            Backbone::Lstm(m) => m.forward_embeds(inputs_embeds, train),
        }
    }

    /// Every layer's attention probabilities `[batch, heads, seq, seq]` (eval mode).
    pub fn attention_maps(&self, inputs_embeds: &Tensor) -> Result<Vec<Tensor>> {
        match self {
            Backbone::Gpt2(m) => m.attention_maps(inputs_embeds),
            Backbone::Bert(m) => m.attention_maps(inputs_embeds),
            Backbone::Lstm(_) => bail!("the LSTM has no attention to show"),
        }
    }

    pub fn config(&self) -> BackboneConfig {
        match self {
            Backbone::Gpt2(m) => BackboneConfig::Gpt2(m.config().clone()),
            Backbone::Bert(m) => BackboneConfig::Bert(m.config().clone()),
            Backbone::Lstm(m) => BackboneConfig::Lstm(m.config().clone()),
        }
    }
}

/// Loads a Hugging Face directory (GPT-2 or BERT: config.json + safetensors) into a fresh
/// VarStore, every tensor frozen: what `fpt forward` and the parity checks use.
pub fn load_backbone_dir(dir: &Path, device: tch::Device) -> Result<(nn::VarStore, Backbone)> {
    let cfg = BackboneConfig::from_json_file(&dir.join("config.json"))?;
    let vs = nn::VarStore::new(device);
    let model = Backbone::new(&vs.root(), &cfg, &FreezeSpec::all())?;
    crate::checkpoint::load_weights(&vs, dir).with_context(|| format!("loading {} weights from {}", cfg.model_type(), dir.display()))?;
    Ok((vs, model))
}
