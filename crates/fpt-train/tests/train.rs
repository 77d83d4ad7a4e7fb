//! `fpt train` end to end on tiny models: learning, run directories, exact resume after a
//! kill, seed repeatability, gradient accumulation, failure on a non-finite loss, TensorBoard
//! files read by TensorBoard itself, and backbones from a Hugging Face cache.

#[path = "../../fpt-model/tests/common/mod.rs"]
mod common;

use fpt_model::{FreezeSpec, Gpt2, Gpt2Config};
use fpt_train::trainer::{read_metrics, read_summary, MetricsLine, Status};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tch::{nn, Device, Tensor};

fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const XOR: &str = r#"
seed = 3
[task]
name = "bit-xor"
eval_examples = 200
[model]
backbone = "gpt2"
init = "random"
freeze = "full"
[model.shape]
n_layer = 2
n_embd = 64
n_head = 4
n_positions = 64
[train]
steps = 600
batch_size = 16
log_every = 10
eval_every = 100
checkpoint_every = 50
target_accuracy = 0.99
"#;

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn fpt(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fpt"));
    cmd.args(args).args(["--device", "cpu"]).env_remove("FPT_STOP_AFTER_STEP");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running fpt")
}

fn train(config: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args = vec!["train", "--config", config.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    fpt(&args, env)
}

fn ok(out: &Output) {
    assert!(out.status.success(), "fpt failed: {}\n{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
}

/// The metric values, without the timing fields that legitimately differ between runs.
fn values(lines: &[MetricsLine]) -> Vec<(u64, f64, f64, Option<f64>, Option<f64>)> {
    lines.iter().map(|l| (l.step, l.train_loss, l.train_acc, l.eval_loss, l.eval_acc)).collect()
}

#[test]
fn full_transformer_learns_bit_xor_and_the_run_directory_is_complete() {
    let dir = tmp("xor");
    let config = write_config(&dir, XOR);
    let out = dir.join("run");
    ok(&train(&config, &out, &[], &[]));
    let summary = read_summary(&out).unwrap();
    assert_eq!(summary.status, Status::Completed);
    assert_eq!(summary.steps_done, 600);
    assert_eq!(summary.final_eval_acc, Some(1.0), "bit XOR should be solved: {summary:?}");
    assert!(summary.steps_to_target.is_some_and(|s| s <= 600));
    for file in ["config.toml", "metrics.jsonl", "summary.json", "checkpoint.safetensors"] {
        assert!(out.join(file).is_file(), "missing {file}");
    }
    let lines = read_metrics(&out).unwrap();
    assert_eq!(lines.iter().map(|l| l.step).collect::<Vec<_>>(), (1..=60).map(|i| i * 10).collect::<Vec<_>>());
    assert_eq!(lines.iter().filter(|l| l.eval_acc.is_some()).count(), 6);
    // The resolved config reloads as the same run.
    let resolved = fpt_train::config::RunConfig::load(&out.join("config.toml"), &[]).unwrap();
    assert_eq!(resolved.seed, 3);

    // A second start in the same directory is refused; --resume of a completed run is a no-op.
    let again = train(&config, &out, &[], &[]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("completed run"));
    ok(&train(&config, &out, &["--resume"], &[]));
    assert_eq!(read_metrics(&out).unwrap(), lines, "a completed run is never redone");

    // TensorBoard's own reader sees the same curve.
    let events = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents"))
        .expect("an event file");
    let script = format!(
        "from tensorboard.backend.event_processing.event_accumulator import EventAccumulator as E\n\
         e = E({:?}); e.Reload()\n\
         print(' '.join(f'{{s.step}}:{{s.value:.6f}}' for s in e.Scalars('eval/accuracy')))",
        events.to_str().unwrap()
    );
    let py = Command::new(common::venv_python()).args(["-c", &script]).output().unwrap();
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    let expected: Vec<String> = lines.iter().filter_map(|l| l.eval_acc.map(|a| format!("{}:{:.6}", l.step, a as f32))).collect();
    assert_eq!(String::from_utf8_lossy(&py.stdout).trim(), expected.join(" "));
}

#[test]
fn resume_after_a_kill_continues_exactly_and_seeds_repeat() {
    // Frozen backbone with dropout on: resume must restore parameters, Adam state and the
    // random streams for the curve to continue identically.
    let text = XOR.replace("freeze = \"full\"", "freeze = \"paper\"").replace("steps = 600", "steps = 160");
    let dir = tmp("resume");
    let config = write_config(&dir, &text);
    let straight = dir.join("straight");
    ok(&train(&config, &straight, &[], &[]));
    let reference = read_metrics(&straight).unwrap();

    let again = dir.join("again");
    ok(&train(&config, &again, &[], &[]));
    assert_eq!(values(&read_metrics(&again).unwrap()), values(&reference), "same seed, same metrics");

    let killed = dir.join("killed");
    let out = train(&config, &killed, &[], &[("FPT_STOP_AFTER_STEP", "75")]);
    assert_eq!(out.status.code(), Some(fpt_train::trainer::STOPPED_EXIT_CODE));
    assert_eq!(read_metrics(&killed).unwrap().last().unwrap().step, 70, "logged past the step-50 checkpoint");
    assert_eq!(read_summary(&killed).unwrap().status, Status::Running);
    // A kill can land mid-write: a partial last line must not block the resume.
    let mut partial = std::fs::OpenOptions::new().append(true).open(killed.join("metrics.jsonl")).unwrap();
    std::io::Write::write_all(&mut partial, b"{\"step\":80,\"train_lo").unwrap();
    drop(partial);
    ok(&train(&config, &killed, &["--resume"], &[]));
    let resumed = read_metrics(&killed).unwrap();
    assert_eq!(values(&resumed), values(&reference), "resumed curve differs (gap, duplicate or drift)");
    assert_eq!(read_summary(&killed).unwrap().status, Status::Completed);

    let other_seed = dir.join("seed4");
    ok(&train(&config, &other_seed, &["--set", "seed=4"], &[]));
    assert_ne!(values(&read_metrics(&other_seed).unwrap()), values(&reference));
}

#[test]
fn micro_batches_accumulate_to_the_full_batch() {
    let text = XOR.replace("steps = 600", "steps = 5").replace("eval_every = 100", "eval_every = 5");
    let dir = tmp("micro");
    let config = write_config(&dir, &text);
    let (full, micro) = (dir.join("full"), dir.join("micro"));
    ok(&train(&config, &full, &["--set", "model.dropout=0.0"], &[]));
    ok(&train(&config, &micro, &["--set", "model.dropout=0.0", "--set", "train.micro_batch_size=4"], &[]));
    let (a, b) = (read_metrics(&full).unwrap(), read_metrics(&micro).unwrap());
    let (la, lb) = (a.last().unwrap().eval_loss.unwrap(), b.last().unwrap().eval_loss.unwrap());
    assert!((la - lb).abs() < 1e-4, "accumulated {lb} vs full batch {la}");
    let bad = train(&config, &dir.join("bad"), &["--set", "train.micro_batch_size=5"], &[]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("must divide"));
}

#[test]
fn a_non_finite_loss_fails_the_run_naming_the_step() {
    let dir = tmp("nan");
    let config = write_config(&dir, XOR);
    let out = dir.join("run");
    let res = train(&config, &out, &["--set", "train.lr=1e30", "--set", "train.grad_clip=1e30"], &[]);
    assert_eq!(res.status.code(), Some(1));
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("non-finite training loss at step"), "{err}");
    let summary = read_summary(&out).unwrap();
    assert_eq!(summary.status, Status::Failed);
    assert!(summary.error.unwrap().contains("non-finite"));
}

/// A Hugging Face cache laid out as Python fills it, made offline from a tiny checkpoint.
fn tiny_hub_cache(root: &Path, repo: &str) -> (PathBuf, Vec<(String, Tensor)>) {
    let mut cfg = Gpt2Config::custom(2, 32, 4);
    cfg.vocab_size = 50;
    cfg.n_positions = 32;
    let revision = "0123456789abcdef0123456789abcdef01234567";
    let repo_dir = root.join("hub").join(format!("models--{}", repo.replace('/', "--")));
    let snapshot = repo_dir.join("snapshots").join(revision);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), revision).unwrap();
    std::fs::write(snapshot.join("config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    tch::manual_seed(11);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Gpt2::new(&vs.root(), &cfg).unwrap();
    FreezeSpec::all().apply(&vs, &model).unwrap();
    let mut tensors: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(n, t)| (n, t + 0.5)).collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&tensors, snapshot.join("model.safetensors")).unwrap();
    (snapshot, tensors)
}

