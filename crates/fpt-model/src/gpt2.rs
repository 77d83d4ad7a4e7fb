//! GPT-2 (Hugging Face's `GPT2Model`) fed with `inputs_embeds`, and its config (`GPT2Config`).
//!
//! VarStore paths are Hugging Face's names (`wte.weight`, `h.0.attn.c_attn.weight`, …) and
//! Conv1D weights keep Hugging Face's `[in, out]` layout, so a checkpoint is copied tensor by
//! tensor with no transposes (`y = b + x·W`, as `transformers`' Conv1D computes it).

use crate::freeze::{ParamGroup, ParamGroups};
use crate::kernels::{attention, dropout, residual_dropout, PackOnUse};
use crate::layers::hf_config::{check_model_type, check_positive, read_hf_config, HfConfig};
use crate::layers::init::{new_param, Init};
use crate::layers::{check_inputs_embeds, check_positions, Activation, LayerNorm, Queries, Rows};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{nn, Kind, Tensor};

/// The fields of Hugging Face's `GPT2Config` that shape the backbone. Unknown fields of a
/// `config.json` (tokenizer ids, task heads, …) are ignored; the ones that would change the
/// computation and that we do not implement are rejected in [`Gpt2Config::validate`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "defaults::n_positions")]
    pub n_positions: i64,
    #[serde(default = "defaults::n_embd")]
    pub n_embd: i64,
    #[serde(default = "defaults::n_layer")]
    pub n_layer: i64,
    #[serde(default = "defaults::n_head")]
    pub n_head: i64,
    /// Feed-forward width; `None` means 4 · n_embd.
    #[serde(default)]
    pub n_inner: Option<i64>,
    #[serde(default = "defaults::activation")]
    pub activation_function: Activation,
    #[serde(default = "defaults::pdrop")]
    pub resid_pdrop: f64,
    #[serde(default = "defaults::pdrop")]
    pub embd_pdrop: f64,
    #[serde(default = "defaults::pdrop")]
    pub attn_pdrop: f64,
    #[serde(default = "defaults::eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "defaults::initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "defaults::yes")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    pub reorder_and_upcast_attn: bool,
    #[serde(default)]
    pub add_cross_attention: bool,
    #[serde(default)]
    pub model_type: Option<String>,
}

mod defaults {
    use super::Activation;
    pub fn vocab_size() -> i64 {
        50257
    }
    pub fn n_positions() -> i64 {
        1024
    }
    pub fn n_embd() -> i64 {
        768
    }
    pub fn n_layer() -> i64 {
        12
    }
    pub fn n_head() -> i64 {
        12
    }
    pub fn activation() -> Activation {
        Activation::GeluTanh
    }
    pub fn pdrop() -> f64 {
        0.1
    }
    pub fn eps() -> f64 {
        1e-5
    }
    pub fn initializer_range() -> f64 {
        0.02
    }
    pub fn yes() -> bool {
        true
    }
}

/// The four released GPT-2 sizes: (name, layers, width, heads).
pub const GPT2_PRESETS: [(&str, i64, i64, i64); 4] =
    [("gpt2", 12, 768, 12), ("gpt2-medium", 24, 1024, 16), ("gpt2-large", 36, 1280, 20), ("gpt2-xl", 48, 1600, 25)];

impl Default for Gpt2Config {
    /// GPT-2 small, as `GPT2Config()` in `transformers`.
    fn default() -> Self {
        Gpt2Config::custom(12, 768, 12)
    }
}

impl Gpt2Config {
    /// Any shape, with every other field at GPT-2's values.
    pub fn custom(n_layer: i64, n_embd: i64, n_head: i64) -> Self {
        Gpt2Config {
            vocab_size: defaults::vocab_size(),
            n_positions: defaults::n_positions(),
            n_embd,
            n_layer,
            n_head,
            n_inner: None,
            activation_function: Activation::GeluTanh,
            resid_pdrop: 0.1,
            embd_pdrop: 0.1,
            attn_pdrop: 0.1,
            layer_norm_epsilon: 1e-5,
            initializer_range: 0.02,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            reorder_and_upcast_attn: false,
            add_cross_attention: false,
            model_type: Some("gpt2".into()),
        }
    }

