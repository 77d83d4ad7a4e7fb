//! Reading Hugging Face checkpoint directories (safetensors only) into a VarStore.
//!
//! Name mapping: a checkpoint tensor `N` goes to the VarStore variable `N`, after removing a
//! leading `transformer.` (what `GPT2LMHeadModel` and friends save), `bert.` (`BertFor…`
//! heads) or `model.` (`LlamaForCausalLM`). Layouts are taken as they are (GPT-2's Conv1D
//! weights are `[in, out]` in the file and in the VarStore; BERT's and Llama's linears
//! `[out, in]` in both). Tensors that are not part of the backbone FPT uses are skipped on
//! purpose: task heads (`lm_head.*`, `cls.*`, BERT's `pooler.*`) and buffers (`h.{i}.attn.bias`
//! / `h.{i}.attn.masked_bias` causal masks of older GPT-2 files, `embeddings.position_ids`,
//! the `rotary_emb.inv_freq` of older Llama files). Anything else that is missing, unexpected
//! or mis-shaped makes the load fail with a list of each one.
use anyhow::{anyhow, bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use tch::{nn, Kind, Tensor};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Variables under these prefixes belong to the FPT wrapper, not to the pretrained backbone.
pub const WRAPPER_PREFIXES: [&str; 2] = ["input_layer.", "output_layer."];

/// What a successful load did.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub files: Vec<PathBuf>,
    pub loaded: usize,
    /// Tensors present in the files and skipped on purpose (LM head, mask buffers).
    pub skipped: Vec<String>,
}

/// The safetensors files of a checkpoint directory: `model.safetensors`, or the shards that
/// `model.safetensors.index.json` lists (with the tensors each one should hold).
pub fn weight_files(dir: &Path) -> Result<Vec<(PathBuf, Option<BTreeSet<String>>)>> {
    if !dir.is_dir() {
        bail!("{} is not a directory (expected a Hugging Face checkpoint folder)", dir.display());
    }
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return Ok(vec![(single, None)]);
    }
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        let text = std::fs::read_to_string(&index).with_context(|| format!("reading shard index {}", index.display()))?;
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let parsed: Index = serde_json::from_str(&text)
            .with_context(|| format!("{}: expected JSON with a \"weight_map\" object of tensor name -> shard file", index.display()))?;
        let mut by_file: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (tensor, file) in parsed.weight_map {
            if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                bail!("{}: shard name {file:?} for {tensor} must be a plain file name", index.display());
            }
            by_file.entry(file).or_default().insert(tensor);
        }
        if by_file.is_empty() {
            bail!("{}: weight_map is empty", index.display());
        }
        return by_file
            .into_iter()
            .map(|(file, names)| {
                let path = dir.join(&file);
                if !path.is_file() {
                    bail!("{} lists shard {file}, which is not in {}", index.display(), dir.display());
                }
                Ok((path, Some(names)))
            })
            .collect();
    }
    for pickled in ["pytorch_model.bin", "pytorch_model.bin.index.json"] {
        if dir.join(pickled).exists() {
            bail!(
                "{} holds {pickled} but no {SINGLE_FILE}. fpt reads only safetensors: pickled .bin \
                 files can execute code when loaded. Convert once with Python transformers:\n  \
                 python -c \"from transformers import AutoModel; AutoModel.from_pretrained('{d}')\
                 .save_pretrained('{d}', safe_serialization=True)\"",
                dir.display(),
                d = dir.display()
            );
        }
    }
    bail!("{} has neither {SINGLE_FILE} nor {INDEX_FILE}", dir.display())
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        _ => return None,
    })
}

/// Checkpoint name -> VarStore name, or `None` for tensors skipped on purpose.
fn map_name(name: &str) -> Option<String> {
    let name =
        name.strip_prefix("transformer.").or_else(|| name.strip_prefix("bert.")).or_else(|| name.strip_prefix("model.")).unwrap_or(name);
    let skip = ["lm_head.", "cls.", "pooler."].iter().any(|p| name.starts_with(p))
        || name.starts_with("rotary_emb.")
        || name.contains(".rotary_emb.")
        || name.ends_with(".attn.bias")
        || name.ends_with(".attn.masked_bias")
        || name == "embeddings.position_ids";
    (!skip).then(|| name.to_string())
}

