//! Training, experiment configs and the `fpt` command-line tool: the one crate that joins
//! `fpt-model` and `fpt-tasks`.

pub mod commands;
pub mod device;
pub mod tensor_io;
