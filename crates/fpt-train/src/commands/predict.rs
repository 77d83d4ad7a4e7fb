//! `fpt predict --run DIR --inputs FILE|FOLDER --out FILE`: a trained run's predictions for
//! unlabelled inputs — per example the predicted class, its name where the run knows class
//! names, and every class's probability.
//!
//! Inputs: for an `image-folder` run, an image or a folder of images (recursively, in sorted
//! order), prepared as the run's images were; for any run, the `inputs` (and `lengths`) of a
//! `.npy`, `.npz` or `.safetensors` file, or of a folder holding `inputs.npy`, shaped as the
//! run's tokens (`[N, T, D]` floats or `[N, T]` ids). Output by extension: `.csv` (a row per
//! example; with several read-out tokens, a row per example and token), `.npy` (the
//! probabilities, float32 `[N, classes]` or `[N, K, classes]`) or `.npz` (`probabilities` and
//! `predicted`).

use crate::commands::eval::csv_field;
use crate::device::parse_device;
use crate::inference::{logits, TrainedRun};
use anyhow::{bail, Context, Result};
use fpt_tasks::arrays::ArraysTask;
use fpt_tasks::image_folder::ImageFolder;
use fpt_tasks::{EvalBatches, Split, Task};
use npyz::WriterBuilder;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Kind};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run directory written by `fpt train`.
    #[arg(long)]
    pub run: PathBuf,
    /// An image or a folder of images (image-folder runs), or a .npy/.npz/.safetensors file (or a
    /// folder with inputs.npy) of inputs shaped as the run's tokens.
    #[arg(long)]
    pub inputs: PathBuf,
    /// Output file: .csv, .npy (probabilities) or .npz (probabilities and predicted).
    #[arg(long)]
    pub out: PathBuf,
    /// Examples per forward pass (default: the run's train.eval_batch_size).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Csv,
    Npy,
    Npz,
}

fn is_array_file(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    matches!(ext.as_deref(), Some("npy" | "npz" | "safetensors")) || path.join("inputs.npy").is_file()
}