#[test]
fn backbones_resolve_through_the_hugging_face_cache() {
    let dir = tmp("hub");
    let hf_home = dir.join("hf");
    let (_, tensors) = tiny_hub_cache(&hf_home, "fpt-test/tiny-gpt2");
    let text = XOR
        .replace("backbone = \"gpt2\"", "backbone = \"fpt-test/tiny-gpt2\"")
        .replace("init = \"random\"", "init = \"pretrained\"")
        .replace("freeze = \"full\"", "freeze = \"paper\"")
        .replace("[model.shape]\nn_layer = 2\nn_embd = 64\nn_head = 4\nn_positions = 64\n", "")
        .replace("steps = 600", "steps = 2");
    let config = write_config(&dir, &text);
    let out = dir.join("run");
    let env = [("HF_HOME", hf_home.to_str().unwrap()), ("HF_ENDPOINT", "http://127.0.0.1:9")];
    ok(&train(&config, &out, &["--set", "train.lr=1e-7"], &env));
    // The trained position table started from the cached checkpoint's (lr 1e-7: barely moved).
    let saved = Tensor::read_safetensors(out.join("checkpoint.safetensors")).unwrap();
    let wpe = &saved.iter().find(|(n, _)| n == "param.wpe.weight").unwrap().1;
    let source = &tensors.iter().find(|(n, _)| n == "wpe.weight").unwrap().1;
    assert!(wpe.allclose(source, 1e-5, 1e-5, false), "wpe was not loaded from the cache");

    // The old id "gpt2" finds the canonical "openai-community/gpt2" as Python caches it now
    // (the hub redirects the old id, which hf-hub does not follow), and the old cache layout too.
    for cached_as in ["openai-community/gpt2", "gpt2"] {
        let home = dir.join(format!("hf-{}", cached_as.replace('/', "-")));
        let (snapshot, _) = tiny_hub_cache(&home, cached_as);
        let text = text.replace("fpt-test/tiny-gpt2", "gpt2");
        let config = write_config(&dir, &text);
        let out = dir.join(format!("run-{}", cached_as.replace('/', "-")));
        let env = [("HF_HOME", home.to_str().unwrap()), ("HF_ENDPOINT", "http://127.0.0.1:9")];
        // Downloads fail here (HF_ENDPOINT is a closed port): completing means the cache was used.
        ok(&train(&config, &out, &[], &env));
        assert_eq!(read_summary(&out).unwrap().status, Status::Completed, "{cached_as}");
        assert!(snapshot.join("config.json").is_file());
    }

    // Absent from the cache and no way to download: one line saying what to fetch and where.
    let missing = write_config(&dir, &text.replace("fpt-test/tiny-gpt2", "fpt-test/absent"));
    let res = train(&missing, &dir.join("absent"), &[], &env);
    assert_eq!(res.status.code(), Some(1));
    let err = String::from_utf8_lossy(&res.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("huggingface-cli download fpt-test/absent") && err.contains(hf_home.join("hub").to_str().unwrap()), "{err}");
}

