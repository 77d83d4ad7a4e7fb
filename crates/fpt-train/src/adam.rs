//! Adam (PyTorch's `torch.optim.Adam`, no weight decay, no amsgrad) and gradient-norm clipping,
//! over an explicit list of trainable tensors. Ours rather than libtorch's so that its state
//! (the moments and the step count) can be checkpointed and restored exactly, and so that only
//! trainable tensors ever have state.

use tch::{Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamConfig {
    /// PyTorch's defaults.
    fn default() -> Self {
        AdamConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
}

pub struct Adam {
    pub cfg: AdamConfig,
    /// (name, parameter, first moment, second moment)
    pub params: Vec<(String, Tensor, Tensor, Tensor)>,
    /// Updates taken so far (bias correction uses it).
    pub t: u64,
}

impl Adam {
    pub fn new(cfg: AdamConfig, params: Vec<(String, Tensor)>) -> Self {
        let params = params
            .into_iter()
            .map(|(n, p)| {
                let m = p.zeros_like().detach();
                let v = p.zeros_like().detach();
                (n, p, m, v)
            })
            .collect();
        Adam { cfg, params, t: 0 }
    }

    pub fn zero_grad(&mut self) {
        for (_, p, _, _) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// Scales gradients so their global L2 norm is at most `max_norm` (PyTorch's
    /// `clip_grad_norm_`: coefficient max_norm / (norm + 1e-6), clamped to 1). Returns the norm
    /// as a device tensor (no host sync).
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Tensor {
        let grads: Vec<Tensor> = self.params.iter().map(|(_, p, _, _)| p.grad()).filter(|g| g.defined()).collect();
        let Some(first) = grads.first() else { return Tensor::from(0f32) };
        let total = grads
            .iter()
            .map(|g| g.to_kind(Kind::Float).pow_tensor_scalar(2).sum(Kind::Float))
            .fold(Tensor::zeros([], (Kind::Float, first.device())), |acc, s| acc + s)
            .sqrt();
        let coef = (max_norm / (&total + 1e-6)).clamp_max(1.0);
        tch::no_grad(|| {
            for g in &grads {
                let mut g = g.shallow_clone();
                g *= &coef;
            }
        });
        total
    }

    /// One update; parameters without a gradient are skipped (as PyTorch does).
    pub fn step(&mut self) {
        self.t += 1;
        let AdamConfig { lr, beta1, beta2, eps } = self.cfg;
        let bias1 = 1.0 - beta1.powi(self.t as i32);
        let bias2 = 1.0 - beta2.powi(self.t as i32);
        tch::no_grad(|| {
            for (_, p, m, v) in &mut self.params {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                // PyTorch's order: m.lerp_(g, 1 - β1); v.mul_(β2).addcmul_(g, g, 1 - β2);
                // p.addcdiv_(m, sqrt(v) / sqrt(1 - β2^t) + ε, -lr / (1 - β1^t)).
                let _ = m.lerp_(&g, 1.0 - beta1);
                *v *= beta2;
                *v += (&g * &g) * (1.0 - beta2);
                let denom = (v.sqrt() / bias2.sqrt()) + eps;
                *p -= (&*m / denom) * (lr / bias1);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Three steps on a quadratic against torch.optim.Adam(lr=0.1) (torch 2.11):
    /// p0 = [1, -2], loss = sum(p^2) → [0.7015863, -1.7006234].
    #[test]
    fn matches_pytorch_on_a_quadratic() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let mut adam = Adam::new(AdamConfig { lr: 0.1, ..Default::default() }, vec![("p".into(), p.shallow_clone())]);
        for _ in 0..3 {
            adam.zero_grad();
            (&p * &p).sum(Kind::Float).backward();
            adam.step();
        }
        let got: Vec<f32> = Vec::try_from(&p.detach()).unwrap();
        assert!((got[0] - 0.7015863).abs() < 1e-6 && (got[1] + 1.7006234).abs() < 1e-6, "{got:?}");
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let p = Tensor::from_slice(&[3.0f32, 4.0]).set_requires_grad(true);
        let mut adam = Adam::new(AdamConfig::default(), vec![("p".into(), p.shallow_clone())]);
        (&p * 1.0).sum(Kind::Float).backward(); // grad [1, 1]
        let mut g = p.grad();
        g *= Tensor::from_slice(&[3.0f32, 4.0]); // grad [3, 4], norm 5
        let norm = adam.clip_grad_norm(1.0);
        assert!((norm.double_value(&[]) - 5.0).abs() < 1e-6);
        let g: Vec<f32> = Vec::try_from(&p.grad()).unwrap();
        assert!((g[0] - 0.6).abs() < 1e-5 && (g[1] - 0.8).abs() < 1e-5, "{g:?}");
        assert_eq!(Device::Cpu, p.device());
    }
}
