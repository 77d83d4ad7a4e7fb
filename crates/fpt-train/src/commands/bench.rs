//! `fpt bench`: the FPT train step (forward, loss, backward, clip, Adam) of a frozen backbone on
//! a fixed batch, timed, as `benches/ref_fpt_bench.py` times the PyTorch reference; and
//! `fpt bench --matmul`, libtorch's matmul peak on this device. Prints one JSON object;
//! `cargo xtask bench` runs both side by side and compares.
//!
//! Backbones (`--backbone`): `gpt2` (GPT-2 small's shape, random init, `--layers`), `minilm`
//! (all-MiniLM-L6-v2, a BERT) and `smollm2` (SmolLM2-135M, a Llama, with the wrapper's BOS row
//! first), both with their real weights from where `fpt train` finds them (or `--model-dir`),
//! and `lstm` (the paper's layer-norm LSTM, random init, `--layers` × `--width`). Every one is
//! frozen with the paper's spec.

use crate::adam::{Adam, AdamConfig};
use crate::backbone::{minilm_dir, smollm2_dir};
use crate::device::parse_device;
use anyhow::{bail, Context, Result};
use fpt_model::checkpoint::{build_checked, load_weights};
use fpt_model::gpt2::Conv1D;
use fpt_model::{BackboneConfig, Fpt, FptConfig, FreezeSpec, Gpt2Config, LstmConfig, Precision};
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

/// The backbones `fpt bench` times.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchBackbone {
    /// GPT-2 small's shape (random init; `--layers`).
    Gpt2,
    /// all-MiniLM-L6-v2 (BERT), its real weights.
    Minilm,
    /// SmolLM2-135M (Llama), its real weights, the BOS row first.
    Smollm2,
    /// The paper's layer-norm LSTM (random init; `--layers`, `--width`).
    Lstm,
}

