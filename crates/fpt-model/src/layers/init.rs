//! Creating parameters: the one place where a backbone or the FPT wrapper allocates a weight.
//!
//! Sizes come from `config.json`, `--set` and task shapes, all user-controlled, so allocation
//! is fallible here (tch's `Tensor::randn` and friends panic when libtorch cannot allocate):
//! the element count is checked for overflow, the bytes against the memory the machine has
//! available (on the CPU, where Linux would otherwise overcommit and the OOM killer end the
//! process mid-init), and libtorch's own allocation error is returned, not unwrapped. When a
//! checkpoint is about to be loaded, each shape is compared with the checkpoint's header first
//! ([`crate::checkpoint::build_checked`]), so a config that disagrees with its weights is
//! reported before anything large is allocated.
//!
//! The draws are the same operations as before this module existed (`randn · std`,
//! `zeros.uniform_`), in the same order, so seeded inits are bit-identical.

use anyhow::{bail, Context, Result};
use tch::{nn, Device, Kind, Tensor};

/// How a parameter starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// normal(0, std): Hugging Face's weights and embeddings.
    Normal {
        std: f64,
    },
    /// uniform(-bound, bound): PyTorch's `nn.Linear` default and the reference LSTM's.
    Uniform {
        bound: f64,
    },
    /// PyTorch's orthogonal init with `gain`: the FPT input projection.
    Orthogonal {
        gain: f64,
    },
    Zeros,
    Ones,
}

impl Init {
    /// A fresh CPU fp32 tensor drawn from libtorch's global generator.
    pub fn tensor(self, dims: &[i64]) -> std::result::Result<Tensor, tch::TchError> {
        let cpu = (Kind::Float, Device::Cpu);
        match self {
            Init::Normal { std } => Tensor::f_randn(dims, cpu)?.f_mul_scalar(std),
            Init::Uniform { bound } => Tensor::f_zeros(dims, cpu)?.f_uniform_(-bound, bound),
            Init::Orthogonal { gain } => nn::init::f_init(nn::Init::Orthogonal { gain }, dims, Device::Cpu, Kind::Float),
            Init::Zeros => Tensor::f_zeros(dims, cpu),
            Init::Ones => Tensor::f_ones(dims, cpu),
        }
    }
}

/// Creates one fp32 variable `name` under `path`, trainable: freezing comes after the model is
/// built ([`crate::freeze::FreezeSpec::apply`], from the groups the model declares).
pub(crate) fn new_param(path: &nn::Path, name: &str, dims: &[i64], init: Init) -> Result<Tensor> {
    let full_name = path.path(name);
    if path.get(name).is_some() {
        bail!("variable {full_name} is defined twice");
    }
    if crate::checkpoint::planned_shape_differs(&full_name, dims) {
        // Recorded; `build_checked` reports every such tensor once the model is described.
        return Ok(path.add(name, Tensor::f_zeros([0], (Kind::Float, Device::Cpu))?, true));
    }
    let bytes = checked_bytes(dims, 4).with_context(|| format!("parameter {full_name}"))?;
    check_memory(bytes, path.device()).with_context(|| format!("parameter {full_name} {dims:?}"))?;
    let tensor = init
        .tensor(dims)
        .and_then(|t| t.f_to_device(path.device()))
        .with_context(|| format!("allocating parameter {full_name} {dims:?} ({})", human_bytes(bytes)))?;
    Ok(path.add(name, tensor, true))
}

/// A layer norm's epsilon must be positive and finite (a negative or NaN one turns every
/// output into NaN); the init's standard deviation finite and not negative.
pub fn check_eps_and_range(eps_field: &str, eps: f64, initializer_range: f64) -> Result<()> {
    if !(eps.is_finite() && eps > 0.0) {
        bail!("{eps_field} is {eps}; it must be a positive finite number (GPT-2 uses 1e-5, BERT 1e-12)");
    }
    if !(initializer_range.is_finite() && initializer_range >= 0.0) {
        bail!("initializer_range is {initializer_range}; it must be a finite number ≥ 0 (usually 0.02)");
    }
    Ok(())
}

/// Bytes of a tensor with `dims` and `elem` bytes per element; an error for negative sizes or
/// an overflowing product.
pub fn checked_bytes(dims: &[i64], elem: u64) -> Result<u64> {
    dims.iter()
        .try_fold(elem, |acc, &d| u64::try_from(d).ok().and_then(|d| acc.checked_mul(d)))
        .with_context(|| format!("shape {dims:?} is negative or too large to address"))
}

/// Refuses a CPU allocation larger than the memory Linux says is available (MemAvailable):
/// Linux overcommits, so such an allocation would succeed and the process be killed while the
/// weights are drawn. Elsewhere (other OSes, CUDA) libtorch's allocator reports the failure.
pub fn check_memory(bytes: u64, device: Device) -> Result<()> {
    if device != Device::Cpu {
        return Ok(());
    }
    if let Some(available) = available_memory() {
        if bytes > available {
            bail!(
                "needs {}, more than the {} of memory available (check the sizes in the config: \
                 widths, vocabulary, positions, layers, classes)",
                human_bytes(bytes),
                human_bytes(available)
            );
        }
    }
    Ok(())
}

fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..=1_048_575 => format!("{:.1} KiB", b / 1024.0),
        1_048_576..=1_073_741_823 => format!("{:.1} MiB", b / 1_048_576.0),
        _ => format!("{:.1} GiB", b / 1_073_741_824.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_that_cannot_exist_are_errors() {
        assert_eq!(checked_bytes(&[3, 5], 4).unwrap(), 60);
        assert!(checked_bytes(&[-1, 5], 4).is_err());
        assert!(checked_bytes(&[i64::MAX, 4], 4).is_err());
        // 2^50 bytes is more than any machine this runs on has available.
        let err = check_memory(1 << 50, Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("more than") && err.contains("available"), "{err}");
        assert!(check_memory(1024, Device::Cpu).is_ok());
    }

    #[test]
    fn a_parameter_too_large_to_allocate_is_an_error_not_a_panic() {
        let vs = nn::VarStore::new(Device::Cpu);
        let err = new_param(&(vs.root() / "wte"), "weight", &[1_000_000_000_000, 768], Init::Normal { std: 0.02 }).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("wte.weight") && text.contains("available"), "{text}");
        assert!(vs.variables().is_empty());
    }
}
