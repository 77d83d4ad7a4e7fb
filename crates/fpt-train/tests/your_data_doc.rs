//! docs/your-data.md, run: every fenced block of the page in order, in a scratch folder holding
//! a small generated folder of images (the page's `my-images`). ```` ```sh ```` blocks run in bash
//! with this build's `fpt` first on PATH, ```` ```python ```` blocks with the project's venv
//! Python (NumPy), and ```` ```toml NAME ```` blocks are written to NAME. Blocks marked `no-run`
//! (the real Fashion-MNIST run, which takes minutes) and ```` ```text ```` blocks are shown only.
//! The one change: each `fpt train` gets `--set` values that make the model a 2-layer random
//! GPT-2 and the run 20 steps, so the whole page runs in seconds.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

/// The venv's Python (`cargo xtask setup` makes it; NumPy comes with it), or `FPT_TEST_PYTHON`.
fn venv_python() -> PathBuf {
    let python = std::env::var_os("FPT_TEST_PYTHON").map(PathBuf::from).unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    assert!(python.is_file(), "{} not found: run `cargo xtask setup`", python.display());
    python
}

/// Fenced blocks of a Markdown page: (info string, body).
fn fenced_blocks(page: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in page.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) => current = Some((info.trim().to_string(), String::new())),
            (Some(_), Some(rest)) if rest.trim().is_empty() => blocks.push(current.take().expect("inside a block")),
            (Some((_, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(current.is_none(), "an unclosed code block in the page");
    blocks
}

/// The page's `my-images`: RGB PNGs of a disc, a square or a triangle, of several sizes (so
/// that `size` matters), 12 per class for training and 6 for testing.
fn write_images(root: &Path) {
    for (split, n) in [("train", 12u32), ("test", 6)] {
        for class in ["circle", "square", "triangle"] {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let (w, h) = [(24, 24), (40, 32), (30, 36)][(i % 3) as usize];
                let img = image::RgbImage::from_fn(w, h, |x, y| {
                    let (u, v) = (x as f64 / w as f64 - 0.5, y as f64 / h as f64 - 0.5);
                    let inside = match class {
                        "circle" => u * u + v * v < 0.1,
                        "square" => u.abs() < 0.3 && v.abs() < 0.3,
                        _ => v > -0.3 && v < 0.3 && u.abs() < (v + 0.3) / 1.2,
                    };
                    let shade = (i * 9 % 60) as u8;
                    if inside {
                        image::Rgb([220 - shade, 180, 40 + shade])
                    } else {
                        image::Rgb([20 + shade, 30, 60])
                    }
                });
                img.save(dir.join(format!("{i:04}.png"))).unwrap();
            }
        }
    }
}

/// Every `fpt train` on the page, shortened.
const SHORT_TRAINING: &str = r#"fpt() {
  if [ "$1" = train ]; then
    command fpt "$@" --set 'model.backbone="gpt2"' --set 'model.init="random"' \
      --set 'model.shape={n_layer=2, n_embd=32, n_head=2, n_positions=128}' \
      --set train.steps=20 --set train.batch_size=8 --set train.eval_every=10
  else
    command fpt "$@"
  fi
}
"#;

#[test]
fn the_your_data_page_runs() {
    let root = workspace_root();
    let page = std::fs::read_to_string(root.join("docs/your-data.md")).unwrap();
    let work: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("your-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    write_images(&work.join("my-images"));
    let bin = Path::new(env!("CARGO_BIN_EXE_fpt")).parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());

    let mut commands = Vec::new();
    let mut files = Vec::new();
    for (info, body) in fenced_blocks(&page) {
        let words: Vec<&str> = info.split_whitespace().collect();
        if words.contains(&"no-run") {
            continue;
        }
        let output = match words.first().copied() {
            Some("toml") => {
                let name = words.get(1).unwrap_or_else(|| panic!("a toml block without a file name:\n{body}"));
                std::fs::write(work.join(name), &body).unwrap();
                files.push(name.to_string());
                continue;
            }
            Some("python") => Command::new(venv_python()).args(["-c", &body]).current_dir(&work).output().unwrap(),
            Some("sh") => {
                commands.extend(
                    body.lines().filter(|l| l.starts_with("fpt ")).map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" ")),
                );
                Command::new("bash")
                    .args(["-euo", "pipefail", "-c", &format!("{SHORT_TRAINING}{body}")])
                    .current_dir(&work)
                    .env("PATH", &path)
                    .env_remove("FPT_STOP_AFTER_STEP")
                    .output()
                    .unwrap()
            }
            _ => continue,
        };
        let (out, err) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        println!("```{info}\n{body}```\n{out}{err}");
        assert!(output.status.success(), "this block of docs/your-data.md failed:\n```{info}\n{body}```\nstdout:\n{out}\nstderr:\n{err}");
    }

    // The page still walks the whole way, for images and for arrays.
    for c in ["fpt data", "fpt params", "fpt train", "fpt eval", "fpt predict"] {
        assert!(commands.iter().any(|x| x == c), "the page no longer runs `{c}`: {commands:?}");
    }
    assert_eq!(files, vec!["images.toml", "arrays.toml"]);
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(work.join("runs/images/eval-test/eval.json")).unwrap()).unwrap();
    let summary = fpt_train::trainer::read_summary(&work.join("runs/images")).unwrap();
    assert_eq!(eval["accuracy"].as_f64(), summary.final_eval_acc);
    assert_eq!(eval["class_names"], serde_json::json!(["circle", "square", "triangle"]));
    let predictions = std::fs::read_to_string(work.join("predictions.csv")).unwrap();
    assert_eq!(predictions.lines().count(), 1 + 18);
    assert!(predictions.starts_with("index,source,predicted,class_name,p0,p1,p2\n0,circle/0000.png,"), "{predictions}");
    let npy = npyz::NpyFile::new(std::fs::File::open(work.join("test-probabilities.npy")).unwrap()).unwrap();
    assert_eq!(npy.shape(), &[600, 3]);
}
