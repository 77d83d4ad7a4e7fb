//! The Llama backbone in the FPT: its freeze groups (the paper's spec trains input, output and
//! the RMS norm gains; rotary positions have no parameters, so `pos` is empty), and the
//! zero-token overflow of the paper's recipe on the real SmolLM2-135M-Instruct, with the remedy
//! (the model's own BOS embedding before the tokens). Parity with `transformers` is in
//! `hf_parity.rs`, read-out rows and bf16 mode in `readout_rows_and_bf16.rs`, padding in
//! `padding.rs`.

mod common;

use fpt_model::params::count_by_group;
use fpt_model::{checkpoint, BackboneConfig, Fpt, FptConfig, FreezeSpec, LlamaConfig, ParamGroup, ParamGroups, Rows};
use tch::{nn, Device, Kind, Tensor};

fn tiny() -> BackboneConfig {
    let mut cfg = LlamaConfig::custom(3, 32, 4, 2, 64);
    cfg.max_position_embeddings = 24;
    BackboneConfig::Llama(cfg)
}

/// The BOS row takes one of Llama's positions, so a task may bring one token fewer; the others
/// take as many tokens as they have positions.
#[test]
fn the_bos_row_takes_one_position_from_the_task() {
    let cfg = tiny();
    assert_eq!((cfg.max_positions(), cfg.max_input_tokens()), (24, 23));
    let gpt2 = BackboneConfig::Gpt2(fpt_model::Gpt2Config::custom(1, 8, 2));
    assert_eq!(gpt2.max_input_tokens(), gpt2.max_positions());
}

/// Every variable has a group; `paper` trains exactly the input and output layers and the RMS
/// norm gains (two per block and the final one); `positions` holds nothing, so `paper,-pos` is
/// `paper`; the token embedding stays frozen (FPT reads its BOS row, which gets no gradient).
#[test]
fn paper_freeze_trains_input_output_and_rms_norm_gains_only() {
    let w = 32i64;
    for spec in ["paper", "paper,-pos"] {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Fpt::new(&vs.root(), &tiny(), &FptConfig::dense(6, 3)).unwrap();
        model.freeze(&vs, &FreezeSpec::parse(spec).unwrap()).unwrap();
        for name in vs.variables().keys() {
            assert!(model.param_group(name).is_some(), "{name} has no group");
        }
        let counts = count_by_group(&vs, &model).unwrap();
        let count = |g: ParamGroup| counts.get(&g).map(|c| (c.total, c.trainable)).unwrap_or((0, 0));
        assert_eq!(count(ParamGroup::Input), (6 * w + w, 6 * w + w), "{spec}");
        assert_eq!(count(ParamGroup::Output), (w * 3 + 3, w * 3 + 3), "{spec}");
        assert_eq!(count(ParamGroup::LayerNorms), ((2 * 3 + 1) * w, (2 * 3 + 1) * w), "{spec}");
        assert_eq!(count(ParamGroup::Positions), (0, 0), "{spec}: rotary positions have no parameters");
        // q 4·8 rows, k and v 2·8, o: per block w·(32 + 16 + 16) + 32·w.
        assert_eq!(count(ParamGroup::Attention), (3 * (w * 64 + 32 * w), 0), "{spec}");
        assert_eq!(count(ParamGroup::FeedForward), (3 * 3 * w * 64, 0), "{spec}");
        assert_eq!(count(ParamGroup::TokenEmbedding), (100 * w, 0), "{spec}");

        let logits = model.forward(&Tensor::randn([2, 5, 6], (Kind::Float, Device::Cpu)), true).unwrap();
        logits.cross_entropy_for_logits(&Tensor::from_slice(&[0i64, 2])).backward();
        for (name, t) in vs.variables() {
            let trained = matches!(model.param_group(&name).unwrap(), ParamGroup::Input | ParamGroup::Output | ParamGroup::LayerNorms);
            assert_eq!(t.requires_grad(), trained, "{spec}: {name}");
            assert_eq!(t.grad().defined(), trained, "{spec}: {name} gradient");
        }
    }
}

