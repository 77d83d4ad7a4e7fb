//! GPT-2's tanh-GELU on bf16 CPU tensors: libtorch evaluates tanh with a 1-ulp fp32 routine
//! twice (forward, and again in the backward pass), 7% of a bf16 FPT step; [`gelu_tanh`]
//! computes the value and the slope in one pass with a rational tanh accurate far beyond bf16's
//! 8 bits, and the backward pass is a multiplication by the saved slope.

use super::autograd::slope_node;
use super::cpu::{dispatched, CpuBuild};
use super::omp::parallel_ranges;
use tch::{Device, Kind, Tensor};

/// GPT-2's GELU, `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
///
/// On bf16 CPU tensors the value and, when `x` needs a gradient, the slope come from one pass of
/// our own kernel (`gelu_tanh_fill`): values equal libtorch's `gelu(x, "tanh")` to within one bf16
/// unit in the last place, and so do gradients (the slope is rounded to bf16 once before it
/// multiplies the incoming gradient). The gradient reaches `x` through a node that returns `y`
/// and multiplies the incoming gradient by the saved slope (`autograd.cpp`'s `FptSlope`; an
/// earlier `y + (x - x.detach()) * slope` cost two more passes forward and one backward).
/// Elsewhere (fp32, CUDA) it is libtorch's kernel.
pub(crate) fn gelu_tanh(x: &Tensor) -> Tensor {
    if x.device() != Device::Cpu || x.kind() != Kind::BFloat16 || x.numel() == 0 {
        return x.gelu("tanh");
    }
    let x = x.contiguous();
    let n = x.numel();
    let y = Tensor::empty([n as i64], (Kind::BFloat16, Device::Cpu));
    let slope = x.requires_grad().then(|| Tensor::empty([n as i64], (Kind::BFloat16, Device::Cpu)));
    // SAFETY: x is a contiguous CPU tensor of n bf16 elements; y and slope are fresh, contiguous
    // and unshared, n elements each. bf16 bit patterns are read and written as u16.
    let (input, value) = (x.data_ptr() as usize, y.data_ptr() as usize);
    let slope_ptr = slope.as_ref().map(|s| s.data_ptr() as usize);
    let build = CpuBuild::best();
    parallel_ranges(n, &|r: std::ops::Range<usize>| unsafe {
        // SAFETY: as above; threads get disjoint ranges within the n elements.
        let input = std::slice::from_raw_parts((input as *const u16).add(r.start), r.len());
        let value = std::slice::from_raw_parts_mut((value as *mut u16).add(r.start), r.len());
        let slope = slope_ptr.map(|s| std::slice::from_raw_parts_mut((s as *mut u16).add(r.start), r.len()));
        gelu_tanh_fill(build, input, value, slope);
    });
    let y = y.view(x.size().as_slice());
    match slope {
        None => y,
        Some(slope) => slope_node(&x, &y, &slope.view(x.size().as_slice())),
    }
}

dispatched! {
    /// `value[i]` = GELU(`input[i]`) and `slope[i]` = its derivative, bf16 in and out (as
    /// bits), fp32 inside, as `build` compiles [`gelu_tanh_fill_portable`].
    fn gelu_tanh_fill(input: &[u16], value: &mut [u16], slope: Option<&mut [u16]>) => gelu_tanh_fill_portable
}

