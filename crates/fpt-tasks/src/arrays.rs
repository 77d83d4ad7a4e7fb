//! `arrays`: a task from array files, no code. A folder holds a `train`, optional `val` and a
//! `test` split, each in one of three layouts (exactly one per split):
//!
//! - `<split>.npz` (NumPy's `np.savez` / `np.savez_compressed`),
//! - `<split>.safetensors`,
//! - `<split>/inputs.npy`, `<split>/labels.npy` (and `<split>/lengths.npy`).
//!
//! Each split holds `inputs` (float `[N, T, D]` features, or integer `[N, T]` token ids below a
//! stated `vocab`), `labels` (integer `[N]`, or `[N, K]` for K read-out tokens) and optionally
//! `lengths` (integer `[N]`, each in `K..=T`) for variable-length sequences, which are then
//! right-padded and masked ([`Padding::Masked`]). Classes are the largest label + 1 unless
//! stated. The files are read with `npyz` and `safetensors`; every value is checked (finite
//! features, ids inside the vocabulary, labels inside the classes) and errors name the file, the
//! array and the example.

use crate::rng::TaskRng;
use crate::{InputKind, InputSlot, Padding, Split, Task, TaskSpec};
use anyhow::{anyhow, bail, Context, Result};
use npyz::{TypeChar, TypeStr};
use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// The arrays a split file holds, by name.
pub const INPUTS: &str = "inputs";
pub const LABELS: &str = "labels";
pub const LENGTHS: &str = "lengths";

/// An array's values, widened: floats to `f32`, integers and booleans to `i64`.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    Float(Vec<f32>),
    Int(Vec<i64>),
}

/// One array read from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub values: Values,
    /// The dtype as the file states it (`<f4`, `F32`, …), for messages.
    pub dtype: String,
    /// Where it came from: `DIR/train.npz: array inputs`, `DIR/train/labels.npy`, ….
    pub origin: String,
}

impl Array {
    fn is_float(&self) -> bool {
        matches!(self.values, Values::Float(_))
    }

    fn describe(&self) -> String {
        format!("{} {:?}", self.dtype, self.shape)
    }
}

fn element_count(shape: &[usize], origin: &str) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .with_context(|| format!("{origin}: shape {shape:?} holds more values than this machine can address"))
}

/// Reads every value of type `T` from an npy stream, converting each with `f` (`None`: out of
/// range). Memory grows with the data actually read, not with what the header claims.
fn collect<T: npyz::Deserialize, R: Read, O>(npy: npyz::NpyFile<R>, n: usize, origin: &str, f: impl Fn(T) -> Option<O>) -> Result<Vec<O>> {
    let reader = npy.data::<T>().map_err(|e| anyhow!("{origin}: {e}"))?;
    let mut out = Vec::with_capacity(n.min(1 << 20));
    for (i, v) in reader.enumerate() {
        let v = v.map_err(|e| anyhow!("{origin}: the data end at value {i} of {n} ({e}); the file is truncated or corrupt"))?;
        out.push(f(v).with_context(|| format!("{origin}: value {i} does not fit a 64-bit signed integer"))?);
    }
    if out.len() != n {
        bail!("{origin}: read {} values, the header declares {n}; the file is truncated", out.len());
    }
    Ok(out)
}

/// C order from Fortran order (first axis fastest).
fn fortran_to_c<T: Copy>(data: &[T], shape: &[usize]) -> Vec<T> {
    if shape.len() < 2 {
        return data.to_vec();
    }
    let mut f_strides = vec![1usize; shape.len()];
    for a in 1..shape.len() {
        f_strides[a] = f_strides[a - 1] * shape[a - 1];
    }
    let mut out = Vec::with_capacity(data.len());
    let mut index = vec![0usize; shape.len()];
    for _ in 0..data.len() {
        out.push(data[index.iter().zip(&f_strides).map(|(i, s)| i * s).sum::<usize>()]);
        for a in (0..shape.len()).rev() {
            index[a] += 1;
            if index[a] < shape[a] {
                break;
            }
            index[a] = 0;
        }
    }
    out
}

