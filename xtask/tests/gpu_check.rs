//! benches/gpu_check.sh on the CPU (DEVICE=cpu): the path a CUDA host takes — prebuilt `fpt`
//! and `xtask` binaries, libtorch from the Python's own torch/lib, the reference run by that
//! Python — its bench stage with one tiny layer so it takes seconds, and its parity stage.
//! (The smollm2 stage trains SmolLM2 on MNIST: ~15 minutes for 4 steps and the 10,000-image
//! evaluation on 2 busy cores, too long for here; the regress stage is `xtask regress`, which
//! `cargo xtask test` runs anyway.)

use std::path::PathBuf;
use std::process::Command;

/// `bash benches/gpu_check.sh` on the CPU with the project's Python, running `stages`, its work
/// folder in the temp directory under `tag`, no LD_LIBRARY_PATH (the script sets it).
fn gpu_check(stages: &str, tag: &str) -> Command {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let python = root.join(".venv/bin/python");
    assert!(python.exists(), "run `cargo xtask setup` first");
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("benches/gpu_check.sh"))
        .current_dir(std::env::temp_dir())
        .env("PYTHON", &python)
        .env("DEVICE", "cpu")
        .env("STAGES", stages)
        .env("GPU_CHECK_DIR", std::env::temp_dir().join(format!("fpt-gpu-check-{tag}-{}", std::process::id())))
        .env_remove("LD_LIBRARY_PATH");
    cmd
}

#[test]
fn gpu_check_script_runs_the_bench_with_prebuilt_binaries() {
    let json = std::env::temp_dir().join(format!("fpt-gpu-check-{}.json", std::process::id()));
    let out = gpu_check("bench", "bench")
        .args([
            "--layers",
            "1",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--rounds",
            "1",
            "--shapes",
            "mnist",
            "--precisions",
            "fp32,bf16",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "gpu_check.sh failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("gpu_check: torch 2.11"), "{stdout}");
    for needle in ["ref+autocast", "samples/s", "loss curve (20 steps, fp32)", "speed mnist bf16"] {
        assert!(stdout.contains(needle), "no {needle:?} in:\n{stdout}");
    }
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["measurements"].as_array().unwrap().len(), 4);
    assert!(report["loss_curve_max_abs_diff"].as_f64().unwrap() < 1e-4, "{report}");
    let _ = std::fs::remove_file(&json);
}

/// The parity stage on the CPU: every random fixture of the test suite, written by the Python's
/// transformers, judged by `fpt forward --check`; and a stage that fails (SmolLM2 weights where
/// there are none) is reported as failed without stopping the others, and fails the script.
#[test]
fn gpu_check_script_runs_the_parity_stage_and_reports_a_failed_stage() {
    let out = gpu_check("smollm2,parity", "parity").env("FPT_SMOLLM2_DIR", "/no/such/smollm2").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "one stage failed: exit 1\n{stdout}\n{stderr}");
    assert!(stderr.contains("no converted SmolLM2 at /no/such/smollm2"), "{stderr}");
    assert!(stdout.contains("  smollm2: FAILED"), "{stdout}");
    assert!(stdout.contains("  parity: passed"), "{stdout}\n{stderr}");
    // GPT-2, BERT and Llama-family cases, each judged on both outputs.
    for case in ["small4x64", "w120h5_sharded", "bert3x96_mlm", "qwen2x3x64_window", "llama2x64_rope_parameters_v5"] {
        let at = stdout.find(&format!("-- {case}\n")).unwrap_or_else(|| panic!("{case} not checked:\n{stdout}"));
        let lines: Vec<&str> = stdout[at..].lines().skip(1).take(2).collect();
        assert!(lines[0].starts_with("last_hidden_state: ") && lines[0].ends_with("within"), "{case}: {lines:?}");
        assert!(lines[1].starts_with("grad_inputs: ") && lines[1].ends_with("within"), "{case}: {lines:?}");
    }
    assert!(!stdout.contains("OUTSIDE"), "{stdout}");
}

#[test]
fn gpu_check_script_refuses_a_python_without_torch() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let out = Command::new("bash").arg(root.join("benches/gpu_check.sh")).env("PYTHON", "/bin/false").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot import torch"));
}
