//! The residual add of a dropped-out bf16 branch onto the fp32 residual stream, `x + dropout(a)`,
//! in one pass each way on the CPU.
//!
//! Written with libtorch's ops it is five passes over the activations: the mask is filled, the
//! branch multiplied by it, and the sum taken with the branch promoted to fp32; backward, the
//! fp32 gradient is cast to bf16 and multiplied by the mask. Here the forward pass reads `x`
//! and `a` and writes the sum, and the backward pass reads the gradient and writes the branch's,
//! each drawing the mask on the fly from the same counter-based generator as [`super::dropout`]
//! (so nothing is kept between the passes). The arithmetic is libtorch's, step for step: the
//! product rounded to bf16 (to nearest even), then added in fp32; the gradient rounded to bf16,
//! then multiplied and rounded again. So the results equal `x + dropout(a)` bit for bit, masks
//! included (tested), and a training run computes what it did before.

use super::autograd::{borrowed, owned, residual_dropout_node};
use super::cpu::{dispatched, CpuBuild};
#[cfg(test)]
use super::dropout::times_mask;
use super::dropout::{draw_seed, dropout, fill_mask_portable};
use super::omp::parallel_ranges;
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

/// `x + dropout(a, p, train)` for `x` and `a` of one shape. Fused on the CPU when `x` is fp32
/// and `a` bf16 (a bf16 model's residual stream and branch), else libtorch's ops.
pub(crate) fn residual_dropout(x: &Tensor, a: &Tensor, p: f64, train: bool) -> Tensor {
    let fusable = train
        && p > 0.0
        && x.device() == Device::Cpu
        && a.device() == Device::Cpu
        && x.kind() == Kind::Float
        && a.kind() == Kind::BFloat16
        && x.size() == a.size()
        && x.numel() > 0;
    if !fusable {
        return x + dropout(a, p, train);
    }
    // The seed is drawn where `dropout` would draw it, so the generator's stream is unchanged.
    fused(x, a, p, draw_seed())
}

/// `x + dropout(a)` with the mask of (`p`, `seed`), fused: `x` fp32 and `a` bf16 on the CPU.
fn fused(x: &Tensor, a: &Tensor, p: f64, seed: u64) -> Tensor {
    let (x, a) = (x.contiguous(), a.contiguous());
    if x.requires_grad() || a.requires_grad() {
        residual_dropout_node(&x, &a, p, seed, forward_callback, backward_callback)
    } else {
        sum_with_mask(&x, &a, p, seed)
    }
}

/// Elements per stack buffer of mask values: even, so every buffer starts a draw pair.
const CHUNK: usize = 512;

/// `x + bf16(a · mask)`, fp32, for contiguous `x` (fp32) and `a` (bf16) of one shape.
fn sum_with_mask(x: &Tensor, a: &Tensor, p: f64, seed: u64) -> Tensor {
    let n = x.numel();
    let out = Tensor::empty(x.size(), (Kind::Float, Device::Cpu));
    let (xp, ap, op) = (x.data_ptr() as usize, a.data_ptr() as usize, out.data_ptr() as usize);
    let (scale, build) = (mask_scale(p), CpuBuild::best());
    parallel_ranges(n.div_ceil(2), &|pairs: std::ops::Range<usize>| {
        let (start, end) = (2 * pairs.start, (2 * pairs.end).min(n));
        // SAFETY: x and a are contiguous CPU tensors of n f32 / bf16 elements, out a fresh,
        // unshared one of n f32; threads get disjoint element ranges within them.
        let (x, a, out) = unsafe {
            (
                std::slice::from_raw_parts((xp as *const f32).add(start), end - start),
                std::slice::from_raw_parts((ap as *const u16).add(start), end - start),
                std::slice::from_raw_parts_mut((op as *mut f32).add(start), end - start),
            )
        };
        sum_part(build, x, a, out, start, p, seed, scale);
    });
    out
}

/// `bf16(bf16(g) · mask)`, for a contiguous fp32 gradient `g`: the branch's gradient.
fn branch_gradient(g: &Tensor, p: f64, seed: u64) -> Tensor {
    let n = g.numel();
    let out = Tensor::empty(g.size(), (Kind::BFloat16, Device::Cpu));
    let (gp, op) = (g.data_ptr() as usize, out.data_ptr() as usize);
    let (scale, build) = (mask_scale(p), CpuBuild::best());
    parallel_ranges(n.div_ceil(2), &|pairs: std::ops::Range<usize>| {
        let (start, end) = (2 * pairs.start, (2 * pairs.end).min(n));
        // SAFETY: g is a contiguous CPU tensor of n f32 elements, out a fresh, unshared one of
        // n bf16; threads get disjoint element ranges within them.
        let (g, out) = unsafe {
            (
                std::slice::from_raw_parts((gp as *const f32).add(start), end - start),
                std::slice::from_raw_parts_mut((op as *mut u16).add(start), end - start),
            )
        };
        gradient_part(build, g, out, start, p, seed, scale);
    });
    out
}

