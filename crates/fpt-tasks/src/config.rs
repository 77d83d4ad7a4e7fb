//! Tasks as configuration data, and where their files are looked for.

use crate::arrays::ArraysTask;
use crate::bits::{BitMemory, BitXor};
use crate::cifar::{Cifar10, Variant};
use crate::homology::{Long, RemoteHomology, TestSet};
use crate::image_folder::{Color, Fit, ImageFolder, ImageSettings, ImageSize};
use crate::listops::{GeneratorConfig, ListOps, Overflow, Preprocessing, Tokenizer};
use crate::mnist::Mnist;
use crate::{Padding, Task};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where Debian's `dataset-fashion-mnist` package installs the IDX files.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// One task and its settings. `path` overrides the default data folder
/// (`$FPT_DATA_DIR/<name>`, with `FPT_DATA_DIR` defaulting to `datasets`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TaskConfig {
    BitMemory {
        #[serde(default = "d::bit_memory_n")]
        n: usize,
        #[serde(default = "d::bit_memory_patterns")]
        patterns: usize,
        #[serde(default = "d::bit_memory_patch")]
        patch: usize,
        #[serde(default = "d::half")]
        mask_prob: f64,
        #[serde(default = "d::eval_examples")]
        eval_examples: usize,
    },
    BitXor {
        #[serde(default = "d::xor_n")]
        n: usize,
        #[serde(default = "d::xor_patterns")]
        patterns: usize,
        #[serde(default = "d::eval_examples")]
        eval_examples: usize,
    },
    Listops {
        #[serde(default)]
        path: Option<PathBuf>,
        #[serde(default = "d::max_len")]
        max_len: usize,
        #[serde(default)]
        overflow: Overflow,
        /// "full" (digits, operators and `]`) or "alphanumeric" (the reference's tokenizer,
        /// which loses every `]`).
        #[serde(default)]
        tokenizer: Tokenizer,
        /// "masked" (right padding, lengths to the model), "fixed" (the reference's: every
        /// example padded to `max_len`, the padding read as input) or "batch".
        #[serde(default = "d::masked")]
        padding: Padding,
        /// Generate the data in memory instead of reading files (LRA's algorithm).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        generate: Option<GeneratorConfig>,
    },
    Mnist {
        #[serde(default)]
        path: Option<PathBuf>,
        #[serde(default = "d::patch")]
        patch: usize,
    },
    FashionMnist {
        #[serde(default)]
        path: Option<PathBuf>,
        #[serde(default = "d::patch")]
        patch: usize,
    },
    Cifar10 {
        #[serde(default)]
        path: Option<PathBuf>,
        #[serde(default = "d::patch")]
        patch: usize,
    },
    Cifar10Lra {
        #[serde(default)]
        path: Option<PathBuf>,
    },
    RemoteHomology {
        #[serde(default)]
        path: Option<PathBuf>,
        #[serde(default = "d::max_len")]
        max_len: usize,
        #[serde(default)]
        test_set: TestSet,
        /// Sequences over `max_len`: "drop" (at loading, counted) or "skip_batch" (the
        /// reference's: batches formed by length as TAPE's loader, batches holding one skipped
        /// and counted, accuracy × 0.9739).
        #[serde(default)]
        long: Long,
        /// "masked" (right padding, lengths to the model) or "batch" (the reference's, TAPE's
        /// `collate_fn`: padded to the batch's longest sequence, the padding read as input).
        #[serde(default = "d::masked")]
        padding: Padding,
    },
    /// Your own arrays: `train`/`val`/`test` as .npz, .safetensors or folders of .npy files
    /// (`crate::arrays`).
    Arrays {
        #[serde(default)]
        path: Option<PathBuf>,
        /// Integer token inputs: ids are below this (required for them).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vocab: Option<usize>,
        /// Classes per prediction; by default the largest label + 1.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        classes: Option<usize>,
    },
    /// Your own images in torchvision's ImageFolder layout (`crate::image_folder`).
    ImageFolder {
        #[serde(default)]
        path: Option<PathBuf>,
        /// `size = 32` or `size = [height, width]`; by default the images' own (one) size.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<ImageSize>,
        /// "crop" (cover the size, cut the centre) or "resize" (stretch).
        #[serde(default)]
        fit: Fit,
        /// "rgb" or "grey".
        #[serde(default)]
        color: Color,
        #[serde(default = "d::patch")]
        patch: usize,
        /// The class ids' names in order; by default train/'s class folders, sorted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        classes: Option<Vec<String>>,
    },
}

