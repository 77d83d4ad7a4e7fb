//! Your own data end to end through the `fpt` binary: `image-folder` and `arrays` runs trained,
//! then `fpt eval` (which must agree with the run's own evaluation) and `fpt predict` (which
//! must agree with `fpt eval`), the backbone check, and bad input (one line, exit 1).

use fpt_model::{FreezeSpec, Gpt2, Gpt2Config};
use fpt_train::trainer::read_summary;
use npyz::WriterBuilder;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tch::{nn, Device, Tensor};

fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("own-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fpt(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fpt")).args(args).current_dir(dir).env_remove("FPT_STOP_AFTER_STEP").output().expect("running fpt")
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "fpt failed: {}\n{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn one_line_error(out: Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.trim_end().lines().filter(|l| !l.starts_with("note:")).collect();
    assert_eq!(lines.len(), 1, "expected one line: {err}");
    for n in needles {
        assert!(err.contains(n), "error lacks {n:?}: {err}");
    }
}

const TINY: &str = r#"
seed = 0
[model]
backbone = "gpt2"
init = "random"
freeze = "paper"
[model.shape]
n_layer = 2
n_embd = 32
n_head = 2
n_positions = 64
[train]
steps = 40
batch_size = 8
lr = 3e-3
log_every = 20
eval_every = 20
checkpoint_every = 20
eval_batch_size = 7
"#;

/// 16×16 grey images of three classes (checks, horizontal and vertical stripes), each shifted
/// by its index, under `root/<split>/<class>/`.
fn write_images(root: &Path, split: &str, per_class: u32, classes: &[&str]) {
    for class in classes {
        let dir = root.join(split).join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            let img = image::GrayImage::from_fn(16, 16, |x, y| {
                let (x, y) = (x + i, y + 2 * i);
                let on = match *class {
                    "checks" => (x / 2 + y / 2) % 2 == 0,
                    "horizontal" => (y / 2) % 2 == 0,
                    _ => (x / 2) % 2 == 0,
                };
                image::Luma([if on { 200 - (i % 7) as u8 * 5 } else { 20 + (i % 5) as u8 * 4 }])
            });
            img.save(dir.join(format!("{i:03}.png"))).unwrap();
        }
    }
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