/// Reads one `.npy` stream. `available` bounds the bytes the data may take (the file's or the
/// archive entry's size), so a header claiming more is refused before anything is allocated.
fn read_npy_stream<R: Read>(reader: R, origin: &str, available: u64) -> Result<Array> {
    let npy = npyz::NpyFile::new(reader).map_err(|e| anyhow!("{origin}: not a NumPy .npy array ({e})"))?;
    if npy.uses_pickled_array() {
        bail!(
            "{origin}: an object array (pickled Python objects, what NumPy makes of rows of different shapes); \
             store a padded number array [N, T(, D)] and give each row's length in `lengths`"
        );
    }
    let ts: TypeStr = match npy.dtype() {
        npyz::DType::Plain(ts) => ts,
        other => bail!("{origin}: a structured dtype {}; expected a plain number array", other.descr()),
    };
    let shape: Vec<usize> = npy
        .shape()
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| anyhow!("{origin}: shape {:?} is too large for this machine", npy.shape()))?;
    let n = element_count(&shape, origin)?;
    let item = ts.num_bytes().unwrap_or(0) as u64;
    let needed = (n as u64).saturating_mul(item);
    if needed > available {
        bail!("{origin}: the header declares {ts} {shape:?} ({needed} bytes of data), but only {available} bytes are there; the file is truncated");
    }
    let fortran = npy.order() == npyz::Order::Fortran;
    let values = match (ts.type_char(), ts.size_field()) {
        (TypeChar::Float, 4) => Values::Float(collect::<f32, _, _>(npy, n, origin, Some)?),
        (TypeChar::Float, 8) => Values::Float(collect::<f64, _, _>(npy, n, origin, |v| Some(v as f32))?),
        (TypeChar::Float, 2) => Values::Float(collect::<npyz::half::f16, _, _>(npy, n, origin, |v| Some(v.to_f32()))?),
        (TypeChar::Int, 1) => Values::Int(collect::<i8, _, _>(npy, n, origin, |v| Some(v.into()))?),
        (TypeChar::Int, 2) => Values::Int(collect::<i16, _, _>(npy, n, origin, |v| Some(v.into()))?),
        (TypeChar::Int, 4) => Values::Int(collect::<i32, _, _>(npy, n, origin, |v| Some(v.into()))?),
        (TypeChar::Int, 8) => Values::Int(collect::<i64, _, _>(npy, n, origin, Some)?),
        (TypeChar::Uint, 1) => Values::Int(collect::<u8, _, _>(npy, n, origin, |v| Some(v.into()))?),
        (TypeChar::Uint, 2) => Values::Int(collect::<u16, _, _>(npy, n, origin, |v| Some(v.into()))?),
        (TypeChar::Uint, 4) => Values::Int(collect::<u32, _, _>(npy, n, origin, |v| Some(v.into()))?),
        (TypeChar::Uint, 8) => Values::Int(collect::<u64, _, _>(npy, n, origin, |v| i64::try_from(v).ok())?),
        (TypeChar::Bool, 1) => Values::Int(collect::<bool, _, _>(npy, n, origin, |v| Some(v as i64))?),
        _ => bail!("{origin}: dtype {ts} is not a number type fpt reads (float16/32/64, signed or unsigned integers, bool)"),
    };
    let values = match (fortran, values) {
        (true, Values::Float(v)) => Values::Float(fortran_to_c(&v, &shape)),
        (true, Values::Int(v)) => Values::Int(fortran_to_c(&v, &shape)),
        (false, v) => v,
    };
    Ok(Array { shape, values, dtype: numpy_name(&ts), origin: origin.to_string() })
}

/// NumPy's name of a dtype (`float32`, `int64`, …), else its type string.
fn numpy_name(ts: &TypeStr) -> String {
    let bits = ts.size_field() * 8;
    match ts.type_char() {
        TypeChar::Float => format!("float{bits}"),
        TypeChar::Int => format!("int{bits}"),
        TypeChar::Uint => format!("uint{bits}"),
        TypeChar::Bool => "bool".into(),
        _ => ts.to_string(),
    }
}

/// Reads a `.npy` file.
pub fn read_npy(path: &Path) -> Result<Array> {
    crate::require_file(path, "a NumPy .npy file", || format!("{}: no such file", path.display()))?;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata().with_context(|| format!("reading the size of {}", path.display()))?.len();
    read_npy_stream(BufReader::new(file), &path.display().to_string(), size)
}

