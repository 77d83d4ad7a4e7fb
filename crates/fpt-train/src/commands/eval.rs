//! `fpt eval --run DIR [--split test] [--task-path PATH] [--out DIR]`: a trained run's
//! parameters on the frozen backbone it was trained with (checked by identity), evaluated on a
//! split of its task or of another data set of the same shape. Prints accuracy, loss and the
//! confusion matrix, and writes them (`eval.json`, `confusion.csv`, and `confusion.png` for up to
//! 50 classes) to `--out` (default `<run>/eval-<split>`, or `<run>/eval-<data folder>-<split>`).

use crate::device::parse_device;
use crate::inference::{logits, TrainedRun};
use anyhow::{bail, Context, Result};
use fpt_tasks::{load_task, loss_and_correct, EvalBatches, Split};
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run directory written by `fpt train`.
    #[arg(long)]
    pub run: PathBuf,
    #[arg(long, default_value = "test", value_parser = ["train", "val", "test"])]
    pub split: String,
    /// Another data folder for the run's task (same shape: features, classes), e.g. a new test set.
    #[arg(long)]
    pub task_path: Option<PathBuf>,
    /// Where the results go (default <run>/eval-<split>, or <run>/eval-<data folder>-<split>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Examples per forward pass (default: the run's train.eval_batch_size).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// `eval.json`.
#[derive(Serialize, Debug)]
pub struct EvalReport {
    pub run: String,
    pub checkpoint_step: u64,
    pub backbone: String,
    pub task: String,
    pub data: Option<String>,
    pub split: Split,
    pub examples: usize,
    /// Predictions scored (examples × predictions per example).
    pub predictions: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub loss: f64,
    pub class_names: Option<Vec<String>>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
    /// Per true class: the fraction of its predictions that were right (`None`: class absent).
    pub per_class_accuracy: Vec<Option<f64>>,
    /// The run's own final evaluation, when this one is on the same data and split.
    pub run_final_eval_acc: Option<f64>,
}

pub fn parse_split(text: &str) -> Result<Split> {
    Ok(match text {
        "train" => Split::Train,
        "val" => Split::Val,
        "test" => Split::Test,
        other => bail!("split {other:?}: expected train, val or test"),
    })
}

fn data_path(cfg: &fpt_tasks::TaskConfig) -> Option<PathBuf> {
    serde_json::to_value(cfg).ok()?.get("path")?.as_str().map(PathBuf::from)
}

pub fn run_cli(args: &Args) -> Result<()> {
    let device = parse_device(&args.device)?;
    let split = parse_split(&args.split)?;
    let run = TrainedRun::open(&args.run)?;
    let task_cfg = run.task_config(args.task_path.as_deref())?;
    let task = load_task(&task_cfg, run.cfg.seed)?;
    let what = match &args.task_path {
        Some(p) => format!("the data in {}", p.display()),
        None => format!("task {}", task.spec().name),
    };
    run.check_shape(task.as_ref(), &what)?;
    let n = match task.len(split) {
        Some(0) => bail!("{what} has no {split} split (pass --split, or --task-path to a folder holding one)"),
        Some(n) => n,
        None => bail!("the {split} split of task {} is generated without end; it cannot be evaluated whole", task.spec().name),
    };
    let loaded = run.load_model(&task, device)?;
    let spec = task.spec().clone();
    let batch_size = args.batch_size.unwrap_or(run.cfg.train.eval_batch_size);
    let classes = spec.classes;
    let mut confusion = vec![vec![0u64; classes]; classes];
    let (mut loss_sum, mut examples, mut correct) = (0f64, 0usize, 0usize);
    let batches = EvalBatches::new(task.clone(), split, batch_size, device)?;
    let skipped = batches.skipped();
    for batch in batches {
        let out = logits(&loaded.model, &batch, &spec)?;
        let (loss, c) = loss_and_correct(&spec, &out, &batch.y)?;
        loss_sum += loss.double_value(&[]) * batch.len as f64;
        correct += c.int64_value(&[]) as usize;
        examples += batch.len;
        let predicted: Vec<i64> = Vec::try_from(out.argmax(-1, false).reshape([-1]).to_device(Device::Cpu).to_kind(Kind::Int64))?;
        let truth: Vec<i64> = Vec::try_from(batch.y.reshape([-1]).to_device(Device::Cpu).to_kind(Kind::Int64))?;
        for (t, p) in truth.iter().zip(&predicted) {
            confusion[*t as usize][*p as usize] += 1;
        }
    }
    if examples == 0 {
        bail!("every batch of the {split} split was skipped ({} examples over the length limit)", skipped.examples);
    }
    let predictions = examples * spec.predictions;
    let accuracy = correct as f64 / predictions as f64 * task.accuracy_scale();
    let loss = loss_sum / examples as f64;
    let same_data = args.task_path.is_none() && split == run.cfg.train.eval_split;
    let run_final = run.summary.as_ref().filter(|s| same_data && s.steps_done == loaded.step).and_then(|s| s.final_eval_acc);
    let class_names = run.class_names();
    let per_class_accuracy = confusion
        .iter()
        .enumerate()
        .map(|(c, row)| {
            let total: u64 = row.iter().sum();
            (total > 0).then(|| row[c] as f64 / total as f64)
        })
        .collect();
    let report = EvalReport {
        run: args.run.display().to_string(),
        checkpoint_step: loaded.step,
        backbone: loaded.backbone.clone(),
        task: spec.name.clone(),
        data: data_path(&task_cfg).map(|p| p.display().to_string()),
        split,
        examples,
        predictions,
        correct,
        accuracy,
        loss,
        class_names,
        confusion,
        per_class_accuracy,
        run_final_eval_acc: run_final,
    };

    println!(
        "run {} (checkpoint at step {} of {}; backbone {})",
        args.run.display(),
        loaded.step,
        run.cfg.train.steps,
        if run.recorded.is_some() { "checked: the one it was trained on" } else { "not checked" }
    );
    println!(
        "{what}, {split} split: {n} examples{}",
        if skipped.examples > 0 { format!(" ({} in batches over the length limit skipped)", skipped.examples) } else { String::new() }
    );
    println!("accuracy {:.2}% ({correct} of {predictions} predictions), loss {loss:.4}", accuracy * 100.0);
    if let Some(a) = run_final {
        println!("the run's own evaluation at step {}: {:.2}%", loaded.step, a * 100.0);
    }
    if classes <= 20 {
        print_confusion(&report);
    }
    let out = args.out.clone().unwrap_or_else(|| {
        let name = match &args.task_path {
            Some(p) => format!("eval-{}-{split}", p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "data".into())),
            None => format!("eval-{split}"),
        };
        args.run.join(name)
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let json = out.join("eval.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", json.display()))?;
    let csv = out.join("confusion.csv");
    std::fs::write(&csv, confusion_csv(&report)).with_context(|| format!("writing {}", csv.display()))?;
    let mut written = vec![json.display().to_string(), csv.display().to_string()];
    if classes <= 50 {
        let png = out.join("confusion.png");
        match draw_confusion(&report, &png) {
            Ok(()) => written.push(png.display().to_string()),
            Err(e) => eprintln!("note: no confusion.png: {e:#}"),
        }
    }
    println!("wrote {}", written.join(", "));
    Ok(())
}

