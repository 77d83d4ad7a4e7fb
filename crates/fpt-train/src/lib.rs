//! Training, experiment configs and the `fpt` command-line tool: the one crate that joins
//! `fpt-model` and `fpt-tasks`.

pub mod adam;
pub mod backbone;
pub mod commands;
pub mod config;
pub mod device;
pub mod inference;
pub mod model_build;
pub mod oom;
pub mod run_checkpoint;
pub mod run_dir;
pub mod run_info;
pub mod signals;
pub mod tensor_io;
pub mod tensorboard;
pub mod trainer;
