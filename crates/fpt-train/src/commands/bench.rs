//! `fpt bench`: the FPT train step (forward, loss, backward, clip, Adam) of a frozen GPT-2 on a
//! fixed batch, timed, as `benches/ref_fpt_bench.py` times the PyTorch reference; and
//! `fpt bench --matmul`, libtorch's matmul peak on this device. Prints one JSON object;
//! `cargo xtask bench` runs both side by side and compares.

use crate::adam::{Adam, AdamConfig};
use crate::device::parse_device;
use anyhow::{bail, Context, Result};
use fpt_model::{Fpt, FptConfig, FreezeSpec, Gpt2Config, Precision};
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

#[derive(clap::Args, Debug)]
pub struct Args {
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
    /// GPT-2 small's shape with this many layers.
    #[arg(long, default_value_t = 12)]
    pub layers: i64,
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
    /// to compare loss curves.
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
    device: String,
    threads: i32,
    precision: Precision,
    batch: i64,
    tokens: i64,
    dim: i64,
    layers: i64,
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

/// FLOPs of the matmuls in one FPT train step of a frozen GPT-2 (2 per multiply-add): the
/// forward pass, then the backward pass's input gradients (every layer: the layer norms and the
/// positions below are trained) and the input and output layers' weight gradients. The last
/// block computes its queries, projections and feed-forward at the one read-out position only.
/// Causal attention counts half of the T×T products. Elementwise work is not counted.
pub fn step_flops(batch: i64, tokens: i64, dim: i64, classes: i64, layers: i64, width: i64) -> f64 {
    let (b, t, d, c, l, w) = (batch as f64, tokens as f64, dim as f64, classes as f64, layers as f64, width as f64);
    let block_per_token = 2.0 * 12.0 * w * w; // qkv 3w², proj w², fc 4w², proj 4w²
    let attn_per_layer = b * 2.0 * t * t * w; // QKᵀ and PV, causal half, ×2 flops
    let full_blocks = (l - 1.0).max(0.0) * (b * t * block_per_token + attn_per_layer);
    // Last block: keys and values everywhere, everything else at one position per example.
    let last = b * t * 2.0 * 2.0 * w * w + b * 2.0 * 10.0 * w * w + b * 4.0 * t * w;
    let io = b * t * 2.0 * d * w + b * 2.0 * w * c;
    let forward = full_blocks + last + io;
    // Backward: input gradients of every matmul; attention's backward has twice forward's
    // products; weight gradients only for the trained input and output layers.
    let attn_total = (l - 1.0).max(0.0) * attn_per_layer + b * 4.0 * t * w;
    forward + (forward - attn_total) + 2.0 * attn_total + io
}

/// Seconds one size of the peak measurement may take; without native bf16 (a capped or older
/// CPU) a bf16 GEMM is emulated and 6 × 4096³ would take many minutes.
const PEAK_BUDGET_S: f64 = 3.0;

/// Best GFLOP/s of up to 6 `size`² matmuls within the budget (at least one), and that best
/// time, which tells whether the next size (8× the work) fits the budget.
fn matmul_gflops(size: i64, kind: Kind, device: Device) -> (f64, f64) {
    let a = Tensor::randn([size, size], (kind, device));
    let b = Tensor::randn([size, size], (kind, device));
    let (mut best, started) = (f64::INFINITY, Instant::now());
    for _ in 0..6 {
        sync(device);
        let t0 = Instant::now();
        let _c = a.matmul(&b);
        sync(device);
        best = best.min(t0.elapsed().as_secs_f64());
        if started.elapsed().as_secs_f64() > PEAK_BUDGET_S {
            break;
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

    tch::manual_seed(0);
    let mut gpt = Gpt2Config::preset("gpt2")?;
    gpt.n_layer = args.layers;
    let width = gpt.n_embd;
    let mut fc = FptConfig::dense(args.dim, args.classes);
    fc.dropout = args.dropout;
    let vs = nn::VarStore::new(device);
    let mut model = Fpt::new(&vs.root(), &gpt.into(), &fc)?;
    model.freeze(&vs, &FreezeSpec::paper())?;
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
    model.set_precision(&vs, precision)?;
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
    let flops = step_flops(args.batch, args.tokens, args.dim, args.classes, args.layers, width);
    let report = StepReport {
        implementation: "fpt",
        device: format!("{device:?}"),
        threads,
        precision,
        batch: args.batch,
        tokens: args.tokens,
        dim: args.dim,
        layers: args.layers,
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
