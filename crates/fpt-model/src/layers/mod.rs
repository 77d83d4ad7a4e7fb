//! The building blocks every backbone (and the FPT wrapper) is made of: parameter creation and
//! init ([`init`]), layer and RMS norms, the PyTorch-layout linear layer, activations, read-out
//! rows and input checks.
//!
//! Import rule (checked by `tests::module_layout` in `lib.rs`): this module and
//! [`crate::kernels`] import no backbone and not [`crate::backbone`]; a backbone file imports
//! these, the kernels and [`crate::freeze`], never another backbone.

mod activation;
pub mod hf_config;
pub mod init;
mod linear;
mod norm;
mod rows;

pub use activation::Activation;
pub use linear::Linear;
pub use norm::{LayerNorm, RmsNorm};
pub use rows::Rows;
pub(crate) use rows::{check_inputs_embeds, check_positions, gather_rows, Queries};
