//! GPT-2 (Hugging Face's `GPT2Model`) fed with `inputs_embeds`.
//!
//! VarStore paths are Hugging Face's names (`wte.weight`, `h.0.attn.c_attn.weight`, …) and
//! Conv1D weights keep Hugging Face's `[in, out]` layout, so a checkpoint is copied tensor by
//! tensor with no transposes (`y = b + x·W`, as `transformers`' Conv1D computes it).

use crate::backbone::{check_inputs_embeds, check_positions, Queries, Rows};
use crate::config::{Activation, Gpt2Config};
use crate::freeze::FreezeSpec;
use crate::init::{new_param, Init};
use crate::ops::{attention, dropout};
use anyhow::Result;
use tch::{nn, Kind, Tensor};

/// Hugging Face's `Conv1D`: weight `[in, out]`, `y = bias + x · weight`.
#[derive(Debug)]
pub struct Conv1D {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Conv1D {
    fn new(path: &nn::Path, n_in: i64, n_out: i64, std: f64, freeze: &FreezeSpec) -> Result<Self> {
        Ok(Conv1D {
            weight: new_param(path, "weight", &[n_in, n_out], Init::Normal { std }, freeze)?,
            bias: new_param(path, "bias", &[n_out], Init::Zeros, freeze)?,
        })
    }

    /// Computes in `x`'s dtype: a no-op cast for weights already in it (frozen weights made
    /// bf16 once at load), a per-call cast for trainable fp32 weights in bf16 mode.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_columns(x, 0, self.weight.size()[1])
    }

    /// Output columns `start..start + len` only (the weight's column slice is a strided view;
    /// BLAS reads it in place).
    pub fn forward_columns(&self, x: &Tensor, start: i64, len: i64) -> Tensor {
        let mut shape = x.size();
        let n_in = *shape.last().expect("Conv1D input has a feature axis");
        let kind = x.kind();
        let (weight, bias) = (self.weight.to_kind(kind), self.bias.to_kind(kind));
        let (weight, bias) = if start == 0 && len == weight.size()[1] {
            (weight, bias)
        } else {
            (weight.narrow(1, start, len), bias.narrow(0, start, len))
        };
        let out = bias.addmm(&x.reshape([-1, n_in]), &weight);
        *shape.last_mut().expect("non-empty shape") = len;
        out.reshape(shape)
    }
}

#[derive(Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    eps: f64,
    width: i64,
}

impl LayerNorm {
    pub(crate) fn new(path: &nn::Path, width: i64, eps: f64, freeze: &FreezeSpec) -> Result<Self> {
        Ok(LayerNorm {
            weight: new_param(path, "weight", &[width], Init::Ones, freeze)?,
            bias: new_param(path, "bias", &[width], Init::Zeros, freeze)?,
            eps,
            width,
        })
    }

    /// Statistics in `x`'s dtype (the residual stream stays fp32 in bf16 mode).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        x.layer_norm([self.width], Some(&self.weight.to_kind(kind)), Some(&self.bias.to_kind(kind)), self.eps, true)
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

    /// Causal self-attention of `x` `[batch, seq, width]`; with `queries` other than all, only
    /// those query positions are computed (keys and values still cover every position).
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
        dropout(&self.c_proj.forward(&y), self.resid_pdrop, train)
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
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let h = self.activation.apply(&self.c_fc.forward(x));
        dropout(&self.c_proj.forward(&h), self.resid_pdrop, train)
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
    fn new(path: &nn::Path, cfg: &Gpt2Config, freeze: &FreezeSpec) -> Result<Self> {
        let std = cfg.initializer_range;
        // Hugging Face scales every `c_proj.weight` (attention and MLP) by 1/sqrt(2·n_layer).
        let proj_std = std / (2.0 * cfg.n_layer as f64).sqrt();
        let w = cfg.n_embd;
        let attn = path / "attn";
        let mlp = path / "mlp";
        Ok(Block {
            ln_1: LayerNorm::new(&(path / "ln_1"), w, cfg.layer_norm_epsilon, freeze)?,
            attn: Attention {
                c_attn: Conv1D::new(&(&attn / "c_attn"), w, 3 * w, std, freeze)?,
                c_proj: Conv1D::new(&(&attn / "c_proj"), w, w, proj_std, freeze)?,
                n_head: cfg.n_head,
                attn_pdrop: cfg.attn_pdrop,
                resid_pdrop: cfg.resid_pdrop,
            },
            ln_2: LayerNorm::new(&(path / "ln_2"), w, cfg.layer_norm_epsilon, freeze)?,
            mlp: Mlp {
                c_fc: Conv1D::new(&(&mlp / "c_fc"), w, cfg.inner_dim(), std, freeze)?,
                c_proj: Conv1D::new(&(&mlp / "c_proj"), cfg.inner_dim(), w, proj_std, freeze)?,
                activation: cfg.activation_function,
                resid_pdrop: cfg.resid_pdrop,
            },
        })
    }

    /// Pre-LN block. The residual stream keeps `x`'s dtype (fp32); the attention and the
    /// feed-forward compute in `kind` (fp32, or bf16 in bf16 mode). With `queries` other than
    /// all, only those positions come out.
    fn forward(&self, x: &Tensor, train: bool, kind: Kind, queries: Queries) -> Tensor {
        let a = self.attn.forward(&self.ln_1.forward(x).to_kind(kind), train, queries);
        let x = queries.select(x) + a;
        &x + self.mlp.forward(&self.ln_2.forward(&x).to_kind(kind), train)
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
    pub fn new(path: &nn::Path, cfg: &Gpt2Config, freeze: &FreezeSpec) -> Result<Self> {
        cfg.validate()?;
        let std = cfg.initializer_range;
        let wte = new_param(&(path / "wte"), "weight", &[cfg.vocab_size, cfg.n_embd], Init::Normal { std }, freeze)?;
        let wpe = new_param(&(path / "wpe"), "weight", &[cfg.n_positions, cfg.n_embd], Init::Normal { std }, freeze)?;
        let h = path / "h";
        let blocks = (0..cfg.n_layer)
            .map(|i| Block::new(&(&h / i), cfg, freeze))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = LayerNorm::new(&(path / "ln_f"), cfg.n_embd, cfg.layer_norm_epsilon, freeze)?;
        Ok(Gpt2 { cfg: cfg.clone(), wte, wpe, blocks, ln_f, compute_kind: Kind::Float })
    }

    pub fn config(&self) -> &Gpt2Config {
        &self.cfg
    }

    pub fn set_compute_kind(&mut self, kind: Kind) {
        self.compute_kind = kind;
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
