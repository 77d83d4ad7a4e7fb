//! Llama (Hugging Face's `LlamaModel`) fed with `inputs_embeds`, and its config (`LlamaConfig`):
//! SmolLM2 and the other Llama-family decoders, Qwen2 (`Qwen2Model`) and Mistral
//! (`MistralModel`) included, which differ from Llama only in where linear layers have biases
//! ([`LlamaConfig::biases`]) and in sliding-window attention ([`LlamaConfig::window`]).
//!
//! As `transformers` computes it: no position table and no embedding dropout;
//! `num_hidden_layers` pre-norm blocks (`x + attn(input_layernorm(x))`,
//! `x + mlp(post_attention_layernorm(x))`), then the final `norm`. The norms are RMS norms
//! (`LlamaRMSNorm`); positions enter through rotary embeddings (RoPE, the config's `rope_theta`
//! and, for Llama-3-style configs, `rope_scaling` of type `llama3`; or both in the one
//! `rope_parameters` dict that transformers 5 writes) applied to queries and keys;
//! attention is causal and grouped-query (`num_key_value_heads` key/value heads shared by
//! `num_attention_heads` query heads, `head_dim` each, which need not be `hidden_size / heads`);
//! the MLP is SwiGLU, `down(act(gate(x)) · up(x))`. Linear layers have biases where the config
//! says so (`attention_bias`: q/k/v/o; `mlp_bias`: gate/up/down), as `LlamaAttention` and
//! `LlamaMLP` build them; SmolLM2 and Meta's Llamas have none.
//!
//! VarStore paths are `LlamaModel`'s names (`embed_tokens.weight`, `layers.{i}.self_attn.q_proj.weight`,
//! …, `norm.weight`) with PyTorch's `[out, in]` layout; a `LlamaForCausalLM` file's `model.`
//! prefix is removed by the loader ([`crate::checkpoint`]).

use crate::freeze::{ParamGroup, ParamGroups};
use crate::kernels::attention;
use crate::layers::hf_config::{check_model_type, check_positive, read_hf_config, HfConfig};
use crate::layers::init::{new_param, Init};
use crate::layers::{check_inputs_embeds, check_positions, Activation, Linear, Queries, RmsNorm, Rows};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{nn, Kind, Tensor};

/// The fields of Hugging Face's `LlamaConfig` that shape the model. Unknown fields are ignored;
/// the ones that would change the computation and are not implemented are rejected in
/// [`LlamaConfig::validate`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    #[serde(default = "d::vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "d::hidden_size")]
    pub hidden_size: i64,
    #[serde(default = "d::intermediate_size")]
    pub intermediate_size: i64,
    #[serde(default = "d::num_hidden_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "d::num_attention_heads")]
    pub num_attention_heads: i64,
    /// Key/value heads; `None` means `num_attention_heads` (no grouping).
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    /// Width of one head; `None` means `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<i64>,
    #[serde(default = "d::hidden_act")]
    pub hidden_act: Activation,
    #[serde(default = "d::max_position_embeddings")]
    pub max_position_embeddings: i64,
    #[serde(default = "d::initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "d::rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// RoPE's base (10,000 when absent); see [`LlamaConfig::theta`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// `null`, or a dict with `rope_type` (or the older `type`) `"default"` or `"llama3"`
    /// (`factor`, `low_freq_factor`, `high_freq_factor`, `original_max_position_embeddings`).
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// transformers 5's form of the two fields above, which its `save_pretrained` writes instead
    /// of them: one dict with `rope_theta`, `rope_type` and that type's fields. Where a file has
    /// both forms they must agree (see [`LlamaConfig::theta`] and [`LlamaConfig::rope`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
    /// Llama: biases on `q_proj`, `k_proj`, `v_proj` and `o_proj` (see [`LlamaConfig::biases`]).
    #[serde(default)]
    pub attention_bias: bool,
    /// Llama: biases on `gate_proj`, `up_proj` and `down_proj`.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Mistral's and Qwen2's sliding-window attention: a query sees itself and the
    /// `sliding_window - 1` keys before it. Absent means `transformers`' default, 4096; `null`
    /// none. Llama has no such field (it is ignored there). See [`LlamaConfig::window`].
    #[serde(default, deserialize_with = "d::present", skip_serializing_if = "Setting::is_absent")]
    pub sliding_window: Setting<i64>,
    /// Qwen2: whether `sliding_window` is used at all.
    #[serde(default)]
    pub use_sliding_window: bool,
    /// Qwen2: the layers before this one attend in full, the rest through the window (28 when
    /// absent), unless `layer_types` lists each layer's kind.
    #[serde(default)]
    pub max_window_layers: Option<i64>,
    /// Qwen2: `"full_attention"` or `"sliding_attention"` per layer.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// The token a causal LM saw at position 0 in pretraining; FPT prefixes its embedding row
    /// (docs/model.md, "Llama backbone").
    #[serde(default = "d::bos_token_id")]
    pub bos_token_id: Option<i64>,
    #[serde(default)]
    pub model_type: Option<String>,
}

/// A config field that may be absent (the architecture's default applies), `null`, or set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Setting<T> {
    #[default]
    Absent,
    Null,
    Set(T),
}

impl<T: Copy> Setting<T> {
    pub fn is_absent(&self) -> bool {
        matches!(self, Setting::Absent)
    }

    /// `Absent` as `default`, `null` as none.
    pub fn or_default(self, default: T) -> Option<T> {
        match self {
            Setting::Absent => Some(default),
            Setting::Null => None,
            Setting::Set(v) => Some(v),
        }
    }
}

mod d {
    use super::Setting;
    use crate::layers::Activation;
    use serde::{Deserialize, Deserializer};

