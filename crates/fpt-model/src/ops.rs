//! Dropout, attention and GPT-2's GELU as the backbones use them.
//!
//! On the CPU, libtorch's dropout draws its mask one element at a time from a Mersenne twister
//! (its vectorised MKL path is taken on Intel CPUs only), which costs about a tenth of an FPT
//! train step; and its fused attention kernel has no dropout, so attention dropout falls back
//! to an unfused fp32 path anyway. Here the mask comes from a counter-based generator
//! (SplitMix64 of a seed and the element index; vectorised, ~0.2 ns per element per thread)
//! whose seed is drawn from libtorch's generator, so runs stay repeatable under
//! `tch::manual_seed` and need no state of their own. On CUDA libtorch's own kernels are used
//! (parallel RNG, fused attention with dropout).
//!
//! Our elementwise kernels run on libtorch's OpenMP team (`parallel_ranges`).
//!
//! GPT-2's tanh-GELU on bf16 CPU tensors is computed here too: libtorch evaluates tanh with a
//! 1-ulp fp32 routine twice (forward, and again in the backward pass), 7% of a bf16 FPT step;
//! [`gelu_tanh`] computes the value and the slope in one pass with a rational tanh accurate far
//! beyond bf16's 8 bits, and the backward pass is a multiplication by the saved slope.

use tch::{Device, Kind, Tensor};

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
        fill_mask_part(part, pairs.start, p, seed, scale, zero);
    });
}

/// Every feature the `*_avx512` builds below are compiled with.
#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512dq")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl")
}

/// Every feature the `*_avx2` builds below are compiled with.
#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

fn fill_mask_part<T: Copy>(part: &mut [T], first_pair: usize, p: f64, seed: u64, scale: T, zero: T) {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            // SAFETY: the features the function is compiled for were detected just above.
            return unsafe { fill_mask_avx512(part, first_pair, p, seed, scale, zero) };
        }
        if has_avx2() {
            // SAFETY: as above.
            return unsafe { fill_mask_avx2(part, first_pair, p, seed, scale, zero) };
        }
    }
    fill_mask_portable(part, first_pair, p, seed, scale, zero)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl")]
