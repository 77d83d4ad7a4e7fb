//! `cargo xtask bench`: our FPT train step (`fpt bench`) against the PyTorch reference
//! (`benches/ref_fpt_bench.py`: Hugging Face `GPT2Model`, `BertModel`, `LlamaModel` or the
//! authors' `LNLSTM`, frozen as the paper's code freezes it), same thread count, same shapes,
//! one invocation; plus the libtorch matmul peak measured in the same run, and a loss-curve
//! comparison from shared initial weights (gpt2). Prints a table and the targets of issue 6
//! (gpt2 rows); `--json FILE` writes the same figures.

use crate::commands::setup;
use crate::util::{describe, workspace_root};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(clap::Args)]
pub struct Args {
    /// Also write every figure as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Timed steps per measurement (after the warm-up).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Measurements per implementation, alternating reference and ours; the best counts
    /// (interference on a shared machine only ever slows a run down).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Intra-op threads for both implementations (0: one per core, libtorch's default).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// GPT-2 small's shape with this many layers (12 is GPT-2 small); the gpt2 rows only (minilm
    /// and smollm2 keep their own, the lstm is the paper's 3 × 768).
    #[arg(long, default_value_t = 12)]
    pub layers: usize,
    /// Comma-separated backbones: gpt2 (random init), minilm (all-MiniLM-L6-v2), smollm2
    /// (SmolLM2-135M), lstm (the paper's layer-norm LSTM; fp32 only). The pretrained ones are read
    /// from `.venv/minilm` and `.venv/smollm2` (`cargo xtask setup`), or $FPT_MINILM_DIR and
    /// $FPT_SMOLLM2_DIR, the same directory for both implementations.
    #[arg(long, default_value = "gpt2")]
    pub backbones: String,
    /// cpu | cuda (both implementations)
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Comma-separated shapes: mnist (49 tokens × 16), cifar10 (64 tokens × 48).
    #[arg(long, default_value = "mnist,cifar10")]
    pub shapes: String,
    /// Comma-separated: fp32, bf16 (ours in bf16 mode against the reference under autocast).
    #[arg(long, default_value = "fp32,bf16")]
    pub precisions: String,
    /// Exit with an error when a target is missed.
    #[arg(long)]
    pub check: bool,
    /// Do not run `cargo xtask setup` first (use the fpt binary and .venv as they are).
    #[arg(long)]
    pub no_setup: bool,
    /// Python for the reference (default: the project's .venv/bin/python).
    #[arg(long)]
    pub python: Option<PathBuf>,
}

/// One implementation's figures for one backbone, shape and precision.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub implementation: String,
    pub backbone: String,
    /// The backbone's layers and width, as the implementation reports them.
    pub layers: i64,
    pub width: i64,
    pub shape: String,
    pub precision: String,
    pub samples_per_s: f64,
    pub ms_per_step: f64,
    pub peak_rss_mb: f64,
    /// Ours only: FLOP/s of the step's matmuls (see `fpt bench`).
    pub gflops: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub goal: String,
    pub value: String,
    pub met: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: String,
    pub threads: i64,
    pub device: String,
    pub backbones: Vec<String>,
    /// gpt2's layers.
    pub layers: usize,
    pub steps: usize,
    pub rounds: usize,
    pub matmul_fp32_gflops: f64,
    pub matmul_bf16_gflops: f64,
    pub measurements: Vec<Measurement>,
    pub loss_curve_max_abs_diff: Option<f64>,
    pub loss_curve_steps: usize,
    pub targets: Vec<Target>,
}

fn shape_dims(shape: &str) -> Result<(usize, usize)> {
    match shape {
        "mnist" => Ok((49, 16)),
        "cifar10" => Ok((64, 48)),
        other => bail!("--shapes: unknown shape {other:?} (expected mnist or cifar10)"),
    }
}

/// The backbones `fpt bench` and the reference both build.
pub const BACKBONES: [&str; 4] = ["gpt2", "minilm", "smollm2", "lstm"];