impl BenchBackbone {
    pub fn name(self) -> &'static str {
        match self {
            BenchBackbone::Gpt2 => "gpt2",
            BenchBackbone::Minilm => "minilm",
            BenchBackbone::Smollm2 => "smollm2",
            BenchBackbone::Lstm => "lstm",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// gpt2 | minilm | smollm2 | lstm
    #[arg(long, value_enum, default_value_t = BenchBackbone::Gpt2)]
    pub backbone: BenchBackbone,
    /// The minilm or smollm2 Hugging Face directory (default: where `fpt train` finds it,
    /// `.venv/minilm` / `.venv/smollm2` or $FPT_MINILM_DIR / $FPT_SMOLLM2_DIR).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 16)]
    pub batch: i64,
    #[arg(long, default_value_t = 49)]
    pub tokens: i64,
    /// Features per token (16: MNIST 4×4 patches; 48: CIFAR-10 4×4×3).
    #[arg(long, default_value_t = 16)]
    pub dim: i64,
    #[arg(long, default_value_t = 10)]
    pub classes: i64,
    /// Timed steps (after the warm-up steps).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Layers of gpt2 (GPT-2 small's shape; default 12) or lstm (default 3, the paper's); the
    /// pretrained backbones keep theirs.
    #[arg(long)]
    pub layers: Option<i64>,
    /// Width of the lstm (default 768, the paper's baseline).
    #[arg(long)]
    pub width: Option<i64>,
    /// Intra-op threads (0: libtorch's default, one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: i32,
    /// fp32 | bf16
    #[arg(long, default_value = "fp32")]
    pub precision: String,
    /// Dropout of the backbone (the reference keeps Hugging Face's 0.1 in train mode).
    #[arg(long, default_value_t = 0.1)]
    pub dropout: f64,
    /// Start from the weights and batch the reference saved (`ref_fpt_bench.py --save-init`),
    /// to compare loss curves (gpt2 only).
    #[arg(long)]
    pub init: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Measure the matmul peak (fp32 and bf16) instead of the train step.
    #[arg(long)]
    pub matmul: bool,
}

#[derive(Serialize)]
struct StepReport {
    implementation: &'static str,
    backbone: &'static str,
    device: String,
    threads: i32,
    precision: Precision,
    batch: i64,
    tokens: i64,
    dim: i64,
    layers: i64,
    width: i64,
    steps: usize,
    samples_per_s: f64,
    ms_per_step: f64,
    peak_rss_mb: f64,
    /// Multiply-adds ×2 of the matmuls one step executes (see `step_flops`).
    step_gflop: f64,
    gflops: f64,
    /// Loss of every step, warm-up included, read back after the last step.
    losses: Vec<f64>,
}

#[derive(Serialize)]
struct MatmulReport {
    device: String,
    threads: i32,
    sizes: Vec<i64>,
    fp32_gflops: f64,
    bf16_gflops: f64,
}

/// Peak resident set size of this process, in MiB.
pub fn peak_rss_mb() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_maxrss as f64 / 1024.0
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// A transformer layer's matmuls, per token, as multiply-adds.
struct TransformerShape {
    layers: f64,
    width: f64,
    /// Width of the queries (heads × head_dim), of the keys and of the values (kv_heads × head_dim).
    q: f64,
    kv: f64,
    /// The feed-forward's multiply-adds per token.
    ffn: f64,
    /// Causal attention counts half of the T×T products; bidirectional counts all of them.
    causal: bool,
}

impl TransformerShape {
    /// The forward's weight-matmul FLOPs and attention-product FLOPs of a batch of `b` sequences
    /// of `t` positions, the read-out at one position. Every layer but the last runs at every
    /// position; the last computes keys and values everywhere, but its queries, output projection
    /// and feed-forward at the read-out position only, whose one query attends to all `t` keys.
    fn forward(&self, b: f64, t: f64) -> (f64, f64) {
        let (l, w, q, kv) = (self.layers, self.width, self.q, self.kv);
        if l < 1.0 {
            return (0.0, 0.0);
        }
        let per_token = w * q + 2.0 * w * kv + q * w + self.ffn; // q, k, v, o projections; feed-forward
        let products = b * 2.0 * t * t * q; // QKᵀ and PV, every query and key
        let attn_layer = if self.causal { products / 2.0 } else { products };
        let dense = (l - 1.0) * b * t * per_token + b * t * 2.0 * w * kv + b * (2.0 * w * q + self.ffn);
        let attn = (l - 1.0) * attn_layer + b * 2.0 * t * q;
        (2.0 * dense, 2.0 * attn)
    }
}

/// FLOPs of the matmuls in one FPT train step of the frozen `backbone` (2 per multiply-add), on a
/// batch of `batch` × `tokens` dense tokens of `dim` features, one read-out position, `classes`
/// outputs: the forward pass, then the backward pass's input gradients through every backbone
/// matmul (the layer norms and the input layer below train, so the gradient reaches the bottom;
/// frozen weights get no gradient), attention's backward counting twice its forward products (dS
/// and dP each need two), and the input and output layers' weight gradients plus the output
/// layer's input gradient (the input layer's own input needs none). Elementwise work (norms,
/// activations, softmax, dropout, the LSTM's gates) is not counted.
pub fn step_flops(backbone: &BackboneConfig, batch: i64, tokens: i64, dim: i64, classes: i64) -> f64 {
    let (b, t, d, c) = (batch as f64, tokens as f64, dim as f64, classes as f64);
    let w = backbone.width() as f64;
    // Input layer: forward and weight gradient. Output layer: forward, weight and input gradients.
    let wrapper = 2.0 * (b * t * 2.0 * d * w) + 3.0 * (b * 2.0 * w * c);
    let transformer = |shape: TransformerShape, positions: f64| {
        let (dense, attn) = shape.forward(b, positions);
        2.0 * dense + 3.0 * attn
    };
    let body = match backbone {
        // GPT-2: fused q/k/v (3w²) and projection (w²), MLP w × inner and back; causal.
        BackboneConfig::Gpt2(g) => {
            let inner = g.inner_dim() as f64;
            transformer(TransformerShape { layers: g.n_layer as f64, width: w, q: w, kv: w, ffn: 2.0 * w * inner, causal: true }, t)
        }
        // BERT: the same layer shape (intermediate and output dense), bidirectional attention
        // (every query sees every key: full T×T products).
        BackboneConfig::Bert(c) => {
            let inner = c.intermediate_size as f64;
            let shape = TransformerShape { layers: c.num_hidden_layers as f64, width: w, q: w, kv: w, ffn: 2.0 * w * inner, causal: false };
            transformer(shape, t)
        }
        // Llama: grouped-query attention (k and v kv_heads × head_dim wide), SwiGLU's gate, up
        // and down matmuls; causal; the BOS row the wrapper puts first is one more position.
        BackboneConfig::Llama(c) => {
            let hd = c.head_dim() as f64;
            let shape = TransformerShape {
                layers: c.num_hidden_layers as f64,
                width: w,
                q: c.num_attention_heads as f64 * hd,
                kv: c.kv_heads() as f64 * hd,
                ffn: 3.0 * w * c.intermediate_size as f64,
                causal: true,
            };
            transformer(shape, t + 1.0)
        }
        // LSTM: per layer, the input matmul W_i (4w × w) of all steps at once and the recurrent
        // W_h (4w × w) once per step, every step (the read-out needs the whole recurrence).
        // Backward: input gradients of both, except W_h's at step 0, whose input (the drawn
        // initial state) needs none.
        BackboneConfig::Lstm(c) => {
            let (l, gates) = (c.num_layers as f64, 4.0 * w * w);
            let forward = l * b * (t * gates + t * gates);
            let backward = l * b * (t * gates + (t - 1.0).max(0.0) * gates);
            2.0 * (forward + backward)
        }
    };
    wrapper + body
}

/// Seconds one size of the peak measurement may take; without native bf16 (a capped or older
/// CPU) a bf16 GEMM is emulated and 6 × 4096³ would take many minutes.
const PEAK_BUDGET_S: f64 = 3.0;

/// Best GFLOP/s of up to 6 `size`² matmuls within the budget (at least one), and that best
/// time, which tells whether the next size (8× the work) fits the budget. In bf16 on the CPU
/// the product is also timed as GPT-2's frozen layers compute it, on a weight packed once for
/// oneDNN (`Conv1D::from_frozen`), and the better of the two counts: GPT-2's products run
/// that way, so a peak of unpacked products alone would understate what the machine does.
fn matmul_gflops(size: i64, kind: Kind, device: Device) -> (f64, f64) {
    let a = Tensor::randn([size, size], (kind, device));
    let b = Tensor::randn([size, size], (kind, device));
    // (On a CPU without native bf16 the layer's forward is the same matmul, timed twice.)
    let packed = Conv1D::from_frozen(b.shallow_clone(), Tensor::zeros([size], (kind, device)));
    let mut products: Vec<Box<dyn Fn() -> Tensor>> = vec![Box::new(|| a.matmul(&b))];
    if kind == Kind::BFloat16 && device == Device::Cpu {
        products.push(Box::new(|| packed.forward(&a)));
    }
    let (mut best, started) = (f64::INFINITY, Instant::now());
    'products: for product in &products {
        for _ in 0..6 {
            sync(device);
            let t0 = Instant::now();
            let _c = product();
            sync(device);
            best = best.min(t0.elapsed().as_secs_f64());
            if started.elapsed().as_secs_f64() > PEAK_BUDGET_S * products.len() as f64 {
                break 'products;
            }
        }
    }
    (2.0 * (size as f64).powi(3) / best / 1e9, best)
}

