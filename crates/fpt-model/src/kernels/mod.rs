//! The compute kernels the backbones call: dropout, GPT-2's tanh-GELU, scaled-dot-product
//! attention, and the OpenMP binding they run on. Crate-private: the backbones reach them
//! through [`dropout`], [`residual_dropout`], [`gelu_tanh`], [`attention`], [`FrozenLinear`] and
//! [`PackOnUse`] only.
//!
//! On CUDA each of them is libtorch's own kernel (parallel RNG, fused attention with dropout).
//! On the CPU:
//! - [`dropout`] draws its mask from a counter-based generator seeded from libtorch's (so
//!   `tch::manual_seed` still fixes it), vectorised and spread over libtorch's threads
//!   (`dropout.rs`);
//! - [`residual_dropout`] adds a dropped-out bf16 branch onto the fp32 residual stream in one
//!   pass each way, drawing the mask again in the backward pass (`residual.rs`);
//! - [`gelu_tanh`] computes bf16 GELU values and slopes in one pass (`gelu.rs`);
//! - [`attention`] writes attention out where dropout is on, since the fused CPU kernel has no
//!   dropout (`attention.rs`);
//! - [`PackOnUse`] runs frozen bf16 linear layers of short inputs on weights packed once for
//!   oneDNN (`packed.rs`);
//! - `omp.rs` runs a closure over index ranges on libtorch's OpenMP team.
//!
//! # Unsafe code
//!
//! Every `unsafe` block of the crate's computation lives in this folder (the other two, in
//! `checkpoint.rs`, map safetensors files read-only). There are four kinds, each with its
//! reasoning at the block:
//! 1. **Runtime CPU-feature dispatch** (`cpu.rs`, used by `dropout.rs`, `gelu.rs`,
//!    `residual.rs`): the AVX-512 and AVX2 builds of a loop are `#[target_feature]` functions
//!    that `dispatched!` writes, called only with a `CpuBuild` made after detecting every
//!    feature they are compiled with. Each build is the portable loop inlined, and tests check
//!    that every build the CPU can run gives the portable bits.
//! 2. **Writing into a fresh tensor's storage** (`dropout.rs`, `gelu.rs`, `residual.rs`): a tensor just
//!    allocated with `Tensor::empty` (contiguous, CPU, unshared, `n` elements of the element
//!    size) is viewed as a slice of `n` bit patterns (`i16`/`u16` for bf16, `f32`).
//! 3. **Disjoint parallel slices** (`dropout.rs`, `gelu.rs`, `residual.rs`): each thread of
//!    `omp::parallel_ranges` gets a range no other thread gets, within the buffer, and
//!    rebuilds its slice from a base address.
//! 4. **The libgomp binding** (`omp.rs`): symbols looked up with `dlsym(RTLD_DEFAULT, …)` and
//!    transmuted to their documented C signatures; the job passed through `GOMP_parallel`
//!    outlives the call (it returns after the whole team has finished), and a panic in a body
//!    aborts instead of unwinding into C.

mod attention;
mod autograd;
mod cpu;
mod dropout;
mod gelu;
mod linear;
mod omp;
mod packed;
mod residual;

pub(crate) use attention::attention;
pub(crate) use dropout::dropout;
pub(crate) use gelu::gelu_tanh;
pub(crate) use linear::FrozenLinear;
#[cfg(test)]
pub(crate) use packed::packing_expected;
pub(crate) use packed::PackOnUse;
pub(crate) use residual::residual_dropout;
