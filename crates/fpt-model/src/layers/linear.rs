//! PyTorch's `nn.Linear` (weight `[out, in]`, `y = x · Wᵀ + b`), with the initialisations the
//! backbones and the FPT wrapper use.

use crate::layers::init::{new_param, Init};
use anyhow::Result;
use tch::{nn, Tensor};

/// A PyTorch-layout linear layer: variables `weight` `[out, in]` and (unless built without)
/// `bias` `[out]` under its path, created in that order.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Any init for the weight; `bias: None` builds no bias.
    pub fn new(path: &nn::Path, n_in: i64, n_out: i64, weight: Init, bias: Option<Init>) -> Result<Self> {
        let weight = new_param(path, "weight", &[n_out, n_in], weight)?;
        let bias = bias.map(|init| new_param(path, "bias", &[n_out], init)).transpose()?;
        Ok(Linear { weight, bias })
    }

    /// Hugging Face's `_init_weights` for a linear: weight normal(0, `std`), bias 0.
    pub fn normal(path: &nn::Path, n_in: i64, n_out: i64, std: f64) -> Result<Self> {
        Self::new(path, n_in, n_out, Init::Normal { std }, Some(Init::Zeros))
    }

    /// PyTorch's default `nn.Linear` init: weight and bias uniform(±1/sqrt(in)).
    pub fn pytorch_default(path: &nn::Path, n_in: i64, n_out: i64) -> Result<Self> {
        let bound = 1.0 / (n_in as f64).sqrt();
        Self::new(path, n_in, n_out, Init::Uniform { bound }, Some(Init::Uniform { bound }))
    }

    /// An orthogonal weight with `gain` and a zero bias (the reference's `orthogonal_` init of
    /// the FPT input layers).
    pub fn orthogonal(path: &nn::Path, n_in: i64, n_out: i64, gain: f64) -> Result<Self> {
        Self::new(path, n_in, n_out, Init::Orthogonal { gain }, Some(Init::Zeros))
    }

    /// Computes in `x`'s dtype: a no-op cast for weights already in it (frozen weights made
    /// bf16 once at load), a per-call cast for trainable fp32 weights in bf16 mode.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        x.linear(&self.weight.to_kind(kind), self.bias.as_ref().map(|b| b.to_kind(kind)).as_ref())
    }
}