/// Where a split's arrays are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Npz(PathBuf),
    Safetensors(PathBuf),
    /// A folder of `<name>.npy` files.
    NpyFolder(PathBuf),
    /// One `.npy` file: the inputs alone (`fpt predict --inputs`).
    NpyInputs(PathBuf),
}

impl Source {
    pub fn path(&self) -> &Path {
        match self {
            Source::Npz(p) | Source::Safetensors(p) | Source::NpyFolder(p) | Source::NpyInputs(p) => p,
        }
    }

    /// The source a path names by its extension or kind: `.npz`, `.safetensors`, `.npy`, or a
    /// folder of `.npy` files.
    pub fn of_path(path: &Path) -> Result<Source> {
        let meta = std::fs::metadata(path).with_context(|| format!("{}: no such file or folder", path.display()))?;
        if meta.is_dir() {
            return Ok(Source::NpyFolder(path.to_path_buf()));
        }
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("npz") => Ok(Source::Npz(path.to_path_buf())),
            Some("safetensors") => Ok(Source::Safetensors(path.to_path_buf())),
            Some("npy") => Ok(Source::NpyInputs(path.to_path_buf())),
            _ => bail!("{}: expected a .npz, .safetensors or .npy file, or a folder holding inputs.npy", path.display()),
        }
    }

    /// Reads the arrays of `names` that the source holds; also returns every name it holds.
    pub fn read(&self, names: &[&str]) -> Result<(BTreeMap<String, Array>, Vec<String>)> {
        let mut out = BTreeMap::new();
        match self {
            Source::Npz(path) => {
                crate::require_file(path, "a NumPy .npz archive", || format!("{}: no such file", path.display()))?;
                let mut archive = npyz::npz::NpzArchive::open(path)
                    .map_err(|e| anyhow!("{}: not a NumPy .npz archive (a zip of .npy files): {e}", path.display()))?;
                let held: Vec<String> = archive.array_names().map(String::from).collect();
                for &name in names {
                    let zip = archive.zip_archive();
                    let entry = match zip.by_name(&npyz::npz::file_name_from_array_name(name)) {
                        Ok(entry) => entry,
                        Err(npyz::zip::result::ZipError::FileNotFound) => continue,
                        Err(e) => bail!("{}: array {name}: {e}", path.display()),
                    };
                    let size = entry.size();
                    let origin = format!("{}: array {name}", path.display());
                    out.insert(name.to_string(), read_npy_stream(BufReader::new(entry), &origin, size)?);
                }
                Ok((out, held))
            }
            Source::Safetensors(path) => {
                crate::require_file(path, "a safetensors file", || format!("{}: no such file", path.display()))?;
                let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                let file = safetensors::SafeTensors::deserialize(&bytes)
                    .map_err(|e| anyhow!("{}: not a valid safetensors file ({e})", path.display()))?;
                let mut held: Vec<String> = file.names().into_iter().map(String::from).collect();
                held.sort();
                for &name in names {
                    let Ok(view) = file.tensor(name) else { continue };
                    let origin = format!("{}: tensor {name}", path.display());
                    out.insert(name.to_string(), safetensors_array(&view, &origin)?);
                }
                Ok((out, held))
            }
            Source::NpyFolder(dir) => {
                let mut held = Vec::new();
                let entries = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
                for entry in entries {
                    let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if let Some(stem) = name.strip_suffix(".npy") {
                        held.push(stem.to_string());
                    }
                }
                held.sort();
                for &name in names {
                    let path = dir.join(format!("{name}.npy"));
                    if path.exists() {
                        out.insert(name.to_string(), read_npy(&path)?);
                    }
                }
                Ok((out, held))
            }
            Source::NpyInputs(path) => {
                if names.contains(&INPUTS) {
                    out.insert(INPUTS.to_string(), read_npy(path)?);
                }
                Ok((out, vec![INPUTS.to_string()]))
            }
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::NpyFolder(p) => write!(f, "{}/", p.display()),
            other => write!(f, "{}", other.path().display()),
        }
    }
}

