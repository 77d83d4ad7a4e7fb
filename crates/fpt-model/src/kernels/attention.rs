//! Scaled-dot-product attention: libtorch's fused kernel, or, with dropout on the CPU (the
//! fused CPU kernel has none), our own in tiles whose backward pass recomputes them.
//!
//! Written out with libtorch's autograd, attention with dropout keeps every layer's T×T scores,
//! probabilities and dropout masks until the backward pass: 12 GB at 1,024 tokens, batch 8,
//! GPT-2 small. Here the forward pass computes the output a tile at a time (a few examples,
//! a block of query rows, their keys) and keeps only q, k, v, the mask and a seed; the
//! backward pass recomputes each tile's probabilities and draws its dropout mask again from
//! the counter-based generator (an element's draw depends on the seed and its index only), so
//! what is kept grows linearly with the sequence, and a causal tile skips the keys after its
//! last query. The autograd node itself is C++ (`autograd.cpp`, `autograd.rs`; tch cannot define
//! a backward pass), calling [`forward_tiles`] and [`backward_tiles`] here.

use super::autograd::{attention_node, borrowed, owned};
use super::dropout::{draw_seed, mask_rows};
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

/// Scaled-dot-product attention of `q` `[B, H, Tq, D]` over `k`, `v` `[B, H, Tk, D]`.
/// `causal`: query i sees keys 0..=i (Tq == Tk). `allowed`: a boolean mask, true where a query
/// may attend, `[Tq, Tk]` or per example `[B or 1, 1, Tq or 1, Tk]` (a key-padding mask); every
/// query must be allowed at least one key. Dropout `p` acts on the probabilities in training.
///
/// Without dropout (evaluation, or p = 0) and on CUDA this is libtorch's fused kernel. With
/// dropout on the CPU it is [`forward_tiles`] under a node whose backward is
/// [`backward_tiles`]: scores in the inputs' dtype (bf16 products of bf16 inputs in bf16 mode,
/// accumulated in fp32 by the GEMM), softmax in fp32, then the probabilities in `v`'s dtype
/// dropped and multiplied with `v`, as libtorch's own ops would compute it written out.
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, allowed: Option<&Tensor>, causal: bool, p: f64, train: bool) -> Tensor {
    let p = if train { p } else { 0.0 };
    if p == 0.0 || q.device() != Device::Cpu {
        return Tensor::scaled_dot_product_attention(q, k, v, allowed, p, causal, None, false);
    }
    attention_with_seed(q, k, v, allowed, causal, Dropout { p, seed: draw_seed() })
}

/// [`attention`] with dropout on the CPU, its masks drawn from `spec.seed`.
fn attention_with_seed(q: &Tensor, k: &Tensor, v: &Tensor, allowed: Option<&Tensor>, causal: bool, spec: Dropout) -> Tensor {
    let (b, h, tq, _) = q.size4().expect("attention queries are [B, H, T, D]");
    if (b * h * tq * k.size()[2]) as usize <= KEEP_SCORES_UP_TO {
        // Short and medium sequences: keeping the probabilities costs less than recomputing.
        return written_out(q, k, v, allowed, causal, spec);
    }
    tiled(q, k, v, allowed, causal, spec)
}

/// The node: [`forward_tiles`], and [`backward_tiles`] for its backward pass.
fn tiled(q: &Tensor, k: &Tensor, v: &Tensor, allowed: Option<&Tensor>, causal: bool, spec: Dropout) -> Tensor {
    attention_node(q, k, v, allowed, spec.p, spec.seed, causal, forward_callback, backward_callback)
}

/// Attention written out with libtorch's ops (its autograd keeps the probabilities and the
/// mask), dropping with the whole `[B, H, Tq, Tk]` mask the tiles cut theirs from: what the
/// tiled node computes, and where the whole is one tile, cheaper (nothing recomputed).
fn written_out(q: &Tensor, k: &Tensor, v: &Tensor, allowed: Option<&Tensor>, causal: bool, spec: Dropout) -> Tensor {
    // One tile: the whole, with the tiles' own scores (one GEMM onto the -inf bias) and mask.
    let tiles = Tiles::new(q, k, causal, i64::MAX as usize);
    let (b, h, tq, tk, d) = (tiles.b, tiles.h, tiles.tq, tiles.tk, tiles.d);
    let whole = (0, b, 0, tq, tk);
    let bias = tiles.bias(allowed, q.kind(), whole);
    let probs = tiles.probs(&q.reshape([b * h, tq, d]), &k.reshape([b * h, tk, d]), bias.as_ref());
    let dropped = probs.to_kind(v.kind()) * tiles.mask(spec, v.kind(), whole);
    dropped.bmm(&v.reshape([b * h, tk, d])).view([b, h, tq, d])
}