fn parse_backbones(text: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !BACKBONES.contains(&name) {
            bail!("--backbones: unknown backbone {name:?} (expected {})", BACKBONES.join(", "));
        }
        if !out.iter().any(|b| b == name) {
            out.push(name.to_string());
        }
    }
    if out.is_empty() {
        bail!("--backbones: name at least one of {}", BACKBONES.join(", "));
    }
    Ok(out)
}

/// The Hugging Face directory of a pretrained backbone, as `cargo xtask setup` installs it (or
/// $FPT_MINILM_DIR / $FPT_SMOLLM2_DIR), passed to both implementations; `None` for the random ones.
fn model_dir(root: &Path, backbone: &str) -> Result<Option<PathBuf>> {
    let (env, default) = match backbone {
        "minilm" => ("FPT_MINILM_DIR", ".venv/minilm"),
        "smollm2" => ("FPT_SMOLLM2_DIR", ".venv/smollm2"),
        _ => return Ok(None),
    };
    let dir = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| root.join(default));
    if !dir.join("config.json").is_file() {
        bail!("backbone {backbone}: {} holds no config.json; run `cargo xtask setup` or set {env}", dir.display());
    }
    Ok(Some(dir))
}

/// The flags both implementations take for `backbone`: its name, its directory, and `--layers`
/// for gpt2.
fn backbone_flags(backbone: &str, layers: usize, dir: Option<&Path>) -> Vec<String> {
    let mut flags = vec!["--backbone".to_string(), backbone.to_string()];
    if backbone == "gpt2" {
        flags.extend(["--layers".to_string(), layers.to_string()]);
    }
    if let Some(dir) = dir {
        flags.extend(["--model-dir".to_string(), dir.display().to_string()]);
    }
    flags
}

fn run_json(cmd: &mut Command) -> Result<Value> {
    eprintln!("+ {}", describe(cmd));
    let out = cmd.output().with_context(|| format!("starting {}", describe(cmd)))?;
    if !out.status.success() {
        bail!("{} failed with {}:\n{}", describe(cmd), out.status, String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("{} printed no JSON line:\n{text}", describe(cmd)))?;
    serde_json::from_str(line).with_context(|| format!("{}: not JSON: {line}", describe(cmd)))
}

fn num(v: &Value, key: &str) -> Result<f64> {
    v.get(key).and_then(Value::as_f64).with_context(|| format!("bench output lacks the number {key}: {v}"))
}

fn losses(v: &Value) -> Result<Vec<f64>> {
    v.get("losses")
        .and_then(Value::as_array)
        .context("bench output lacks losses")?
        .iter()
        .map(|l| l.as_f64().context("a loss is not a number"))
        .collect()
}

struct Runner {
    fpt: PathBuf,
    python: PathBuf,
    script: PathBuf,
    threads: usize,
    device: String,
}

/// What one measurement runs: the backbone's flags ([`backbone_flags`]), the shape, the steps.
struct Job<'a> {
    backbone: &'a [String],
    tokens: usize,
    dim: usize,
    steps: usize,
    warmup: usize,
}

impl Runner {
    fn common(&self, cmd: &mut Command, job: &Job) {
        cmd.current_dir(workspace_root()).args(job.backbone);
        cmd.args(["--tokens", &job.tokens.to_string(), "--dim", &job.dim.to_string()]);
        cmd.args(["--steps", &job.steps.to_string(), "--warmup", &job.warmup.to_string()]);
        cmd.args(["--threads", &self.threads.to_string(), "--device", &self.device]);
    }

    fn ours(&self, job: &Job, extra: &[&str]) -> Result<Value> {
        let mut cmd = Command::new(&self.fpt);
        cmd.arg("bench");
        self.common(&mut cmd, job);
        run_json(cmd.args(extra))
    }

    fn reference(&self, job: &Job, extra: &[&str]) -> Result<Value> {
        let mut cmd = Command::new(&self.python);
        cmd.arg(&self.script);
        self.common(&mut cmd, job);
        run_json(cmd.args(extra))
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| t.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cpu}, {cores} cores")
}

