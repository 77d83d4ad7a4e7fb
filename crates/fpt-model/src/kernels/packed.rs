//! Frozen bf16 linear layers on weights packed once for oneDNN: GPT-2's.
//!
//! On the CPU, libtorch's bf16 `linear` hands the weight to oneDNN in its plain layout, and
//! oneDNN copies it into its blocked layout (pairs of bf16 interleaved for the dot-product
//! instructions) at every call. For a frozen weight that copy is the same at every step, so it
//! can be made once: `mkldnn::_reorder_linear_weight` packs W, and `mkldnn::_linear_pointwise`
//! multiplies by the packed form (what `torch.compile` does for frozen CPU weights). The
//! backward pass g W needs Wᵀ packed as well, so a packed layer holds two packed copies (twice
//! the bf16 weight's memory: 340 MB for GPT-2 small).
//!
//! Measured on a 2-core AMD EPYC (avx512_bf16), one product at a time: GPT-2 small's
//! 784 × 768 × 3,072 4.8 → 4.0 ms forward and 4.5 → 3.9 ms backward (15–25% for every GPT-2
//! product, 16 to 16,384 rows), the same values to the last bit (the same kernel, minus the
//! copy); the whole 49-token GPT-2 step 7–9% faster. SmolLM2's 576-wide products gained 2–8%
//! each and its step got 4–6% *slower* (the node's own cost), so Llama and BERT (384 wide)
//! keep libtorch's linear, and only GPT-2's `Conv1D` arms a [`PackOnUse`].
//!
//! Only calls of at most [`PACKED_MAX_ROWS`] rows take the packed path, and a layer is packed at
//! its first such call. Long sequences stay on libtorch's product: there the packed product's
//! own buffers fragment the heap that keeps a step's freed memory (`fpt`'s
//! `keep_freed_memory`): GPT-2 small at 1,024 tokens × 16 peaked at 6.6 GB with every product
//! packed against 5.8 GB without, past the 6 GB the long tasks are held to, for a 10–15% faster
//! step. Unpacked, the layers there cost no memory either.
//!
//! oneDNN packs bf16 only where the CPU has bf16 support it can use (AVX-512 BW/VL/DQ or
//! AVX-NE-CONVERT; `DNNL_MAX_CPU_ISA=AVX2` switches it off): there, and for weights that train,
//! on other devices or in fp32, layers keep libtorch's product.

use super::autograd::{mkldnn_pack, packed_linear_node};
use std::cell::OnceCell;
use tch::{Device, Kind, Tensor};

/// The most rows (product of the input's leading dimensions) a call may have to run on the
/// packed weight: a 49-token batch of 16 has 784, a 64-token batch of 32 2,048, 256 tokens × 16
/// 4,096; 1,024 × 8 has 8,192.
pub(crate) const PACKED_MAX_ROWS: i64 = 4096;

/// A layer's packed weight, made at the first call that takes it: armed once the weight is
/// final ([`PackOnUse::arm`]), used by calls of at most [`PACKED_MAX_ROWS`] bf16 CPU rows.
#[derive(Debug, Default)]
pub(crate) struct PackOnUse {
    armed: bool,
    packed: OnceCell<Option<PackedLinear>>,
}

impl PackOnUse {
    /// The weight is final (frozen, converted): calls may pack it from now on.
    pub(crate) fn arm(&mut self) {
        self.armed = true;
        self.packed = OnceCell::new();
    }

    /// The packed layer for input `x`, packing `weight()` (`[out, in]`, asked for only then) and
    /// `bias` at the first call that qualifies; None where `x` takes libtorch's linear.
    pub(crate) fn for_input(&self, x: &Tensor, weight: impl FnOnce() -> Tensor, bias: Option<&Tensor>) -> Option<&PackedLinear> {
        let rows = x.size().split_last().map_or(0, |(_, lead)| lead.iter().product::<i64>());
        if !self.armed || x.kind() != Kind::BFloat16 || x.device() != Device::Cpu || rows > PACKED_MAX_ROWS {
            return None;
        }
        self.packed.get_or_init(|| PackedLinear::new(&weight(), bias)).as_ref()
    }

