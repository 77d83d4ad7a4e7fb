//! Per-split statistics: how `fpt data check` describes a data set.

use crate::rng::stream;
use crate::{InputSlot, Split, Task};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct SplitStats {
    pub split: Split,
    pub examples: usize,
    /// Examples per class of their first prediction.
    pub per_class: BTreeMap<i64, usize>,
    pub min_len: usize,
    pub max_len: usize,
    pub mean_len: f64,
}

/// Visits every example of `split` once (no augmentation).
pub fn split_stats(task: &dyn Task, split: Split) -> Option<SplitStats> {
    let n = task.len(split)?;
    let spec = task.spec();
    let mut per_class = BTreeMap::new();
    let (mut min_len, mut max_len, mut sum) = (usize::MAX, 0, 0usize);
    let mut dense = vec![0f32; spec.input_len()];
    let mut tokens = vec![0i64; spec.input_len()];
    let mut targets = vec![0i64; spec.predictions];
    let mut rng = stream(0, &[]);
    for i in 0..n {
        let slot = match spec.input {
            crate::InputKind::Dense { .. } => InputSlot::Dense(&mut dense),
            crate::InputKind::Tokens { .. } => InputSlot::Tokens(&mut tokens),
        };
        task.write_example(split, i, false, &mut rng, slot, &mut targets);
        *per_class.entry(targets[0]).or_insert(0) += 1;
        let len = task.example_len(split, i);
        min_len = min_len.min(len);
        max_len = max_len.max(len);
        sum += len;
    }
    Some(SplitStats {
        split,
        examples: n,
        per_class,
        min_len: if n == 0 { 0 } else { min_len },
        max_len,
        mean_len: if n == 0 { 0.0 } else { sum as f64 / n as f64 },
    })
}

/// A text histogram of `values` in `bins` equal-width bins.
pub fn histogram(values: &[usize], bins: usize) -> Vec<(usize, usize, usize)> {
    let (Some(&lo), Some(&hi)) = (values.iter().min(), values.iter().max()) else { return Vec::new() };
    let width = ((hi - lo) / bins.max(1)).max(1) + 1;
    let mut counts = vec![0usize; (hi - lo) / width + 1];
    for &v in values {
        counts[(v - lo) / width] += 1;
    }
    counts.into_iter().enumerate().map(|(i, c)| (lo + i * width, lo + (i + 1) * width - 1, c)).collect()
}
