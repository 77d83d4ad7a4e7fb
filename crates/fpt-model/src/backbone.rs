//! The backbones an FPT can wrap, chosen by a checkpoint's `config.json` (`model_type`).

use crate::bert::{Bert, BertConfig};
use crate::freeze::{FreezeSpec, ParamGroup, ParamGroups};
use crate::gpt2::{Gpt2, Gpt2Config};
use crate::layers::hf_config::{parse_hf_config, HfConfig};
use crate::layers::{check_positions, gather_rows, Rows};
use crate::llama::{Llama, LlamaConfig};
use crate::lstm::{Lstm, LstmConfig};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{nn, Kind, Tensor};

/// What the frozen backbone computes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in fp32.
    #[default]
    Fp32,
    /// Frozen weight matrices converted to bf16 once and kept resident; the transformer layers'
    /// matmuls, attention and activations in bf16. Trainable parameters (and so the optimizer
    /// state), layer norms, the residual stream, the input and output layers and the loss stay
    /// fp32.
    Bf16,
}

impl Precision {
    pub fn compute_kind(self) -> Kind {
        match self {
            Precision::Fp32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
        }
    }
}

/// The backbone modules: one file each, below this one. The layout test (`lib.rs`) checks that
/// each imports only the building blocks.
#[cfg(test)]
pub(crate) const BACKBONE_MODULES: [&str; 4] = ["gpt2", "bert", "lstm", "llama"];

/// A backbone architecture and its hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum BackboneConfig {
    Gpt2(Gpt2Config),
    Bert(BertConfig),
    /// Llama-family decoders (SmolLM2).
    Llama(LlamaConfig),
    /// The paper's layer-norm LSTM baseline (no checkpoint format: random init only).
    Lstm(LstmConfig),
}

impl From<Gpt2Config> for BackboneConfig {
    fn from(c: Gpt2Config) -> Self {
        BackboneConfig::Gpt2(c)
    }
}