/// The tile size of the callbacks: scores of at most this many elements at a time (8 MB in
/// fp32), so that a tile's temporaries stay in the allocator's reuse range whatever the batch
/// and sequence length.
const TILE_ELEMENTS: usize = 1 << 21;

/// The largest `[B, H, Tq, Tk]` whose probabilities and mask autograd keeps (about 70 MB a layer
/// in bf16): below it the written-out form is faster (recomputing cost SmolLM2 6% of a step at
/// 121 tokens, batch 32, 4.2M elements a layer; GPT-2 small nothing measurable at 256 tokens,
/// batch 16, 12.6M) and its memory is small next to the rest of the step's.
const KEEP_SCORES_UP_TO: usize = 1 << 23;

extern "C" fn forward_callback(
    q: *mut C_tensor,
    k: *mut C_tensor,
    v: *mut C_tensor,
    allowed: *mut C_tensor,
    p: f64,
    seed: u64,
    causal: bool,
) -> *mut C_tensor {
    // A panic must not unwind into C++: it prints its message and the C++ side throws.
    std::panic::catch_unwind(|| {
        let allowed = (!allowed.is_null()).then(|| borrowed(allowed));
        let spec = Dropout { p, seed };
        forward_tiles(&borrowed(q), &borrowed(k), &borrowed(v), allowed.as_deref(), causal, spec, TILE_ELEMENTS)
    })
    .map_or(std::ptr::null_mut(), owned)
}

#[allow(clippy::too_many_arguments)]
extern "C" fn backward_callback(
    q: *mut C_tensor,
    k: *mut C_tensor,
    v: *mut C_tensor,
    allowed: *mut C_tensor,
    grad_out: *mut C_tensor,
    p: f64,
    seed: u64,
    causal: bool,
    dq: *mut *mut C_tensor,
    dk: *mut *mut C_tensor,
    dv: *mut *mut C_tensor,
) -> bool {
    let grads = std::panic::catch_unwind(|| {
        let allowed = (!allowed.is_null()).then(|| borrowed(allowed));
        let spec = Dropout { p, seed };
        backward_tiles(&borrowed(q), &borrowed(k), &borrowed(v), allowed.as_deref(), &borrowed(grad_out), causal, spec, TILE_ELEMENTS)
    });
    match grads {
        Ok([gq, gk, gv]) => {
            // SAFETY: the C++ side passes three writable slots.
            unsafe { (*dq, *dk, *dv) = (owned(gq), owned(gk), owned(gv)) };
            true
        }
        Err(_) => false,
    }
}

/// The dropout of one attention call: its rate and the seed of its masks.
#[derive(Clone, Copy)]
pub(super) struct Dropout {
    pub p: f64,
    pub seed: u64,
}

/// How [`forward_tiles`] and [`backward_tiles`] cut `[B, H, Tq, Tk]`: `examples` whole examples
/// (all heads) by `rows` query rows by the keys those rows may see.
struct Tiles {
    b: i64,
    h: i64,
    tq: i64,
    tk: i64,
    d: i64,
    examples: i64,
    rows: i64,
    causal: bool,
}

impl Tiles {
    fn new(q: &Tensor, k: &Tensor, causal: bool, budget: usize) -> Tiles {
        let (b, h, tq, d) = q.size4().expect("attention queries are [B, H, T, D]");
        let tk = k.size()[2];
        assert!(!causal || tq == tk, "causal attention needs as many queries as keys ({tq} vs {tk})");
        let budget = budget as i64;
        // Row blocks of up to 128 queries (GEMMs of 128 × D × Tk per head), fewer when a single
        // example's heads would exceed the budget; then as many examples as fit.
        let rows = tq.min(128).min((budget / (h * tk)).max(16)).max(1);
        let examples = (budget / (h * rows * tk)).clamp(1, b.max(1));
        Tiles { b, h, tq, tk, d, examples, rows, causal }
    }