fn class_label(report: &EvalReport, c: usize) -> String {
    match &report.class_names {
        Some(names) => names.get(c).cloned().unwrap_or_else(|| c.to_string()),
        None => c.to_string(),
    }
}

fn print_confusion(report: &EvalReport) {
    let n = report.confusion.len();
    let labels: Vec<String> = (0..n).map(|c| class_label(report, c)).collect();
    let first = labels.iter().map(|l| l.chars().count()).max().unwrap_or(1).max(4);
    let width = report.confusion.iter().flatten().max().map_or(1, |m| m.to_string().len()).max(3);
    println!(
        "confusion matrix (rows: true class, columns: predicted class {}):",
        (0..n).map(|c| c.to_string()).collect::<Vec<_>>().join(" ")
    );
    print!("{:>first$} ", "");
    for c in 0..n {
        print!(" {c:>width$}");
    }
    println!("  accuracy");
    for (t, row) in report.confusion.iter().enumerate() {
        print!("{:>first$} ", labels[t]);
        for v in row {
            print!(" {v:>width$}");
        }
        match report.per_class_accuracy[t] {
            Some(a) => println!("  {:.1}%", a * 100.0),
            None => println!("  -"),
        }
    }
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
pub fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn confusion_csv(report: &EvalReport) -> String {
    let n = report.confusion.len();
    let mut out = String::from("true\\predicted");
    for c in 0..n {
        out.push(',');
        out.push_str(&csv_field(&class_label(report, c)));
    }
    out.push('\n');
    for (t, row) in report.confusion.iter().enumerate() {
        out.push_str(&csv_field(&class_label(report, t)));
        for v in row {
            out.push_str(&format!(",{v}"));
        }
        out.push('\n');
    }
    out
}

/// The confusion matrix as a picture: rows true classes, columns predicted, each row shaded by
/// the fraction of its examples (darker = more), counts written in the cells.
fn draw_confusion(report: &EvalReport, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    crate::commands::attention::register_font()?;
    let n = report.confusion.len();
    let cell = (640 / n as u32).clamp(12, 64);
    let (left, top) = (140u32, 80u32);
    let (w, h) = ((left + cell * n as u32 + 20).max(480), top + cell * n as u32 + 20);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("drawing {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(err)?;
    let title = format!("{}, {} split: accuracy {:.2}% of {}", report.task, report.split, report.accuracy * 100.0, report.predictions);
    root.draw(&Text::new(title, (10, 8), ("sans-serif", 15))).map_err(err)?;
    root.draw(&Text::new("rows: true class; columns: predicted class", (10, 28), ("sans-serif", 12))).map_err(err)?;
    let font = (cell as f64 * 0.4).clamp(8.0, 14.0);
    for (t, row) in report.confusion.iter().enumerate() {
        let total = row.iter().sum::<u64>().max(1) as f64;
        let y = (top + t as u32 * cell) as i32;
        let label: String = class_label(report, t).chars().take(18).collect();
        root.draw(&Text::new(label, (5, y + cell as i32 / 3), ("sans-serif", font))).map_err(err)?;
        for (p, &v) in row.iter().enumerate() {
            let x = (left + p as u32 * cell) as i32;
            let shade = (255.0 * (1.0 - v as f64 / total)).round() as u8;
            root.draw(&Rectangle::new([(x, y), (x + cell as i32, y + cell as i32)], RGBColor(shade, shade, 255).filled())).map_err(err)?;
            if cell >= 24 && v > 0 {
                let color = if shade < 128 { &WHITE } else { &BLACK };
                root.draw(&Text::new(v.to_string(), (x + 2, y + cell as i32 / 3), ("sans-serif", font).into_font().color(color)))
                    .map_err(err)?;
            }
        }
    }
    for p in 0..n {
        let x = (left + p as u32 * cell) as i32;
        let label: String = class_label(report, p).chars().take((cell as usize / 7).max(2)).collect();
        root.draw(&Text::new(label, (x + 1, top as i32 - 16), ("sans-serif", font))).map_err(err)?;
    }
    root.present().map_err(|e| anyhow::anyhow!("writing {}: {e:?}", path.display()))?;
    Ok(())
}
