//! `cargo xtask reproduce`: the paper's experiments. Training lands with the trainer issue;
//! until then this runs the largest thing that exists: for every task of the paper, the FPT
//! parameter budget on GPT-2 small (what the paper's Table 8 counts), via `fpt params`.

use crate::commands::setup;
use crate::util::{run_cmd, workspace_root};
use anyhow::{Context, Result};
use std::process::Command;

#[derive(clap::Args)]
pub struct Args {
    /// Backbone: a GPT-2 preset or a Hugging Face checkpoint directory.
    #[arg(long, default_value = "gpt2")]
    pub model: String,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// (task, input flag, input size, tokens, classes per read-out token, read-out tokens), from
/// the paper's setup (shared FACTS.md: token shapes per task).
const TASKS: [(&str, &str, i64, i64, i64, i64); 7] = [
    ("bit-memory", "--input-dim", 50, 120, 2 * 50, 20),
    ("bit-xor", "--input-dim", 1, 10, 2, 5),
    ("listops", "--vocab", 15, 512, 10, 1),
    ("mnist", "--input-dim", 16, 49, 10, 1),
    ("cifar10", "--input-dim", 48, 64, 10, 1),
    ("cifar10-lra", "--input-dim", 1, 1024, 10, 1),
    ("remote-homology", "--vocab", 30, 1024, 1195, 1),
];

pub fn run(args: &Args) -> Result<()> {
    setup::run(&setup::Args { no_build: false })?;
    let fpt = workspace_root().join("target/release/fpt");
    for (task, input_flag, input, tokens, classes, readout) in TASKS {
        println!("\n## {task} ({} tokens, {input_flag} {input}, {classes} outputs × {readout})", tokens);
        run_cmd(Command::new(&fpt)
            .args(["params", "--model", &args.model, "--device", &args.device])
            .args([input_flag, &input.to_string()])
            .args(["--tokens", &tokens.to_string(), "--classes", &classes.to_string()])
            .args(["--readout", &readout.to_string()]))
        .with_context(|| format!("parameter table for {task}"))?;
    }
    println!("\nTraining runs arrive with the trainer (experiments/ grids); see README.md.");
    Ok(())
}