/// Every tensor's (VarStore name, shape) from the headers of a checkpoint directory's files,
/// without reading the weights.
pub fn header_shapes(dir: &Path) -> Result<BTreeMap<String, Vec<i64>>> {
    let mut shapes = BTreeMap::new();
    for (path, _) in weight_files(dir)? {
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: as in `load_weights`; only the header is parsed.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
        let (_, header) =
            SafeTensors::read_metadata(&mmap).map_err(|e| anyhow!("{}: not a valid safetensors file: {e}", path.display()))?;
        for (raw_name, info) in header.tensors() {
            if let Some(name) = map_name(&raw_name) {
                shapes.insert(name, info.shape.iter().map(|&d| d as i64).collect());
            }
        }
    }
    Ok(shapes)
}

/// The checkpoint shapes a model under construction is checked against (see [`build_checked`]).
struct Planned {
    shapes: BTreeMap<String, Vec<i64>>,
    mismatches: Vec<String>,
    /// Every backbone variable the constructor asked for.
    created: BTreeSet<String>,
}

thread_local! {
    static PLANNED: RefCell<Option<Planned>> = const { RefCell::new(None) };
}

/// Whether the checkpoint being built against holds `name` with another shape; if so the
/// mismatch is recorded and the caller allocates nothing for it.
pub(crate) fn planned_shape_differs(name: &str, dims: &[i64]) -> bool {
    PLANNED.with(|p| {
        let mut p = p.borrow_mut();
        let Some(planned) = p.as_mut() else { return false };
        if !WRAPPER_PREFIXES.iter().any(|w| name.starts_with(w)) {
            planned.created.insert(name.to_string());
        }
        match planned.shapes.get(name) {
            Some(shape) if shape.as_slice() != dims => {
                planned.mismatches.push(format!("{name}: file has {shape:?}, model expects {dims:?}"));
                true
            }
            _ => false,
        }
    })
}

/// Runs `build` (a model constructor) with every parameter's shape checked against the headers
/// of the checkpoint in `dir` before it is allocated: a `config.json` that disagrees with its
/// weights (say `n_positions` of 20,000,000 over a 128-position file) fails here, listing each
/// mismatch, instead of allocating the model first.
pub fn build_checked<T>(dir: &Path, build: impl FnOnce() -> Result<T>) -> Result<T> {
    let shapes = header_shapes(dir)?;
    PLANNED.with(|p| *p.borrow_mut() = Some(Planned { shapes, mismatches: Vec::new(), created: BTreeSet::new() }));
    let built = build();
    let Some(planned) = PLANNED.with(|p| p.borrow_mut().take()) else { return built };
    if !planned.mismatches.is_empty() {
        // The whole picture, as `load_weights` would give it, but before the weights are read.
        let missing: Vec<String> = planned.created.iter().filter(|n| !planned.shapes.contains_key(*n)).cloned().collect();
        let unexpected: Vec<String> = planned.shapes.keys().filter(|n| !planned.created.contains(*n)).cloned().collect();
        let mut msg = format!("checkpoint {} does not match the model its config.json describes:", dir.display());
        for (what, list) in [("missing", &missing), ("unexpected", &unexpected), ("wrong shape", &planned.mismatches)] {
            if !list.is_empty() {
                push_list(&mut msg, what, list);
            }
        }
        bail!(msg);
    }
    built
}

/// At most this many items of a mismatch list are printed; the rest are counted.
const LIST_LIMIT: usize = 8;

fn push_list(msg: &mut String, what: &str, items: &[String]) {
    msg.push_str(&format!("\n  {what} ({}):", items.len()));
    for item in items.iter().take(LIST_LIMIT) {
        msg.push_str(&format!("\n    {item}"));
    }
    if items.len() > LIST_LIMIT {
        msg.push_str(&format!("\n    … and {} more", items.len() - LIST_LIMIT));
    }
}