    /// `gpt2`, `gpt2-medium`, `gpt2-large` or `gpt2-xl`.
    pub fn preset(name: &str) -> Result<Self> {
        match GPT2_PRESETS.iter().find(|(n, ..)| *n == name) {
            Some(&(_, layers, width, heads)) => Ok(Gpt2Config::custom(layers, width, heads)),
            None => {
                let names: Vec<&str> = GPT2_PRESETS.iter().map(|p| p.0).collect();
                bail!("unknown GPT-2 preset {name:?}; expected one of {}", names.join(", "))
            }
        }
    }

    /// Reads a Hugging Face `config.json` and checks it describes a GPT-2 we implement.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        read_hf_config(path)
    }

    pub fn validate(&self) -> Result<()> {
        check_model_type::<Self>(self.model_type.as_deref())?;
        check_positive(&[
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_positions", self.n_positions),
            ("vocab_size", self.vocab_size),
        ])?;
        if self.n_embd % self.n_head != 0 {
            bail!("n_embd {} is not divisible by n_head {}", self.n_embd, self.n_head);
        }
        if let Some(inner) = self.n_inner {
            if inner <= 0 {
                bail!("n_inner is {inner}; it must be positive (or null for 4·n_embd)");
            }
        }
        for (field, p) in [("resid_pdrop", self.resid_pdrop), ("embd_pdrop", self.embd_pdrop), ("attn_pdrop", self.attn_pdrop)] {
            if !(0.0..1.0).contains(&p) {
                bail!("{field} is {p}; a dropout probability must be in [0, 1)");
            }
        }
        for (field, set) in [
            ("scale_attn_by_inverse_layer_idx", self.scale_attn_by_inverse_layer_idx),
            ("reorder_and_upcast_attn", self.reorder_and_upcast_attn),
            ("add_cross_attention", self.add_cross_attention),
        ] {
            if set {
                bail!("{field} = true is not supported (GPT-2's released checkpoints use false)");
            }
        }
        crate::layers::init::check_eps_and_range("layer_norm_epsilon", self.layer_norm_epsilon, self.initializer_range)?;
        if !self.scale_attn_weights {
            bail!("scale_attn_weights = false is not supported (GPT-2 scales by 1/sqrt(head_dim))");
        }
        Ok(())
    }

    pub fn inner_dim(&self) -> i64 {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    pub fn head_dim(&self) -> i64 {
        self.n_embd / self.n_head
    }

    /// Sets every dropout probability (embeddings, attention, residual) to `p`.
    pub fn with_dropout(mut self, p: f64) -> Self {
        self.resid_pdrop = p;
        self.embd_pdrop = p;
        self.attn_pdrop = p;
        self
    }
}

/// Hugging Face's `Conv1D`: weight `[in, out]`, `y = bias + x · weight`.
#[derive(Debug)]
pub struct Conv1D {
    pub weight: Tensor,
    pub bias: Tensor,
    /// Wᵀ packed for oneDNN once frozen in bf16 ([`Conv1D::pack_frozen`]).
    packed: PackOnUse,
}

impl Conv1D {
    fn new(path: &nn::Path, n_in: i64, n_out: i64, std: f64) -> Result<Self> {
        Ok(Conv1D {
            weight: new_param(path, "weight", &[n_in, n_out], Init::Normal { std })?,
            bias: new_param(path, "bias", &[n_out], Init::Zeros)?,
            packed: PackOnUse::default(),
        })
    }

    /// A frozen layer over given tensors, outside any VarStore (benchmarks, tests), packed as
    /// [`Conv1D::pack_frozen`] arranges.
    pub fn from_frozen(weight: Tensor, bias: Tensor) -> Self {
        let mut layer = Conv1D { weight, bias, packed: PackOnUse::default() };
        layer.pack_frozen();
        layer
    }

