//! The Frozen Pretrained Transformer: a new input layer, a (mostly frozen) backbone, and a new
//! output layer reading the last `k` tokens.

use crate::backbone::{Backbone, BackboneConfig, Precision, Rows};
use crate::freeze::FreezeSpec;
use crate::init::{new_param, Init};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

/// What a token of the task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputSpec {
    /// A float feature vector of this size per token (image patches, bits).
    Dense { dim: i64 },
    /// A token id below this vocabulary size (ListOps, amino acids).
    Tokens { vocab: i64 },
}

/// Which tokens the output layer reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Readout {
    /// The last `readout_tokens` positions (the paper's choice). With GPT-2's causal attention
    /// only the last token has seen the whole sequence.
    #[default]
    Last,
    /// The first `readout_tokens` positions. Only meaningful for bidirectional backbones (BERT),
    /// where every position sees every token; BERT's own convention reads the first token
    /// ([CLS]), but FPT inputs carry no [CLS], so the last token stays the default there too.
    First,
}

/// The wrapper's own shape and hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FptConfig {
    pub input: InputSpec,
    /// Outputs per read-out token (classes, or 2 logits per bit).
    pub classes: i64,
    /// How many final tokens are read out: 1 for classification, one per output patch for the
    /// bit tasks.
    #[serde(default = "defaults::readout_tokens")]
    pub readout_tokens: i64,
    #[serde(default)]
    pub readout: Readout,
    /// Widths of an optional MLP (linear, ReLU, dropout) before the input projection.
    #[serde(default)]
    pub input_hidden: Vec<i64>,
    /// Widths of an optional MLP (linear, ReLU, dropout) before the output projection.
    #[serde(default)]
    pub output_hidden: Vec<i64>,
    /// Dropout of the backbone (embeddings, attention, residuals; overrides the checkpoint's
    /// config) and of the wrapper's MLP layers.
    #[serde(default = "defaults::dropout")]
    pub dropout: f64,
    /// Gain of the orthogonal init of the dense input projection (the reference uses 1.41).
    #[serde(default = "defaults::orth_gain")]
    pub orth_gain: f64,
}

mod defaults {
    pub fn readout_tokens() -> i64 {
        1
    }
    pub fn dropout() -> f64 {
        0.1
    }
    pub fn orth_gain() -> f64 {
        1.41
    }
}