    /// A field that is present: `null` or a value (an absent one takes `Setting::Absent`).
    pub fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(de: D) -> Result<Setting<T>, D::Error> {
        Ok(Option::<T>::deserialize(de)?.map_or(Setting::Null, Setting::Set))
    }
    pub fn vocab_size() -> i64 {
        32000
    }
    pub fn hidden_size() -> i64 {
        4096
    }
    pub fn intermediate_size() -> i64 {
        11008
    }
    pub fn num_hidden_layers() -> i64 {
        32
    }
    pub fn num_attention_heads() -> i64 {
        32
    }
    pub fn hidden_act() -> Activation {
        Activation::Silu
    }
    pub fn max_position_embeddings() -> i64 {
        2048
    }
    pub fn initializer_range() -> f64 {
        0.02
    }
    pub fn rms_norm_eps() -> f64 {
        1e-6
    }
    pub fn bos_token_id() -> Option<i64> {
        Some(1)
    }
}

/// RoPE frequency scaling, as `transformers`' `rope_scaling` describes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    /// The plain `theta^(-2i/d)` frequencies.
    Default,
    /// Llama 3.1's: long wavelengths divided by `factor`, short ones kept, a smooth blend between.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
}

/// The architectures this backbone computes: they differ from Llama only in where linear
/// layers have biases and in sliding-window attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Llama,
    Qwen2,
    Mistral,
}

/// Which linear layers have biases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Biases {
    /// `q_proj`, `k_proj`, `v_proj`.
    pub qkv: bool,
    pub o: bool,
    /// `gate_proj`, `up_proj`, `down_proj`.
    pub mlp: bool,
}

