//! `fpt params`: parameter counts per group, total and trainable, for a model and task shape.

use crate::device::parse_device;
use anyhow::{bail, Result};
use fpt_model::{params::count_by_group, BackboneSource, Fpt, FptConfig, FreezeSpec, InputSpec, ParamGroup};
use tch::nn;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A GPT-2 preset (gpt2, gpt2-medium, gpt2-large, gpt2-xl) or a Hugging Face GPT-2/BERT directory.
    #[arg(long)]
    pub model: String,
    /// Features per token (dense input: patches, bits).
    #[arg(long, conflicts_with = "vocab", required_unless_present = "vocab")]
    pub input_dim: Option<i64>,
    /// Vocabulary size (token-id input: ListOps, amino acids).
    #[arg(long)]
    pub vocab: Option<i64>,
    /// Sequence length.
    #[arg(long)]
    pub tokens: i64,
    /// Outputs per read-out token.
    #[arg(long)]
    pub classes: i64,
    /// Read-out tokens (1 for classification).
    #[arg(long, default_value_t = 1)]
    pub readout: i64,
    /// Freeze spec: paper | full | all, then +group / -group (e.g. "paper,+attn").
    #[arg(long, default_value = "paper")]
    pub freeze: String,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
}

fn thousands(n: i64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn run(args: &Args) -> Result<()> {
    let device = parse_device(&args.device)?;
    let source = BackboneSource::parse(&args.model)?;
    let backbone = source.config()?;
    let freeze = FreezeSpec::parse(&args.freeze)?;
    if args.tokens <= 0 || args.tokens > backbone.max_positions() {
        bail!("--tokens {} is outside 1..={} (the model's positions, n_positions)", args.tokens, backbone.max_positions());
    }
    let input = match (args.input_dim, args.vocab) {
        (Some(dim), None) => InputSpec::Dense { dim },
        (None, Some(vocab)) => InputSpec::Tokens { vocab },
        _ => bail!("give exactly one of --input-dim and --vocab"),
    };
    let cfg = FptConfig { input, readout_tokens: args.readout, ..FptConfig::dense(1, args.classes) };
    let vs = nn::VarStore::new(device);
    Fpt::new(&vs.root(), &backbone, &cfg, &freeze)?;
    let counts = count_by_group(&vs)?;

    let input_text = match input {
        InputSpec::Dense { dim } => format!("{dim} features per token"),
        InputSpec::Tokens { vocab } => format!("token ids < {vocab}"),
    };
    println!(
        "model {} ({} layers, width {}, {} heads); {} tokens of {input_text}; {} outputs x {} read-out; freeze {}",
        args.model, backbone.layers(), backbone.width(), backbone.heads(), args.tokens, args.classes, args.readout, freeze
    );
    println!("{:<16} {:>15} {:>15}", "group", "total", "trainable");
    let (mut total, mut trainable) = (0, 0);
    for (group, count) in &counts {
        println!("{:<16} {:>15} {:>15}", group.name(), thousands(count.total), thousands(count.trainable));
        total += count.total;
        trainable += count.trainable;
    }
    println!("{:<16} {:>15} {:>15}", "total", thousands(total), thousands(trainable));
    if !freeze.is_frozen(ParamGroup::Positions) {
        // Only the first `tokens` rows of wpe ever receive a gradient.
        let unused = (backbone.max_positions() - args.tokens) * backbone.width();
        println!(
            "trainable counting only the {} position rows used: {}",
            args.tokens,
            thousands(trainable - unused)
        );
    }
    Ok(())
}