    /// Every tile: (first example, examples, first row, rows, keys seen).
    fn each(&self) -> impl Iterator<Item = (i64, i64, i64, i64, i64)> + '_ {
        (0..self.b).step_by(self.examples as usize).flat_map(move |e0| {
            let ne = self.examples.min(self.b - e0);
            (0..self.tq).step_by(self.rows as usize).map(move |i0| {
                let nr = self.rows.min(self.tq - i0);
                (e0, ne, i0, nr, if self.causal { i0 + nr } else { self.tk })
            })
        })
    }

    /// `t` `[B, H, T, D]` (contiguous) as the tile's `[ne·H, len, D]` from row `start`: a view.
    fn cut(&self, t: &Tensor, e0: i64, ne: i64, start: i64, len: i64) -> Tensor {
        t.narrow(0, e0, ne).narrow(2, start, len).view([ne * self.h, len, self.d])
    }

    /// The tile's additive score bias (0 where a query may attend, -inf elsewhere), broadcast
    /// over `[ne·H, nr, kend]`; None where everything is allowed.
    fn bias(&self, allowed: Option<&Tensor>, kind: Kind, (e0, ne, i0, nr, kend): (i64, i64, i64, i64, i64)) -> Option<Tensor> {
        let opts = (kind, Device::Cpu);
        let mut bias = (self.causal && kend > i0 + 1).then(|| {
            let rows = Tensor::arange_start(i0, i0 + nr, (Kind::Int64, Device::Cpu)).unsqueeze(1);
            let keys = Tensor::arange(kend, (Kind::Int64, Device::Cpu)).unsqueeze(0);
            Tensor::zeros([nr, kend], opts).masked_fill(&keys.gt_tensor(&rows), f64::NEG_INFINITY)
        });
        if let Some(allowed) = allowed {
            let blocked = if allowed.dim() == 2 {
                allowed.narrow(0, i0, nr).narrow(1, 0, kend).logical_not()
            } else {
                let a = if allowed.size()[0] == 1 { allowed.shallow_clone() } else { allowed.narrow(0, e0, ne) };
                let a = if a.size()[2] == 1 { a } else { a.narrow(2, i0, nr) };
                let a = a.narrow(3, 0, kend);
                let rows = a.size()[2];
                a.expand([ne, self.h, rows, kend], false).reshape([ne * self.h, rows, kend]).logical_not()
            };
            let base = bias.unwrap_or_else(|| Tensor::zeros([1, 1], opts));
            bias = Some(base.masked_fill(&blocked, f64::NEG_INFINITY));
        }
        bias
    }

    /// The tile's dropout mask `[ne·H, nr, kend]`: the elements of the whole `[B, H, Tq, Tk]`
    /// mask at those places, so the forward and backward passes draw the same one.
    fn mask(&self, spec: Dropout, kind: Kind, (e0, ne, i0, nr, kend): (i64, i64, i64, i64, i64)) -> Tensor {
        let (h, tq, tk) = (self.h as u64, self.tq as u64, self.tk as u64);
        let (e0, i0, nr) = (e0 as u64, i0 as u64, nr as u64);
        let row_start = move |r: usize| {
            let (bh, row) = (e0 * h + r as u64 / nr, i0 + r as u64 % nr);
            (bh * tq + row) * tk
        };
        if nr as i64 == self.tq && kend == self.tk {
            // Whole rows of whole examples: one contiguous run of the mask, filled as one.
            let first = e0 * h * tq * tk;
            let n = ne * self.h * self.tq * self.tk;
            return mask_rows(&[n], &|_| first, spec.p, spec.seed, kind).view([ne * self.h, nr as i64, kend]);
        }
        mask_rows(&[ne * self.h, nr as i64, kend], &row_start, spec.p, spec.seed, kind)
    }

    /// The tile's probabilities: softmax in fp32 of the scaled, masked scores (in q's dtype).
    fn probs(&self, q: &Tensor, k: &Tensor, bias: Option<&Tensor>) -> Tensor {
        let alpha = 1.0 / (self.d as f64).sqrt();
        let kt = k.transpose(1, 2);
        let scores = match bias {
            Some(bias) => bias.baddbmm(q, &kt, 1.0, alpha),
            None => q.bmm(&kt) * alpha,
        };
        scores.softmax(-1, wide(scores.kind()))
    }
}

