//! Batches: examples assembled in parallel (rayon) into tensors on a device, seeded training
//! streams reshuffled every epoch, whole-split evaluation passes, and the loss and accuracy.

use crate::rng::{purpose, stream};
use crate::{InputKind, InputSlot, Split, Task, TaskSpec};
use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use rayon::prelude::*;
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
}

/// Builds the batch of `indices` of `split`. Example `i` of the batch is augmented (when
/// `augment`) with a stream seeded by `(seed, step, i)`.
pub fn assemble(
    task: &dyn Task,
    split: Split,
    indices: &[usize],
    augment: bool,
    seed: u64,
    step: u64,
    device: Device,
) -> Batch {
    let spec = task.spec();
    let (n, per_x, per_y) = (indices.len(), spec.input_len(), spec.predictions);
    let mut y = vec![0i64; n * per_y];
    let make_rng = |i: usize| stream(seed, &[purpose::AUGMENT, split as u64, step, i as u64]);
    let x = match spec.input {
        InputKind::Dense { dim } => {
            let mut x = vec![0f32; n * per_x];
            x.par_chunks_mut(per_x)
                .zip(y.par_chunks_mut(per_y))
                .zip(indices.par_iter())
                .enumerate()
                .for_each(|(i, ((xs, ys), &index))| {
                    task.write_example(split, index, augment, &mut make_rng(i), InputSlot::Dense(xs), ys)
                });
            Tensor::from_slice(&x).reshape([n as i64, spec.seq_len as i64, dim as i64])
        }
        InputKind::Tokens { .. } => {
            let mut x = vec![0i64; n * per_x];
            x.par_chunks_mut(per_x)
                .zip(y.par_chunks_mut(per_y))
                .zip(indices.par_iter())
                .enumerate()
                .for_each(|(i, ((xs, ys), &index))| {
                    task.write_example(split, index, augment, &mut make_rng(i), InputSlot::Tokens(xs), ys)
                });
            Tensor::from_slice(&x).reshape([n as i64, spec.seq_len as i64])
        }
    };
    let y = Tensor::from_slice(&y).reshape([n as i64, per_y as i64]);
    Batch { x: to_device_async(x, device), y: to_device_async(y, device), len: n }
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

/// The training stream: epochs of a seeded permutation of the training split, cut into
/// batches; a batch that reaches the end of an epoch continues into the next permutation.
/// The position is a pure function of the step, so a resumed run continues exactly
/// (`TrainStream::at_step`). Generated tasks (no fixed training split) draw example `k` of the
/// stream from the seed directly.
pub struct TrainStream {
    task: Arc<dyn Task>,
    batch_size: usize,
    seed: u64,
    augment: bool,
    step: u64,
    order_epoch: Option<u64>,
    order: Vec<usize>,
}

impl TrainStream {
    /// Fails on a batch size of 0, an empty training split, and a finite training split smaller
    /// than one batch (every batch would repeat examples; `batch_size` is `train.batch_size`).
    pub fn new(task: Arc<dyn Task>, batch_size: usize, seed: u64, augment: bool) -> Result<Self> {
        let name = &task.spec().name;
        if batch_size == 0 {
            bail!("train.batch_size 0 for task {name}: the batch size must be at least 1");
        }
        match task.len(Split::Train) {
            Some(0) => bail!("task {name} has an empty training split"),
            Some(n) if batch_size > n => {
                bail!("train.batch_size {batch_size} is larger than the training split of task {name} ({n} examples)")
            }
            _ => {}
        }
        Ok(TrainStream { task, batch_size, seed, augment, step: 0, order_epoch: None, order: Vec::new() })
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
    pub fn epoch(&self) -> u64 {
        match self.task.len(Split::Train) {
            Some(n) => self.step * self.batch_size as u64 / n as u64,
            None => 0,
        }
    }

    fn ensure_order(&mut self, epoch: u64, n: usize) {
        if self.order_epoch != Some(epoch) {
            self.order = (0..n).collect();
            self.order.shuffle(&mut stream(self.seed, &[purpose::EPOCH_ORDER, epoch]));
            self.order_epoch = Some(epoch);
        }
    }

    /// The indices of the next batch, and advances the stream.
    pub fn next_indices(&mut self) -> Vec<usize> {
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

/// A pass over a whole split in order, in batches; the last, partial batch is included, so
/// every example is visited exactly once.
pub struct EvalBatches {
    task: Arc<dyn Task>,
    split: Split,
    batch_size: usize,
    next: usize,
    len: usize,
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
        Ok(EvalBatches { task, split, batch_size, next: 0, len, device })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Iterator for EvalBatches {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.len {
            return None;
        }
        let end = (self.next + self.batch_size).min(self.len);
        let indices: Vec<usize> = (self.next..end).collect();
        self.next = end;
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