/// The kept elements' factor as the bf16 mask holds it (1/(1-p) rounded to bf16), in fp32.
fn mask_scale(p: f64) -> f32 {
    half::bf16::from_f64(1.0 / (1.0 - p)).to_f32()
}

/// Mask values of elements `first .. first + out.len()` (`first` even) into `out`: dropout's
/// portable loop, inlined, so it is compiled for the build of the loop that calls it.
#[inline(always)]
fn mask_chunk(out: &mut [f32], first: usize, p: f64, seed: u64, scale: f32) {
    fill_mask_portable(out, first / 2, p, seed, scale, 0.0);
}

#[inline(always)]
fn from_bf16(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// fp32 to bf16, rounded to nearest even as libtorch rounds (a NaN stays a NaN).
#[inline(always)]
fn to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    let rounded = (bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16) as u16;
    if v.is_nan() {
        0x7FC0 | (bits >> 16) as u16
    } else {
        rounded
    }
}

dispatched! {
    fn sum_part(x: &[f32], a: &[u16], out: &mut [f32], first: usize, p: f64, seed: u64, scale: f32) => sum_part_portable
}

/// `out = x + bf16(a · mask)`; element 0 of the slices is element `first` (even) of the whole.
#[inline(always)]
fn sum_part_portable(x: &[f32], a: &[u16], out: &mut [f32], first: usize, p: f64, seed: u64, scale: f32) {
    let mut mask = [0f32; CHUNK];
    for (c, ((x, a), out)) in x.chunks(CHUNK).zip(a.chunks(CHUNK)).zip(out.chunks_mut(CHUNK)).enumerate() {
        let mask = &mut mask[..x.len()];
        mask_chunk(mask, first + c * CHUNK, p, seed, scale);
        for (((o, &x), &a), &m) in out.iter_mut().zip(x).zip(a).zip(mask.iter()) {
            *o = x + from_bf16(to_bf16(from_bf16(a) * m));
        }
    }
}

dispatched! {
    fn gradient_part(g: &[f32], out: &mut [u16], first: usize, p: f64, seed: u64, scale: f32) => gradient_part_portable
}

/// `out = bf16(bf16(g) · mask)`; element 0 of the slices is element `first` (even) of the whole.
#[inline(always)]
fn gradient_part_portable(g: &[f32], out: &mut [u16], first: usize, p: f64, seed: u64, scale: f32) {
    let mut mask = [0f32; CHUNK];
    for (c, (g, out)) in g.chunks(CHUNK).zip(out.chunks_mut(CHUNK)).enumerate() {
        let mask = &mut mask[..g.len()];
        mask_chunk(mask, first + c * CHUNK, p, seed, scale);
        for ((o, &g), &m) in out.iter_mut().zip(g).zip(mask.iter()) {
            *o = to_bf16(from_bf16(to_bf16(g)) * m);
        }
    }
}

extern "C" fn forward_callback(x: *mut C_tensor, a: *mut C_tensor, p: f64, seed: u64) -> *mut C_tensor {
    // A panic must not unwind into C++: it prints its message and the C++ side throws.
    std::panic::catch_unwind(|| sum_with_mask(&borrowed(x), &borrowed(a), p, seed)).map_or(std::ptr::null_mut(), owned)
}