#[test]
fn image_folder_run_evaluates_and_predicts_consistently() {
    let dir = tmp("images");
    let classes = ["checks", "horizontal", "vertical"];
    write_images(&dir.join("images"), "train", 24, &classes);
    write_images(&dir.join("images"), "test", 10, &classes);
    std::fs::write(dir.join("run.toml"), format!("{TINY}[task]\nname = \"image-folder\"\npath = \"images\"\ncolor = \"grey\"\n")).unwrap();

    let check = ok(fpt(&dir, &["data", "check", "--task", "image-folder", "--path", "images", "--set", "color=grey"]));
    assert!(check.contains("16 tokens of 16 features") && check.contains("per class: 0:24 1:24 2:24"), "{check}");
    let params = ok(fpt(&dir, &["params", "--config", "run.toml", "--device", "cpu"]));
    assert!(params.contains("16 tokens of 16 features per token; 3 outputs"), "{params}");

    ok(fpt(&dir, &["train", "--config", "run.toml", "--out", "run", "--device", "cpu"]));
    let model = json(&dir.join("run/model.json"));
    assert_eq!(model["data"]["class_names"], serde_json::json!(classes));
    assert_eq!(model["backbone"]["identity"], "random init, seed 0, drawn on cpu");
    let summary = read_summary(&dir.join("run")).unwrap();

    // fpt eval reproduces the run's own final evaluation, and writes its files.
    let text = ok(fpt(&dir, &["eval", "--run", "run", "--device", "cpu"]));
    let report = json(&dir.join("run/eval-test/eval.json"));
    assert_eq!(report["accuracy"].as_f64(), summary.final_eval_acc, "{text}");
    assert_eq!(report["run_final_eval_acc"].as_f64(), summary.final_eval_acc);
    assert_eq!((report["examples"].as_u64(), report["checkpoint_step"].as_u64()), (Some(30), Some(40)));
    let confusion: Vec<Vec<u64>> = serde_json::from_value(report["confusion"].clone()).unwrap();
    assert_eq!(confusion.iter().flatten().sum::<u64>(), 30);
    assert_eq!(confusion.iter().map(|r| r.iter().sum::<u64>()).collect::<Vec<_>>(), vec![10, 10, 10]);
    assert!(text.contains("confusion matrix") && text.contains("horizontal"), "{text}");
    for f in ["confusion.csv", "confusion.png"] {
        assert!(dir.join("run/eval-test").join(f).is_file(), "{f}");
    }
    let csv = std::fs::read_to_string(dir.join("run/eval-test/confusion.csv")).unwrap();
    assert!(csv.starts_with("true\\predicted,checks,horizontal,vertical\n"), "{csv}");

    // fpt predict on the test folder agrees with fpt eval, example by example in aggregate.
    ok(fpt(&dir, &["predict", "--run", "run", "--inputs", "images/test", "--out", "out/predictions.csv", "--device", "cpu"]));
    let rows = std::fs::read_to_string(dir.join("out/predictions.csv")).unwrap();
    let mut lines = rows.lines();
    assert_eq!(lines.next(), Some("index,source,predicted,class_name,p0,p1,p2"));
    let mut predicted_confusion = vec![vec![0u64; 3]; 3];
    for (i, line) in lines.enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f[0], i.to_string());
        let truth = classes.iter().position(|c| f[1].starts_with(&format!("{c}/"))).unwrap();
        let pred: usize = f[2].parse().unwrap();
        assert_eq!(f[3], classes[pred]);
        let p: Vec<f64> = f[4..].iter().map(|v| v.parse().unwrap()).collect();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-4);
        assert!(p.iter().all(|&v| v <= p[pred]));
        predicted_confusion[truth][pred] += 1;
    }
    assert_eq!(predicted_confusion, confusion);

    // .npy: the probabilities; one image alone gives the same row as in the folder.
    ok(fpt(&dir, &["predict", "--run", "run", "--inputs", "images/test", "--out", "p.npy", "--device", "cpu"]));
    let npy = npyz::NpyFile::new(std::fs::File::open(dir.join("p.npy")).unwrap()).unwrap();
    assert_eq!(npy.shape(), &[30, 3]);
    let all: Vec<f32> = npy.into_vec().unwrap();
    ok(fpt(&dir, &["predict", "--run", "run", "--inputs", "images/test/vertical/003.png", "--out", "one.npz", "--device", "cpu"]));
    let mut npz = npyz::npz::NpzArchive::open(dir.join("one.npz")).unwrap();
    let one: Vec<f32> = npz.by_name("probabilities").unwrap().unwrap().into_vec().unwrap();
    let row = &all[23 * 3..24 * 3];
    assert!(one.iter().zip(row).all(|(a, b)| (a - b).abs() < 1e-5), "{one:?} vs {row:?}");
    let pred: Vec<i64> = npz.by_name("predicted").unwrap().unwrap().into_vec().unwrap();
    assert_eq!(pred.len(), 1);

    // Other data of the same shape: classes are matched by name (a subset, in another order).
    write_images(&dir.join("more"), "test", 4, &["vertical", "checks"]);
    ok(fpt(&dir, &["eval", "--run", "run", "--task-path", "more", "--device", "cpu"]));
    let other = json(&dir.join("run/eval-more-test/eval.json"));
    let c: Vec<Vec<u64>> = serde_json::from_value(other["confusion"].clone()).unwrap();
    assert_eq!(c.iter().map(|r| r.iter().sum::<u64>()).collect::<Vec<_>>(), vec![4, 0, 4]);
    assert!(other["run_final_eval_acc"].is_null());

    // Bad input: a class the run does not know, a split that is not there, a wrong --out.
    write_images(&dir.join("strange"), "test", 2, &["checks", "diagonal"]);
    one_line_error(
        fpt(&dir, &["eval", "--run", "run", "--task-path", "strange", "--device", "cpu"]),
        &["strange/test/diagonal", "not one of the 3 classes"],
    );
    one_line_error(fpt(&dir, &["eval", "--run", "run", "--split", "val", "--device", "cpu"]), &["has no val split"]);
    one_line_error(
        fpt(&dir, &["predict", "--run", "run", "--inputs", "images/test", "--out", "p.txt", "--device", "cpu"]),
        &["p.txt", "expected a .csv, .npy or .npz"],
    );
    one_line_error(
        fpt(&dir, &["predict", "--run", "run", "--inputs", "nowhere", "--out", "p.csv", "--device", "cpu"]),
        &["nowhere", "no such file or folder"],
    );
    std::fs::write(dir.join("images/test/checks/000.png"), b"broken").unwrap();
    one_line_error(
        fpt(&dir, &["predict", "--run", "run", "--inputs", "images/test", "--out", "p.csv", "--device", "cpu"]),
        &["images/test/checks/000.png", "not a readable image"],
    );
}