#[test]
fn bit_memory_pretraining_round_trips_through_transformers() {
    let dir = tmp("pretrain");
    let out = dir.join("bitmem-gpt2");
    let res = fpt(
        &[
            "pretrain",
            "--task",
            "bit-memory",
            "--model",
            "gpt2",
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "30",
            "--set",
            "task={name=\"bit-memory\",n=20,patterns=3,patch=5,eval_examples=50}",
            "--set",
            "model.shape={n_layer=2,n_embd=32,n_head=4,n_positions=32}",
            "--set",
            "train.eval_every=30",
            "--set",
            "train.log_every=10",
        ],
        &[],
    );
    ok(&res);
    assert!(out.join("config.json").is_file() && out.join("model.safetensors").is_file());

    // transformers loads it with no missing or unexpected tensor and computes what we compute.
    let inputs = dir.join("inputs.safetensors");
    Tensor::write_safetensors(&[("inputs_embeds", Tensor::randn([2, 7, 32], (tch::Kind::Float, Device::Cpu)))], &inputs).unwrap();
    let ours = dir.join("ours.safetensors");
    ok(&fpt(&["forward", "--model", out.to_str().unwrap(), "--inputs", inputs.to_str().unwrap(), "--out", ours.to_str().unwrap()], &[]));
    // transformers' fp32 and fp64 results and fp32 noise on the same inputs (the fixture
    // script's helper), and the parity rule of fpt_model::tolerance.
    let script = format!(
        "import sys, torch\nsys.path.insert(0, {refdir:?})\nfrom float64_reference import float64_outputs\n\
         from safetensors.torch import load_file, save_file\nfrom transformers import GPT2Model\n\
         m, info = GPT2Model.from_pretrained({out:?}, output_loading_info=True, attn_implementation='eager')\n\
         assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys'], info\n\
         m.eval()\nx = load_file({inp:?})['inputs_embeds']\n\
         save_file(float64_outputs(m, x, torch.randn(x.shape[0], x.shape[1], m.config.n_embd), attentions=False), {refs:?})",
        refdir = common::workspace_root().join("crates/fpt-model/tests/reference").to_str().unwrap(),
        out = out.to_str().unwrap(),
        inp = inputs.to_str().unwrap(),
        refs = dir.join("reference.safetensors").to_str().unwrap(),
    );
    let py = Command::new(common::venv_python()).args(["-c", &script]).output().unwrap();
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    common::assert_parity(
        "pretrained export",
        &common::read_tensor(&ours, "last_hidden_state"),
        &dir.join("reference.safetensors"),
        "last_hidden_state",
    );

    // And a run can start from it.
    let text = XOR
        .replace("init = \"random\"", &format!("init = \"checkpoint:{}\"", out.display()))
        .replace("freeze = \"full\"", "freeze = \"paper\"")
        .replace("[model.shape]\nn_layer = 2\nn_embd = 64\nn_head = 4\nn_positions = 64\n", "")
        .replace("steps = 600", "steps = 20");
    let config = write_config(&dir, &text);
    ok(&train(&config, &dir.join("from-checkpoint"), &[], &[]));
}

