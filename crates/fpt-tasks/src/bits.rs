//! Bit memory and bit XOR, generated from the seed (the reference's `bit_memory.py`,
//! `bit_xor.py`).
//!
//! Training examples are a stream: example `k` comes from its own seeded stream, so any step's
//! batch can be rebuilt (resume). `Val` and `Test` are fixed sets of `eval_examples`, each from
//! its own stream, so evaluation is a whole-split pass like every other task.

use crate::rng::{purpose, stream, TaskRng};
use crate::{InputKind, InputSlot, Padding, Split, Task, TaskSpec};
use anyhow::{bail, Result};
use rand::Rng;

fn example_rng(seed: u64, split: Split, index: usize) -> TaskRng {
    let p = match split {
        Split::Train => purpose::GENERATE_TRAIN,
        Split::Val => purpose::GENERATE_VAL,
        Split::Test => purpose::GENERATE_TEST,
    };
    stream(seed, &[p, index as u64])
}

/// Generated tasks: an endless training stream, fixed evaluation sets.
fn generated_len(split: Split, eval_examples: usize) -> Option<usize> {
    match split {
        Split::Train => None,
        Split::Val | Split::Test => Some(eval_examples),
    }
}

/// Bit memory: `patterns` random strings of `n` bits (±1), then one of them again with each bit
/// zeroed with probability `mask_prob`; reconstruct the queried string. Tokens are patches of
/// `patch` bits: `(patterns + 1) · n / patch` tokens of dim `patch`; the last `n / patch` tokens
/// are read out, each predicting its `patch` bits (2 classes each). Accuracy is per bit.
pub struct BitMemory {
    spec: TaskSpec,
    n: usize,
    patterns: usize,
    mask_prob: f64,
    eval_examples: usize,
    seed: u64,
}

impl BitMemory {
    pub fn new(n: usize, patterns: usize, patch: usize, mask_prob: f64, eval_examples: usize, seed: u64) -> Result<Self> {
        if n == 0 || patterns == 0 || patch == 0 {
            bail!("bit memory: n ({n}), patterns ({patterns}) and patch ({patch}) must be positive");
        }
        if n % patch != 0 {
            bail!("bit memory: n = {n} is not a multiple of the patch size {patch}");
        }
        if !(0.0..=1.0).contains(&mask_prob) {
            bail!("bit memory: mask_prob {mask_prob} is not a probability");
        }
        let Some(bits) = patterns.checked_add(1).and_then(|p| p.checked_mul(n)) else {
            bail!("bit memory: (patterns {patterns} + 1) × n {n} bits per example overflows");
        };
        let spec = TaskSpec {
            name: "bit-memory".into(),
            input: InputKind::Dense { dim: patch },
            seq_len: bits / patch,
            predictions: n,
            classes: 2,
            readout_tokens: n / patch,
            padding: Padding::None,
        };
        Ok(BitMemory { spec, n, patterns, mask_prob, eval_examples, seed })
    }
}

impl Task for BitMemory {
    fn spec(&self) -> &TaskSpec {
        &self.spec
    }

    fn len(&self, split: Split) -> Option<usize> {
        generated_len(split, self.eval_examples)
    }

    fn write_example(&self, split: Split, index: usize, _augment: bool, _rng: &mut TaskRng, input: InputSlot<'_>, targets: &mut [i64]) {
        let InputSlot::Dense(x) = input else { unreachable!("bit memory has dense input") };
        let mut rng = example_rng(self.seed, split, index);
        let n = self.n;
        // Token features are the bits in order, so patches are consecutive runs of bits.
        for b in x[..self.patterns * n].iter_mut() {
            *b = if rng.random::<bool>() { 1.0 } else { -1.0 };
        }
        let query = rng.random_range(0..self.patterns);
        for i in 0..n {
            let bit = x[query * n + i];
            targets[i] = i64::from(bit > 0.0);
            let masked = rng.random::<f64>() < self.mask_prob;
            x[self.patterns * n + i] = if masked { 0.0 } else { bit };
        }
    }
}

/// Bit XOR: `patterns` strings of `n` bits (0/1), one bit a token (dim 1); predict the XOR of
/// the strings from the last `n` tokens, 2 classes each. Accuracy is per bit.
pub struct BitXor {
    spec: TaskSpec,
    n: usize,
    patterns: usize,
    eval_examples: usize,
    seed: u64,
}

