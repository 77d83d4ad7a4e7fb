//! Batches: examples assembled in parallel (rayon) into tensors on a device, seeded training
//! streams reshuffled every epoch, whole-split evaluation passes, and the loss and accuracy.
//!
//! Variable-length token tasks are right-padded ([`Padding`]); with [`Padding::Masked`] and
//! [`Padding::Batch`] a batch is as wide as its longest example, and with `Masked` it carries
//! each example's length. A task with [`LengthBatching`] (the reference's remote homology) has
//! its batches formed by length, as TAPE's loader forms them, and batches holding an example
//! over the limit skipped and counted ([`Skipped`]).

use crate::rng::{purpose, stream};
use crate::{InputKind, InputSlot, LengthBatching, Split, Task, TaskSpec};
use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// Model inputs and targets for a batch of examples.
#[derive(Debug)]
pub struct Batch {
    /// `[batch, seq, dim]` float or `[batch, seq]` int64 ids.
    pub x: Tensor,
    /// `[batch, predictions]` int64 class ids.
    pub y: Tensor,
    pub len: usize,
    /// `[batch]` int64: each example's real tokens (the rest of its row is padding), for tasks
    /// with [`crate::Padding::Masked`]; `None` where every position is input.
    pub lengths: Option<Tensor>,
}

impl Batch {
    /// Examples `start..start + n` of the batch (a micro-batch), as wide as the batch.
    pub fn narrow(&self, start: usize, n: usize) -> Batch {
        let (s, n64) = (start as i64, n as i64);
        Batch {
            x: self.x.narrow(0, s, n64),
            y: self.y.narrow(0, s, n64),
            len: n,
            lengths: self.lengths.as_ref().map(|l| l.narrow(0, s, n64)),
        }
    }
}

/// Builds the batch of `indices` of `split`. Example `i` of the batch is augmented (when
/// `augment`) with a stream seeded by `(seed, step, i)`.
pub fn assemble(task: &dyn Task, split: Split, indices: &[usize], augment: bool, seed: u64, step: u64, device: Device) -> Batch {
    let spec = task.spec();
    let padding = spec.padding;
    let lens: Vec<usize> = if padding.trims_batches() || padding.has_lengths() {
        indices.iter().map(|&i| task.example_len(split, i).clamp(1, spec.seq_len.max(1))).collect()
    } else {
        Vec::new()
    };
    let width = if padding.trims_batches() { lens.iter().copied().max().unwrap_or(1) } else { spec.seq_len };
    let n = indices.len();
    let per_y = spec.predictions;
    let per_x = match spec.input {
        InputKind::Dense { dim } => width * dim,
        InputKind::Tokens { .. } => width,
    };
    let mut y = vec![0i64; n * per_y];
    let make_rng = |i: usize| stream(seed, &[purpose::AUGMENT, split as u64, step, i as u64]);
    let x =
        match spec.input {
            InputKind::Dense { dim } => {
                let mut x = vec![0f32; n * per_x];
                x.par_chunks_mut(per_x).zip(y.par_chunks_mut(per_y)).zip(indices.par_iter()).enumerate().for_each(
                    |(i, ((xs, ys), &index))| task.write_example(split, index, augment, &mut make_rng(i), InputSlot::Dense(xs), ys),
                );
                Tensor::from_slice(&x).reshape([n as i64, width as i64, dim as i64])
            }
            InputKind::Tokens { .. } => {
                let mut x = vec![0i64; n * per_x];
                x.par_chunks_mut(per_x).zip(y.par_chunks_mut(per_y)).zip(indices.par_iter()).enumerate().for_each(
                    |(i, ((xs, ys), &index))| task.write_example(split, index, augment, &mut make_rng(i), InputSlot::Tokens(xs), ys),
                );
                Tensor::from_slice(&x).reshape([n as i64, width as i64])
            }
        };
    let y = Tensor::from_slice(&y).reshape([n as i64, per_y as i64]);
    let lengths = padding.has_lengths().then(|| {
        let l: Vec<i64> = lens.iter().map(|&l| l as i64).collect();
        to_device_async(Tensor::from_slice(&l), device)
    });
    Batch { x: to_device_async(x, device), y: to_device_async(y, device), len: n, lengths }
}