impl LlamaConfig {
    /// Any shape (GQA with `kv_heads`), every other field at `LlamaConfig()`'s values, SmolLM2's
    /// eps and theta aside: eps 1e-5, theta 1e4.
    pub fn custom(layers: i64, width: i64, heads: i64, kv_heads: i64, intermediate: i64) -> Self {
        LlamaConfig {
            vocab_size: 100,
            hidden_size: width,
            intermediate_size: intermediate,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv_heads),
            head_dim: None,
            hidden_act: Activation::Silu,
            max_position_embeddings: 128,
            initializer_range: 0.02,
            rms_norm_eps: 1e-5,
            rope_theta: Some(10000.0),
            rope_scaling: None,
            rope_parameters: None,
            attention_bias: false,
            mlp_bias: false,
            sliding_window: Setting::Absent,
            use_sliding_window: false,
            max_window_layers: None,
            layer_types: None,
            attention_dropout: 0.0,
            tie_word_embeddings: false,
            bos_token_id: Some(1),
            model_type: Some("llama".into()),
        }
    }

    /// Reads a Hugging Face `config.json` and checks it describes a Llama we implement.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        read_hf_config(path)
    }

    pub fn validate(&self) -> Result<()> {
        check_model_type::<Self>(self.model_type.as_deref())?;
        check_positive(&[
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
            ("head_dim", self.head_dim()),
            ("max_position_embeddings", self.max_position_embeddings),
            ("vocab_size", self.vocab_size),
        ])?;
        if self.head_dim.is_none() && self.hidden_size % self.num_attention_heads != 0 {
            bail!(
                "hidden_size {} is not divisible by num_attention_heads {} (and no head_dim is given)",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if self.head_dim() % 2 != 0 {
            bail!("head_dim {} is odd; rotary embeddings rotate pairs of features", self.head_dim());
        }
        if self.num_attention_heads % self.kv_heads() != 0 {
            bail!("num_attention_heads {} is not a multiple of num_key_value_heads {}", self.num_attention_heads, self.kv_heads());
        }
        if !(0.0..1.0).contains(&self.attention_dropout) {
            bail!("attention_dropout is {}; a dropout probability must be in [0, 1)", self.attention_dropout);
        }
        if let Setting::Set(w) = self.sliding_window {
            if w < 1 {
                bail!("sliding_window is {w}; it must be at least 1 (or null for no window)");
            }
        }
        if let Some(types) = &self.layer_types {
            if types.len() as i64 != self.num_hidden_layers {
                bail!("layer_types lists {} layers; num_hidden_layers is {}", types.len(), self.num_hidden_layers);
            }
            if let Some(t) = types.iter().find(|t| *t != "full_attention" && *t != "sliding_attention") {
                bail!("layer_types has {t:?}; expected \"full_attention\" or \"sliding_attention\"");
            }
        }
        let theta = self.theta()?;
        if !(theta.is_finite() && theta > 1.0) {
            bail!("rope_theta is {theta}; it must be a finite number > 1 (Llama 2 uses 1e4, SmolLM2 1e5)");
        }
        crate::layers::init::check_eps_and_range("rms_norm_eps", self.rms_norm_eps, self.initializer_range)?;
        self.rope()?;
        if let Some(bos) = self.bos_token_id {
            if !(0..self.vocab_size).contains(&bos) {
                bail!("bos_token_id {bos} is outside the vocabulary 0..{}", self.vocab_size);
            }
        }
        Ok(())
    }

    pub fn kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> i64 {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The BOS row FPT prefixes: `bos_token_id`, or 1 (`LlamaConfig`'s default) when null.
    pub fn bos(&self) -> i64 {
        self.bos_token_id.unwrap_or(1)
    }

    /// Which of the architectures this backbone computes the file describes (`model_type`;
    /// none is Llama).
    pub fn family(&self) -> Family {
        match self.model_type.as_deref() {
            Some("qwen2") => Family::Qwen2,
            Some("mistral") => Family::Mistral,
            _ => Family::Llama,
        }
    }

    /// Which projections have biases, as each architecture's attention and MLP build them:
    /// Llama's `attention_bias` (q, k, v, o) and `mlp_bias` (gate, up, down); Qwen2's q, k and v
    /// always, o and the MLP never; Mistral's none.
    pub fn biases(&self) -> Biases {
        match self.family() {
            Family::Llama => Biases { qkv: self.attention_bias, o: self.attention_bias, mlp: self.mlp_bias },
            Family::Qwen2 => Biases { qkv: true, o: false, mlp: false },
            Family::Mistral => Biases { qkv: false, o: false, mlp: false },
        }
    }

    /// Layer `layer`'s attention window (a query sees the `window` keys up to itself), or `None`
    /// for full causal attention: Mistral's `sliding_window` on every layer; Qwen2's, with
    /// `use_sliding_window`, on the `layer_types` marked `"sliding_attention"` (by default the
    /// layers from `max_window_layers` on), as `Qwen2Config` and `Qwen2Attention` decide.
    pub fn window(&self, layer: i64) -> Option<i64> {
        const DEFAULT_WINDOW: i64 = 4096;
        match self.family() {
            Family::Llama => None,
            Family::Mistral => self.sliding_window.or_default(DEFAULT_WINDOW),
            Family::Qwen2 => {
                let window = if self.use_sliding_window { self.sliding_window.or_default(DEFAULT_WINDOW) } else { None };
                let sliding = match &self.layer_types {
                    Some(types) => types.get(layer as usize).is_some_and(|t| t == "sliding_attention"),
                    None => window.is_some() && layer >= self.max_window_layers.unwrap_or(28),
                };
                window.filter(|_| sliding)
            }
        }
    }

    /// RoPE's base: `rope_parameters.rope_theta` where the file has transformers 5's dict, else
    /// `rope_theta`, else `LlamaConfig`'s default 10,000. A file with both that disagree is
    /// refused: which one transformers would use depends on its version.
    pub fn theta(&self) -> Result<f64> {
        let Some(params) = self.rope_parameters.as_ref().filter(|p| !p.is_null()) else {
            return Ok(self.rope_theta.unwrap_or(10000.0));
        };
        let theta = params
            .get("rope_theta")
            .and_then(|t| t.as_f64())
            .context("rope_parameters has no number rope_theta (transformers 5 writes RoPE's base there)")?;
        if let Some(top) = self.rope_theta.filter(|t| *t != theta) {
            bail!("rope_theta {top} and rope_parameters.rope_theta {theta} disagree");
        }
        Ok(theta)
    }

    /// The RoPE scaling, from `rope_parameters` (transformers 5) or `rope_scaling` (earlier
    /// versions; both must agree where a file has both); other types (linear, dynamic, yarn,
    /// longrope) are errors.
    pub fn rope(&self) -> Result<RopeScaling> {
        let old = Self::parse_rope("rope_scaling", self.rope_scaling.as_ref())?;
        let Some(params) = self.rope_parameters.as_ref().filter(|p| !p.is_null()) else { return Ok(old) };
        let new = Self::parse_rope("rope_parameters", Some(params))?;
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) && old != new {
            bail!("rope_scaling ({old:?}) and rope_parameters ({new:?}) disagree");
        }
        Ok(new)
    }

    fn parse_rope(what: &str, v: Option<&serde_json::Value>) -> Result<RopeScaling> {
        let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(RopeScaling::Default) };
        let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(|t| t.as_str()).unwrap_or("default");
        let field = |name: &str| -> Result<f64> {
            v.get(name)
                .and_then(|x| x.as_f64())
                .filter(|x| x.is_finite() && *x > 0.0)
                .with_context(|| format!("{what} of type llama3 needs a positive number {name}"))
        };
        match kind {
            "default" => Ok(RopeScaling::Default),
            "llama3" => {
                let s = RopeScaling::Llama3 {
                    factor: field("factor")?,
                    low_freq_factor: field("low_freq_factor")?,
                    high_freq_factor: field("high_freq_factor")?,
                    original_max_position_embeddings: field("original_max_position_embeddings")?,
                };
                if let RopeScaling::Llama3 { low_freq_factor, high_freq_factor, .. } = s {
                    if high_freq_factor <= low_freq_factor {
                        bail!("{what}: high_freq_factor {high_freq_factor} must exceed low_freq_factor {low_freq_factor}");
                    }
                }
                Ok(s)
            }
            other => bail!(
                "{what} type {other:?} is not supported (implemented: null / \"default\" and \"llama3\", the types SmolLM2 and Llama 3 use)"
            ),
        }
    }

    /// Sets the attention dropout (the only dropout `LlamaModel` has) to `p`.
    pub fn with_dropout(mut self, p: f64) -> Self {
        self.attention_dropout = p;
        self
    }

    /// The rotary inverse frequencies `[head_dim / 2]`, in f64 (`modeling_rope_utils`' default and
    /// llama3 rules).
    pub fn inv_freq(&self) -> Result<Vec<f64>> {
        let dim = self.head_dim();
        let theta = self.theta()?;
        let base: Vec<f64> = (0..dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f64 / dim as f64)).collect();
        Ok(match self.rope()? {
            RopeScaling::Default => base,
            RopeScaling::Llama3 { factor, low_freq_factor: low, high_freq_factor: high, original_max_position_embeddings: old } => {
                let (low_wavelen, high_wavelen) = (old / low, old / high);
                base.into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low) / (high - low);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        })
    }
}

/// `[.., d]` → `[-x2, x1]` for halves x1, x2 (`transformers`' `rotate_half`).
fn rotate_half(x: &Tensor) -> Tensor {
    let d = *x.size().last().expect("rotary input has a feature axis");
    let (x1, x2) = (x.narrow(-1, 0, d / 2), x.narrow(-1, d / 2, d / 2));
    Tensor::cat(&[x2.neg(), x1], -1)
}

/// Rotary cos/sin for the positions a layer computes, broadcastable against `[B, H, T, D]`.
struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    fn apply(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        x * self.cos.to_kind(kind) + rotate_half(x) * self.sin.to_kind(kind)
    }

    /// The rows of a `[T, D]` table at `queries`: `[T', D]`, or `[B, 1, k, D]` per example.
    fn select(&self, queries: Queries) -> Rotary {
        let pick = |t: &Tensor| match queries {
            Queries::All => t.shallow_clone(),
            Queries::Rows(r) => t.narrow(0, r.start, r.len),
            Queries::At(pos) => {
                let (b, k) = (pos.size()[0], pos.size()[1]);
                t.index_select(0, &pos.reshape([-1])).view([b, 1, k, -1])
            }
        };
        Rotary { cos: pick(&self.cos), sin: pick(&self.sin) }
    }
}

