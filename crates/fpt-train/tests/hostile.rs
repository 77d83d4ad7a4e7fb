//! Hostile input to `fpt`, as a user (or a crash, a full disk, a second process) delivers it:
//! every case ends in a clear error, exit status 1 (or the documented code), and nothing lost.

#[path = "../../fpt-model/tests/common/mod.rs"]
mod common;

use fpt_train::trainer::{read_metrics, read_summary, Status, IN_USE_EXIT_CODE};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A tiny frozen GPT-2 on bit XOR: seconds per run.
const RUN: &str = r#"
seed = 5
[task]
name = "bit-xor"
eval_examples = 100
[model]
backbone = "gpt2"
init = "random"
freeze = "paper"
[model.shape]
n_layer = 2
n_embd = 32
n_head = 4
n_positions = 16
[train]
steps = 40
batch_size = 8
log_every = 10
eval_every = 20
checkpoint_every = 20
"#;

fn fpt_cmd(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fpt"));
    cmd.args(args).env_remove("FPT_STOP_AFTER_STEP");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn fpt(args: &[&str], env: &[(&str, &str)]) -> Output {
    fpt_cmd(args, env).output().expect("running fpt")
}

fn train(config: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args = vec!["train", "--device", "cpu", "--config", config.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    fpt(&args, env)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit status 1 with every `needles` in stderr.
fn fails_with(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "expected a clean failure, got {:?}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

fn config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Rewrites a safetensors file's `__metadata__` (and optionally flips a bit of its data).
fn tamper(path: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>), flip_last_data_bit: bool) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(header["__metadata__"].as_object_mut().unwrap());
    let mut data = bytes[8 + n..].to_vec();
    if flip_last_data_bit {
        *data.last_mut().unwrap() ^= 1;
    }
    let text = header.to_string();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&data);
    std::fs::write(path, out).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// A checkpoint's step, Adam count, time and tensors are checked at resume; a refused
/// checkpoint leaves metrics.jsonl as it was (no silent retraining over it).
#[test]
fn checkpoint_metadata_is_checked_not_believed() {
    let dir = tmp("ckpt");
    let cfg = config(&dir, RUN);
    let killed = dir.join("killed");
    let out = train(&cfg, &killed, &[], &[("FPT_STOP_AFTER_STEP", "25")]);
    assert_eq!(out.status.code(), Some(fpt_train::trainer::STOPPED_EXIT_CODE), "{}", stderr(&out));
    let metrics_before = std::fs::read(killed.join("metrics.jsonl")).unwrap();

    let set = |k: &'static str, v: &'static str| {
        move |m: &mut serde_json::Map<String, serde_json::Value>| {
            m.insert(k.into(), v.into());
        }
    };
    type Edit = Box<dyn FnOnce(&mut serde_json::Map<String, serde_json::Value>)>;
    let cases: Vec<(&str, Edit, bool, &[&str])> = vec![
        ("beyond", Box::new(set("step", "1000")), false, &["step 1000 is outside this run's 1..=40 steps"]),
        ("float", Box::new(set("step", "1e30")), false, &["metadata field step is \"1e30\"", "whole number"]),
        ("negative", Box::new(set("step", "-5")), false, &["metadata field step is \"-5\""]),
        ("zero", Box::new(set("step", "0")), false, &["step 0 is outside"]),
        ("huge", Box::new(set("step", "99999999999999999999999")), false, &["too large"]),
        ("adam", Box::new(set("adam_t", "7")), false, &["Adam's step count 7 differs from the training step 20"]),
        ("wall", Box::new(set("wall_s", "NaN")), false, &["wall_s"]),
        ("format", Box::new(set("format", "something-else")), false, &["not an fpt run checkpoint"]),
        (
            "no-sum",
            Box::new(|m: &mut serde_json::Map<String, serde_json::Value>| {
                m.remove("sha256");
            }),
            false,
            &["sha256 is missing"],
        ),
        ("bitflip", Box::new(|_: &mut serde_json::Map<String, serde_json::Value>| {}), true, &["SHA-256", "corrupt"]),
    ];
    for (name, edit, flip, needles) in cases {
        let run = dir.join(name);
        copy_dir(&killed, &run);
        tamper(&run.join("checkpoint.safetensors"), edit, flip);
        let out = train(&cfg, &run, &["--resume"], &[]);
        let mut all = vec!["checkpoint.safetensors"];
        all.extend_from_slice(needles);
        fails_with(&out, &all);
        assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), metrics_before, "{name}: metrics.jsonl changed");
    }

    // Untouched, it resumes and completes.
    let out = train(&cfg, &killed, &["--resume"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(read_summary(&killed).unwrap().status, Status::Completed);
}

/// One process per run directory; SIGTERM stops at a step boundary with a checkpoint, and the
/// resumed run lands where an uninterrupted one does.
#[test]
fn a_run_directory_is_locked_and_sigterm_checkpoints() {
    let dir = tmp("lock");
    let long = RUN.replace("steps = 40", "steps = 400").replace("eval_every = 20", "eval_every = 100");
    let cfg = config(&dir, &long);
    let run = dir.join("run");
    let args = ["train", "--device", "cpu", "--config", cfg.to_str().unwrap(), "--out", run.to_str().unwrap()];
    let mut first = fpt_cmd(&args, &[]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    // Wait until it has logged a step (it holds the lock from before the model is built).
    let start = Instant::now();
    while read_metrics(&run).map(|m| m.is_empty()).unwrap_or(true) {
        assert!(start.elapsed() < Duration::from_secs(120), "the first trainer never logged a step");
        assert!(first.try_wait().unwrap().is_none(), "the first trainer ended early");
        std::thread::sleep(Duration::from_millis(50));
    }

    let second = fpt(&[&args[..], &["--resume"]].concat(), &[]);
    assert_eq!(second.status.code(), Some(IN_USE_EXIT_CODE), "{}", stderr(&second));
    let err = stderr(&second);
    assert!(err.contains("in use by another fpt process") && err.contains(&format!("pid {}", first.id())), "{err}");

    // SAFETY: sending a signal to our own child, which is still running.
    assert_eq!(unsafe { libc::kill(first.id() as i32, libc::SIGTERM) }, 0);
    let out = first.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM), "{}", stderr(&out));
    assert!(stderr(&out).contains("checkpoint written"), "{}", stderr(&out));
    let summary = read_summary(&run).unwrap();
    assert_eq!(summary.status, Status::Interrupted);
    let stopped_at = summary.steps_done;
    assert!(stopped_at > 0 && stopped_at < 400, "stopped at {stopped_at}");
    assert_eq!(read_metrics(&run).unwrap().last().unwrap().step, stopped_at, "the stop step is logged");

    let resumed = fpt(&[&args[..], &["--resume"]].concat(), &[]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let straight = dir.join("straight");
    let out = fpt(&["train", "--device", "cpu", "--config", cfg.to_str().unwrap(), "--out", straight.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let evals = |d: &Path| -> Vec<(u64, Option<f64>, Option<f64>)> {
        read_metrics(d).unwrap().into_iter().filter(|l| l.eval_acc.is_some()).map(|l| (l.step, l.eval_loss, l.eval_acc)).collect()
    };
    assert_eq!(evals(&run), evals(&straight), "the resumed run's evaluations differ from an uninterrupted run's");
}

/// Errors name what is wrong: the --set value (not the file), the hook's value, sizes that
/// cannot be allocated; a write that fails mid-run marks the summary failed.
#[test]
fn bad_values_and_failed_writes_are_reported_where_they_are() {
    let dir = tmp("values");
    let cfg = config(&dir, RUN);
    let out = train(&cfg, &dir.join("a"), &["--set", "train.lr=\"fast\""], &[]);
    fails_with(&out, &["--set train.lr=\"fast\""]);
    let out = train(&cfg, &dir.join("b"), &["--set", "train.steps=10", "--set", "train.batch_size=0"], &[]);
    fails_with(&out, &["--set train.batch_size=0", "must be positive"]);
    // A broken file is blamed on the file.
    let broken = dir.join("broken.toml");
    std::fs::write(&broken, RUN.replace("steps = 40", "steps = -4")).unwrap();
    let out = train(&broken, &dir.join("c"), &["--set", "seed=1"], &[]);
    fails_with(&out, &["run config", "broken.toml"]);

    let out = train(&cfg, &dir.join("d"), &[], &[("FPT_STOP_AFTER_STEP", "ten")]);
    fails_with(&out, &["FPT_STOP_AFTER_STEP is \"ten\""]);

    // Sizes no machine can allocate: errors naming the tensor, not tch's unwrap panic.
    let out = train(&cfg, &dir.join("e"), &["--set", "model.shape.n_embd=1048576", "--set", "model.shape.n_head=1"], &[]);
    fails_with(&out, &["wte.weight", "available"]);
    let out = fpt(&["params", "--model", "gpt2", "--input-dim", "48", "--tokens", "64", "--classes", "100000000000"], &[]);
    fails_with(&out, &["output_layer.proj.weight", "available"]);
    // Running out of memory inside a computation (tch unwraps libtorch's error there): an error.
    let out = fpt(&["bench", "--tokens", "100000000", "--dim", "1", "--batch", "100000"], &[]);
    fails_with(&out, &["out of memory: you tried to allocate", "reduce the batch size"]);
    // Values that would train on NaN from step 1 are refused up front.
    let out = train(&cfg, &dir.join("f"), &["--set", "model.orth_gain=nan"], &[]);
    fails_with(&out, &["orth_gain is NaN"]);
    let out = train(&cfg, &dir.join("g"), &["--set", "train.lr=inf"], &[]);
    fails_with(&out, &["--set train.lr=inf", "positive finite"]);

    // A write that fails at the first checkpoint (a directory where the temp file goes, as a
    // full disk would refuse it): the run is marked failed with the error.
    let run = dir.join("full-disk");
    std::fs::create_dir_all(run.join("checkpoint.safetensors.tmp/x")).unwrap();
    let out = train(&cfg, &run, &[], &[]);
    fails_with(&out, &["checkpoint.safetensors.tmp"]);
    let summary = read_summary(&run).unwrap();
    assert_eq!(summary.status, Status::Failed);
    assert!(summary.error.unwrap_or_default().contains("checkpoint.safetensors.tmp"));
}

/// `fpt forward` refuses configs that would compute NaN and weights that are not finite.
#[test]
fn forward_refuses_invalid_configs_and_non_finite_weights() {
    let fixtures = common::make_gpt2_fixtures(&tmp("forward"), "hostile", &["small4x64"]);
    let case = fixtures.join("small4x64");
    let (model, inputs) = (case.join("model"), case.join("reference.safetensors"));
    let run = |m: &Path| {
        fpt(
            &[
                "forward",
                "--device",
                "cpu",
                "--model",
                m.to_str().unwrap(),
                "--inputs",
                inputs.to_str().unwrap(),
                "--out",
                case.join("out.safetensors").to_str().unwrap(),
            ],
            &[],
        )
    };
    assert!(run(&model).status.success());
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    for (field, value, needle) in [
        ("layer_norm_epsilon", serde_json::json!(-1.0), "layer_norm_epsilon is -1"),
        ("layer_norm_epsilon", serde_json::json!(0.0), "layer_norm_epsilon is 0"),
        ("initializer_range", serde_json::json!(-0.5), "initializer_range is -0.5"),
        ("n_positions", serde_json::json!(1_000_000_000_000i64), "wpe.weight: file has [64, 64], model expects [1000000000000, 64]"),
    ] {
        let bad = case.join(format!("bad-{field}"));
        copy_dir(&model, &bad);
        let mut c = config.clone();
        c[field] = value;
        std::fs::write(bad.join("config.json"), c.to_string()).unwrap();
        fails_with(&run(&bad), &[needle]);
    }
    // A NaN weight.
    let bad = case.join("bad-nan");
    copy_dir(&model, &bad);
    let mut tensors = tch::Tensor::read_safetensors(bad.join("model.safetensors")).unwrap();
    for (name, t) in tensors.iter_mut() {
        if name.ends_with("h.0.mlp.c_fc.weight") {
            let _ = t.get(0).get(0).fill_(f64::NAN);
        }
    }
    tch::Tensor::write_safetensors(&tensors, bad.join("model.safetensors")).unwrap();
    fails_with(&run(&bad), &["non-finite values", "h.0.mlp.c_fc.weight"]);
}
