//! CIFAR-10, binary version: `data_batch_1.bin` … `data_batch_5.bin` and `test_batch.bin`,
//! 3073-byte records (1 label byte, then 1024 red, 1024 green, 1024 blue bytes, rows top to
//! bottom), in the given folder or its `cifar-10-batches-bin/` subfolder.
//!
//! `cifar10`: normalised per channel (mean 0.4914 0.4822 0.4465, std 0.2023 0.1994 0.2010),
//! p×p patches → 64 tokens of 48 for p = 4. `cifar10-lra`: grayscale with torchvision's tensor
//! luma weights (0.2989, 0.587, 0.114), normalised (0.5, 0.5), one pixel a token → 1024 × 1.
//! Training augmentation (both, as the reference): crop 32 with padding 4, horizontal flip,
//! rotation up to ±20°, applied before normalisation.

use crate::augment::cifar_train;
use crate::patch::patchify;
use crate::rng::TaskRng;
use crate::{InputKind, InputSlot, Padding, Split, Task, TaskSpec};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub const RECORD: usize = 3073;
pub const SIDE: usize = 32;
pub const CLASSES: usize = 10;
pub const TRAIN_FILES: [&str; 5] = ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
pub const TEST_FILE: &str = "test_batch.bin";
const MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
const STD: [f32; 3] = [0.2023, 0.1994, 0.2010];
const LUMA: [f32; 3] = [0.2989, 0.587, 0.114];

/// Which of the paper's two CIFAR-10 tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Colour, p×p patches.
    Patches { patch: usize },
    /// Grayscale, one pixel a token (the Long Range Arena version).
    Lra,
}

/// Reads one binary batch file, checking its size and labels; returns the records.
pub fn read_batch_file(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    check_records(&bytes, path)?;
    Ok(bytes)
}

/// Checks that `bytes` are whole 3073-byte records with labels 0–9.
pub fn check_records(bytes: &[u8], path: &Path) -> Result<()> {
    if bytes.is_empty() {
        bail!("{}: empty file (expected 3073-byte CIFAR-10 records)", path.display());
    }
    if bytes.len() % RECORD != 0 {
        bail!(
            "{}: {} bytes is not a whole number of 3073-byte records (record {} at offset {} is truncated)",
            path.display(),
            bytes.len(),
            bytes.len() / RECORD,
            bytes.len() / RECORD * RECORD
        );
    }
    for (i, record) in bytes.chunks(RECORD).enumerate() {
        if record[0] as usize >= CLASSES {
            bail!("{}: record {i} (offset {}) has label {}, outside 0..{CLASSES}", path.display(), i * RECORD, record[0]);
        }
    }
    Ok(())
}

/// The folder holding the batch files: `dir` or `dir/cifar-10-batches-bin`.
fn batches_dir(dir: &Path) -> Result<PathBuf> {
    for candidate in [dir.to_path_buf(), dir.join("cifar-10-batches-bin")] {
        if candidate.join(TEST_FILE).is_file() || candidate.join(TRAIN_FILES[0]).is_file() {
            return Ok(candidate);
        }
    }
    bail!("{}: no CIFAR-10 binary files ({} … , {TEST_FILE}) here or in cifar-10-batches-bin/", dir.display(), TRAIN_FILES[0])
}

pub struct Cifar10 {
    spec: TaskSpec,
    variant: Variant,
    train: Vec<u8>,
    test: Vec<u8>,
    max_degrees: f64,
    dir: PathBuf,
}

