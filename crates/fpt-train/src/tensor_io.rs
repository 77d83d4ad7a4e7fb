//! Reading and writing single float tensors in safetensors files, with errors that name the
//! file and the tensor.

use anyhow::{anyhow, bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use std::path::Path;
use tch::{Kind, Tensor};

/// A safetensors file read once, whose float tensors are taken by name.
pub struct TensorFile {
    path: std::path::PathBuf,
    bytes: Vec<u8>,
    names: Vec<String>,
}

impl TensorFile {
    pub fn read(path: &Path) -> Result<TensorFile> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let mut names: Vec<String> = Self::parse(path, &bytes)?.names().into_iter().map(String::from).collect();
        names.sort();
        Ok(TensorFile { path: path.to_path_buf(), bytes, names })
    }

    pub fn has(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// The f32 tensor `name`.
    pub fn f32(&self, name: &str) -> Result<Tensor> {
        self.tensor(name, Dtype::F32, Kind::Float)
    }

    /// The f64 tensor `name` (a reference's fp64 truth).
    pub fn f64(&self, name: &str) -> Result<Tensor> {
        self.tensor(name, Dtype::F64, Kind::Double)
    }

    fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<SafeTensors<'a>> {
        SafeTensors::deserialize(bytes).map_err(|e| anyhow!("{}: not a valid safetensors file ({e})", path.display()))
    }

    fn tensor(&self, name: &str, dtype: Dtype, kind: Kind) -> Result<Tensor> {
        let path = self.path.display();
        // Parsing the header again is cheap; keeping the parsed view would tie the struct to its own bytes.
        let file = Self::parse(&self.path, &self.bytes)?;
        let view = file.tensor(name).map_err(|_| anyhow!("{path} has no tensor named {name:?} (it holds {:?})", self.names))?;
        if view.dtype() != dtype {
            bail!("{path}: tensor {name:?} is {:?}; expected {dtype:?}", view.dtype());
        }
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        Tensor::f_from_data_size(view.data(), &shape, kind).with_context(|| format!("{path}: building tensor {name:?}"))
    }
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