#[test]
fn statistics_init_and_the_lstm_baseline_train() {
    let dir = tmp("inits");
    // Statistics-only init from a cached checkpoint: every backbone tensor is redrawn.
    let hf_home = dir.join("hf");
    let (_, tensors) = tiny_hub_cache(&hf_home, "fpt-test/tiny-gpt2");
    let text = XOR
        .replace("backbone = \"gpt2\"", "backbone = \"fpt-test/tiny-gpt2\"")
        .replace("init = \"random\"", "init = \"statistics\"")
        .replace("freeze = \"full\"", "freeze = \"paper\"")
        .replace("[model.shape]\nn_layer = 2\nn_embd = 64\nn_head = 4\nn_positions = 64\n", "")
        .replace("steps = 600", "steps = 2");
    let config = write_config(&dir, &text);
    let out = dir.join("stats");
    let env = [("HF_HOME", hf_home.to_str().unwrap()), ("HF_ENDPOINT", "http://127.0.0.1:9")];
    ok(&train(&config, &out, &["--set", "train.lr=1e-9"], &env));
    let saved = Tensor::read_safetensors(out.join("checkpoint.safetensors")).unwrap();
    let wpe = &saved.iter().find(|(n, _)| n == "param.wpe.weight").unwrap().1;
    let source = &tensors.iter().find(|(n, _)| n == "wpe.weight").unwrap().1;
    assert!(!wpe.allclose(source, 1e-3, 1e-3, false), "statistics init kept the pretrained values");
    let (m, s) = (wpe.mean(tch::Kind::Float).double_value(&[]), wpe.std(true).double_value(&[]));
    let (sm, ss) = (source.mean(tch::Kind::Float).double_value(&[]), source.std(true).double_value(&[]));
    assert!((m - sm).abs() < 0.05 && (s / ss - 1.0).abs() < 0.1, "mean/std {m}/{s} vs {sm}/{ss}");

    // The LSTM baseline, frozen like FPT (input, output and layer norms trained).
    let lstm = XOR
        .replace("backbone = \"gpt2\"", "backbone = \"lstm\"")
        .replace("freeze = \"full\"", "freeze = \"paper\"")
        .replace("n_head = 4\nn_positions = 64\n", "")
        .replace("n_embd = 64", "n_embd = 16")
        .replace("steps = 600", "steps = 20");
    let config = write_config(&dir, &lstm);
    ok(&train(&config, &dir.join("lstm"), &[], &[]));
    let summary = read_summary(&dir.join("lstm")).unwrap();
    assert_eq!(summary.status, Status::Completed);
    let bad = write_config(
        &dir,
        &lstm.replace("init = \"random\"", "init = \"pretrained\"").replace("[model.shape]\nn_layer = 2\nn_embd = 16\n", ""),
    );
    let res = train(&bad, &dir.join("lstm-bad"), &[], &[]);
    assert!(String::from_utf8_lossy(&res.stderr).contains("no pretrained weights"), "{}", String::from_utf8_lossy(&res.stderr));
}

