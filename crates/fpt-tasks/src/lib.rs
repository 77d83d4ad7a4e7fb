//! The paper's tasks: data formats, generators, patching, augmentation and batches.
//!
//! Every task has one shape ([`Task`]): it states its input (dense features or token ids), its
//! sequence length, what is read out and how many classes each prediction has, and writes one
//! example at a time into buffers. [`batch`] turns examples into tensors on a device, shuffles
//! training epochs from a seed, and walks a whole split for evaluation. This crate knows nothing
//! of models.

pub mod augment;
pub mod batch;
pub mod bits;
pub mod cifar;
pub mod config;
pub mod homology;
pub mod idx;
pub mod listops;
pub mod mnist;
pub mod patch;
pub mod rng;
pub mod stats;

pub use batch::{loss_and_correct, Batch, EvalBatches, TrainStream};
pub use config::{load_task, TaskConfig};

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// Fails unless `path` is a regular file (or a link to one): `missing` is the error when nothing
/// is there; a directory, FIFO or device there is named as such (reading a FIFO would block).
/// `what` says what the file should be.
pub(crate) fn require_file(path: &Path, what: &str, missing: impl FnOnce() -> String) -> anyhow::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(m) if m.is_dir() => anyhow::bail!("{}: is a directory, expected {what}", path.display()),
        Ok(_) => anyhow::bail!("{}: is not a regular file, expected {what}", path.display()),
        Err(_) => Err(anyhow::anyhow!(missing())),
    }
}

/// What one token of a task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// `dim` float features per token.
    Dense { dim: usize },
    /// One token id below `vocab` per token.
    Tokens { vocab: usize },
}

/// The shape of a task: everything a model needs to know to be built for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub name: String,
    pub input: InputKind,
    /// Tokens per example (padded to this length where examples vary).
    pub seq_len: usize,
    /// Predictions per example: 1 for classification, one per bit for the bit tasks.
    pub predictions: usize,
    /// Classes per prediction.
    pub classes: usize,
    /// Final tokens the model reads out; `predictions` is a multiple of it.
    pub readout_tokens: usize,
}

impl TaskSpec {
    /// Logits the model emits per read-out token.
    pub fn outputs_per_readout_token(&self) -> usize {
        self.predictions / self.readout_tokens * self.classes
    }

    /// Values per example in the input buffer.
    pub fn input_len(&self) -> usize {
        match self.input {
            InputKind::Dense { dim } => self.seq_len * dim,
            InputKind::Tokens { .. } => self.seq_len,
        }
    }
}

/// A data split. Generated tasks draw the training stream fresh from the seed and keep a fixed,
/// seeded evaluation set for `Val` and `Test`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where one example's input goes.
pub enum InputSlot<'a> {
    Dense(&'a mut [f32]),
    Tokens(&'a mut [i64]),
}

/// A task: a spec plus examples by (split, index).
pub trait Task: Send + Sync {
    fn spec(&self) -> &TaskSpec;

    /// Examples in a split; `None` for a split generated without end (the bit tasks' training
    /// stream), `Some(0)` for a split the data set does not have.
    fn len(&self, split: Split) -> Option<usize>;

    /// Writes example `index` of `split` into `input` (`spec().input_len()` values) and
    /// `targets` (`spec().predictions` class ids). `rng` drives augmentation and generation;
    /// callers seed it per example so results do not depend on thread scheduling.
    fn write_example(
        &self,
        split: Split,
        index: usize,
        augment: bool,
        rng: &mut rng::TaskRng,
        input: InputSlot<'_>,
        targets: &mut [i64],
    );

    /// Tokens of example `index` before padding (what `fpt data check` reports).
    fn example_len(&self, _split: Split, _index: usize) -> usize {
        self.spec().seq_len
    }

    /// Per-split facts worth printing when checking a data set (files read, examples dropped or
    /// truncated, …).
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}
