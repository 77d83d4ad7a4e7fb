//! One frozen GPT-2-small block (width 768, 12 heads, then the final layer norm), batch 16 ×
//! 49 tokens (MNIST's shape): forward, and forward + backward to the block's input (what a
//! frozen block costs inside an FPT train step), in fp32 and in bf16 mode; plus the same block
//! restricted to one read-out position (the last block of an FPT step).
//! `cargo bench -p fpt-model --bench block` (libtorch uses every core; set OMP_NUM_THREADS).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fpt_model::{Backbone, BackboneConfig, FreezeSpec, Gpt2Config, Precision, Rows};
use tch::{nn, Device, Kind, Tensor};

fn block(precision: Precision) -> (nn::VarStore, Backbone) {
    tch::manual_seed(0);
    let mut cfg = Gpt2Config::preset("gpt2").expect("the gpt2 preset exists");
    cfg.n_layer = 1;
    cfg.vocab_size = 1; // the token table is never used by FPT; keep it small here
    cfg.attn_pdrop = 0.0;
    cfg.resid_pdrop = 0.0;
    cfg.embd_pdrop = 0.0;
    let vs = nn::VarStore::new(Device::Cpu);
    let mut model = Backbone::new(&vs.root(), &BackboneConfig::Gpt2(cfg)).expect("builds");
    FreezeSpec::parse("paper").expect("valid spec").apply(&vs, &model).expect("freezes");
    model.set_precision(&vs, precision).expect("gpt2 supports both precisions");
    (vs, model)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("gpt2-small block, batch 16 x 49 tokens");
    group.throughput(Throughput::Elements(16));
    group.sample_size(20);
    for precision in [Precision::Fp32, Precision::Bf16] {
        let (_vs, model) = block(precision);
        let x = Tensor::randn([16, 49, 768], (Kind::Float, Device::Cpu));
        group.bench_function(format!("{precision:?} forward"), |b| {
            b.iter(|| tch::no_grad(|| model.forward_embeds(&x, false).expect("forward")))
        });
        group.bench_function(format!("{precision:?} forward+backward"), |b| {
            b.iter(|| {
                let xi = x.detach().set_requires_grad(true);
                model.forward_embeds(&xi, true).expect("forward").sum(Kind::Float).backward();
                xi.grad()
            })
        });
        let last = Some(Rows { start: 48, len: 1 });
        group.bench_function(format!("{precision:?} forward+backward, read-out row only"), |b| {
            b.iter(|| {
                let xi = x.detach().set_requires_grad(true);
                model.forward_rows(&xi, true, last).expect("forward").sum(Kind::Float).backward();
                xi.grad()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