/// The FPT puts the BOS row (embed_tokens[bos_token_id]) at position 0: its logits are the
/// backbone's on [BOS; input projection] read at the last position.
#[test]
fn the_bos_row_comes_first_and_the_read_out_stays_at_the_last_token() {
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut fc = FptConfig::dense(6, 3);
    fc.dropout = 0.0;
    let model = Fpt::new(&vs.root(), &tiny(), &fc).unwrap();
    model.freeze(&vs, &FreezeSpec::paper()).unwrap();
    let x = Tensor::randn([2, 5, 6], (Kind::Float, Device::Cpu));
    let vars = vs.variables();
    let embeds = x.linear(&vars["input_layer.proj.weight"], Some(&vars["input_layer.proj.bias"]));
    let bos = vars["embed_tokens.weight"].get(1).view([1, 1, 32]).expand([2, 1, 32], false);
    let hidden = model.backbone().forward_rows(&Tensor::cat(&[&bos, &embeds], 1), false, Some(Rows { start: 5, len: 1 })).unwrap();
    let expected = hidden.squeeze_dim(1).linear(&vars["output_layer.proj.weight"], Some(&vars["output_layer.proj.bias"]));
    let ours = model.forward(&x, false).unwrap();
    assert!(ours.allclose(&expected, 1e-6, 1e-6, false), "{ours} vs {expected}");
    // Attention maps show the BOS position too.
    assert_eq!(model.attention_maps(&x).unwrap()[0].size(), [2, 4, 6, 6]);
}

fn finite(t: &Tensor) -> bool {
    t.isfinite().all().int64_value(&[]) != 0
}

/// The paper's recipe on real SmolLM2 weights, first step. Black patches make exactly-zero input
/// tokens (the input layer's bias starts at zero). Fed straight to the backbone, a zero token at
/// position 0 stays zero through every bias-free layer (causal attention sees only itself, no
/// position table is added), and each RMS norm's backward at zero scales the gradient by
/// 1/sqrt(eps) ≈ 316: the input gradient is not finite. With the BOS row first (what the FPT
/// does), every trainable gradient of a batch of black images is finite.
#[test]
fn zero_tokens_overflow_the_gradient_without_the_bos_row_and_not_with_it() {
    let dir = common::smollm2_dir();
    let cfg = BackboneConfig::from_json_file(&dir.join("config.json")).unwrap();
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = checkpoint::build_checked(&dir, || Fpt::new(&vs.root(), &cfg, &FptConfig::dense(48, 10))).unwrap();
    model.freeze(&vs, &FreezeSpec::paper()).unwrap();
    checkpoint::load_weights(&vs, &dir).unwrap();
    let (batch, seq) = (2i64, 8i64);
    let opts = (Kind::Float, Device::Cpu);

    // The remedy: the FPT (BOS row first), a black image and one with black first patches; a
    // training step's gradients are finite.
    let x = Tensor::rand([batch, seq, 48], opts);
    let _ = x.get(0).zero_();
    let _ = x.get(1).narrow(0, 0, 3).zero_();
    let logits = model.forward(&x, true).unwrap();
    logits.cross_entropy_for_logits(&Tensor::from_slice(&[3i64, 7])).backward();
    let mut checked = 0;
    for (name, t) in vs.trainable_variables().iter().enumerate() {
        let grad = t.grad();
        assert!(grad.defined() && finite(&grad), "trainable tensor {name}: gradient not finite");
        checked += 1;
    }
    assert_eq!(checked, 2 + 2 + 61, "input and output weight and bias, 61 RMS norm gains");

    // The failure: the backbone alone on a zero first token (the rest at the scale of the token
    // embeddings), read out at the last token. The input gradient overflows, and so do the
    // RMS norm gains' (the trained tensors of the paper's spec).
    for mut t in vs.trainable_variables() {
        t.zero_grad();
    }
    let rest = Tensor::randn([batch, seq - 1, 576], opts) * 0.13;
    let embeds = Tensor::cat(&[&Tensor::zeros([batch, 1, 576], opts), &rest], 1).set_requires_grad(true);
    let out = model.backbone().forward_rows(&embeds, false, Some(Rows { start: seq - 1, len: 1 })).unwrap();
    assert!(finite(&out), "the forward pass is finite");
    out.sum(Kind::Float).backward();
    let g = embeds.grad();
    let bad = g.isfinite().logical_not().sum(Kind::Int64).int64_value(&[]);
    println!("without the BOS row: {bad} of {} input gradients not finite", g.numel());
    assert!(!finite(&g.get(0).get(0)) && !finite(&g.get(1).get(0)), "without the BOS row the zero token's gradient should overflow");
    let gains_bad = vs.trainable_variables().iter().filter(|t| t.grad().defined() && !finite(&t.grad())).count();
    println!("without the BOS row: {gains_bad} of 61 RMS norm gain gradients not finite");
    assert!(gains_bad > 0);
}