/// NumPy's name for a safetensors dtype.
fn dtype_name(d: safetensors::Dtype) -> String {
    use safetensors::Dtype::*;
    match d {
        F16 => "float16".into(),
        BF16 => "bfloat16".into(),
        F32 => "float32".into(),
        F64 => "float64".into(),
        I8 => "int8".into(),
        I16 => "int16".into(),
        I32 => "int32".into(),
        I64 => "int64".into(),
        U8 => "uint8".into(),
        U16 => "uint16".into(),
        U32 => "uint32".into(),
        U64 => "uint64".into(),
        BOOL => "bool".into(),
        other => format!("{other:?}"),
    }
}

fn safetensors_array(view: &safetensors::tensor::TensorView<'_>, origin: &str) -> Result<Array> {
    use npyz::half::{bf16, f16};
    use safetensors::Dtype;
    let shape = view.shape().to_vec();
    let n = element_count(&shape, origin)?;
    let data = view.data();
    fn each<const B: usize, O>(data: &[u8], f: impl Fn([u8; B]) -> O) -> Vec<O> {
        data.chunks_exact(B).map(|c| f(c.try_into().expect("chunks_exact gives B bytes"))).collect()
    }
    let values = match view.dtype() {
        Dtype::F32 => Values::Float(each::<4, _>(data, f32::from_le_bytes)),
        Dtype::F64 => Values::Float(each::<8, _>(data, |b| f64::from_le_bytes(b) as f32)),
        Dtype::F16 => Values::Float(each::<2, _>(data, |b| f16::from_le_bytes(b).to_f32())),
        Dtype::BF16 => Values::Float(each::<2, _>(data, |b| bf16::from_le_bytes(b).to_f32())),
        Dtype::I8 => Values::Int(data.iter().map(|&b| b as i8 as i64).collect()),
        Dtype::U8 => Values::Int(data.iter().map(|&b| b as i64).collect()),
        Dtype::BOOL => Values::Int(data.iter().map(|&b| (b != 0) as i64).collect()),
        Dtype::I16 => Values::Int(each::<2, _>(data, |b| i16::from_le_bytes(b) as i64)),
        Dtype::U16 => Values::Int(each::<2, _>(data, |b| u16::from_le_bytes(b) as i64)),
        Dtype::I32 => Values::Int(each::<4, _>(data, |b| i32::from_le_bytes(b) as i64)),
        Dtype::U32 => Values::Int(each::<4, _>(data, |b| u32::from_le_bytes(b) as i64)),
        Dtype::I64 => Values::Int(each::<8, _>(data, i64::from_le_bytes)),
        Dtype::U64 => {
            let v: Vec<u64> = each::<8, _>(data, u64::from_le_bytes);
            if let Some(i) = v.iter().position(|&x| x > i64::MAX as u64) {
                bail!("{origin}: value {i} ({}) does not fit a 64-bit signed integer", v[i]);
            }
            Values::Int(v.into_iter().map(|x| x as i64).collect())
        }
        other => bail!("{origin}: dtype {other:?} is not a number type fpt reads (F16/BF16/F32/F64, signed or unsigned integers, BOOL)"),
    };
    let len = match &values {
        Values::Float(v) => v.len(),
        Values::Int(v) => v.len(),
    };
    if len != n {
        bail!("{origin}: holds {len} values, its shape {shape:?} needs {n}");
    }
    Ok(Array { shape, values, dtype: dtype_name(view.dtype()), origin: origin.to_string() })
}