mod d {
    pub fn bit_memory_n() -> usize {
        1000
    }
    pub fn bit_memory_patterns() -> usize {
        5
    }
    pub fn bit_memory_patch() -> usize {
        50
    }
    pub fn half() -> f64 {
        0.5
    }
    pub fn eval_examples() -> usize {
        1000
    }
    pub fn xor_n() -> usize {
        5
    }
    pub fn xor_patterns() -> usize {
        2
    }
    pub fn max_len() -> usize {
        1024
    }
    pub fn patch() -> usize {
        4
    }
    pub fn masked() -> crate::Padding {
        crate::Padding::Masked
    }
}

pub const TASK_NAMES: [&str; 10] =
    ["bit-memory", "bit-xor", "listops", "mnist", "fashion-mnist", "cifar10", "cifar10-lra", "remote-homology", "arrays", "image-folder"];

impl TaskConfig {
    /// The paper's settings for a task name, reading from `path` (or the default folder).
    pub fn named(name: &str, path: Option<PathBuf>) -> Result<TaskConfig> {
        let mut table = toml_like(name)?;
        if let Some(p) = path {
            table.set_path(p)?;
        }
        Ok(table)
    }

    /// Points the task at another data folder; refused for the generated tasks.
    pub fn set_path(&mut self, p: PathBuf) -> Result<()> {
        let name = self.name();
        match self {
            TaskConfig::Listops { path, .. }
            | TaskConfig::Mnist { path, .. }
            | TaskConfig::FashionMnist { path, .. }
            | TaskConfig::Cifar10 { path, .. }
            | TaskConfig::Cifar10Lra { path }
            | TaskConfig::RemoteHomology { path, .. }
            | TaskConfig::Arrays { path, .. }
            | TaskConfig::ImageFolder { path, .. } => *path = Some(p),
            TaskConfig::BitMemory { .. } | TaskConfig::BitXor { .. } => {
                bail!("task {name} is generated from the seed; it reads no files (drop --path)")
            }
        }
        Ok(())
    }

    pub fn name(&self) -> &'static str {
        match self {
            TaskConfig::BitMemory { .. } => "bit-memory",
            TaskConfig::BitXor { .. } => "bit-xor",
            TaskConfig::Listops { .. } => "listops",
            TaskConfig::Mnist { .. } => "mnist",
            TaskConfig::FashionMnist { .. } => "fashion-mnist",
            TaskConfig::Cifar10 { .. } => "cifar10",
            TaskConfig::Cifar10Lra { .. } => "cifar10-lra",
            TaskConfig::RemoteHomology { .. } => "remote-homology",
            TaskConfig::Arrays { .. } => "arrays",
            TaskConfig::ImageFolder { .. } => "image-folder",
        }
    }
}

fn toml_like(name: &str) -> Result<TaskConfig> {
    let value = serde_json::json!({ "name": name });
    serde_json::from_value(value).map_err(|_| anyhow::anyhow!("unknown task {name:?}; expected one of {}", TASK_NAMES.join(", ")))
}

