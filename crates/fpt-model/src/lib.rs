//! Backbones, checkpoint loading, freeze groups and the Frozen Pretrained Transformer (FPT)
//! wrapper of *Pretrained Transformers as Universal Computation Engines* (Lu et al., 2021).
//!
//! This crate knows nothing of tasks or training: it maps token features to logits.

pub mod backbone;
pub mod bert;
pub mod checkpoint;
pub mod config;
pub mod fpt;
pub mod freeze;
pub mod gpt2;
pub mod init;
pub mod lstm;
pub mod ops;
pub mod params;
pub mod tolerance;

pub use config::{Activation, Gpt2Config, GPT2_PRESETS};
pub use backbone::{load_backbone_dir, Backbone, BackboneConfig, Precision, Rows};
pub use bert::{Bert, BertConfig};
pub use fpt::{orth_gain_text, Fpt, FptConfig, InputSpec, Readout};
pub use freeze::{FreezeSpec, ParamGroup};
pub use gpt2::Gpt2;
pub use lstm::{Lstm, LstmConfig};

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// Where a backbone comes from: a preset shape (random init) or a Hugging Face directory.
#[derive(Clone, Debug, PartialEq)]
pub enum BackboneSource {
    Preset(String),
    Dir(PathBuf),
}

impl BackboneSource {
    /// A directory if `text` names one, else a preset name.
    pub fn parse(text: &str) -> Result<Self> {
        let path = Path::new(text);
        if path.is_dir() {
            return Ok(BackboneSource::Dir(path.to_path_buf()));
        }
        if GPT2_PRESETS.iter().any(|p| p.0 == text) {
            return Ok(BackboneSource::Preset(text.to_string()));
        }
        let presets: Vec<&str> = GPT2_PRESETS.iter().map(|p| p.0).collect();
        bail!(
            "model {text:?} is neither a directory nor a preset ({}); a Hugging Face checkpoint \
             directory holds config.json and model.safetensors",
            presets.join(", ")
        )
    }

    /// The backbone's config: the preset's, or the directory's `config.json`.
    pub fn config(&self) -> Result<BackboneConfig> {
        match self {
            BackboneSource::Preset(name) => Ok(Gpt2Config::preset(name)?.into()),
            BackboneSource::Dir(dir) => BackboneConfig::from_json_file(&dir.join("config.json")),
        }
    }
}