#[derive(Debug)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    /// Sliding-window attention: a query sees the `window` keys up to itself.
    window: Option<i64>,
    dropout: f64,
}

impl Attention {
    /// `[B, T, heads·D]` → `[B, heads, T, D]`.
    fn split(y: &Tensor, heads: i64, d: i64) -> Tensor {
        let (b, t, _) = y.size3().expect("projection is [batch, seq, heads·head_dim]");
        y.view([b, t, heads, d]).transpose(1, 2)
    }

    /// Key/value heads repeated for their query heads (`repeat_kv`): `[B, kv, T, D]` → `[B, heads, T, D]`.
    fn repeat_kv(&self, x: &Tensor) -> Tensor {
        let groups = self.heads / self.kv_heads;
        if groups == 1 {
            return x.shallow_clone();
        }
        let (b, kv, t, d) = x.size4().expect("keys are [B, kv, T, D]");
        x.unsqueeze(2).expand([b, kv, groups, t, d], false).reshape([b, kv * groups, t, d])
    }

    /// Rotated keys and repeated values over every position.
    fn keys_values(&self, x: &Tensor, rotary: &Rotary) -> (Tensor, Tensor) {
        let k = rotary.apply(&Self::split(&self.k_proj.forward(x), self.kv_heads, self.head_dim));
        let v = Self::split(&self.v_proj.forward(x), self.kv_heads, self.head_dim);
        (self.repeat_kv(&k), self.repeat_kv(&v))
    }

    /// Which of `t` keys the queries at positions `at` (a column, `[n, 1]` or `[b, 1, n, 1]`)
    /// may see: the keys up to their own position and, with a window, after `position - window`
    /// (`transformers`' `sliding_window_overlay`: `kv_idx > q_idx - sliding_window`).
    fn allowed(&self, at: &Tensor, t: i64) -> Tensor {
        let mut shape = vec![1i64; at.dim()];
        shape[at.dim() - 1] = t;
        let keys = Tensor::arange(t, (Kind::Int64, at.device())).view(shape.as_slice());
        let causal = keys.le_tensor(at);
        match self.window {
            Some(w) if w < t => causal.logical_and(&keys.gt_tensor(&(at - w))),
            _ => causal,
        }
    }

    /// Attention probabilities `[batch, heads, seq, seq]` (eval, causal), written out.
    fn probs(&self, x: &Tensor, rotary: &Rotary) -> Tensor {
        let t = x.size()[1];
        let q = rotary.apply(&Self::split(&self.q_proj.forward(x), self.heads, self.head_dim));
        let (k, _) = self.keys_values(x, rotary);
        let scores = q.matmul(&k.transpose(-2, -1)) / (self.head_dim as f64).sqrt();
        let at = Tensor::arange(t, (Kind::Int64, x.device())).unsqueeze(1);
        scores.masked_fill(&self.allowed(&at, t).logical_not(), f64::NEG_INFINITY).softmax(-1, Kind::Float)
    }

    /// Causal grouped-query self-attention of `x` `[batch, seq, width]` (keys and values over
    /// every position), computed at the `queries` positions only.
    fn forward(&self, x: &Tensor, train: bool, rotary: &Rotary, queries: Queries) -> Tensor {
        let (b, t, _) = x.size3().expect("attention input is [batch, seq, width]");
        let (k, v) = self.keys_values(x, rotary);
        let len = queries.len(t);
        let q = rotary.select(queries).apply(&Self::split(&self.q_proj.forward(&queries.select(x)), self.heads, self.head_dim));
        let windowed = self.window.is_some_and(|w| w < t);
        let y = match queries {
            // Causal over every position: libtorch's causal flag, unless a window cuts keys off.
            Queries::All if !windowed => attention(&q, &k, &v, None, true, self.dropout, train),
            // The last position alone, with no window, sees every key: no mask either.
            Queries::Rows(r) if r.len == 1 && r.start == t - 1 && !windowed => attention(&q, &k, &v, None, false, self.dropout, train),
            // Query i sits at position p_i and sees keys 0..=p_i (after p_i - window).
            Queries::All => {
                let at = Tensor::arange(t, (Kind::Int64, x.device())).unsqueeze(1);
                attention(&q, &k, &v, Some(&self.allowed(&at, t)), false, self.dropout, train)
            }
            Queries::Rows(r) => {
                let at = Tensor::arange_start(r.start, r.start + r.len, (Kind::Int64, x.device())).unsqueeze(1);
                attention(&q, &k, &v, Some(&self.allowed(&at, t)), false, self.dropout, train)
            }
            Queries::At(pos) => attention(&q, &k, &v, Some(&self.allowed(&pos.view([b, 1, len, 1]), t)), false, self.dropout, train),
        };
        self.o_proj.forward(&y.transpose(1, 2).reshape([b, len, self.heads * self.head_dim]))
    }
}

#[derive(Debug)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    act: Activation,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.down_proj.forward(&(self.act.apply(&self.gate_proj.forward(x)) * self.up_proj.forward(x)))
    }
}

