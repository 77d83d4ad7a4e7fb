//! `--device auto|cpu|cuda|cuda:N`.

use anyhow::{bail, Context, Result};
use tch::Device;

/// Parses a device name. `auto` is the first CUDA device when libtorch sees one, else the CPU;
/// naming a CUDA device that is not there is an error rather than a silent CPU run.
pub fn parse_device(text: &str) -> Result<Device> {
    let text = text.trim();
    match text {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda_device(0, text),
        _ => match text.strip_prefix("cuda:") {
            Some(index) => {
                let index: usize = index.parse().with_context(|| format!("device {text:?}: expected cuda:N with N a GPU index"))?;
                cuda_device(index, text)
            }
            None => bail!("unknown device {text:?}: expected auto, cpu, cuda or cuda:N"),
        },
    }
}

fn cuda_device(index: usize, text: &str) -> Result<Device> {
    let count = if tch::Cuda::is_available() { tch::Cuda::device_count() as usize } else { 0 };
    if index >= count {
        bail!("device {text:?} requested, but libtorch sees {count} CUDA device(s)");
    }
    Ok(Device::Cuda(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(parse_device("auto").unwrap(), Device::cuda_if_available());
        assert!(parse_device("gpu").unwrap_err().to_string().contains("unknown device"));
        assert!(parse_device("cuda:x").unwrap_err().to_string().contains("cuda:N"));
        if !tch::Cuda::is_available() {
            let err = parse_device("cuda:0").unwrap_err().to_string();
            assert!(err.contains("sees 0 CUDA"), "{err}");
            assert!(parse_device("cuda").is_err());
        } else {
            assert_eq!(parse_device("cuda").unwrap(), Device::Cuda(0));
            assert!(parse_device("cuda:999").is_err());
        }
    }
}
