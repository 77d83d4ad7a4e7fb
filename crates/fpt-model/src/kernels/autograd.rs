//! The Rust side of `autograd.cpp`, the C++ autograd nodes whose backward passes call back
//! into Rust (tch cannot define a backward pass): attention with dropout, dropout, and the
//! residual add of a dropped-out branch; and, computed
//! in C++, the frozen linear layers (the LSTM's, and the packed bf16 ones) and an elementwise
//! function whose slope was computed with its value (the GELU).
//!
//! Tensors cross as tch's handles (`*mut C_tensor`, a heap `torch::Tensor`): a callback borrows
//! the handles it is given and returns handles the C++ side then owns and frees. A callback
//! never unwinds into C++: a panic prints its message and the callback returns null (or false),
//! on which the C++ side throws, and the error reaches the caller of `backward()`.

use std::ffi::{c_char, CStr};
use std::mem::ManuallyDrop;
use tch::Tensor;
use torch_sys::C_tensor;

/// (q, k, v, allowed or null, p, seed, causal) → an owned output, or null on failure.
pub(super) type AttentionForward =
    extern "C" fn(*mut C_tensor, *mut C_tensor, *mut C_tensor, *mut C_tensor, f64, u64, bool) -> *mut C_tensor;

/// (q, k, v, allowed or null, grad_out, p, seed, causal, dq, dk, dv slots) → false on failure.
pub(super) type AttentionBackward = extern "C" fn(
    *mut C_tensor,
    *mut C_tensor,
    *mut C_tensor,
    *mut C_tensor,
    *mut C_tensor,
    f64,
    u64,
    bool,
    *mut *mut C_tensor,
    *mut *mut C_tensor,
    *mut *mut C_tensor,
) -> bool;

/// (x, p, seed) → x times the dropout mask of (p, seed), owned; null on failure. Also the
/// residual dropout's backward pass: (grad, p, seed) → the branch's gradient.
pub(super) type MaskMultiply = extern "C" fn(*mut C_tensor, f64, u64) -> *mut C_tensor;

/// (x, a, p, seed) → x + a times the dropout mask of (p, seed), owned; null on failure.
pub(super) type ResidualForward = extern "C" fn(*mut C_tensor, *mut C_tensor, f64, u64) -> *mut C_tensor;

extern "C" {
    fn fpt_attention_apply(
        q: *mut C_tensor,
        k: *mut C_tensor,
        v: *mut C_tensor,
        allowed: *mut C_tensor,
        p: f64,
        seed: u64,
        causal: bool,
        forward: AttentionForward,
        backward: AttentionBackward,
        error: *mut *const c_char,
    ) -> *mut C_tensor;

    fn fpt_frozen_linear_apply(
        x: *mut C_tensor,
        weight: *mut C_tensor,
        weight_t: *mut C_tensor,
        bias: *mut C_tensor,
        error: *mut *const c_char,
    ) -> *mut C_tensor;

    fn fpt_mkldnn_pack(weight: *mut C_tensor, error: *mut *const c_char) -> *mut C_tensor;

    fn fpt_packed_linear_apply(
        x: *mut C_tensor,
        packed: *mut C_tensor,
        packed_t: *mut C_tensor,
        bias: *mut C_tensor,
        error: *mut *const c_char,
    ) -> *mut C_tensor;

    fn fpt_dropout_apply(x: *mut C_tensor, p: f64, seed: u64, mask: MaskMultiply, error: *mut *const c_char) -> *mut C_tensor;

    fn fpt_residual_dropout_apply(
        x: *mut C_tensor,
        a: *mut C_tensor,
        p: f64,
        seed: u64,
        forward: ResidualForward,
        backward: MaskMultiply,
        error: *mut *const c_char,
    ) -> *mut C_tensor;

    fn fpt_slope_apply(x: *mut C_tensor, y: *mut C_tensor, slope: *mut C_tensor, error: *mut *const c_char) -> *mut C_tensor;
}

/// A tensor the C++ side lends for the duration of a callback (never freed here).
pub(super) fn borrowed(handle: *mut C_tensor) -> ManuallyDrop<Tensor> {
    // SAFETY: a live torch::Tensor owned by the caller, which outlives the callback.
    ManuallyDrop::new(unsafe { Tensor::from_ptr(handle) })
}

/// Hands `t` to the C++ side, which frees it.
pub(super) fn owned(mut t: Tensor) -> *mut C_tensor {
    let handle = t.as_mut_ptr();
    std::mem::forget(t);
    handle
}

/// A handle to pass: the C++ side only reads it (it copies the torch::Tensor, a new reference).
fn lent(t: &Tensor) -> *mut C_tensor {
    t.as_ptr() as *mut C_tensor
}