    /// Whether a call has packed the weight.
    #[cfg(test)]
    pub(crate) fn is_packed(&self) -> bool {
        self.packed.get().is_some_and(Option::is_some)
    }
}

/// Whether oneDNN should pack bf16 here: Some(true) on a CPU with AVX-512 and no ISA cap,
/// Some(false) under an AVX2-or-older cap (the CI's second pass), None where unknown (a CPU
/// without AVX-512 may still have AVX-NE-CONVERT).
#[cfg(test)]
pub(crate) fn packing_expected() -> Option<bool> {
    let cap = ["DNNL_MAX_CPU_ISA", "ONEDNN_MAX_CPU_ISA"].iter().find_map(|v| std::env::var(v).ok());
    match cap.map(|c| c.to_ascii_uppercase()) {
        Some(c) if c.starts_with("AVX2") || c.starts_with("SSE") || c == "AVX" => Some(false),
        Some(_) => None,
        None if super::cpu::has_avx512() => Some(true),
        None => None,
    }
}

/// A frozen `[out, in]` weight and optional bias, packed for `y = x Wᵀ + b` on bf16 inputs.
#[derive(Debug)]
pub(crate) struct PackedLinear {
    /// W packed: the forward pass.
    weight: Tensor,
    /// Wᵀ packed: the input gradient g W.
    weight_t: Tensor,
    /// The bias in bf16 (the dtype the layers cast it to per call without packing).
    bias: Option<Tensor>,
}

impl PackedLinear {
    /// Packs `weight` (`[out, in]`, any strides) and takes `bias`; None unless both are frozen
    /// bf16 CPU tensors (biases may be fp32) and oneDNN can pack them on this CPU.
    pub(crate) fn new(weight: &Tensor, bias: Option<&Tensor>) -> Option<Self> {
        let frozen = |t: &Tensor| !t.requires_grad() && t.device() == Device::Cpu;
        if weight.dim() != 2 || weight.kind() != Kind::BFloat16 || !frozen(weight) || !bias.is_none_or(frozen) {
            return None;
        }
        let packed = tch::no_grad(|| Some((mkldnn_pack(weight).ok()?, mkldnn_pack(&weight.tr()).ok()?)));
        let (weight, weight_t) = packed?;
        Some(PackedLinear { weight, weight_t, bias: bias.map(|b| b.to_kind(Kind::BFloat16)) })
    }