/// The data folder of a task: the configured path, else `$FPT_DATA_DIR/<name>` (default
/// `datasets/<name>`); Fashion-MNIST falls back to Debian's package folder when that is absent.
pub fn data_dir(name: &str, configured: &Option<PathBuf>) -> PathBuf {
    if let Some(p) = configured {
        return p.clone();
    }
    let root = std::env::var_os("FPT_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("datasets"));
    let dir = root.join(name);
    if name == "fashion-mnist" && !dir.exists() && Path::new(DEBIAN_FASHION_MNIST).is_dir() {
        return PathBuf::from(DEBIAN_FASHION_MNIST);
    }
    dir
}

/// Fails when something other than a folder stands at a task's data path (a file given as
/// `path`, say); a missing folder is left to the loader, which names the file it looked for.
fn check_data_dir(name: &str, dir: &Path) -> Result<PathBuf> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => bail!("{}: is not a folder, expected the data folder of task {name}", dir.display()),
        _ => Ok(dir.to_path_buf()),
    }
}

/// Builds a task. `seed` drives the generated tasks' data.
pub fn load_task(cfg: &TaskConfig, seed: u64) -> Result<Arc<dyn Task>> {
    let name = cfg.name();
    let folder = |dir_name: &str, path: &Option<PathBuf>| check_data_dir(name, &data_dir(dir_name, path));
    let task: Arc<dyn Task> = match cfg {
        TaskConfig::BitMemory { n, patterns, patch, mask_prob, eval_examples } => {
            Arc::new(BitMemory::new(*n, *patterns, *patch, *mask_prob, *eval_examples, seed)?)
        }
        TaskConfig::BitXor { n, patterns, eval_examples } => Arc::new(BitXor::new(*n, *patterns, *eval_examples, seed)?),
        TaskConfig::Listops { generate: Some(_), path: Some(_), .. } => bail!("listops: give either path or generate, not both"),
        TaskConfig::Listops { path, max_len, overflow, tokenizer, padding, generate } => {
            let pre = Preprocessing { max_len: *max_len, overflow: *overflow, tokenizer: *tokenizer, padding: *padding };
            match generate {
                Some(spec) => Arc::new(ListOps::generated_with(spec, &pre)?),
                None => Arc::new(ListOps::load_with(&folder(name, path)?, &pre)?),
            }
        }
        TaskConfig::Mnist { path, patch } | TaskConfig::FashionMnist { path, patch } => {
            Arc::new(Mnist::load(name, &folder(name, path)?, *patch)?)
        }
        TaskConfig::Cifar10 { path, patch } => Arc::new(Cifar10::load(&folder("cifar10", path)?, Variant::Patches { patch: *patch })?),
        // Same files as CIFAR-10.
        TaskConfig::Cifar10Lra { path } => Arc::new(Cifar10::load(&folder("cifar10", path)?, Variant::Lra)?),
        TaskConfig::RemoteHomology { path, max_len, test_set, long, padding } => {
            Arc::new(RemoteHomology::load_with(&folder(name, path)?, *max_len, *test_set, *long, *padding)?)
        }
        TaskConfig::Arrays { path, vocab, classes } => Arc::new(ArraysTask::load(&folder(name, path)?, *vocab, *classes)?),
        TaskConfig::ImageFolder { path, size, fit, color, patch, classes } => {
            let settings = ImageSettings { size: size.map(ImageSize::height_width), fit: *fit, color: *color, patch: *patch };
            Arc::new(ImageFolder::load(&folder(name, path)?, &settings, classes.as_deref())?)
        }
    };
    Ok(task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_to_paper_defaults() {
        assert_eq!(
            TaskConfig::named("bit-memory", None).unwrap(),
            TaskConfig::BitMemory { n: 1000, patterns: 5, patch: 50, mask_prob: 0.5, eval_examples: 1000 }
        );
        for name in TASK_NAMES {
            assert_eq!(TaskConfig::named(name, None).unwrap().name(), name);
        }
        assert!(TaskConfig::named("imagenet", None).unwrap_err().to_string().contains("unknown task"));
        assert!(TaskConfig::named("bit-xor", Some("x".into())).is_err());
    }
}