pub fn measure(args: &Args) -> Result<Report> {
    let root = workspace_root();
    let runner = Runner {
        fpt: root.join("target/release/fpt"),
        python: args.python.clone().unwrap_or_else(|| root.join(".venv/bin/python")),
        script: root.join("benches/ref_fpt_bench.py"),
        threads: args.threads,
        device: args.device.clone(),
    };
    let backbones = parse_backbones(&args.backbones)?;
    let flags: Vec<Vec<String>> =
        backbones.iter().map(|b| Ok(backbone_flags(b, args.layers, model_dir(&root, b)?.as_deref()))).collect::<Result<_>>()?;
    if !runner.fpt.exists() || (args.python.is_none() && !runner.python.exists()) {
        bail!("{} or {} is missing; run `cargo xtask setup` first", runner.fpt.display(), runner.python.display());
    }
    let peak = {
        let mut cmd = Command::new(&runner.fpt);
        cmd.args(["bench", "--matmul", "--threads", &args.threads.to_string(), "--device", &args.device]);
        run_json(&mut cmd)?
    };
    let mut measurements = Vec::new();
    let mut threads = 0;
    for (backbone, flags) in backbones.iter().zip(&flags) {
        for shape in args.shapes.split(',').map(str::trim) {
            let (tokens, dim) = shape_dims(shape)?;
            for precision in args.precisions.split(',').map(str::trim) {
                let (ours_flags, ref_flags): (&[&str], &[&str]) = match precision {
                    "fp32" => (&["--precision", "fp32"], &[]),
                    "bf16" => (&["--precision", "bf16"], &["--bf16"]),
                    other => bail!("--precisions: unknown precision {other:?} (expected fp32 or bf16)"),
                };
                if backbone == "lstm" && precision == "bf16" {
                    eprintln!("lstm {shape} bf16: skipped (our LSTM baseline runs in fp32 only)");
                    continue;
                }
                let job = Job { backbone: flags, tokens, dim, steps: args.steps, warmup: args.warmup };
                let (mut r, mut o): (Option<Value>, Option<Value>) = (None, None);
                let faster = |best: Option<Value>, new: Value| -> Result<Option<Value>> {
                    Ok(Some(match best {
                        Some(b) if num(&b, "samples_per_s")? >= num(&new, "samples_per_s")? => b,
                        _ => new,
                    }))
                };
                for _ in 0..args.rounds.max(1) {
                    r = faster(r, runner.reference(&job, ref_flags)?)?;
                    o = faster(o, runner.ours(&job, ours_flags)?)?;
                }
                let (r, o) = (r.context("no reference measurement")?, o.context("no measurement of ours")?);
                threads = num(&o, "threads")? as i64;
                if num(&r, "threads")? as i64 != threads {
                    bail!("the reference ran {} threads and ours {threads}; pass --threads", num(&r, "threads")?);
                }
                for (name, v) in [("reference", &r), ("fpt", &o)] {
                    measurements.push(Measurement {
                        implementation: name.into(),
                        backbone: backbone.clone(),
                        layers: num(v, "layers")? as i64,
                        width: num(v, "width")? as i64,
                        shape: shape.into(),
                        precision: precision.into(),
                        samples_per_s: num(v, "samples_per_s")?,
                        ms_per_step: num(v, "ms_per_step")?,
                        peak_rss_mb: num(v, "peak_rss_mb")?,
                        gflops: v.get("gflops").and_then(Value::as_f64),
                    });
                }
            }
        }
    }
    // Loss curves from the same initial weights and batch, dropout off, no warm-up (gpt2: the
    // reference saves GPT2Model's weights for `fpt bench --init`).
    let curve_steps = 20;
    let max_diff = match backbones.iter().position(|b| b == "gpt2") {
        None => None,
        Some(i) => {
            let init = std::env::temp_dir().join(format!("fpt-bench-init-{}.safetensors", std::process::id()));
            let init_s = init.to_string_lossy().into_owned();
            let (tokens, dim) = shape_dims("mnist")?;
            let job = Job { backbone: &flags[i], tokens, dim, steps: curve_steps, warmup: 0 };
            let r = runner.reference(&job, &["--dropout", "0", "--save-init", &init_s])?;
            let o = runner.ours(&job, &["--dropout", "0", "--init", &init_s]);
            let _ = std::fs::remove_file(&init);
            let (lr, lo) = (losses(&r)?, losses(&o?)?);
            if lr.len() != lo.len() || lr.is_empty() {
                bail!("loss curves of different lengths: reference {}, ours {}", lr.len(), lo.len());
            }
            Some(lr.iter().zip(&lo).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max))
        }
    };

    let mut report = Report {
        machine: machine(),
        threads,
        device: args.device.clone(),
        backbones,
        layers: args.layers,
        steps: args.steps,
        rounds: args.rounds.max(1),
        matmul_fp32_gflops: num(&peak, "fp32_gflops")?,
        matmul_bf16_gflops: num(&peak, "bf16_gflops")?,
        measurements,
        loss_curve_max_abs_diff: max_diff,
        loss_curve_steps: curve_steps,
        targets: Vec::new(),
    };
    report.targets = targets(&report);
    Ok(report)
}