/// The layout of one split in `dir`, if the split is there.
pub fn split_source(dir: &Path, split: Split) -> Result<Option<Source>> {
    let name = split.name();
    let mut found = Vec::new();
    for (path, make) in [
        (dir.join(format!("{name}.npz")), Source::Npz as fn(PathBuf) -> Source),
        (dir.join(format!("{name}.safetensors")), Source::Safetensors),
    ] {
        if std::fs::metadata(&path).is_ok() {
            crate::require_file(&path, &format!("the {split} split"), String::new)?;
            found.push(make(path));
        }
    }
    let folder = dir.join(name);
    match std::fs::metadata(&folder) {
        Ok(m) if m.is_dir() => {
            if !folder.join(format!("{INPUTS}.npy")).exists() {
                bail!("{}: a folder, but it holds no {INPUTS}.npy (a split folder holds {INPUTS}.npy, {LABELS}.npy and optionally {LENGTHS}.npy)", folder.display());
            }
            found.push(Source::NpyFolder(folder));
        }
        Ok(_) => bail!(
            "{}: is not a folder; a split given as .npy files is a folder {name}/ holding {INPUTS}.npy and {LABELS}.npy",
            folder.display()
        ),
        Err(_) => {}
    }
    let lone = dir.join(format!("{name}.npy"));
    if lone.exists() {
        bail!(
            "{}: a .npy file holds one array, a split needs {INPUTS} and {LABELS}: write {name}.npz (np.savez) or a folder {name}/ with {INPUTS}.npy and {LABELS}.npy",
            lone.display()
        );
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => bail!("{} and {} both hold the {split} split; keep one", found[0], found[1]),
    }
}

/// One split in memory.
#[derive(Debug)]
struct SplitArrays {
    n: usize,
    /// Tokens per stored row.
    t: usize,
    /// Features per token (1 for token ids).
    dim: usize,
    inputs: Values,
    /// `n × k` class ids; empty for unlabelled inputs.
    labels: Vec<i64>,
    lengths: Option<Vec<usize>>,
}

/// What the inputs of a split are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Dense { dim: usize },
    Tokens,
}

/// Checks and shapes a split's inputs (and lengths); `k` is the read-out tokens each example needs.
fn inputs_of(inputs: Array, lengths: Option<Array>, vocab: Option<usize>, k: usize) -> Result<(Kind, SplitArrays)> {
    let origin = inputs.origin.clone();
    let (kind, n, t, dim) = match (inputs.is_float(), inputs.shape.as_slice()) {
        (true, &[n, t, d]) => (Kind::Dense { dim: d }, n, t, d),
        (false, &[n, t]) => (Kind::Tokens, n, t, 1),
        (true, &[_, _]) => bail!(
            "{origin}: float {} inputs: dense features must be [N, T, D] (for one feature per token add a last axis of 1); integer [N, T] arrays are token ids",
            inputs.describe()
        ),
        (false, &[_, _, _]) => bail!(
            "{origin}: integer {} inputs: token ids are [N, T]; features [N, T, D] must be floats (e.g. x.astype(np.float32) / 255)",
            inputs.describe()
        ),
        _ => bail!("{origin}: inputs are {}; expected float features [N, T, D] or integer token ids [N, T]", inputs.describe()),
    };
    if n == 0 {
        bail!("{origin}: no examples (shape {:?})", inputs.shape);
    }
    if t == 0 || dim == 0 {
        bail!("{origin}: shape {:?} has an empty axis; expected at least one token and one feature", inputs.shape);
    }
    let lengths = match lengths {
        None => None,
        Some(l) => {
            let lo = &l.origin;
            let Values::Int(v) = &l.values else { bail!("{lo}: lengths are {}; expected integers", l.describe()) };
            if l.shape != [n] {
                bail!("{lo}: lengths have shape {:?}, the inputs hold {n} examples; expected [{n}]", l.shape);
            }
            let mut out = Vec::with_capacity(n);
            for (i, &len) in v.iter().enumerate() {
                if len < k.max(1) as i64 || len > t as i64 {
                    bail!("{lo}: length {len} of example {i} is outside {}..={t} (at least the {k} read-out token(s), at most the inputs' {t} tokens)", k.max(1));
                }
                out.push(len as usize);
            }
            Some(out)
        }
    };
    let len_of = |i: usize| lengths.as_ref().map_or(t, |l| l[i]);
    match (&kind, &inputs.values) {
        (Kind::Dense { .. }, Values::Float(v)) => {
            if vocab.is_some() {
                bail!("{origin}: vocab is set, but the inputs are float features ({}); vocab is for integer token ids", inputs.describe());
            }
            for i in 0..n {
                let row = &v[i * t * dim..(i * t + len_of(i)) * dim];
                if let Some(j) = row.iter().position(|x| !x.is_finite()) {
                    bail!("{origin}: example {i}, token {}, feature {}: {} is not a finite number", j / dim, j % dim, row[j]);
                }
            }
        }
        (Kind::Tokens, Values::Int(v)) => {
            let Some(vocab) = vocab else {
                bail!(
                    "{origin}: the inputs are integer token ids ({}); set vocab in the task (every id must be below it)",
                    inputs.describe()
                );
            };
            for i in 0..n {
                let row = &v[i * t..i * t + len_of(i)];
                if let Some(j) = row.iter().position(|&x| x < 0 || x >= vocab as i64) {
                    bail!("{origin}: example {i}, token {j}: id {} is outside the vocabulary 0..{vocab}", row[j]);
                }
            }
        }
        _ => unreachable!("kind follows the values"),
    }
    Ok((kind, SplitArrays { n, t, dim, inputs: inputs.values, labels: Vec::new(), lengths }))
}

