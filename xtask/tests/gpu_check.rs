//! benches/gpu_check.sh on the CPU (DEVICE=cpu): the path a CUDA host takes — prebuilt `fpt`
//! and `xtask` binaries, libtorch from the Python's own torch/lib, the reference run by that
//! Python — with one tiny layer so it takes seconds.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn gpu_check_script_runs_the_bench_with_prebuilt_binaries() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let python = root.join(".venv/bin/python");
    assert!(python.exists(), "run `cargo xtask setup` first");
    let json = std::env::temp_dir().join(format!("fpt-gpu-check-{}.json", std::process::id()));
    let out = Command::new("bash")
        .arg(root.join("benches/gpu_check.sh"))
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
        .current_dir(std::env::temp_dir())
        .env("PYTHON", &python)
        .env("DEVICE", "cpu")
        .env_remove("LD_LIBRARY_PATH")
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

#[test]
fn gpu_check_script_refuses_a_python_without_torch() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let out = Command::new("bash").arg(root.join("benches/gpu_check.sh")).env("PYTHON", "/bin/false").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot import torch"));
}