fn find<'a>(ms: &'a [Measurement], implementation: &str, backbone: &str, shape: &str, precision: &str) -> Option<&'a Measurement> {
    ms.iter().find(|m| m.implementation == implementation && m.backbone == backbone && m.shape == shape && m.precision == precision)
}

/// Issue 6's targets, each from figures of this one run: the gpt2 rows only (the targets were
/// set for GPT-2 small; the other backbones are measured, not judged).
pub fn targets(r: &Report) -> Vec<Target> {
    let mut out = Vec::new();
    for ours in r.measurements.iter().filter(|m| m.implementation == "fpt" && m.backbone == "gpt2") {
        let Some(reference) = find(&r.measurements, "reference", "gpt2", &ours.shape, &ours.precision) else { continue };
        let speed = ours.samples_per_s / reference.samples_per_s;
        let (goal, want) =
            if ours.precision == "bf16" { ("≥ 1.30× the reference under autocast", 1.3) } else { ("≥ 1.05× the reference", 1.05) };
        let tag = format!("{} {}", ours.shape, ours.precision);
        out.push(Target { name: format!("speed {tag}"), goal: goal.into(), value: format!("{speed:.2}×"), met: speed >= want });
        out.push(Target {
            name: format!("peak RSS {tag}"),
            goal: "≤ the reference's".into(),
            value: format!("{:.0} MB vs {:.0} MB", ours.peak_rss_mb, reference.peak_rss_mb),
            met: ours.peak_rss_mb <= reference.peak_rss_mb,
        });
        if ours.precision == "bf16" {
            let frac = ours.gflops.unwrap_or(0.0) / r.matmul_bf16_gflops;
            out.push(Target {
                name: format!("bf16 peak fraction {}", ours.shape),
                goal: "≥ 65% of the bf16 matmul peak".into(),
                value: format!("{:.0}%", frac * 100.0),
                met: frac >= 0.65,
            });
        }
    }
    if let Some(d) = r.loss_curve_max_abs_diff {
        out.push(Target {
            name: format!("loss curve ({} steps, fp32)", r.loss_curve_steps),
            goal: "max |Δloss| ≤ 1e-4".into(),
            value: format!("{d:.1e}"),
            met: d <= 1e-4,
        });
    }
    out
}

/// A backbone as the header names it, with the shape our side reported.
fn describe_backbone(r: &Report, backbone: &str) -> String {
    let what = match backbone {
        "gpt2" => "GPT-2 small's shape, random init",
        "minilm" => "all-MiniLM-L6-v2",
        "smollm2" => "SmolLM2-135M, BOS row first",
        "lstm" => "layer-norm LSTM, random init",
        _ => "",
    };
    match r.measurements.iter().find(|m| m.backbone == backbone) {
        Some(m) => format!("{backbone} ({what}, {} layers × {})", m.layers, m.width),
        None => format!("{backbone} ({what})"),
    }
}