unsafe fn fill_mask_avx512<T: Copy>(part: &mut [T], first_pair: usize, p: f64, seed: u64, scale: T, zero: T) {
    fill_mask_portable(part, first_pair, p, seed, scale, zero)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fill_mask_avx2<T: Copy>(part: &mut [T], first_pair: usize, p: f64, seed: u64, scale: T, zero: T) {
    fill_mask_portable(part, first_pair, p, seed, scale, zero)
}

/// `part` starts at element `2 * first_pair` of the whole mask.
#[inline(always)]
fn fill_mask_portable<T: Copy>(part: &mut [T], first_pair: usize, p: f64, seed: u64, scale: T, zero: T) {
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

/// The fp32 mask of [`dropout`]: `numel` values, each `1 / (1 - p)` with probability `1 - p`,
/// else 0.
pub fn dropout_mask(numel: usize, p: f64, seed: u64) -> Vec<f32> {
    let mut mask = vec![0f32; numel];
    fill_mask(&mut mask, p, seed, (1.0 / (1.0 - p)) as f32, 0.0);
    mask
}

/// Inverted dropout: in training, zeroes each element with probability `p` and scales the rest
/// by `1 / (1 - p)`; otherwise (or with `p == 0`) returns `x` unchanged.
pub fn dropout(x: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p == 0.0 {
        return x.shallow_clone();
    }
    if x.device() != Device::Cpu {
        return x.dropout(p, true);
    }
    if x.numel() == 0 {
        return x.shallow_clone();
    }
    // One draw from libtorch's generator per call: re-seeding it re-seeds every mask.
    let seed = Tensor::randint(i64::MAX, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]) as u64;
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

/// Runs `body(range)` over `0..n` split across libtorch's own OpenMP threads (the team its
/// kernels use, found with `dlsym`), so our elementwise kernels are parallel like libtorch's
/// and do not compete with a second thread pool. Serial where no OpenMP runtime is loaded or
/// `n` is small.
fn parallel_ranges(n: usize, body: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
    const MIN_PER_THREAD: usize = 32_768;
    let threads = (tch::get_num_threads().max(1) as usize).min(n / MIN_PER_THREAD).max(1);
    #[cfg(target_os = "linux")]
    let runtime = (threads > 1).then(omp::runtime).flatten();
    #[cfg(not(target_os = "linux"))]
    let runtime: Option<&omp::Runtime> = None;
    match runtime {
        Some(rt) => rt.run(threads, n, body),
        None => body(0..n),
    }
}

mod omp {
    use std::ffi::{c_char, c_int, c_uint, c_void};
    use std::sync::OnceLock;

    type GompParallel = unsafe extern "C" fn(unsafe extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);
    type OmpInt = unsafe extern "C" fn() -> c_int;

    extern "C" {
        fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    }

    pub struct Runtime {
        parallel: GompParallel,
        thread_num: OmpInt,
        num_threads: OmpInt,
    }

    struct Job<'a> {
        n: usize,
        body: &'a (dyn Fn(std::ops::Range<usize>) + Sync),
        thread_num: OmpInt,
        num_threads: OmpInt,
    }

    unsafe extern "C" fn trampoline(data: *mut c_void) {
        // SAFETY: `data` is the `Job` that `run` passes and keeps alive until GOMP_parallel
        // returns (it returns after every thread of the team has finished).
        let job = unsafe { &*(data as *const Job) };
        let (id, team) = unsafe { ((job.thread_num)() as usize, (job.num_threads)().max(1) as usize) };
        let (chunk, rest) = (job.n / team, job.n % team);
        let start = id * chunk + id.min(rest);
        let end = start + chunk + usize::from(id < rest);
        // A panic must not unwind into C; the bodies here index within their range only.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (job.body)(start..end))).is_err() {
            std::process::abort();
        }
    }

    impl Runtime {
        pub fn run(&self, threads: usize, n: usize, body: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
            let job = Job { n, body, thread_num: self.thread_num, num_threads: self.num_threads };
            // SAFETY: the symbols are libgomp's (or a compatible runtime's) entry points with
            // these signatures; `job` outlives the call.
            unsafe { (self.parallel)(trampoline, &job as *const Job as *mut c_void, threads as c_uint, 0) };
        }
    }

    /// libgomp's entry points, looked up once in the process's global scope (libtorch brings
    /// its own libgomp); `None` if they are not there. Linux only (RTLD_DEFAULT is null there).
    #[cfg(target_os = "linux")]
    pub fn runtime() -> Option<&'static Runtime> {
        static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();
        RUNTIME
            .get_or_init(|| {
                let find = |name: &[u8]| {
                    // SAFETY: RTLD_DEFAULT (null) and a NUL-terminated name.
                    let p = unsafe { dlsym(std::ptr::null_mut(), name.as_ptr() as *const c_char) };
                    (!p.is_null()).then_some(p)
                };
                let (parallel, thread_num, num_threads) =
                    (find(b"GOMP_parallel\0")?, find(b"omp_get_thread_num\0")?, find(b"omp_get_num_threads\0")?);
                // SAFETY: the documented C signatures of these libgomp symbols.
                unsafe {
                    Some(Runtime {
                        parallel: std::mem::transmute::<*mut c_void, GompParallel>(parallel),
                        thread_num: std::mem::transmute::<*mut c_void, OmpInt>(thread_num),
                        num_threads: std::mem::transmute::<*mut c_void, OmpInt>(num_threads),
                    })
                }
            })
            .as_ref()
    }
}