    /// Lets a frozen bf16 weight be packed for oneDNN (`kernels/packed.rs`) at the first call
    /// of at most 4,096 rows, once its values are final (bf16 mode, after loading); weights
    /// that train, stay fp32 or cannot be packed on this CPU keep libtorch's product. The
    /// weight must not change afterwards.
    fn pack_frozen(&mut self) {
        self.packed.arm();
    }

    /// Computes in `x`'s dtype: a no-op cast for weights already in it (frozen weights made
    /// bf16 once at load), a per-call cast for trainable fp32 weights in bf16 mode.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_columns(x, 0, self.weight.size()[1])
    }

    /// Output columns `start..start + len` only (the weight's column slice is a strided view;
    /// BLAS reads it in place).
    pub fn forward_columns(&self, x: &Tensor, start: i64, len: i64) -> Tensor {
        if start == 0 && len == self.weight.size()[1] {
            if let Some(packed) = self.packed.for_input(x, || self.weight.tr(), Some(&self.bias)) {
                return packed.forward(x);
            }
        }
        let mut shape = x.size();
        let n_in = *shape.last().expect("Conv1D input has a feature axis");
        let kind = x.kind();
        let (weight, bias) = (self.weight.to_kind(kind), self.bias.to_kind(kind));
        let (weight, bias) =
            if start == 0 && len == weight.size()[1] { (weight, bias) } else { (weight.narrow(1, start, len), bias.narrow(0, start, len)) };
        let out = bias.addmm(&x.reshape([-1, n_in]), &weight);
        *shape.last_mut().expect("non-empty shape") = len;
        out.reshape(shape)
    }
}

/// `[.., 3w]` into three `[.., w]` along the last axis.
fn split3(qkv: &Tensor, w: i64) -> [Tensor; 3] {
    match <[Tensor; 3]>::try_from(qkv.split(w, -1)) {
        Ok(parts) => parts,
        Err(parts) => unreachable!("a [.., 3w] tensor splits into 3 parts of w, not {}", parts.len()),
    }
}

#[derive(Debug)]
struct Attention {
    c_attn: Conv1D,
    c_proj: Conv1D,
    n_head: i64,
    attn_pdrop: f64,
    resid_pdrop: f64,
}

impl Attention {
    /// Attention probabilities `[batch, heads, seq, seq]` (eval mode, causal), written out
    /// explicitly for inspection; the forward pass uses the fused kernel.
    fn probs(&self, x: &Tensor) -> Tensor {
        let (b, t, w) = x.size3().expect("attention input is [batch, seq, width]");
        let d = w / self.n_head;
        let qkv = self.c_attn.forward(x);
        let split = |i: i64| qkv.narrow(2, i * w, w).reshape([b, t, self.n_head, d]).transpose(1, 2);
        let scores = split(0).matmul(&split(1).transpose(-2, -1)) / (d as f64).sqrt();
        let mask = Tensor::ones([t, t], (Kind::Bool, x.device())).triu(1);
        scores.masked_fill(&mask, f64::NEG_INFINITY).softmax(-1, Kind::Float)
    }

