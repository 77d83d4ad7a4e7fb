//! `fpt train --config FILE.toml [--set key=value …] [--out DIR] [--device …] [--resume]`.

use crate::config::RunConfig;
use crate::device::parse_device;
use crate::trainer::{run, RunOptions, Status};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run configuration (TOML).
    #[arg(long)]
    pub config: PathBuf,
    /// Override a value: dotted key = TOML value (e.g. train.lr=3e-4, model.freeze=full).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Run directory (default runs/<config file name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Continue the run in --out from its checkpoint (a completed run is left as it is; a run
    /// with no checkpoint starts from step 0).
    #[arg(long)]
    pub resume: bool,
    /// Only read and validate the config (with --set) and train nothing
    /// (`cargo xtask reproduce --dry-run` checks every cell this way).
    #[arg(long)]
    pub check: bool,
}

pub fn run_cli(args: &Args) -> Result<()> {
    let device = parse_device(&args.device)?;
    let cfg = RunConfig::load(&args.config, &args.set)?;
    if args.check {
        println!("{}: a valid run config", args.config.display());
        return Ok(());
    }
    crate::signals::install()?;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(args.config.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into()))
    });
    let summary = run(&cfg, &RunOptions { out: out.clone(), device, resume: args.resume })?;
    if summary.status == Status::Completed {
        let pct = |v: Option<f64>| v.map(|a| format!("{:.2}%", a * 100.0)).unwrap_or_else(|| "-".into());
        println!(
            "completed {} steps in {:.1} s: final eval accuracy {}, best {} at step {}{} → {}",
            summary.steps_done,
            summary.total_time_s,
            pct(summary.final_eval_acc),
            pct(summary.best_eval_acc),
            summary.best_step.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            match (summary.target_accuracy, summary.steps_to_target) {
                (Some(t), Some(s)) => format!("; reached {:.1}% at step {s}", t * 100.0),
                (Some(t), None) => format!("; never reached {:.1}%", t * 100.0),
                _ => String::new(),
            },
            out.display()
        );
    }
    Ok(())
}
