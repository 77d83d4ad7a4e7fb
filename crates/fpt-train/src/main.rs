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
    let cli = Cli::parse();
    fpt_train::oom::quiet_hook();
    finish(fpt_train::oom::catch(|| run(&cli)))
}

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