pub fn render(r: &Report) -> String {
    let backbones: Vec<String> = r.backbones.iter().map(|b| describe_backbone(r, b)).collect();
    let mut s = format!(
        "{} · {} threads · device {} · batch 16 · best of {} rounds of {} timed steps\nbackbones: {}\nlibtorch matmul peak (square 1024–4096, best of up to 6 each within 3 s): fp32 {:.0} GFLOP/s, bf16 {:.0} GFLOP/s\n\n",
        r.machine,
        r.threads,
        r.device,
        r.rounds,
        r.steps,
        backbones.join(", "),
        r.matmul_fp32_gflops,
        r.matmul_bf16_gflops
    );
    s.push_str(&format!(
        "{:<8} {:<8} {:<9} {:<12} {:>10} {:>9} {:>12} {:>9} {:>7}\n",
        "backbone", "shape", "precision", "impl", "samples/s", "ms/step", "peak RSS MB", "GFLOP/s", "% peak"
    ));
    for m in &r.measurements {
        let peak = if m.precision == "bf16" { r.matmul_bf16_gflops } else { r.matmul_fp32_gflops };
        let (gf, pct) = match m.gflops {
            Some(g) => (format!("{g:.0}"), format!("{:.0}%", 100.0 * g / peak)),
            None => ("-".into(), "-".into()),
        };
        let name = if m.implementation == "reference" && m.precision == "bf16" {
            "ref+autocast"
        } else if m.implementation == "reference" {
            "reference"
        } else {
            "fpt"
        };
        s.push_str(&format!(
            "{:<8} {:<8} {:<9} {:<12} {:>10.2} {:>9.1} {:>12.0} {:>9} {:>7}\n",
            m.backbone, m.shape, m.precision, name, m.samples_per_s, m.ms_per_step, m.peak_rss_mb, gf, pct
        ));
    }
    s.push_str("\ntargets (gpt2 rows):\n");
    for t in &r.targets {
        s.push_str(&format!("  [{}] {:<28} {:<36} {}\n", if t.met { "met " } else { "MISS" }, t.name, t.goal, t.value));
    }
    s
}

pub fn run(args: &Args) -> Result<()> {
    if !args.no_setup {
        setup::run(&setup::Args { no_build: false })?;
    }
    let report = measure(args)?;
    let text = render(&report);
    println!("{text}");
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    let missed: Vec<&str> = report.targets.iter().filter(|t| !t.met).map(|t| t.name.as_str()).collect();
    if args.check && !missed.is_empty() {
        bail!("targets missed: {}", missed.join(", "));
    }
    Ok(())
}

