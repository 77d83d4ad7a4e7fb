//! Reading and writing single float tensors in safetensors files, with errors that name the
//! file and the tensor.

use anyhow::{anyhow, bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use std::path::Path;
use tch::{Kind, Tensor};

/// Reads the f32 tensor `name` from a safetensors file.
pub fn read_f32(path: &Path, name: &str) -> Result<Tensor> {
    read_kind(path, name, Dtype::F32, Kind::Float)
}

/// Reads the f64 tensor `name` from a safetensors file (a reference's fp64 truth).
pub fn read_f64(path: &Path, name: &str) -> Result<Tensor> {
    read_kind(path, name, Dtype::F64, Kind::Double)
}

/// The names of the tensors in a safetensors file.
pub fn tensor_names(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| anyhow!("{}: not a valid safetensors file ({e})", path.display()))?;
    let mut names: Vec<String> = file.names().into_iter().map(String::from).collect();
    names.sort();
    Ok(names)
}

fn read_kind(path: &Path, name: &str, dtype: Dtype, kind: Kind) -> Result<Tensor> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| anyhow!("{}: not a valid safetensors file ({e})", path.display()))?;
    let view = file.tensor(name).map_err(|_| {
        let mut names: Vec<String> = file.names().into_iter().map(String::from).collect();
        names.sort();
        anyhow!("{} has no tensor named {name:?} (it holds {names:?})", path.display())
    })?;
    if view.dtype() != dtype {
        bail!("{}: tensor {name:?} is {:?}; expected {dtype:?}", path.display(), view.dtype());
    }
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    Tensor::f_from_data_size(view.data(), &shape, kind).with_context(|| format!("{}: building tensor {name:?}", path.display()))
}

/// Writes `tensor` (converted to f32 on the CPU) as the only tensor of a safetensors file.
pub fn write_f32(path: &Path, name: &str, tensor: &Tensor) -> Result<()> {
    let t = tensor.to_device(tch::Device::Cpu).to_kind(Kind::Float).contiguous();
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let values = Vec::<f32>::try_from(&t.flatten(0, -1)).context("copying the output tensor")?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(Dtype::F32, shape, &bytes)
        .map_err(|e| anyhow!("building safetensors view for {name}: {e}"))?;
    let data = safetensors::serialize([(name, view)], None).map_err(|e| anyhow!("serialising {name}: {e}"))?;
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}
