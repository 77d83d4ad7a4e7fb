//! `fpt data check` and `fpt data generate-listops` end to end: real MNIST and Fashion-MNIST, generated
//! ListOps, and corrupt inputs (exit 1, one line naming the file).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("data-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fpt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fpt")).args(args).env_clear().output().expect("running fpt")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn assert_one_line_error(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "expected one line: {err}");
    for n in needles {
        assert!(err.contains(n), "error lacks {n:?}: {err}");
    }
}

#[test]
fn checks_real_fashion_mnist() {
    let out = fpt(&["data", "check", "--task", "fashion-mnist", "--path", "/usr/share/datasets/fashion-mnist"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("train: 60000 examples"), "{text}");
    assert!(text.contains("test: 10000 examples"), "{text}");
    assert!(text.contains("per class: 0:1000 1:1000 2:1000"), "{text}");
    assert!(text.trim_end().ends_with("ok"));
}

/// Real MNIST as `cargo xtask setup` places it (datasets/mnist, or $FPT_DATA_DIR/mnist): MNIST's
/// split sizes and per-class counts, read through the default data path from the workspace.
#[test]
fn checks_real_mnist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let data = std::env::var_os("FPT_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("datasets"));
    assert!(
        data.join("mnist/t10k-labels-idx1-ubyte").is_file(),
        "{} has no MNIST: run `cargo xtask setup` (or `cargo xtask data fetch mnist`)",
        data.join("mnist").display()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_fpt"))
        .args(["data", "check", "--task", "mnist"])
        .current_dir(&root)
        .env_clear()
        .envs(std::env::var_os("FPT_DATA_DIR").map(|d| ("FPT_DATA_DIR", d)))
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("train: 60000 examples") && text.contains("test: 10000 examples"), "{text}");
    assert!(text.contains("per class: 0:5923 1:6742 2:5958 3:6131 4:5842 5:5421 6:5918 7:6265 8:5851 9:5949"), "{text}");
    assert!(text.contains("per class: 0:980 1:1135 2:1032 3:1010 4:982 5:892 6:958 7:1028 8:974 9:1009"), "{text}");
    assert!(text.trim_end().ends_with("ok"));
}

#[test]
fn generates_and_checks_listops_and_rejects_corruption() {
    let dir = tmp("listops");
    let out = fpt(&[
        "data",
        "generate-listops",
        "--out",
        dir.to_str().unwrap(),
        "--seed",
        "3",
        "--train",
        "300",
        "--val",
        "20",
        "--test",
        "20",
        "--min-len",
        "30",
        "--max-len",
        "300",
    ]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("wrote 300 / 20 / 20 examples") && text.contains("histogram") && text.contains("labels: 0:"), "{text}");
    let first = std::fs::read(dir.join("basic_train.tsv")).unwrap();
    // Same seed, same files.
    let again = tmp("listops-again");
    fpt(&[
        "data",
        "generate-listops",
        "--out",
        again.to_str().unwrap(),
        "--seed",
        "3",
        "--train",
        "300",
        "--val",
        "20",
        "--test",
        "20",
        "--min-len",
        "30",
        "--max-len",
        "300",
    ]);
    assert_eq!(std::fs::read(again.join("basic_train.tsv")).unwrap(), first);

    let out = fpt(&["data", "check", "--task", "listops", "--path", dir.to_str().unwrap(), "--max-len", "200"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("train: 300 examples in") && text.contains("longer than 200 tokens dropped"), "{text}");

    // Corrupt copies: each is one line naming the file.
    let cases: [(&str, &[u8], &[&str]); 3] = [
        ("basic_test.tsv", b"Source\tTarget\n[SM 1 2 ]\t3\n[SM \xff ]\t1\n", &["basic_test.tsv", "not UTF-8"]),
        ("basic_val.tsv", b"", &["basic_val.tsv", "empty file"]),
        ("basic_train.tsv", b"Source\tTarget\n[SM 1 2 ]\t3\t4\n", &["basic_train.tsv", "line 2 has 3 tab-separated fields"]),
    ];
    for (file, bytes, needles) in cases {
        let bad = tmp(&format!("listops-bad-{file}"));
        for f in ["basic_train.tsv", "basic_val.tsv", "basic_test.tsv"] {
            std::fs::copy(dir.join(f), bad.join(f)).unwrap();
        }
        std::fs::write(bad.join(file), bytes).unwrap();
        assert_one_line_error(&fpt(&["data", "check", "--task", "listops", "--path", bad.to_str().unwrap()]), needles);
    }
    let empty = tmp("nothing");
    assert_one_line_error(
        &fpt(&["data", "check", "--task", "listops", "--path", empty.to_str().unwrap()]),
        &["basic_train.tsv", "missing"],
    );
    assert_one_line_error(
        &fpt(&["data", "check", "--task", "mnist", "--path", empty.to_str().unwrap()]),
        &["train-images-idx3-ubyte", "missing"],
    );
    assert_one_line_error(&fpt(&["data", "check", "--task", "cifar10", "--path", empty.to_str().unwrap()]), &["no CIFAR-10 binary files"]);
    assert_one_line_error(
        &fpt(&["data", "check", "--task", "remote-homology", "--path", empty.to_str().unwrap()]),
        &["remote_homology_train.json", "missing"],
    );
    assert_one_line_error(&fpt(&["data", "check", "--task", "imagenet"]), &["unknown task"]);
}

#[test]
fn checks_generated_bit_tasks() {
    let out = fpt(&["data", "check", "--task", "bit-xor"]);
    let text = stdout(&out);
    assert!(out.status.success());
    assert!(text.contains("train: generated from the seed") && text.contains("val: 1000 examples"), "{text}");
}