/// GPT-2's GELU, `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
///
/// On bf16 CPU tensors the value and, when `x` needs a gradient, the slope come from one pass of
/// our own kernel (`gelu_tanh_fill`): values equal libtorch's `gelu(x, "tanh")` to within one bf16
/// unit in the last place, and so do gradients (the slope is rounded to bf16 once before it
/// multiplies the incoming gradient). The gradient reaches `x` through
/// `y + (x - x.detach()) * slope`, whose value is exactly `y` and whose derivative is exactly
/// the slope: tch has no custom autograd functions. Elsewhere (fp32, CUDA) it is libtorch's
/// kernel.
pub fn gelu_tanh(x: &Tensor) -> Tensor {
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
    parallel_ranges(n, &|r: std::ops::Range<usize>| unsafe {
        // SAFETY: as above; threads get disjoint ranges within the n elements.
        let input = std::slice::from_raw_parts((input as *const u16).add(r.start), r.len());
        let value = std::slice::from_raw_parts_mut((value as *mut u16).add(r.start), r.len());
        let slope = slope_ptr.map(|s| std::slice::from_raw_parts_mut((s as *mut u16).add(r.start), r.len()));
        gelu_tanh_fill(input, value, slope);
    });
    let y = y.view(x.size().as_slice());
    match slope {
        None => y,
        Some(slope) => y.addcmul(&(&x - x.detach()), &slope.view(x.size().as_slice())),
    }
}

/// `value[i]` = GELU(`input[i]`) and `slope[i]` = its derivative, bf16 in and out (as bits),
/// fp32 inside. Dispatches to an AVX-512 build of the same loop where the CPU has it.
fn gelu_tanh_fill(input: &[u16], value: &mut [u16], slope: Option<&mut [u16]>) {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            // SAFETY: the features the function is compiled for were detected just above.
            return unsafe { gelu_tanh_fill_avx512(input, value, slope) };
        }
        if has_avx2() {
            // SAFETY: as above.
            return unsafe { gelu_tanh_fill_avx2(input, value, slope) };
        }
    }
    gelu_tanh_fill_portable(input, value, slope)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl")]