    /// Causal self-attention of `x` `[batch, seq, width]`, before the residual dropout (the
    /// block applies it with the residual add); with `queries` other than all, only those query
    /// positions are computed (keys and values still cover every position).
    fn forward(&self, x: &Tensor, train: bool, queries: Queries) -> Tensor {
        let (b, t, w) = x.size3().expect("attention input is [batch, seq, width]");
        let head_dim = w / self.n_head;
        let heads = |y: &Tensor, len: i64| y.reshape([b, len, self.n_head, head_dim]).transpose(1, 2);
        let (y, len) = match queries {
            Queries::All => {
                // [B, T, 3W] -> 3 × [B, H, T, D]. One split, not three narrows: its backward is
                // one concatenation, where each narrow's is a zero-filled [B, T, 3W] gradient
                // and the three are then summed.
                let [q, k, v] = split3(&self.c_attn.forward(x), w).map(|y| heads(&y, t));
                // Causal scaled-dot-product attention, scale 1/sqrt(D) (fused where it can be).
                (attention(&q, &k, &v, None, true, self.attn_pdrop, train), t)
            }
            Queries::Rows(_) | Queries::At(_) => {
                let len = queries.len(t);
                let kv = self.c_attn.forward_columns(x, w, 2 * w);
                let q = heads(&self.c_attn.forward_columns(&queries.select(x), 0, w), len);
                let (k, v) = match &kv.split(w, -1)[..] {
                    [k, v] => (heads(k, t), heads(v, t)),
                    parts => unreachable!("a [.., 2w] tensor splits into 2 parts of w, not {}", parts.len()),
                };
                let keys = Tensor::arange(t, (Kind::Int64, x.device()));
                // Query i sits at position p_i and sees keys 0..=p_i; the last position alone
                // sees every key and needs no mask.
                let mask = match queries {
                    Queries::Rows(r) => (r.start + r.len < t || r.len > 1).then(|| {
                        let at = Tensor::arange_start(r.start, r.start + r.len, (Kind::Int64, x.device())).unsqueeze(1);
                        keys.unsqueeze(0).le_tensor(&at)
                    }),
                    // [B, 1, k, T]: per example.
                    Queries::At(pos) => Some(keys.view([1, 1, 1, t]).le_tensor(&pos.view([b, 1, len, 1]))),
                    Queries::All => unreachable!("handled above"),
                };
                (attention(&q, &k, &v, mask.as_ref(), false, self.attn_pdrop, train), len)
            }
        };
        let y = y.transpose(1, 2).reshape([b, len, w]);
        self.c_proj.forward(&y)
    }
}

#[derive(Debug)]
struct Mlp {
    c_fc: Conv1D,
    c_proj: Conv1D,
    activation: Activation,
    resid_pdrop: f64,
}

impl Mlp {
    /// Before the residual dropout, as [`Attention::forward`].
    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.activation.apply(&self.c_fc.forward(x));
        self.c_proj.forward(&h)
    }
}

#[derive(Debug)]
struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn new(path: &nn::Path, cfg: &Gpt2Config) -> Result<Self> {
        let std = cfg.initializer_range;
        // Hugging Face scales every `c_proj.weight` (attention and MLP) by 1/sqrt(2·n_layer).
        let proj_std = std / (2.0 * cfg.n_layer as f64).sqrt();
        let w = cfg.n_embd;
        let attn = path / "attn";
        let mlp = path / "mlp";
        Ok(Block {
            ln_1: LayerNorm::new(&(path / "ln_1"), w, cfg.layer_norm_epsilon)?,
            attn: Attention {
                c_attn: Conv1D::new(&(&attn / "c_attn"), w, 3 * w, std)?,
                c_proj: Conv1D::new(&(&attn / "c_proj"), w, w, proj_std)?,
                n_head: cfg.n_head,
                attn_pdrop: cfg.attn_pdrop,
                resid_pdrop: cfg.resid_pdrop,
            },
            ln_2: LayerNorm::new(&(path / "ln_2"), w, cfg.layer_norm_epsilon)?,
            mlp: Mlp {
                c_fc: Conv1D::new(&(&mlp / "c_fc"), w, cfg.inner_dim(), std)?,
                c_proj: Conv1D::new(&(&mlp / "c_proj"), cfg.inner_dim(), w, proj_std)?,
                activation: cfg.activation_function,
                resid_pdrop: cfg.resid_pdrop,
            },
        })
    }

    /// Pre-LN block. The residual stream keeps `x`'s dtype (fp32); the attention and the
    /// feed-forward compute in `kind` (fp32, or bf16 in bf16 mode). With `queries` other than
    /// all, only those positions come out. Each branch's dropout is applied with its residual
    /// add (one fused pass each way for a bf16 branch on the CPU, `kernels/residual.rs`).
    fn forward(&self, x: &Tensor, train: bool, kind: Kind, queries: Queries) -> Tensor {
        let a = self.attn.forward(&self.ln_1.forward(x).to_kind(kind), train, queries);
        let x = residual_dropout(&queries.select(x), &a, self.attn.resid_pdrop, train);
        let m = self.mlp.forward(&self.ln_2.forward(&x).to_kind(kind));
        residual_dropout(&x, &m, self.mlp.resid_pdrop, train)
    }
}

