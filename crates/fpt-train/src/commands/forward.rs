//! `fpt forward`: run a Hugging Face GPT-2, BERT or Llama-family (Llama, Qwen2, Mistral) directory
//! on given `inputs_embeds`, to check that a checkpoint loads and computes as `transformers` does:
//! write `last_hidden_state` (`--out`), or judge it and the input gradient against a reference's
//! fp64 truth by the parity rule of `fpt_model::tolerance` (`--check`), on any device.

use crate::device::parse_device;
use crate::tensor_io::{write_f32, TensorFile};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use tch::{Device, Kind};

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
    #[arg(long, required_unless_present = "check")]
    pub out: Option<PathBuf>,
    /// Judge the output against the reference in the --inputs file and exit 1 when outside the
    /// parity bound: `last_hidden_state_f64` and `last_hidden_state_noise` (the reference's fp64
    /// evaluation and its fp32 error), and where the file has `cotangent`, `grad_inputs_f64` and
    /// `grad_inputs_noise`, the gradient of sum(last_hidden_state * cotangent) with respect to
    /// inputs_embeds too (what the fixture scripts in crates/fpt-model/tests/reference write).
    #[arg(long)]
    pub check: bool,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
}

pub fn run(args: &Args) -> Result<()> {
    let device = parse_device(&args.device)?;
    let file = TensorFile::read(&args.inputs)?;
    let inputs = file.f32("inputs_embeds")?;
    let (_vs, model) = fpt_model::load_backbone_dir(&args.model, device)?;
    let with_gradient = args.check && file.has("cotangent");
    let inputs = inputs.to_device(device).set_requires_grad(with_gradient);
    let hidden = tch::with_grad(|| model.forward_embeds(&inputs, false))
        .with_context(|| format!("{}: inputs_embeds does not fit the model", args.inputs.display()))?;
    // Finite weights and a valid config give finite outputs; anything else is not a result.
    let non_finite = hidden.isfinite().logical_not().sum(Kind::Int64).int64_value(&[]);
    if non_finite > 0 {
        bail!(
            "{}: last_hidden_state has {non_finite} non-finite values (NaN or inf) for the inputs in {}; nothing written",
            args.model.display(),
            args.inputs.display()
        );
    }
    if let Some(out) = &args.out {
        write_f32(out, "last_hidden_state", &hidden)?;
        eprintln!("wrote last_hidden_state {:?} to {}", hidden.size(), out.display());
    }
    if !args.check {
        return Ok(());
    }
    let mut outputs = vec![("last_hidden_state", hidden.detach())];
    if with_gradient {
        let cotangent = file.f32("cotangent")?.to_device(device);
        if cotangent.size() != hidden.size() {
            bail!("{}: cotangent is {:?}; expected the output's shape {:?}", args.inputs.display(), cotangent.size(), hidden.size());
        }
        (&hidden * cotangent).sum(Kind::Float).backward();
        outputs.push(("grad_inputs", inputs.grad()));
    }
    let mut outside = Vec::new();
    for (name, ours) in outputs {
        let truth = file.f64(&format!("{name}_f64"))?;
        let noise = file.f64(&format!("{name}_noise"))?;
        if truth.size() != ours.size() || noise.numel() != 1 {
            bail!(
                "{}: {name}_f64 is {:?} and {name}_noise has {} values; expected {:?} and one",
                args.inputs.display(),
                truth.size(),
                noise.numel(),
                ours.size()
            );
        }
        let ours = ours.to_device(Device::Cpu);
        match fpt_model::tolerance::check_parity(name, &ours, &truth, noise.double_value(&[])) {
            Ok(err) => println!(
                "{name}: ours ({device:?}) vs fp64 {err:.3e}, bound {:.3e}: within",
                fpt_model::tolerance::parity_bound(noise.double_value(&[]), &truth)
            ),
            Err(e) => {
                println!("{e}: OUTSIDE");
                outside.push(name);
            }
        }
    }
    if !outside.is_empty() {
        bail!("{} on {:?}: {} outside the parity bound of {}", args.model.display(), device, outside.join(" and "), args.inputs.display());
    }
    Ok(())
}
