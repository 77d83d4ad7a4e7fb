//! MNIST and Fashion-MNIST from their IDX files: pixels scaled to 0..1 (torchvision's
//! `ToTensor`), `p×p` patches → `(28/p)²` tokens of `p²` features (4×4: 49 × 16).

use crate::idx::read_idx;
use crate::patch::patchify;
use crate::rng::TaskRng;
use crate::{InputKind, InputSlot, Padding, Split, Task, TaskSpec};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

pub const CLASSES: usize = 10;

/// The four files, by split: (images, labels) without the optional `.gz`.
pub const FILES: [(Split, &str, &str); 2] = [
    (Split::Train, "train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    (Split::Test, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
];

/// `name.gz` or `name` inside `dir`.
pub fn find_file(dir: &Path, name: &str, what: &str) -> Result<PathBuf> {
    let candidates = [dir.join(format!("{name}.gz")), dir.join(name)];
    if let Some(file) = candidates.iter().find(|c| c.is_file()) {
        return Ok(file.clone());
    }
    // Something that is not a file (a directory, say) stands where one should be.
    for candidate in candidates.iter().filter(|c| c.exists()) {
        crate::require_file(candidate, &format!("the {what} (an IDX file)"), String::new)?;
    }
    bail!("{}: missing {name}.gz (or {name}), the {what}", dir.display())
}

struct SplitData {
    images: Vec<u8>,
    labels: Vec<u8>,
}

pub struct Mnist {
    spec: TaskSpec,
    height: usize,
    width: usize,
    patch: usize,
    train: SplitData,
    test: SplitData,
    files: Vec<PathBuf>,
}

impl Mnist {
    /// Loads `dir` (IDX files, gzipped or raw). `name` is "mnist" or "fashion-mnist".
    pub fn load(name: &str, dir: &Path, patch: usize) -> Result<Self> {
        if patch == 0 {
            bail!("{name}: patch size must be positive");
        }
        let mut shape = None;
        let mut files = Vec::new();
        let mut splits = Vec::new();
        for (split, images_name, labels_name) in FILES {
            let images_path = find_file(dir, images_name, &format!("{split} images"))?;
            let labels_path = find_file(dir, labels_name, &format!("{split} labels"))?;
            let images = read_idx(&images_path)?;
            let labels = read_idx(&labels_path)?;
            let &[n, h, w] = images.dims.as_slice() else {
                bail!("{}: images must have 3 dimensions [count, rows, cols], found {:?}", images_path.display(), images.dims);
            };
            if labels.dims.len() != 1 {
                bail!("{}: labels must have 1 dimension [count], found {:?}", labels_path.display(), labels.dims);
            }
            if labels.dims[0] != n {
                bail!("{} holds {} labels but {} holds {n} images", labels_path.display(), labels.dims[0], images_path.display());
            }
            if n == 0 {
                bail!("{}: no images", images_path.display());
            }
            if h == 0 || w == 0 {
                bail!("{}: images are {h}×{w}, expected at least one row and one column", images_path.display());
            }
            if let Some(i) = labels.data.iter().position(|&l| l as usize >= CLASSES) {
                bail!("{}: label {} of record {i} (byte offset {}) is outside 0..{CLASSES}", labels_path.display(), labels.data[i], 8 + i);
            }
            if h % patch != 0 || w % patch != 0 {
                bail!("{}: {h}×{w} images do not divide into {patch}×{patch} patches", images_path.display());
            }
            match shape {
                None => shape = Some((h, w)),
                Some(s) if s != (h, w) => bail!("{}: images are {h}×{w}, the other split's are {}×{}", images_path.display(), s.0, s.1),
                _ => {}
            }
            files.extend([images_path, labels_path]);
            splits.push(SplitData { images: images.data, labels: labels.data });
        }
        let (height, width) = shape.expect("two splits were read");
        let test = splits.pop().expect("test split");
        let train = splits.pop().expect("train split");
        let spec = TaskSpec {
            name: name.to_string(),
            input: InputKind::Dense { dim: patch * patch },
            seq_len: (height / patch) * (width / patch),
            predictions: 1,
            classes: CLASSES,
            readout_tokens: 1,
            padding: Padding::None,
        };
        Ok(Mnist { spec, height, width, patch, train, test, files })
    }

    fn split(&self, split: Split) -> Option<&SplitData> {
        match split {
            Split::Train => Some(&self.train),
            Split::Test => Some(&self.test),
            Split::Val => None,
        }
    }
}

impl Task for Mnist {
    fn spec(&self) -> &TaskSpec {
        &self.spec
    }

    fn len(&self, split: Split) -> Option<usize> {
        Some(self.split(split).map_or(0, |s| s.labels.len()))
    }

    fn write_example(&self, split: Split, index: usize, _augment: bool, _rng: &mut TaskRng, input: InputSlot<'_>, targets: &mut [i64]) {
        let InputSlot::Dense(x) = input else { unreachable!("MNIST has dense input") };
        let data = self.split(split).expect("index within a present split");
        let pixels = self.height * self.width;
        let image: Vec<f32> = data.images[index * pixels..(index + 1) * pixels].iter().map(|&p| p as f32 / 255.0).collect();
        patchify(&image, 1, self.height, self.width, self.patch, x);
        targets[0] = data.labels[index] as i64;
    }

    fn notes(&self) -> Vec<String> {
        vec![format!("files: {}", self.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "))]
    }
}
