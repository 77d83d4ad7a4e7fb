//! `fpt data check` (load and validate a data set, print its statistics) and
//! `fpt data generate-listops` (LRA's ListOps generator; `cargo xtask data listops` drives it).

use anyhow::{bail, Context, Result};
use fpt_tasks::listops::{self, GeneratorConfig, Overflow};
use fpt_tasks::stats::{histogram, split_stats};
use fpt_tasks::{load_task, InputKind, Split, TaskConfig};
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum DataCommand {
    /// Load and validate a data set; print counts per split and class and sequence lengths.
    Check(CheckArgs),
    /// Generate ListOps with LRA's algorithm into basic_{train,val,test}.tsv.
    GenerateListops(GenerateArgs),
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// bit-memory, bit-xor, listops, mnist, fashion-mnist, cifar10, cifar10-lra, remote-homology,
    /// arrays, image-folder
    #[arg(long)]
    pub task: String,
    /// Data folder (default: $FPT_DATA_DIR/<task>, FPT_DATA_DIR defaulting to ./datasets).
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// ListOps / remote homology: longest sequence kept, in tokens.
    #[arg(long)]
    pub max_len: Option<usize>,
    /// ListOps: drop or truncate sequences longer than --max-len.
    #[arg(long, value_parser = ["drop", "truncate"])]
    pub overflow: Option<String>,
    /// A task setting, as in a run config's [task] table (e.g. color=grey, size=32, vocab=100).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    #[arg(long, default_value = "datasets/listops")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 96_000)]
    pub train: usize,
    #[arg(long, default_value_t = 2_000)]
    pub val: usize,
    #[arg(long, default_value_t = 2_000)]
    pub test: usize,
    /// Kept sequences have more tokens than this (parentheses not counted).
    #[arg(long, default_value_t = 500)]
    pub min_len: usize,
    /// Kept sequences have fewer tokens than this.
    #[arg(long, default_value_t = 2000)]
    pub max_len: usize,
}

pub fn run(cmd: &DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Check(args) => check(args),
        DataCommand::GenerateListops(args) => generate(args),
    }
}

fn check(args: &CheckArgs) -> Result<()> {
    let mut cfg = TaskConfig::named(&args.task, args.path.clone())?;
    match (&mut cfg, args.max_len, args.overflow.as_deref()) {
        (TaskConfig::Listops { max_len, overflow, .. }, m, o) => {
            if let Some(m) = m {
                *max_len = m;
            }
            if o == Some("truncate") {
                *overflow = Overflow::Truncate;
            }
        }
        (TaskConfig::RemoteHomology { max_len, .. }, Some(m), None) => *max_len = m,
        (_, None, None) => {}
        _ => bail!("--max-len/--overflow apply to listops (both) and remote-homology (--max-len) only"),
    }
    if !args.set.is_empty() {
        let mut table = toml::Table::try_from(&cfg).context("the task's settings as a table")?;
        crate::config::apply_overrides(&mut table, &args.set)?;
        cfg = toml::Value::Table(table)
            .try_into()
            .with_context(|| format!("--set {}: not valid settings of task {}", args.set.join(" "), args.task))?;
    }
    let task = load_task(&cfg, 0)?;
    let spec = task.spec();
    let input = match spec.input {
        InputKind::Dense { dim } => format!("{dim} features per token"),
        InputKind::Tokens { vocab } => format!("token ids < {vocab}"),
    };
    println!(
        "task {}: {} tokens of {input}; {} prediction(s) of {} classes from the last {} token(s)",
        spec.name, spec.seq_len, spec.predictions, spec.classes, spec.readout_tokens
    );
    for note in task.notes() {
        println!("  {note}");
    }
    for split in Split::ALL {
        let Some(stats) = split_stats(task.as_ref(), split) else {
            println!("{split}: generated from the seed on the fly (no fixed size)");
            continue;
        };
        if stats.examples == 0 {
            println!("{split}: none in this data set");
            continue;
        }
        println!(
            "{split}: {} examples; tokens per example min {} mean {:.1} max {}",
            stats.examples, stats.min_len, stats.mean_len, stats.max_len
        );
        let classes: Vec<String> = stats.per_class.iter().map(|(c, n)| format!("{c}:{n}")).collect();
        if classes.len() <= 20 {
            println!("  per class: {}", classes.join(" "));
        } else {
            let min = stats.per_class.values().min().copied().unwrap_or(0);
            let max = stats.per_class.values().max().copied().unwrap_or(0);
            println!("  {} classes present; examples per class min {min} max {max}", classes.len());
        }
    }
    println!("ok");
    Ok(())
}

fn generate(args: &GenerateArgs) -> Result<()> {
    let cfg = GeneratorConfig {
        seed: args.seed,
        train: args.train,
        val: args.val,
        test: args.test,
        min_len: args.min_len,
        max_len: args.max_len,
        ..GeneratorConfig::default()
    };
    let generated = listops::generate(&cfg)?;
    listops::write_tsv(&args.out, &generated)?;
    println!(
        "wrote {} / {} / {} examples (train / val / test) to {} (seed {}, {} trees drawn)",
        generated.train.len(),
        generated.val.len(),
        generated.test.len(),
        args.out.display(),
        args.seed,
        generated.drawn
    );
    let all: Vec<&(String, u8)> = generated.train.iter().chain(&generated.val).chain(&generated.test).collect();
    let lengths: Vec<usize> = all.iter().map(|(s, _)| listops::encode(s).map(|t| t.len()).unwrap_or(0)).collect();
    println!("length (tokens without parentheses) histogram:");
    for (lo, hi, n) in histogram(&lengths, 10) {
        println!("  {lo:>5}-{hi:<5} {n:>7} {}", "#".repeat((n * 50).div_ceil(all.len().max(1))));
    }
    let mut per_label = [0usize; 10];
    for (_, label) in &all {
        per_label[*label as usize] += 1;
    }
    let balance: Vec<String> = per_label.iter().enumerate().map(|(l, n)| format!("{l}:{n}")).collect();
    println!("labels: {}", balance.join(" "));
    Ok(())
}