/// The dtype softmaxes and sums run in: fp32 for 16-bit inputs, else the inputs' own.
fn wide(kind: Kind) -> Kind {
    if kind == Kind::BFloat16 || kind == Kind::Half {
        Kind::Float
    } else {
        kind
    }
}

/// Attention with dropout, a tile at a time; the output `[B, H, Tq, D]` in `v`'s dtype.
pub(super) fn forward_tiles(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    allowed: Option<&Tensor>,
    causal: bool,
    spec: Dropout,
    budget: usize,
) -> Tensor {
    let tiles = Tiles::new(q, k, causal, budget);
    let (q, k, v) = (q.contiguous(), k.contiguous(), v.contiguous());
    let out = Tensor::empty([tiles.b, tiles.h, tiles.tq, tiles.d], (v.kind(), Device::Cpu));
    for tile @ (e0, ne, i0, nr, kend) in tiles.each() {
        let bias = tiles.bias(allowed, q.kind(), tile);
        let probs = tiles.probs(&tiles.cut(&q, e0, ne, i0, nr), &tiles.cut(&k, e0, ne, 0, kend), bias.as_ref());
        let dropped = probs.to_kind(v.kind()) * tiles.mask(spec, v.kind(), tile);
        let y = dropped.bmm(&tiles.cut(&v, e0, ne, 0, kend));
        out.narrow(0, e0, ne).narrow(2, i0, nr).copy_(&y.view([ne, tiles.h, nr, tiles.d]));
    }
    out
}