#[test]
fn attention_maps_render_for_a_trained_run() {
    let dir = tmp("attention");
    let config = write_config(&dir, &XOR.replace("steps = 600", "steps = 20"));
    let run = dir.join("run");
    ok(&train(&config, &run, &[], &[]));
    let png = dir.join("maps.png");
    ok(&fpt(&["attention", "--run", run.to_str().unwrap(), "--example", "7", "--out", png.to_str().unwrap()], &[]));
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 1000);
    let res = fpt(&["attention", "--run", run.to_str().unwrap(), "--example", "5000", "--out", png.to_str().unwrap()], &[]);
    assert_eq!(res.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&res.stderr).contains("outside the test split"));
}

const TINY_TOKENS: &str = r#"
[model]
backbone = "gpt2"
init = "random"
freeze = "paper"
[model.shape]
n_layer = 1
n_embd = 16
n_head = 2
n_positions = 64
[train]
steps = 4
batch_size = 2
log_every = 2
eval_every = 2
eval_batch_size = 2
checkpoint_every = 4
"#;

/// ListOps files whose every split holds "[SM 1 … ]" expressions of `lengths` tokens.
fn write_listops(dir: &Path, lengths: &[usize]) {
    let line = |n: usize| format!("( [SM {} ] )\t{}\n", vec!["1"; n - 2].join(" "), (n - 2) % 10);
    let body: String = lengths.iter().map(|&n| line(n)).collect();
    for name in ["basic_train.tsv", "basic_val.tsv", "basic_test.tsv"] {
        std::fs::write(dir.join(name), format!("Source\tTarget\n{body}")).unwrap();
    }
}

