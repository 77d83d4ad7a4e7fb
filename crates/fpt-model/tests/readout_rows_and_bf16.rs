//! Two speed features must not change what is computed: the last layer restricted to the
//! read-out positions, and bf16 mode (frozen matrices resident in bf16). GPT-2, BERT, Llama, and
//! Qwen2 with a sliding window.

use fpt_model::tolerance::reordering_bound;
use fpt_model::{
    Backbone, BackboneConfig, BertConfig, Fpt, FptConfig, FreezeSpec, Gpt2Config, LlamaConfig, LstmConfig, Precision, Readout, Rows,
    Setting,
};
use tch::{nn, Device, Kind, Tensor};

fn gpt2() -> BackboneConfig {
    let mut cfg = Gpt2Config::custom(2, 32, 4);
    cfg.n_positions = 24;
    cfg.into()
}

fn bert() -> BackboneConfig {
    let cfg: BertConfig = serde_json::from_value(serde_json::json!({
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "max_position_embeddings": 24, "vocab_size": 10
    }))
    .unwrap();
    BackboneConfig::Bert(cfg)
}

/// Grouped-query attention (4 query heads, 2 key/value heads); the FPT puts its BOS row first.
fn llama() -> BackboneConfig {
    let mut cfg = LlamaConfig::custom(2, 32, 4, 2, 64);
    cfg.max_position_embeddings = 24;
    BackboneConfig::Llama(cfg)
}

/// Qwen2 as the Llama backbone computes it: q/k/v biases, and layer 1 attending through a 3-key
/// sliding window, shorter than the sequences below (so every path takes the windowed mask).
fn qwen2_window() -> BackboneConfig {
    let mut cfg = LlamaConfig::custom(2, 32, 4, 2, 64);
    cfg.max_position_embeddings = 24;
    cfg.model_type = Some("qwen2".into());
    cfg.use_sliding_window = true;
    cfg.sliding_window = Setting::Set(3);
    cfg.max_window_layers = Some(1);
    assert_eq!((cfg.window(0), cfg.window(1)), (None, Some(3)));
    BackboneConfig::Llama(cfg)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Float) - b.to_kind(Kind::Float)).abs().max().double_value(&[])
}

/// Hidden states and input gradients at `rows` equal the full forward's, narrowed, within
/// `tolerance::reordering_bound` (the restricted GEMMs have other shapes, so libtorch may block
/// and sum them in other orders; the full forward's fp64 evaluation is the truth).
#[test]
fn restricted_last_layer_equals_the_full_forward_at_those_rows() {
    for (name, cfg) in [("gpt2", gpt2()), ("bert", bert()), ("llama", llama()), ("qwen2-window", qwen2_window())] {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Backbone::new(&vs.root(), &cfg).unwrap();
        FreezeSpec::all().apply(&vs, &model).unwrap();
        let mut vs64 = nn::VarStore::new(Device::Cpu);
        let model64 = Backbone::new(&vs64.root(), &cfg).unwrap();
        FreezeSpec::all().apply(&vs64, &model64).unwrap();
        vs64.copy(&vs).unwrap();
        vs64.double();
        let t = 9;
        for rows in [Rows { start: t - 1, len: 1 }, Rows { start: t - 3, len: 3 }, Rows { start: 0, len: 2 }, Rows { start: 4, len: 2 }] {
            let x_full = Tensor::randn([3, t, 32], (Kind::Float, Device::Cpu)).set_requires_grad(true);
            let x_rows = x_full.detach().copy().set_requires_grad(true);
            let x_64 = x_full.detach().to_kind(Kind::Double).set_requires_grad(true);
            let full = model.forward_embeds(&x_full, false).unwrap().narrow(1, rows.start, rows.len);
            let full64 = model64.forward_embeds(&x_64, false).unwrap().narrow(1, rows.start, rows.len);
            let part = model.forward_rows(&x_rows, false, Some(rows)).unwrap();
            assert_eq!(part.size(), vec![3, rows.len, 32], "{name} {rows:?}");
            let (d, bound) = (max_diff(&full, &part), reordering_bound(&full, &full64));
            assert!(d <= bound, "{name} {rows:?}: hidden states differ by {d} (bound {bound})");
            let weights = Tensor::randn([3, rows.len, 32], (Kind::Float, Device::Cpu));
            (&full * &weights).sum(Kind::Float).backward();
            (&part * &weights).sum(Kind::Float).backward();
            (&full64 * weights.to_kind(Kind::Double)).sum(Kind::Double).backward();
            let (d, bound) = (max_diff(&x_full.grad(), &x_rows.grad()), reordering_bound(&x_full.grad(), &x_64.grad()));
            assert!(d <= bound, "{name} {rows:?}: input gradients differ by {d} (bound {bound})");
        }
        let bad = model.forward_rows(&Tensor::zeros([1, 4, 32], (Kind::Float, Device::Cpu)), false, Some(Rows { start: 3, len: 2 }));
        let msg = format!("{:#}", bad.unwrap_err());
        assert!(msg.contains("outside the sequence 0..4"), "{name}: {msg}");
    }
}