fn npy<T: npyz::AutoSerialize + Copy>(shape: &[u64], data: &[T]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = npyz::WriteOptions::<T>::new().default_dtype().shape(shape).writer(&mut buf).begin_nd().unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
    buf
}

/// Token sequences of 3..=10 ids below 6, right-padded to 10 with 0; label: whether the last
/// real token is above 2.
fn write_tokens(path: &Path, n: usize, seed: u64) -> Vec<i64> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let (mut ids, mut labels, mut lengths) = (vec![0i32; n * 10], Vec::new(), Vec::new());
    for i in 0..n {
        let len = 3 + next() % 8;
        for j in 0..len {
            ids[i * 10 + j] = (next() % 6) as i32;
        }
        labels.push((ids[i * 10 + len - 1] > 2) as i64);
        lengths.push(len as i64);
    }
    let mut zip = npyz::zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in
        [("inputs", npy(&[n as u64, 10], &ids)), ("labels", npy(&[n as u64], &labels)), ("lengths", npy(&[n as u64], &lengths))]
    {
        zip.start_file(format!("{name}.npy"), npyz::zip::write::FileOptions::default()).unwrap();
        zip.write_all(&bytes).unwrap();
    }
    zip.finish().unwrap();
    labels
}

#[test]
fn arrays_run_evaluates_other_data_and_predicts() {
    let dir = tmp("arrays");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::create_dir_all(dir.join("later")).unwrap();
    write_tokens(&dir.join("data/train.npz"), 200, 1);
    let test_labels = write_tokens(&dir.join("data/test.npz"), 40, 2);
    write_tokens(&dir.join("later/test.npz"), 30, 3);
    std::fs::write(
        dir.join("run.toml"),
        format!("{}[task]\nname = \"arrays\"\npath = \"data\"\nvocab = 6\n", TINY.replace("steps = 40", "steps = 60")),
    )
    .unwrap();
    ok(fpt(&dir, &["train", "--config", "run.toml", "--out", "run", "--device", "cpu"]));
    let summary = read_summary(&dir.join("run")).unwrap();
    ok(fpt(&dir, &["eval", "--run", "run", "--device", "cpu", "--out", "ev"]));
    let report = json(&dir.join("ev/eval.json"));
    assert_eq!(report["accuracy"].as_f64(), summary.final_eval_acc);
    assert!(report["class_names"].is_null());
    ok(fpt(&dir, &["eval", "--run", "run", "--task-path", "later", "--device", "cpu"]));
    assert_eq!(json(&dir.join("run/eval-later-test/eval.json"))["examples"], 30);

    // Predictions on the test file's inputs (its labels ignored) agree with fpt eval.
    ok(fpt(&dir, &["predict", "--run", "run", "--inputs", "data/test.npz", "--out", "p.npz", "--device", "cpu"]));
    let mut npz = npyz::npz::NpzArchive::open(dir.join("p.npz")).unwrap();
    let pred: Vec<i64> = npz.by_name("predicted").unwrap().unwrap().into_vec().unwrap();
    let correct = pred.iter().zip(&test_labels).filter(|(p, l)| p == l).count();
    assert_eq!(Some(correct as f64 / 40.0), summary.final_eval_acc);
    let csv = ok(fpt(&dir, &["predict", "--run", "run", "--inputs", "data/test.npz", "--out", "p.csv", "--device", "cpu"]));
    assert!(csv.contains("40 examples"), "{csv}");
    let rows = std::fs::read_to_string(dir.join("p.csv")).unwrap();
    assert!(rows.starts_with("index,source,predicted,class_name,p0,p1\n0,0,"), "{rows}");

    // Inputs of the wrong kind or size.
    std::fs::write(dir.join("floats.npy"), npy(&[2, 10, 1], &[0f32; 20])).unwrap();
    one_line_error(
        fpt(&dir, &["predict", "--run", "run", "--inputs", "floats.npy", "--out", "p.csv", "--device", "cpu"]),
        &["floats.npy", "[N, T]"],
    );
    std::fs::write(dir.join("big.npy"), npy(&[1, 3], &[1i64, 2, 9])).unwrap();
    one_line_error(
        fpt(&dir, &["predict", "--run", "run", "--inputs", "big.npy", "--out", "p.csv", "--device", "cpu"]),
        &["big.npy", "id 9 is outside the vocabulary 0..6"],
    );
}