/// The peak over square sizes 1024, 2048, 4096, stopping before a size whose one product
/// would exceed the budget; returns the GFLOP/s and the sizes measured.
fn matmul_peak(kind: Kind, device: Device) -> (f64, Vec<i64>) {
    let (mut peak, mut measured) = (0.0f64, Vec::new());
    for size in [1024, 2048, 4096] {
        let (gflops, seconds) = matmul_gflops(size, kind, device);
        peak = peak.max(gflops);
        measured.push(size);
        if 8.0 * seconds > PEAK_BUDGET_S {
            break;
        }
    }
    (peak, measured)
}

fn load_init(path: &PathBuf, vs: &nn::VarStore) -> Result<(Tensor, Tensor)> {
    let named: HashMap<String, Tensor> = Tensor::read_safetensors(path)
        .with_context(|| format!("reading {} (written by ref_fpt_bench.py --save-init)", path.display()))?
        .into_iter()
        .collect();
    tch::no_grad(|| -> Result<()> {
        for (name, var) in vs.variables() {
            let src = named.get(&name).with_context(|| format!("{}: no tensor {name}", path.display()))?;
            if src.size() != var.size() {
                bail!("{}: {name} has shape {:?}, the model has {:?}", path.display(), src.size(), var.size());
            }
            var.shallow_clone().copy_(&src.to_kind(var.kind()));
        }
        Ok(())
    })?;
    let get = |k: &str| named.get(k).map(|t| t.shallow_clone()).with_context(|| format!("{}: no tensor {k}", path.display()));
    Ok((get("bench.x")?, get("bench.y")?))
}

