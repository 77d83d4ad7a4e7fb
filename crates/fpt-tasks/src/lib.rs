//! The paper's tasks: data formats, generators, patching, augmentation and batches.
//!
//! Every task has one shape ([`Task`]): it states its input (dense features or token ids), its
//! sequence length, what is read out and how many classes each prediction has, and writes one
//! example at a time into buffers. [`batch`] turns examples into tensors on a device, shuffles
//! training epochs from a seed, and walks a whole split for evaluation. This crate knows nothing
//! of models.

pub mod arrays;
pub mod augment;
pub mod batch;
pub mod bits;
pub mod cifar;
pub mod config;
pub mod homology;
pub mod idx;
pub mod image_folder;
pub mod listops;
pub mod mnist;
pub mod patch;
pub mod pinned;
pub mod rng;
pub mod stats;

pub use batch::{loss_and_correct, Batch, EvalBatches, Skipped, TrainStream};
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
    /// How examples shorter than `seq_len` are padded, and what the model makes of the padding.
    #[serde(default)]
    pub padding: Padding,
}

/// How a task whose examples differ in length pads them, and what the model is to make of the
/// padding. Every padded layout pads on the right: an example's tokens sit at positions
/// `0..len`, so positions never shift with an example's length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    /// Every example is exactly `seq_len` tokens: nothing is padded (images, bits).
    #[default]
    None,
    /// The project's layout for variable-length token tasks: the padding id after the real
    /// tokens, each batch cut to its longest example, and the batch carries every example's
    /// length ([`Batch::lengths`]), so the model keeps the padding out of what it reads (a
    /// causal backbone reads out at the last real token; a bidirectional one also masks the
    /// padding out of attention: `fpt_model::Fpt::forward_padded`).
    Masked,
    /// The reference's ListOps (`padded_batch` to `max_length`): every example right-padded to
    /// `seq_len`; the padding is input like any other token, and the read-out is the final
    /// position (`x[:, -1]`), a pad whenever the example is shorter.
    Fixed,
    /// The reference's remote homology (TAPE's `collate_fn`): right-padded to the batch's
    /// longest example; the padding is input like any other token, and the read-out is the
    /// batch's final position.
    Batch,
}

impl Padding {
    /// Whether batches carry per-example lengths for the model.
    pub fn has_lengths(self) -> bool {
        self == Padding::Masked
    }

    /// Whether a batch is as wide as its longest example (else `seq_len`).
    pub fn trims_batches(self) -> bool {
        matches!(self, Padding::Masked | Padding::Batch)
    }
}

impl fmt::Display for Padding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Padding::None => "none",
            Padding::Masked => "masked",
            Padding::Fixed => "fixed",
            Padding::Batch => "batch",
        })
    }
}

/// What loading did to one split: examples in the source, kept, dropped, truncated, and kept
/// over the length limit (only batches that hold none of those are used: [`LengthBatching`]).
/// The run's `summary.json` and the results table report these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCounts {
    pub split: Split,
    /// Examples in the file (or drawn by the generator).
    pub source: usize,
    /// Examples the split holds after loading.
    pub kept: usize,
    /// Left out at loading (`rule` says why).
    pub dropped: usize,
    /// Kept, cut to the length limit.
    pub truncated: usize,
    /// Kept whole although over the length limit: every batch holding one is skipped.
    #[serde(default)]
    pub over_limit: usize,
    /// The rule applied, e.g. "longer than 1024 tokens dropped".
    pub rule: String,
}

/// Batches formed by example length, as TAPE's data loader forms them (the reference's remote
/// homology): see [`TrainStream`] and [`EvalBatches`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LengthBatching {
    /// Training buckets hold this many batches (TAPE's `bucket_size_multiplier`, 100).
    pub bucket_batches: usize,
    /// Batches holding an example longer than this many tokens are skipped and counted (the
    /// reference's `while seq_len > self.max_seq_len` loop).
    pub skip_longer_than: Option<usize>,
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

    /// Writes example `index` of `split` into `input` and `targets` (`spec().predictions` class
    /// ids). `input` holds `spec().input_len()` values, or, for a task with
    /// [`Padding::Masked`] or [`Padding::Batch`], the batch's width (at least this example's
    /// length, capped at `seq_len`): real tokens first, then the padding id. `rng` drives augmentation and generation;
    /// callers seed it per example so results do not depend on thread scheduling.
    fn write_example(&self, split: Split, index: usize, augment: bool, rng: &mut rng::TaskRng, input: InputSlot<'_>, targets: &mut [i64]);

    /// Tokens of example `index` before padding (what `fpt data check` reports).
    fn example_len(&self, _split: Split, _index: usize) -> usize {
        self.spec().seq_len
    }

    /// Per-split facts worth printing when checking a data set (files read, examples dropped or
    /// truncated, …).
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }

    /// Per-split counts of what loading changed (dropped, truncated, kept over the limit); empty
    /// for tasks that keep every example as it is.
    fn counts(&self) -> Vec<SplitCounts> {
        Vec::new()
    }

    /// Batches formed by example length instead of in order (the reference's remote homology).
    fn length_batching(&self) -> Option<LengthBatching> {
        None
    }

    /// The factor reported accuracy is multiplied by (1 but for the reference's remote
    /// homology, which scales by the fraction of examples its loader skipped: 0.9739).
    fn accuracy_scale(&self) -> f64 {
        1.0
    }

    /// What a trained run keeps about its data ([`DataFacts`]); empty for the paper's tasks.
    fn facts(&self) -> DataFacts {
        DataFacts::default()
    }
}

/// What a trained run keeps about the data it was trained on, so that evaluating or predicting
/// on other data maps classes by name and prepares inputs the same way
/// ([`TaskConfig::pin_to_run`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFacts {
    /// The class ids' names in order (`image-folder`: the class folders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_names: Option<Vec<String>>,
    /// `[height, width]` of the prepared images (`image-folder`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<[usize; 2]>,
}