#[inline(always)]
fn gelu_tanh_fill_portable(input: &[u16], value: &mut [u16], slope: Option<&mut [u16]>) {
    const K0: f32 = 0.797_884_6; // sqrt(2 / pi)
    const K1: f32 = 0.044_715;
    let bf16_to_f32 = |b: u16| f32::from_bits((b as u32) << 16);
    // Round to nearest even, as libtorch's conversion; NaN is kept a (quiet) NaN, which rounding
    // its bits could turn into an infinity or -0.
    let f32_to_bf16 = |x: f32| {
        let bits = x.to_bits();
        let rounded = (bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16) as u16;
        if x.is_nan() {
            0x7FC0
        } else {
            rounded
        }
    };
    // One expression for both loops, so values do not depend on the slope's presence (the
    // value-only loop drops the slope's arithmetic after inlining).
    let gelu_and_slope = |x: u16| {
        let x = bf16_to_f32(x);
        let x2 = x * x;
        let t = tanh_rational(K0 * (x + K1 * x2 * x));
        // Beyond |x| = 20 the slope's second term is below fp32's resolution of the first;
        // clamping there keeps it finite (0 · inf) for huge inputs, where libtorch's slope is
        // NaN, so the value stays exact through `y + 0 · slope`.
        let xc = x.clamp(-20.0, 20.0);
        let slope = 0.5 * (1.0 + t) + 0.5 * xc * (1.0 - t * t) * K0 * (1.0 + 3.0 * K1 * xc * xc);
        (f32_to_bf16(0.5 * x * (1.0 + t)), slope)
    };
    match slope {
        None => {
            for (x, y) in input.iter().zip(value.iter_mut()) {
                *y = gelu_and_slope(*x).0;
            }
        }
        Some(slope) => {
            for ((x, y), dy) in input.iter().zip(value.iter_mut()).zip(slope.iter_mut()) {
                let (v, d) = gelu_and_slope(*x);
                *y = v;
                *dy = f32_to_bf16(d);
            }
        }
    }
}