impl FptConfig {
    /// A classifier over dense tokens with the paper's defaults.
    pub fn dense(dim: i64, classes: i64) -> Self {
        FptConfig {
            input: InputSpec::Dense { dim },
            classes,
            readout_tokens: 1,
            readout: Readout::Last,
            input_hidden: vec![],
            output_hidden: vec![],
            dropout: defaults::dropout(),
            orth_gain: defaults::orth_gain(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        match self.input {
            InputSpec::Dense { dim } if dim <= 0 => bail!("input dim is {dim}; it must be positive"),
            InputSpec::Tokens { vocab } if vocab <= 0 => bail!("input vocab is {vocab}; it must be positive"),
            _ => {}
        }
        if self.classes <= 0 {
            bail!("classes is {}; it must be positive", self.classes);
        }
        if self.readout_tokens <= 0 {
            bail!("readout_tokens is {}; it must be positive", self.readout_tokens);
        }
        if let Some(w) = self.input_hidden.iter().chain(&self.output_hidden).find(|w| **w <= 0) {
            bail!("hidden layer width {w} must be positive");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("dropout is {}; it must be in [0, 1)", self.dropout);
        }
        if !(self.orth_gain.is_finite() && self.orth_gain > 0.0) {
            bail!("orth_gain is {}; it must be a positive finite number (the reference uses 1.41)", self.orth_gain);
        }
        Ok(())
    }
}

/// A PyTorch-style linear layer (weight `[out, in]`), PyTorch's default init
/// (uniform ±1/sqrt(in) for weight and bias) unless a weight is given.
#[derive(Debug)]
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    /// `orthogonal_gain`: an orthogonal weight with that gain instead of PyTorch's default, and a
    /// zero bias, as the reference initialises its input projection.
    fn new(path: &nn::Path, n_in: i64, n_out: i64, orthogonal_gain: Option<f64>, freeze: &FreezeSpec) -> Result<Self> {
        let bound = 1.0 / (n_in as f64).sqrt();
        let (weight, bias) = match orthogonal_gain {
            Some(gain) => (Init::Orthogonal { gain }, Init::Zeros),
            None => (Init::Uniform { bound }, Init::Uniform { bound }),
        };
        Ok(Linear {
            weight: new_param(path, "weight", &[n_out, n_in], weight, freeze)?,
            bias: new_param(path, "bias", &[n_out], bias, freeze)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight.to_kind(x.kind()), Some(&self.bias.to_kind(x.kind())))
    }
}

/// Linear + ReLU + dropout layers, in order.
#[derive(Debug)]
struct Mlp {
    layers: Vec<Linear>,
    dropout: f64,
}

impl Mlp {
    /// Returns the MLP and its output width.
    fn new(path: &nn::Path, n_in: i64, widths: &[i64], dropout: f64, freeze: &FreezeSpec) -> Result<(Self, i64)> {
        let mut layers = Vec::new();
        let mut width = n_in;
        for (i, &w) in widths.iter().enumerate() {
            layers.push(Linear::new(&(path / i), width, w, None, freeze)?);
            width = w;
        }
        Ok((Mlp { layers, dropout }, width))
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.shallow_clone();
        for layer in &self.layers {
            h = crate::ops::dropout(&layer.forward(&h).relu(), self.dropout, train);
        }
        h
    }
}

#[derive(Debug)]
enum InputLayer {
    Dense { hidden: Mlp, proj: Linear },
    Tokens { embedding: Tensor, vocab: i64 },
}

/// Input layer → backbone → output layer on the last `readout_tokens` positions.
///
/// Variables: the backbone's under Hugging Face names at the path given to [`Fpt::new`]; the
/// input layer under `input_layer.` (`hidden.{i}.*`, `proj.*` or `embedding.weight`); the output
/// layer under `output_layer.` (`hidden.{i}.*`, `proj.*`).
#[derive(Debug)]
pub struct Fpt {
    cfg: FptConfig,
    backbone: Backbone,
    input: InputLayer,
    output_hidden: Mlp,
    output_proj: Linear,
}

impl Fpt {
    /// Builds the model with Hugging Face's random backbone init; load pretrained weights after
    /// with [`crate::checkpoint::load_weights`]. `backbone.*pdrop` are replaced by `cfg.dropout`.
    pub fn new(path: &nn::Path, backbone: &BackboneConfig, cfg: &FptConfig, freeze: &FreezeSpec) -> Result<Self> {
        cfg.validate()?;
        let width = backbone.width();
        let backbone = Backbone::new(path, &backbone.clone().with_dropout(cfg.dropout), freeze)?;
        let in_path = path / "input_layer";
        let input = match cfg.input {
            InputSpec::Dense { dim } => {
                let (hidden, n_in) = Mlp::new(&(&in_path / "hidden"), dim, &cfg.input_hidden, cfg.dropout, freeze)?;
                let proj = Linear::new(&(&in_path / "proj"), n_in, width, Some(cfg.orth_gain), freeze)?;
                InputLayer::Dense { hidden, proj }
            }
            InputSpec::Tokens { vocab } => {
                if !cfg.input_hidden.is_empty() {
                    bail!("input_hidden needs dense inputs; token inputs use an embedding table");
                }
                // PyTorch's nn.Embedding default init, as the reference: normal(0, 1).
                let embedding = new_param(&(&in_path / "embedding"), "weight", &[vocab, width], Init::Normal { std: 1.0 }, freeze)?;
                InputLayer::Tokens { embedding, vocab }
            }
        };
        let out_path = path / "output_layer";
        let (output_hidden, n_out_in) =
            Mlp::new(&(&out_path / "hidden"), width, &cfg.output_hidden, cfg.dropout, freeze)?;
        let output_proj = Linear::new(&(&out_path / "proj"), n_out_in, cfg.classes, None, freeze)?;
        Ok(Fpt { cfg: cfg.clone(), backbone, input, output_hidden, output_proj })
    }

    pub fn config(&self) -> &FptConfig {
        &self.cfg
    }

    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// Switches the backbone to `precision` ([`Backbone::set_precision`]; `vs` is the model's
    /// VarStore, after any checkpoint was loaded).
    pub fn set_precision(&mut self, vs: &nn::VarStore, precision: Precision) -> Result<()> {
        self.backbone.set_precision(vs, precision)
    }

    /// Token features `[batch, seq, dim]` (float) or token ids `[batch, seq]` (int64) to logits:
    /// `[batch, classes]` when one token is read out, else `[batch, readout_tokens, classes]`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let embeds = self.embed(x, train)?;
        let seq = embeds.size()[1];
        let k = self.cfg.readout_tokens;
        if seq < k {
            bail!("sequence of {seq} tokens is shorter than the {k} read-out tokens");
        }
        let start = match self.cfg.readout {
            Readout::Last => seq - k,
            Readout::First => 0,
        };
        let last = self.backbone.forward_rows(&embeds, train, Some(Rows { start, len: k }))?.to_kind(Kind::Float);
        let logits = self.output_proj.forward(&self.output_hidden.forward(&last, train));
        Ok(if k == 1 { logits.squeeze_dim(1) } else { logits })
    }

    /// The backbone's attention probabilities per layer, `[batch, heads, seq, seq]` (eval).
    pub fn attention_maps(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        self.backbone.attention_maps(&self.embed(x, false)?)
    }

    /// The input layer: token features or ids to backbone-width embeddings, validated.
    fn embed(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let size = x.size();
        let embeds = match &self.input {
            InputLayer::Dense { hidden, proj } => {
                let InputSpec::Dense { dim } = self.cfg.input else { unreachable!("input layer matches config") };
                if size.len() != 3 || size[2] != dim {
                    bail!("dense input must be [batch, seq, {dim}], got {size:?}");
                }
                if !x.is_floating_point() {
                    bail!("dense input must be a float tensor, got {:?}", x.kind());
                }
                proj.forward(&hidden.forward(&x.to_kind(Kind::Float), train))
            }
            InputLayer::Tokens { embedding, vocab } => {
                if size.len() != 2 {
                    bail!("token input must be [batch, seq] ids, got {size:?}");
                }
                if x.kind() != Kind::Int64 {
                    bail!("token input must be int64 ids, got {:?}", x.kind());
                }
                // Checked on the CPU only: reading the range back from a GPU would stall the
                // step. (Task loaders map every token into the vocabulary; on CUDA a bad id
                // still trips the embedding kernel's own assert.)
                if x.numel() > 0 && x.device() == tch::Device::Cpu {
                    let (lo, hi) = (x.min().int64_value(&[]), x.max().int64_value(&[]));
                    if lo < 0 || hi >= *vocab {
                        bail!("token ids span {lo}..={hi}, outside the vocabulary 0..{vocab}");
                    }
                }
                Tensor::embedding(embedding, x, -1, false, false)
            }
        };
        Ok(embeds)
    }
}
