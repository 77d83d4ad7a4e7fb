//! The `fpt` binary end to end: `fpt forward` against `transformers`, its bad-input messages,
//! and `fpt params`. The binary runs with an empty environment from a foreign directory, so
//! these tests also prove that it finds libtorch through its rpath.

#[path = "../../fpt-model/tests/common/mod.rs"]
mod common;

use common::{make_gpt2_fixtures, read_tensor};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tch::{Device, Kind, Tensor};

fn tmp() -> &'static Path {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
}

/// Runs `fpt` with no environment variables at all, from the temp directory.
fn fpt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fpt")).args(args).env_clear().current_dir(tmp()).output().expect("running fpt")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A failed run: exit 1, one line starting with `fpt: error:` that contains `needle`.
fn assert_one_line_error(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "expected exit 1, got {:?}; stderr: {err}", out.status);
    assert!(!err.contains("panicked"), "fpt panicked: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "expected one line, got: {err}");
    assert!(err.starts_with("fpt: error:"), "{err}");
    assert!(err.contains(needle), "error lacks {needle:?}: {err}");
}

fn write(path: &Path, name: &str, t: &Tensor) -> PathBuf {
    Tensor::write_safetensors(&[(name, t)], path).unwrap();
    path.to_path_buf()
}

#[test]
fn forward_matches_transformers_and_rejects_bad_input() {
    let fixtures = make_gpt2_fixtures(tmp(), "cli", &["odd3x96_prefixed", "w120h5_sharded"]);
    for case in ["odd3x96_prefixed", "w120h5_sharded"] {
        let dir = fixtures.join(case);
        let out_file = dir.join("ours.safetensors");
        let out = fpt(&[
            "forward",
            "--model",
            dir.join("model").to_str().unwrap(),
            "--inputs",
            dir.join("reference.safetensors").to_str().unwrap(),
            "--out",
            out_file.to_str().unwrap(),
            "--device",
            "cpu",
        ]);
        assert!(out.status.success(), "{case}: {}", stderr(&out));
        // The parity rule of fpt_model::tolerance (reference fp64 truth and fp32 noise).
        common::assert_parity(case, &read_tensor(&out_file, "last_hidden_state"), &dir.join("reference.safetensors"), "last_hidden_state");
    }

    // odd3x96: width 96, n_positions 40.
    let model = fixtures.join("odd3x96_prefixed/model");
    let model = model.to_str().unwrap();
    let bad = tmp().join(format!("bad-inputs-{}", std::process::id()));
    std::fs::create_dir_all(&bad).unwrap();
    let cpu = (Kind::Float, Device::Cpu);
    let cases: Vec<(PathBuf, &str)> = vec![
        (bad.join("absent.safetensors"), "absent.safetensors"),
        (write(&bad.join("name.safetensors"), "embeds", &Tensor::zeros([1, 2, 96], cpu)), "no tensor named \"inputs_embeds\""),
        (write(&bad.join("dtype.safetensors"), "inputs_embeds", &Tensor::zeros([1, 2, 96], (Kind::Double, Device::Cpu))), "expected F32"),
        (write(&bad.join("rank.safetensors"), "inputs_embeds", &Tensor::zeros([2, 96], cpu)), "rank 3"),
        (write(&bad.join("width.safetensors"), "inputs_embeds", &Tensor::zeros([1, 2, 95], cpu)), "width is 95"),
        (write(&bad.join("long.safetensors"), "inputs_embeds", &Tensor::zeros([1, 41, 96], cpu)), "n_positions"),
        (
            {
                let p = bad.join("garbage.safetensors");
                std::fs::write(&p, b"\x10\0\0\0\0\0\0\0{garbage").unwrap();
                p
            },
            "not a valid safetensors file",
        ),
    ];
    let out_file = bad.join("out.safetensors");
    for (inputs, needle) in &cases {
        let out = fpt(&[
            "forward",
            "--model",
            model,
            "--inputs",
            inputs.to_str().unwrap(),
            "--out",
            out_file.to_str().unwrap(),
            "--device",
            "cpu",
        ]);
        assert_one_line_error(&out, needle);
        assert!(stderr(&out).contains(inputs.file_name().unwrap().to_str().unwrap()), "error does not name the file: {}", stderr(&out));
    }
    let good = write(&bad.join("good.safetensors"), "inputs_embeds", &Tensor::zeros([1, 2, 96], cpu));
    let out = fpt(&[
        "forward",
        "--model",
        "/no/such/model",
        "--inputs",
        good.to_str().unwrap(),
        "--out",
        out_file.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert_one_line_error(&out, "/no/such/model/config.json");
    let out =
        fpt(&["forward", "--model", model, "--inputs", good.to_str().unwrap(), "--out", "/no/such/dir/out.safetensors", "--device", "cpu"]);
    assert_one_line_error(&out, "/no/such/dir/out.safetensors");
    let out =
        fpt(&["forward", "--model", model, "--inputs", good.to_str().unwrap(), "--out", out_file.to_str().unwrap(), "--device", "tpu"]);
    assert_one_line_error(&out, "unknown device");
}

/// `fpt forward --check` judges the output and the input gradient by the parity rule against the
/// reference's fp64 truth (what benches/gpu_check.sh runs on CUDA): within on the true
/// reference, exit 1 naming the output and the file when the truth is moved by 1e-4 of its
/// scale (the size of a wrong epsilon), and a clear error for a reference without the truth.
#[test]
fn forward_check_judges_output_and_gradient_against_the_reference() {
    let fixtures = make_gpt2_fixtures(tmp(), "cli-check", &["small4x64"]);
    let dir = fixtures.join("small4x64");
    let model = dir.join("model");
    let reference = dir.join("reference.safetensors");
    let check = |reference: &Path| {
        fpt(&["forward", "--model", model.to_str().unwrap(), "--inputs", reference.to_str().unwrap(), "--check", "--device", "cpu"])
    };
    let out = check(&reference);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}{text}", stderr(&out));
    for name in ["last_hidden_state", "grad_inputs"] {
        assert!(text.lines().any(|l| l.starts_with(name) && l.ends_with("within")), "{name} not judged: {text}");
    }

    let names = ["inputs_embeds", "cotangent", "last_hidden_state_f64", "last_hidden_state_noise", "grad_inputs_f64", "grad_inputs_noise"];
    let tensors: Vec<(&str, Tensor)> = names.iter().map(|&n| (n, common::read_f64(&reference, n))).collect();
    let kinds = |moved: &str| -> Vec<(&str, Tensor)> {
        tensors
            .iter()
            .map(|(n, t)| {
                let t = if *n == moved { t * (1.0 + 1e-4) } else { t.shallow_clone() };
                // inputs and cotangent are f32 in the fixture, truths and noises f64.
                (*n, if n.ends_with("_f64") || n.ends_with("_noise") { t } else { t.to_kind(Kind::Float) })
            })
            .collect()
    };
    for moved in ["last_hidden_state_f64", "grad_inputs_f64"] {
        let path = dir.join(format!("moved-{moved}.safetensors"));
        Tensor::write_safetensors(&kinds(moved), &path).unwrap();
        let out = check(&path);
        let output = moved.trim_end_matches("_f64");
        assert_one_line_error(&out, &format!("{output} outside the parity bound of {}", path.display()));
        assert!(String::from_utf8_lossy(&out.stdout).contains("OUTSIDE"), "{}", String::from_utf8_lossy(&out.stdout));
    }
    let bare = write(&dir.join("bare.safetensors"), "inputs_embeds", &common::read_tensor(&reference, "inputs_embeds"));
    assert_one_line_error(&check(&bare), "no tensor named \"last_hidden_state_f64\"");
    let out = fpt(&["forward", "--model", model.to_str().unwrap(), "--inputs", reference.to_str().unwrap(), "--device", "cpu"]);
    assert!(!out.status.success() && stderr(&out).contains("--out"), "neither --out nor --check: {}", stderr(&out));
}

#[test]
fn params_reports_the_cifar10_budget_of_gpt2_small() {
    let out = fpt(&["params", "--model", "gpt2", "--input-dim", "48", "--tokens", "64", "--classes", "10", "--device", "cpu"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    // input 48·768+768, output 768·10+10, layer norms 25·1536, all 1024 position rows.
    for row in [
        "input                     37,632          37,632",
        "output                     7,690           7,690",
        "layer_norms               38,400          38,400",
        "attention             28,348,416               0",
        "total                124,485,130         870,154",
        "position rows used: 132,874",
    ] {
        assert!(text.contains(row), "missing {row:?} in\n{text}");
    }
    let full =
        fpt(&["params", "--model", "gpt2", "--vocab", "15", "--tokens", "512", "--classes", "10", "--freeze", "full", "--device", "cpu"]);
    let text = String::from_utf8_lossy(&full.stdout);
    assert!(text.contains("attention             28,348,416      28,348,416"), "{text}");

    assert_one_line_error(
        &fpt(&[
            "params",
            "--model",
            "gpt2",
            "--input-dim",
            "48",
            "--tokens",
            "64",
            "--classes",
            "10",
            "--freeze",
            "paper,attn",
            "--device",
            "cpu",
        ]),
        "freeze spec",
    );
    assert_one_line_error(
        &fpt(&["params", "--model", "gpt5", "--input-dim", "48", "--tokens", "64", "--classes", "10", "--device", "cpu"]),
        "neither a directory nor a preset",
    );
    assert_one_line_error(
        &fpt(&["params", "--model", "gpt2", "--input-dim", "48", "--tokens", "2000", "--classes", "10", "--device", "cpu"]),
        "n_positions",
    );
}

/// `fpt train --check` validates a config (and its --set values) without training or writing a
/// run directory; `cargo xtask reproduce --dry-run` relies on it.
#[test]
fn train_check_validates_without_training() {
    let dir = tmp().join("train-check");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, "seed = 0\n[task]\nname = \"bit-xor\"\n[model]\nbackbone = \"gpt2\"\ninit = \"random\"\n[train]\nsteps = 5\n")
        .unwrap();
    let out_dir = dir.join("run");
    let out = fpt(&["train", "--check", "--config", good.to_str().unwrap(), "--out", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("a valid run config"));
    assert!(!out_dir.exists(), "--check must not create the run directory");
    // A bad --set value and a bad field name each fail with one line naming the culprit.
    let out = fpt(&["train", "--check", "--config", good.to_str().unwrap(), "--set", "train.steps=0"]);
    assert_one_line_error(&out, "--set train.steps=0");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "seed = 0\n\"model.backbone\" = \"gpt2\"\n[task]\nname = \"bit-xor\"\n").unwrap();
    let out = fpt(&["train", "--check", "--config", bad.to_str().unwrap()]);
    assert_one_line_error(&out, "unknown field `model.backbone`");
}