unsafe fn gelu_tanh_fill_avx512(input: &[u16], value: &mut [u16], slope: Option<&mut [u16]>) {
    gelu_tanh_fill_portable(input, value, slope)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_tanh_fill_avx2(input: &[u16], value: &mut [u16], slope: Option<&mut [u16]>) {
    gelu_tanh_fill_portable(input, value, slope)
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
        if x.is_nan() { 0x7FC0 } else { rounded }
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

/// Scaled-dot-product attention of `q` `[B, H, Tq, D]` over `k`, `v` `[B, H, Tk, D]`.
/// `causal`: query i sees keys 0..=i (Tq == Tk). `allowed`: a boolean mask, true where a query
/// may attend, `[Tq, Tk]` or per example `[B, 1, Tq or 1, Tk]` (a key-padding mask); every query
/// must be allowed at least one key. Dropout `p` acts on the probabilities in training.
///
/// Without dropout (evaluation, or p = 0) and on CUDA this is libtorch's fused kernel. With
/// dropout on the CPU it is written out: scores in the inputs' dtype (bf16 products of bf16
/// inputs in bf16 mode, accumulated in fp32 by the GEMM), softmax in fp32, then the
/// probabilities in `v`'s dtype dropped with [`dropout`] and multiplied with `v`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, allowed: Option<&Tensor>, causal: bool, p: f64, train: bool) -> Tensor {
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
        #[cfg(target_arch = "x86_64")]
        for (build, runs) in [("avx512", has_avx512()), ("avx2", has_avx2())] {
            if !runs {
                continue;
            }
            let (mut built, mut portable) = (vec![0i16; 1001], vec![0i16; 1001]);
            // SAFETY: the build's features were detected just above.
            unsafe {
                match build {
                    "avx512" => fill_mask_avx512(&mut built, 3, 0.1, 99, 1, 0),
                    _ => fill_mask_avx2(&mut built, 3, 0.1, 99, 1, 0),
                }
            }
            fill_mask_portable(&mut portable, 3, 0.1, 99, 1, 0);
            assert_eq!(built, portable, "{build}");
        }
        // The masks themselves are pinned (values of the scalar code before vectorising): the
        // regression expectations depend on them.
        let mut mask = vec![0i16; 16];
        fill_mask(&mut mask, 0.5, 1, 1, 0);
        assert_eq!(mask, [1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 0]);
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
        let xb = x.detach().to_kind(Kind::BFloat16);
        let bf = dropout(&xb, 0.5, true);
        assert_eq!(bf.kind(), Kind::BFloat16);
        // Each element is dropped (0) or doubled, exactly.
        let ratio = (bf.to_kind(Kind::Float) / xb.to_kind(Kind::Float)).flatten(0, -1);
        assert!(ratio.eq(0.0).logical_or(&ratio.eq(2.0)).all().int64_value(&[]) == 1, "{ratio}");
    }

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
        let allowed = Tensor::arange(16, (Kind::Int64, Device::Cpu)).unsqueeze(0).le_tensor(&Tensor::from_slice(&[3i64, 9, 15]).unsqueeze(1));
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
        let grid: Vec<f32> = (0..=u16::MAX)
            .map(|b| f32::from_bits((b as u32) << 16))
            .filter(|x| x.abs() <= 12.0)
            .collect();
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
        let upstream = Tensor::randn(ours.size().as_slice(), (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        (&ours * &upstream).sum(Kind::Float).backward();
        (&reference * &upstream).sum(Kind::Float).backward();
        // The slope is rounded once and then multiplied: up to two bf16 steps.
        let (g, g_ref) = (ours_leaf.grad(), ref_leaf.grad());
        assert_eq!(g.kind(), Kind::BFloat16);
        let (a, b) = (g.to_kind(Kind::Float), g_ref.to_kind(Kind::Float));
        let excess = ((&a - &b).abs() - b.abs() * 2.0f64.powi(-7) - 1e-5).max().double_value(&[]);
        assert!(excess <= 0.0, "gradients: off by {excess} beyond two bf16 steps");
        // Every build of the kernel this CPU can run gives the same bits.
        #[cfg(target_arch = "x86_64")]
        {
            let bits: Vec<u16> = grid.iter().map(|x| (x.to_bits() >> 16) as u16).collect();
            let run = |build: &str| {
                let (mut value, mut slope) = (vec![0u16; bits.len()], vec![0u16; bits.len()]);
                // SAFETY: each build runs only where its features were detected (below).
                unsafe {
                    match build {
                        "avx512" => gelu_tanh_fill_avx512(&bits, &mut value, Some(&mut slope)),
                        "avx2" => gelu_tanh_fill_avx2(&bits, &mut value, Some(&mut slope)),
                        _ => gelu_tanh_fill_portable(&bits, &mut value, Some(&mut slope)),
                    }
                }
                (value, slope)
            };
            let portable = run("portable");
            for (build, runs) in [("avx512", has_avx512()), ("avx2", has_avx2())] {
                if runs {
                    assert!(run(build) == portable, "{build} differs from the portable build");
                }
            }
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

    #[test]
    fn parallel_ranges_run_on_libtorchs_openmp_team_and_partition_the_range() {
        // libtorch's Linux builds bring libgomp: without it our kernels would run serially.
        #[cfg(target_os = "linux")]
        assert!(omp::runtime().is_some(), "GOMP_parallel not found in the process");
        let n = 1_000_003;
        let seen = std::sync::Mutex::new(Vec::new());
        parallel_ranges(n, &|r| seen.lock().unwrap().push((r, std::thread::current().id())));
        let mut seen = seen.into_inner().unwrap();
        seen.sort_by_key(|(r, _)| r.start);
        let mut next = 0;
        for (r, _) in &seen {
            assert_eq!(r.start, next, "{seen:?}");
            next = r.end;
        }
        assert_eq!(next, n);
        if tch::get_num_threads() > 1 && cfg!(target_os = "linux") {
            assert!(seen.len() > 1 && seen[0].1 != seen[1].1, "not split across threads: {seen:?}");
        }
        // Small jobs stay on the calling thread.
        let calls = std::sync::atomic::AtomicUsize::new(0);
        parallel_ranges(1000, &|r| {
            assert_eq!(r, 0..1000);
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        assert_eq!(calls.into_inner(), 1);
    }
}
