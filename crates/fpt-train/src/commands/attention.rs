//! `fpt attention --run DIR [--example N] [--split test] --out FILE.png`: the attention of every
//! layer and head of a trained run for one evaluation example, as a labelled PNG grid (rows are
//! layers, columns heads; in each panel, row = attending position, column = attended position,
//! darker = more attention).

use crate::adam::Adam;
use crate::config::RunConfig;
use crate::device::parse_device;
use crate::model_build::build_model;
use crate::run_checkpoint;
use crate::run_dir::CONFIG;
use anyhow::{bail, Context, Result};
use fpt_tasks::{batch::assemble, load_task, Split};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run directory written by `fpt train` (config.toml + checkpoint.safetensors).
    #[arg(long)]
    pub run: PathBuf,
    /// Index of the example in the split.
    #[arg(long, default_value_t = 0)]
    pub example: usize,
    #[arg(long, default_value = "test", value_parser = ["train", "val", "test"])]
    pub split: String,
    #[arg(long)]
    pub out: PathBuf,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
}

const FONTS: [&str; 2] = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf"];

pub fn run_cli(args: &Args) -> Result<()> {
    let device = parse_device(&args.device)?;
    let cfg = RunConfig::load(&args.run.join(CONFIG), &[])?;
    let split = match args.split.as_str() {
        "train" => Split::Train,
        "val" => Split::Val,
        _ => Split::Test,
    };
    let task = load_task(&cfg.task, cfg.seed)?;
    let n = task.len(split).unwrap_or(usize::MAX);
    if args.example >= n {
        bail!("--example {} is outside the {split} split's {n} examples", args.example);
    }
    let (_vs, model, trainable) = build_model(&cfg, task.as_ref(), device)?;
    let mut adam = Adam::new(Default::default(), trainable);
    run_checkpoint::load(&args.run, &mut adam, cfg.train.steps)
        .with_context(|| format!("{} has no usable checkpoint", args.run.display()))?;
    let batch = assemble(task.as_ref(), split, &[args.example], false, cfg.seed, 0, device);
    let (maps, logits) = tch::no_grad(|| -> Result<(Vec<Tensor>, Tensor)> {
        Ok((model.attention_maps(&batch.x)?, model.forward_padded(&batch.x, batch.lengths.as_ref(), false)?))
    })?;
    let spec = task.spec();
    let pred = logits.reshape([-1, spec.classes as i64]).argmax(-1, false);
    let target = batch.y.reshape([-1]);
    let correct = pred.eq_tensor(&target).sum(Kind::Int64).int64_value(&[]);
    let title = format!(
        "{} — {} example {} — {}/{} predictions right — {}",
        spec.name,
        split,
        args.example,
        correct,
        spec.predictions,
        args.run.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
    );
    render(&maps, &title, &args.out)?;
    println!("wrote {} ({} layers × {} heads, {} tokens)", args.out.display(), maps.len(), maps[0].size()[1], maps[0].size()[2]);
    Ok(())
}

/// Registers DejaVu Sans as plotters' "sans-serif" (once per process).
pub fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if DONE.get().is_some() {
        return Ok(());
    }
    let font = FONTS.iter().find_map(|p| std::fs::read(p).ok()).context("no DejaVuSans.ttf font found (Debian: fonts-dejavu-core)")?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("registering the font"))?;
    let _ = DONE.set(());
    Ok(())
}

fn render(maps: &[Tensor], title: &str, out: &Path) -> Result<()> {
    use plotters::prelude::*;
    register_font()?;
    let layers = maps.len();
    let heads = maps[0].size()[1] as usize;
    let t = maps[0].size()[2] as usize;
    let cell = (240 / t).clamp(2, 24) as u32;
    let panel = cell * t as u32 + 24;
    let (w, h) = (panel * heads as u32 + 60, panel * layers as u32 + 50);
    let root = BitMapBackend::new(out, (w, h)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("drawing {}: {e:?}", out.display());
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 16)).map_err(err)?;
    for (l, map) in maps.iter().enumerate() {
        let probs: Vec<f32> = Vec::try_from(&map.get(0).to_kind(Kind::Float).to_device(tch::Device::Cpu).flatten(0, -1))?;
        for hd in 0..heads {
            let (x0, y0) = (50 + hd as i32 * panel as i32, l as i32 * panel as i32 + 10);
            root.draw(&Text::new(format!("L{l} H{hd}"), (x0, y0), ("sans-serif", 12))).map_err(err)?;
            let max = probs[hd * t * t..(hd + 1) * t * t].iter().cloned().fold(1e-9f32, f32::max);
            for q in 0..t {
                for k in 0..t {
                    let p = probs[hd * t * t + q * t + k] / max;
                    let shade = (255.0 * (1.0 - p)).round() as u8;
                    let (cx, cy) = (x0 + (k as u32 * cell) as i32, y0 + 16 + (q as u32 * cell) as i32);
                    root.draw(&Rectangle::new([(cx, cy), (cx + cell as i32, cy + cell as i32)], RGBColor(shade, shade, 255).filled()))
                        .map_err(err)?;
                }
            }
        }
    }
    root.present().map_err(|e| anyhow::anyhow!("writing {}: {e:?}", out.display()))?;
    Ok(())
}