/// Copies a checkpoint directory into the backbone variables of `vs` (every variable outside
/// [`WRAPPER_PREFIXES`]). Floats of any width are converted to the variable's kind.
pub fn load_weights(vs: &nn::VarStore, dir: &Path) -> Result<LoadReport> {
    let expected: BTreeMap<String, Tensor> =
        vs.variables().into_iter().filter(|(name, _)| !WRAPPER_PREFIXES.iter().any(|p| name.starts_with(p))).collect();
    let mut report = LoadReport::default();
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut unexpected = Vec::new();
    let mut misshaped = Vec::new();
    let mut bad_dtype = Vec::new();
    let mut non_finite = Vec::new();

    for (path, listed) in weight_files(dir)? {
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: the map is read-only and dropped before this function returns; a checkpoint
        // file being rewritten while we read it is outside what we guard against.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
        let tensors = SafeTensors::deserialize(&mmap).map_err(|e| anyhow!("{}: not a valid safetensors file: {e}", path.display()))?;
        let mut in_file = BTreeSet::new();
        for (raw_name, view) in tensors.tensors() {
            in_file.insert(raw_name.clone());
            let Some(name) = map_name(&raw_name) else {
                report.skipped.push(raw_name);
                continue;
            };
            if let Some(first) = seen.insert(name.clone(), path.clone()) {
                bail!("tensor {name} appears twice: in {} and {}", first.display(), path.display());
            }
            let Some(var) = expected.get(&name) else {
                unexpected.push(format!("{raw_name} (in {})", path.display()));
                continue;
            };
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            if shape != var.size() {
                misshaped.push(format!("{raw_name}: file has {shape:?}, model expects {:?}", var.size()));
                continue;
            }
            let Some(kind) = kind_of(view.dtype()) else {
                bad_dtype.push(format!("{raw_name}: dtype {:?} (expected a float type)", view.dtype()));
                continue;
            };
            let t = Tensor::f_from_data_size(view.data(), &shape, kind)
                .with_context(|| format!("{}: building tensor {raw_name}", path.display()))?;
            // NaN or inf weights would make every output NaN, silently: refuse them here.
            let finite = t
                .f_isfinite()
                .and_then(|f| f.f_all())
                .map(|a| a.int64_value(&[]) != 0)
                .with_context(|| format!("{}: checking {raw_name}", path.display()))?;
            if !finite {
                non_finite.push(raw_name.clone());
                continue;
            }
            tch::no_grad(|| var.shallow_clone().f_copy_(&t))
                .with_context(|| format!("{}: copying {raw_name} into the model", path.display()))?;
            report.loaded += 1;
        }
        if let Some(listed) = listed {
            let absent: Vec<&String> = listed.difference(&in_file).collect();
            if !absent.is_empty() {
                bail!("{INDEX_FILE} says {} holds {absent:?}, but it does not", path.display());
            }
        }
        report.files.push(path);
    }

    let missing: Vec<&String> = expected.keys().filter(|n| !seen.contains_key(*n)).collect();
    // Files list tensors in no fixed order; sorted lists read (and truncate) the same each time.
    unexpected.sort();
    misshaped.sort();
    if !(missing.is_empty() && unexpected.is_empty() && misshaped.is_empty() && bad_dtype.is_empty() && non_finite.is_empty()) {
        let mut msg = format!("checkpoint {} does not match the model:", dir.display());
        for (what, list) in [
            ("missing", missing.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
            ("unexpected", unexpected),
            ("wrong shape", misshaped),
            ("unsupported dtype", bad_dtype),
            ("non-finite values (NaN or inf)", non_finite),
        ] {
            if !list.is_empty() {
                push_list(&mut msg, what, &list);
            }
        }
        bail!(msg);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_with_and_without_prefix() {
        assert_eq!(map_name("transformer.h.0.ln_1.weight").as_deref(), Some("h.0.ln_1.weight"));
        assert_eq!(map_name("wpe.weight").as_deref(), Some("wpe.weight"));
        assert_eq!(map_name("lm_head.weight"), None);
        assert_eq!(map_name("h.3.attn.bias"), None);
        assert_eq!(map_name("transformer.h.3.attn.masked_bias"), None);
        // A real parameter whose name merely contains "bias" is kept.
        assert_eq!(map_name("h.3.attn.c_attn.bias").as_deref(), Some("h.3.attn.c_attn.bias"));
        assert_eq!(map_name("bert.encoder.layer.0.output.dense.bias").as_deref(), Some("encoder.layer.0.output.dense.bias"));
        assert_eq!(map_name("pooler.dense.weight"), None);
        assert_eq!(map_name("embeddings.position_ids"), None);
        assert_eq!(map_name("cls.predictions.bias"), None);
        // Llama: LlamaForCausalLM's `model.` prefix, its LM head and rotary buffers of old files.
        assert_eq!(map_name("model.layers.0.self_attn.q_proj.weight").as_deref(), Some("layers.0.self_attn.q_proj.weight"));
        assert_eq!(map_name("model.embed_tokens.weight").as_deref(), Some("embed_tokens.weight"));
        assert_eq!(map_name("model.layers.3.self_attn.rotary_emb.inv_freq"), None);
        assert_eq!(map_name("model.rotary_emb.inv_freq"), None);
    }
}