/// A task read from array files ([module docs](self)).
#[derive(Debug)]
pub struct ArraysTask {
    spec: TaskSpec,
    splits: Vec<(Split, SplitArrays)>,
    notes: Vec<String>,
}

impl ArraysTask {
    /// Loads the splits in `dir`. `vocab`: token-id inputs' vocabulary (required for them);
    /// `classes`: classes per prediction (default: the largest label + 1).
    pub fn load(dir: &Path, vocab: Option<usize>, classes: Option<usize>) -> Result<Self> {
        if vocab == Some(0) {
            bail!("arrays: vocab = 0; expected the number of token ids (ids are 0..vocab)");
        }
        if classes == Some(0) {
            bail!("arrays: classes = 0; expected at least 2");
        }
        if !dir.exists() {
            bail!(
                "{}: no such folder (the arrays task reads train/val/test .npz, .safetensors or .npy files from it; set task.path)",
                dir.display()
            );
        }
        let mut splits = Vec::new();
        let mut notes = Vec::new();
        // (kind, readout tokens, has lengths, tokens) of the first split, which the others must match.
        let mut first: Option<(Kind, usize, bool, usize, String)> = None;
        let mut max_label = -1i64;
        let mut label_files = Vec::new();
        for split in Split::ALL {
            let Some(source) = split_source(dir, split)? else { continue };
            let (mut arrays, held) = source.read(&[INPUTS, LABELS, LENGTHS])?;
            let missing =
                |name: &str| anyhow!("{source}: no array named {name} (it holds {}); a split needs {INPUTS} and {LABELS}", list(&held));
            let inputs = arrays.remove(INPUTS).ok_or_else(|| missing(INPUTS))?;
            let labels = arrays.remove(LABELS).ok_or_else(|| missing(LABELS))?;
            let lengths = arrays.remove(LENGTHS);
            let lo = labels.origin.clone();
            let label_desc = labels.describe();
            let Values::Int(label_values) = labels.values else {
                bail!("{lo}: labels are {}; expected integer class ids", labels.describe());
            };
            let k = match *labels.shape.as_slice() {
                [_] => 1,
                [_, k] if k > 0 => k,
                _ => {
                    bail!("{lo}: labels have shape {:?}; expected [N] (one class per example) or [N, K] (K read-out tokens)", labels.shape)
                }
            };
            let (input_desc, length_desc) = (inputs.describe(), lengths.as_ref().map(Array::describe));
            let has_lengths = lengths.is_some();
            let (kind, mut data) = inputs_of(inputs, lengths, vocab, k)?;
            if labels.shape[0] != data.n {
                bail!("{lo}: labels hold {} examples, the inputs {} (mismatched lengths)", labels.shape[0], data.n);
            }
            if data.t < k {
                bail!("{source}: {k} labels per example need {k} read-out tokens, but the inputs have {} tokens", data.t);
            }
            if let Some(i) = label_values.iter().position(|&l| l < 0) {
                bail!("{lo}: label {} of example {} is negative; expected class ids 0, 1, …", label_values[i], i / k);
            }
            if let Some(c) = classes {
                if let Some(i) = label_values.iter().position(|&l| l >= c as i64) {
                    bail!("{lo}: label {} of example {} is outside the classes 0..{c} (classes = {c})", label_values[i], i / k);
                }
            }
            max_label = max_label.max(label_values.iter().copied().max().unwrap_or(-1));
            data.labels = label_values;
            match &first {
                None => first = Some((kind, k, has_lengths, data.t, source.to_string())),
                Some((kind0, k0, lengths0, t0, src0)) => {
                    if *kind0 != kind {
                        bail!(
                            "{source}: inputs are {}, but {src0}'s are {}; every split needs the same kind of inputs",
                            kind_text(kind),
                            kind_text(*kind0)
                        );
                    }
                    if *k0 != k {
                        bail!("{lo}: {k} label(s) per example, but {src0} has {k0}; every split needs the same");
                    }
                    if *lengths0 != has_lengths {
                        bail!(
                            "{source}: {} lengths, but {src0} {}; give lengths in every split or in none",
                            if has_lengths { "has" } else { "has no" },
                            if *lengths0 { "has" } else { "has none" }
                        );
                    }
                    if !has_lengths && *t0 != data.t {
                        bail!("{source}: inputs of {} tokens, but {src0}'s have {t0}; without lengths every split needs the same number of tokens", data.t);
                    }
                }
            }
            notes.push(format!(
                "{split}: {} examples from {source} (inputs {input_desc}, labels {label_desc}{})",
                data.n,
                length_desc.map(|l| format!(", lengths {l}")).unwrap_or_default()
            ));
            label_files.push(lo);
            splits.push((split, data));
        }
        let Some((kind, k, has_lengths, _, _)) = first else {
            bail!(
                "{}: no split files: expected train.npz, train.safetensors or train/{INPUTS}.npy + train/{LABELS}.npy (and the same for test, optionally val)",
                dir.display()
            );
        };
        let classes = match classes {
            Some(c) => {
                notes.push(format!("classes: {c} (stated)"));
                c
            }
            None => {
                let c = (max_label + 1) as usize;
                if c < 2 {
                    bail!("{}: every label is {max_label}; a classifier needs at least 2 classes (set classes in the task if the others are absent from these files)", label_files.join(", "));
                }
                notes.push(format!("classes: {c} (the largest label + 1)"));
                c
            }
        };
        let seq_len = splits.iter().map(|(_, s)| s.t).max().unwrap_or(1);
        let spec = TaskSpec {
            name: "arrays".into(),
            input: match kind {
                Kind::Dense { dim } => InputKind::Dense { dim },
                Kind::Tokens => InputKind::Tokens { vocab: vocab.unwrap_or(1) },
            },
            seq_len,
            predictions: k,
            classes,
            readout_tokens: k,
            padding: if has_lengths { Padding::Masked } else { Padding::None },
        };
        Ok(ArraysTask { spec, splits, notes })
    }

