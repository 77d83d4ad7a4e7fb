//! BERT (Hugging Face's `BertModel`) fed with `inputs_embeds`, for BERT-family backbones such as
//! all-MiniLM-L6-v2 (the paper's Table 17 uses BERT as an FPT backbone).
//!
//! As in `transformers`: embeddings = inputs_embeds + position_embeddings[0..T] +
//! token_type_embeddings[0], then LayerNorm and dropout; then post-LN encoder layers
//! (`LN(x + attn(x))`, `LN(h + ffn(h))`) with bidirectional attention, optionally masked by an
//! `attention_mask` `[batch, seq]` as Hugging Face's (padding never attended to; the padded
//! positions' own outputs are computed but meaningless). Linear weights keep
//! PyTorch's `[out, in]` layout and Hugging Face's names, so checkpoints copy name for name.

use crate::freeze::{ParamGroup, ParamGroups};
use crate::kernels::{attention, dropout, residual_dropout};
use crate::layers::hf_config::{check_model_type, check_positive, HfConfig};
use crate::layers::init::{new_param, Init};
use crate::layers::{check_inputs_embeds, check_positions, Activation, LayerNorm, Linear, Queries, Rows};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

/// The fields of Hugging Face's `BertConfig` that shape the encoder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    #[serde(default = "d::vocab_size")]
    pub vocab_size: i64,
    #[serde(default = "d::hidden_size")]
    pub hidden_size: i64,
    #[serde(default = "d::num_hidden_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "d::num_attention_heads")]
    pub num_attention_heads: i64,
    #[serde(default = "d::intermediate_size")]
    pub intermediate_size: i64,
    #[serde(default = "d::hidden_act")]
    pub hidden_act: Activation,
    #[serde(default = "d::dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "d::dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "d::max_position_embeddings")]
    pub max_position_embeddings: i64,
    #[serde(default = "d::type_vocab_size")]
    pub type_vocab_size: i64,
    #[serde(default = "d::initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "d::layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d::position_embedding_type")]
    pub position_embedding_type: String,
    #[serde(default)]
    pub is_decoder: bool,
    #[serde(default)]
    pub add_cross_attention: bool,
    #[serde(default)]
    pub model_type: Option<String>,
}

mod d {
    use crate::layers::Activation;
    pub fn vocab_size() -> i64 {
        30522
    }
    pub fn hidden_size() -> i64 {
        768
    }
    pub fn num_hidden_layers() -> i64 {
        12
    }
    pub fn num_attention_heads() -> i64 {
        12
    }
    pub fn intermediate_size() -> i64 {
        3072
    }
    pub fn hidden_act() -> Activation {
        Activation::Gelu
    }
    pub fn dropout() -> f64 {
        0.1
    }
    pub fn max_position_embeddings() -> i64 {
        512
    }
    pub fn type_vocab_size() -> i64 {
        2
    }
    pub fn initializer_range() -> f64 {
        0.02
    }
    pub fn layer_norm_eps() -> f64 {
        1e-12
    }
    pub fn position_embedding_type() -> String {
        "absolute".into()
    }
}

impl BertConfig {
    pub fn validate(&self) -> Result<()> {
        check_model_type::<Self>(self.model_type.as_deref())?;
        check_positive(&[
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
            ("vocab_size", self.vocab_size),
        ])?;
        if self.hidden_size % self.num_attention_heads != 0 {
            bail!("hidden_size {} is not divisible by num_attention_heads {}", self.hidden_size, self.num_attention_heads);
        }
        if self.position_embedding_type != "absolute" {
            bail!("position_embedding_type {:?} is not supported (only \"absolute\")", self.position_embedding_type);
        }
        if self.is_decoder || self.add_cross_attention {
            bail!("decoder BERT configurations (is_decoder / add_cross_attention) are not supported");
        }
        crate::layers::init::check_eps_and_range("layer_norm_eps", self.layer_norm_eps, self.initializer_range)?;
        for (field, p) in
            [("hidden_dropout_prob", self.hidden_dropout_prob), ("attention_probs_dropout_prob", self.attention_probs_dropout_prob)]
        {
            if !(0.0..1.0).contains(&p) {
                bail!("{field} is {p}; a dropout probability must be in [0, 1)");
            }
        }
        Ok(())
    }

