//! `cargo xtask …`: set-up, tests and the reproduction entry point. Links no libtorch, so it
//! builds on a bare machine; everything that needs torch runs the `fpt` binary or `cargo`.

mod commands;
mod grid;
mod plot;
mod results;
mod util;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "fpt project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create .venv with torch and transformers, link libtorch, build the workspace (idempotent).
    Setup(commands::setup::Args),
    /// Set up, build, and run every test of the workspace.
    Test(commands::test::Args),
    /// Data sets: generate ListOps, fetch downloads, list what is present.
    #[command(subcommand)]
    Data(commands::data::DataCommand),
    /// Run a grid of experiments (default experiments/cpu.toml), resumably; write results/.
    Reproduce(commands::reproduce::Args),
    /// Train the regression cells and compare with their stored expectations.
    Regress(commands::regress::Args),
    /// Our FPT train step against the PyTorch reference, same machine and threads, as ratios.
    Bench(commands::bench::Args),
    /// Train the same recipes with `fpt train` and the authors' PyTorch code; compare accuracy.
    Fidelity(commands::fidelity::Args),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Setup(args) => commands::setup::run(&args),
        Command::Test(args) => commands::test::run(&args),
        Command::Reproduce(args) => commands::reproduce::run(&args),
        Command::Data(cmd) => commands::data::run(&cmd),
        Command::Regress(args) => commands::regress::run(&args),
        Command::Bench(args) => commands::bench::run(&args),
        Command::Fidelity(args) => commands::fidelity::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", util::error_text(&e));
            ExitCode::from(util::exit_code(&e))
        }
    }
}
