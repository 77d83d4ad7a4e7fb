//! `image-folder`: torchvision's `ImageFolder` layout, `root/<split>/<class>/<image>` with
//! splits `train`, `val` (optional) and `test`. Images are decoded with the `image` crate, in
//! parallel (rayon), brought to one size (`fit`: `crop` scales the image to cover the size and
//! cuts the centre, as torchvision's `Resize` + `CenterCrop`; `resize` stretches it), made RGB or
//! grey (PIL's `convert("L")` weights), scaled to 0..1 (`ToTensor`) and cut into p×p patches in
//! the reference's order, as MNIST and CIFAR-10 are: `(H/p)·(W/p)` tokens of `p·p·C` features.
//!
//! Classes are the class folders of `train/` sorted by name (torchvision's order), unless a
//! list is given (a trained run evaluated on other data maps its folders by name). Files
//! without an image extension (torchvision's list: jpg, jpeg, png, ppm, bmp, pgm, tif, tiff,
//! webp) and hidden files are skipped and counted; a file with one that does not decode is an
//! error naming it, as is an empty class folder, a class folder outside the classes, an image
//! outside any class folder, and images of different sizes when no size is set.

use crate::patch::patchify;
use crate::rng::TaskRng;
use crate::{DataFacts, InputKind, InputSlot, Padding, Split, Task, TaskSpec};
use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// torchvision's `IMG_EXTENSIONS`.
pub const EXTENSIONS: [&str; 9] = ["jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp"];

/// How deep image folders may nest (a symbolic-link loop stops here with an error).
const MAX_DEPTH: usize = 32;

/// The size images are brought to: `size = 32` (square) or `size = [height, width]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ImageSize {
    Square(usize),
    HeightWidth([usize; 2]),
}

impl ImageSize {
    pub fn height_width(self) -> (usize, usize) {
        match self {
            ImageSize::Square(s) => (s, s),
            ImageSize::HeightWidth([h, w]) => (h, w),
        }
    }
}

/// How an image of another size is brought to the configured size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fit {
    /// Scale (bilinear, antialiased) until the image covers the size, then cut out the centre
    /// (torchvision's `Resize(size)` + `CenterCrop(size)` for a square size).
    #[default]
    Crop,
    /// Scale each side to the size, ignoring the aspect ratio.
    Resize,
}

/// Channels of the tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Color {
    #[default]
    Rgb,
    /// One channel, PIL's `convert("L")`: (19595 R + 38470 G + 7471 B + 2¹⁵) >> 16.
    #[serde(alias = "gray")]
    Grey,
}

/// An image ready for patching: `(height, width)` and its `[C, H, W]` bytes.
pub type Prepared = ((usize, usize), Vec<u8>);

/// How images become tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageSettings {
    /// `(height, width)`; `None`: the images' own size, which must then be the same for all.
    pub size: Option<(usize, usize)>,
    pub fit: Fit,
    pub color: Color,
    pub patch: usize,
}

impl ImageSettings {
    pub fn channels(&self) -> usize {
        match self.color {
            Color::Rgb => 3,
            Color::Grey => 1,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.patch == 0 {
            bail!("image-folder: patch = 0; expected the side of the square patches that become tokens (e.g. 4)");
        }
        if let Some((h, w)) = self.size {
            if h == 0 || w == 0 {
                bail!("image-folder: size {h}×{w}; expected positive sides");
            }
            if h % self.patch != 0 || w % self.patch != 0 {
                bail!("image-folder: size {h}×{w} does not divide into {p}×{p} patches (patch = {p})", p = self.patch);
            }
        }
        Ok(())
    }

    /// Decodes one image file and brings it to the configured size and colour: `[C, H, W]`
    /// bytes with `(H, W)`.
    pub fn prepare(&self, path: &Path) -> Result<Prepared> {
        let reader = image::ImageReader::open(path)
            .with_context(|| format!("{}: cannot open the image", path.display()))?
            .with_guessed_format()
            .with_context(|| format!("{}: cannot read the image", path.display()))?;
        let img = reader.decode().map_err(|e| anyhow!("{}: not a readable image ({e})", path.display()))?;
        let (w0, h0) = (img.width() as usize, img.height() as usize);
        if w0 == 0 || h0 == 0 {
            bail!("{}: the image is {w0}×{h0} pixels", path.display());
        }
        let img = match self.size {
            Some((h, w)) if (h, w) != (h0, w0) => fit(&img, h, w, self.fit),
            _ => img,
        };
        let (h, w) = (img.height() as usize, img.width() as usize);
        let rgb = img.to_rgb8();
        let raw = rgb.as_raw();
        let plane = h * w;
        let pixels = match self.color {
            Color::Rgb => {
                let mut out = vec![0u8; 3 * plane];
                for (i, px) in raw.chunks_exact(3).enumerate() {
                    for c in 0..3 {
                        out[c * plane + i] = px[c];
                    }
                }
                out
            }
            Color::Grey => raw
                .chunks_exact(3)
                .map(|px| ((19595 * px[0] as u32 + 38470 * px[1] as u32 + 7471 * px[2] as u32 + 0x8000) >> 16) as u8)
                .collect(),
        };
        Ok(((h, w), pixels))
    }
}

fn fit(img: &image::DynamicImage, h: usize, w: usize, how: Fit) -> image::DynamicImage {
    use image::imageops::FilterType::Triangle;
    match how {
        Fit::Resize => img.resize_exact(w as u32, h as u32, Triangle),
        Fit::Crop => {
            let (h0, w0) = (img.height() as f64, img.width() as f64);
            let scale = (h as f64 / h0).max(w as f64 / w0);
            let sh = ((h0 * scale).round() as usize).max(h);
            let sw = ((w0 * scale).round() as usize).max(w);
            let scaled =
                if (sh, sw) == (h0 as usize, w0 as usize) { img.clone() } else { img.resize_exact(sw as u32, sh as u32, Triangle) };
            let top = ((sh - h) as f64 / 2.0).round() as u32;
            let left = ((sw - w) as f64 / 2.0).round() as u32;
            scaled.crop_imm(left, top, w as u32, h as u32)
        }
    }
}

fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
}