impl Cifar10 {
    pub fn load(dir: &Path, variant: Variant) -> Result<Self> {
        if let Variant::Patches { patch } = variant {
            if patch == 0 || SIDE % patch != 0 {
                bail!("cifar10: patch size {patch} does not divide 32");
            }
        }
        let dir = batches_dir(dir)?;
        let mut train = Vec::new();
        for name in TRAIN_FILES {
            let path = dir.join(name);
            crate::require_file(&path, "a CIFAR-10 training batch", || format!("{}: missing training file {name}", dir.display()))?;
            train.extend(read_batch_file(&path)?);
        }
        let test_path = dir.join(TEST_FILE);
        crate::require_file(&test_path, "the CIFAR-10 test batch", || format!("{}: missing test file {TEST_FILE}", dir.display()))?;
        let test = read_batch_file(&test_path)?;
        let (name, input, seq_len) = match variant {
            Variant::Patches { patch } => ("cifar10", InputKind::Dense { dim: patch * patch * 3 }, (SIDE / patch) * (SIDE / patch)),
            Variant::Lra => ("cifar10-lra", InputKind::Dense { dim: 1 }, SIDE * SIDE),
        };
        let spec =
            TaskSpec { name: name.into(), input, seq_len, predictions: 1, classes: CLASSES, readout_tokens: 1, padding: Padding::None };
        Ok(Cifar10 { spec, variant, train, test, max_degrees: 20.0, dir })
    }

    fn records(&self, split: Split) -> &[u8] {
        match split {
            Split::Train => &self.train,
            Split::Test => &self.test,
            Split::Val => &[],
        }
    }
}

impl Task for Cifar10 {
    fn spec(&self) -> &TaskSpec {
        &self.spec
    }

    fn len(&self, split: Split) -> Option<usize> {
        Some(self.records(split).len() / RECORD)
    }

    fn write_example(&self, split: Split, index: usize, augment: bool, rng: &mut TaskRng, input: InputSlot<'_>, targets: &mut [i64]) {
        let InputSlot::Dense(x) = input else { unreachable!("CIFAR-10 has dense input") };
        let record = &self.records(split)[index * RECORD..(index + 1) * RECORD];
        targets[0] = record[0] as i64;
        let px = SIDE * SIDE;
        let rgb: Vec<f32> = record[1..].iter().map(|&b| b as f32 / 255.0).collect();
        let (mut image, channels) = match self.variant {
            Variant::Patches { .. } => (rgb, 3),
            Variant::Lra => ((0..px).map(|i| LUMA[0] * rgb[i] + LUMA[1] * rgb[px + i] + LUMA[2] * rgb[2 * px + i]).collect(), 1),
        };
        if augment && split == Split::Train {
            image = cifar_train(&image, channels, SIDE, SIDE, self.max_degrees, rng);
        }
        match self.variant {
            Variant::Patches { patch } => {
                for (c, plane) in image.chunks_mut(px).enumerate() {
                    plane.iter_mut().for_each(|v| *v = (*v - MEAN[c]) / STD[c]);
                }
                patchify(&image, 3, SIDE, SIDE, patch, x);
            }
            Variant::Lra => {
                for (out, v) in x.iter_mut().zip(&image) {
                    *out = (v - 0.5) / 0.5;
                }
            }
        }
    }

    fn notes(&self) -> Vec<String> {
        vec![format!("files: {}/{{{}, {TEST_FILE}}}", self.dir.display(), TRAIN_FILES.join(", "))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Property test: random and mutated record streams never panic the checker, and whatever
    /// it accepts is whole records with valid labels. `FPT_FUZZ_ITERS` runs it longer.
    #[test]
    fn record_checker_never_panics() {
        use rand::{Rng, SeedableRng};
        let iters: usize = std::env::var("FPT_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let path = Path::new("fuzz.bin");
        for _ in 0..iters {
            let records = rng.random_range(0..3);
            let mut bytes: Vec<u8> = (0..records * RECORD).map(|i| if i % RECORD == 0 { (i % 10) as u8 } else { 7 }).collect();
            for _ in 0..rng.random_range(0..3) {
                if !bytes.is_empty() {
                    let i = rng.random_range(0..bytes.len());
                    bytes[i] = rng.random();
                }
            }
            let keep = rng.random_range(0..=bytes.len());
            if rng.random::<bool>() {
                bytes.truncate(keep);
            }
            if check_records(&bytes, path).is_ok() {
                assert!(!bytes.is_empty() && bytes.len() % RECORD == 0);
                assert!(bytes.chunks(RECORD).all(|r| (r[0] as usize) < CLASSES));
            }
        }
    }
}