#[derive(Debug)]
struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    fn new(path: &nn::Path, cfg: &LlamaConfig, layer: i64) -> Result<Self> {
        let (w, d, std) = (cfg.hidden_size, cfg.head_dim(), cfg.initializer_range);
        let biases = cfg.biases();
        // Hugging Face's init: weights normal(0, initializer_range), biases 0.
        let linear = |p: nn::Path, n_in: i64, n_out: i64, bias: bool| {
            Linear::new(&p, n_in, n_out, Init::Normal { std }, bias.then_some(Init::Zeros))
        };
        let (attn, mlp) = (path / "self_attn", path / "mlp");
        Ok(Block {
            input_layernorm: RmsNorm::new(&(path / "input_layernorm"), w, cfg.rms_norm_eps)?,
            self_attn: Attention {
                q_proj: linear(&attn / "q_proj", w, cfg.num_attention_heads * d, biases.qkv)?,
                k_proj: linear(&attn / "k_proj", w, cfg.kv_heads() * d, biases.qkv)?,
                v_proj: linear(&attn / "v_proj", w, cfg.kv_heads() * d, biases.qkv)?,
                o_proj: linear(&attn / "o_proj", cfg.num_attention_heads * d, w, biases.o)?,
                heads: cfg.num_attention_heads,
                kv_heads: cfg.kv_heads(),
                head_dim: d,
                window: cfg.window(layer),
                dropout: cfg.attention_dropout,
            },
            post_attention_layernorm: RmsNorm::new(&(path / "post_attention_layernorm"), w, cfg.rms_norm_eps)?,
            mlp: Mlp {
                gate_proj: linear(&mlp / "gate_proj", w, cfg.intermediate_size, biases.mlp)?,
                up_proj: linear(&mlp / "up_proj", w, cfg.intermediate_size, biases.mlp)?,
                down_proj: linear(&mlp / "down_proj", cfg.intermediate_size, w, biases.mlp)?,
                act: cfg.hidden_act,
            },
        })
    }

    /// Pre-norm block; the residual stream keeps `x`'s dtype (fp32), attention and MLP compute
    /// in `kind`.
    fn forward(&self, x: &Tensor, train: bool, kind: Kind, rotary: &Rotary, queries: Queries) -> Tensor {
        let a = self.self_attn.forward(&self.input_layernorm.forward(x).to_kind(kind), train, rotary, queries);
        let x = queries.select(x) + a;
        &x + self.mlp.forward(&self.post_attention_layernorm.forward(&x).to_kind(kind))
    }
}

/// The Llama backbone. Created with Hugging Face's random init (`LlamaPreTrainedModel`: linear
/// weights and the embedding normal(0, initializer_range), RMS norm gains 1); a checkpoint is
/// then copied over it with [`crate::checkpoint::load_weights`].
#[derive(Debug)]
pub struct Llama {
    cfg: LlamaConfig,
    /// Token embedding: loaded name for name; FPT reads one row of it, the BOS prefix.
    pub embed_tokens: Tensor,
    blocks: Vec<Block>,
    norm: RmsNorm,
    inv_freq: Vec<f64>,
    compute_kind: Kind,
}