fn has_image_extension(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Entries of a folder sorted by name: (path, name, is a folder).
fn sorted_entries(dir: &Path) -> Result<Vec<(PathBuf, String, bool)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let path = entry.path();
        // Follows symbolic links, as torchvision's os.walk(followlinks=True).
        let is_dir = std::fs::metadata(&path).map(|m| m.is_dir()).unwrap_or(false);
        out.push((path, entry.file_name().to_string_lossy().into_owned(), is_dir));
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// Image files under `dir`, recursively, in sorted walk order; counts what was skipped.
fn image_files(dir: &Path, depth: usize, files: &mut Vec<PathBuf>, skipped: &mut usize) -> Result<()> {
    if depth > MAX_DEPTH {
        bail!("{}: folders nest deeper than {MAX_DEPTH} levels (a symbolic-link loop?)", dir.display());
    }
    let entries = sorted_entries(dir)?;
    for (path, name, is_dir) in &entries {
        if is_hidden(name) {
            *skipped += 1;
        } else if !is_dir && has_image_extension(path) {
            files.push(path.clone());
        } else if !is_dir {
            *skipped += 1;
        }
    }
    for (path, name, is_dir) in entries {
        if is_dir && !is_hidden(&name) {
            image_files(&path, depth + 1, files, skipped)?;
        }
    }
    Ok(())
}

/// Decodes `files` in parallel; the first failure in file order is the error. With no size
/// set, every image must have the first one's size.
fn decode_all(files: &[PathBuf], settings: &ImageSettings) -> Result<Prepared> {
    let decoded: Vec<Result<Prepared>> = files.par_iter().map(|p| settings.prepare(p)).collect();
    let mut size = None;
    let mut pixels = Vec::new();
    for (path, result) in files.iter().zip(decoded) {
        let (hw, px) = result?;
        match size {
            None => size = Some((hw, path)),
            Some((s, first)) if s != hw => bail!(
                "{}: the image is {}×{} (width × height), but {} is {}×{}; set size in the task to bring them to one size",
                path.display(),
                hw.1,
                hw.0,
                first.display(),
                s.1,
                s.0
            ),
            _ => {}
        }
        pixels.extend_from_slice(&px);
    }
    let (hw, _) = size.context("no images to decode")?;
    Ok((hw, pixels))
}

#[derive(Debug)]
struct SplitImages {
    files: Vec<PathBuf>,
    labels: Vec<u32>,
    pixels: Vec<u8>,
}

/// A task read from an `ImageFolder` layout ([module docs](self)).
#[derive(Debug)]
pub struct ImageFolder {
    spec: TaskSpec,
    settings: ImageSettings,
    height: usize,
    width: usize,
    class_names: Vec<String>,
    splits: Vec<(Split, SplitImages)>,
    /// Where the files are listed relative to (for [`ImageFolder::source`]).
    root: PathBuf,
    notes: Vec<String>,
}

impl ImageFolder {
    /// Loads `root/<split>/<class>/…`. `classes`: the class ids' names in order; by default the
    /// class folders of `train/` (else of the first split present), sorted.
    pub fn load(root: &Path, settings: &ImageSettings, classes: Option<&[String]>) -> Result<Self> {
        settings.validate()?;
        if !root.is_dir() {
            bail!("{}: no such folder (the image-folder task reads root/<split>/<class>/<image>; set task.path)", root.display());
        }
        let mut present = Vec::new();
        for split in Split::ALL {
            let dir = root.join(split.name());
            match std::fs::metadata(&dir) {
                Ok(m) if m.is_dir() => present.push((split, dir)),
                Ok(_) => bail!("{}: is not a folder; expected the {split} split's class folders in it", dir.display()),
                Err(_) => {}
            }
        }
        let Some((_, first_dir)) = present.first() else {
            let found: Vec<String> = sorted_entries(root)?.into_iter().filter(|e| e.2).map(|e| e.1).collect();
            bail!(
                "{}: no train/, val/ or test/ folder (torchvision's ImageFolder layout: {}/<split>/<class>/<image>); it holds {}",
                root.display(),
                root.display(),
                if found.is_empty() { "no folders".to_string() } else { format!("the folders {}", found.join(", ")) }
            );
        };
        let class_names: Vec<String> = match classes {
            Some(names) => {
                let mut seen = std::collections::BTreeSet::new();
                if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
                    bail!("image-folder: class {dup:?} appears twice in classes");
                }
                names.to_vec()
            }
            None => sorted_entries(first_dir)?.into_iter().filter(|(_, name, is_dir)| *is_dir && !is_hidden(name)).map(|e| e.1).collect(),
        };
        if class_names.len() < 2 {
            bail!(
                "{}: {} class folder(s) ({}); a classifier needs at least two",
                first_dir.display(),
                class_names.len(),
                class_names.join(", ")
            );
        }
        let mut splits = Vec::new();
        let mut notes = Vec::new();
        let mut size: Option<((usize, usize), PathBuf)> = None;
        for (split, dir) in &present {
            let mut files = Vec::new();
            let mut labels = Vec::new();
            let mut skipped = 0usize;
            let mut folders = 0usize;
            for (path, name, is_dir) in sorted_entries(dir)? {
                if is_hidden(&name) {
                    skipped += 1;
                    continue;
                }
                if !is_dir {
                    if has_image_extension(&path) {
                        bail!("{}: an image outside any class folder; expected {}/<class>/<image>", path.display(), dir.display());
                    }
                    skipped += 1;
                    continue;
                }
                let Some(class) = class_names.iter().position(|c| *c == name) else {
                    bail!(
                        "{}: class folder {name:?} is not one of the {} classes ({}){}",
                        path.display(),
                        class_names.len(),
                        abbreviate(&class_names),
                        if classes.is_some() { " the task was given" } else { " of the first split" }
                    );
                };
                let before = files.len();
                image_files(&path, 1, &mut files, &mut skipped)?;
                if files.len() == before {
                    bail!("{}: class folder {name:?} holds no images (files ending in .{})", path.display(), EXTENSIONS.join(", ."));
                }
                labels.resize(files.len(), class as u32);
                folders += 1;
            }
            if files.is_empty() {
                bail!("{}: no class folders with images; expected {}/<class>/<image>", dir.display(), dir.display());
            }
            let (hw, pixels) = decode_all(&files, settings)?;
            match &size {
                None => size = Some((hw, files[0].clone())),
                Some((s, first)) if *s != hw => bail!(
                    "{}: images are {}×{} (width × height), but {}'s are {}×{}; set size in the task to bring them to one size",
                    dir.display(),
                    hw.1,
                    hw.0,
                    first.display(),
                    s.1,
                    s.0
                ),
                _ => {}
            }
            notes.push(format!(
                "{split}: {} images in {folders} class folders under {}{}",
                files.len(),
                dir.display(),
                if skipped > 0 { format!(" ({skipped} other files skipped)") } else { String::new() }
            ));
            splits.push((*split, SplitImages { files, labels, pixels }));
        }
        let ((height, width), _) = size.expect("at least one split holds images");
        let p = settings.patch;
        if height % p != 0 || width % p != 0 {
            bail!(
                "{}: images are {width}×{height} (width × height), which do not divide into {p}×{p} patches; set size or patch in the task",
                root.display()
            );
        }
        let c = settings.channels();
        notes.push(format!(
            "images {width}×{height} {}, {p}×{p} patches → {} tokens of {} features; classes: {}",
            match settings.color {
                Color::Rgb => "RGB",
                Color::Grey => "grey",
            },
            (height / p) * (width / p),
            p * p * c,
            abbreviate(&class_names.iter().enumerate().map(|(i, n)| format!("{i} {n}")).collect::<Vec<_>>())
        ));
        let spec = TaskSpec {
            name: "image-folder".into(),
            input: InputKind::Dense { dim: p * p * c },
            seq_len: (height / p) * (width / p),
            predictions: 1,
            classes: class_names.len(),
            readout_tokens: 1,
            padding: Padding::None,
        };
        Ok(ImageFolder { spec, settings: *settings, height, width, class_names, splits, root: root.to_path_buf(), notes })
    }

    /// Unlabelled images for a trained run (`fpt predict`): one image file, or every image under
    /// a folder (recursively, sorted), as the test split, prepared with the run's `settings`
    /// (whose size must be set) and checked against the run's task `like`.
    pub fn unlabelled(path: &Path, settings: &ImageSettings, like: &TaskSpec, class_names: Vec<String>) -> Result<Self> {
        settings.validate()?;
        let (h, w) = settings.size.context("image-folder: the run's image size is unknown; set size in the task")?;
        let meta = std::fs::metadata(path).with_context(|| format!("{}: no such file or folder", path.display()))?;
        let mut files = Vec::new();
        let mut skipped = 0usize;
        let root = if meta.is_dir() {
            image_files(path, 0, &mut files, &mut skipped)?;
            if files.is_empty() {
                bail!("{}: no images in it (files ending in .{})", path.display(), EXTENSIONS.join(", ."));
            }
            path.to_path_buf()
        } else {
            files.push(path.to_path_buf());
            path.parent().map(Path::to_path_buf).unwrap_or_default()
        };
        let (hw, pixels) = decode_all(&files, settings)?;
        if hw != (h, w) {
            bail!("{}: images are {}×{} (width × height), the run's are {w}×{h}", path.display(), hw.1, hw.0);
        }
        let p = settings.patch;
        let spec = TaskSpec { seq_len: (h / p) * (w / p), ..like.clone() };
        if spec.input != (InputKind::Dense { dim: p * p * settings.channels() }) {
            bail!(
                "{}: images give tokens of {} features, the run's task takes {:?}",
                path.display(),
                p * p * settings.channels(),
                like.input
            );
        }
        let notes = vec![format!(
            "{} images under {}{}",
            files.len(),
            path.display(),
            if skipped > 0 { format!(" ({skipped} other files skipped)") } else { String::new() }
        )];
        let labels = vec![0; files.len()];
        Ok(ImageFolder {
            spec,
            settings: *settings,
            height: h,
            width: w,
            class_names,
            splits: vec![(Split::Test, SplitImages { files, labels, pixels })],
            root,
            notes,
        })
    }

    fn split(&self, split: Split) -> Option<&SplitImages> {
        self.splits.iter().find(|(s, _)| *s == split).map(|(_, d)| d)
    }

    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// `(height, width)` of the prepared images.
    pub fn image_size(&self) -> (usize, usize) {
        (self.height, self.width)
    }

    /// The file of example `index`, relative to the folder loaded (or as given).
    pub fn source(&self, split: Split, index: usize) -> Option<String> {
        let file = self.split(split)?.files.get(index)?;
        let rel = file.strip_prefix(&self.root).unwrap_or(file);
        Some(rel.display().to_string())
    }
}

fn abbreviate(items: &[String]) -> String {
    if items.len() <= 20 {
        items.join(", ")
    } else {
        format!("{}, … ({} in all)", items[..20].join(", "), items.len())
    }
}

impl Task for ImageFolder {
    fn spec(&self) -> &TaskSpec {
        &self.spec
    }

    fn len(&self, split: Split) -> Option<usize> {
        Some(self.split(split).map_or(0, |s| s.labels.len()))
    }

    fn write_example(&self, split: Split, index: usize, _augment: bool, _rng: &mut TaskRng, input: InputSlot<'_>, targets: &mut [i64]) {
        let InputSlot::Dense(x) = input else { unreachable!("image-folder has dense input") };
        let data = self.split(split).expect("index within a present split");
        let c = self.settings.channels();
        let n = c * self.height * self.width;
        let image: Vec<f32> = data.pixels[index * n..(index + 1) * n].iter().map(|&p| p as f32 / 255.0).collect();
        patchify(&image, c, self.height, self.width, self.settings.patch, x);
        targets[0] = data.labels[index] as i64;
    }

    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    fn facts(&self) -> DataFacts {
        DataFacts { class_names: Some(self.class_names.clone()), image_size: Some([self.height, self.width]) }
    }
}