/// Moves a freshly assembled host tensor to `device`. For CUDA the copy goes through pinned
/// memory and is queued without blocking the host (a pageable copy would wait for the GPU to
/// drain its queue every step); libtorch keeps the pinned buffer alive until the copy ran.
fn to_device_async(t: Tensor, device: Device) -> Tensor {
    match device {
        Device::Cuda(_) => t.pin_memory(device).to_device_(device, t.kind(), true, false),
        _ => t.to_device(device),
    }
}

/// Batches a loader left out because they hold an example over the length limit
/// ([`LengthBatching::skip_longer_than`]), and the examples in them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub batches: u64,
    pub examples: u64,
}

/// Cuts `indices` (already in the order batches are to be formed) into batches of
/// `batch_size` (`keep_partial`: the last, shorter one too) and sets aside those holding an
/// example longer than `limit`.
fn cut_batches(
    task: &dyn Task,
    split: Split,
    indices: &[usize],
    batch_size: usize,
    keep_partial: bool,
    limit: Option<usize>,
) -> (Vec<Vec<usize>>, Skipped) {
    let mut kept = Vec::new();
    let mut skipped = Skipped::default();
    for chunk in indices.chunks(batch_size) {
        if chunk.len() < batch_size && !keep_partial {
            continue;
        }
        if limit.is_some_and(|l| chunk.iter().any(|&i| task.example_len(split, i) > l)) {
            skipped.batches += 1;
            skipped.examples += chunk.len() as u64;
        } else {
            kept.push(chunk.to_vec());
        }
    }
    (kept, skipped)
}

/// `indices` sorted by example length (stable: equal lengths keep their order).
fn by_length(task: &dyn Task, split: Split, indices: &mut [usize]) {
    indices.sort_by_key(|&i| task.example_len(split, i));
}

/// One epoch of length-formed training batches.
struct BucketEpoch {
    epoch: u64,
    /// Step of `batches[0]`.
    first_step: u64,
    batches: Vec<Vec<usize>>,
    /// Skipped in epochs 0..=epoch.
    skipped: Skipped,
}

/// The training stream: epochs of a seeded permutation of the training split, cut into
/// batches; a batch that reaches the end of an epoch continues into the next permutation.
/// The position is a pure function of the step, so a resumed run continues exactly
/// (`TrainStream::at_step`). Generated tasks (no fixed training split) draw example `k` of the
/// stream from the seed directly.
///
/// A task with [`LengthBatching`] gets TAPE's `BucketBatchSampler` instead: each epoch's
/// permutation in buckets of `bucket_batches × batch_size` examples, each bucket sorted by
/// length and cut into full batches (an epoch's last, partial batch is left out), the batches
/// shuffled within their bucket; batches holding an example over the limit are skipped, and
/// the next one is used.
pub struct TrainStream {
    task: Arc<dyn Task>,
    batch_size: usize,
    seed: u64,
    augment: bool,
    step: u64,
    order_epoch: Option<u64>,
    order: Vec<usize>,
    length_batching: Option<LengthBatching>,
    bucket_epoch: Option<BucketEpoch>,
}

impl TrainStream {
    /// Fails on a batch size of 0, an empty training split, and a finite training split smaller
    /// than one batch (every batch would repeat examples; `batch_size` is `train.batch_size`).
    /// With length batching, fails when the examples over the limit could fill every batch of
    /// an epoch (no batch would be left to train on).
    pub fn new(task: Arc<dyn Task>, batch_size: usize, seed: u64, augment: bool) -> Result<Self> {
        let name = &task.spec().name;
        if batch_size == 0 {
            bail!("train.batch_size 0 for task {name}: the batch size must be at least 1");
        }
        let n = match task.len(Split::Train) {
            Some(0) => bail!("task {name} has an empty training split"),
            Some(n) if batch_size > n => {
                bail!("train.batch_size {batch_size} is larger than the training split of task {name} ({n} examples)")
            }
            other => other,
        };
        let length_batching = task.length_batching();
        if let (Some(lb), Some(n)) = (length_batching, n) {
            if lb.bucket_batches == 0 {
                bail!("task {name}: length batching with buckets of 0 batches; expected at least 1");
            }
            if let Some(limit) = lb.skip_longer_than {
                let over = (0..n).filter(|&i| task.example_len(Split::Train, i) > limit).count();
                if over >= n / batch_size {
                    bail!(
                        "task {name}: {over} training examples are longer than {limit} tokens, as many as the {} batches of {batch_size} an epoch holds; \
                         every batch could hold one and be skipped (lower train.batch_size, or drop long examples instead)",
                        n / batch_size
                    );
                }
            }
        }
        Ok(TrainStream {
            task,
            batch_size,
            seed,
            augment,
            step: 0,
            order_epoch: None,
            order: Vec::new(),
            length_batching: length_batching.filter(|_| n.is_some()),
            bucket_epoch: None,
        })
    }