impl BitXor {
    pub fn new(n: usize, patterns: usize, eval_examples: usize, seed: u64) -> Result<Self> {
        if n == 0 || patterns < 2 {
            bail!("bit xor: n ({n}) must be positive and patterns ({patterns}) at least 2");
        }
        let Some(bits) = patterns.checked_mul(n) else {
            bail!("bit xor: patterns {patterns} × n {n} bits per example overflows");
        };
        let spec = TaskSpec {
            name: "bit-xor".into(),
            input: InputKind::Dense { dim: 1 },
            seq_len: bits,
            predictions: n,
            classes: 2,
            readout_tokens: n,
            padding: Padding::None,
        };
        Ok(BitXor { spec, n, patterns, eval_examples, seed })
    }
}

impl Task for BitXor {
    fn spec(&self) -> &TaskSpec {
        &self.spec
    }

    fn len(&self, split: Split) -> Option<usize> {
        generated_len(split, self.eval_examples)
    }

    fn write_example(&self, split: Split, index: usize, _augment: bool, _rng: &mut TaskRng, input: InputSlot<'_>, targets: &mut [i64]) {
        let InputSlot::Dense(x) = input else { unreachable!("bit xor has dense input") };
        let mut rng = example_rng(self.seed, split, index);
        targets.fill(0);
        for p in 0..self.patterns {
            for i in 0..self.n {
                let bit = rng.random::<bool>();
                x[p * self.n + i] = f32::from(u8::from(bit));
                targets[i] ^= i64::from(bit);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::stream;

    fn example(task: &dyn Task, split: Split, index: usize) -> (Vec<f32>, Vec<i64>) {
        let mut x = vec![0f32; task.spec().input_len()];
        let mut y = vec![0i64; task.spec().predictions];
        task.write_example(split, index, false, &mut stream(0, &[]), InputSlot::Dense(&mut x), &mut y);
        (x, y)
    }

    #[test]
    fn bit_memory_encodes_as_the_reference() {
        let task = BitMemory::new(20, 5, 4, 0.5, 10, 3).unwrap();
        assert_eq!(task.spec().seq_len, 30);
        assert_eq!(task.spec().outputs_per_readout_token(), 8);
        let (x, y) = example(&task, Split::Train, 17);
        assert!(x[..100].iter().all(|b| *b == 1.0 || *b == -1.0));
        let query = &x[100..];
        // Some pattern agrees with every unmasked query bit, and targets are that pattern.
        let matches = (0..5).filter(|p| {
            let pat = &x[p * 20..(p + 1) * 20];
            query.iter().zip(pat).all(|(q, b)| *q == 0.0 || q == b) && pat.iter().zip(&y).all(|(b, t)| (*b > 0.0) == (*t == 1))
        });
        assert!(matches.count() >= 1);
        let zeros = query.iter().filter(|q| **q == 0.0).count();
        assert!(zeros > 0 && zeros < 20, "mask_prob 0.5 masked {zeros} of 20");
        assert_eq!(example(&task, Split::Train, 17), (x.clone(), y.clone()), "not deterministic");
        assert_ne!(example(&task, Split::Train, 18).0, x);
        assert_ne!(example(&task, Split::Val, 17).0, x, "val must not repeat train");
    }

    #[test]
    fn bit_xor_targets_are_the_xor() {
        let task = BitXor::new(5, 2, 10, 1).unwrap();
        for i in 0..20 {
            let (x, y) = example(&task, Split::Train, i);
            for b in 0..5 {
                assert_eq!(y[b], ((x[b] as i64) ^ (x[5 + b] as i64)));
            }
        }
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert!(BitMemory::new(1000, 5, 30, 0.5, 10, 0).is_err());
        assert!(BitMemory::new(1000, 5, 50, 1.5, 10, 0).is_err());
        assert!(BitXor::new(5, 1, 10, 0).is_err());
        // Sizes whose product overflows are errors, not wrapped shapes that index out of bounds.
        let err = BitXor::new(usize::MAX / 2 + 1, 2, 10, 0).err().expect("overflow").to_string();
        assert!(err.contains("overflows"), "{err}");
        let err = BitMemory::new(usize::MAX / 2 + 1, 1, 1, 0.5, 10, 0).err().expect("overflow").to_string();
        assert!(err.contains("overflows"), "{err}");
        assert!(BitMemory::new(10, usize::MAX, 1, 0.5, 10, 0).is_err());
    }
}
