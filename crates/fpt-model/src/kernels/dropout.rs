//! Dropout on the CPU with a counter-based generator.
//!
//! libtorch's CPU dropout draws its mask one element at a time from a Mersenne twister (its
//! vectorised MKL path is taken on Intel CPUs only), which costs about a tenth of an FPT train
//! step. Here the mask comes from SplitMix64 of a seed and the element index (vectorised, ~0.2 ns
//! per element per thread) whose seed is drawn from libtorch's generator, so runs stay
//! repeatable under `tch::manual_seed` and need no state of their own. On CUDA libtorch's own
//! kernel is used.

use super::autograd::{borrowed, dropout_node, owned};
use super::cpu::{dispatched, CpuBuild};
use super::omp::parallel_ranges;
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills `mask` for [`dropout`]: each element `scale` with probability `1 - p`, else `zero`.
/// Two elements per 64-bit draw (32 bits each); element `i` depends only on (`seed`, `i`), so
/// the mask is the same however it is split across threads.
///
/// The loop is branch-free so that it vectorises; on CPUs with AVX-512 (or AVX2) it is compiled
/// for them and picked at run time — 13× faster than scalar code on the build machine's EPYC,
/// same masks bit for bit.
fn fill_mask<T: Copy + Send + Sync>(mask: &mut [T], p: f64, seed: u64, scale: T, zero: T) {
    let n = mask.len();
    let base = mask.as_mut_ptr() as usize;
    // Threads get whole pairs: element range [2a, 2b) ∩ [0, n).
    parallel_ranges(n.div_ceil(2), &|pairs: std::ops::Range<usize>| {
        let (start, end) = (2 * pairs.start, (2 * pairs.end).min(n));
        // SAFETY: the ranges of different threads are disjoint and within the mask.
        let part = unsafe { std::slice::from_raw_parts_mut((base as *mut T).add(start), end - start) };
        fill_mask_part(CpuBuild::best(), part, pairs.start, p, seed, scale, zero);
    });
}

dispatched! {
    /// [`fill_mask_portable`] as `build` compiles it.
    fn fill_mask_part[T: Copy](part: &mut [T], first_pair: usize, p: f64, seed: u64, scale: T, zero: T) => fill_mask_portable
}

