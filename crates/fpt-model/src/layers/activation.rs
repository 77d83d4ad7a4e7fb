//! Feed-forward non-linearities, as `config.json` files name them.

use serde::{Deserialize, Serialize};

/// The feed-forward non-linearity (`activation_function` in `config.json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// GELU with the tanh approximation; GPT-2's `gelu_new` (also `gelu_pytorch_tanh`).
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
    /// Exact GELU (erf).
    #[serde(rename = "gelu")]
    Gelu,
    #[serde(rename = "relu")]
    Relu,
    #[serde(rename = "silu", alias = "swish")]
    Silu,
}

impl Activation {
    pub fn apply(self, x: &tch::Tensor) -> tch::Tensor {
        match self {
            Activation::GeluTanh => crate::kernels::gelu_tanh(x),
            Activation::Gelu => x.gelu("none"),
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
        }
    }
}
