//! How close two float computations must be, for the tests that compare ours with Hugging
//! Face's or with another of our kernels. Bounds are derived from the computation, never from
//! one machine's observed difference: libtorch (MKL, oneDNN) picks other kernels on other CPUs
//! (AVX-512 on an Intel Xeon, AVX2 paths on an AMD EPYC), which sum in other orders and move
//! the last digits, and a bound tuned on one machine fails on the next.
//!
//! **Against a reference implementation** ([`parity_bound`]): the reference is also evaluated
//! in fp64, on this machine, from the same weights and inputs: the truth. How far fp32 lands
//! from it depends on how much the model amplifies rounding (real weights do: MiniLM's input
//! gradients, through layer norms with eps 1e-12, move by 1e-4 where a random tiny model's move
//! by 1e-6) and on the kernels this CPU gets. The fixture measures that noise directly: the
//! largest error against the truth of the reference's own fp32 results over an ensemble (the
//! inputs as given and three copies perturbed by one unit of roundoff, which is what summing
//! in another order does to the values a layer sees). A single result's max error is itself
//! noisy (MiniLM's varies 10× between such draws), so the ensemble's upper tail is the scale.
//! Our fp32 computation performs the same operations rounded in other orders (other fusions,
//! blockings and kernels): one more draw of the same noise. The bound allows 4× the ensemble's
//! largest error, plus a floor of 16 units of fp32 roundoff at the output's scale for outputs
//! the reference rounds almost exactly. A semantic mistake (another epsilon, GELU variant or
//! scale, a missing bias, shifted positions) is a deterministic error that does not shrink
//! with rounding, and stays outside.
//!
//! **Two of our own fp32 paths for the same function** ([`reordering_bound`]): the same rule
//! with one path as the reference, and its fp64 evaluation as the truth.

use tch::{Kind, Tensor};

/// fp32's unit roundoff, 2^-24.
pub const F32_UNIT_ROUNDOFF: f64 = 5.960_464_477_539_063e-8;

/// Max |a − b| over all elements, computed in fp64.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

fn max_abs(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).abs().max().double_value(&[])
}

/// What `ours` (fp32) may differ from `truth` (the reference evaluated in fp64), given
/// `noise`, the largest error against `truth` of the reference's fp32 ensemble (see above).
pub fn parity_bound(noise: f64, truth_f64: &Tensor) -> f64 {
    4.0 * noise + 16.0 * F32_UNIT_ROUNDOFF * max_abs(truth_f64)
}

/// What a second fp32 path may differ from the fp64 evaluation `path_f64` of a first one,
/// whose fp32 result is `path_f32` (the first path is the whole ensemble here: one draw).
pub fn reordering_bound(path_f32: &Tensor, path_f64: &Tensor) -> f64 {
    parity_bound(max_abs_diff(path_f32, path_f64), path_f64)
}

/// Checks `ours` against the truth: `Err` with the error, the noise and the bound when outside.
pub fn check_parity(what: &str, ours: &Tensor, truth_f64: &Tensor, noise: f64) -> Result<f64, String> {
    let err = max_abs_diff(ours, truth_f64);
    let bound = parity_bound(noise, truth_f64);
    if err <= bound {
        Ok(err)
    } else {
        Err(format!(
            "{what}: ours vs fp64 {err:.3e}, reference fp32 noise {noise:.3e}, bound {bound:.3e} (max |value| {:.3})",
            max_abs(truth_f64)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule passes a reordered sum and fails a deterministic error of the size of a wrong
    /// layer-norm epsilon, on data where fp32 rounding is what separates fp32 from fp64.
    #[test]
    fn separates_rounding_from_mistakes() {
        tch::manual_seed(0);
        let a = Tensor::randn([64, 512], (Kind::Float, tch::Device::Cpu));
        let b = Tensor::randn([512, 64], (Kind::Float, tch::Device::Cpu));
        let truth = a.to_kind(Kind::Double).matmul(&b.to_kind(Kind::Double));
        let reference = a.matmul(&b);
        // The same products summed in another order: two halves of K, added.
        let reordered = a.narrow(1, 256, 256).matmul(&b.narrow(0, 256, 256)) + a.narrow(1, 0, 256).matmul(&b.narrow(0, 0, 256));
        let noise = max_abs_diff(&reference, &truth);
        assert!(check_parity("reordered", &reordered, &truth, noise).is_ok());
        // A relative mistake of 1e-5 is caught.
        let wrong = &reference * (1.0 + 1e-5);
        assert!(check_parity("scaled", &wrong, &truth, noise).is_err());
    }
}