/// tanh as a 13/6 rational function on [-7.9053, 7.9053] (Eigen's `generic_fast_tanh_float`),
/// within a few fp32 ulps; outside, tanh is ±1 to fp32 precision. Branch-free, so it vectorises.
#[inline(always)]
fn tanh_rational(x: f32) -> f32 {
    let x = x.clamp(-7.905_311, 7.905_311);
    let x2 = x * x;
    let p = ((((((-2.760_768_5e-16_f32 * x2 + 2.000_187_9e-13) * x2 - 8.604_671_5e-11) * x2 + 5.122_297e-8) * x2 + 1.485_722_4e-5) * x2
        + 6.372_619_3e-4)
        * x2
        + 4.893_524_6e-3)
        * x;
    let q = ((1.198_258_4e-6_f32 * x2 + 1.185_347_1e-4) * x2 + 2.268_434_6e-3) * x2 + 4.893_525_2e-3;
    p / q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rational_tanh_is_within_fp32_rounding_of_tanh() {
        let worst = (-200_000..=200_000)
            .map(|i| i as f32 * 1e-4)
            .chain([-1e30, -50.0, 50.0, 1e30, 0.0, -0.0, 1e-20])
            .map(|x| (tanh_rational(x) as f64 - (x as f64).tanh()).abs())
            .fold(0.0, f64::max);
        assert!(worst < 5e-7, "{worst}");
    }

    #[test]
    fn bf16_gelu_matches_libtorch_values_and_gradients_within_one_bf16_step() {
        // Every bf16 value in [-12, 12] (all exponents, all mantissas), plus huge finite ones
        // (values only: libtorch's slope there is NaN).
        let grid: Vec<f32> = (0..=u16::MAX).map(|b| f32::from_bits((b as u32) << 16)).filter(|x| x.abs() <= 12.0).collect();
        let x = Tensor::from_slice(&grid).to_kind(Kind::BFloat16);
        let (ours_leaf, ref_leaf) = (x.detach().set_requires_grad(true), x.detach().set_requires_grad(true));
        let ours = gelu_tanh(&ours_leaf);
        let reference = ref_leaf.gelu("tanh");
        assert_eq!((ours.kind(), ours.size()), (Kind::BFloat16, reference.size()));
        let close = |a: &Tensor, b: &Tensor, what: &str| {
            let (a, b) = (a.to_kind(Kind::Float), b.to_kind(Kind::Float));
            // One bf16 step is 2^-8 relative; tiny values (deep in the negative tail, where
            // 1 + tanh cancels in fp32 for both) get an absolute 1e-5.
            let excess = ((&a - &b).abs() - b.abs() * (2.0f64.powi(-8) + 1e-6) - 1e-5).max().double_value(&[]);
            assert!(excess <= 0.0, "{what}: off by {excess} beyond one bf16 step");
        };
        close(&ours, &reference, "values");
        // A fixed upstream gradient in [-4, 4) (not the global generator, which tests running in
        // parallel reseed), every magnitude and sign.
        let upstream: Vec<f32> =
            (0..grid.len() as u64).map(|i| ((i.wrapping_mul(2_654_435_761) % 65_536) as f32 / 65_536.0) * 8.0 - 4.0).collect();
        let upstream = Tensor::from_slice(&upstream).to_kind(Kind::BFloat16);
        (&ours * &upstream).sum(Kind::Float).backward();
        (&reference * &upstream).sum(Kind::Float).backward();
        // The slope is rounded once and then multiplied: up to two bf16 steps. Where the slope is
        // tiny (the negative tail, the zero of GELU' near x = -0.75) both sides' fp32 slopes carry
        // an absolute error, which the upstream gradient scales: the floor is 1e-5 * |upstream|.
        let (g, g_ref) = (ours_leaf.grad(), ref_leaf.grad());
        assert_eq!(g.kind(), Kind::BFloat16);
        let (a, b) = (g.to_kind(Kind::Float), g_ref.to_kind(Kind::Float));
        let floor = upstream.to_kind(Kind::Float).abs() * 1e-5;
        let excess = ((&a - &b).abs() - b.abs() * 2.0f64.powi(-7) - floor).max().double_value(&[]);
        assert!(excess <= 0.0, "gradients: off by {excess} beyond two bf16 steps");
        // The gradient is the upstream gradient times the kernel's own bf16 slope, and nothing
        // else: bit for bit, on a 3-D input as the blocks give it.
        let bits: Vec<u16> = grid.iter().map(|x| (x.to_bits() >> 16) as u16).collect();
        let (mut value, mut slope) = (vec![0u16; bits.len()], vec![0u16; bits.len()]);
        gelu_tanh_fill(CpuBuild::best(), &bits, &mut value, Some(&mut slope));
        let slope: Vec<i16> = slope.iter().map(|&b| b as i16).collect();
        let slope = Tensor::from_slice(&slope).view_dtype(Kind::BFloat16);
        assert!(g.equal(&(&upstream * &slope)), "the gradient is not upstream · slope");
        let n = grid.len() as i64;
        let leaf3 = x.narrow(0, 0, n - n % 6).view([2, 3, -1]).detach().set_requires_grad(true);
        let up3 = upstream.narrow(0, 0, n - n % 6).view([2, 3, -1]);
        let y3 = gelu_tanh(&leaf3);
        assert_eq!(y3.size(), leaf3.size());
        (&y3 * &up3).sum(Kind::Float).backward();
        assert!(leaf3.grad().equal(&(&up3 * slope.narrow(0, 0, n - n % 6).view([2, 3, -1]))), "3-D gradient");
        // Every build of the kernel this CPU can run gives the same bits.
        let bits: Vec<u16> = grid.iter().map(|x| (x.to_bits() >> 16) as u16).collect();
        let run = |build| {
            let (mut value, mut slope) = (vec![0u16; bits.len()], vec![0u16; bits.len()]);
            gelu_tanh_fill(build, &bits, &mut value, Some(&mut slope));
            (value, slope)
        };
        let portable = run(CpuBuild::portable());
        for build in CpuBuild::runnable() {
            assert!(run(build) == portable, "{build:?} differs from the portable build");
        }
        // Without a gradient no slope is built; fp32 is libtorch's own kernel.
        let plain = gelu_tanh(&x);
        assert!(!plain.requires_grad());
        let (pf, of) = (plain.to_kind(Kind::Float), ours.detach().to_kind(Kind::Float));
        assert!(pf.equal(&of), "with and without the slope, the values differ");
        let xf = x.to_kind(Kind::Float);
        assert!(gelu_tanh(&xf).equal(&xf.gelu("tanh")));
        let huge = Tensor::from_slice(&[-3e38f32, -1e4, 1e4, 3e38]).to_kind(Kind::BFloat16).set_requires_grad(true);
        close(&gelu_tanh(&huge), &huge.gelu("tanh"), "values at huge inputs");
    }
}