fn write_json(path: &Path, report: &Report) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(report)?).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(implementation: &str, backbone: &str, precision: &str, sps: f64, rss: f64, gflops: Option<f64>) -> Measurement {
        let (layers, width) = if backbone == "minilm" { (6, 384) } else { (12, 768) };
        Measurement {
            implementation: implementation.into(),
            backbone: backbone.into(),
            layers,
            width,
            shape: "mnist".into(),
            precision: precision.into(),
            samples_per_s: sps,
            ms_per_step: 16e3 / sps,
            peak_rss_mb: rss,
            gflops,
        }
    }

    fn report(measurements: Vec<Measurement>, backbones: &[&str], loss_curve: Option<f64>) -> Report {
        let mut r = Report {
            machine: "test".into(),
            threads: 2,
            device: "cpu".into(),
            backbones: backbones.iter().map(|b| b.to_string()).collect(),
            layers: 12,
            steps: 20,
            rounds: 2,
            matmul_fp32_gflops: 200.0,
            matmul_bf16_gflops: 400.0,
            measurements,
            loss_curve_max_abs_diff: loss_curve,
            loss_curve_steps: 20,
            targets: vec![],
        };
        r.targets = targets(&r);
        r
    }

    #[test]
    fn targets_compare_within_one_run() {
        let r = report(
            vec![
                m("reference", "gpt2", "fp32", 10.0, 2000.0, None),
                m("fpt", "gpt2", "fp32", 10.6, 1500.0, Some(150.0)),
                m("reference", "gpt2", "bf16", 10.0, 2000.0, None),
                m("fpt", "gpt2", "bf16", 12.0, 2100.0, Some(270.0)),
            ],
            &["gpt2"],
            Some(2e-5),
        );
        let met = |name: &str| r.targets.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no target {name}")).met;
        assert!(met("speed mnist fp32"));
        assert!(!met("speed mnist bf16"), "1.2× is below 1.3×");
        assert!(met("peak RSS mnist fp32"));
        assert!(!met("peak RSS mnist bf16"));
        assert!(met("bf16 peak fraction mnist"), "270 of 400 is 67.5%");
        assert!(met("loss curve (20 steps, fp32)"));
        let text = render(&r);
        assert!(text.contains("ref+autocast") && text.contains("MISS") && text.contains("68%"), "{text}");
        assert!(text.contains("gpt2 (GPT-2 small's shape, random init, 12 layers × 768)"), "{text}");
    }

    #[test]
    fn targets_judge_the_gpt2_rows_only() {
        // minilm's ours is slower than its reference: measured and shown, not a target.
        let r = report(
            vec![
                m("reference", "gpt2", "fp32", 10.0, 2000.0, None),
                m("fpt", "gpt2", "fp32", 10.6, 1500.0, Some(150.0)),
                m("reference", "minilm", "fp32", 50.0, 800.0, None),
                m("fpt", "minilm", "fp32", 40.0, 900.0, Some(100.0)),
            ],
            &["gpt2", "minilm"],
            None,
        );
        let names: Vec<&str> = r.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["speed mnist fp32", "peak RSS mnist fp32"]);
        assert!(r.targets.iter().all(|t| t.met), "{:?}", r.targets);
        // A run without gpt2 has rows and no targets (and no loss curve).
        let r = report(r.measurements.iter().filter(|m| m.backbone == "minilm").cloned().collect(), &["minilm"], None);
        assert!(r.targets.is_empty());
        let text = render(&r);
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("minilm ")).collect();
        assert_eq!(rows.len(), 2, "{text}");
        assert!(rows[1].split_whitespace().take(4).eq(["minilm", "mnist", "fp32", "fpt"]), "{text}");
        assert!(text.contains("backbone shape") && text.contains("minilm (all-MiniLM-L6-v2, 6 layers × 384)"), "{text}");
        let json: Value = serde_json::to_value(&r).unwrap();
        assert_eq!(json["measurements"][0]["backbone"], "minilm");
        assert_eq!(json["backbones"][0], "minilm");
    }

    #[test]
    fn backbones_parse_and_bring_their_flags() {
        assert_eq!(parse_backbones("gpt2").unwrap(), ["gpt2"]);
        assert_eq!(parse_backbones(" gpt2,minilm ,smollm2,lstm,gpt2").unwrap(), ["gpt2", "minilm", "smollm2", "lstm"]);
        assert!(parse_backbones("gpt2,bert").unwrap_err().to_string().contains("unknown backbone \"bert\""));
        assert!(parse_backbones(",").is_err());
        assert_eq!(backbone_flags("gpt2", 3, None), ["--backbone", "gpt2", "--layers", "3"]);
        assert_eq!(backbone_flags("lstm", 3, None), ["--backbone", "lstm"]);
        assert_eq!(backbone_flags("smollm2", 3, Some(Path::new("/m/smollm2"))), ["--backbone", "smollm2", "--model-dir", "/m/smollm2"]);
        assert_eq!(model_dir(Path::new("/nonexistent"), "gpt2").unwrap(), None);
        assert_eq!(model_dir(Path::new("/nonexistent"), "lstm").unwrap(), None);
    }

    #[test]
    fn unknown_shapes_and_precisions_are_refused() {
        assert!(shape_dims("imagenet").unwrap_err().to_string().contains("unknown shape"));
    }
}