fn fpt(cfg: &BackboneConfig, freeze: &str, readout: Readout) -> (nn::VarStore, Fpt) {
    tch::manual_seed(2);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut fc = FptConfig::dense(6, 4);
    fc.readout = readout;
    fc.readout_tokens = 2;
    fc.dropout = 0.0;
    let model = Fpt::new(&vs.root(), cfg, &fc).unwrap();
    FreezeSpec::parse(freeze).unwrap().apply(&vs, &model).unwrap();
    (vs, model)
}

#[test]
fn bf16_keeps_frozen_matrices_in_bf16_and_everything_trainable_in_fp32() {
    for (name, cfg) in [("gpt2", gpt2()), ("bert", bert()), ("llama", llama()), ("qwen2-window", qwen2_window())] {
        for readout in [Readout::Last, Readout::First] {
            let (vs32, m32) = fpt(&cfg, "paper", readout);
            let (mut vs16, mut m16) = fpt(&cfg, "paper", readout);
            // Same weights whatever other tests do to libtorch's global generator meanwhile.
            vs16.copy(&vs32).unwrap();
            m16.set_precision(&vs16, Precision::Bf16).unwrap();
            let mut bf16_matrices = 0;
            for (var, t) in vs16.variables() {
                let expect = if !t.requires_grad() && t.dim() >= 2 { Kind::BFloat16 } else { Kind::Float };
                assert_eq!(t.kind(), expect, "{name}: {var}");
                bf16_matrices += (expect == Kind::BFloat16) as i32;
            }
            assert!(bf16_matrices >= 8, "{name}: only {bf16_matrices} matrices converted");
            assert_eq!(vs32.variables().len(), vs16.variables().len());

            let x = Tensor::randn([5, 7, 6], (Kind::Float, Device::Cpu));
            let (y32, y16) = (m32.forward(&x, true).unwrap(), m16.forward(&x, true).unwrap());
            assert_eq!(y16.kind(), Kind::Float, "{name}: logits (and so the loss) are fp32");
            let d = max_diff(&y32, &y16);
            let scale = y32.abs().max().double_value(&[]);
            assert!(d < 0.03 * scale.max(1.0), "{name} {readout:?}: bf16 logits differ by {d} (scale {scale})");
            assert!(d > 0.0, "{name}: bf16 mode computed exactly the fp32 result; it is not on");

            // Gradients reach every trainable tensor, in fp32, and agree with fp32's.
            let target = Tensor::from_slice(&[0i64, 1, 2, 3, 0, 1, 2, 3, 0, 1]);
            for y in [&y32, &y16] {
                y.reshape([-1, 4]).cross_entropy_for_logits(&target).backward();
            }
            let g32 = vs32.variables();
            for (var, t) in vs16.variables() {
                if !t.requires_grad() {
                    assert!(!t.grad().defined(), "{name}: frozen {var} got a gradient buffer");
                    continue;
                }
                let (g, r) = (t.grad(), g32[&var].grad());
                if !r.defined() {
                    continue; // wte and similar unused tables
                }
                assert_eq!(g.kind(), Kind::Float, "{name}: {var} gradient");
                let d = max_diff(&g, &r);
                let scale = r.abs().max().double_value(&[]);
                assert!(d <= 0.1 * scale + 1e-4, "{name}: {var} gradient differs by {d} (scale {scale})");
            }
        }
    }
}

#[test]
fn bf16_with_trainable_blocks_casts_per_call_and_the_lstm_refuses_it() {
    let (vs, mut model) = fpt(&gpt2(), "full", Readout::Last);
    model.set_precision(&vs, Precision::Bf16).unwrap();
    assert!(vs.variables().iter().all(|(n, t)| t.kind() == Kind::Float || n == "wte.weight"), "trainable tensors stay fp32");
    let y = model.forward(&Tensor::randn([2, 5, 6], (Kind::Float, Device::Cpu)), true).unwrap();
    y.sum(Kind::Float).backward();
    assert!(vs.variables()["h.0.attn.c_attn.weight"].grad().defined());

    let lstm = BackboneConfig::Lstm(LstmConfig { num_layers: 1, hidden_size: 8, dropout: 0.0 });
    let (vs, mut model) = fpt(&lstm, "paper", Readout::Last);
    let msg = format!("{:#}", model.set_precision(&vs, Precision::Bf16).unwrap_err());
    assert!(msg.contains("fp32 only"), "{msg}");
}
