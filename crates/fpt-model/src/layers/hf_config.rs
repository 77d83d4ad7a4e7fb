//! Reading and checking a backbone's Hugging Face `config.json`: each backbone's config type says
//! its name, its `model_type` and its own checks; reading, parsing and the common checks are here.

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use std::path::Path;

/// A backbone's `config.json` as serde reads it.
pub trait HfConfig: DeserializeOwned {
    /// The architecture's name in messages ("GPT-2") and its type's ("GPT2Config").
    const NAME: &'static str;
    const TYPE_NAME: &'static str;
    /// The `model_type`s the file may carry (none at all is accepted too); the first is the
    /// backbone's own, the others are architectures it computes (Llama's: Qwen2, Mistral).
    const MODEL_TYPES: &'static [&'static str];
    /// The backbone's own checks (after [`check_model_type`] and [`check_positive`]).
    fn validate(&self) -> Result<()>;
}

/// Reads, parses and checks the config at `path`; every error names the file.
pub fn read_hf_config<T: HfConfig>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading model config {}", path.display()))?;
    parse_hf_config(serde_json::from_str(&text), path)
}

/// Checks a config parsed (from `path`) elsewhere, as [`read_hf_config`] does.
pub fn parse_hf_config<T: HfConfig>(parsed: serde_json::Result<T>, path: &Path) -> Result<T> {
    let cfg =
        parsed.with_context(|| format!("{}: not a valid {} config.json (expected {}'s fields)", path.display(), T::NAME, T::TYPE_NAME))?;
    cfg.validate().with_context(|| format!("model config {}", path.display()))?;
    Ok(cfg)
}

/// A `model_type` other than the backbone's is an error (none at all is accepted).
pub fn check_model_type<T: HfConfig>(model_type: Option<&str>) -> Result<()> {
    match model_type {
        Some(mt) if !T::MODEL_TYPES.contains(&mt) => {
            bail!("model_type is {mt:?}, but this backbone is {} (model_type {})", T::NAME, T::MODEL_TYPES.join(" or "))
        }
        _ => Ok(()),
    }
}

/// Every listed size must be positive.
pub fn check_positive(fields: &[(&str, i64)]) -> Result<()> {
    for &(field, value) in fields {
        if value <= 0 {
            bail!("{field} is {value}; it must be positive");
        }
    }
    Ok(())
}