/// The GPT-2 backbone. Created with Hugging Face's random initialisation; a checkpoint is then
/// copied over it with [`crate::checkpoint::load_weights`].
#[derive(Debug)]
pub struct Gpt2 {
    cfg: Gpt2Config,
    /// Token embedding: kept so checkpoints load name for name, never used by FPT's forward.
    pub wte: Tensor,
    pub wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    /// What the blocks' matmuls, attention and activations compute in (fp32 or bf16).
    compute_kind: Kind,
}

impl Gpt2 {
    /// Builds the variables under `path` (normally the VarStore root, so names are exactly
    /// Hugging Face's). Initialisation follows `GPT2PreTrainedModel._init_weights`: weights and
    /// embeddings normal(0, initializer_range), `c_proj.weight` normal(0, range/sqrt(2·n_layer)),
    /// biases 0, layer norms 1 and 0. Seed with `tch::manual_seed` for repeatable weights.
    pub fn new(path: &nn::Path, cfg: &Gpt2Config) -> Result<Self> {
        cfg.validate()?;
        let std = cfg.initializer_range;
        let wte = new_param(&(path / "wte"), "weight", &[cfg.vocab_size, cfg.n_embd], Init::Normal { std })?;
        let wpe = new_param(&(path / "wpe"), "weight", &[cfg.n_positions, cfg.n_embd], Init::Normal { std })?;
        let h = path / "h";
        let blocks = (0..cfg.n_layer).map(|i| Block::new(&(&h / i), cfg)).collect::<Result<Vec<_>>>()?;
        let ln_f = LayerNorm::new(&(path / "ln_f"), cfg.n_embd, cfg.layer_norm_epsilon)?;
        Ok(Gpt2 { cfg: cfg.clone(), wte, wpe, blocks, ln_f, compute_kind: Kind::Float })
    }

    pub fn config(&self) -> &Gpt2Config {
        &self.cfg
    }

    pub fn set_compute_kind(&mut self, kind: Kind) {
        self.compute_kind = kind;
    }

    /// Lets every frozen bf16 weight matrix be packed for oneDNN (`Conv1D::pack_frozen`); called
    /// once the weights are final (after loading, in bf16 mode).
    pub fn pack_frozen_weights(&mut self) {
        for block in &mut self.blocks {
            for layer in [&mut block.attn.c_attn, &mut block.attn.c_proj, &mut block.mlp.c_fc, &mut block.mlp.c_proj] {
                layer.pack_frozen();
            }
        }
    }

    /// Every layer's attention probabilities `[batch, heads, seq, seq]` (eval mode).
    pub fn attention_maps(&self, inputs_embeds: &Tensor) -> Result<Vec<Tensor>> {
        self.check_input(inputs_embeds)?;
        let seq = inputs_embeds.size()[1];
        let mut h = inputs_embeds + self.wpe.narrow(0, 0, seq);
        let mut maps = Vec::new();
        for block in &self.blocks {
            maps.push(block.attn.probs(&block.ln_1.forward(&h)));
            h = block.forward(&h, false, self.compute_kind, Queries::All);
        }
        Ok(maps)
    }

    fn check_input(&self, inputs_embeds: &Tensor) -> Result<()> {
        check_inputs_embeds(inputs_embeds, self.cfg.n_embd, "n_embd", self.cfg.n_positions, "n_positions").map(|_| ())
    }

    /// `last_hidden_state` for `inputs_embeds` of shape `[batch, seq, n_embd]` (float),
    /// positions 0..seq. `train` turns dropout on.
    pub fn forward_embeds(&self, inputs_embeds: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_rows(inputs_embeds, train, None)
    }