/// The backbone `args` ask for, and the folder of its pretrained weights (none for the random
/// gpt2 and lstm).
fn backbone_for(args: &Args) -> Result<(BackboneConfig, Option<PathBuf>)> {
    let name = args.backbone.name();
    if let Some(layers) = args.layers {
        if matches!(args.backbone, BenchBackbone::Minilm | BenchBackbone::Smollm2) {
            bail!("--layers {layers}: --backbone {name} is pretrained and keeps its own layers; --layers shapes gpt2 and lstm");
        }
        if layers <= 0 {
            bail!("--layers {layers}: must be positive");
        }
    }
    if args.width.is_some() && args.backbone != BenchBackbone::Lstm {
        bail!("--width sets the lstm's width; --backbone {name} has its own");
    }
    if args.model_dir.is_some() && !matches!(args.backbone, BenchBackbone::Minilm | BenchBackbone::Smollm2) {
        bail!("--model-dir names the minilm or smollm2 directory; --backbone {name} loads no weights");
    }
    let pretrained = |found: fn() -> Result<PathBuf>| -> Result<(BackboneConfig, Option<PathBuf>)> {
        let dir = match &args.model_dir {
            Some(dir) => dir.clone(),
            None => found()?,
        };
        let config = BackboneConfig::from_json_file(&dir.join("config.json")).with_context(|| format!("--backbone {name}"))?;
        Ok((config, Some(dir)))
    };
    match args.backbone {
        BenchBackbone::Gpt2 => {
            let mut gpt = Gpt2Config::preset("gpt2")?;
            gpt.n_layer = args.layers.unwrap_or(12);
            Ok((gpt.into(), None))
        }
        BenchBackbone::Lstm => {
            let mut lstm = LstmConfig::default();
            lstm.num_layers = args.layers.unwrap_or(lstm.num_layers);
            lstm.hidden_size = args.width.unwrap_or(lstm.hidden_size);
            lstm.validate().context("--layers/--width")?;
            Ok((BackboneConfig::Lstm(lstm), None))
        }
        BenchBackbone::Minilm => pretrained(minilm_dir),
        BenchBackbone::Smollm2 => pretrained(smollm2_dir),
    }
}

