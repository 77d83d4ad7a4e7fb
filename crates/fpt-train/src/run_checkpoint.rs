//! Run checkpoints: the trainable parameters, Adam's moments and step count, the training step
//! and the elapsed time, in one safetensors file written atomically (temp file + rename).
//!
//! Randomness needs no saved state: data come from streams seeded by (seed, step, example) and
//! dropout from libtorch's generator re-seeded from (seed, step) at every step, so restoring the
//! step restores every random draw.

use crate::adam::Adam;
use anyhow::{anyhow, bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;
use tch::{Kind, Tensor};

pub const FILE: &str = "checkpoint.safetensors";
const FORMAT: &str = "fpt-run-checkpoint-1";

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckpointMeta {
    pub step: u64,
    pub wall_s: f64,
}

fn tensor_bytes(t: &Tensor) -> Result<(Vec<usize>, Vec<u8>)> {
    let t = t.detach().to_device(tch::Device::Cpu).to_kind(Kind::Float).contiguous();
    let shape = t.size().iter().map(|&d| d as usize).collect();
    let values = Vec::<f32>::try_from(&t.flatten(0, -1)).context("copying a tensor for the checkpoint")?;
    Ok((shape, values.iter().flat_map(|v| v.to_le_bytes()).collect()))
}

pub fn save(dir: &Path, adam: &Adam, meta: CheckpointMeta) -> Result<()> {
    let mut owned = Vec::new();
    for (name, p, m, v) in &adam.params {
        for (prefix, t) in [("param", p), ("adam_m", m), ("adam_v", v)] {
            let (shape, bytes) = tensor_bytes(t)?;
            owned.push((format!("{prefix}.{name}"), shape, bytes));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, shape, bytes)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes).map(|v| (n.clone(), v)).map_err(|e| anyhow!("{n}: {e}"))
        })
        .collect::<Result<_>>()?;
    let metadata: HashMap<String, String> = [
        ("format".to_string(), FORMAT.to_string()),
        ("step".to_string(), meta.step.to_string()),
        ("adam_t".to_string(), adam.t.to_string()),
        ("wall_s".to_string(), format!("{}", meta.wall_s)),
    ]
    .into();
    let data = safetensors::serialize(views, Some(metadata)).map_err(|e| anyhow!("serialising the checkpoint: {e}"))?;
    let tmp = dir.join(format!("{FILE}.tmp"));
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(FILE)).with_context(|| format!("renaming {} into place", tmp.display()))?;
    Ok(())
}

/// Restores parameters and optimizer state in place; the names must be exactly the trainable
/// parameters of `adam`.
pub fn load(dir: &Path, adam: &mut Adam) -> Result<CheckpointMeta> {
    let path = dir.join(FILE);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| anyhow!("{}: not a valid checkpoint ({e})", path.display()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        bail!("{}: not an fpt run checkpoint (format {:?})", path.display(), meta.get("format"));
    }
    let number = |k: &str| -> Result<f64> {
        meta.get(k).and_then(|v| v.parse().ok()).with_context(|| format!("{}: metadata field {k} missing or not a number", path.display()))
    };
    let file = SafeTensors::deserialize(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let expected = 3 * adam.params.len();
    if file.len() != expected {
        bail!("{}: holds {} tensors, the model's trainable parameters need {expected} (was the config changed?)", path.display(), file.len());
    }
    tch::no_grad(|| -> Result<()> {
        for (name, p, m, v) in &mut adam.params {
            for (prefix, t) in [("param", &*p), ("adam_m", &*m), ("adam_v", &*v)] {
                let key = format!("{prefix}.{name}");
                let view = file.tensor(&key).map_err(|_| anyhow!("{}: no tensor {key} (was the config changed?)", path.display()))?;
                let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
                if shape != t.size() {
                    bail!("{}: {key} has shape {shape:?}, the model has {:?}", path.display(), t.size());
                }
                let src = Tensor::f_from_data_size(view.data(), &shape, Kind::Float)?;
                t.shallow_clone().f_copy_(&src)?;
            }
        }
        Ok(())
    })?;
    adam.t = number("adam_t")? as u64;
    Ok(CheckpointMeta { step: number("step")? as u64, wall_s: number("wall_s")? })
}
