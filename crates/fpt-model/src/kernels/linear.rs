//! A linear layer with frozen weights applied many times to a few rows: the LSTM's recurrent
//! product, 16 × 768 by 768 × 3,072 at each of its steps.
//!
//! libtorch's `linear` runs that GEMM as x Wᵀ, and its backward as g W; with so few rows MKL
//! then spends a third of the time packing W. The other layouts, (W xᵀ)ᵀ forward and (Wᵀ gᵀ)ᵀ
//! backward with Wᵀ contiguous, run 1.4× faster (fp32, AMD EPYC: 1,361 → ~960 µs forward and
//! backward), so a node (`autograd.cpp`) computes each pass in its own layout.

use super::autograd::frozen_linear_node;
use tch::{Device, Kind, Tensor};

/// `x Wᵀ + b` for `weight` `[out, in]` and `bias` `[out]`, applied to many `x` `[rows, in]`.
pub(crate) struct FrozenLinear<'a> {
    weight: &'a Tensor,
    bias: &'a Tensor,
    /// Wᵀ contiguous, for the node's backward pass; None where libtorch's linear is used (a
    /// weight or bias that trains, another device or dtype).
    weight_t: Option<Tensor>,
}

impl<'a> FrozenLinear<'a> {
    /// Makes Wᵀ once (one copy of W per use of the layer, not per call).
    pub(crate) fn new(weight: &'a Tensor, bias: &'a Tensor) -> Self {
        let frozen = !weight.requires_grad() && !bias.requires_grad();
        let node = frozen && weight.device() == Device::Cpu && weight.kind() == Kind::Float && bias.kind() == Kind::Float;
        FrozenLinear { weight, bias, weight_t: node.then(|| weight.tr().contiguous()) }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        match &self.weight_t {
            Some(weight_t) if x.dim() == 2 && x.kind() == Kind::Float => frozen_linear_node(x, self.weight, weight_t, self.bias),
            _ => x.linear(self.weight, Some(self.bias)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_equals_libtorchs_linear_in_value_and_input_gradient() {
        let opts = (Kind::Float, Device::Cpu);
        let wave = |n: i64, freq: f64| (Tensor::arange(n, opts) * freq).sin();
        let (weight, bias) = (wave(12 * 7, 0.37).view([12, 7]), wave(12, 0.71));
        let x = wave(5 * 7, 1.13).view([5, 7]).set_requires_grad(true);
        let layer = FrozenLinear::new(&weight, &bias);
        assert!(layer.weight_t.is_some(), "frozen fp32 CPU weights take the node");
        let y = layer.forward(&x);
        let truth = x.linear(&weight, Some(&bias));
        let truth64 = x.to_kind(Kind::Double).linear(&weight.to_kind(Kind::Double), Some(&bias.to_kind(Kind::Double)));
        let (d, bound) = (crate::tolerance::max_abs_diff(&y, &truth64), crate::tolerance::reordering_bound(&truth, &truth64));
        assert!(d <= bound, "values differ by {d} (bound {bound})");
        let up = wave(5 * 12, 0.29).view([5, 12]);
        let ours = Tensor::run_backward(&[(&y * &up).sum(Kind::Float)], &[&x], false, false).remove(0);
        let reference = Tensor::run_backward(&[(&truth * &up).sum(Kind::Float)], &[&x], false, false).remove(0);
        let reference64 = up.to_kind(Kind::Double).matmul(&weight.to_kind(Kind::Double));
        let (d, bound) =
            (crate::tolerance::max_abs_diff(&ours, &reference64), crate::tolerance::reordering_bound(&reference, &reference64));
        assert!(d <= bound, "input gradients differ by {d} (bound {bound})");
        // A weight that trains takes libtorch's linear (the node has no weight gradient).
        let trained = weight.copy().set_requires_grad(true);
        assert!(FrozenLinear::new(&trained, &bias).weight_t.is_none());
    }
}
