//! `cargo xtask test`: the formatting check (`cargo fmt --check`, rules in `rustfmt.toml`),
//! set-up (idempotent), every test of the workspace in release mode (so the tests reuse the build
//! that produced `target/release/fpt`), then `cargo xtask regress`.

use crate::commands::setup;
use crate::util::{cargo, run_cmd};
use anyhow::{Context, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Extra arguments for `cargo test` (e.g. a test-name filter).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cargo_args: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    // First, as it takes a second: a tree that `cargo fmt` would change fails here.
    run_cmd(cargo().args(["fmt", "--all", "--check"])).context("the tree is not formatted: run `cargo fmt --all`")?;
    setup::run(&setup::Args { no_build: false })?;
    run_cmd(cargo().args(["test", "--release", "--workspace"]).args(&args.cargo_args))?;
    // The accuracy regression cells (a few minutes of tiny-model training).
    crate::commands::regress::run(&crate::commands::regress::Args::default())
}