impl BackboneConfig {
    /// Reads a Hugging Face `config.json`; `model_type` picks the architecture ("gpt2", "bert",
    /// or the Llama family: "llama", "qwen2", "mistral"; a file without it is read as GPT-2, as
    /// old GPT-2 configs have none).
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading model config {}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
        match value.get("model_type").and_then(|v| v.as_str()) {
            None | Some("gpt2") => Ok(BackboneConfig::Gpt2(Gpt2Config::from_json_file(path)?)),
            Some("bert") => Ok(BackboneConfig::Bert(parse_hf_config(serde_json::from_value(value), path)?)),
            Some(mt) if LlamaConfig::MODEL_TYPES.contains(&mt) => Ok(BackboneConfig::Llama(LlamaConfig::from_json_file(path)?)),
            Some(other) => bail!(
                "{}: model_type {other:?} is not supported (expected \"gpt2\", \"bert\", or of the Llama family {})",
                path.display(),
                LlamaConfig::MODEL_TYPES.join(", ")
            ),
        }
    }

    pub fn width(&self) -> i64 {
        match self {
            BackboneConfig::Gpt2(c) => c.n_embd,
            BackboneConfig::Bert(c) => c.hidden_size,
            BackboneConfig::Llama(c) => c.hidden_size,
            BackboneConfig::Lstm(c) => c.hidden_size,
        }
    }

    /// Longest input; the LSTM has no position table and takes any length.
    pub fn max_positions(&self) -> i64 {
        match self {
            BackboneConfig::Gpt2(c) => c.n_positions,
            BackboneConfig::Bert(c) => c.max_position_embeddings,
            BackboneConfig::Llama(c) => c.max_position_embeddings,
            BackboneConfig::Lstm(_) => i64::MAX,
        }
    }

    /// The most task tokens an FPT on this backbone takes: its positions less the rows the wrapper
    /// puts first ([`Backbone::input_prefix`]: Llama's BOS row).
    pub fn max_input_tokens(&self) -> i64 {
        match self {
            BackboneConfig::Llama(c) => c.max_position_embeddings - 1,
            other => other.max_positions(),
        }
    }

    pub fn layers(&self) -> i64 {
        match self {
            BackboneConfig::Gpt2(c) => c.n_layer,
            BackboneConfig::Bert(c) => c.num_hidden_layers,
            BackboneConfig::Llama(c) => c.num_hidden_layers,
            BackboneConfig::Lstm(c) => c.num_layers,
        }
    }

    /// Attention heads (0 for the LSTM).
    pub fn heads(&self) -> i64 {
        match self {
            BackboneConfig::Gpt2(c) => c.n_head,
            BackboneConfig::Bert(c) => c.num_attention_heads,
            BackboneConfig::Llama(c) => c.num_attention_heads,
            BackboneConfig::Lstm(_) => 0,
        }
    }

    /// The architecture's `model_type` (a Llama-family file's own: "llama", "qwen2", "mistral").
    pub fn model_type(&self) -> &str {
        match self {
            BackboneConfig::Gpt2(_) => "gpt2",
            BackboneConfig::Bert(_) => "bert",
            BackboneConfig::Llama(c) => c.model_type.as_deref().unwrap_or("llama"),
            BackboneConfig::Lstm(_) => "lstm",
        }
    }

    /// Every dropout probability set to `p`.
    pub fn with_dropout(self, p: f64) -> Self {
        match self {
            BackboneConfig::Gpt2(c) => BackboneConfig::Gpt2(c.with_dropout(p)),
            BackboneConfig::Bert(c) => BackboneConfig::Bert(c.with_dropout(p)),
            BackboneConfig::Llama(c) => BackboneConfig::Llama(c.with_dropout(p)),
            BackboneConfig::Lstm(c) => BackboneConfig::Lstm(LstmConfig { dropout: p, ..c }),
        }
    }

    /// Changes the shape (random-init experiments): layers, width, heads, positions, FF width.
    pub fn reshaped(
        mut self,
        layers: Option<i64>,
        width: Option<i64>,
        heads: Option<i64>,
        positions: Option<i64>,
        inner: Option<i64>,
    ) -> Result<Self> {
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
            BackboneConfig::Llama(c) => {
                if width.is_some() || heads.is_some() {
                    // head_dim follows the new width / heads; key/value heads stay grouped when
                    // they still divide the query heads, else every head gets its own.
                    c.head_dim = None;
                }
                c.num_hidden_layers = layers.unwrap_or(c.num_hidden_layers);
                c.hidden_size = width.unwrap_or(c.hidden_size);
                c.num_attention_heads = heads.unwrap_or(c.num_attention_heads);
                if c.num_attention_heads % c.kv_heads() != 0 {
                    c.num_key_value_heads = None;
                }
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
    Llama(Llama),
    Lstm(Lstm),
}

impl Backbone {
    /// Builds the variables under `path` with Hugging Face's names and random init, every one
    /// trainable (freeze after with [`FreezeSpec::apply`], from [`ParamGroups`]).
    pub fn new(path: &nn::Path, cfg: &BackboneConfig) -> Result<Self> {
        Ok(match cfg {
            BackboneConfig::Gpt2(c) => Backbone::Gpt2(Gpt2::new(path, c)?),
            BackboneConfig::Bert(c) => Backbone::Bert(Bert::new(path, c)?),
            BackboneConfig::Llama(c) => Backbone::Llama(Llama::new(path, c)?),
            BackboneConfig::Lstm(c) => Backbone::Lstm(Lstm::new(path, c)?),
        })
    }

    pub fn forward_embeds(&self, inputs_embeds: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_rows(inputs_embeds, train, None)
    }

    /// `last_hidden_state` at the positions `rows` only (all when `None`). The transformers skip
    /// the last layer's work elsewhere; the LSTM's recurrence needs every step anyway.
    pub fn forward_rows(&self, inputs_embeds: &Tensor, train: bool, rows: Option<Rows>) -> Result<Tensor> {
        match self {
            Backbone::Gpt2(m) => m.forward_rows(inputs_embeds, train, rows),
            Backbone::Bert(m) => m.forward_rows(inputs_embeds, train, rows),
            Backbone::Llama(m) => m.forward_rows(inputs_embeds, train, rows),
            Backbone::Lstm(m) => {
                let h = m.forward_embeds(inputs_embeds, train)?;
                Ok(match Rows::restricting(rows, h.size()[1])? {
                    Some(r) => h.narrow(1, r.start, r.len),
                    None => h,
                })
            }
        }
    }

    /// Whether a position sees only itself and earlier ones (GPT-2, Llama, the LSTM): right padding
    /// then cannot reach a read-out at or before the last real token, and needs no mask.
    pub fn is_causal(&self) -> bool {
        !matches!(self, Backbone::Bert(_))
    }

    /// `last_hidden_state` at per-example `positions` (`[batch, k]` int64): `[batch, k, width]`.
    /// `attention_mask` (`[batch, seq]`, nonzero where a token may be attended to, Hugging
    /// Face's `attention_mask`) keeps padding out of a bidirectional backbone's attention; a
    /// causal one takes none (its right padding sits after every read-out it could reach). The
    /// transformers compute the last layer at the read-out positions only.
    pub fn forward_at(&self, inputs_embeds: &Tensor, train: bool, positions: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        if attention_mask.is_some() && self.is_causal() {
            bail!(
                "{} is causal: right-padded inputs need no attention mask (a read-out at the last real token never sees the padding after it)",
                self.config().model_type()
            );
        }
        match self {
            Backbone::Gpt2(m) => m.forward_at(inputs_embeds, train, positions),
            Backbone::Llama(m) => m.forward_at(inputs_embeds, train, positions),
            Backbone::Bert(m) => m.forward_at(inputs_embeds, attention_mask, train, positions),
            Backbone::Lstm(m) => {
                let h = m.forward_embeds(inputs_embeds, train)?;
                let size = h.size();
                check_positions(positions, size[0], size[1])?;
                Ok(gather_rows(&h, positions))
            }
        }
    }

    /// Switches to `precision`. For bf16, every frozen float matrix in `vs` (the VarStore the
    /// model lives in, after any checkpoint was loaded) is converted to bf16 in place, once;
    /// vectors (biases, layer norms) stay fp32 and trainable tensors are untouched, so an
    /// optimizer and run checkpoints see fp32 only; on the CPU GPT-2's frozen matrices may then
    /// be packed for oneDNN (`kernels/packed.rs`). There is no way back to fp32.
    pub fn set_precision(&mut self, vs: &nn::VarStore, precision: Precision) -> Result<()> {
        self.set_compute_kind(precision.compute_kind())?;
        if precision == Precision::Bf16 {
            tch::no_grad(|| {
                for (_, mut t) in vs.variables() {
                    if !t.requires_grad() && t.kind() == Kind::Float && t.dim() >= 2 {
                        let half = t.to_kind(Kind::BFloat16);
                        t.set_data(&half);
                    }
                }
            });
            // The frozen matrices are final now: GPT-2 may pack its own for oneDNN (CPU only;
            // the narrower products of BERT and Llama did not gain: kernels/packed.rs).
            if let Backbone::Gpt2(m) = self {
                m.pack_frozen_weights();
            }
        }
        Ok(())
    }

    /// What the transformer layers compute in: `Kind::Float`, or `Kind::BFloat16` (matmuls,
    /// attention and activations; layer norms, the residual stream and the output stay fp32).
    fn set_compute_kind(&mut self, kind: Kind) -> Result<()> {
        match self {
            Backbone::Gpt2(m) => m.set_compute_kind(kind),
            Backbone::Bert(m) => m.set_compute_kind(kind),
            Backbone::Llama(m) => m.set_compute_kind(kind),
            Backbone::Lstm(_) if kind != Kind::Float => {
                bail!("the LSTM baseline runs in fp32 only; bf16 is implemented for the transformer backbones (gpt2, bert, llama)")
            }
            Backbone::Lstm(_) => {}
        }
        Ok(())
    }

    /// Rows the FPT wrapper puts before the input tokens, `[1, n, width]` fp32: Llama's BOS
    /// embedding (docs/model.md, "Llama backbone": without a position table a zero token at
    /// position 0 stays zero through every layer and its gradient overflows); none for the
    /// others.
    pub fn input_prefix(&self) -> Option<Tensor> {
        match self {
            Backbone::Llama(m) => Some(m.bos_embedding()),
            Backbone::Gpt2(_) | Backbone::Bert(_) | Backbone::Lstm(_) => None,
        }
    }

    /// Every layer's attention probabilities `[batch, heads, seq, seq]` (eval mode).
    pub fn attention_maps(&self, inputs_embeds: &Tensor) -> Result<Vec<Tensor>> {
        match self {
            Backbone::Gpt2(m) => m.attention_maps(inputs_embeds),
            Backbone::Bert(m) => m.attention_maps(inputs_embeds),
            Backbone::Llama(m) => m.attention_maps(inputs_embeds),
            Backbone::Lstm(_) => bail!("the LSTM has no attention to show"),
        }
    }

    pub fn config(&self) -> BackboneConfig {
        match self {
            Backbone::Gpt2(m) => BackboneConfig::Gpt2(m.config().clone()),
            Backbone::Bert(m) => BackboneConfig::Bert(m.config().clone()),
            Backbone::Llama(m) => BackboneConfig::Llama(m.config().clone()),
            Backbone::Lstm(m) => BackboneConfig::Lstm(m.config().clone()),
        }
    }
}

/// Each backbone declares its own groups (its module's `ParamGroups` impl).
impl ParamGroups for Backbone {
    fn param_group(&self, name: &str) -> Option<ParamGroup> {
        match self {
            Backbone::Gpt2(m) => m.param_group(name),
            Backbone::Bert(m) => m.param_group(name),
            Backbone::Llama(m) => m.param_group(name),
            Backbone::Lstm(m) => m.param_group(name),
        }
    }
}

/// Loads a Hugging Face directory (GPT-2, BERT or Llama: config.json + safetensors) into a fresh
/// VarStore, every tensor frozen: what `fpt forward` and the parity checks use.
pub fn load_backbone_dir(dir: &Path, device: tch::Device) -> Result<(nn::VarStore, Backbone)> {
    let cfg = BackboneConfig::from_json_file(&dir.join("config.json"))?;
    let vs = nn::VarStore::new(device);
    let model = crate::checkpoint::build_checked(dir, || Backbone::new(&vs.root(), &cfg))?;
    FreezeSpec::all().apply(&vs, &model)?;
    crate::checkpoint::load_weights(&vs, dir).with_context(|| format!("loading {} weights from {}", cfg.model_type(), dir.display()))?;
    Ok((vs, model))
}
