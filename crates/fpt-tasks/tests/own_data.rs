//! The `arrays` and `image-folder` tasks on fixtures written here in the real formats (NumPy
//! .npy/.npz through npyz, safetensors, PNG/JPEG through the `image` crate): what they load, the
//! tokens they make, and every kind of bad input (an error naming the file, never a panic).

use fpt_tasks::arrays::ArraysTask;
use fpt_tasks::batch::assemble;
use fpt_tasks::image_folder::{Color, Fit, ImageFolder, ImageSettings};
use fpt_tasks::{load_task, InputKind, Padding, Split, Task, TaskConfig};
use npyz::WriterBuilder;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::Device;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("own-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn npy<T: npyz::AutoSerialize + Copy>(shape: &[u64], data: &[T], fortran: bool) -> Vec<u8> {
    let mut buf = Vec::new();
    let order = if fortran { npyz::Order::Fortran } else { npyz::Order::C };
    let mut w = npyz::WriteOptions::<T>::new().default_dtype().shape(shape).order(order).writer(&mut buf).begin_nd().unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
    buf
}

/// An .npy file written by hand: header with `descr` and `shape`, then `data`.
fn raw_npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let padded = format!("{header:<117}\n");
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(padded.len() as u16).to_le_bytes());
    bytes.extend_from_slice(padded.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

fn write_npz(path: &Path, arrays: &[(&str, Vec<u8>)]) {
    let mut zip = npyz::zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in arrays {
        zip.start_file(format!("{name}.npy"), npyz::zip::write::FileOptions::default()).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

fn write_safetensors(path: &Path, tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> =
        tensors.iter().map(|(n, d, s, b)| (n.to_string(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap())).collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn le<T: Copy>(v: &[T], f: impl Fn(T) -> Vec<u8>) -> Vec<u8> {
    v.iter().flat_map(|&x| f(x)).collect()
}

/// Example i, token t, feature d = i + t / 10 + d / 100; label i % 3.
fn features(n: usize, t: usize, d: usize) -> (Vec<f32>, Vec<i64>) {
    let x = (0..n).flat_map(|i| (0..t).flat_map(move |j| (0..d).map(move |k| i as f32 + j as f32 / 10.0 + k as f32 / 100.0))).collect();
    (x, (0..n as i64).map(|i| i % 3).collect())
}

fn cfg(value: serde_json::Value) -> TaskConfig {
    serde_json::from_value(value).unwrap()
}

fn arrays(dir: &Path) -> TaskConfig {
    cfg(serde_json::json!({ "name": "arrays", "path": dir }))
}

fn load_err(cfg: &TaskConfig) -> String {
    match load_task(cfg, 0) {
        Ok(_) => panic!("loading {cfg:?} should fail"),
        Err(e) => format!("{e:#}"),
    }
}

fn assert_err(cfg: &TaskConfig, needles: &[&str]) {
    let err = load_err(cfg);
    for n in needles {
        assert!(err.contains(n), "error lacks {n:?}: {err}");
    }
}

#[test]
fn arrays_read_alike_from_npz_safetensors_and_npy_folders() {
    let dir = scratch("arrays-formats");
    let (x, y) = features(6, 4, 3);
    // train: .npz (deflated), val: .safetensors, test: a folder of .npy files.
    write_npz(&dir.join("train.npz"), &[("inputs", npy(&[6, 4, 3], &x, false)), ("labels", npy(&[6], &y, false))]);
    write_safetensors(
        &dir.join("val.safetensors"),
        &[
            ("inputs", safetensors::Dtype::F32, vec![6, 4, 3], le(&x, |v| v.to_le_bytes().to_vec())),
            ("labels", safetensors::Dtype::U8, vec![6], y.iter().map(|&l| l as u8).collect()),
        ],
    );
    std::fs::create_dir(dir.join("test")).unwrap();
    std::fs::write(dir.join("test/inputs.npy"), npy(&[6, 4, 3], &x, false)).unwrap();
    std::fs::write(dir.join("test/labels.npy"), npy(&[6], &y.iter().map(|&l| l as i32).collect::<Vec<_>>(), false)).unwrap();
    let task = load_task(&arrays(&dir), 0).unwrap();
    let spec = task.spec();
    assert_eq!(spec.input, InputKind::Dense { dim: 3 });
    assert_eq!((spec.seq_len, spec.classes, spec.predictions, spec.padding), (4, 3, 1, Padding::None));
    let batches: Vec<_> = Split::ALL.iter().map(|&s| assemble(task.as_ref(), s, &[0, 1, 2, 3, 4, 5], false, 0, 0, Device::Cpu)).collect();
    for b in &batches[1..] {
        assert!(b.x.equal(&batches[0].x) && b.y.equal(&batches[0].y));
    }
    assert_eq!(batches[0].x.size(), vec![6, 4, 3]);
    assert!((batches[0].x.double_value(&[5, 2, 1]) - 5.21).abs() < 1e-6);
    assert_eq!(batches[0].y.int64_value(&[4, 0]), 1);
    assert!(task.notes().iter().any(|n| n.contains("float32 [6, 4, 3]")), "{:?}", task.notes());
}

#[test]
fn arrays_of_other_dtypes_and_fortran_order_are_converted() {
    let dir = scratch("arrays-dtypes");
    let (x, y) = features(4, 3, 2);
    // Fortran order: the first axis fastest.
    let mut xf = vec![0f64; x.len()];
    for i in 0..4 {
        for j in 0..3 {
            for k in 0..2 {
                xf[i + 4 * (j + 3 * k)] = x[(i * 3 + j) * 2 + k] as f64;
            }
        }
    }
    write_npz(
        &dir.join("train.npz"),
        &[("inputs", npy(&[4, 3, 2], &xf, true)), ("labels", npy(&[4], &y.iter().map(|&l| l as u16).collect::<Vec<_>>(), false))],
    );
    let half: Vec<u8> = le(&x, |v| npyz::half::f16::from_f32(v).to_le_bytes().to_vec());
    write_safetensors(
        &dir.join("test.safetensors"),
        &[
            ("inputs", safetensors::Dtype::F16, vec![4, 3, 2], half),
            ("labels", safetensors::Dtype::I64, vec![4], le(&y, |v| v.to_le_bytes().to_vec())),
        ],
    );
    let task = load_task(&cfg(serde_json::json!({ "name": "arrays", "path": dir, "classes": 5 })), 0).unwrap();
    assert_eq!(task.spec().classes, 5);
    let train = assemble(task.as_ref(), Split::Train, &[0, 1, 2, 3], false, 0, 0, Device::Cpu);
    let test = assemble(task.as_ref(), Split::Test, &[0, 1, 2, 3], false, 0, 0, Device::Cpu);
    assert!((train.x.double_value(&[3, 1, 1]) - 3.11).abs() < 1e-6);
    assert!((&train.x - &test.x).abs().max().double_value(&[]) < 2e-3, "f16 is close to f32");
    assert!(train.y.equal(&test.y));
}

#[test]
fn arrays_of_tokens_with_lengths_are_padded_and_masked() {
    let dir = scratch("arrays-tokens");
    // Two read-out tokens per example: labels [N, 2].
    let ids: Vec<i64> = vec![1, 2, 3, 4, 5, 0, 9, 9, 4, 3, 2, 1];
    write_npz(
        &dir.join("train.npz"),
        &[
            ("inputs", npy(&[3, 4], &ids, false)),
            ("labels", npy(&[3, 2], &[0i64, 1, 1, 0, 1, 1], false)),
            ("lengths", npy(&[3], &[4i64, 2, 3], false)),
            ("notes", npy(&[1], &[0u8], false)),
        ],
    );
    write_npz(
        &dir.join("test.npz"),
        &[
            ("inputs", npy(&[1, 6], &[1i32, 1, 1, 1, 1, 1], false)),
            ("labels", npy(&[1, 2], &[0i64, 0], false)),
            ("lengths", npy(&[1], &[6i64], false)),
        ],
    );
    let task = load_task(&cfg(serde_json::json!({ "name": "arrays", "path": dir, "vocab": 6 })), 0).unwrap();
    let spec = task.spec();
    assert_eq!(spec.input, InputKind::Tokens { vocab: 6 });
    // The padding past each length (here 9, outside the vocabulary) is never read.
    assert_eq!((spec.seq_len, spec.predictions, spec.readout_tokens, spec.classes, spec.padding), (6, 2, 2, 2, Padding::Masked));
    assert_eq!(task.example_len(Split::Train, 1), 2);
    let b = assemble(task.as_ref(), Split::Train, &[1, 2], false, 0, 0, Device::Cpu);
    assert_eq!(b.x.size(), vec![2, 3]);
    assert_eq!(Vec::<i64>::try_from(b.x.reshape([-1])).unwrap(), vec![5, 0, 0, 4, 3, 2]);
    assert_eq!(Vec::<i64>::try_from(b.lengths.unwrap()).unwrap(), vec![2, 3]);
    assert_eq!(Vec::<i64>::try_from(b.y.reshape([-1])).unwrap(), vec![1, 0, 1, 1]);
}

/// A split of `n` examples of 4 tokens × 2 features with labels i % 2, as train.npz in `dir`,
/// with `edit` applied to the (inputs, labels) arrays first.
fn npz_split(dir: &Path, split: &str, n: u64) {
    let (x, _) = features(n as usize, 4, 2);
    let y: Vec<i64> = (0..n as i64).map(|i| i % 2).collect();
    write_npz(&dir.join(format!("{split}.npz")), &[("inputs", npy(&[n, 4, 2], &x, false)), ("labels", npy(&[n], &y, false))]);
}

#[test]
fn bad_array_files_are_named() {
    let root = scratch("arrays-bad");
    let case = |name: &str| {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    // Nothing there.
    let d = case("empty");
    assert_err(&arrays(&d), &["no split files", "train.npz"]);
    assert_err(&arrays(&root.join("absent")), &["no such folder"]);

    // A .npz that is not a zip; a .npy that is not an .npy; a truncated .npy.
    let d = case("not-zip");
    std::fs::write(d.join("train.npz"), b"this is not a zip archive").unwrap();
    assert_err(&arrays(&d), &["train.npz", "not a NumPy .npz"]);
    let d = case("wrong-magic");
    std::fs::create_dir(d.join("train")).unwrap();
    std::fs::write(d.join("train/inputs.npy"), b"\x93NUMPX garbage garbage garbage").unwrap();
    assert_err(&arrays(&d), &["train/inputs.npy", "not a NumPy .npy"]);
    let d = case("truncated");
    std::fs::create_dir(d.join("train")).unwrap();
    let (x, y) = features(5, 4, 2);
    let full = npy(&[5, 4, 2], &x, false);
    std::fs::write(d.join("train/inputs.npy"), &full[..full.len() - 7]).unwrap();
    std::fs::write(d.join("train/labels.npy"), npy(&[5], &y, false)).unwrap();
    assert_err(&arrays(&d), &["train/inputs.npy", "truncated"]);
    // A header claiming far more data than the file holds is refused before allocating.
    let d = case("huge-header");
    std::fs::create_dir(d.join("train")).unwrap();
    std::fs::write(d.join("train/inputs.npy"), raw_npy("<f4", "(1099511627776, 4, 2)", &[0u8; 64])).unwrap();
    std::fs::write(d.join("train/labels.npy"), npy(&[5], &y, false)).unwrap();
    assert_err(&arrays(&d), &["train/inputs.npy", "truncated"]);

    // A ragged (object) array: NumPy pickles rows of different lengths.
    let d = case("object");
    std::fs::create_dir(d.join("train")).unwrap();
    std::fs::write(d.join("train/inputs.npy"), raw_npy("|O", "(2,)", b"\x80\x04garbage pickle")).unwrap();
    std::fs::write(d.join("train/labels.npy"), npy(&[2], &[0i64, 1], false)).unwrap();
    assert_err(&arrays(&d), &["train/inputs.npy", "object array", "lengths"]);

    // Safetensors garbage.
    let d = case("bad-safetensors");
    std::fs::write(d.join("test.safetensors"), b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage").unwrap();
    assert_err(&arrays(&d), &["test.safetensors", "not a valid safetensors"]);

    // Mismatched lengths inside one file; a missing array; float labels; float [N, T] inputs;
    // integer [N, T, D] inputs.
    let d = case("mismatch");
    write_npz(&d.join("train.npz"), &[("inputs", npy(&[5, 4, 2], &x, false)), ("labels", npy(&[4], &y[..4], false))]);
    assert_err(&arrays(&d), &["train.npz: array labels", "labels hold 4 examples, the inputs 5"]);
    let d = case("no-labels");
    write_npz(&d.join("train.npz"), &[("inputs", npy(&[5, 4, 2], &x, false)), ("label", npy(&[5], &y, false))]);
    assert_err(&arrays(&d), &["train.npz", "no array named labels", "inputs, label"]);
    let d = case("float-labels");
    write_npz(&d.join("train.npz"), &[("inputs", npy(&[5, 4, 2], &x, false)), ("labels", npy(&[5], &[0.0f32, 1.0, 0.0, 1.0, 0.0], false))]);
    assert_err(&arrays(&d), &["array labels", "expected integer class ids"]);
    let d = case("flat-features");
    write_npz(&d.join("train.npz"), &[("inputs", npy(&[5, 8], &x, false)), ("labels", npy(&[5], &y, false))]);
    assert_err(&arrays(&d), &["array inputs", "[N, T, D]"]);
    let d = case("int-features");
    write_npz(&d.join("train.npz"), &[("inputs", npy(&[5, 4, 2], &vec![1i64; 40], false)), ("labels", npy(&[5], &y, false))]);
    assert_err(&arrays(&d), &["array inputs", "must be floats"]);

    // Labels outside the stated classes, negative labels, a single class.
    let d = case("labels");
    npz_split(&d, "train", 6);
    assert_err(
        &cfg(serde_json::json!({ "name": "arrays", "path": d, "classes": 1 })),
        &["label 1 of example 1", "outside the classes 0..1"],
    );
    let d2 = case("negative");
    write_npz(&d2.join("train.npz"), &[("inputs", npy(&[5, 4, 2], &x, false)), ("labels", npy(&[5], &[0i64, 1, -1, 0, 1], false))]);
    assert_err(&arrays(&d2), &["label -1 of example 2 is negative"]);
    let d2 = case("one-class");
    write_npz(&d2.join("train.npz"), &[("inputs", npy(&[5, 4, 2], &x, false)), ("labels", npy(&[5], &[0i64; 5], false))]);
    assert_err(&arrays(&d2), &["every label is 0", "at least 2 classes"]);

    // Non-finite features; token ids outside the vocabulary; no vocabulary for ids.
    let d = case("nan");
    let mut xn = x.clone();
    xn[13] = f32::NAN;
    write_npz(&d.join("train.npz"), &[("inputs", npy(&[5, 4, 2], &xn, false)), ("labels", npy(&[5], &y, false))]);
    assert_err(&arrays(&d), &["example 1, token 2, feature 1", "not a finite number"]);
    let d = case("vocab");
    write_npz(&d.join("train.npz"), &[("inputs", npy(&[2, 3], &[0i64, 1, 2, 3, 4, 7], false)), ("labels", npy(&[2], &[0i64, 1], false))]);
    assert_err(
        &cfg(serde_json::json!({ "name": "arrays", "path": d, "vocab": 5 })),
        &["example 1, token 2", "id 7 is outside the vocabulary 0..5"],
    );
    assert_err(&arrays(&d), &["integer token ids", "set vocab"]);
    assert_err(&cfg(serde_json::json!({ "name": "arrays", "path": case("nan"), "vocab": 5 })), &["vocab is set", "float features"]);

    // Lengths outside 1..=T, lengths in one split only.
    let d = case("lengths");
    write_npz(
        &d.join("train.npz"),
        &[("inputs", npy(&[5, 4, 2], &x, false)), ("labels", npy(&[5], &y, false)), ("lengths", npy(&[5], &[4i64, 1, 5, 2, 2], false))],
    );
    assert_err(&arrays(&d), &["array lengths", "length 5 of example 2 is outside 1..=4"]);
    let d = case("lengths-once");
    write_npz(
        &d.join("train.npz"),
        &[("inputs", npy(&[5, 4, 2], &x, false)), ("labels", npy(&[5], &y, false)), ("lengths", npy(&[5], &[4i64, 1, 3, 2, 2], false))],
    );
    npz_split(&d, "test", 3);
    assert_err(&arrays(&d), &["test.npz", "in every split or in none"]);

    // Splits of different shapes.
    let d = case("shapes");
    npz_split(&d, "train", 4);
    let (x3, _) = features(2, 4, 3);
    write_npz(&d.join("test.npz"), &[("inputs", npy(&[2, 4, 3], &x3, false)), ("labels", npy(&[2], &[0i64, 1], false))]);
    assert_err(&arrays(&d), &["test.npz", "float features of 3", "float features of 2"]);
    let d = case("tokens-differ");
    npz_split(&d, "train", 4);
    let (x5, _) = features(2, 5, 2);
    write_npz(&d.join("test.npz"), &[("inputs", npy(&[2, 5, 2], &x5, false)), ("labels", npy(&[2], &[0i64, 1], false))]);
    assert_err(&arrays(&d), &["test.npz", "5 tokens", "same number of tokens"]);

    // Two layouts for one split; a lone .npy; a folder where a file belongs.
    let d = case("ambiguous");
    npz_split(&d, "train", 4);
    std::fs::create_dir(d.join("train")).unwrap();
    std::fs::write(d.join("train/inputs.npy"), npy(&[5, 4, 2], &x, false)).unwrap();
    assert_err(&arrays(&d), &["train.npz", "both hold the train split"]);
    let d = case("lone-npy");
    std::fs::write(d.join("train.npy"), npy(&[5, 4, 2], &x, false)).unwrap();
    assert_err(&arrays(&d), &["train.npy", "holds one array"]);
    let d = case("dir-as-file");
    std::fs::create_dir(d.join("train.npz")).unwrap();
    assert_err(&arrays(&d), &["train.npz", "is a directory"]);
}

/// Truncated and bit-flipped .npz and .npy files give errors (or load consistently), never a
/// panic. Seeded, so a failure reproduces.
#[test]
fn mutated_array_files_never_panic() {
    use rand::{Rng, SeedableRng};
    let dir = scratch("arrays-fuzz");
    let (x, y) = features(3, 4, 2);
    let good_npz = dir.join("good.npz");
    write_npz(&good_npz, &[("inputs", npy(&[3, 4, 2], &x, false)), ("labels", npy(&[3], &y, false))]);
    let npz_bytes = std::fs::read(&good_npz).unwrap();
    let npy_bytes = npy(&[3, 4, 2], &x, false);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for i in 0..400 {
        let case = dir.join(format!("case{}", i % 2));
        let _ = std::fs::remove_dir_all(&case);
        std::fs::create_dir_all(case.join("train")).unwrap();
        let (mut bytes, target) =
            if i % 2 == 0 { (npz_bytes.clone(), case.join("train.npz")) } else { (npy_bytes.clone(), case.join("train/inputs.npy")) };
        if rng.random_bool(0.3) {
            bytes.truncate(rng.random_range(0..bytes.len()));
        }
        for _ in 0..rng.random_range(1..6) {
            if bytes.is_empty() {
                break;
            }
            let at = rng.random_range(0..bytes.len());
            bytes[at] ^= 1 << rng.random_range(0..8);
        }
        std::fs::write(&target, &bytes).unwrap();
        if i % 2 == 1 {
            std::fs::write(case.join("train/labels.npy"), npy(&[3], &y, false)).unwrap();
        } else {
            std::fs::remove_dir_all(case.join("train")).unwrap();
        }
        if let Ok(task) = load_task(&arrays(&case), 0) {
            let n = task.len(Split::Train).unwrap();
            let b = assemble(task.as_ref(), Split::Train, &(0..n).collect::<Vec<_>>(), false, 0, 0, Device::Cpu);
            assert_eq!(b.len, n);
        }
    }
}

/// Writes a grey PNG whose pixel (x, y) is `f(x, y)`.
fn grey_png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([f(x, y)])).save(path).unwrap();
}

fn folder(dir: &Path, extra: serde_json::Value) -> TaskConfig {
    let mut v = serde_json::json!({ "name": "image-folder", "path": dir });
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    cfg(v)
}

#[test]
fn image_folders_load_with_sorted_classes_and_patches_in_reference_order() {
    let dir = scratch("images");
    // Classes "b-dog" and "a-cat": ids follow the sorted names. Pixel (x, y) = 10 y + x (+100 for dogs).
    for (split, n) in [("train", 3), ("test", 2)] {
        for (class, base) in [("b-dog", 100u32), ("a-cat", 0)] {
            for i in 0..n {
                grey_png(&dir.join(format!("{split}/{class}/{i}.png")), 8, 8, |x, y| (base + 10 * y + x) as u8);
            }
        }
    }
    // Not images, hidden files and an image in a nested folder.
    std::fs::write(dir.join("train/a-cat/notes.txt"), "x").unwrap();
    std::fs::write(dir.join("train/.DS_Store"), "x").unwrap();
    grey_png(&dir.join("train/a-cat/more/3.png"), 8, 8, |x, y| (10 * y + x) as u8);
    // A JPEG (lossy, so only its size and label are checked).
    image::RgbImage::from_fn(8, 8, |_, _| image::Rgb([200, 10, 10])).save(dir.join("test/b-dog/photo.JPG")).unwrap();

    let task = load_task(&folder(&dir, serde_json::json!({ "color": "grey" })), 0).unwrap();
    let spec = task.spec();
    assert_eq!((spec.seq_len, spec.input, spec.classes), (4, InputKind::Dense { dim: 16 }, 2));
    assert_eq!((task.len(Split::Train), task.len(Split::Val), task.len(Split::Test)), (Some(7), Some(0), Some(5)));
    assert_eq!(task.facts().class_names.unwrap(), vec!["a-cat", "b-dog"]);
    assert_eq!(task.facts().image_size, Some([8, 8]));
    assert!(task.notes().iter().any(|n| n.contains("2 other files skipped")), "{:?}", task.notes());
    // Train order: a-cat 0, 1, 2, more/3, then b-dog 0, 1, 2.
    let b = assemble(task.as_ref(), Split::Train, &[4, 3], false, 0, 0, Device::Cpu);
    assert_eq!(Vec::<i64>::try_from(b.y.reshape([-1])).unwrap(), vec![1, 0]);
    // Token 1 is the patch at rows 0–3, columns 4–7; feature 5 is (row 1, column 1) of it: pixel (5, 1).
    assert!((b.x.double_value(&[0, 1, 5]) - (100.0 + 10.0 + 5.0) / 255.0).abs() < 1e-6);
    assert!((b.x.double_value(&[1, 3, 15]) - 77.0 / 255.0).abs() < 1e-6);

    // RGB: three channels, innermost; grey images give three equal channels.
    let rgb = load_task(&folder(&dir, serde_json::json!({ "color": "rgb", "patch": 2 })), 0).unwrap();
    assert_eq!((rgb.spec().seq_len, rgb.spec().input), (16, InputKind::Dense { dim: 12 }));
    let b = assemble(rgb.as_ref(), Split::Test, &[4], false, 0, 0, Device::Cpu);
    let px: Vec<f64> = (0..3).map(|c| b.x.double_value(&[0, 0, c])).collect();
    assert!(px[0] > 0.7 && px[1] < 0.2 && px[2] < 0.2, "{px:?}");
}

#[test]
fn image_folders_bring_images_to_one_size() {
    let dir = scratch("images-fit");
    // 8 wide × 4 high: left half black, right half white; and a 4×4 grey square.
    for class in ["a", "b"] {
        grey_png(&dir.join(format!("train/{class}/wide.png")), 8, 4, |x, _| if x < 4 { 0 } else { 255 });
        grey_png(&dir.join(format!("train/{class}/square.png")), 4, 4, |_, _| 128);
    }
    let err = load_err(&folder(&dir, serde_json::json!({ "color": "grey", "patch": 2 })));
    assert!(err.contains("square.png") && err.contains("wide.png") && err.contains("set size"), "{err}");
    // crop: the 8×4 image already covers 4×4, so the centre columns 2..6 are kept.
    let crop = load_task(&folder(&dir, serde_json::json!({ "color": "grey", "patch": 4, "size": 4 })), 0).unwrap();
    let b = assemble(crop.as_ref(), Split::Train, &[1], false, 0, 0, Device::Cpu);
    let row: Vec<f64> = (0..4).map(|c| b.x.double_value(&[0, 0, c])).collect();
    assert_eq!(row, vec![0.0, 0.0, 1.0, 1.0]);
    // resize: the whole image squeezed to 4×4.
    let resize = load_task(&folder(&dir, serde_json::json!({ "color": "grey", "patch": 4, "size": [4, 4], "fit": "resize" })), 0).unwrap();
    let b = assemble(resize.as_ref(), Split::Train, &[1], false, 0, 0, Device::Cpu);
    let row: Vec<f64> = (0..4).map(|c| b.x.double_value(&[0, 0, c])).collect();
    assert!(row[0] < 0.1 && row[3] > 0.9 && row[1] < row[2], "{row:?}");
    // A size the patches do not divide.
    assert!(load_err(&folder(&dir, serde_json::json!({ "size": 6, "patch": 4 }))).contains("does not divide into 4×4 patches"));
}

#[test]
fn bad_image_folders_are_named() {
    let root = scratch("images-bad");
    let good =
        |d: &Path, split: &str, class: &str, name: &str| grey_png(&d.join(format!("{split}/{class}/{name}")), 4, 4, |x, y| (x * y) as u8);
    let make = |name: &str| {
        let d = root.join(name);
        for class in ["cat", "dog"] {
            good(&d, "train", class, "0.png");
            good(&d, "test", class, "0.png");
        }
        d
    };
    let grey = serde_json::json!({ "color": "grey" });
    let check = |d: &Path, needles: &[&str]| {
        let err = load_err(&folder(d, grey.clone()));
        for n in needles {
            assert!(err.contains(n), "error lacks {n:?}: {err}");
        }
    };
    // A corrupt image, and a truncated one, named by path.
    let d = make("corrupt");
    std::fs::write(d.join("train/dog/1.png"), b"not a png at all").unwrap();
    check(&d, &["train/dog/1.png", "not a readable image"]);
    let d = make("truncated");
    let bytes = std::fs::read(d.join("train/dog/0.png")).unwrap();
    std::fs::write(d.join("train/dog/0.png"), &bytes[..bytes.len() / 2]).unwrap();
    check(&d, &["train/dog/0.png"]);
    // An empty class folder, or one holding no images.
    let d = make("empty-class");
    std::fs::create_dir_all(d.join("train/emu")).unwrap();
    check(&d, &["train/emu", "holds no images"]);
    let d = make("no-images");
    std::fs::create_dir_all(d.join("test/dog/sub")).unwrap();
    std::fs::remove_file(d.join("test/dog/0.png")).unwrap();
    std::fs::write(d.join("test/dog/readme.md"), "x").unwrap();
    check(&d, &["test/dog", "holds no images"]);
    // A class in test that train does not have (a label outside the classes).
    let d = make("extra-class");
    good(&d, "test", "emu", "0.png");
    check(&d, &["test/emu", "not one of the 2 classes", "cat, dog"]);
    // An image outside any class folder.
    let d = make("loose");
    good(&d, "test", ".", "loose.png");
    check(&d, &["loose.png", "outside any class folder"]);
    // Images of another size in another split.
    let d = make("sizes");
    grey_png(&d.join("test/cat/0.png"), 8, 8, |_, _| 0);
    grey_png(&d.join("test/dog/0.png"), 8, 8, |_, _| 0);
    check(&d, &["test", "8×8", "set size"]);
    // No split folders; one class; a file where a split folder belongs; patches that do not fit.
    let d = root.join("flat");
    good(&d, "images", "cat", "0.png");
    check(&d, &["no train/, val/ or test/ folder", "images"]);
    let d = root.join("one-class");
    good(&d, "train", "cat", "0.png");
    check(&d, &["1 class folder(s)", "at least two"]);
    let d = make("file-split");
    std::fs::write(d.join("val"), "x").unwrap();
    check(&d, &["val", "is not a folder"]);
    let d = make("patch");
    let err = load_err(&folder(&d, serde_json::json!({ "patch": 3 })));
    assert!(err.contains("do not divide into 3×3 patches"), "{err}");
    assert!(load_err(&folder(&d, serde_json::json!({ "patch": 0 }))).contains("patch = 0"));
    assert!(load_err(&folder(&d, serde_json::json!({ "classes": ["cat", "cat"] }))).contains("appears twice"));
}

#[test]
fn given_classes_map_folders_by_name() {
    let dir = scratch("images-pinned");
    for (class, v) in [("cat", 0u8), ("dog", 255)] {
        grey_png(&dir.join(format!("test/{class}/0.png")), 4, 4, |_, _| v);
    }
    let names: Vec<String> = ["dog", "emu", "cat"].iter().map(|s| s.to_string()).collect();
    let settings = ImageSettings { size: None, fit: Fit::Crop, color: Color::Grey, patch: 4 };
    let task = ImageFolder::load(&dir, &settings, Some(&names)).unwrap();
    assert_eq!(task.spec().classes, 3);
    // Folders are read in name order (torchvision's), labelled by the given list: cat 2, dog 0.
    let b = assemble(&task, Split::Test, &[0, 1], false, 0, 0, Device::Cpu);
    assert_eq!(Vec::<i64>::try_from(b.y.reshape([-1])).unwrap(), vec![2, 0]);
    assert_eq!((b.x.double_value(&[0, 0, 0]), b.x.double_value(&[1, 0, 0])), (0.0, 1.0));
    assert_eq!(task.source(Split::Test, 0).as_deref(), Some("test/cat/0.png"));

    // Unlabelled: a folder (recursive, sorted) or one file, at the run's size.
    let like = task.spec().clone();
    let settings = ImageSettings { size: Some((4, 4)), ..settings };
    let all = ImageFolder::unlabelled(&dir, &settings, &like, names.clone()).unwrap();
    assert_eq!(all.len(Split::Test), Some(2));
    assert_eq!(all.source(Split::Test, 1).as_deref(), Some("test/dog/0.png"));
    let one = ImageFolder::unlabelled(&dir.join("test/cat/0.png"), &settings, &like, names.clone()).unwrap();
    assert_eq!(one.len(Split::Test), Some(1));
    let rgb = ImageSettings { color: Color::Rgb, ..settings };
    let err = format!("{:#}", ImageFolder::unlabelled(&dir, &rgb, &like, names).unwrap_err());
    assert!(err.contains("48 features"), "{err}");
}

#[test]
fn unlabelled_arrays_must_fit_the_run() {
    let dir = scratch("arrays-unlabelled");
    npz_split(&dir, "train", 4);
    let task = ArraysTask::load(&dir, None, None).unwrap();
    let like = task.spec().clone();
    let (x, _) = features(3, 4, 2);
    let inputs = dir.join("new.npy");
    std::fs::write(&inputs, npy(&[3, 4, 2], &x, false)).unwrap();
    let new = ArraysTask::unlabelled(&inputs, &like).unwrap();
    assert_eq!(new.len(Split::Test), Some(3));
    let b = assemble(&new, Split::Test, &[2], false, 0, 0, Device::Cpu);
    assert!((b.x.double_value(&[0, 3, 1]) - 2.31).abs() < 1e-6);
    // Also from an .npz holding labels (ignored).
    assert_eq!(ArraysTask::unlabelled(&dir.join("train.npz"), &like).unwrap().len(Split::Test), Some(4));
    let (x3, _) = features(3, 4, 3);
    std::fs::write(&inputs, npy(&[3, 4, 3], &x3, false)).unwrap();
    let err = format!("{:#}", ArraysTask::unlabelled(&inputs, &like).unwrap_err());
    assert!(err.contains("new.npy") && err.contains("3 features per token, the run's task has 2"), "{err}");
    let (x5, _) = features(3, 5, 2);
    std::fs::write(&inputs, npy(&[3, 5, 2], &x5, false)).unwrap();
    let err = format!("{:#}", ArraysTask::unlabelled(&inputs, &like).unwrap_err());
    assert!(err.contains("5 tokens per example, the run's task has 4"), "{err}");
    let err = format!("{:#}", ArraysTask::unlabelled(&dir.join("inputs.txt"), &like).unwrap_err());
    assert!(err.contains("inputs.txt"), "{err}");
}