/// The node's output, or a panic with the C++ side's message (the callbacks panic only on
/// internal errors: shapes and dtypes are the backbones' own).
fn output(out: *mut C_tensor, error: *const c_char, node: &str) -> Tensor {
    if out.is_null() {
        // SAFETY: on failure `error` is a NUL-terminated message owned by the C++ side.
        let message = if error.is_null() { "unknown error".into() } else { unsafe { CStr::from_ptr(error) }.to_string_lossy() };
        panic!("{node} failed: {message}");
    }
    // SAFETY: an owned handle, returned once.
    unsafe { Tensor::from_ptr(out) }
}

/// Applies the attention node (see `attention.rs`).
#[allow(clippy::too_many_arguments)]
pub(super) fn attention_node(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    allowed: Option<&Tensor>,
    p: f64,
    seed: u64,
    causal: bool,
    forward: AttentionForward,
    backward: AttentionBackward,
) -> Tensor {
    let mut error: *const c_char = std::ptr::null();
    let allowed = allowed.map_or(std::ptr::null_mut(), lent);
    // SAFETY: live handles the C++ side only reads; callbacks of the declared signatures; it
    // returns an owned handle or null with `error` set.
    let out = unsafe { fpt_attention_apply(lent(q), lent(k), lent(v), allowed, p, seed, causal, forward, backward, &mut error) };
    output(out, error, "attention with dropout")
}

/// Applies the dropout node (see `dropout.rs`).
pub(super) fn dropout_node(x: &Tensor, p: f64, seed: u64, mask: MaskMultiply) -> Tensor {
    let mut error: *const c_char = std::ptr::null();
    // SAFETY: as in `attention_node`.
    let out = unsafe { fpt_dropout_apply(lent(x), p, seed, mask, &mut error) };
    output(out, error, "dropout")
}

/// Applies the residual-dropout node (see `residual.rs`).
pub(super) fn residual_dropout_node(x: &Tensor, a: &Tensor, p: f64, seed: u64, forward: ResidualForward, backward: MaskMultiply) -> Tensor {
    let mut error: *const c_char = std::ptr::null();
    // SAFETY: as in `attention_node`.
    let out = unsafe { fpt_residual_dropout_apply(lent(x), lent(a), p, seed, forward, backward, &mut error) };
    output(out, error, "residual dropout")
}

/// `y` (= f(`x`), elementwise) as the output of a node whose gradient is grad · `slope`
/// (f'(x), shaped like x): see `gelu.rs`.
pub(super) fn slope_node(x: &Tensor, y: &Tensor, slope: &Tensor) -> Tensor {
    let mut error: *const c_char = std::ptr::null();
    // SAFETY: as in `attention_node` (this node computes in C++, no callbacks).
    let out = unsafe { fpt_slope_apply(lent(x), lent(y), lent(slope), &mut error) };
    output(out, error, "elementwise slope")
}

/// Applies the frozen-linear node (see `linear.rs`).
pub(super) fn frozen_linear_node(x: &Tensor, weight: &Tensor, weight_t: &Tensor, bias: &Tensor) -> Tensor {
    let mut error: *const c_char = std::ptr::null();
    // SAFETY: as in `attention_node` (this node computes in C++, no callbacks).
    let out = unsafe { fpt_frozen_linear_apply(lent(x), lent(weight), lent(weight_t), lent(bias), &mut error) };
    output(out, error, "frozen linear")
}

/// `weight` `[out, in]` in oneDNN's blocked layout for [`packed_linear_node`], or the C++
/// side's message where oneDNN cannot pack it.
pub(super) fn mkldnn_pack(weight: &Tensor) -> Result<Tensor, String> {
    let mut error: *const c_char = std::ptr::null();
    // SAFETY: a live handle the C++ side only reads; it returns an owned handle or null with
    // `error` set.
    let out = unsafe { fpt_mkldnn_pack(lent(weight), &mut error) };
    if out.is_null() {
        // SAFETY: on failure `error` is a NUL-terminated message owned by the C++ side.
        return Err(if error.is_null() { "unknown error".into() } else { unsafe { CStr::from_ptr(error) }.to_string_lossy().into_owned() });
    }
    // SAFETY: an owned handle, returned once.
    Ok(unsafe { Tensor::from_ptr(out) })
}

/// Applies the packed-linear node (see `packed.rs`).
pub(super) fn packed_linear_node(x: &Tensor, packed: &Tensor, packed_t: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let mut error: *const c_char = std::ptr::null();
    let bias = bias.map_or(std::ptr::null_mut(), lent);
    // SAFETY: as in `attention_node` (this node computes in C++, no callbacks).
    let out = unsafe { fpt_packed_linear_apply(lent(x), lent(packed), lent(packed_t), bias, &mut error) };
    output(out, error, "packed linear")
}