    /// Unlabelled inputs for a trained run (`fpt predict`): the `inputs` (and `lengths`) of a
    /// `.npy`, `.npz` or `.safetensors` file or a folder holding `inputs.npy`, as the test split,
    /// checked against the run's task `like` (same kind of input, same features or vocabulary).
    pub fn unlabelled(path: &Path, like: &TaskSpec) -> Result<Self> {
        let source = Source::of_path(path)?;
        let (mut arrays, held) = source.read(&[INPUTS, LENGTHS])?;
        let inputs = arrays.remove(INPUTS).with_context(|| format!("{source}: no array named {INPUTS} (it holds {})", list(&held)))?;
        let lengths = arrays.remove(LENGTHS);
        let vocab = match like.input {
            InputKind::Tokens { vocab } => Some(vocab),
            InputKind::Dense { .. } => None,
        };
        let origin = inputs.origin.clone();
        match (inputs.is_float(), like.input) {
            (true, InputKind::Tokens { vocab }) => {
                bail!("{origin}: inputs are floats ({}); the run's task takes integer token ids below {vocab}, [N, T]", inputs.describe())
            }
            (false, InputKind::Dense { dim }) => {
                bail!("{origin}: inputs are integers ({}); the run's task takes float features [N, T, {dim}]", inputs.describe())
            }
            _ => {}
        }
        let has_lengths = lengths.is_some();
        let (kind, data) = inputs_of(inputs, lengths, vocab, like.readout_tokens)?;
        match (kind, like.input) {
            (Kind::Dense { dim }, InputKind::Dense { dim: want }) if dim != want => {
                bail!("{origin}: {dim} features per token, the run's task has {want}")
            }
            (Kind::Dense { .. }, InputKind::Tokens { .. }) | (Kind::Tokens, InputKind::Dense { .. }) => {
                bail!("{origin}: inputs are {}, the run's task takes {}", kind_text(kind), input_text(like.input))
            }
            _ => {}
        }
        if like.padding == Padding::None && data.t != like.seq_len {
            bail!("{origin}: {} tokens per example, the run's task has {}", data.t, like.seq_len);
        }
        if has_lengths && !like.padding.has_lengths() {
            bail!("{origin}: holds lengths, but the run's task has examples of one length ({} tokens)", like.seq_len);
        }
        let spec = TaskSpec { seq_len: data.t, ..like.clone() };
        let notes = vec![format!("{} examples from {source}", data.n)];
        Ok(ArraysTask { spec, splits: vec![(Split::Test, data)], notes })
    }