    /// Positions the stream so that the next batch is the one of step `step`.
    pub fn at_step(mut self, step: u64) -> Self {
        self.step = step;
        self
    }

    pub fn step(&self) -> u64 {
        self.step
    }

    /// The epoch (0-based) the next batch starts in; 0 for generated tasks.
    pub fn epoch(&mut self) -> u64 {
        if self.length_batching.is_some() {
            let step = self.step;
            return self.bucket_epoch_for(step).epoch;
        }
        match self.task.len(Split::Train) {
            Some(n) => self.step * self.batch_size as u64 / n as u64,
            None => 0,
        }
    }

    /// Training batches skipped for an example over the limit, from the first epoch through
    /// the one the next batch is in (zero without length batching).
    pub fn skipped(&mut self) -> Skipped {
        if self.length_batching.is_none() {
            return Skipped::default();
        }
        let step = self.step;
        self.bucket_epoch_for(step).skipped
    }

    fn ensure_order(&mut self, epoch: u64, n: usize) {
        if self.order_epoch != Some(epoch) {
            self.order = (0..n).collect();
            self.order.shuffle(&mut stream(self.seed, &[purpose::EPOCH_ORDER, epoch]));
            self.order_epoch = Some(epoch);
        }
    }

    /// The kept batches of one epoch formed by length, and what was skipped in it.
    fn bucket_batches(&self, epoch: u64, lb: LengthBatching) -> (Vec<Vec<usize>>, Skipped) {
        let task = self.task.as_ref();
        let n = task.len(Split::Train).unwrap_or(0);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut stream(self.seed, &[purpose::EPOCH_ORDER, epoch]));
        let mut kept = Vec::new();
        let mut skipped = Skipped::default();
        for (b, bucket) in order.chunks_mut(self.batch_size * lb.bucket_batches).enumerate() {
            by_length(task, Split::Train, bucket);
            let (mut batches, s) = cut_batches(task, Split::Train, bucket, self.batch_size, false, lb.skip_longer_than);
            batches.shuffle(&mut stream(self.seed, &[purpose::BUCKET_ORDER, epoch, b as u64]));
            kept.extend(batches);
            skipped.batches += s.batches;
            skipped.examples += s.examples;
        }
        (kept, skipped)
    }

    /// The length-formed epoch holding `step`, walking from epoch 0 (or the cached epoch) on.
    fn bucket_epoch_for(&mut self, step: u64) -> &BucketEpoch {
        let lb = self.length_batching.expect("called with length batching only");
        let cached = self.bucket_epoch.as_ref().is_some_and(|e| e.first_step <= step);
        if !cached {
            let (batches, skipped) = self.bucket_batches(0, lb);
            self.bucket_epoch = Some(BucketEpoch { epoch: 0, first_step: 0, batches, skipped });
        }
        loop {
            let e = self.bucket_epoch.as_ref().expect("set above");
            if step < e.first_step + e.batches.len() as u64 {
                break;
            }
            let (epoch, first_step, total) = (e.epoch + 1, e.first_step + e.batches.len() as u64, e.skipped);
            let (batches, s) = self.bucket_batches(epoch, lb);
            let skipped = Skipped { batches: total.batches + s.batches, examples: total.examples + s.examples };
            self.bucket_epoch = Some(BucketEpoch { epoch, first_step, batches, skipped });
        }
        self.bucket_epoch.as_ref().expect("set above")
    }

    /// The indices of the next batch, and advances the stream.
    pub fn next_indices(&mut self) -> Vec<usize> {
        if self.length_batching.is_some() {
            let step = self.step;
            let e = self.bucket_epoch_for(step);
            let indices = e.batches[(step - e.first_step) as usize].clone();
            self.step += 1;
            return indices;
        }
        let start = self.step * self.batch_size as u64;
        let indices = match self.task.len(Split::Train) {
            None => (start..start + self.batch_size as u64).map(|k| k as usize).collect(),
            Some(n) => (start..start + self.batch_size as u64)
                .map(|k| {
                    let (epoch, pos) = (k / n as u64, (k % n as u64) as usize);
                    self.ensure_order(epoch, n);
                    self.order[pos]
                })
                .collect(),
        };
        self.step += 1;
        indices
    }

    pub fn next_batch(&mut self, device: Device) -> Batch {
        let step = self.step;
        let indices = self.next_indices();
        assemble(self.task.as_ref(), Split::Train, &indices, self.augment, self.seed, step, device)
    }
}