pub fn run(args: &Args) -> Result<()> {
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    let device = parse_device(&args.device)?;
    let threads = tch::get_num_threads();
    if args.matmul {
        // The peak: the best of three square sizes (small ones underuse the cores, and which
        // size is best depends on the machine), each within a time budget.
        let (fp32_gflops, fp32_sizes) = matmul_peak(Kind::Float, device);
        let (bf16_gflops, bf16_sizes) = matmul_peak(Kind::BFloat16, device);
        let sizes = if fp32_sizes.len() >= bf16_sizes.len() { fp32_sizes } else { bf16_sizes };
        let report = MatmulReport { device: format!("{device:?}"), threads, sizes, fp32_gflops, bf16_gflops };
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let precision: Precision = serde_json::from_value(serde_json::Value::String(args.precision.clone()))
        .with_context(|| format!("--precision {:?}: expected fp32 or bf16", args.precision))?;
    if args.steps == 0 || args.batch <= 0 || args.tokens <= 0 {
        bail!("--steps, --batch and --tokens must be positive");
    }

    if args.init.is_some() && args.backbone != BenchBackbone::Gpt2 {
        bail!(
            "--init (the loss-curve check from the reference's saved weights) is implemented for --backbone gpt2 only, not {}",
            args.backbone.name()
        );
    }

    tch::manual_seed(0);
    let (backbone, weights) = backbone_for(args)?;
    let mut fc = FptConfig::dense(args.dim, args.classes);
    fc.dropout = args.dropout;
    let vs = nn::VarStore::new(device);
    let build = || Fpt::new(&vs.root(), &backbone, &fc);
    // As `fpt train` builds it: shapes checked against the checkpoint, frozen, weights loaded.
    let mut model = match &weights {
        Some(dir) => build_checked(dir, build)?,
        None => build()?,
    };
    model.freeze(&vs, &FreezeSpec::paper())?;
    if let Some(dir) = &weights {
        load_weights(&vs, dir).with_context(|| format!("loading weights from {}", dir.display()))?;
    }
    let (x, y) = match &args.init {
        Some(path) => load_init(path, &vs)?,
        None => (
            Tensor::randn([args.batch, args.tokens, args.dim], (Kind::Float, Device::Cpu)),
            Tensor::randint(args.classes, [args.batch], (Kind::Int64, Device::Cpu)),
        ),
    };
    if x.size() != [args.batch, args.tokens, args.dim] {
        bail!("the saved batch has shape {:?}; pass the same --batch/--tokens/--dim as the reference", x.size());
    }
    let (x, y) = (x.to_device(device), y.to_device(device));
    model
        .set_precision(&vs, precision)
        .with_context(|| format!("--precision {} with --backbone {}", args.precision, args.backbone.name()))?;
    let mut trainable: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    trainable.sort_by(|a, b| a.0.cmp(&b.0));
    let mut adam = Adam::new(AdamConfig::default(), trainable);

    let mut losses = Vec::new();
    let mut step = || -> Result<()> {
        adam.zero_grad();
        let loss = model.forward(&x, true)?.cross_entropy_for_logits(&y);
        loss.backward();
        let _ = adam.clip_grad_norm(1.0);
        adam.step();
        losses.push(loss.detach());
        Ok(())
    };
    for _ in 0..args.warmup {
        step()?;
    }
    sync(device);
    let t0 = Instant::now();
    for _ in 0..args.steps {
        step()?;
    }
    sync(device);
    let dt = t0.elapsed().as_secs_f64() / args.steps as f64;
    let flops = step_flops(&backbone, args.batch, args.tokens, args.dim, args.classes);
    let report = StepReport {
        implementation: "fpt",
        backbone: args.backbone.name(),
        device: format!("{device:?}"),
        threads,
        precision,
        batch: args.batch,
        tokens: args.tokens,
        dim: args.dim,
        layers: backbone.layers(),
        width: backbone.width(),
        steps: args.steps,
        samples_per_s: args.batch as f64 / dt,
        ms_per_step: dt * 1e3,
        peak_rss_mb: peak_rss_mb(),
        step_gflop: flops / 1e9,
        gflops: flops / dt / 1e9,
        losses: losses.iter().map(|l| l.double_value(&[])).collect(),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fpt_model::{BertConfig, LlamaConfig};

    // Every case: batch 1, 1 feature per token, 1 class, width 4. The wrapper then costs
    // input layer 2·b·t·d·w = 8t FLOPs forward (and as much for its weight gradient) and output
    // layer 2·b·w·c = 8 (forward, weight gradient, input gradient): 16t + 24.

    #[test]
    fn gpt2_flops_match_a_hand_count() {
        // 2 layers, width 4, inner 16; 2 tokens.
        // Layer 0 (every position): 12w² = 192 MACs per token × 2 tokens = 384 MACs → 768 FLOPs;
        //   causal attention: QKᵀ + PV = 2·t²·w = 32 MACs, half of it → 16 MACs → 32 FLOPs.
        // Layer 1 (read-out at one position): k, v at 2 tokens: 2·2w² = 64 MACs → 128 FLOPs; q, o
        //   and MLP at 1: 2w² + 8w² = 160 MACs → 320 FLOPs; one query over 2 keys: 2·t·w = 16 MACs
        //   → 32 FLOPs.
        // Dense 1216, attention 64: 2·1216 + 3·64 = 2624; wrapper 16·2 + 24 = 56 → 2680.
        let cfg: BackboneConfig = Gpt2Config::custom(2, 4, 2).into();
        assert_eq!(step_flops(&cfg, 1, 2, 1, 1), 2680.0);
        // Linear in the batch.
        assert_eq!(step_flops(&cfg, 3, 2, 1, 1), 3.0 * 2680.0);
    }

    #[test]
    fn bert_flops_match_a_hand_count() {
        // 2 layers, width 4, intermediate 8; 2 tokens; bidirectional.
        // Layer 0: q, k, v, o 4w² = 64 + intermediate and output 2·w·8 = 64 → 128 MACs per token
        //   × 2 = 256 MACs → 512 FLOPs; attention, all of it: 2·t²·w = 32 MACs → 64 FLOPs.
        // Layer 1: k, v at 2 tokens: 64 MACs → 128 FLOPs; q, o and feed-forward at 1: 2w² + 64 =
        //   96 MACs → 192 FLOPs; one query over 2 keys: 16 MACs → 32 FLOPs.
        // Dense 832, attention 96: 1664 + 288 = 1952; wrapper 56 → 2008.
        let bert: BertConfig = serde_json::from_value(serde_json::json!({
            "hidden_size": 4, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 8
        }))
        .unwrap();
        assert_eq!(step_flops(&BackboneConfig::Bert(bert), 1, 2, 1, 1), 2008.0);
    }

    #[test]
    fn llama_flops_match_a_hand_count() {
        // 2 layers, width 4, 2 heads of 2 (q 4 wide), 1 kv head (k, v 2 wide), intermediate 8;
        // 2 tokens plus the BOS row: 3 positions.
        // Layer 0: q 16 + k 8 + v 8 + o 16 + SwiGLU 3·4·8 = 96 → 144 MACs per position × 3 = 432
        //   MACs → 864 FLOPs; causal attention: 2·T²·q = 72 MACs, half → 36 MACs → 72 FLOPs.
        // Layer 1: k, v at 3 positions: 3·16 = 48 MACs → 96 FLOPs; q, o and SwiGLU at 1: 16 + 16
        //   + 96 = 128 MACs → 256 FLOPs; one query over 3 keys: 2·3·4 = 24 MACs → 48 FLOPs.
        // Dense 1216, attention 120: 2432 + 360 = 2792; wrapper (2 tokens: BOS skips the input
        // layer) 56 → 2848.
        let llama = LlamaConfig::custom(2, 4, 2, 1, 8);
        assert_eq!(step_flops(&BackboneConfig::Llama(llama), 1, 2, 1, 1), 2848.0);
    }

    #[test]
    fn lstm_flops_match_a_hand_count() {
        // 2 layers, width 4; 3 tokens.
        // Per layer, forward: W_i 3 steps × 4w·w = 192 MACs, W_h 3 × 64 = 192 MACs. Backward
        // input gradients: W_i 192, W_h at steps 1 and 2 only: 128. 704 MACs → 1408 FLOPs per
        // layer, 2816 for two; wrapper 16·3 + 24 = 72 → 2888.
        let lstm = LstmConfig { num_layers: 2, hidden_size: 4, dropout: 0.1 };
        assert_eq!(step_flops(&BackboneConfig::Lstm(lstm), 1, 3, 1, 1), 2888.0);
    }

    #[test]
    fn options_that_do_not_fit_the_backbone_are_refused() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let parse = |line: &[&str]| Cli::try_parse_from([&["fpt"], line].concat()).map(|c| c.args);
        let err = |line: &[&str]| backbone_for(&parse(line).unwrap()).unwrap_err().to_string();
        assert!(err(&["--backbone", "minilm", "--layers", "2"]).contains("keeps its own layers"));
        assert!(err(&["--backbone", "gpt2", "--width", "64"]).contains("--width"));
        assert!(err(&["--backbone", "lstm", "--model-dir", "/tmp"]).contains("--model-dir"));
        assert!(parse(&["--backbone", "bert"]).is_err());
        let (lstm, weights) = backbone_for(&parse(&["--backbone", "lstm", "--layers", "2", "--width", "8"]).unwrap()).unwrap();
        assert_eq!((lstm.layers(), lstm.width(), weights), (2, 8, None));
        let (gpt, _) = backbone_for(&parse(&[]).unwrap()).unwrap();
        assert_eq!((gpt.model_type(), gpt.layers(), gpt.width()), ("gpt2", 12, 768));
        let init = parse(&["--backbone", "lstm", "--init", "x.safetensors"]).unwrap();
        assert!(run(&init).unwrap_err().to_string().contains("--backbone gpt2 only"));
    }
}
