//! SIGTERM and SIGINT for `fpt train`: job managers (Slurm, `cargo xtask reproduce`, a
//! terminal's Ctrl-C) stop a run with them. The first one is noted and the trainer stops at the
//! end of the current step, writes its checkpoint and exits with 128 + the signal's number. A
//! second SIGINT (Ctrl-C twice) exits at once, as an impatient user expects; further SIGTERMs
//! are ignored, because one stop often arrives twice (Slurm signals every process of a job,
//! and `cargo xtask reproduce` forwards its own; a terminal's Ctrl-C reaches fpt and reproduce,
//! which forwards SIGTERM) and must not cost the end-of-step checkpoint.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

static RECEIVED: OnceLock<Arc<AtomicUsize>> = OnceLock::new();

/// Installs the handlers (once per process).
pub fn install() -> anyhow::Result<()> {
    if RECEIVED.get().is_some() {
        return Ok(());
    }
    let received = Arc::new(AtomicUsize::new(0));
    let interrupted = Arc::new(AtomicBool::new(false));
    // Order matters: the shutdown check runs before this SIGINT sets the flag.
    signal_hook::flag::register_conditional_shutdown(signal_hook::consts::SIGINT, 128 + signal_hook::consts::SIGINT, interrupted.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted)?;
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register_usize(signal, received.clone(), signal as usize)?;
    }
    let _ = RECEIVED.set(received);
    Ok(())
}

/// The signal received since [`install`], if any.
pub fn received() -> Option<i32> {
    RECEIVED.get().map(|r| r.load(Ordering::SeqCst)).filter(|&s| s != 0).map(|s| s as i32)
}