pub fn run_cli(args: &Args) -> Result<()> {
    let format = match args.out.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("csv") => Format::Csv,
        Some("npy") => Format::Npy,
        Some("npz") => Format::Npz,
        _ => bail!("--out {}: expected a .csv, .npy or .npz file name", args.out.display()),
    };
    let device = parse_device(&args.device)?;
    let run = TrainedRun::open(&args.run)?;
    let (spec, facts) = run.spec()?;
    let class_names = facts.class_names.clone();
    let task_cfg = run.task_config(None)?;
    // Image inputs keep their file names for the output; array inputs are numbered.
    let (task, images): (Arc<dyn Task>, Option<Arc<ImageFolder>>) = match task_cfg.image_settings() {
        Some(settings) if !is_array_file(&args.inputs) => {
            let images = Arc::new(ImageFolder::unlabelled(&args.inputs, &settings, &spec, class_names.clone().unwrap_or_default())?);
            (images.clone(), Some(images))
        }
        _ => (Arc::new(ArraysTask::unlabelled(&args.inputs, &spec)?), None),
    };
    let n = task.len(Split::Test).unwrap_or(0);
    let loaded = run.load_model(&task, device)?;
    let batch_size = args.batch_size.unwrap_or(run.cfg.train.eval_batch_size);
    let (k, classes) = (spec.predictions, spec.classes);
    let mut probabilities: Vec<f32> = Vec::with_capacity(n * k * classes);
    for batch in EvalBatches::new(task.clone(), Split::Test, batch_size, device)? {
        let p = logits(&loaded.model, &batch, &spec)?.softmax(-1, Kind::Float);
        let p: Vec<f32> = Vec::try_from(p.reshape([-1]).to_device(Device::Cpu))?;
        probabilities.extend(p);
    }
    if probabilities.len() != n * k * classes {
        bail!("internal: {} probabilities for {n} examples × {k} × {classes}", probabilities.len());
    }
    let predicted: Vec<i64> = probabilities
        .chunks_exact(classes)
        .map(|p| p.iter().enumerate().fold((0usize, f32::NEG_INFINITY), |best, (c, &v)| if v > best.1 { (c, v) } else { best }).0 as i64)
        .collect();
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let shape: Vec<u64> = if k == 1 { vec![n as u64, classes as u64] } else { vec![n as u64, k as u64, classes as u64] };
    match format {
        Format::Csv => {
            let source = |i: usize| images.as_ref().and_then(|im| im.source(Split::Test, i)).unwrap_or_else(|| i.to_string());
            write_csv(&args.out, &probabilities, &predicted, k, classes, class_names.as_deref(), source)?
        }
        Format::Npy => {
            let file = std::fs::File::create(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
            let mut w = npyz::WriteOptions::<f32>::new()
                .default_dtype()
                .shape(&shape)
                .writer(std::io::BufWriter::new(file))
                .begin_nd()
                .with_context(|| format!("writing {}", args.out.display()))?;
            w.extend(probabilities.iter().copied()).and_then(|_| w.finish()).with_context(|| format!("writing {}", args.out.display()))?;
        }
        Format::Npz => {
            let write = || -> std::io::Result<()> {
                let mut npz = npyz::npz::NpzWriter::create(&args.out)?;
                let mut w = npz.array::<f32>("probabilities", Default::default())?.default_dtype().shape(&shape).begin_nd()?;
                w.extend(probabilities.iter().copied())?;
                w.finish()?;
                let pred_shape: Vec<u64> = shape[..shape.len() - 1].to_vec();
                let mut w = npz.array::<i64>("predicted", Default::default())?.default_dtype().shape(&pred_shape).begin_nd()?;
                w.extend(predicted.iter().copied())?;
                w.finish()?;
                npz.zip_writer().finish()?;
                Ok(())
            };
            write().with_context(|| format!("writing {}", args.out.display()))?;
        }
    }
    let mut counts = vec![0usize; classes];
    for &p in &predicted {
        counts[p as usize] += 1;
    }
    let name = |c: usize| class_names.as_ref().and_then(|n| n.get(c)).map(|n| format!("{c} {n}")).unwrap_or_else(|| c.to_string());
    let summary: Vec<String> = counts.iter().enumerate().filter(|(_, &n)| n > 0).map(|(c, n)| format!("{}: {n}", name(c))).collect();
    println!("{n} examples from {} (checkpoint at step {}) → {}", args.inputs.display(), loaded.step, args.out.display());
    if summary.len() <= 20 {
        println!("predicted: {}", summary.join(", "));
    }
    Ok(())
}

fn write_csv(
    path: &Path,
    probabilities: &[f32],
    predicted: &[i64],
    k: usize,
    classes: usize,
    class_names: Option<&[String]>,
    source: impl Fn(usize) -> String,
) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let mut header = String::from("index,source");
    if k > 1 {
        header.push_str(",readout");
    }
    header.push_str(",predicted,class_name");
    for c in 0..classes {
        header.push_str(&format!(",p{c}"));
    }
    let mut text = header;
    text.push('\n');
    w.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    for (row, (p, &pred)) in probabilities.chunks_exact(classes).zip(predicted).enumerate() {
        let (example, token) = (row / k, row % k);
        let mut line = format!("{example},{}", csv_field(&source(example)));
        if k > 1 {
            line.push_str(&format!(",{token}"));
        }
        let class_name = class_names.and_then(|n| n.get(pred as usize)).map(|n| csv_field(n)).unwrap_or_default();
        line.push_str(&format!(",{pred},{class_name}"));
        for v in p {
            line.push_str(&format!(",{v:.6}"));
        }
        line.push('\n');
        w.write_all(line.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    }
    w.flush().with_context(|| format!("writing {}", path.display()))
}