    /// `x Wᵀ + b` for `x` `[.., in]` in bf16, with its input gradient.
    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        packed_linear_node(x, &self.weight, &self.weight_t, self.bias.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Elementwise: |a − b| ≤ 2^-7 · Σ|terms|. Each path sums the same products in fp32 (error
    /// ≤ K·2^-24 of Σ|terms|, far below) and rounds to bf16 once or twice (≤ 2^-9 each, of a
    /// value at most Σ|terms|), so the two differ by at most 2^-7 of Σ|terms|; a wrong
    /// transpose, a missing bias or a scaled output is off by a multiple of the terms.
    fn assert_within_bf16_rounding(what: &str, a: &Tensor, b: &Tensor, abs_terms: &Tensor) {
        let diff = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs();
        let excess = (&diff - abs_terms * 2f64.powi(-7)).max().double_value(&[]);
        assert!(excess <= 0.0, "{what}: differs by {} beyond 2^-7 of the terms", excess);
    }

    #[test]
    fn packed_linear_equals_libtorchs_linear_in_value_and_input_gradient() {
        let wave = |n: i64, freq: f64, kind: Kind| (Tensor::arange(n, (Kind::Double, Device::Cpu)) * freq).sin().to_kind(kind);
        // Odd sizes (no block multiple), a 3-D input, and a bias of the outputs' scale.
        let (out, inp) = (37, 23);
        let weight = wave(out * inp, 0.37, Kind::BFloat16).view([out, inp]);
        let bias = wave(out, 0.71, Kind::Float) * 2.0;
        let x = wave(2 * 5 * inp, 1.13, Kind::BFloat16).view([2, 5, inp]).set_requires_grad(true);
        let up = wave(2 * 5 * out, 0.29, Kind::BFloat16).view([2, 5, out]);

        let packed = PackedLinear::new(&weight, Some(&bias));
        if let Some(expected) = packing_expected() {
            assert_eq!(packed.is_some(), expected, "oneDNN packing availability on this CPU");
        }
        let Some(packed) = packed else { return };

        let y = packed.forward(&x);
        let dense = x.linear(&weight, Some(&bias.to_kind(Kind::BFloat16)));
        assert_eq!((y.size(), y.kind()), (dense.size(), Kind::BFloat16));
        let (xd, wd, bd) = (x.to_kind(Kind::Double), weight.to_kind(Kind::Double), bias.to_kind(Kind::Double));
        assert_within_bf16_rounding("values", &y, &dense, &(xd.abs().matmul(&wd.abs().tr()) + bd.abs()));
        // Against the fp64 truth too, so that both paths cannot be wrong together.
        assert_within_bf16_rounding("values vs fp64", &y, &(xd.matmul(&wd.tr()) + &bd), &(xd.abs().matmul(&wd.abs().tr()) + bd.abs()));

        let grad = |out: &Tensor| Tensor::run_backward(&[(out * &up).sum(Kind::Float)], &[&x], false, false).remove(0);
        let (ours, theirs) = (grad(&y), grad(&dense));
        let ud = up.to_kind(Kind::Double);
        let terms = ud.abs().matmul(&wd.abs());
        assert_within_bf16_rounding("input gradients", &ours, &theirs, &terms);
        assert_within_bf16_rounding("input gradients vs fp64", &ours, &ud.matmul(&wd), &terms);

        // Without a bias, and a strided (transposed) weight as GPT-2's Conv1D passes it.
        let stored = weight.tr().contiguous();
        let from_strided = PackedLinear::new(&stored.tr(), None).expect("packs where the first did");
        assert_within_bf16_rounding(
            "no bias",
            &from_strided.forward(&x),
            &x.linear(&weight, None::<&Tensor>),
            &xd.abs().matmul(&wd.abs().tr()),
        );
    }

    #[test]
    fn a_layer_packs_at_its_first_short_bf16_call_and_long_calls_stay_unpacked() {
        let weight = Tensor::ones([4, 3], (Kind::BFloat16, Device::Cpu));
        let input = |rows: i64, kind: Kind| Tensor::ones([rows, 3], (kind, Device::Cpu));
        let mut slot = PackOnUse::default();
        assert!(slot.for_input(&input(2, Kind::BFloat16), || weight.shallow_clone(), None).is_none(), "not armed");
        slot.arm();
        assert!(slot.for_input(&input(2, Kind::Float), || weight.shallow_clone(), None).is_none(), "an fp32 input");
        assert!(slot.for_input(&input(PACKED_MAX_ROWS + 1, Kind::BFloat16), || weight.shallow_clone(), None).is_none(), "too many rows");
        assert!(slot.packed.get().is_none(), "nothing packed before a call that takes it");
        let short = Tensor::ones([2, PACKED_MAX_ROWS / 2, 3], (Kind::BFloat16, Device::Cpu));
        let packed = slot.for_input(&short, || weight.shallow_clone(), None).is_some();
        if let Some(expected) = packing_expected() {
            assert_eq!(packed, expected, "oneDNN packing availability on this CPU");
        }
        assert!(slot.packed.get().is_some(), "the first qualifying call decided");
        assert!(
            slot.for_input(&input(PACKED_MAX_ROWS + 1, Kind::BFloat16), || weight.shallow_clone(), None).is_none(),
            "long calls stay unpacked"
        );
    }

    #[test]
    fn weights_that_train_or_are_not_bf16_are_not_packed() {
        let weight = Tensor::ones([4, 3], (Kind::BFloat16, Device::Cpu));
        assert!(PackedLinear::new(&weight.to_kind(Kind::Float), None).is_none(), "fp32");
        assert!(PackedLinear::new(&weight.copy().set_requires_grad(true), None).is_none(), "a trained weight");
        let trained_bias = Tensor::zeros([4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        assert!(PackedLinear::new(&weight, Some(&trained_bias)).is_none(), "a trained bias");
    }
}