/// No run drops evaluation examples silently: what loading dropped or truncated per split,
/// the padding, the evaluation split and its size reach summary.json, for the project's ListOps
/// settings and the reference's (paper.toml's).
#[test]
fn listops_counts_reach_the_summary_in_both_modes() {
    let dir = tmp("listops-counts");
    let data = dir.join("listops");
    std::fs::create_dir_all(&data).unwrap();
    write_listops(&data, &[5, 12, 30, 8, 6]);
    let task = format!("seed = 1\n[task]\nname = \"listops\"\npath = \"{}\"\nmax_len = 12\n", data.display());
    let config = write_config(&dir, &format!("{task}{TINY_TOKENS}"));
    ok(&train(&config, &dir.join("project"), &[], &[]));
    let summary = read_summary(&dir.join("project")).unwrap();
    let report = summary.data.expect("summary.json reports the data");
    assert_eq!(report.padding, fpt_tasks::Padding::Masked);
    assert_eq!((report.eval_split, report.eval_examples), (fpt_tasks::Split::Test, 4));
    assert_eq!(report.splits.len(), 3);
    for c in &report.splits {
        assert_eq!((c.source, c.kept, c.dropped, c.truncated), (5, 4, 1, 0), "{c:?}");
        assert_eq!(c.rule, "longer than 12 tokens dropped");
    }
    let text = std::fs::read_to_string(dir.join("project/summary.json")).unwrap();
    assert!(text.contains("\"dropped\": 1") && text.contains("\"eval_examples\": 4"), "{text}");

    // The reference's preprocessing, evaluated on val as the reference does.
    let reference =
        format!("{task}overflow = \"truncate\"\ntokenizer = \"alphanumeric\"\npadding = \"fixed\"\n{TINY_TOKENS}eval_split = \"val\"\n");
    let config = write_config(&dir, &reference.replace("max_len = 12", "max_len = 10"));
    ok(&train(&config, &dir.join("reference"), &[], &[]));
    let report = read_summary(&dir.join("reference")).unwrap().data.unwrap();
    assert_eq!((report.padding, report.eval_split, report.eval_examples), (fpt_tasks::Padding::Fixed, fpt_tasks::Split::Val, 5));
    for c in &report.splits {
        assert_eq!((c.source, c.kept, c.dropped, c.truncated), (5, 5, 0, 2), "{c:?}");
        // 11 and 29 tokens without `]`
    }
}

/// The reference's remote homology: evaluated on valid, batches holding a sequence over
/// max_len skipped and counted, reported accuracy = accuracy on the rest × 0.9739.
#[test]
fn homology_reference_mode_skips_counts_and_scales() {
    let dir = tmp("homology-reference");
    let data = dir.join("homology");
    std::fs::create_dir_all(&data).unwrap();
    let record = |n: usize, fold: usize| format!("{{\"primary\": \"{}\", \"fold_label\": {fold}}}", "MK".repeat(n));
    for (f, n) in [("train", 7), ("valid", 5), ("test_fold_holdout", 3)] {
        // One sequence of 42 tokens (over max_len 20), the rest short.
        let mut body: Vec<String> = (0..n).map(|i| record(2 + i % 4, i % 3)).collect();
        body.push(record(20, 1));
        std::fs::write(data.join(format!("remote_homology_{f}.json")), format!("[{}]", body.join(","))).unwrap();
    }
    let task = format!(
        "seed = 1\n[task]\nname = \"remote-homology\"\npath = \"{}\"\nmax_len = 20\nlong = \"skip_batch\"\npadding = \"batch\"\n",
        data.display()
    );
    let config = write_config(&dir, &format!("{task}{TINY_TOKENS}eval_split = \"val\"\n"));
    let run = dir.join("run");
    ok(&train(&config, &run, &[], &[]));
    let summary = read_summary(&run).unwrap();
    let report = summary.data.clone().unwrap();
    assert_eq!(report.accuracy_scale, 0.9739);
    assert_eq!(report.eval_split, fpt_tasks::Split::Val);
    // valid: 6 sequences sorted by length in batches of 2; the last holds the long one.
    assert_eq!((report.eval_examples, report.eval_skipped), (4, fpt_tasks::Skipped { batches: 1, examples: 2 }));
    assert!(report.splits.iter().all(|c| c.over_limit == 1 && c.dropped == 0), "{:?}", report.splits);
    // train: 8 sequences, 4 batches an epoch (the long one sorts into the last), one skipped
    // each epoch: 4 steps walk into the second epoch.
    assert_eq!(report.train_skipped, fpt_tasks::Skipped { batches: 2, examples: 4 }, "{report:?}");
    let lines = read_metrics(&run).unwrap();
    let last = lines.iter().rev().find(|l| l.eval_acc.is_some()).unwrap();
    let unscaled = last.eval_acc_unscaled.expect("the unscaled accuracy is kept");
    assert!((last.eval_acc.unwrap() - unscaled * 0.9739).abs() < 1e-12);
    assert_eq!(summary.final_eval_acc, last.eval_acc);
}