/// A tiny GPT-2 checkpoint folder as Hugging Face writes it; `shift` changes every weight.
fn tiny_checkpoint(dir: &Path, shift: f64) {
    let mut cfg = Gpt2Config::custom(2, 32, 4);
    cfg.vocab_size = 50;
    cfg.n_positions = 32;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    tch::manual_seed(11);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Gpt2::new(&vs.root(), &cfg).unwrap();
    FreezeSpec::all().apply(&vs, &model).unwrap();
    let tensors: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(n, t)| (n, t + shift)).collect();
    Tensor::write_safetensors(&tensors, dir.join("model.safetensors")).unwrap();
}

#[test]
fn eval_and_predict_check_the_backbone() {
    let dir = tmp("backbone");
    write_images(&dir.join("images"), "train", 8, &["checks", "vertical"]);
    write_images(&dir.join("images"), "test", 4, &["checks", "vertical"]);
    tiny_checkpoint(&dir.join("ckpt"), 0.0);
    let config = format!(
        "{}[task]\nname = \"image-folder\"\npath = \"images\"\ncolor = \"grey\"\n",
        TINY.replace("backbone = \"gpt2\"", "backbone = \"ckpt\"")
            .replace("init = \"random\"", "init = \"pretrained\"")
            .replace("[model.shape]\nn_layer = 2\nn_embd = 32\nn_head = 2\nn_positions = 64\n", "")
            .replace("steps = 40", "steps = 4")
    );
    std::fs::write(dir.join("run.toml"), config).unwrap();
    ok(fpt(&dir, &["train", "--config", "run.toml", "--out", "run", "--device", "cpu"]));
    let identity = json(&dir.join("run/model.json"))["backbone"]["identity"].as_str().unwrap().to_string();
    assert!(identity.starts_with("sha256:") && identity.len() == 7 + 64, "{identity}");
    ok(fpt(&dir, &["eval", "--run", "run", "--device", "cpu"]));
    // The same weights elsewhere are the same backbone; other weights in the same folder are not.
    std::fs::rename(dir.join("ckpt"), dir.join("moved")).unwrap();
    let cfg = std::fs::read_to_string(dir.join("run/config.toml")).unwrap();
    std::fs::write(dir.join("run/config.toml"), cfg.replace("\"ckpt\"", "\"moved\"")).unwrap();
    ok(fpt(&dir, &["eval", "--run", "run", "--device", "cpu"]));
    tiny_checkpoint(&dir.join("moved"), 0.01);
    for args in [
        vec!["eval", "--run", "run", "--device", "cpu"],
        vec!["predict", "--run", "run", "--inputs", "images/test", "--out", "p.csv", "--device", "cpu"],
    ] {
        one_line_error(fpt(&dir, &args), &["run/model.json", &identity, "not the same frozen weights"]);
    }

    // A random init is its seed: another seed is another backbone.
    let random = dir.join("random.toml");
    std::fs::write(
        &random,
        format!("{}[task]\nname = \"image-folder\"\npath = \"images\"\ncolor = \"grey\"\n", TINY.replace("steps = 40", "steps = 2")),
    )
    .unwrap();
    ok(fpt(&dir, &["train", "--config", "random.toml", "--out", "r", "--device", "cpu"]));
    let cfg = std::fs::read_to_string(dir.join("r/config.toml")).unwrap();
    std::fs::write(dir.join("r/config.toml"), cfg.replace("seed = 0", "seed = 1")).unwrap();
    one_line_error(
        fpt(&dir, &["eval", "--run", "r", "--device", "cpu"]),
        &["random init, seed 0, drawn on cpu", "random init, seed 1", "--device"],
    );

    // Not a run; a run without a checkpoint.
    one_line_error(fpt(&dir, &["eval", "--run", "nothing", "--device", "cpu"]), &["nothing", "no such run directory"]);
    std::fs::create_dir_all(dir.join("fresh")).unwrap();
    std::fs::copy(dir.join("r/config.toml"), dir.join("fresh/config.toml")).unwrap();
    one_line_error(
        fpt(&dir, &["predict", "--run", "fresh", "--inputs", "images/test", "--out", "p.csv", "--device", "cpu"]),
        &["fresh", "no checkpoint.safetensors"],
    );
}
