//! Times one FPT train step (forward, loss, backward, Adam) of GPT-2 small (random init, paper
//! freeze) on CIFAR-10 shapes, batch 16 — the figure data loading is compared against in
//! docs/tasks.md. `cargo run --release -p fpt-train --example step_time [steps]`.

use fpt_model::{Fpt, FptConfig, FreezeSpec, Gpt2Config};
use std::time::Instant;
use tch::nn::OptimizerConfig;
use tch::{nn, Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let steps: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(4);
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Fpt::new(&vs.root(), &Gpt2Config::preset("gpt2")?.into(), &FptConfig::dense(48, 10))?;
    model.freeze(&vs, &FreezeSpec::paper())?;
    let mut opt = nn::Adam::default().build(&vs, 1e-3)?;
    let x = Tensor::randn([16, 64, 48], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(10, [16], (Kind::Int64, Device::Cpu));
    let mut times = Vec::new();
    for _ in 0..steps {
        let start = Instant::now();
        let loss = model.forward(&x, true)?.cross_entropy_for_logits(&y);
        opt.backward_step_clip_norm(&loss, 1.0);
        times.push(start.elapsed().as_secs_f64());
    }
    let rest = &times[1.min(times.len() - 1)..];
    let mean = rest.iter().sum::<f64>() / rest.len() as f64;
    println!(
        "GPT-2 small FPT train step, batch 16, 64×48 tokens, {} threads: {:.0} ms/step ({:.1} samples/s; first step {:.0} ms)",
        tch::get_num_threads(),
        mean * 1e3,
        16.0 / mean,
        times[0] * 1e3
    );
    Ok(())
}