    pub fn with_dropout(mut self, p: f64) -> Self {
        self.hidden_dropout_prob = p;
        self.attention_probs_dropout_prob = p;
        self
    }
}

/// BERT's parameter groups, by `BertModel`'s names: `position_embeddings` the positions,
/// `word_embeddings` and the `token_type_embeddings` table (one constant row added to every
/// token) the token embedding, every `LayerNorm` the layer norms, `attention.self.*` and
/// `attention.output.dense` the attention, `intermediate.dense` and `output.dense` the
/// feed-forward.
impl ParamGroups for Bert {
    fn param_group(&self, name: &str) -> Option<ParamGroup> {
        let parts: Vec<&str> = name.split('.').collect();
        Some(match parts.as_slice() {
            ["embeddings", "word_embeddings" | "token_type_embeddings", "weight"] => ParamGroup::TokenEmbedding,
            ["embeddings", "position_embeddings", "weight"] => ParamGroup::Positions,
            ["embeddings", "LayerNorm", _]
            | ["encoder", "layer", _, "attention", "output", "LayerNorm", _]
            | ["encoder", "layer", _, "output", "LayerNorm", _] => ParamGroup::LayerNorms,
            ["encoder", "layer", _, "attention", "self", "query" | "key" | "value", _]
            | ["encoder", "layer", _, "attention", "output", "dense", _] => ParamGroup::Attention,
            ["encoder", "layer", _, "intermediate" | "output", "dense", _] => ParamGroup::FeedForward,
            _ => return None,
        })
    }
}

#[derive(Debug)]
struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_ln: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_ln: LayerNorm,
}

/// The BERT encoder with its embeddings (no pooler: FPT reads a token's hidden state).
#[derive(Debug)]
pub struct Bert {
    cfg: BertConfig,
    pub word_embeddings: Tensor,
    pub position_embeddings: Tensor,
    pub token_type_embeddings: Tensor,
    embeddings_ln: LayerNorm,
    layers: Vec<Layer>,
    /// What the layers' matmuls, attention and activations compute in (fp32 or bf16).
    compute_kind: Kind,
}

