//! Running out of memory mid-computation. tch's tensor operations unwrap libtorch's errors, so
//! an allocation that fails inside a forward or backward pass (a batch, sequence or model too
//! large for the machine) panics. That one is caused by the user's sizes, not by a bug: it is
//! turned into an error naming the cause. Any other panic is a bug and stays one.

use anyhow::Result;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

/// libtorch's allocation failure in a panic payload, as one line.
pub fn out_of_memory(payload: &(dyn std::any::Any + Send)) -> Option<String> {
    let text = payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied())?;
    // The CPU allocator's and the CUDA caching allocator's messages.
    let at = text.find("you tried to allocate").or_else(|| text.find("CUDA out of memory"))?;
    Some(text[at..].split(['\\', '\n']).next().unwrap_or("").chars().take(200).collect::<String>().trim().to_string())
}

/// Runs `f`; an out-of-memory panic inside it becomes an error, other panics go on unwinding.
pub fn catch<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => match out_of_memory(payload.as_ref()) {
            Some(what) => Err(anyhow::anyhow!(
                "out of memory: {what}; reduce the batch size (train.batch_size, or train.micro_batch_size to accumulate), the sequence length or the model"
            )),
            None => resume_unwind(payload),
        },
    }
}

/// Keeps the default panic message for real panics only (an out-of-memory one is reported as
/// an error by [`catch`]).
pub fn quiet_hook() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if out_of_memory(info.payload()).is_none() {
            default_hook(info);
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allocation_failure_becomes_an_error_and_other_panics_stay_panics() {
        quiet_hook();
        let err = catch(|| -> Result<()> {
            let _ = tch::Tensor::zeros([1 << 40, 1 << 10], (tch::Kind::Float, tch::Device::Cpu));
            Ok(())
        })
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("out of memory: you tried to allocate") && err.contains("bytes"), "{err}");
        let other = std::panic::catch_unwind(|| catch(|| -> Result<()> { panic!("a bug") }));
        assert!(other.is_err(), "a non-memory panic must not be swallowed");
    }
}