impl Llama {
    pub fn new(path: &nn::Path, cfg: &LlamaConfig) -> Result<Self> {
        cfg.validate()?;
        let std = cfg.initializer_range;
        let embed_tokens = new_param(&(path / "embed_tokens"), "weight", &[cfg.vocab_size, cfg.hidden_size], Init::Normal { std })?;
        let layers = path / "layers";
        let blocks = (0..cfg.num_hidden_layers).map(|i| Block::new(&(&layers / i), cfg, i)).collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(&(path / "norm"), cfg.hidden_size, cfg.rms_norm_eps)?;
        Ok(Llama { cfg: cfg.clone(), embed_tokens, blocks, norm, inv_freq: cfg.inv_freq()?, compute_kind: Kind::Float })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn set_compute_kind(&mut self, kind: Kind) {
        self.compute_kind = kind;
    }

    /// The embedding row of the BOS token, `[1, 1, width]` fp32: what the model saw at position 0
    /// in pretraining, and what FPT puts there (docs/model.md, "Llama backbone").
    pub fn bos_embedding(&self) -> Tensor {
        self.embed_tokens.get(self.cfg.bos()).to_kind(Kind::Float).view([1, 1, -1])
    }

    /// Rotary cos/sin `[seq, head_dim]`, computed in f64.
    fn rotary(&self, seq: i64, device: tch::Device) -> Rotary {
        let opts = (Kind::Double, device);
        let inv = Tensor::from_slice(&self.inv_freq).to_device(device);
        let freqs = Tensor::arange(seq, opts).unsqueeze(1) * inv.unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        // Kept in f64; `apply` rounds them to the inputs' dtype.
        Rotary { cos: emb.cos(), sin: emb.sin() }
    }

    fn check_input(&self, inputs_embeds: &Tensor) -> Result<()> {
        check_inputs_embeds(inputs_embeds, self.cfg.hidden_size, "hidden_size", self.cfg.max_position_embeddings, "max_position_embeddings")
            .map(|_| ())
    }

    /// Every layer's attention probabilities `[batch, heads, seq, seq]` (eval mode).
    pub fn attention_maps(&self, inputs_embeds: &Tensor) -> Result<Vec<Tensor>> {
        self.check_input(inputs_embeds)?;
        let rotary = self.rotary(inputs_embeds.size()[1], inputs_embeds.device());
        let mut h = inputs_embeds.shallow_clone();
        let mut maps = Vec::new();
        for block in &self.blocks {
            maps.push(block.self_attn.probs(&block.input_layernorm.forward(&h).to_kind(self.compute_kind), &rotary));
            h = block.forward(&h, false, self.compute_kind, &rotary, Queries::All);
        }
        Ok(maps)
    }

    pub fn forward_embeds(&self, inputs_embeds: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_rows(inputs_embeds, train, None)
    }

    /// `last_hidden_state` at the positions `rows` (all when `None`): the last block computes
    /// queries, projections and the MLP only there.
    pub fn forward_rows(&self, inputs_embeds: &Tensor, train: bool, rows: Option<Rows>) -> Result<Tensor> {
        self.check_input(inputs_embeds)?;
        let queries = match Rows::restricting(rows, inputs_embeds.size()[1])? {
            Some(r) => Queries::Rows(r),
            None => Queries::All,
        };
        Ok(self.run(inputs_embeds, train, queries))
    }

    /// `last_hidden_state` at per-example `positions` (`[batch, k]` int64); causal, so right
    /// padding after them needs no mask.
    pub fn forward_at(&self, inputs_embeds: &Tensor, train: bool, positions: &Tensor) -> Result<Tensor> {
        self.check_input(inputs_embeds)?;
        let size = inputs_embeds.size();
        check_positions(positions, size[0], size[1])?;
        Ok(self.run(inputs_embeds, train, Queries::At(positions)))
    }

    fn run(&self, inputs_embeds: &Tensor, train: bool, queries: Queries) -> Tensor {
        let rotary = self.rotary(inputs_embeds.size()[1], inputs_embeds.device());
        let mut h = inputs_embeds.shallow_clone();
        let last = self.blocks.len().saturating_sub(1);
        for (i, block) in self.blocks.iter().enumerate() {
            h = block.forward(&h, train, self.compute_kind, &rotary, if i == last { queries } else { Queries::All });
        }
        self.norm.forward(&h)
    }
}

/// Llama's parameter groups: `embed_tokens` the token embedding, every RMS norm
/// (`input_layernorm`, `post_attention_layernorm`, `norm`) `layer_norms`, `self_attn.*`
/// attention, `mlp.*` feed-forward (weights, and biases where the config has them). Rotary
/// positions have no parameters: `positions` is empty.
impl ParamGroups for Llama {
    fn param_group(&self, name: &str) -> Option<ParamGroup> {
        let parts: Vec<&str> = name.split('.').collect();
        Some(match parts.as_slice() {
            ["embed_tokens", "weight"] => ParamGroup::TokenEmbedding,
            ["norm", "weight"] | ["layers", _, "input_layernorm" | "post_attention_layernorm", "weight"] => ParamGroup::LayerNorms,
            ["layers", _, "self_attn", "q_proj" | "k_proj" | "v_proj" | "o_proj", "weight" | "bias"] => ParamGroup::Attention,
            ["layers", _, "mlp", "gate_proj" | "up_proj" | "down_proj", "weight" | "bias"] => ParamGroup::FeedForward,
            _ => return None,
        })
    }
}

impl HfConfig for LlamaConfig {
    const NAME: &'static str = "Llama";
    const TYPE_NAME: &'static str = "LlamaConfig";
    const MODEL_TYPES: &'static [&'static str] = &["llama", "qwen2", "mistral"];
    fn validate(&self) -> Result<()> {
        LlamaConfig::validate(self)
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn every_variable_has_a_group_and_positions_is_empty() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let model = Llama::new(&vs.root(), &LlamaConfig::custom(2, 12, 3, 1, 20)).unwrap();
        for (name, group) in [
            ("embed_tokens.weight", ParamGroup::TokenEmbedding),
            ("norm.weight", ParamGroup::LayerNorms),
            ("layers.1.input_layernorm.weight", ParamGroup::LayerNorms),
            ("layers.0.post_attention_layernorm.weight", ParamGroup::LayerNorms),
            ("layers.0.self_attn.k_proj.weight", ParamGroup::Attention),
            ("layers.1.mlp.down_proj.weight", ParamGroup::FeedForward),
        ] {
            assert_eq!(model.param_group(name), Some(group), "{name}");
        }
        assert_eq!(model.param_group("layers.0.input_layernorm.bias"), None);
        assert_eq!(model.param_group("input_layer.proj.weight"), None);
        let vars = vs.variables();
        assert_eq!(vars.len(), 1 + 2 * 9 + 1);
        for name in vars.keys() {
            assert!(model.param_group(name).is_some_and(|g| g != ParamGroup::Positions), "{name}");
        }
        // GQA shapes: 3 query heads of 4, one key/value head.
        assert_eq!(vars["layers.0.self_attn.q_proj.weight"].size(), [12, 12]);
        assert_eq!(vars["layers.0.self_attn.k_proj.weight"].size(), [4, 12]);
        assert_eq!(vars["layers.0.self_attn.o_proj.weight"].size(), [12, 12]);
    }

    #[test]
    fn biases_are_built_where_the_config_asks_zero_at_init_and_grouped_with_their_weights() {
        for (attention_bias, mlp_bias) in [(true, false), (false, true), (true, true)] {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let cfg = LlamaConfig { attention_bias, mlp_bias, ..LlamaConfig::custom(2, 12, 3, 1, 20) };
            let model = Llama::new(&vs.root(), &cfg).unwrap();
            let vars = vs.variables();
            let biases: Vec<&String> = vars.keys().filter(|n| n.ends_with(".bias")).collect();
            assert_eq!(biases.len(), 2 * (4 * attention_bias as usize + 3 * mlp_bias as usize), "{biases:?}");
            for name in &biases {
                let bias = &vars[*name];
                assert_eq!(bias.abs().sum(Kind::Float).double_value(&[]), 0.0, "{name} is not zero at init");
                let group = if name.contains(".self_attn.") { ParamGroup::Attention } else { ParamGroup::FeedForward };
                assert_eq!(model.param_group(name), Some(group), "{name}");
            }
            if attention_bias {
                assert_eq!(vars["layers.1.self_attn.k_proj.bias"].size(), [4]);
                assert_eq!(vars["layers.1.self_attn.o_proj.bias"].size(), [12]);
            }
            if mlp_bias {
                assert_eq!(vars["layers.0.mlp.up_proj.bias"].size(), [20]);
                assert_eq!(vars["layers.0.mlp.down_proj.bias"].size(), [12]);
            }
        }
    }