/// A pass over a whole split, in batches: in order, the last, partial batch included, so every
/// example is visited exactly once. A task with [`LengthBatching`] has the split sorted by
/// length first (TAPE's loader on the reference's 736 validation sequences: one bucket holds
/// them all), and batches holding an example over the limit are skipped: [`EvalBatches::skipped`].
pub struct EvalBatches {
    task: Arc<dyn Task>,
    split: Split,
    batches: std::vec::IntoIter<Vec<usize>>,
    len: usize,
    skipped: Skipped,
    device: Device,
}

impl EvalBatches {
    pub fn new(task: Arc<dyn Task>, split: Split, batch_size: usize, device: Device) -> Result<Self> {
        let Some(len) = task.len(split) else {
            bail!("split {split} of task {} has no end; it cannot be evaluated whole", task.spec().name);
        };
        if batch_size == 0 {
            bail!("train.eval_batch_size 0 for task {}: the evaluation batch size must be at least 1", task.spec().name);
        }
        let mut indices: Vec<usize> = (0..len).collect();
        let limit = match task.length_batching() {
            Some(lb) => {
                by_length(task.as_ref(), split, &mut indices);
                lb.skip_longer_than
            }
            None => None,
        };
        let (batches, skipped) = cut_batches(task.as_ref(), split, &indices, batch_size, true, limit);
        let len = batches.iter().map(Vec::len).sum();
        Ok(EvalBatches { task, split, batches: batches.into_iter(), len, skipped, device })
    }

    /// Examples the pass visits (the split, less what was skipped).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Batches (and their examples) left out for holding an example over the length limit.
    pub fn skipped(&self) -> Skipped {
        self.skipped
    }
}

impl Iterator for EvalBatches {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let indices = self.batches.next()?;
        Some(assemble(self.task.as_ref(), self.split, &indices, false, 0, 0, self.device))
    }
}

/// Mean cross-entropy over every prediction of the batch, and the number of correct
/// predictions (a scalar tensor, left on the device so no host sync is forced).
/// `logits`: `[batch, classes]` (one read-out token) or `[batch, readout_tokens, outputs]`.
pub fn loss_and_correct(spec: &TaskSpec, logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let batch = targets.size().first().copied().unwrap_or(0);
    let expected = batch * (spec.predictions * spec.classes) as i64;
    if logits.numel() as i64 != expected || targets.numel() as i64 != batch * spec.predictions as i64 {
        bail!(
            "task {}: logits {:?} and targets {:?} do not fit {} predictions of {} classes",
            spec.name,
            logits.size(),
            targets.size(),
            spec.predictions,
            spec.classes
        );
    }
    let flat = logits.reshape([-1, spec.classes as i64]);
    let target = targets.reshape([-1]);
    let loss = flat.to_kind(Kind::Float).cross_entropy_for_logits(&target);
    let correct = flat.argmax(-1, false).eq_tensor(&target).sum(Kind::Int64);
    Ok((loss, correct))
}
