//! Run checkpoints: the trainable parameters, Adam's moments and step count, the training step
//! and the elapsed time, in one safetensors file written atomically (temp file + rename).
//!
//! The metadata are checked, not believed: `step` and Adam's `t` are unsigned integers, equal
//! (one optimizer step per training step), at least 1 and at most the run's configured steps;
//! `wall_s` is a finite non-negative number; and a SHA-256 of every tensor's name, shape and
//! bytes, stored at save, must match at load, so a flipped bit is an error, not a new weight.
//!
//! Randomness needs no saved state: data come from streams seeded by (seed, step, example) and
//! dropout from libtorch's generator re-seeded from (seed, step) at every step, so restoring the
//! step restores every random draw.

use crate::adam::Adam;
use anyhow::{anyhow, bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use tch::{Kind, Tensor};

pub const FILE: &str = "checkpoint.safetensors";
/// Version 2 added the checksum; version-1 files (no checksum) are still read, checked
/// otherwise, with a note.
const FORMAT: &str = "fpt-run-checkpoint-2";
const FORMAT_V1: &str = "fpt-run-checkpoint-1";

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

/// SHA-256 over the tensors in name order: each name, shape and raw little-endian bytes.
fn checksum<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a [usize], &'a [u8])>) -> String {
    let mut sorted: Vec<_> = tensors.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = Sha256::new();
    for (name, shape, bytes) in sorted {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((shape.len() as u64).to_le_bytes());
        for d in shape {
            h.update((*d as u64).to_le_bytes());
        }
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
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
        ("sha256".to_string(), checksum(owned.iter().map(|(n, shape, bytes)| (n.as_str(), shape.as_slice(), bytes.as_slice())))),
    ]
    .into();
    let data = safetensors::serialize(views, Some(metadata)).map_err(|e| anyhow!("serialising the checkpoint: {e}"))?;
    let tmp = dir.join(format!("{FILE}.tmp"));
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(FILE)).with_context(|| format!("renaming {} into place", tmp.display()))?;
    Ok(())
}

/// Restores parameters and optimizer state in place; the names must be exactly the trainable
/// parameters of `adam`, and the step at most `max_step` (the run's configured steps).
pub fn load(dir: &Path, adam: &mut Adam, max_step: u64) -> Result<CheckpointMeta> {
    let path = dir.join(FILE);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| anyhow!("{}: not a valid checkpoint ({e})", path.display()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let version_1 = match meta.get("format").map(String::as_str) {
        Some(FORMAT) => false,
        Some(FORMAT_V1) => true,
        other => bail!("{}: not an fpt run checkpoint (format {other:?}, expected {FORMAT:?})", path.display()),
    };
    let field = |k: &str| -> Result<&str> {
        meta.get(k).map(String::as_str).with_context(|| format!("{}: metadata field {k} is missing", path.display()))
    };
    // Digits only: "-5", "1e30", "3.0" and " 7" are refused rather than cast.
    let count = |k: &str| -> Result<u64> {
        let v = field(k)?;
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            bail!("{}: metadata field {k} is {v:?}; expected a whole number of steps", path.display());
        }
        v.parse().with_context(|| format!("{}: metadata field {k} is {v:?}, too large", path.display()))
    };
    let step = count("step")?;
    let adam_t = count("adam_t")?;
    if step == 0 || step > max_step {
        bail!(
            "{}: checkpoint step {step} is outside this run's 1..={max_step} steps (was the file or the config changed?)",
            path.display()
        );
    }
    if adam_t != step {
        bail!("{}: Adam's step count {adam_t} differs from the training step {step} (one optimizer step per training step); the file is inconsistent", path.display());
    }
    let wall_s: f64 = field("wall_s")?.parse().ok().filter(|w: &f64| w.is_finite() && *w >= 0.0).with_context(|| {
        format!("{}: metadata field wall_s is {:?}; expected a finite number of seconds ≥ 0", path.display(), meta.get("wall_s"))
    })?;

    let file = SafeTensors::deserialize(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    if version_1 {
        eprintln!("note: {} is a version-1 checkpoint without a checksum; its tensors are not verified", path.display());
    } else {
        let stored = field("sha256")?;
        let tensors = file.tensors();
        let actual = checksum(tensors.iter().map(|(n, v)| (n.as_str(), v.shape(), v.data())));
        if stored != actual {
            bail!("{}: the tensors' SHA-256 is {actual}, the checkpoint recorded {stored}: the file is corrupt", path.display());
        }
    }
    let expected = 3 * adam.params.len();
    if file.len() != expected {
        bail!(
            "{}: holds {} tensors, the model's trainable parameters need {expected} (was the config changed?)",
            path.display(),
            file.len()
        );
    }
    tch::no_grad(|| -> Result<()> {
        for (name, p, m, v) in &mut adam.params {
            for (prefix, t) in [("param", &*p), ("adam_m", &*m), ("adam_v", &*v)] {
                let key = format!("{prefix}.{name}");
                let view = file.tensor(&key).map_err(|_| anyhow!("{}: no tensor {key} (was the config changed?)", path.display()))?;
                if view.dtype() != Dtype::F32 {
                    bail!("{}: {key} is {:?}; expected F32", path.display(), view.dtype());
                }
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
    adam.t = adam_t;
    Ok(CheckpointMeta { step, wall_s })
}
