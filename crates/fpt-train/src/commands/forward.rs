//! `fpt forward`: run a Hugging Face GPT-2, BERT or Llama-family (Llama, Qwen2, Mistral) directory
//! on given `inputs_embeds`, to check that a checkpoint loads and computes as `transformers` does.

use crate::device::parse_device;
use crate::tensor_io::{read_f32, write_f32};
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Hugging Face GPT-2, BERT or Llama-family directory (config.json + model.safetensors or a
    /// sharded index).
    #[arg(long)]
    pub model: PathBuf,
    /// safetensors file with an f32 tensor `inputs_embeds` of shape [batch, seq, n_embd].
    #[arg(long)]
    pub inputs: PathBuf,
    /// Where to write `last_hidden_state` (safetensors, f32).
    #[arg(long)]
    pub out: PathBuf,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
}

pub fn run(args: &Args) -> Result<()> {
    let device = parse_device(&args.device)?;
    let inputs = read_f32(&args.inputs, "inputs_embeds")?;
    let (_vs, model) = fpt_model::load_backbone_dir(&args.model, device)?;
    let hidden = tch::no_grad(|| model.forward_embeds(&inputs.to_device(device), false))
        .with_context(|| format!("{}: inputs_embeds does not fit the model", args.inputs.display()))?;
    // Finite weights and a valid config give finite outputs; anything else is not a result.
    let non_finite = hidden.isfinite().logical_not().sum(tch::Kind::Int64).int64_value(&[]);
    if non_finite > 0 {
        anyhow::bail!(
            "{}: last_hidden_state has {non_finite} non-finite values (NaN or inf) for the inputs in {}; nothing written",
            args.model.display(),
            args.inputs.display()
        );
    }
    write_f32(&args.out, "last_hidden_state", &hidden)?;
    eprintln!("wrote last_hidden_state {:?} to {}", hidden.size(), args.out.display());
    Ok(())
}
