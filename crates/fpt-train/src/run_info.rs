//! `model.json` in a run directory: what `fpt eval` and `fpt predict` need besides the config
//! and the trained parameters — which frozen backbone the run was trained on, the task's shape,
//! and what the run keeps about its data (class names, image size).
//!
//! The backbone is identified by the SHA-256 of its safetensors file(s) (`sha256:…`), the same
//! whatever the folder or hub id it was reached by; a random init by its seed and the device kind
//! it was drawn on (libtorch draws other numbers on CUDA than on the CPU). `fpt train` writes the
//! file when a run starts and checks it when the run resumes; `fpt eval` and `fpt predict`
//! refuse a backbone whose identity differs.

use crate::config::{Init, RunConfig};
use crate::model_build::backbone_for;
use anyhow::{bail, Context, Result};
use fpt_tasks::{DataFacts, Task, TaskSpec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;
use tch::Device;

pub const FILE: &str = "model.json";
const FORMAT: &str = "fpt-run-model-1";

/// The frozen backbone a run was trained on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackboneRecord {
    /// `sha256:<hex>` of the weight files (plus the statistics noise's seed for
    /// `init = "statistics"`), or `random init, seed N, drawn on cpu|cuda`.
    pub identity: String,
    /// Where it was found, for people (a folder, a hub snapshot, a preset).
    pub source: String,
}

/// `model.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunModel {
    pub format: String,
    pub backbone: BackboneRecord,
    pub task: TaskSpec,
    #[serde(default)]
    pub data: DataFacts,
}

fn device_kind(device: Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        _ => "another device",
    }
}

/// SHA-256 over a checkpoint folder's safetensors files in name order: each file's name, length
/// and bytes.
pub fn weights_sha256(dir: &Path) -> Result<String> {
    let mut files: Vec<_> = fpt_model::checkpoint::weight_files(dir)?.into_iter().map(|(p, _)| p).collect();
    files.sort();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for path in files {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut file = std::fs::File::open(&path).with_context(|| format!("opening {} to checksum it", path.display()))?;
        let len = file.metadata().with_context(|| format!("reading the size of {}", path.display()))?.len();
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(len.to_le_bytes());
        loop {
            let n = file.read(&mut buf).with_context(|| format!("reading {} to checksum it", path.display()))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The identity of the backbone `cfg` builds on `device` ([`BackboneRecord::identity`]).
pub fn backbone_record(cfg: &RunConfig, device: Device) -> Result<BackboneRecord> {
    let backbone = backbone_for(cfg)?;
    let identity = match &cfg.model.init {
        Init::Random => format!("random init, seed {}, drawn on {}", cfg.seed, device_kind(device)),
        init => {
            let dir = backbone.weights.as_ref().with_context(|| format!("model.init needs weights, but {} has none", backbone.source))?;
            let hash = weights_sha256(dir)?;
            match init {
                Init::Statistics => format!("sha256:{hash} as statistics noise, seed {}, drawn on {}", cfg.seed, device_kind(device)),
                _ => format!("sha256:{hash}"),
            }
        }
    };
    Ok(BackboneRecord { identity, source: backbone.source })
}

pub fn read(dir: &Path) -> Result<Option<RunModel>> {
    let path = dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let model: RunModel = serde_json::from_str(&text).with_context(|| format!("{}: not an fpt run's model record", path.display()))?;
    if model.format != FORMAT {
        bail!("{}: format {:?}, expected {FORMAT:?}", path.display(), model.format);
    }
    Ok(Some(model))
}

/// Fails unless `current` is the backbone `recorded` (from the run in `dir`).
pub fn check_backbone(dir: &Path, recorded: &BackboneRecord, current: &BackboneRecord) -> Result<()> {
    if recorded.identity == current.identity {
        return Ok(());
    }
    let hint = if recorded.identity.starts_with("random") || recorded.identity.contains("statistics") {
        " (a random draw is repeated only with the same seed on the same kind of device: pass --device accordingly)"
    } else {
        " (point model.backbone at the checkpoint the run was trained on)"
    };
    bail!(
        "{}: the run was trained on the backbone {} ({}), but its config now gives {} ({}); not the same frozen weights{hint}",
        dir.join(FILE).display(),
        recorded.identity,
        recorded.source,
        current.identity,
        current.source
    )
}

/// Writes `model.json` for a run starting in `dir`, or, when the run resumes and the file is
/// there, checks that the backbone is still the one the run started with.
pub fn record(dir: &Path, cfg: &RunConfig, task: &dyn Task, device: Device) -> Result<()> {
    let backbone = backbone_record(cfg, device)?;
    if let Some(existing) = read(dir)? {
        return check_backbone(dir, &existing.backbone, &backbone);
    }
    let model = RunModel { format: FORMAT.into(), backbone, task: task.spec().clone(), data: task.facts() };
    let path = dir.join(FILE);
    let tmp = dir.join(format!("{FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_string_pretty(&model)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming {} into place", tmp.display()))
}