impl Bert {
    /// Variables under `path` with Hugging Face's `BertModel` names (`embeddings.*`,
    /// `encoder.layer.{i}.*`), initialised as `BertPreTrainedModel._init_weights`: normal(0,
    /// initializer_range) weights and embeddings, zero biases, layer norms 1 and 0.
    pub fn new(path: &nn::Path, cfg: &BertConfig) -> Result<Self> {
        cfg.validate()?;
        let (h, std, eps) = (cfg.hidden_size, cfg.initializer_range, cfg.layer_norm_eps);
        let emb = path / "embeddings";
        let word_embeddings = new_param(&(&emb / "word_embeddings"), "weight", &[cfg.vocab_size, h], Init::Normal { std })?;
        let position_embeddings =
            new_param(&(&emb / "position_embeddings"), "weight", &[cfg.max_position_embeddings, h], Init::Normal { std })?;
        let token_type_embeddings =
            new_param(&(&emb / "token_type_embeddings"), "weight", &[cfg.type_vocab_size, h], Init::Normal { std })?;
        let embeddings_ln = LayerNorm::new(&(&emb / "LayerNorm"), h, eps)?;
        let enc = path / "encoder" / "layer";
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = &enc / i;
                let attn = &l / "attention";
                Ok(Layer {
                    query: Linear::normal(&(&attn / "self" / "query"), h, h, std)?,
                    key: Linear::normal(&(&attn / "self" / "key"), h, h, std)?,
                    value: Linear::normal(&(&attn / "self" / "value"), h, h, std)?,
                    attn_out: Linear::normal(&(&attn / "output" / "dense"), h, h, std)?,
                    attn_ln: LayerNorm::new(&(&attn / "output" / "LayerNorm"), h, eps)?,
                    intermediate: Linear::normal(&(&l / "intermediate" / "dense"), h, cfg.intermediate_size, std)?,
                    output: Linear::normal(&(&l / "output" / "dense"), cfg.intermediate_size, h, std)?,
                    output_ln: LayerNorm::new(&(&l / "output" / "LayerNorm"), h, eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Bert {
            cfg: cfg.clone(),
            word_embeddings,
            position_embeddings,
            token_type_embeddings,
            embeddings_ln,
            layers,
            compute_kind: Kind::Float,
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    pub fn set_compute_kind(&mut self, kind: Kind) {
        self.compute_kind = kind;
    }

    /// `last_hidden_state` for `inputs_embeds` `[batch, seq, hidden_size]`, token type 0,
    /// positions 0..seq, no padding mask.
    pub fn forward_embeds(&self, inputs_embeds: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.run(inputs_embeds, train, false, Queries::All, None)?.0)
    }

    /// The same with Hugging Face's `attention_mask` (`[batch, seq]`, nonzero where a token may
    /// be attended to): `BertModel(inputs_embeds=…, attention_mask=…).last_hidden_state`.
    pub fn forward_masked(&self, inputs_embeds: &Tensor, attention_mask: Option<&Tensor>, train: bool) -> Result<Tensor> {
        Ok(self.run(inputs_embeds, train, false, Queries::All, attention_mask)?.0)
    }

    /// The same at the positions `rows` only: the last layer computes its queries, projections
    /// and feed-forward only there.
    pub fn forward_rows(&self, inputs_embeds: &Tensor, train: bool, rows: Option<Rows>) -> Result<Tensor> {
        let t = inputs_embeds.size().get(1).copied().unwrap_or(0);
        let queries = match Rows::restricting(rows, t)? {
            Some(r) => Queries::Rows(r),
            None => Queries::All,
        };
        Ok(self.run(inputs_embeds, train, false, queries, None)?.0)
    }

    /// `last_hidden_state` at per-example `positions` (`[batch, k]` int64), with an optional
    /// `attention_mask` as [`Bert::forward_masked`]: `[batch, k, hidden_size]`.
    pub fn forward_at(&self, inputs_embeds: &Tensor, attention_mask: Option<&Tensor>, train: bool, positions: &Tensor) -> Result<Tensor> {
        let size = inputs_embeds.size();
        if size.len() == 3 {
            check_positions(positions, size[0], size[1])?;
        }
        Ok(self.run(inputs_embeds, train, false, Queries::At(positions), attention_mask)?.0)
    }

    /// Every layer's attention probabilities `[batch, heads, seq, seq]` (eval mode).
    pub fn attention_maps(&self, inputs_embeds: &Tensor) -> Result<Vec<Tensor>> {
        Ok(self.run(inputs_embeds, false, true, Queries::All, None)?.1)
    }

    /// [`Bert::attention_maps`] with an `attention_mask` as [`Bert::forward_masked`] (masked
    /// keys get probability 0).
    pub fn attention_maps_masked(&self, inputs_embeds: &Tensor, attention_mask: Option<&Tensor>) -> Result<Vec<Tensor>> {
        Ok(self.run(inputs_embeds, false, true, Queries::All, attention_mask)?.1)
    }

    /// `attention_mask` as a boolean `[batch, 1, 1, seq]` key mask, checked against the input.
    fn key_mask(attention_mask: &Tensor, b: i64, t: i64) -> Result<Tensor> {
        let size = attention_mask.size();
        if size != [b, t] {
            bail!("attention_mask must be [batch = {b}, seq = {t}] (nonzero where a token may be attended to), got shape {size:?}");
        }
        Ok(attention_mask.ne(0).view([b, 1, 1, t]))
    }

    fn run(
        &self,
        inputs_embeds: &Tensor,
        train: bool,
        keep_maps: bool,
        queries: Queries,
        attention_mask: Option<&Tensor>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let [b, t, w] = check_inputs_embeds(
            inputs_embeds,
            self.cfg.hidden_size,
            "hidden_size",
            self.cfg.max_position_embeddings,
            "max_position_embeddings",
        )?;
        let allowed = attention_mask.map(|m| Self::key_mask(&m.to_device(inputs_embeds.device()), b, t)).transpose()?;
        let p_hidden = if train { self.cfg.hidden_dropout_prob } else { 0.0 };
        let p_attn = if train { self.cfg.attention_probs_dropout_prob } else { 0.0 };
        let emb = inputs_embeds + self.position_embeddings.narrow(0, 0, t) + self.token_type_embeddings.get(0);
        let mut x = dropout(&self.embeddings_ln.forward(&emb), p_hidden, train);
        let heads = self.cfg.num_attention_heads;
        let d = w / heads;
        let kind = self.compute_kind;
        let mut maps = Vec::new();
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            // The residual stream `x` stays fp32; the matmuls and attention run in `kind`.
            let xc = x.to_kind(kind);
            let q_at = if i == last { queries } else { Queries::All };
            let (x_out, xq, len) = (q_at.select(&x), q_at.select(&xc), q_at.len(t));
            let split = |lin: &Linear, input: &Tensor, len: i64| lin.forward(input).reshape([b, len, heads, d]).transpose(1, 2);
            let (q, k, v) = (split(&layer.query, &xq, len), split(&layer.key, &xc, t), split(&layer.value, &xc, t));
            if keep_maps {
                let scores = q.matmul(&k.transpose(-2, -1)) / (d as f64).sqrt();
                let scores = match &allowed {
                    Some(a) => scores.masked_fill(&a.logical_not(), f64::NEG_INFINITY),
                    None => scores,
                };
                maps.push(scores.softmax(-1, Kind::Float));
            }
            // Bidirectional attention, scale 1/sqrt(d), dropout on the probabilities; padding
            // masked out of the keys when a mask is given.
            let ctx = attention(&q, &k, &v, allowed.as_ref(), false, p_attn, train);
            let ctx = ctx.transpose(1, 2).reshape([b, len, w]);
            // Each dropout with its residual add (fused for a bf16 branch on the CPU).
            let h = layer.attn_ln.forward(&residual_dropout(&x_out, &layer.attn_out.forward(&ctx), p_hidden, train));
            let inter = self.cfg.hidden_act.apply(&layer.intermediate.forward(&h.to_kind(kind)));
            x = layer.output_ln.forward(&residual_dropout(&h, &layer.output.forward(&inter), p_hidden, train));
        }
        Ok((x, maps))
    }
}

impl HfConfig for BertConfig {
    const NAME: &'static str = "BERT";
    const TYPE_NAME: &'static str = "BertConfig";
    const MODEL_TYPES: &'static [&'static str] = &["bert"];
    fn validate(&self) -> Result<()> {
        BertConfig::validate(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variable_has_a_group() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let cfg: BertConfig = serde_json::from_str(
            r#"{"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 4}"#,
        )
        .unwrap();
        let model = Bert::new(&vs.root(), &cfg).unwrap();
        let cases = [
            ("embeddings.word_embeddings.weight", ParamGroup::TokenEmbedding),
            ("embeddings.token_type_embeddings.weight", ParamGroup::TokenEmbedding),
            ("embeddings.position_embeddings.weight", ParamGroup::Positions),
            ("embeddings.LayerNorm.weight", ParamGroup::LayerNorms),
            ("encoder.layer.1.attention.self.query.weight", ParamGroup::Attention),
            ("encoder.layer.1.attention.output.dense.bias", ParamGroup::Attention),
            ("encoder.layer.1.attention.output.LayerNorm.weight", ParamGroup::LayerNorms),
            ("encoder.layer.0.intermediate.dense.weight", ParamGroup::FeedForward),
            ("encoder.layer.0.output.dense.weight", ParamGroup::FeedForward),
            ("encoder.layer.0.output.LayerNorm.bias", ParamGroup::LayerNorms),
        ];
        for (name, group) in cases {
            assert_eq!(model.param_group(name), Some(group), "{name}");
        }
        assert_eq!(model.param_group("pooler.dense.weight"), None);
        for name in vs.variables().keys() {
            assert!(model.param_group(name).is_some(), "{name} has no group");
        }
    }
}