/// `part` starts at element `2 * first_pair` of the whole mask.
#[inline(always)]
pub(super) fn fill_mask_portable<T: Copy>(part: &mut [T], first_pair: usize, p: f64, seed: u64, scale: T, zero: T) {
    let threshold = ((1.0 - p) * 4_294_967_296.0).round().min(4_294_967_295.0) as u64;
    let key = splitmix64(seed);
    let draw = |pair: usize| splitmix64(key ^ ((first_pair + pair) as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
    let (pairs, rest) = part.as_chunks_mut::<2>();
    for (pair, out) in pairs.iter_mut().enumerate() {
        let r = draw(pair);
        out[0] = if (r & 0xFFFF_FFFF) < threshold { scale } else { zero };
        out[1] = if (r >> 32) < threshold { scale } else { zero };
    }
    if let [last] = rest {
        let r = draw(pairs.len());
        *last = if (r & 0xFFFF_FFFF) < threshold { scale } else { zero };
    }
}

/// Fills `mask`, a tile of `len`-element rows cut out of a larger mask, with that larger mask's
/// values: row `r` holds its elements `row_start(r) .. row_start(r) + len`, as [`fill_mask`]
/// would draw them for the whole (so a tile drawn again gives the same bits, and tiles drawn
/// separately give the whole). Attention regenerates its dropout masks this way in the
/// backward pass instead of keeping them.
pub(super) fn fill_mask_rows<T: Copy + Send + Sync>(
    mask: &mut [T],
    len: usize,
    row_start: &(dyn Fn(usize) -> u64 + Sync),
    p: f64,
    seed: u64,
    scale: T,
    zero: T,
) {
    if len == 0 {
        return;
    }
    let base = mask.as_mut_ptr() as usize;
    let threshold = ((1.0 - p) * 4_294_967_296.0).round().min(4_294_967_295.0) as u64;
    let key = splitmix64(seed);
    parallel_ranges(mask.len(), &|elements: std::ops::Range<usize>| {
        let mut e = elements.start;
        while e < elements.end {
            let (row, col) = (e / len, e % len);
            let end = elements.end.min((row + 1) * len);
            // SAFETY: the element ranges of different threads are disjoint and within the mask.
            let mut part = unsafe { std::slice::from_raw_parts_mut((base as *mut T).add(e), end - e) };
            let first = row_start(row) + col as u64;
            // An odd first element is the high half of its pair's draw; the rest start a pair.
            if first % 2 == 1 {
                let r = splitmix64(key ^ (first / 2).wrapping_mul(0xD6E8_FEB8_6659_FD93));
                part[0] = if (r >> 32) < threshold { scale } else { zero };
                part = &mut part[1..];
            }
            fill_mask_part(CpuBuild::best(), part, first.div_ceil(2) as usize, p, seed, scale, zero);
            e = end;
        }
    });
}

/// A dropout mask in `kind` (bf16 written directly, other kinds through fp32) shaped `shape`,
/// whose rows (the last dimension, `len` elements) are [`fill_mask_rows`]'s.
pub(super) fn mask_rows(shape: &[i64], row_start: &(dyn Fn(usize) -> u64 + Sync), p: f64, seed: u64, kind: Kind) -> Tensor {
    let n = shape.iter().product::<i64>() as usize;
    let len = *shape.last().unwrap_or(&1) as usize;
    let scale = 1.0 / (1.0 - p);
    if kind == Kind::BFloat16 {
        let mask = Tensor::empty(shape, (Kind::BFloat16, Device::Cpu));
        // SAFETY: a freshly allocated, contiguous, unshared CPU tensor of n 2-byte elements;
        // bf16 bit patterns are written as i16.
        let bits = unsafe { std::slice::from_raw_parts_mut(mask.data_ptr() as *mut i16, n) };
        fill_mask_rows(bits, len, row_start, p, seed, half::bf16::from_f64(scale).to_bits() as i16, 0);
        return mask;
    }
    let mask = Tensor::empty(shape, (Kind::Float, Device::Cpu));
    // SAFETY: as above, n 4-byte f32 elements.
    let values = unsafe { std::slice::from_raw_parts_mut(mask.data_ptr() as *mut f32, n) };
    fill_mask_rows(values, len, row_start, p, seed, scale as f32, 0.0);
    mask.to_kind(kind)
}

/// One draw from libtorch's generator: the seed of one call's masks, so that re-seeding it
/// (`tch::manual_seed`) re-seeds every mask.
pub(super) fn draw_seed() -> u64 {
    Tensor::randint(i64::MAX, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]) as u64
}

/// The fp32 mask of [`dropout`]: `numel` values, each `1 / (1 - p)` with probability `1 - p`,
/// else 0.
#[cfg(test)]
fn dropout_mask(numel: usize, p: f64, seed: u64) -> Vec<f32> {
    let mut mask = vec![0f32; numel];
    fill_mask(&mut mask, p, seed, (1.0 / (1.0 - p)) as f32, 0.0);
    mask
}

/// Inverted dropout: in training, zeroes each element with probability `p` and scales the rest
/// by `1 / (1 - p)`; otherwise (or with `p == 0`) returns `x` unchanged.
///
/// On the CPU a large mask is not kept for the backward pass: a node (`autograd.cpp`) saves the
/// seed and draws the mask again to multiply the gradient (a GPT-2 block's two residual
/// dropouts kept 50 MB of masks per layer at 1,024 tokens, batch 16). The masks are the same
/// either way.
pub(crate) fn dropout(x: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p == 0.0 {
        return x.shallow_clone();
    }
    if x.device() != Device::Cpu {
        return x.dropout(p, true);
    }
    if x.numel() == 0 {
        return x.shallow_clone();
    }
    let seed = draw_seed();
    // Small masks are kept (drawing them again would cost more than the memory saved).
    if x.requires_grad() && x.numel() > KEEP_MASKS_UP_TO {
        regenerated(x, p, seed)
    } else {
        times_mask(x, p, seed)
    }
}

/// [`times_mask`] under the node that draws the mask again for the gradient.
fn regenerated(x: &Tensor, p: f64, seed: u64) -> Tensor {
    dropout_node(x, p, seed, mask_callback)
}

/// The largest tensor whose dropout mask autograd keeps: 2^23 elements (16 MB in bf16; drawing
/// masks again cost SmolLM2 about 2% of a step at 121 tokens, batch 32, 2.2M elements a mask).
const KEEP_MASKS_UP_TO: usize = 1 << 23;

/// `x` times the dropout mask of (`p`, `seed`): element i of the (row-major) mask depends only
/// on the seed and i, so the gradient, shaped like `x`, meets the same mask.
pub(super) fn times_mask(x: &Tensor, p: f64, seed: u64) -> Tensor {
    // The mask is written straight into a fresh tensor in x's dtype (bf16 in bf16 mode: half
    // the bytes, no cast pass), as libtorch builds its own.
    let n = x.numel();
    let scale = 1.0 / (1.0 - p);
    let mask = match x.kind() {
        Kind::BFloat16 => {
            let mask = Tensor::empty([n as i64], (Kind::BFloat16, Device::Cpu));
            // SAFETY: a freshly allocated, contiguous, unshared CPU tensor of n 2-byte elements;
            // bf16 bit patterns are written as i16.
            let bits = unsafe { std::slice::from_raw_parts_mut(mask.data_ptr() as *mut i16, n) };
            fill_mask(bits, p, seed, half::bf16::from_f64(scale).to_bits() as i16, 0);
            mask
        }
        kind => {
            let mask = Tensor::empty([n as i64], (Kind::Float, Device::Cpu));
            // SAFETY: as above, n 4-byte f32 elements.
            let values = unsafe { std::slice::from_raw_parts_mut(mask.data_ptr() as *mut f32, n) };
            fill_mask(values, p, seed, scale as f32, 0.0);
            mask.to_kind(kind)
        }
    };
    x * mask.view(x.size().as_slice())
}

extern "C" fn mask_callback(x: *mut C_tensor, p: f64, seed: u64) -> *mut C_tensor {
    // A panic must not unwind into C++: it prints its message and the C++ side throws.
    std::panic::catch_unwind(|| times_mask(&borrowed(x), p, seed)).map_or(std::ptr::null_mut(), owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_keeps_the_right_fraction_with_the_right_scale_and_repeats_per_seed() {
        for p in [0.1, 0.5, 0.9] {
            let mask = dropout_mask(1_000_001, p, 7);
            let kept = mask.iter().filter(|&&m| m != 0.0).count() as f64 / mask.len() as f64;
            assert!((kept - (1.0 - p)).abs() < 0.003, "p {p}: kept {kept}");
            assert!(mask.iter().all(|&m| m == 0.0 || (m as f64 - 1.0 / (1.0 - p)).abs() < 1e-5));
            // Unbiased: the mean of the mask is 1.
            let mean = mask.iter().map(|&m| m as f64).sum::<f64>() / mask.len() as f64;
            assert!((mean - 1.0).abs() < 0.01, "p {p}: mean {mean}");
        }
        assert_eq!(dropout_mask(100, 0.3, 1), dropout_mask(100, 0.3, 1));
        assert_ne!(dropout_mask(100, 0.3, 1), dropout_mask(100, 0.3, 2));
        // Neighbouring elements are not correlated: P(both kept) ≈ (1 - p)².
        let mask = dropout_mask(400_000, 0.5, 3);
        let both = mask.windows(2).filter(|w| w[0] != 0.0 && w[1] != 0.0).count() as f64 / (mask.len() - 1) as f64;
        assert!((both - 0.25).abs() < 0.005, "{both}");
    }

    #[test]
    fn the_vectorised_and_parallel_masks_are_the_portable_ones_bit_for_bit() {
        // Sizes below and above the threshold for splitting across threads, odd and even.
        for n in [0usize, 1, 2, 7, 64, 1001, 65_537, 200_001] {
            let mut fast = vec![0i16; n];
            let mut portable = vec![0i16; n];
            fill_mask(&mut fast, 0.1, 99, 1, 0);
            fill_mask_portable(&mut portable, 0, 0.1, 99, 1, 0);
            assert_eq!(fast, portable, "n {n}");
            let mut fast = vec![0f32; n];
            let mut portable = vec![0f32; n];
            fill_mask(&mut fast, 0.3, 5, 2.0, 0.0);
            fill_mask_portable(&mut portable, 0, 0.3, 5, 2.0, 0.0);
            assert_eq!(fast, portable, "n {n}");
        }
        // Every build of the loop this CPU can run gives the same bits.
        let run = |build| {
            let mut built = vec![0i16; 1001];
            fill_mask_part(build, &mut built, 3, 0.1, 99, 1, 0);
            built
        };
        let portable = run(CpuBuild::portable());
        for build in CpuBuild::runnable() {
            assert_eq!(run(build), portable, "{build:?}");
        }
        let mut direct = vec![0i16; 1001];
        fill_mask_portable(&mut direct, 3, 0.1, 99, 1, 0);
        assert_eq!(direct, portable);
        // The masks themselves are pinned (values of the scalar code before vectorising): the
        // regression expectations depend on them.
        let mut mask = vec![0i16; 16];
        fill_mask(&mut mask, 0.5, 1, 1, 0);
        assert_eq!(mask, [1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 0]);
    }

    #[test]
    fn row_tiles_of_a_mask_are_the_whole_masks_elements() {
        // A [3, 5, 7] mask drawn whole, and tiles of it (rows 1..4 of each of the 3 blocks,
        // columns 0..k) drawn alone: odd and even row starts, rows split across threads or not.
        let (p, seed) = (0.4, 11);
        let mut whole = vec![0f32; 3 * 5 * 7];
        fill_mask(&mut whole, p, seed, 2.0, 0.0);
        for k in [1usize, 4, 7] {
            let rows = 3 * 3;
            let mut tile = vec![9f32; rows * k];
            let start = |r: usize| ((r / 3 * 5 + 1 + r % 3) * 7) as u64;
            fill_mask_rows(&mut tile, k, &start, p, seed, 2.0, 0.0);
            for r in 0..rows {
                let s = start(r) as usize;
                assert_eq!(&tile[r * k..(r + 1) * k], &whole[s..s + k], "k {k}, row {r}");
            }
        }
        // Large enough to run on several threads: the same bits as the serial fill.
        let mut big = vec![0i16; 301 * 999];
        fill_mask_rows(&mut big, 999, &|r| (r * 1001 + 3) as u64, 0.1, 5, 1, 0);
        let mut full = vec![0i16; 301 * 1001 + 3];
        fill_mask_portable(&mut full, 0, 0.1, 5, 1, 0);
        for r in 0..301 {
            assert_eq!(&big[r * 999..(r + 1) * 999], &full[r * 1001 + 3..r * 1001 + 3 + 999], "row {r}");
        }
        let t = mask_rows(&[2, 3, 4], &|r| (r * 4) as u64, 0.5, 1, Kind::BFloat16);
        let mut pinned = vec![0f32; 24];
        fill_mask(&mut pinned, 0.5, 1, 2.0, 0.0);
        assert_eq!(Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap(), pinned);
    }

    #[test]
    fn dropout_is_identity_in_eval_repeatable_under_manual_seed_and_backpropagates_the_mask() {
        let x = Tensor::randn([4, 5, 6], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        assert_eq!(dropout(&x, 0.5, false).data_ptr(), x.data_ptr());
        // (Repeatability under manual_seed is a property of the mask's seed, tested above; the
        // global generator cannot be pinned here while other tests run in parallel.)
        let a = dropout(&x, 0.5, true);
        a.sum(Kind::Float).backward();
        // d/dx of x·mask is the mask: 0 or 2.
        let g = x.grad();
        assert!(g.eq(0.0).logical_or(&g.eq(2.0)).all().int64_value(&[]) == 1);
        assert!((&a - &x * &g).abs().max().double_value(&[]) < 1e-6);
        // The backward pass draws the mask again, for a strided view as for a contiguous one.
        let leaf = Tensor::randn([6, 5], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let xt = leaf.transpose(0, 1);
        let y = regenerated(&xt, 0.5, 17);
        assert!(y.equal(&times_mask(&xt, 0.5, 17)), "kept or drawn again, the same mask");
        (&y * 3.0).sum(Kind::Float).backward();
        let g = leaf.grad().transpose(0, 1) / 3.0;
        assert!(g.eq(0.0).logical_or(&g.eq(2.0)).all().int64_value(&[]) == 1);
        assert!((&y - &xt * &g).abs().max().double_value(&[]) < 1e-6);
        let xb = x.detach().to_kind(Kind::BFloat16);
        let bf = dropout(&xb, 0.5, true);
        assert_eq!(bf.kind(), Kind::BFloat16);
        // Each element is dropped (0) or doubled, exactly.
        let ratio = (bf.to_kind(Kind::Float) / xb.to_kind(Kind::Float)).flatten(0, -1);
        assert!(ratio.eq(0.0).logical_or(&ratio.eq(2.0)).all().int64_value(&[]) == 1, "{ratio}");
    }
}
