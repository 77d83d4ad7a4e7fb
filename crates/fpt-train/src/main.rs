//! `fpt`: the Frozen Pretrained Transformer toolkit's command line.

use clap::{Parser, Subcommand};
use fpt_train::commands;

#[derive(Parser)]
#[command(name = "fpt", version, about = "Frozen Pretrained Transformers: models, tasks, training")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parameter counts per group (total and trainable) for a model and task shape.
    Params(commands::params::Args),
    /// Run a Hugging Face GPT-2 directory on inputs_embeds and write last_hidden_state.
    Forward(commands::forward::Args),
    /// Train one run from a TOML config (resumable).
    Train(commands::train::Args),
    /// Train a GPT-2 fully on a task (Bit-Memory pretraining) and save it as a Hugging Face directory.
    Pretrain(commands::pretrain::Args),
    /// Draw every layer's and head's attention for one evaluation example of a trained run.
    Attention(commands::attention::Args),
    /// Evaluate a trained run on a split of its task or on other data: accuracy, loss, confusion matrix.
    Eval(commands::eval::Args),
    /// Predict with a trained run: class and probabilities per example of images or arrays.
    Predict(commands::predict::Args),
    /// Time the FPT train step of a frozen backbone (gpt2, minilm, smollm2, lstm) or the matmul peak, and print JSON.
    Bench(commands::bench::Args),
    /// Check data sets, generate ListOps.
    #[command(subcommand)]
    Data(commands::data::DataCommand),
}

fn main() {
    // Rust ignores SIGPIPE, turning a closed pipe into a panic on the next print.
    // SAFETY: restoring the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    keep_freed_memory();
    let cli = Cli::parse();
    fpt_train::oom::quiet_hook();
    finish(fpt_train::oom::catch(|| run(&cli)))
}

/// glibc's malloc hands freed memory back to the kernel as soon as the heap's free top passes
/// twice the largest buffer freed so far (its dynamic trim threshold), and a train step frees and
/// allocates its activations again every step: at 49 tokens (GPT-2 small, batch 16, bf16) that
/// cost ~11,000 page faults a step, kernel time zeroing the same pages anew (docs/performance.md:
/// 3% of the step on the 2-core AMD EPYC). Buffers up to 32 MiB (the largest the dynamic
/// threshold would reach) come from the heap, and up to 128 MiB of free heap is kept. That
/// includes a 1,024-token step's 24 MiB activations (batch 16, bf16), which fragment the heap:
/// 5.6–5.9 GB peak at 1,024 × 16 where a 16 MiB threshold holds 4.3 GB, but mapping them afresh
/// costs 2.5× the page faults and 10–20% of that step (docs/performance.md); 32 MiB is the faster
/// of the two within the 6 GB the long tasks are held to. A user's own `GLIBC_TUNABLES` malloc
/// settings win.
#[cfg(target_env = "gnu")]
fn keep_freed_memory() {
    if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("malloc")) {
        return;
    }
    // SAFETY: mallopt only sets two of the allocator's parameters; it is called before any
    // thread starts and takes no pointers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}

/// Other C libraries' allocators have neither the eager trim nor `mallopt`.
#[cfg(not(target_env = "gnu"))]
fn keep_freed_memory() {}

fn run(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Params(args) => commands::params::run(args),
        Command::Forward(args) => commands::forward::run(args),
        Command::Data(cmd) => commands::data::run(cmd),
        Command::Train(args) => commands::train::run_cli(args),
        Command::Pretrain(args) => commands::pretrain::run_cli(args),
        Command::Attention(args) => commands::attention::run_cli(args),
        Command::Eval(args) => commands::eval::run_cli(args),
        Command::Predict(args) => commands::predict::run_cli(args),
        Command::Bench(args) => commands::bench::run(args),
    }
}

fn finish(result: anyhow::Result<()>) {
    if let Err(err) = result {
        if let Some(interrupted) = err.downcast_ref::<fpt_train::trainer::Interrupted>() {
            eprintln!("fpt: {interrupted}");
            std::process::exit(128 + interrupted.signal);
        }
        // `{:#}` puts the whole context chain on one line.
        eprintln!("fpt: error: {err:#}");
        let in_use = err.downcast_ref::<fpt_train::trainer::RunInUse>().is_some();
        std::process::exit(if in_use { fpt_train::trainer::IN_USE_EXIT_CODE } else { 1 });
    }
}