/// The gradients of [`forward_tiles`] with respect to `q`, `k`, `v`, given the output's
/// `grad_out`: each tile's probabilities recomputed and its mask drawn again. What libtorch's
/// autograd would do for the written-out ops, tile by tile; the key and value gradients,
/// summed over row blocks, are accumulated in fp32 in bf16 mode.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_tiles(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    allowed: Option<&Tensor>,
    grad_out: &Tensor,
    causal: bool,
    spec: Dropout,
    budget: usize,
) -> [Tensor; 3] {
    let tiles = Tiles::new(q, k, causal, budget);
    let (q, k, v, grad_out) = (q.contiguous(), k.contiguous(), v.contiguous(), grad_out.contiguous());
    let alpha = 1.0 / (tiles.d as f64).sqrt();
    let dq = Tensor::empty([tiles.b, tiles.h, tiles.tq, tiles.d], (q.kind(), Device::Cpu));
    let dk = Tensor::zeros([tiles.b, tiles.h, tiles.tk, tiles.d], (wide(k.kind()), Device::Cpu));
    let dv = Tensor::zeros([tiles.b, tiles.h, tiles.tk, tiles.d], (wide(v.kind()), Device::Cpu));
    for tile @ (e0, ne, i0, nr, kend) in tiles.each() {
        let (q_t, k_t, v_t) = (tiles.cut(&q, e0, ne, i0, nr), tiles.cut(&k, e0, ne, 0, kend), tiles.cut(&v, e0, ne, 0, kend));
        let bias = tiles.bias(allowed, q.kind(), tile);
        let probs = tiles.probs(&q_t, &k_t, bias.as_ref());
        let mask = tiles.mask(spec, v.kind(), tile);
        let dropped = probs.to_kind(v.kind()) * &mask;
        let grad_y = tiles.cut(&grad_out, e0, ne, i0, nr);
        let mut dv_t = tiles.cut(&dv, e0, ne, 0, kend);
        dv_t += dropped.transpose(1, 2).bmm(&grad_y);
        // Through the dropout and the cast to v's dtype, then softmax's own backward (fp32 in
        // bf16 mode) and the cast of the scores, as autograd runs the written-out ops.
        let grad_probs = (grad_y.bmm(&v_t.transpose(1, 2)) * &mask).to_kind(probs.kind());
        let grad_scores = Tensor::internal_softmax_backward_data(&grad_probs, &probs, -1, probs.kind()).to_kind(q.kind());
        dq.narrow(0, e0, ne).narrow(2, i0, nr).copy_(&(grad_scores.bmm(&k_t) * alpha).view([ne, tiles.h, nr, tiles.d]));
        let mut dk_t = tiles.cut(&dk, e0, ne, 0, kend);
        dk_t += grad_scores.transpose(1, 2).bmm(&q_t) * alpha;
    }
    [dq, dk.to_kind(k.kind()), dv.to_kind(v.kind())]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_with_dropout_matches_the_fused_kernel_when_nothing_is_dropped() {
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

    /// Attention written out op by op under libtorch's autograd, with the whole mask: the truth
    /// both of our paths must equal.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, allowed: Option<&Tensor>, causal: bool, spec: Dropout) -> Tensor {
        let (b, h, tq, d) = q.size4().expect("attention queries are [B, H, T, D]");
        let tk = k.size()[2];
        let mut scores = q.matmul(&k.transpose(2, 3)) / (d as f64).sqrt();
        if causal {
            scores = scores.masked_fill(&Tensor::ones([tq, tk], (Kind::Bool, Device::Cpu)).triu(1), f64::NEG_INFINITY);
        }
        if let Some(allowed) = allowed {
            scores = scores.masked_fill(&allowed.logical_not(), f64::NEG_INFINITY);
        }
        let mask = mask_rows(&[b, h, tq, tk], &|r| r as u64 * tk as u64, spec.p, spec.seed, v.kind());
        (scores.softmax(-1, wide(scores.kind())).to_kind(v.kind()) * mask).matmul(v)
    }

    #[test]
    fn tiled_attention_with_dropout_equals_autograd_on_the_same_mask_values_and_gradients() {
        let opts = (Kind::Double, Device::Cpu);
        let wave = |n: [i64; 4], freq: f64| (Tensor::arange(n.iter().product::<i64>(), opts) * freq).sin().view(n) * 1.5;
        let (b, h, t, d) = (3, 2, 37, 8);
        let (q, k, v) = (wave([b, h, t, d], 0.37), wave([b, h, t, d], 0.71), wave([b, h, t, d], 1.13));
        let q_rows = q.narrow(2, 30, 7);
        let keys = Tensor::arange(t, (Kind::Int64, Device::Cpu));
        // Key padding per example (lengths 37, 20, 5), a per-query mask, [Tq, Tk] masks.
        let lengths = Tensor::from_slice(&[37i64, 20, 5]).view([b, 1, 1, 1]);
        let padding = keys.view([1, 1, 1, t]).lt_tensor(&lengths);
        let limits = Tensor::from_slice(&[36i64, 12, 3]).view([b, 1, 1, 1]) - keys.remainder(3).view([1, 1, t, 1]);
        let per_query = keys.view([1, 1, 1, t]).le_tensor(&limits);
        let rows = keys.unsqueeze(0).le_tensor(&Tensor::arange_start(30, 37, (Kind::Int64, Device::Cpu)).unsqueeze(1));
        // A sliding window (Mistral's, Qwen2's): query i sees keys i-4..=i, so early keys of a
        // row are masked too.
        let at = keys.unsqueeze(1);
        let window = keys.unsqueeze(0).le_tensor(&at).logical_and(&keys.unsqueeze(0).gt_tensor(&(&at - 5)));
        let spec = Dropout { p: 0.3, seed: 1234 };
        let cases: [(&Tensor, Option<&Tensor>, bool); 6] = [
            (&q, None, true),
            (&q, None, false),
            (&q, Some(&padding), false),
            (&q, Some(&per_query), false),
            (&q_rows, Some(&rows), false),
            (&q, Some(&window), false),
        ];
        for (case, (q, allowed, causal)) in cases.into_iter().enumerate() {
            let leaves = || [q, &k, &v].map(|t| t.detach().set_requires_grad(true));
            let [qr, kr, vr] = leaves();
            let reference = reference(&qr, &kr, &vr, allowed, causal, spec);
            let up = (Tensor::arange(reference.numel() as i64, opts) * 0.29).cos().view(reference.size().as_slice());
            (&reference * &up).sum(Kind::Double).backward();
            let truth = [qr.grad(), kr.grad(), vr.grad()];
            // Many small tiles (16 rows, one example at a time), one tile, and the node itself.
            for budget in [1, 1 << 22] {
                let out = forward_tiles(q, &k, &v, allowed, causal, spec, budget);
                let d = crate::tolerance::max_abs_diff(&out, &reference);
                assert!(d < 1e-12, "case {case}, budget {budget}: output differs by {d}");
                let grads = backward_tiles(q, &k, &v, allowed, &up, causal, spec, budget);
                for (name, g, t) in [("q", &grads[0], &truth[0]), ("k", &grads[1], &truth[1]), ("v", &grads[2], &truth[2])] {
                    let d = crate::tolerance::max_abs_diff(g, t);
                    assert!(d < 1e-12, "case {case}, budget {budget}: d{name} differs by {d}");
                }
            }
            // The node, and the kept (written-out) path, both under libtorch's autograd.
            type Path = fn(&Tensor, &Tensor, &Tensor, Option<&Tensor>, bool, Dropout) -> Tensor;
            for (path, run) in [("the node", tiled as Path), ("written out", written_out as Path)] {
                let [qn, kn, vn] = leaves();
                let out = run(&qn, &kn, &vn, allowed, causal, spec);
                assert!(crate::tolerance::max_abs_diff(&out, &reference) < 1e-12, "case {case}: {path}'s output");
                (&out * &up).sum(Kind::Double).backward();
                for (name, g, t) in [("q", qn.grad(), &truth[0]), ("k", kn.grad(), &truth[1]), ("v", vn.grad(), &truth[2])] {
                    let d = crate::tolerance::max_abs_diff(&g, t);
                    assert!(d < 1e-12, "case {case}: {path}'s d{name} differs by {d}");
                }
            }
        }
    }

    #[test]
    fn attention_with_dropout_repeats_per_seed_and_drops_the_stated_fraction() {
        let opts = (Kind::Float, Device::Cpu);
        let (q, k) = (Tensor::zeros([2, 3, 64, 4], opts), Tensor::zeros([2, 3, 64, 4], opts));
        // Uniform probabilities 1/64 and v = 1: each output is (kept keys) / 64 / (1 - p).
        let v = Tensor::ones([2, 3, 64, 4], opts).set_requires_grad(true);
        let spec = Dropout { p: 0.25, seed: 99 };
        let a = tiled(&q, &k, &v, None, false, spec);
        assert!(a.equal(&tiled(&q, &k, &v, None, false, spec)), "the same seed gives the same output");
        assert!(a.equal(&written_out(&q, &k, &v, None, false, spec)), "kept or recomputed, the same mask");
        assert!(!a.equal(&tiled(&q, &k, &v, None, false, Dropout { seed: 100, ..spec })));
        let kept = a.mean(Kind::Double).double_value(&[]) * 0.75;
        assert!((kept - 0.75).abs() < 0.02, "kept fraction {kept}");
        // The backward pass regenerates the forward's mask: dL/dv of sum(out) is the column sum
        // of the dropped probabilities, whose total is the output's total.
        a.sum(Kind::Float).backward();
        let (total_grad, total_out) = (v.grad().sum(Kind::Double).double_value(&[]), a.sum(Kind::Double).double_value(&[]));
        assert!((total_grad - total_out).abs() < 1e-3 * total_out, "{total_grad} vs {total_out}");
    }

    #[test]
    fn bf16_attention_is_within_bf16_rounding_of_fp32_values_and_gradients() {
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
            let up = (Tensor::arange(fused.numel() as i64, opts) * 0.29).cos().view(fused.size().as_slice());
            (&fused * &up).sum(Kind::Float).backward();
            type Path = fn(&Tensor, &Tensor, &Tensor, Option<&Tensor>, bool, Dropout) -> Tensor;
            for (path, run) in [("written out", written_out as Path), ("tiled", tiled as Path)] {
                let [qb, kb, vb] = leaves(Kind::BFloat16);
                let ours = run(&qb, &kb, &vb, allowed, causal, Dropout { p: 1e-12, seed: 5 });
                assert_eq!(ours.kind(), Kind::BFloat16);
                let d = (&fused - ours.to_kind(Kind::Float)).abs().max().double_value(&[]);
                assert!(d < 0.03, "{path}, causal {causal}: values differ by {d}");
                (ours.to_kind(Kind::Float) * &up).sum(Kind::Float).backward();
                for (a, b) in [(&qf, &qb), (&kf, &kb), (&vf, &vb)] {
                    let (ga, gb) = (a.grad(), b.grad().to_kind(Kind::Float));
                    let rel = (&ga - &gb).norm().double_value(&[]) / ga.norm().double_value(&[]);
                    assert!(rel < 0.03, "{path}, causal {causal}: gradients differ by {rel} (relative)");
                }
            }
        }
    }
}
