//! `fpt params`: parameter counts per group, total and trainable, for a model and task shape.

use crate::backbone::resolve_local;
use crate::config::RunConfig;
use crate::device::parse_device;
use crate::model_build::{backbone_for, fpt_config};
use anyhow::{bail, Context, Result};
use fpt_model::{params::count_by_group, Fpt, FptConfig, FreezeSpec, InputSpec, ParamGroup};
use tch::nn;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A run config (TOML): model, freeze spec and task shapes from it (the task's data are read).
    #[arg(long, conflicts_with_all = ["model", "input_dim", "vocab", "tokens", "classes", "readout", "freeze"])]
    pub config: Option<std::path::PathBuf>,
    /// With --config: override a value (dotted key = TOML value).
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "config")]
    pub set: Vec<String>,
    /// A GPT-2 preset (gpt2, gpt2-medium, gpt2-large, gpt2-xl), a Hugging Face GPT-2/BERT/Llama directory, minilm, smollm2 or lstm.
    #[arg(long, required_unless_present = "config")]
    pub model: Option<String>,
    /// Features per token (dense input: patches, bits).
    #[arg(long, conflicts_with = "vocab", required_unless_present_any = ["vocab", "config"])]
    pub input_dim: Option<i64>,
    /// Vocabulary size (token-id input: ListOps, amino acids).
    #[arg(long)]
    pub vocab: Option<i64>,
    /// Sequence length.
    #[arg(long, required_unless_present = "config")]
    pub tokens: Option<i64>,
    /// Outputs per read-out token.
    #[arg(long, required_unless_present = "config")]
    pub classes: Option<i64>,
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

/// What is counted: the backbone, its name, the wrapper, the freeze spec and the tokens.
struct Shape {
    backbone: fpt_model::BackboneConfig,
    model: String,
    cfg: FptConfig,
    freeze: FreezeSpec,
    tokens: i64,
}

/// The shape from the command line's numbers.
fn from_flags(args: &Args) -> Result<Shape> {
    let (Some(model), Some(tokens), Some(classes)) = (&args.model, args.tokens, args.classes) else {
        bail!("give --config, or --model, --tokens and --classes");
    };
    let backbone = resolve_local(model)?.config;
    let input = match (args.input_dim, args.vocab) {
        (Some(dim), None) => InputSpec::Dense { dim },
        (None, Some(vocab)) => InputSpec::Tokens { vocab },
        _ => bail!("give exactly one of --input-dim and --vocab"),
    };
    let cfg = FptConfig { input, readout_tokens: args.readout, ..FptConfig::dense(1, classes) };
    Ok(Shape { backbone, model: model.clone(), cfg, freeze: FreezeSpec::parse(&args.freeze)?, tokens })
}

/// The shape of a run config: its backbone (with model.shape), its task's shapes (the task is
/// loaded), its freeze spec.
fn from_config(path: &std::path::Path, set: &[String]) -> Result<Shape> {
    let run = RunConfig::load(path, set)?;
    let task = fpt_tasks::load_task(&run.task, run.seed).with_context(|| format!("loading the task of {}", path.display()))?;
    let backbone = backbone_for(&run)?;
    let cfg = fpt_config(&run, task.as_ref());
    Ok(Shape {
        backbone: backbone.config,
        model: format!("{} ({})", run.model.backbone, backbone.source),
        cfg,
        freeze: *run.model.freeze.spec(),
        tokens: task.spec().seq_len as i64,
    })
}

pub fn run(args: &Args) -> Result<()> {
    let device = parse_device(&args.device)?;
    let shape = match &args.config {
        Some(path) => from_config(path, &args.set)?,
        None => from_flags(args)?,
    };
    let Shape { backbone, model, cfg, freeze, tokens } = shape;
    if tokens <= 0 || tokens > backbone.max_positions() {
        bail!("{tokens} tokens is outside 1..={} (the model's positions, n_positions)", backbone.max_positions());
    }
    let input = cfg.input;
    let vs = nn::VarStore::new(device);
    let fpt = Fpt::new(&vs.root(), &backbone, &cfg)?;
    fpt.freeze(&vs, &freeze)?;
    let counts = count_by_group(&vs, &fpt)?;

    let input_text = match input {
        InputSpec::Dense { dim } => format!("{dim} features per token"),
        InputSpec::Tokens { vocab } => format!("token ids < {vocab}"),
    };
    println!(
        "model {} ({} layers, width {}, {} heads); {} tokens of {input_text}; {} outputs x {} read-out; freeze {}",
        model,
        backbone.layers(),
        backbone.width(),
        backbone.heads(),
        tokens,
        cfg.classes,
        cfg.readout_tokens,
        freeze
    );
    println!("{:<16} {:>15} {:>15}", "group", "total", "trainable");
    let (mut total, mut trainable) = (0, 0);
    for (group, count) in &counts {
        println!("{:<16} {:>15} {:>15}", group.name(), thousands(count.total), thousands(count.trainable));
        total += count.total;
        trainable += count.trainable;
    }
    println!("{:<16} {:>15} {:>15}", "total", thousands(total), thousands(trainable));
    // (Not for backbones without a position table: Llama's rotary positions, the LSTM.)
    if !freeze.is_frozen(ParamGroup::Positions) && counts.get(&ParamGroup::Positions).is_some_and(|c| c.total > 0) {
        // Only the first `tokens` rows of wpe ever receive a gradient.
        let unused = (backbone.max_positions() - tokens) * backbone.width();
        println!("trainable counting only the {} position rows used: {}", tokens, thousands(trainable - unused));
    }
    Ok(())
}
