//! Normalisation layers: Hugging Face's / PyTorch's `LayerNorm` and the RMS norm of Llama-style
//! models (`LlamaRMSNorm`).

use crate::layers::init::{new_param, Init};
use anyhow::Result;
use tch::{nn, Kind, Tensor};

/// `nn.LayerNorm(width, eps)`: variables `weight` (init 1) and `bias` (init 0) under its path.
#[derive(Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    eps: f64,
    width: i64,
}

impl LayerNorm {
    pub fn new(path: &nn::Path, width: i64, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: new_param(path, "weight", &[width], Init::Ones)?,
            bias: new_param(path, "bias", &[width], Init::Zeros)?,
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

/// Root-mean-square norm, `x · rsqrt(mean(x²) + eps) · weight` over the last axis, as
/// `transformers`' `LlamaRMSNorm` computes it: the statistics in fp32, the normalised values cast
/// back to `x`'s dtype before the gain. Variable `weight` (init 1) under its path; no bias.
#[derive(Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(path: &nn::Path, width: i64, eps: f64) -> Result<Self> {
        Ok(RmsNorm { weight: new_param(path, "weight", &[width], Init::Ones)?, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let xf = x.to_kind(Kind::Float);
        let mean_square = xf.square().mean_dim(-1, true, Kind::Float);
        let normed = (xf * (mean_square + self.eps).rsqrt()).to_kind(kind);
        normed * self.weight.to_kind(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Against `x * rsqrt(mean(x^2) + eps) * weight`, written out in f64 on the host.
    #[test]
    fn rms_norm_is_the_formula() {
        let vs = nn::VarStore::new(Device::Cpu);
        let (width, eps) = (5i64, 1e-6);
        let norm = RmsNorm::new(&(vs.root() / "norm"), width, eps).unwrap();
        let gain = [0.5f32, -1.0, 2.0, 1.5, 0.25];
        tch::no_grad(|| norm.weight.shallow_clone().copy_(&Tensor::from_slice(&gain)));
        let rows = [[1.0f32, -2.0, 3.0, 0.5, -0.25], [1e-3, 2e-3, -1e-3, 0.0, 5e-4], [100.0, -50.0, 25.0, 0.0, 10.0]];
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let x = Tensor::from_slice(&flat).view([3, 1, width]);
        let ours = Vec::<f32>::try_from(norm.forward(&x).flatten(0, -1)).unwrap();
        for (r, row) in rows.iter().enumerate() {
            let mean_square = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / width as f64;
            let scale = 1.0 / (mean_square + eps).sqrt();
            for (j, &v) in row.iter().enumerate() {
                let expected = v as f64 * scale * gain[j] as f64;
                let got = ours[r * width as usize + j] as f64;
                assert!((got - expected).abs() <= 1e-6 * expected.abs().max(1.0), "row {r} col {j}: {got} vs {expected}");
            }
        }
        assert_eq!(vs.variables().keys().cloned().collect::<Vec<_>>(), ["norm.weight"]);
        // bf16 in, bf16 out; statistics still in fp32.
        assert_eq!(norm.forward(&x.to_kind(Kind::BFloat16)).kind(), Kind::BFloat16);
    }
}
