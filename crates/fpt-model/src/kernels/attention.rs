//! Scaled-dot-product attention: libtorch's fused kernel, or written out where dropout on the
//! CPU needs it (the fused CPU kernel has none, and libtorch falls back to an unfused fp32 path
//! anyway).

use super::dropout::dropout;
use tch::{Device, Kind, Tensor};

/// Scaled-dot-product attention of `q` `[B, H, Tq, D]` over `k`, `v` `[B, H, Tk, D]`.
/// `causal`: query i sees keys 0..=i (Tq == Tk). `allowed`: a boolean mask, true where a query
/// may attend, `[Tq, Tk]` or per example `[B, 1, Tq or 1, Tk]` (a key-padding mask); every query
/// must be allowed at least one key. Dropout `p` acts on the probabilities in training.
///
/// Without dropout (evaluation, or p = 0) and on CUDA this is libtorch's fused kernel. With
/// dropout on the CPU it is written out: scores in the inputs' dtype (bf16 products of bf16
/// inputs in bf16 mode, accumulated in fp32 by the GEMM), softmax in fp32, then the
/// probabilities in `v`'s dtype dropped with [`dropout`] and multiplied with `v`.
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, allowed: Option<&Tensor>, causal: bool, p: f64, train: bool) -> Tensor {
    let p = if train { p } else { 0.0 };
    if p == 0.0 || q.device() != Device::Cpu {
        return Tensor::scaled_dot_product_attention(q, k, v, allowed, p, causal, None, false);
    }
    let (batch, heads, tq, d) = q.size4().expect("attention queries are [B, H, T, D]");
    let tk = k.size()[2];
    // What may not be attended to is an additive -inf bias, and the 1/sqrt(D) scale is the
    // product's alpha: one batched GEMM writes the masked, scaled scores (no separate scale and
    // masked_fill passes, forward or backward). The scores are in q's dtype, as every other
    // matmul output in bf16 mode (the softmax upcasts them and runs in fp32).
    let opts = (q.kind(), q.device());
    let mut bias = if causal { Tensor::full([tq, tk], f64::NEG_INFINITY, opts).triu(1) } else { Tensor::zeros([tq, tk], opts) };
    if let Some(allowed) = allowed {
        bias = bias.masked_fill(&allowed.logical_not(), f64::NEG_INFINITY);
    }
    if bias.dim() > 2 {
        // A per-example mask: one [Tq, Tk] bias per (example, head), as the GEMM batches them.
        bias = bias.expand([batch, heads, tq, tk], false).reshape([batch * heads, tq, tk]);
    }
    let q = q.reshape([batch * heads, tq, d]);
    let k = k.reshape([batch * heads, tk, d]);
    let scores = bias.baddbmm(&q, &k.transpose(1, 2), 1.0, 1.0 / (d as f64).sqrt());
    let probs = dropout(&scores.softmax(-1, Kind::Float).to_kind(v.kind()), p, true);
    probs.bmm(&v.reshape([batch * heads, tk, d])).view([batch, heads, tq, d])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_out_attention_matches_the_fused_kernel_when_nothing_is_dropped() {
        let opts = (Kind::Float, Device::Cpu);
        let (q, k, v) = (Tensor::randn([2, 3, 5, 4], opts), Tensor::randn([2, 3, 5, 4], opts), Tensor::randn([2, 3, 5, 4], opts));
        let q2 = Tensor::randn([2, 3, 2, 4], opts);
        let allowed = Tensor::arange(5, (Kind::Int64, Device::Cpu)).unsqueeze(0).le_tensor(&Tensor::from_slice(&[2i64, 4]).unsqueeze(1));
        for (q, allowed, causal) in [(&q, None, true), (&q, None, false), (&q2, Some(&allowed), false)] {
            let fused = Tensor::scaled_dot_product_attention(q, &k, &v, allowed, 0.0, causal, None, false);
            let d64 = |t: &Tensor| t.to_kind(Kind::Double);
            let fused64 = Tensor::scaled_dot_product_attention(&d64(q), &d64(&k), &d64(&v), allowed, 0.0, causal, None, false);
            // p → 0 but in training: the written-out path with a mask of ones.
            let ours = attention(q, &k, &v, allowed, causal, 1e-12, true);
            let (d, bound) = (crate::tolerance::max_abs_diff(&fused, &ours), crate::tolerance::reordering_bound(&fused, &fused64));
            assert!(d <= bound, "causal {causal}: {d} (bound {bound})");
        }
        // With dropout, rows of kept probabilities are rescaled, not renormalised: the output's
        // expectation is unchanged.
        let mean_out = (0..200).map(|_| attention(&q, &k, &v, None, true, 0.5, true)).fold(q.zeros_like(), |acc, o| acc + o) / 200.0;
        let exact = attention(&q, &k, &v, None, true, 0.5, false);
        let d = (mean_out - exact).abs().mean(Kind::Float).double_value(&[]);
        assert!(d < 0.08, "{d}");
    }

    #[test]
    fn bf16_written_out_attention_is_within_bf16_rounding_of_fp32_values_and_gradients() {
        let opts = (Kind::Float, Device::Cpu);
        // Fixed inputs (the global generator is shared by tests running in parallel); scores
        // span about ±6.
        let wave = |freq: f64, amp: f64| (Tensor::arange(2 * 4 * 16 * 8, opts) * freq).sin().view([2, 4, 16, 8]) * amp;
        let (q, k, v) = (wave(0.37, 2.0), wave(0.71, 2.0), wave(1.13, 1.0));
        let allowed =
            Tensor::arange(16, (Kind::Int64, Device::Cpu)).unsqueeze(0).le_tensor(&Tensor::from_slice(&[3i64, 9, 15]).unsqueeze(1));
        let q3 = q.narrow(2, 0, 3);
        for (q, allowed, causal) in [(&q, None, true), (&q, None, false), (&q3, Some(&allowed), false)] {
            let leaves = |kind: Kind| [q, &k, &v].map(|t| t.to_kind(kind).detach().set_requires_grad(true));
            let [qf, kf, vf] = leaves(Kind::Float);
            let fused = Tensor::scaled_dot_product_attention(&qf, &kf, &vf, allowed, 0.0, causal, None, false);
            let [qb, kb, vb] = leaves(Kind::BFloat16);
            let ours = attention(&qb, &kb, &vb, allowed, causal, 1e-12, true);
            assert_eq!(ours.kind(), Kind::BFloat16);
            let d = (&fused - ours.to_kind(Kind::Float)).abs().max().double_value(&[]);
            assert!(d < 0.03, "causal {causal}: values differ by {d}");
            let up = (Tensor::arange(fused.numel() as i64, opts) * 0.29).cos().view(fused.size().as_slice());
            (&fused * &up).sum(Kind::Float).backward();
            (ours.to_kind(Kind::Float) * &up).sum(Kind::Float).backward();
            for (a, b) in [(&qf, &qb), (&kf, &kb), (&vf, &vb)] {
                let (ga, gb) = (a.grad(), b.grad().to_kind(Kind::Float));
                let rel = (&ga - &gb).norm().double_value(&[]) / ga.norm().double_value(&[]);
                assert!(rel < 0.03, "causal {causal}: gradients differ by {rel} (relative)");
            }
        }
    }
}