    /// The same, restricted to the positions `rows` (all when `None`): the last block computes
    /// its queries, projections and feed-forward only there, which is all a read-out needs.
    pub fn forward_rows(&self, inputs_embeds: &Tensor, train: bool, rows: Option<Rows>) -> Result<Tensor> {
        self.check_input(inputs_embeds)?;
        let seq = inputs_embeds.size()[1];
        let queries = match Rows::restricting(rows, seq)? {
            Some(r) => Queries::Rows(r),
            None => Queries::All,
        };
        Ok(self.run(inputs_embeds, train, queries))
    }

    /// `last_hidden_state` at per-example `positions` (`[batch, k]` int64): `[batch, k,
    /// n_embd]`. For right-padded inputs read out at each example's last real token: causal
    /// attention keeps the padding after it out, so no mask is needed.
    pub fn forward_at(&self, inputs_embeds: &Tensor, train: bool, positions: &Tensor) -> Result<Tensor> {
        self.check_input(inputs_embeds)?;
        let size = inputs_embeds.size();
        check_positions(positions, size[0], size[1])?;
        Ok(self.run(inputs_embeds, train, Queries::At(positions)))
    }

    fn run(&self, inputs_embeds: &Tensor, train: bool, queries: Queries) -> Tensor {
        let seq = inputs_embeds.size()[1];
        let pos = self.wpe.narrow(0, 0, seq);
        let mut h = dropout(&(inputs_embeds + pos), self.cfg.embd_pdrop, train);
        let last = self.blocks.len().saturating_sub(1);
        for (i, block) in self.blocks.iter().enumerate() {
            h = block.forward(&h, train, self.compute_kind, if i == last { queries } else { Queries::All });
        }
        self.ln_f.forward(&h)
    }
}

/// GPT-2's parameter groups, by Hugging Face's names: `wte` the (unused) token embedding, `wpe`
/// the positions, `h.{i}.ln_1`, `h.{i}.ln_2` and `ln_f` the layer norms, `h.{i}.attn.*` the
/// attention, `h.{i}.mlp.*` the feed-forward.
impl ParamGroups for Gpt2 {
    fn param_group(&self, name: &str) -> Option<ParamGroup> {
        let parts: Vec<&str> = name.split('.').collect();
        Some(match parts.as_slice() {
            ["wte", "weight"] => ParamGroup::TokenEmbedding,
            ["wpe", "weight"] => ParamGroup::Positions,
            ["ln_f", _] | ["h", _, "ln_1" | "ln_2", _] => ParamGroup::LayerNorms,
            ["h", _, "attn", _, _] => ParamGroup::Attention,
            ["h", _, "mlp", _, _] => ParamGroup::FeedForward,
            _ => return None,
        })
    }
}

