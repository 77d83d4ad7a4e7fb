//! Every loader on tiny fixtures written here in the true formats: good data, the paper's
//! encodings, and each kind of corrupt input (an error naming the file, never a panic). Also
//! batching: whole-split evaluation, epoch reshuffling, resume, and the real Fashion-MNIST.

use flate2::write::GzEncoder;
use fpt_tasks::batch::assemble;
use fpt_tasks::{load_task, EvalBatches, Split, Task, TaskConfig, TrainStream};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Kind};

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tasks-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// An MNIST folder: `n_train` / `n_test` 28×28 images whose pixel (r, c) of image i is
/// (i + r + c) % 256, labels i % 10; gzipped or raw.
fn write_mnist(dir: &Path, n_train: u32, n_test: u32, gzip: bool) {
    for (prefix, n) in [("train", n_train), ("t10k", n_test)] {
        let pixels: Vec<u8> =
            (0..n).flat_map(|i| (0..28u32).flat_map(move |r| (0..28u32).map(move |c| ((i + r + c) % 256) as u8))).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        for (name, bytes) in [
            (format!("{prefix}-images-idx3-ubyte"), idx(&[n, 28, 28], &pixels)),
            (format!("{prefix}-labels-idx1-ubyte"), idx(&[n], &labels)),
        ] {
            if gzip {
                std::fs::write(dir.join(format!("{name}.gz")), gz(&bytes)).unwrap();
            } else {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
    }
}

fn mnist_cfg(dir: &Path) -> TaskConfig {
    TaskConfig::named("mnist", Some(dir.to_path_buf())).unwrap()
}

fn load_err(cfg: &TaskConfig) -> String {
    match load_task(cfg, 0) {
        Ok(_) => panic!("loading {cfg:?} should fail"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn mnist_loads_gzipped_or_raw_and_patches_in_reference_order() {
    for gzip in [true, false] {
        let dir = scratch(&format!("mnist-{gzip}"));
        write_mnist(&dir, 12, 5, gzip);
        let task = load_task(&mnist_cfg(&dir), 0).unwrap();
        assert_eq!((task.len(Split::Train), task.len(Split::Test), task.len(Split::Val)), (Some(12), Some(5), Some(0)));
        assert_eq!((task.spec().seq_len, task.spec().outputs_per_readout_token()), (49, 10));
        let b = assemble(task.as_ref(), Split::Train, &[3], false, 0, 0, Device::Cpu);
        assert_eq!(b.x.size(), vec![1, 49, 16]);
        assert_eq!(b.y.int64_value(&[0, 0]), 3);
        // Token 1 is the patch at rows 0–3, columns 4–7; feature 5 is (row 1, col 1) of it.
        let expected = ((3 + 1 + 5) % 256) as f64 / 255.0;
        assert!((b.x.double_value(&[0, 1, 5]) - expected).abs() < 1e-6);
        let max = b.x.max().double_value(&[]);
        assert!(max <= 1.0 && b.x.min().double_value(&[]) >= 0.0);
    }
}

#[test]
fn mnist_rejects_corrupt_files_naming_them() {
    let base = scratch("mnist-bad-base");
    write_mnist(&base, 4, 2, false);
    type Corrupt = fn(&Path);
    let cases: [(&str, Corrupt, &str, &str); 18] = [
        (
            "truncated",
            |d| {
                let p = d.join("train-images-idx3-ubyte");
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..b.len() - 10]).unwrap();
            },
            "train-images-idx3-ubyte",
            "truncated",
        ),
        (
            "magic",
            |d| {
                let p = d.join("t10k-labels-idx1-ubyte");
                let mut b = std::fs::read(&p).unwrap();
                b[0] = 7;
                std::fs::write(&p, b).unwrap();
            },
            "t10k-labels-idx1-ubyte",
            "bad IDX magic",
        ),
        (
            "count",
            |d| std::fs::write(d.join("train-labels-idx1-ubyte"), idx(&[3], &[1, 2, 3])).unwrap(),
            "train-labels-idx1-ubyte",
            "holds 3 labels but",
        ),
        (
            "label",
            |d| std::fs::write(d.join("train-labels-idx1-ubyte"), idx(&[4], &[1, 2, 10, 3])).unwrap(),
            "train-labels-idx1-ubyte",
            "label 10 of record 2",
        ),
        ("empty", |d| std::fs::write(d.join("t10k-images-idx3-ubyte"), b"").unwrap(), "t10k-images-idx3-ubyte", "too short"),
        ("missing", |d| std::fs::remove_file(d.join("t10k-images-idx3-ubyte")).unwrap(), "t10k-images-idx3-ubyte", "missing"),
        (
            "rank",
            |d| std::fs::write(d.join("train-images-idx3-ubyte"), idx(&[4, 784], &[0; 4 * 784])).unwrap(),
            "train-images-idx3-ubyte",
            "3 dimensions",
        ),
        (
            "gzip",
            |d| {
                let p = d.join("train-images-idx3-ubyte");
                let g = gz(&std::fs::read(&p).unwrap());
                std::fs::remove_file(&p).unwrap();
                std::fs::write(d.join("train-images-idx3-ubyte.gz"), &g[..g.len() / 2]).unwrap();
            },
            "train-images-idx3-ubyte.gz",
            "corrupt or truncated gzip",
        ),
        // Beyond the first list: each names the file and says what was expected.
        (
            "trailing",
            |d| {
                let p = d.join("t10k-images-idx3-ubyte");
                let mut b = std::fs::read(&p).unwrap();
                b.push(0);
                std::fs::write(&p, b).unwrap();
            },
            "t10k-images-idx3-ubyte",
            "trailing bytes",
        ),
        (
            "huge-count",
            |d| std::fs::write(d.join("train-labels-idx1-ubyte"), idx(&[u32::MAX], &[1, 2, 3, 4])).unwrap(),
            "train-labels-idx1-ubyte",
            "need 4294967295 data bytes after the 8-byte header, file has 4 (truncated)",
        ),
        (
            "huge-dims",
            |d| std::fs::write(d.join("train-images-idx3-ubyte"), idx(&[u32::MAX, u32::MAX, u32::MAX], &[0; 16])).unwrap(),
            "train-images-idx3-ubyte",
            "overflow",
        ),
        (
            "zero-size-images",
            |d| std::fs::write(d.join("train-images-idx3-ubyte"), idx(&[4, 0, 28], &[])).unwrap(),
            "train-images-idx3-ubyte",
            "images are 0×28, expected at least one row",
        ),
        (
            "no-images",
            |d| {
                std::fs::write(d.join("t10k-images-idx3-ubyte"), idx(&[0, 28, 28], &[])).unwrap();
                std::fs::write(d.join("t10k-labels-idx1-ubyte"), idx(&[0], &[])).unwrap();
            },
            "t10k-images-idx3-ubyte",
            "no images",
        ),
        (
            "test-count",
            |d| std::fs::write(d.join("t10k-images-idx3-ubyte"), idx(&[3, 28, 28], &[0; 3 * 784])).unwrap(),
            "t10k-labels-idx1-ubyte",
            "holds 2 labels but",
        ),
        (
            "test-label-gz",
            |d| {
                std::fs::remove_file(d.join("t10k-labels-idx1-ubyte")).unwrap();
                std::fs::write(d.join("t10k-labels-idx1-ubyte.gz"), gz(&idx(&[2], &[1, 255]))).unwrap();
            },
            "t10k-labels-idx1-ubyte.gz",
            "label 255 of record 1 (byte offset 9) is outside 0..10",
        ),
        (
            "value-type",
            |d| {
                let p = d.join("train-labels-idx1-ubyte");
                let mut b = std::fs::read(&p).unwrap();
                b[2] = 0x0d;
                std::fs::write(&p, b).unwrap();
            },
            "train-labels-idx1-ubyte",
            "value type 0x0d",
        ),
        (
            "shape",
            |d| std::fs::write(d.join("t10k-images-idx3-ubyte"), idx(&[2, 32, 32], &[0; 2 * 1024])).unwrap(),
            "t10k-images-idx3-ubyte",
            "images are 32×32, the other split's are 28×28",
        ),
        (
            "directory",
            |d| {
                std::fs::remove_file(d.join("train-labels-idx1-ubyte")).unwrap();
                std::fs::create_dir(d.join("train-labels-idx1-ubyte")).unwrap();
            },
            "train-labels-idx1-ubyte",
            "is a directory, expected the train labels",
        ),
    ];
    for (name, corrupt, file, needle) in cases {
        let dir = scratch(&format!("mnist-bad-{name}"));
        write_mnist(&dir, 4, 2, false);
        corrupt(&dir);
        let err = load_err(&mnist_cfg(&dir));
        assert!(err.contains(file) && err.contains(needle), "{name}: {err}");
    }
}

/// A decompression bomb: a 200 KB `.gz` whose valid IDX header declares 4 labels but whose
/// stream inflates to 200 MB. Reading stops one byte past the declared data (the unit tests in
/// `idx.rs` count the bytes) and the error names the file.
#[test]
fn mnist_gzip_bomb_is_refused_without_inflating_it() {
    let dir = scratch("mnist-bomb");
    write_mnist(&dir, 4, 2, false);
    std::fs::remove_file(dir.join("train-labels-idx1-ubyte")).unwrap();
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(&idx(&[4], &[1, 2, 3, 4])).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..200 {
        e.write_all(&zeros).unwrap();
    }
    let bomb = e.finish().unwrap();
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    std::fs::write(dir.join("train-labels-idx1-ubyte.gz"), bomb).unwrap();
    let start = std::time::Instant::now();
    let err = load_err(&mnist_cfg(&dir));
    assert!(err.contains("train-labels-idx1-ubyte.gz") && err.contains("trailing bytes"), "{err}");
    assert!(start.elapsed().as_secs_f64() < 5.0, "took {:?}", start.elapsed());
}

/// A data path that is a file, not a folder, is named as such.
#[test]
fn data_path_that_is_a_file_is_an_error() {
    let dir = scratch("path-file");
    let file = dir.join("not-a-folder");
    std::fs::write(&file, b"x").unwrap();
    for name in ["mnist", "listops", "cifar10", "remote-homology"] {
        let err = load_err(&TaskConfig::named(name, Some(file.clone())).unwrap());
        assert!(
            err.contains("not-a-folder") && err.contains(&format!("is not a folder, expected the data folder of task {name}")),
            "{name}: {err}"
        );
    }
}

/// A CIFAR-10 folder with `per_file` records per batch file; record i of file f has label
/// (f + i) % 10 and channel c of pixel p = (p + 50·c + i) % 256.
fn write_cifar(dir: &Path, per_file: usize) {
    let files = ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin"];
    for (f, name) in files.iter().enumerate() {
        let mut bytes = Vec::new();
        for i in 0..per_file {
            bytes.push(((f + i) % 10) as u8);
            for c in 0..3 {
                bytes.extend((0..1024).map(|p| ((p + 50 * c + i) % 256) as u8));
            }
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn cifar10_normalises_and_patches_like_the_reference() {
    let dir = scratch("cifar");
    std::fs::create_dir_all(dir.join("cifar-10-batches-bin")).unwrap();
    write_cifar(&dir.join("cifar-10-batches-bin"), 3);
    let cfg = TaskConfig::named("cifar10", Some(dir.clone())).unwrap();
    let task = load_task(&cfg, 0).unwrap();
    assert_eq!((task.len(Split::Train), task.len(Split::Test)), (Some(15), Some(3)));
    assert_eq!((task.spec().seq_len, task.spec().input_len()), (64, 64 * 48));
    // Test record 1: label (5 + 1) % 10 = 6.
    let b = assemble(task.as_ref(), Split::Test, &[1], false, 0, 0, Device::Cpu);
    assert_eq!(b.y.int64_value(&[0, 0]), 6);
    // Token 0, feature (p1=1, p2=2, c=1) = pixel (row 1, col 2) = index 34 of the green plane.
    let raw = ((34 + 50 + 1) % 256) as f64 / 255.0;
    let expected = (raw - 0.4822) / 0.1994;
    assert!((b.x.double_value(&[0, 0, (1 * 4 + 2) * 3 + 1]) - expected).abs() < 1e-5);

    let lra = load_task(&TaskConfig::named("cifar10-lra", Some(dir.clone())).unwrap(), 0).unwrap();
    assert_eq!((lra.spec().seq_len, lra.spec().input_len()), (1024, 1024));
    let b = assemble(lra.as_ref(), Split::Test, &[1], false, 0, 0, Device::Cpu);
    let px = 37; // row 1, col 5
    let (r, g, bl) = [0, 1, 2].map(|c| ((px + 50 * c + 1) % 256) as f64 / 255.0).into();
    let gray = 0.2989 * r + 0.587 * g + 0.114 * bl;
    assert!((b.x.double_value(&[0, px as i64, 0]) - (gray - 0.5) / 0.5).abs() < 1e-5);

    // Augmentation: same seed and step give the same batch; it changes the image; range kept.
    let a1 = assemble(task.as_ref(), Split::Train, &[0, 1, 2, 3], true, 7, 11, Device::Cpu);
    let a2 = assemble(task.as_ref(), Split::Train, &[0, 1, 2, 3], true, 7, 11, Device::Cpu);
    let plain = assemble(task.as_ref(), Split::Train, &[0, 1, 2, 3], false, 7, 11, Device::Cpu);
    assert!(a1.x.equal(&a2.x));
    assert!(!a1.x.equal(&plain.x));
    let lo = (0.0 - 0.4914) / 0.2023 - 1e-4;
    assert!(a1.x.min().double_value(&[]) >= lo - 0.2 && a1.x.max().double_value(&[]) <= (1.0 - 0.4465) / 0.2010 + 1e-4);
}

#[test]
fn cifar10_rejects_corrupt_files_naming_them() {
    type Corrupt = fn(&Path);
    let cases: [(&str, Corrupt, &str, &str); 8] = [
        (
            "size",
            |d| {
                let p = d.join("data_batch_3.bin");
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..b.len() - 1]).unwrap();
            },
            "data_batch_3.bin",
            "not a whole number of 3073-byte records (record 1 at offset 3073",
        ),
        (
            "label",
            |d| {
                let p = d.join("test_batch.bin");
                let mut b = std::fs::read(&p).unwrap();
                b[3073] = 11;
                std::fs::write(&p, b).unwrap();
            },
            "test_batch.bin",
            "record 1 (offset 3073) has label 11",
        ),
        ("empty", |d| std::fs::write(d.join("data_batch_5.bin"), b"").unwrap(), "data_batch_5.bin", "empty file"),
        ("missing-test", |d| std::fs::remove_file(d.join("test_batch.bin")).unwrap(), "test_batch.bin", "missing test file"),
        ("missing-train", |d| std::fs::remove_file(d.join("data_batch_2.bin")).unwrap(), "data_batch_2.bin", "missing training file"),
        (
            "directory",
            |d| {
                std::fs::remove_file(d.join("data_batch_4.bin")).unwrap();
                std::fs::create_dir(d.join("data_batch_4.bin")).unwrap();
            },
            "data_batch_4.bin",
            "is a directory, expected a CIFAR-10 training batch",
        ),
        (
            "label-255",
            |d| {
                let p = d.join("data_batch_1.bin");
                let mut b = std::fs::read(&p).unwrap();
                b[0] = 255;
                std::fs::write(&p, b).unwrap();
            },
            "data_batch_1.bin",
            "record 0 (offset 0) has label 255",
        ),
        (
            "trailing",
            |d| {
                let p = d.join("test_batch.bin");
                let mut b = std::fs::read(&p).unwrap();
                b.extend([0; 10]);
                std::fs::write(&p, b).unwrap();
            },
            "test_batch.bin",
            "not a whole number of 3073-byte records (record 2 at offset 6146",
        ),
    ];
    for (name, corrupt, file, needle) in cases {
        let dir = scratch(&format!("cifar-bad-{name}"));
        write_cifar(&dir, 2);
        corrupt(&dir);
        let err = load_err(&TaskConfig::named("cifar10", Some(dir.clone())).unwrap());
        assert!(err.contains(file) && err.contains(needle), "{name}: {err}");
    }
    let err = load_err(&TaskConfig::named("cifar10", Some(scratch("cifar-none"))).unwrap());
    assert!(err.contains("no CIFAR-10 binary files"), "{err}");
    // A bad patch size is reported before any file is read.
    let err = load_err(&TaskConfig::Cifar10 { path: Some(scratch("cifar-none-patch")), patch: 5 });
    assert!(err.contains("patch size 5 does not divide 32"), "{err}");
}

fn write_listops(dir: &Path, lengths: &[usize]) {
    // "[SM 1 1 … ]" with n-2 ones: n tokens, label (n-2) % 10.
    let line = |n: usize| format!("( [SM {} ] )\t{}\n", vec!["1"; n - 2].join(" "), (n - 2) % 10);
    for name in ["basic_train.tsv", "basic_val.tsv", "basic_test.tsv"] {
        let body: String = lengths.iter().map(|&n| line(n)).collect();
        std::fs::write(dir.join(name), format!("Source\tTarget\n{body}")).unwrap();
    }
}

#[test]
fn listops_reports_and_applies_the_length_policy() {
    let dir = scratch("listops");
    write_listops(&dir, &[5, 12, 30, 8]);
    let drop = TaskConfig::Listops {
        path: Some(dir.clone()),
        max_len: 12,
        overflow: Default::default(),
        tokenizer: Default::default(),
        padding: fpt_tasks::Padding::Masked,
        generate: None,
    };
    let task = load_task(&drop, 0).unwrap();
    assert_eq!(task.len(Split::Train), Some(3));
    assert_eq!(task.spec().seq_len, 12);
    assert!(task.notes()[0].contains("4 examples") && task.notes()[0].contains("1 longer than 12 tokens dropped"), "{:?}", task.notes());
    // Right padding (masked): the tokens from position 0, padding id 15 after them, the batch
    // as wide as its longest example, and each example's length.
    let b = assemble(task.as_ref(), Split::Train, &[0, 1], false, 0, 0, Device::Cpu);
    assert_eq!(b.x.size(), vec![2, 12]);
    let row: Vec<i64> = Vec::try_from(&b.x.get(0)).unwrap();
    assert_eq!(row, vec![13, 1, 1, 1, 14, 15, 15, 15, 15, 15, 15, 15]); // [SM 1 1 1 ] pads
    assert_eq!(Vec::<i64>::try_from(b.lengths.as_ref().expect("masked batches carry lengths")).unwrap(), vec![5, 12]);
    assert_eq!(b.y.int64_value(&[0, 0]), 3);
    let alone = assemble(task.as_ref(), Split::Train, &[0], false, 0, 0, Device::Cpu);
    assert_eq!(alone.x.size(), vec![1, 5], "a batch is cut to its longest example");
    // What loading did, per split, for the run's summary.
    let counts = task.counts();
    assert_eq!(counts.len(), 3);
    for c in &counts {
        assert_eq!((c.source, c.kept, c.dropped, c.truncated, c.over_limit), (4, 3, 1, 0, 0), "{c:?}");
        assert_eq!(c.rule, "longer than 12 tokens dropped");
    }

    let truncate = TaskConfig::Listops {
        path: Some(dir.clone()),
        max_len: 12,
        overflow: fpt_tasks::listops::Overflow::Truncate,
        tokenizer: Default::default(),
        padding: fpt_tasks::Padding::Masked,
        generate: None,
    };
    let task = load_task(&truncate, 0).unwrap();
    assert_eq!(task.len(Split::Train), Some(4));
    assert!(task.notes()[0].contains("1 longer than 12 tokens truncated"));
    let c = &task.counts()[2];
    assert_eq!((c.split, c.source, c.kept, c.dropped, c.truncated), (Split::Test, 4, 4, 0, 1));

    std::fs::remove_file(dir.join("basic_val.tsv")).unwrap();
    let err = load_err(&drop);
    assert!(err.contains("basic_val.tsv") && err.contains("missing"), "{err}");
    std::fs::write(dir.join("basic_val.tsv"), b"Source\tTarget\n[SM 1 1 ]\tseven\n").unwrap();
    let err = load_err(&drop);
    assert!(err.contains("basic_val.tsv") && err.contains("line 2"), "{err}");
}

/// Hostile ListOps files, each in one split's file: the error names that file and the line.
#[test]
fn listops_rejects_malformed_files_naming_file_and_line() {
    let cases: [(&str, &str, &[u8], &str); 9] = [
        (
            "unbalanced-close",
            "basic_train.tsv",
            b"Source\tTarget\n[SM 1 1 ]\t2\n[MAX 1 2 ] ]\t2\n",
            "line 3: `]` at token 5 closes no operator",
        ),
        ("unbalanced-open", "basic_val.tsv", b"Source\tTarget\n] 1 [MAX 2\t2\n", "line 2: `]` at token 1 closes no operator"),
        ("unknown-op", "basic_test.tsv", b"Source\tTarget\n[MOD 1 2 ]\t2\n", "line 2: unknown operator \"[MOD\""),
        ("empty-op", "basic_train.tsv", b"Source\tTarget\n[SM ]\t0\n", "line 2: operator [SM at token 1 has no arguments"),
        ("two-exprs", "basic_val.tsv", b"Source\tTarget\n[SM 1 ] [SM 2 ]\t1\n", "line 2: a second expression starts at token 4"),
        ("blank-mid", "basic_test.tsv", b"Source\tTarget\n[SM 1 1 ]\t2\n\n[SM 1 1 ]\t2\n", "line 3 is blank but examples follow it"),
        ("bad-label", "basic_train.tsv", b"Source\tTarget\n[SM 1 1 ]\t12\n", "line 2: Target \"12\" is not a class 0–9"),
        ("not-utf8", "basic_val.tsv", b"Source\tTarget\n[SM 1 \xc3 ]\t2\n", "not UTF-8"),
        ("empty-file", "basic_test.tsv", b"", "empty file"),
    ];
    for (name, file, bytes, needle) in cases {
        let dir = scratch(&format!("listops-bad-{name}"));
        write_listops(&dir, &[5, 6]);
        std::fs::write(dir.join(file), bytes).unwrap();
        let cfg = TaskConfig::Listops {
            path: Some(dir.clone()),
            max_len: 64,
            overflow: Default::default(),
            tokenizer: Default::default(),
            padding: fpt_tasks::Padding::Masked,
            generate: None,
        };
        let err = load_err(&cfg);
        assert!(err.contains(file) && err.contains(needle), "{name}: {err}");
    }
    // A directory where a split file should be.
    let dir = scratch("listops-bad-dir");
    write_listops(&dir, &[5]);
    std::fs::remove_file(dir.join("basic_val.tsv")).unwrap();
    std::fs::create_dir(dir.join("basic_val.tsv")).unwrap();
    let err = load_err(&TaskConfig::Listops {
        path: Some(dir.clone()),
        max_len: 64,
        overflow: Default::default(),
        tokenizer: Default::default(),
        padding: fpt_tasks::Padding::Masked,
        generate: None,
    });
    assert!(err.contains("basic_val.tsv: is a directory"), "{err}");
}

/// Harmless variants load: CRLF line ends, a byte-order mark, blank lines after the last example.
/// A Target that is not the expression's value is kept but reported.
#[test]
fn listops_accepts_crlf_and_reports_wrong_targets() {
    let dir = scratch("listops-crlf");
    write_listops(&dir, &[5, 6]);
    std::fs::write(dir.join("basic_train.tsv"), "\u{feff}Source\tTarget\r\n( [SM 1 1 ] )\t2\r\n[MAX 3 [MIN 4 5 ] ]\t7\r\n\r\n").unwrap();
    let cfg = TaskConfig::Listops {
        path: Some(dir.clone()),
        max_len: 64,
        overflow: Default::default(),
        tokenizer: Default::default(),
        padding: fpt_tasks::Padding::Masked,
        generate: None,
    };
    let task = load_task(&cfg, 0).unwrap();
    assert_eq!(task.len(Split::Train), Some(2));
    assert!(task.notes()[0].contains("1 Targets differ from their expression's value"), "{:?}", task.notes());
    assert!(!task.notes()[1].contains("differ"), "{:?}", task.notes());
}

#[test]
fn listops_can_be_generated_in_memory() {
    let spec =
        fpt_tasks::listops::GeneratorConfig { seed: 1, train: 50, val: 10, test: 10, min_len: 10, max_len: 40, ..Default::default() };
    let cfg = TaskConfig::Listops {
        path: None,
        max_len: 1024,
        overflow: Default::default(),
        tokenizer: Default::default(),
        padding: fpt_tasks::Padding::Masked,
        generate: Some(spec.clone()),
    };
    let task = load_task(&cfg, 0).unwrap();
    assert_eq!((task.len(Split::Train), task.len(Split::Val), task.len(Split::Test)), (Some(50), Some(10), Some(10)));
    assert!(task.spec().seq_len < 40);
    let again = load_task(&cfg, 0).unwrap();
    let a = assemble(task.as_ref(), Split::Test, &[0, 1, 2], false, 0, 0, Device::Cpu);
    let b = assemble(again.as_ref(), Split::Test, &[0, 1, 2], false, 0, 0, Device::Cpu);
    assert!(a.x.equal(&b.x) && a.y.equal(&b.y));
    let both = TaskConfig::Listops {
        path: Some("x".into()),
        max_len: 1024,
        overflow: Default::default(),
        tokenizer: Default::default(),
        padding: fpt_tasks::Padding::Masked,
        generate: Some(spec),
    };
    assert!(load_err(&both).contains("either path or generate"));
}

fn write_homology(dir: &Path) {
    let record = |seq: &str, fold: usize| {
        format!("{{\"id\": \"d1\", \"primary\": \"{seq}\", \"protein_length\": {}, \"class_label\": 0, \"fold_label\": {fold}, \"superfamily_label\": 1, \"family_label\": 2}}", seq.len())
    };
    let files = ["train", "valid", "test_fold_holdout", "test_superfamily_holdout", "test_family_holdout"];
    for (i, f) in files.iter().enumerate() {
        let body = [record("MKVL", i), record("ACDEFGHIKL", 1194), record(&"A".repeat(40), 7)].join(",\n");
        std::fs::write(dir.join(format!("remote_homology_{f}.json")), format!("[{body}]")).unwrap();
    }
}

#[test]
fn remote_homology_encodes_drops_and_rejects() {
    let dir = scratch("homology");
    write_homology(&dir);
    let cfg = TaskConfig::RemoteHomology {
        path: Some(dir.clone()),
        max_len: 20,
        test_set: fpt_tasks::homology::TestSet::Superfamily,
        long: Default::default(),
        padding: fpt_tasks::Padding::Masked,
    };
    let task = load_task(&cfg, 0).unwrap();
    assert_eq!(task.len(Split::Train), Some(2), "the 42-token sequence is dropped");
    assert_eq!(task.spec().seq_len, 12);
    assert!(task.notes()[2].contains("superfamily") && task.notes()[2].contains("1 longer than 20 tokens dropped"), "{:?}", task.notes());
    let b = assemble(task.as_ref(), Split::Test, &[0, 1], false, 0, 0, Device::Cpu);
    let ids: Vec<i64> = Vec::try_from(&b.x.get(0)).unwrap();
    assert_eq!(ids, vec![2, 16, 14, 25, 15, 3, 0, 0, 0, 0, 0, 0]); // <cls> M K V L <sep> <pad>…
    assert_eq!(Vec::<i64>::try_from(b.lengths.as_ref().unwrap()).unwrap(), vec![6, 12]);
    assert_eq!(b.y.int64_value(&[0, 0]), 3);
    assert!(task.counts().iter().all(|c| (c.source, c.kept, c.dropped) == (3, 2, 1)), "{:?}", task.counts());
    assert_eq!(task.accuracy_scale(), 1.0);
    assert!(task.length_batching().is_none());

    std::fs::remove_file(dir.join("remote_homology_valid.json")).unwrap();
    let err = load_err(&cfg);
    assert!(err.contains("remote_homology_valid.json") && err.contains("missing"), "{err}");
    std::fs::write(dir.join("remote_homology_valid.json"), b"[{\"primary\": \"MK\", \"fold_label\": 1200}]").unwrap();
    let err = load_err(&cfg);
    assert!(err.contains("remote_homology_valid.json") && err.contains("fold_label 1200"), "{err}");
    std::fs::write(dir.join("remote_homology_valid.json"), b"\xff\xfe[]").unwrap();
    let err = load_err(&cfg);
    assert!(err.contains("remote_homology_valid.json") && err.contains("not a TAPE"), "{err}");
    let hostile: [(&[u8], &str); 6] = [
        (b"[{\"primary\": \"MK\", \"fold_label\": 1.5}]", "not a TAPE"),
        (b"[{\"primary\": \"MK\", \"fold_label\": 99999999999999999999}]", "not a TAPE"),
        (b"[{\"primary\": \"MK\", \"primary\": \"A\", \"fold_label\": 1}]", "duplicate field"),
        (b"[{\"primary\": \"MK\", \"fold_label\": 1}, 7]", "not a TAPE"),
        (b"  \r\n ", "empty file"),
        (b"[]", "the array holds no records"),
    ];
    for (bytes, needle) in hostile {
        std::fs::write(dir.join("remote_homology_valid.json"), bytes).unwrap();
        let err = load_err(&cfg);
        assert!(err.contains("remote_homology_valid.json") && err.contains(needle), "{needle}: {err}");
    }
    // CRLF between records is JSON whitespace: accepted.
    std::fs::write(
        dir.join("remote_homology_valid.json"),
        b"[{\"primary\": \"MK\", \"fold_label\": 1},\r\n{\"primary\": \"A\", \"fold_label\": 2}]\r\n",
    )
    .unwrap();
    assert_eq!(load_task(&cfg, 0).unwrap().len(Split::Val), Some(2));
    std::fs::remove_file(dir.join("remote_homology_valid.json")).unwrap();
    std::fs::create_dir(dir.join("remote_homology_valid.json")).unwrap();
    let err = load_err(&cfg);
    assert!(err.contains("remote_homology_valid.json: is a directory"), "{err}");
}

#[test]
fn evaluation_visits_every_example_exactly_once() {
    let dir = scratch("mnist-eval");
    write_mnist(&dir, 7, 10, true);
    let task = load_task(&mnist_cfg(&dir), 0).unwrap();
    let batches: Vec<_> = EvalBatches::new(task.clone(), Split::Test, 3, Device::Cpu).unwrap().collect();
    assert_eq!(batches.iter().map(|b| b.len).collect::<Vec<_>>(), vec![3, 3, 3, 1], "last partial batch included");
    let labels: Vec<i64> = batches.iter().flat_map(|b| Vec::<i64>::try_from(&b.y.flatten(0, -1)).unwrap()).collect();
    assert_eq!(labels, (0..10).map(|i| i % 10).collect::<Vec<i64>>());
    // Generated tasks evaluate their fixed set whole, too.
    let xor = load_task(&TaskConfig::BitXor { n: 5, patterns: 2, eval_examples: 25 }, 3).unwrap();
    let n: usize = EvalBatches::new(xor, Split::Val, 8, Device::Cpu).unwrap().map(|b| b.len).sum();
    assert_eq!(n, 25);
}

#[test]
fn training_epochs_are_seeded_permutations_and_resume_exactly() {
    let dir = scratch("mnist-train");
    write_mnist(&dir, 10, 2, false);
    let task: Arc<dyn Task> = load_task(&mnist_cfg(&dir), 0).unwrap();
    let mut stream = TrainStream::new(task.clone(), 4, 42, false).unwrap();
    let first: Vec<Vec<usize>> = (0..5).map(|_| stream.next_indices()).collect(); // 20 = two epochs
    let flat: Vec<usize> = first.concat();
    let (e0, e1) = flat.split_at(10);
    let sorted = |v: &[usize]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    assert_eq!(sorted(e0), (0..10).collect::<Vec<_>>(), "epoch 0 is a permutation");
    assert_eq!(sorted(e1), (0..10).collect::<Vec<_>>(), "epoch 1 is a permutation");
    assert_ne!(e0, e1, "epochs are reshuffled");
    assert_ne!(e0, (0..10).collect::<Vec<_>>().as_slice(), "epoch 0 is shuffled");
    // Same seed, same stream; a stream resumed at step 3 continues identically.
    let mut again = TrainStream::new(task.clone(), 4, 42, false).unwrap();
    assert_eq!((0..5).map(|_| again.next_indices()).collect::<Vec<_>>(), first);
    let mut resumed = TrainStream::new(task.clone(), 4, 42, false).unwrap().at_step(3);
    assert_eq!(resumed.next_indices(), first[3]);
    assert_eq!(resumed.epoch(), 1);
    let mut other = TrainStream::new(task.clone(), 4, 43, false).unwrap();
    assert_ne!(other.next_indices(), first[0]);
    // Batches are identical whatever the thread count (examples seed their own streams).
    let b1 = TrainStream::new(task.clone(), 4, 1, true).unwrap().next_batch(Device::Cpu);
    let b2 = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| TrainStream::new(task.clone(), 4, 1, true).unwrap().next_batch(Device::Cpu));
    assert!(b1.x.equal(&b2.x) && b1.y.equal(&b2.y));
}

/// A batch larger than a finite training split, and batch sizes of 0, are errors naming the
/// task and sizes; an endless (generated) training stream takes any batch size.
#[test]
fn batch_sizes_are_checked_against_the_split() {
    let spec = fpt_tasks::listops::GeneratorConfig { seed: 1, train: 50, val: 5, test: 5, min_len: 5, max_len: 30, ..Default::default() };
    let task = load_task(
        &TaskConfig::Listops {
            path: None,
            max_len: 64,
            overflow: Default::default(),
            tokenizer: Default::default(),
            padding: fpt_tasks::Padding::Masked,
            generate: Some(spec),
        },
        0,
    )
    .unwrap();
    let err = TrainStream::new(task.clone(), 64, 0, false).err().expect("batch 64 > 50 examples").to_string();
    assert_eq!(err, "train.batch_size 64 is larger than the training split of task listops (50 examples)");
    let mut whole = TrainStream::new(task.clone(), 50, 0, false).unwrap();
    let mut first = whole.next_indices();
    first.sort();
    assert_eq!(first, (0..50).collect::<Vec<_>>(), "a batch of the whole split is one epoch");
    let err = TrainStream::new(task.clone(), 0, 0, false).err().expect("batch 0").to_string();
    assert!(err.contains("train.batch_size 0") && err.contains("listops"), "{err}");
    let err = EvalBatches::new(task.clone(), Split::Test, 0, Device::Cpu).err().expect("eval batch 0").to_string();
    assert!(err.contains("train.eval_batch_size 0") && err.contains("listops"), "{err}");
    // A larger evaluation batch than the split is fine: one partial batch.
    assert_eq!(EvalBatches::new(task, Split::Test, 1000, Device::Cpu).unwrap().map(|b| b.len).collect::<Vec<_>>(), vec![5]);
    let xor = load_task(&TaskConfig::BitXor { n: 5, patterns: 2, eval_examples: 4 }, 0).unwrap();
    assert_eq!(TrainStream::new(xor, 1000, 0, false).unwrap().next_indices().len(), 1000);
}

#[test]
fn bit_tasks_stream_and_loss_shapes() {
    let task = load_task(&TaskConfig::BitMemory { n: 100, patterns: 5, patch: 10, mask_prob: 0.5, eval_examples: 8 }, 9).unwrap();
    let spec = task.spec().clone();
    let mut s = TrainStream::new(task.clone(), 4, 9, false).unwrap();
    let b = s.next_batch(Device::Cpu);
    assert_eq!(b.x.size(), vec![4, 60, 10]);
    assert_eq!(b.y.size(), vec![4, 100]);
    let logits = tch::Tensor::zeros([4, 10, 20], (Kind::Float, Device::Cpu));
    let (loss, correct) = fpt_tasks::loss_and_correct(&spec, &logits, &b.y).unwrap();
    assert!((loss.double_value(&[]) - 2f64.ln()).abs() < 1e-6);
    // All-zero logits predict class 0 everywhere: correct = number of 0 bits.
    let zeros = b.y.eq(0).sum(Kind::Int64).int64_value(&[]);
    assert_eq!(correct.int64_value(&[]), zeros);
    assert!(fpt_tasks::loss_and_correct(&spec, &tch::Tensor::zeros([4, 10], (Kind::Float, Device::Cpu)), &b.y).is_err());
}

/// The real Fashion-MNIST of Debian's `dataset-fashion-mnist` (`.ci/run` installs it).
#[test]
fn real_fashion_mnist_loads() {
    let dir = Path::new(fpt_tasks::config::DEBIAN_FASHION_MNIST);
    assert!(
        dir.is_dir(),
        "{} is absent: install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist); .ci/run does",
        dir.display()
    );
    let task = load_task(&TaskConfig::named("fashion-mnist", Some(dir.to_path_buf())).unwrap(), 0).unwrap();
    assert_eq!((task.len(Split::Train), task.len(Split::Test)), (Some(60_000), Some(10_000)));
    let stats = fpt_tasks::stats::split_stats(task.as_ref(), Split::Test).unwrap();
    assert!(stats.per_class.values().all(|&n| n == 1000), "{:?}", stats.per_class);
    let b = EvalBatches::new(task, Split::Test, 256, Device::Cpu).unwrap().next().unwrap();
    let mean = b.x.mean(Kind::Float).double_value(&[]);
    assert!(mean > 0.2 && mean < 0.4, "mean pixel {mean}"); // Fashion-MNIST's mean is ~0.286
}

/// The reference's ListOps preprocessing (experiments/paper.toml): its tokenizer keeps
/// alphanumeric tokens only (every `]` lost: 14 ids, padding 14, vocabulary 15 as the
/// reference's `input_dim`), the first `max_len` tokens are kept (counted as truncated), every
/// example is right-padded to `max_len`, and the padding is input (no lengths).
#[test]
fn listops_reference_mode_tokenizes_truncates_and_pads_as_the_reference() {
    let dir = scratch("listops-reference");
    write_listops(&dir, &[5, 12, 30, 8]); // 4, 11, 29 and 7 tokens without `]`
    let cfg: TaskConfig = serde_json::from_value(serde_json::json!({
        "name": "listops", "path": dir, "max_len": 10, "overflow": "truncate", "tokenizer": "alphanumeric", "padding": "fixed"
    }))
    .unwrap();
    let task = load_task(&cfg, 0).unwrap();
    let spec = task.spec();
    assert_eq!((spec.seq_len, spec.input, spec.padding), (10, fpt_tasks::InputKind::Tokens { vocab: 15 }, fpt_tasks::Padding::Fixed));
    assert_eq!(task.len(Split::Val), Some(4), "truncation keeps every example");
    let b = assemble(task.as_ref(), Split::Val, &[0, 2], false, 0, 0, Device::Cpu);
    assert_eq!(b.x.size(), vec![2, 10], "padded to max_len whatever the batch");
    assert!(b.lengths.is_none(), "the padding is input: no lengths");
    assert_eq!(Vec::<i64>::try_from(&b.x.get(0)).unwrap(), vec![13, 1, 1, 1, 14, 14, 14, 14, 14, 14]); // SM 1 1 1, pads
    assert_eq!(Vec::<i64>::try_from(&b.x.get(1)).unwrap(), vec![13, 1, 1, 1, 1, 1, 1, 1, 1, 1], "the first 10 tokens");
    for c in task.counts() {
        assert_eq!((c.source, c.kept, c.dropped, c.truncated), (4, 4, 0, 2), "{c:?}");
    }
    assert!(task.notes().iter().any(|n| n.contains("alphanumeric tokens only")), "{:?}", task.notes());
    // The project's defaults: `]` kept, masked padding.
    let default: TaskConfig = serde_json::from_value(serde_json::json!({ "name": "listops", "path": dir })).unwrap();
    let task = load_task(&default, 0).unwrap();
    assert_eq!((task.spec().input, task.spec().padding), (fpt_tasks::InputKind::Tokens { vocab: 16 }, fpt_tasks::Padding::Masked));
    // Bad values name the field's choices.
    let bad = serde_json::from_value::<TaskConfig>(serde_json::json!({ "name": "listops", "padding": "left" })).unwrap_err().to_string();
    assert!(bad.contains("unknown variant `left`") && bad.contains("masked"), "{bad}");
    let none: TaskConfig = serde_json::from_value(serde_json::json!({ "name": "listops", "path": dir, "padding": "none" })).unwrap();
    assert!(load_err(&none).contains("padding \"none\" does not fit"), "{}", load_err(&none));
}

/// TAPE-style JSON: one record per length, fold label = length % 1195.
fn write_homology_lengths(dir: &Path, split_lengths: &[(&str, Vec<usize>)]) {
    for (file, lengths) in split_lengths {
        let body: Vec<String> =
            lengths.iter().map(|&n| format!("{{\"primary\": \"{}\", \"fold_label\": {}}}", "M".repeat(n), n % 1195)).collect();
        std::fs::write(dir.join(format!("remote_homology_{file}.json")), format!("[{}]", body.join(","))).unwrap();
    }
}

/// The reference's remote homology (experiments/paper.toml): over-long sequences are kept,
/// evaluation batches are formed from the split sorted by length, every batch holding a
/// sequence over `max_len` is skipped and counted, the padding (to each batch's longest) is
/// input, and accuracy is scaled by the reference's 0.9739.
#[test]
fn remote_homology_reference_mode_skips_batches_with_long_sequences() {
    let dir = scratch("homology-reference");
    write_homology(&dir); // 6, 12 and 42 tokens per split
    let cfg: TaskConfig = serde_json::from_value(serde_json::json!({
        "name": "remote-homology", "path": dir, "max_len": 20, "long": "skip_batch", "padding": "batch"
    }))
    .unwrap();
    let task = load_task(&cfg, 0).unwrap();
    assert_eq!(task.len(Split::Val), Some(3), "nothing dropped at loading");
    assert_eq!(task.spec().seq_len, 12, "the longest sequence a kept batch can hold");
    assert_eq!(task.accuracy_scale(), 0.9739);
    for c in task.counts() {
        assert_eq!((c.source, c.kept, c.dropped, c.over_limit), (3, 3, 0, 1), "{c:?}");
    }
    let evals = EvalBatches::new(task.clone(), Split::Val, 2, Device::Cpu).unwrap();
    assert_eq!(evals.skipped(), fpt_tasks::Skipped { batches: 1, examples: 1 });
    assert_eq!(evals.len(), 2);
    let batches: Vec<_> = evals.collect();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].x.size(), vec![2, 12], "padded to the batch's longest");
    assert!(batches[0].lengths.is_none());
    assert_eq!(Vec::<i64>::try_from(&batches[0].x.get(0)).unwrap(), vec![2, 16, 14, 25, 15, 3, 0, 0, 0, 0, 0, 0]);
    // Sorted by length first: a batch of 1 skips only the long sequence, wherever it is.
    let evals = EvalBatches::new(task.clone(), Split::Val, 1, Device::Cpu).unwrap();
    assert_eq!((evals.len(), evals.skipped().batches), (2, 1));
    // Training never yields the long sequence; skipped batches are counted.
    let mut stream = TrainStream::new(task.clone(), 1, 3, false).unwrap();
    let seen: Vec<usize> = (0..20).flat_map(|_| stream.next_indices()).collect();
    assert!(seen.iter().all(|&i| i != 2) && seen.contains(&0) && seen.contains(&1), "{seen:?}");
    assert_eq!(stream.skipped().batches, stream.epoch() + 1, "one skipped batch per epoch walked");
    // Too many long sequences for the batch size: every batch could be skipped.
    let err = TrainStream::new(task, 2, 0, false).err().expect("1 long sequence, 1 batch per epoch").to_string();
    assert!(err.contains("1 training examples are longer than 20 tokens") && err.contains("lower train.batch_size"), "{err}");
}

/// Length-formed training batches (TAPE's BucketBatchSampler): each epoch uses every example
/// of its full batches once, a batch holds neighbours in length order, epochs differ, and a
/// stream resumed at any step continues exactly.
#[test]
fn length_formed_training_batches_are_sorted_buckets_and_resume_exactly() {
    let dir = scratch("homology-buckets");
    let lengths: Vec<usize> = (0..41).map(|i| 1 + (i * 17) % 40).collect(); // 1..=40, one 1 twice
    write_homology_lengths(&dir, &[("train", lengths.clone()), ("valid", vec![3, 4]), ("test_fold_holdout", vec![5])]);
    let cfg: TaskConfig = serde_json::from_value(serde_json::json!({
        "name": "remote-homology", "path": dir, "max_len": 1000, "long": "skip_batch", "padding": "batch"
    }))
    .unwrap();
    let task = load_task(&cfg, 0).unwrap();
    let mut stream = TrainStream::new(task.clone(), 4, 9, false).unwrap();
    let epoch0: Vec<Vec<usize>> = (0..10).map(|_| stream.next_indices()).collect(); // 41 / 4 = 10 full batches
    assert_eq!(stream.epoch(), 1);
    let mut all: Vec<usize> = epoch0.concat();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 40, "one example (41 mod 4) left out of the epoch, none repeated");
    // One bucket (41 < 4 × 100): batches are consecutive runs of the length order.
    let mut spans: Vec<(usize, usize)> = epoch0
        .iter()
        .map(|b| {
            let l: Vec<usize> = b.iter().map(|&i| task.example_len(Split::Train, i)).collect();
            (*l.iter().min().unwrap(), *l.iter().max().unwrap())
        })
        .collect();
    spans.sort();
    assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "batches do not interleave in length: {spans:?}");
    let sorted_by_step = epoch0.windows(2).all(|w| task.example_len(Split::Train, w[0][0]) <= task.example_len(Split::Train, w[1][0]));
    assert!(!sorted_by_step, "batch order is shuffled within the bucket");
    let epoch1: Vec<Vec<usize>> = (0..10).map(|_| stream.next_indices()).collect();
    assert_ne!(epoch0, epoch1);
    for at in [0u64, 3, 10, 17] {
        let mut resumed = TrainStream::new(task.clone(), 4, 9, false).unwrap().at_step(at);
        let expected = [&epoch0[..], &epoch1[..]].concat()[at as usize].clone();
        assert_eq!(resumed.next_indices(), expected, "resumed at step {at}");
    }
    assert_eq!(stream.skipped(), fpt_tasks::Skipped::default());
}