    #[test]
    fn reads_smollm2s_config_and_refuses_what_it_cannot_compute() {
        let json = r#"{"architectures":["LlamaForCausalLM"],"attention_bias":false,"attention_dropout":0.0,
            "bos_token_id":1,"eos_token_id":2,"head_dim":64,"hidden_act":"silu","hidden_size":576,
            "initializer_range":0.02,"intermediate_size":1536,"max_position_embeddings":8192,"mlp_bias":false,
            "model_type":"llama","num_attention_heads":9,"num_hidden_layers":30,"num_key_value_heads":3,
            "pretraining_tp":1,"rms_norm_eps":1e-05,"rope_scaling":null,"rope_theta":100000.0,
            "tie_word_embeddings":true,"vocab_size":49152}"#;
        let cfg: LlamaConfig = serde_json::from_str(json).unwrap();
        cfg.validate().unwrap();
        assert_eq!((cfg.kv_heads(), cfg.head_dim(), cfg.bos()), (3, 64, 1));
        assert_eq!(cfg.rope().unwrap(), RopeScaling::Default);
        let edit = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
            f(&mut v);
            serde_json::from_value::<LlamaConfig>(v).map_err(anyhow::Error::from).and_then(|c| c.validate()).unwrap_err().to_string()
        };
        assert!(edit(&|v| v["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 2.0})).contains("\"linear\" is not supported"));
        assert!(edit(&|v| v["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0})).contains("low_freq_factor"));
        assert!(edit(&|v| v["num_key_value_heads"] = 2.into()).contains("multiple"));
        assert!(edit(&|v| v["model_type"] = "gpt2".into()).contains("model_type"));
        assert!(edit(&|v| v["bos_token_id"] = 49152.into()).contains("bos_token_id"));
    }

    /// llama3 scaling against `_compute_llama3_parameters` on the fixture's case (head_dim 16,
    /// theta 5e5, factor 8, low 1, high 4, original context 256), values printed by transformers.
    #[test]
    fn llama3_rope_keeps_short_wavelengths_and_divides_long_ones() {
        let mut cfg = LlamaConfig::custom(1, 64, 4, 2, 8);
        cfg.rope_theta = Some(500000.0);
        let plain = cfg.inv_freq().unwrap();
        cfg.rope_scaling = Some(
            serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 256}),
        );
        let scaled = cfg.inv_freq().unwrap();
        let wavelen = |f: f64| 2.0 * std::f64::consts::PI / f;
        let (mut kept, mut divided, mut smoothed) = (0, 0, 0);
        for (p, s) in plain.iter().zip(&scaled) {
            if wavelen(*p) < 64.0 {
                assert_eq!(p, s);
                kept += 1;
            } else if wavelen(*p) > 256.0 {
                assert!((p / 8.0 - s).abs() < 1e-18);
                divided += 1;
            } else {
                assert!(s < p && *s > p / 8.0);
                smoothed += 1;
            }
        }
        assert_eq!((kept, smoothed, divided), (2, 1, 5));
    }

    /// transformers 5 writes RoPE as one `rope_parameters` dict (what its `save_pretrained` wrote
    /// for `LlamaConfig(rope_theta=5e5, rope_scaling={llama3…})`, 2026-11-29): the same
    /// frequencies as the two older fields; a file with both forms must agree.
    #[test]
    fn transformers_5_rope_parameters_mean_what_rope_theta_and_rope_scaling_meant() {
        let llama3 = r#""factor":8.0,"high_freq_factor":4.0,"low_freq_factor":1.0,"original_max_position_embeddings":256"#;
        let base = r#""hidden_size":64,"intermediate_size":128,"num_hidden_layers":1,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":100,"model_type":"llama""#;
        let parse = |rest: String| -> Result<LlamaConfig> {
            let cfg: LlamaConfig = serde_json::from_str(&format!("{{{base}{rest}}}"))?;
            cfg.validate()?;
            Ok(cfg)
        };
        let old = parse(format!(r#","rope_theta":500000.0,"rope_scaling":{{"rope_type":"llama3",{llama3}}}"#)).unwrap();
        let new = parse(format!(r#","rope_parameters":{{"rope_theta":500000.0,"rope_type":"llama3",{llama3}}}"#)).unwrap();
        let both = parse(format!(
            r#","rope_theta":500000.0,"rope_scaling":{{"rope_type":"llama3",{llama3}}},"rope_parameters":{{"rope_theta":500000.0,"rope_type":"llama3",{llama3}}}"#
        ))
        .unwrap();
        assert_eq!(new.theta().unwrap(), 500000.0);
        assert!(matches!(new.rope().unwrap(), RopeScaling::Llama3 { factor, .. } if factor == 8.0));
        assert_eq!(new.inv_freq().unwrap(), old.inv_freq().unwrap());
        assert_eq!(both.inv_freq().unwrap(), old.inv_freq().unwrap());
        // Not the default base: the dict is read, not skipped.
        assert_ne!(new.inv_freq().unwrap(), parse(String::new()).unwrap().inv_freq().unwrap());
        let plain = parse(r#","rope_parameters":{"rope_theta":100000.0,"rope_type":"default"}"#.into()).unwrap();
        assert_eq!((plain.theta().unwrap(), plain.rope().unwrap()), (100000.0, RopeScaling::Default));
        // A serialised config reads back the same.
        let again: LlamaConfig = serde_json::from_str(&serde_json::to_string(&new).unwrap()).unwrap();
        assert_eq!(again, new);
        let refused = |rest: &str| parse(rest.into()).unwrap_err().to_string();
        assert!(refused(r#","rope_theta":10000.0,"rope_parameters":{"rope_theta":500000.0,"rope_type":"default"}"#).contains("disagree"));
        assert!(refused(&format!(
            r#","rope_scaling":{{"rope_type":"llama3",{llama3}}},"rope_parameters":{{"rope_theta":500000.0,"rope_type":"default"}}"#
        ))
        .contains("disagree"));
        assert!(refused(r#","rope_parameters":{"rope_type":"default"}"#).contains("no number rope_theta"));
        assert!(refused(r#","rope_parameters":{"rope_theta":500000.0,"rope_type":"yarn","factor":4.0}"#)
            .contains("rope_parameters type \"yarn\" is not supported"));
    }

    /// Which layers get a window and which biases, per `model_type`, as `Qwen2Config`,
    /// `MistralConfig` and their attention classes decide (the parity fixtures check two files
    /// transformers wrote; these are the other branches).
    #[test]
    fn each_family_gets_its_windows_and_biases() {
        let parse = |json: &str| {
            let cfg: LlamaConfig = serde_json::from_str(json).unwrap();
            cfg.validate().unwrap();
            cfg
        };
        let base = r#""hidden_size":16,"intermediate_size":32,"num_attention_heads":2,"vocab_size":10"#;
        let windows = |cfg: &LlamaConfig| (0..cfg.num_hidden_layers).map(|i| cfg.window(i)).collect::<Vec<_>>();
        // Llama ignores a stray sliding_window.
        let llama = parse(&format!(r#"{{{base},"num_hidden_layers":2,"model_type":"llama","sliding_window":3}}"#));
        assert_eq!(windows(&llama), [None, None]);
        // Mistral: 4096 when absent, none when null, else the value, on every layer; no biases.
        let mistral = |sw: &str| parse(&format!(r#"{{{base},"num_hidden_layers":2,"model_type":"mistral"{sw}}}"#));
        assert_eq!(windows(&mistral("")), [Some(4096), Some(4096)]);
        assert_eq!(windows(&mistral(r#","sliding_window":null"#)), [None, None]);
        assert_eq!(windows(&mistral(r#","sliding_window":7"#)), [Some(7), Some(7)]);
        assert_eq!(mistral(r#","attention_bias":true"#).biases(), Biases { qkv: false, o: false, mlp: false });
        // Qwen2: no window unless use_sliding_window; then the layers from max_window_layers
        // (28 when absent) on, unless layer_types says; biases on q, k, v only.
        let qwen = |rest: &str| parse(&format!(r#"{{{base},"num_hidden_layers":3,"model_type":"qwen2","sliding_window":5{rest}}}"#));
        assert_eq!(windows(&qwen("")), [None, None, None]);
        assert_eq!(windows(&qwen(r#","use_sliding_window":true"#)), [None, None, None]);
        assert_eq!(windows(&qwen(r#","use_sliding_window":true,"max_window_layers":1"#)), [None, Some(5), Some(5)]);
        let types = r#","use_sliding_window":true,"layer_types":["sliding_attention","full_attention","sliding_attention"]"#;
        assert_eq!(windows(&qwen(types)), [Some(5), None, Some(5)]);
        assert_eq!(qwen("").biases(), Biases { qkv: true, o: false, mlp: false });
        let vs = nn::VarStore::new(tch::Device::Cpu);
        Llama::new(&vs.root(), &qwen("")).unwrap();
        let vars = vs.variables();
        assert!(vars.contains_key("layers.2.self_attn.v_proj.bias") && !vars.contains_key("layers.2.self_attn.o_proj.bias"));
        // A serialised config reads back the same (an absent window stays absent, not null).
        for cfg in [mistral(""), mistral(r#","sliding_window":null"#), qwen(types)] {
            let again: LlamaConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
            assert_eq!(again, cfg);
        }
        // What cannot be computed is refused.
        let refused = |json: String| {
            let cfg: LlamaConfig = serde_json::from_str(&json).unwrap();
            cfg.validate().unwrap_err().to_string()
        };
        assert!(
            refused(format!(r#"{{{base},"num_hidden_layers":2,"model_type":"mistral","sliding_window":0}}"#)).contains("sliding_window")
        );
        assert!(refused(format!(r#"{{{base},"num_hidden_layers":2,"model_type":"qwen2","layer_types":["full_attention"]}}"#))
            .contains("layer_types"));
        assert!(refused(format!(r#"{{{base},"num_hidden_layers":1,"model_type":"qwen2","layer_types":["chunked"]}}"#)).contains("chunked"));
        assert!(refused(format!(r#"{{{base},"num_hidden_layers":1,"model_type":"gemma"}}"#)).contains("llama or qwen2 or mistral"));
    }

    /// A window of 3: each query sees exactly itself and the two keys before it, in the maps
    /// and in every path of the forward pass (all rows, the last rows, per-example rows).
    #[test]
    fn a_sliding_window_hides_the_keys_before_it_in_every_path() {
        tch::manual_seed(3);
        let cfg =
            LlamaConfig { model_type: Some("mistral".into()), sliding_window: Setting::Set(3), ..LlamaConfig::custom(2, 16, 2, 1, 32) };
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let model = Llama::new(&vs.root(), &cfg).unwrap();
        let x = Tensor::randn([2, 7, 16], (Kind::Float, tch::Device::Cpu));
        for map in model.attention_maps(&x).unwrap() {
            for i in 0..7i64 {
                for j in 0..7i64 {
                    let p = map.double_value(&[1, 0, i, j]);
                    assert_eq!(p > 0.0, j <= i && j > i - 3, "query {i}, key {j}: {p}");
                }
            }
        }
        // Two layers of a 3-key window reach 4 positions back: changing position 0 moves
        // position 4 and leaves positions 5 and 6 exactly as they were (a masked key adds
        // exactly nothing), where causal attention alone would move every later position.
        let all = model.forward_embeds(&x, false).unwrap();
        let x2 = x.copy();
        let _ = x2.narrow(1, 0, 1).fill_(5.0);
        let moved = model.forward_embeds(&x2, false).unwrap();
        assert!(all.narrow(1, 5, 2).equal(&moved.narrow(1, 5, 2)), "positions 5, 6 see position 0");
        assert!(!all.narrow(1, 4, 1).equal(&moved.narrow(1, 4, 1)), "position 4 does not reach position 0 through two layers");
        // The read-out paths compute the same rows as the full pass.
        let last = model.forward_rows(&x, false, Some(Rows { start: 4, len: 3 })).unwrap();
        assert!((last - all.narrow(1, 4, 3)).abs().max().double_value(&[]) < 1e-6);
        let at = Tensor::from_slice(&[6i64, 3, 5, 2]).view([2, 2]);
        let picked = model.forward_at(&x, false, &at).unwrap();
        for (b, k, pos) in [(0, 0, 6), (0, 1, 3), (1, 0, 5), (1, 1, 2)] {
            let diff = (picked.get(b).get(k) - all.get(b).get(pos)).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "example {b}, position {pos}: {diff}");
        }
    }
}