impl HfConfig for Gpt2Config {
    const NAME: &'static str = "GPT-2";
    const TYPE_NAME: &'static str = "GPT2Config";
    const MODEL_TYPES: &'static [&'static str] = &["gpt2"];
    fn validate(&self) -> Result<()> {
        Gpt2Config::validate(self)
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn every_variable_has_a_group() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let mut cfg = Gpt2Config::custom(2, 8, 2);
        (cfg.vocab_size, cfg.n_positions) = (10, 4);
        let model = Gpt2::new(&vs.root(), &cfg).unwrap();
        let cases = [
            ("wte.weight", ParamGroup::TokenEmbedding),
            ("wpe.weight", ParamGroup::Positions),
            ("h.0.ln_1.weight", ParamGroup::LayerNorms),
            ("h.1.ln_2.bias", ParamGroup::LayerNorms),
            ("ln_f.weight", ParamGroup::LayerNorms),
            ("h.1.attn.c_attn.weight", ParamGroup::Attention),
            ("h.1.attn.c_proj.bias", ParamGroup::Attention),
            ("h.0.mlp.c_fc.weight", ParamGroup::FeedForward),
            ("h.0.mlp.c_proj.weight", ParamGroup::FeedForward),
        ];
        for (name, group) in cases {
            assert_eq!(model.param_group(name), Some(group), "{name}");
        }
        assert_eq!(model.param_group("h.0.something.weight"), None);
        assert_eq!(model.param_group("input_layer.proj.weight"), None);
        for name in vs.variables().keys() {
            assert!(model.param_group(name).is_some(), "{name} has no group");
        }
    }

    #[test]
    fn presets_have_the_released_shapes() {
        let xl = Gpt2Config::preset("gpt2-xl").unwrap();
        assert_eq!((xl.n_layer, xl.n_embd, xl.n_head, xl.n_positions), (48, 1600, 25, 1024));
        assert_eq!(Gpt2Config::preset("gpt2").unwrap(), Gpt2Config::default());
        assert!(Gpt2Config::preset("gpt3").is_err());
    }

    #[test]
    fn reads_a_hugging_face_config() {
        let json = r#"{"activation_function":"gelu_new","architectures":["GPT2LMHeadModel"],
            "attn_pdrop":0.1,"bos_token_id":50256,"embd_pdrop":0.1,"eos_token_id":50256,
            "initializer_range":0.02,"layer_norm_epsilon":1e-05,"model_type":"gpt2","n_ctx":1024,
            "n_embd":768,"n_head":12,"n_inner":null,"n_layer":12,"n_positions":1024,
            "resid_pdrop":0.1,"summary_type":"cls_index","vocab_size":50257}"#;
        let cfg: Gpt2Config = serde_json::from_str(json).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg, Gpt2Config::default());
        assert_eq!(cfg.inner_dim(), 3072);
    }

    #[test]
    fn rejects_configs_we_cannot_compute() {
        let mut cfg = Gpt2Config::custom(2, 10, 3);
        assert!(cfg.validate().unwrap_err().to_string().contains("divisible"));
        cfg = Gpt2Config::custom(2, 12, 3);
        cfg.model_type = Some("bert".into());
        assert!(cfg.validate().unwrap_err().to_string().contains("model_type"));
        cfg = Gpt2Config::custom(2, 12, 3);
        cfg.reorder_and_upcast_attn = true;
        assert!(cfg.validate().is_err());
        let bad_act = r#"{"activation_function":"mish"}"#;
        assert!(serde_json::from_str::<Gpt2Config>(bad_act).is_err());
    }

    /// bf16 GPT-2 with its frozen weights packed (kernels/packed.rs) against the same model on
    /// libtorch's products: the packed path is taken where oneDNN can pack, and values and input
    /// gradients agree within bf16 rounding through the blocks (a wrong transpose or a dropped
    /// bias is off by the outputs' own scale).
    #[test]
    fn bf16_layers_pack_for_short_inputs_and_agree_with_libtorchs_products() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let mut model = Gpt2::new(&vs.root(), &Gpt2Config::custom(2, 64, 4)).unwrap();
        tch::no_grad(|| {
            for (_, mut t) in vs.variables() {
                let _ = t.set_requires_grad(false);
                if t.dim() >= 2 {
                    let half = t.to_kind(Kind::BFloat16);
                    t.set_data(&half);
                }
            }
        });
        model.set_compute_kind(Kind::BFloat16);
        let x = Tensor::randn([3, 7, 64], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let run = |m: &Gpt2| {
            let h = m.forward_embeds(&x, false).unwrap();
            let g = Tensor::run_backward(&[(&h * h.ones_like().cumsum(-1, Kind::Float)).sum(Kind::Float)], &[&x], false, false).remove(0);
            (h, g)
        };
        let (h0, g0) = run(&model);
        model.pack_frozen_weights();
        let (h1, g1) = run(&model);
        let packed = model.blocks[1].mlp.c_fc.packed.is_packed();
        if let Some(expected) = crate::kernels::packing_expected() {
            assert_eq!(packed, expected, "oneDNN packing availability on this CPU");
        }
        for (what, a, b) in [("hidden states", &h1, &h0), ("input gradients", &g1, &g0)] {
            let scale = b.abs().max().double_value(&[]);
            let d = (a - b).abs().max().double_value(&[]);
            assert!(d <= scale / 64.0, "{what} differ by {d} (scale {scale}, packed: {packed})");
        }
    }
}