    fn split(&self, split: Split) -> Option<&SplitArrays> {
        self.splits.iter().find(|(s, _)| *s == split).map(|(_, d)| d)
    }
}

/// The names, sorted: an .npz archive's member order is not guaranteed, and messages must not vary.
fn list(names: &[String]) -> String {
    if names.is_empty() {
        return "nothing".into();
    }
    let mut sorted = names.to_vec();
    sorted.sort();
    sorted.join(", ")
}

fn kind_text(kind: Kind) -> String {
    match kind {
        Kind::Dense { dim } => format!("float features of {dim}"),
        Kind::Tokens => "integer token ids".into(),
    }
}

fn input_text(input: InputKind) -> String {
    match input {
        InputKind::Dense { dim } => format!("float features of {dim}"),
        InputKind::Tokens { vocab } => format!("token ids below {vocab}"),
    }
}

impl Task for ArraysTask {
    fn spec(&self) -> &TaskSpec {
        &self.spec
    }

    fn len(&self, split: Split) -> Option<usize> {
        Some(self.split(split).map_or(0, |s| s.n))
    }

    fn write_example(&self, split: Split, index: usize, _augment: bool, _rng: &mut TaskRng, input: InputSlot<'_>, targets: &mut [i64]) {
        let s = self.split(split).expect("index within a present split");
        let len = s.lengths.as_ref().map_or(s.t, |l| l[index]);
        let (t, dim) = (s.t, s.dim);
        match (input, &s.inputs) {
            (InputSlot::Dense(x), Values::Float(v)) => {
                let take = len.min(x.len() / dim) * dim;
                x[..take].copy_from_slice(&v[index * t * dim..index * t * dim + take]);
                x[take..].fill(0.0);
            }
            (InputSlot::Tokens(x), Values::Int(v)) => {
                let take = len.min(x.len());
                x[..take].copy_from_slice(&v[index * t..index * t + take]);
                x[take..].fill(0);
            }
            _ => unreachable!("the input slot follows the spec"),
        }
        let k = targets.len();
        if s.labels.is_empty() {
            targets.fill(0);
        } else {
            targets.copy_from_slice(&s.labels[index * k..(index + 1) * k]);
        }
    }

    fn example_len(&self, split: Split, index: usize) -> usize {
        self.split(split).map_or(self.spec.seq_len, |s| s.lengths.as_ref().map_or(s.t, |l| l[index]))
    }

    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fortran_order_becomes_c_order() {
        // A 2×3 array [[0, 1, 2], [3, 4, 5]] stored column-major.
        assert_eq!(fortran_to_c(&[0, 3, 1, 4, 2, 5], &[2, 3]), vec![0, 1, 2, 3, 4, 5]);
        // 2×2×2: value = 4a + 2b + c, stored with a fastest.
        let f: Vec<i32> = (0..8)
            .map(|i| {
                let (a, b, c) = (i % 2, (i / 2) % 2, i / 4);
                4 * a + 2 * b + c
            })
            .collect();
        assert_eq!(fortran_to_c(&f, &[2, 2, 2]), (0..8).collect::<Vec<_>>());
    }
}
