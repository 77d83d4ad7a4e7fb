use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

/// The workspace root (xtask lives one level below it). `FPT_WORKSPACE` overrides it, for an
/// xtask binary copied to another machine (benches/gpu_check.sh).
pub fn workspace_root() -> PathBuf {
    if let Some(root) = std::env::var_os("FPT_WORKSPACE") {
        return PathBuf::from(root);
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Runs `cmd`, echoing it, and fails with its exit status.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {}", describe(cmd));
    let status = cmd.status().with_context(|| format!("starting {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed with {status}", describe(cmd));
    }
    Ok(())
}

pub fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// `cargo`, as the one running us (so `cargo +toolchain xtask` keeps its toolchain).
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// An error that ends `cargo xtask` with a chosen exit status rather than 1 (143 after SIGTERM,
/// 130 after SIGINT), so job managers see how it ended.
#[derive(Debug)]
pub struct ExitWith {
    pub code: u8,
    pub message: String,
}

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExitWith {}

/// How `cargo xtask` reports the error that ends it: as `fn main() -> Result` would (`{:?}`: the
/// causes, and a stack backtrace under RUST_BACKTRACE=1), except that a stop the user asked for
/// (an [`ExitWith`], after SIGTERM or SIGINT) is not a bug and prints its message alone.
pub fn error_text(error: &anyhow::Error) -> String {
    if error.downcast_ref::<ExitWith>().is_some() {
        format!("Error: {error:#}")
    } else {
        format!("Error: {error:?}")
    }
}

/// The exit status for an error: its `ExitWith` code if it carries one, else 1.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    error.downcast_ref::<ExitWith>().map_or(1, |e| e.code)
}

/// (jobs, threads per job) for `jobs` runs at a time on `cores` cores: at most one job per run
/// and at least one thread each; the cores are split evenly.
pub fn share_cores(jobs: usize, cores: usize, runs: usize) -> (usize, usize) {
    let jobs = jobs.clamp(1, runs.max(1));
    (jobs, (cores / jobs).max(1))
}

/// The cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The CPU's model name and the cores this process may use, as reports name the machine
/// ("AMD EPYC, 2 cores").
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| t.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cpu}, {cores} cores")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_share_the_cores_evenly() {
        assert_eq!(share_cores(1, 2, 36), (1, 2));
        assert_eq!(share_cores(2, 2, 36), (2, 1));
        assert_eq!(share_cores(4, 16, 36), (4, 4));
        // More jobs than cores still gives each one thread; more jobs than runs are not started.
        assert_eq!(share_cores(3, 2, 36), (3, 1));
        assert_eq!(share_cores(8, 16, 2), (2, 8));
        assert_eq!(share_cores(0, 2, 36), (1, 2));
    }
}