extern "C" fn backward_callback(g: *mut C_tensor, p: f64, seed: u64) -> *mut C_tensor {
    // As above.
    std::panic::catch_unwind(|| branch_gradient(&borrowed(g), p, seed)).map_or(std::ptr::null_mut(), owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_residual_dropout_equals_libtorchs_ops_bit_for_bit_in_value_and_gradients() {
        // Shapes: odd element counts (a last unpaired element), one under and several over a
        // thread's share and a chunk; values across bf16's range, infinities and a NaN. The
        // reference is `x + x_dropped` with dropout's own mask for the same seed (the global
        // generator cannot be pinned while other tests run in parallel).
        for (shape, p, seed) in [(vec![3i64, 5, 7], 0.1, 17u64), (vec![2, 49, 768], 0.1, 5), (vec![1, 1], 0.5, 1), (vec![4, 1031], 0.3, 99)]
        {
            let n: i64 = shape.iter().product();
            let gen = |k: u64| -> Vec<f32> {
                (0..n as u64)
                    .map(|i| {
                        let h = (i.wrapping_add(k)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
                        (h as f32 / (1u64 << 24) as f32 - 0.5) * 2f32.powi(((i * 7 + k) % 40) as i32 - 20)
                    })
                    .collect()
            };
            let mut av = gen(1);
            if n > 8 {
                av[3] = f32::INFINITY;
                av[5] = f32::NAN;
            }
            let x = Tensor::from_slice(&gen(2)).view(shape.as_slice());
            let a = Tensor::from_slice(&av).view(shape.as_slice()).to_kind(Kind::BFloat16);
            let upstream = Tensor::from_slice(&gen(3)).view(shape.as_slice()) * 1e3;

            let (x_ref, a_ref) = (x.detach().set_requires_grad(true), a.detach().set_requires_grad(true));
            let y_ref = &x_ref + times_mask(&a_ref, p, seed);
            let (xl, al) = (x.detach().set_requires_grad(true), a.detach().set_requires_grad(true));
            let y = fused(&xl, &al, p, seed);
            assert_eq!((y.kind(), y.size()), (Kind::Float, x.size()));
            // NaN == NaN for the comparison.
            let same = |u: &Tensor, v: &Tensor, what: &str| {
                let (u, v) = (u.to_kind(Kind::Float), v.to_kind(Kind::Float));
                let eq = u.eq_tensor(&v).logical_or(&u.isnan().logical_and(&v.isnan()));
                assert!(bool::try_from(eq.all()).unwrap_or(false), "{what} differs, shape {shape:?}, p {p}");
            };
            same(&y, &y_ref, "value");
            (&y * &upstream).sum(Kind::Float).backward();
            (&y_ref * &upstream).sum(Kind::Float).backward();
            same(&xl.grad(), &x_ref.grad(), "gradient of x");
            assert_eq!(al.grad().kind(), Kind::BFloat16);
            same(&al.grad(), &a_ref.grad(), "gradient of a");
            // Without autograd, the plain fused pass gives the same values; and only the branch
            // needing a gradient works too.
            same(&fused(&x, &a, p, seed), &y_ref, "value without autograd");
            let al = a.detach().set_requires_grad(true);
            (fused(&x, &al, p, seed) * &upstream).sum(Kind::Float).backward();
            same(&al.grad(), &a_ref.grad(), "gradient of a alone");
        }
    }

    #[test]
    fn every_cpu_build_of_the_fused_loops_gives_the_portable_bits() {
        let n = 3 * CHUNK + 37;
        let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let a: Vec<u16> = (0..n).map(|i| to_bf16((i as f32 * 0.11).cos() * 1e-2)).collect();
        let scale = mask_scale(0.1);
        let run = |build| {
            let (mut sum, mut grad) = (vec![0f32; n], vec![0u16; n]);
            sum_part(build, &x, &a, &mut sum, 4, 0.1, 9, scale);
            gradient_part(build, &x, &mut grad, 4, 0.1, 9, scale);
            (sum.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), grad)
        };
        let portable = run(CpuBuild::portable());
        // About a tenth of the elements are dropped (±0), the rest scaled.
        let dropped = portable.1.iter().filter(|&&g| g & 0x7FFF == 0).count();
        assert!((n / 14..n / 7).contains(&dropped), "{dropped} of {n} dropped");
        for build in CpuBuild::runnable() {
            assert!(run(build) == portable, "{build:?} differs from the portable build");
        }
    }

    #[test]
    fn rounding_to_bf16_is_libtorchs() {
        let values: Vec<f32> = (0..200_000u32)
            .map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761)))
            .chain([0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN_POSITIVE, 1.0 + f32::EPSILON])
            .collect();
        let ours: Vec<i16> = values.iter().map(|&v| to_bf16(v) as i16).collect();
        let theirs = Tensor::from_slice(&values).to_kind(Kind::BFloat16);
        let ours = Tensor::from_slice(&ours).view_dtype(Kind::BFloat16);
        let both_nan = ours.isnan().logical_and(&theirs.isnan());
        let eq = ours.eq_tensor(&theirs).logical_or(&both_nan);
        assert!(bool::try_from(eq.all()).unwrap_or(false));
    }

    #[test]
    fn other_dtypes_eval_and_no_dropout_fall_back_to_libtorchs_ops() {
        let x = Tensor::randn([4, 6], (Kind::Float, Device::Cpu));
        let a = Tensor::randn([4, 6], (Kind::Float, Device::Cpu));
        let ab = a.to_kind(Kind::BFloat16);
        assert!(residual_dropout(&x, &ab, 0.1, false).equal(&(&x + &ab)));
        assert!(residual_dropout(&x, &ab, 0.0, true).equal(&(&x + &ab)));
        // An fp32 branch: dropout's own (each element of the branch dropped or doubled).
        let dropped = residual_dropout(&x, &a, 0.5, true) - &x;
        let ratio = &dropped / &a;
        let exact = ratio.eq(0.0).logical_or(&(&dropped - &a * 2.0).abs().le(1e-6));
        assert!(bool::try_from(exact.all()).unwrap_or(false), "{ratio}");
    }
}
