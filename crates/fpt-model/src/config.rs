//! GPT-2 shape and hyper-parameters, as Hugging Face's `GPT2Config` names them.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The feed-forward non-linearity (`activation_function` in `config.json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// GELU with the tanh approximation; GPT-2's `gelu_new` (also `gelu_pytorch_tanh`).
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
    /// Exact GELU (erf).
    #[serde(rename = "gelu")]
    Gelu,
    #[serde(rename = "relu")]
    Relu,
    #[serde(rename = "silu", alias = "swish")]
    Silu,
}

impl Activation {
    pub fn apply(self, x: &tch::Tensor) -> tch::Tensor {
        match self {
            Activation::GeluTanh => crate::ops::gelu_tanh(x),
            Activation::Gelu => x.gelu("none"),
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
        }
    }
}

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
pub const GPT2_PRESETS: [(&str, i64, i64, i64); 4] = [
    ("gpt2", 12, 768, 12),
    ("gpt2-medium", 24, 1024, 16),
    ("gpt2-large", 36, 1280, 20),
    ("gpt2-xl", 48, 1600, 25),
];

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
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading model config {}", path.display()))?;
        let cfg: Gpt2Config = serde_json::from_str(&text).with_context(|| {
            format!("{}: not a valid GPT-2 config.json (expected GPT2Config's fields)", path.display())
        })?;
        cfg.validate().with_context(|| format!("model config {}", path.display()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if let Some(mt) = &self.model_type {
            if mt != "gpt2" {
                bail!("model_type is {mt:?}, but this backbone is GPT-2 (model_type \"gpt2\")");
            }
        }
        for (field, value) in [
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_positions", self.n_positions),
            ("vocab_size", self.vocab_size),
        ] {
            if value <= 0 {
                bail!("{field} is {value}; it must be positive");
            }
        }
        if self.n_embd % self.n_head != 0 {
            bail!("n_embd {} is not divisible by n_head {}", self.n_embd, self.n_head);
        }
        if let Some(inner) = self.n_inner {
            if inner <= 0 {
                bail!("n_inner is {inner}; it must be positive (or null for 4·n_embd)");
            }
        }
        for (field, p) in
            [("resid_pdrop", self.resid_pdrop), ("embd_pdrop", self.embd_pdrop), ("attn_pdrop", self.attn_pdrop)]
        {
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
        crate::init::check_eps_and_range("layer_norm_epsilon", self.layer_norm_epsilon, self.initializer_range)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
