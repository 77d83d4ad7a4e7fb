//! Freeze groups, the FPT wrapper's layers and read-out, and Hugging Face's random init.

use fpt_model::params::count_by_group;
use fpt_model::{Fpt, FptConfig, FreezeSpec, Gpt2, Gpt2Config, InputSpec, ParamGroup, ParamGroups};
use tch::nn::OptimizerConfig;
use tch::{nn, Device, Kind, Tensor};

fn tiny_backbone() -> Gpt2Config {
    let mut cfg = Gpt2Config::custom(2, 32, 4);
    cfg.vocab_size = 20;
    cfg.n_positions = 24;
    cfg
}

fn build(cfg: &FptConfig, freeze: &str) -> (nn::VarStore, Fpt) {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Fpt::new(&vs.root(), &tiny_backbone().into(), cfg).unwrap();
    model.freeze(&vs, &FreezeSpec::parse(freeze).unwrap()).unwrap();
    (vs, model)
}

#[test]
fn frozen_tensors_get_no_gradient_and_never_reach_the_optimizer() {
    for spec in ["paper", "full", "all,+out", "paper,+attn", "paper,-pos,-ln"] {
        let freeze = FreezeSpec::parse(spec).unwrap();
        let (vs, model) = build(&FptConfig::dense(6, 3), spec);
        let trainable_by_group: i64 = count_by_group(&vs, &model).unwrap().values().map(|c| c.trainable).sum();
        let trainable_vars: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
        assert_eq!(trainable_by_group, trainable_vars, "{spec}");
        let opt = nn::Adam::default().build(&vs, 1e-3).unwrap();
        let in_optimizer: i64 = opt.trainable_variables().iter().map(|t| t.numel() as i64).sum();
        assert_eq!(in_optimizer, trainable_vars, "{spec}: optimizer sees frozen tensors");

        let x = Tensor::randn([4, 7, 6], (Kind::Float, Device::Cpu));
        let logits = model.forward(&x, true).unwrap();
        logits.cross_entropy_for_logits(&Tensor::from_slice(&[0i64, 1, 2, 0])).backward();
        for (name, t) in vs.variables() {
            let group = model.param_group(&name).unwrap();
            let frozen = freeze.is_frozen(group);
            assert_eq!(t.requires_grad(), !frozen, "{spec}: {name} requires_grad");
            if frozen || group == ParamGroup::TokenEmbedding {
                // wte is never used by FPT, so it gets no gradient even when trainable.
                assert!(!t.grad().defined(), "{spec}: {name} has a gradient");
            } else {
                assert!(t.grad().defined(), "{spec}: trainable {name} got no gradient");
            }
        }
    }
}

#[test]
fn paper_default_trains_only_input_output_positions_layer_norms() {
    let (vs, model) = build(&FptConfig::dense(48, 10), "paper");
    let counts = count_by_group(&vs, &model).unwrap();
    let w = 32i64;
    assert_eq!(counts[&ParamGroup::Input].trainable, 48 * w + w);
    assert_eq!(counts[&ParamGroup::Output].trainable, w * 10 + 10);
    assert_eq!(counts[&ParamGroup::Positions].trainable, 24 * w);
    assert_eq!(counts[&ParamGroup::LayerNorms].trainable, (2 * 2 + 1) * 2 * w);
    assert_eq!(counts[&ParamGroup::Attention].trainable, 0);
    assert_eq!(counts[&ParamGroup::FeedForward].trainable, 0);
    assert_eq!(counts[&ParamGroup::Attention].total, 2 * (w * 3 * w + 3 * w + w * w + w));
    assert_eq!(counts[&ParamGroup::FeedForward].total, 2 * (w * 4 * w + 4 * w + 4 * w * w + w));
}

#[test]
fn input_projection_is_orthogonal_with_gain_and_zero_bias() {
    let (vs, _) = build(&FptConfig::dense(6, 3), "paper");
    let vars = vs.variables();
    let w = &vars["input_layer.proj.weight"]; // [width, dim] = [32, 6]
    assert_eq!(w.size(), vec![32, 6]);
    let gram = w.transpose(0, 1).matmul(w);
    let expected = Tensor::eye(6, (Kind::Float, Device::Cpu)) * (1.41f64 * 1.41);
    assert!(gram.allclose(&expected, 1e-4, 1e-4, false), "W^T W = {gram}");
    assert_eq!(vars["input_layer.proj.bias"].abs().sum(Kind::Float).double_value(&[]), 0.0);
}

#[test]
fn mlps_tokens_and_multi_token_readout() {
    let cfg = FptConfig { input_hidden: vec![16, 8], output_hidden: vec![12], readout_tokens: 5, ..FptConfig::dense(3, 2) };
    let (vs, model) = build(&cfg, "paper");
    let names = vs.variables();
    for name in [
        "input_layer.hidden.0.weight",
        "input_layer.hidden.1.weight",
        "input_layer.proj.weight",
        "output_layer.hidden.0.weight",
        "output_layer.proj.weight",
    ] {
        assert!(names.contains_key(name), "missing {name}");
    }
    assert_eq!(names["input_layer.proj.weight"].size(), vec![32, 8]);
    let x = Tensor::randn([2, 10, 3], (Kind::Float, Device::Cpu));
    assert_eq!(model.forward(&x, false).unwrap().size(), vec![2, 5, 2]);

    let tokens = FptConfig { input: InputSpec::Tokens { vocab: 15 }, ..FptConfig::dense(1, 10) };
    let (vs, model) = build(&tokens, "paper");
    assert_eq!(vs.variables()["input_layer.embedding.weight"].size(), vec![15, 32]);
    let ids = Tensor::from_slice(&[0i64, 3, 14, 7, 2, 1]).reshape([2, 3]);
    assert_eq!(model.forward(&ids, false).unwrap().size(), vec![2, 10]);
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let (_, dense) = build(&FptConfig { readout_tokens: 4, ..FptConfig::dense(6, 3) }, "paper");
    let f = |shape: &[i64]| Tensor::zeros(shape, (Kind::Float, Device::Cpu));
    let err = |r: anyhow::Result<Tensor>| format!("{:#}", r.unwrap_err());
    assert!(err(dense.forward(&f(&[2, 5, 7]), false)).contains("[batch, seq, 6]"));
    assert!(err(dense.forward(&f(&[2, 5]), false)).contains("[batch, seq, 6]"));
    assert!(err(dense.forward(&f(&[2, 3, 6]), false)).contains("shorter than the 4 read-out tokens"));
    assert!(err(dense.forward(&f(&[2, 25, 6]), false)).contains("n_positions"));
    assert!(err(dense.forward(&Tensor::zeros([2, 5, 6], (Kind::Int64, Device::Cpu)), false)).contains("float"));

    let (_, tok) = build(&FptConfig { input: InputSpec::Tokens { vocab: 15 }, ..FptConfig::dense(1, 10) }, "paper");
    assert!(err(tok.forward(&Tensor::from_slice(&[1i64, 15]).reshape([1, 2]), false)).contains("outside the vocabulary"));
    assert!(err(tok.forward(&Tensor::from_slice(&[1i64, -1]).reshape([1, 2]), false)).contains("outside the vocabulary"));
    assert!(err(tok.forward(&f(&[1, 2]), false)).contains("int64"));

    let bad = FptConfig { classes: 0, ..FptConfig::dense(6, 3) };
    let vs = nn::VarStore::new(Device::Cpu);
    assert!(Fpt::new(&vs.root(), &tiny_backbone().into(), &bad).is_err());
}

#[test]
fn dropout_only_in_train_mode() {
    let (_, model) = build(&FptConfig { dropout: 0.5, ..FptConfig::dense(6, 3) }, "paper");
    let x = Tensor::randn([4, 7, 6], (Kind::Float, Device::Cpu));
    let eval_a = model.forward(&x, false).unwrap();
    let eval_b = model.forward(&x, false).unwrap();
    assert!(eval_a.equal(&eval_b));
    let train_a = model.forward(&x, true).unwrap();
    let train_b = model.forward(&x, true).unwrap();
    assert!(!train_a.equal(&train_b), "dropout 0.5 changed nothing in train mode");
    let fpt_model::BackboneConfig::Gpt2(c) = model.backbone().config() else { panic!("GPT-2 backbone") };
    assert_eq!(c.attn_pdrop, 0.5, "wrapper dropout reaches the backbone");
}

#[test]
fn random_init_follows_hugging_face() {
    tch::manual_seed(7);
    let mut cfg = Gpt2Config::custom(8, 256, 8);
    cfg.vocab_size = 1000;
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Gpt2::new(&vs.root(), &cfg).unwrap();
    FreezeSpec::paper().apply(&vs, &model).unwrap();
    let vars = vs.variables();
    let std = |n: &str| vars[n].std(true).double_value(&[]);
    let mean = |n: &str| vars[n].mean(Kind::Float).double_value(&[]);
    let close = |a: f64, b: f64| (a - b).abs() < 0.05 * b;
    assert!(close(std("wte.weight"), 0.02));
    assert!(close(std("wpe.weight"), 0.02));
    assert!(close(std("h.3.attn.c_attn.weight"), 0.02));
    assert!(close(std("h.3.mlp.c_fc.weight"), 0.02));
    let proj = 0.02 / (2.0f64 * 8.0).sqrt();
    assert!(close(std("h.3.attn.c_proj.weight"), proj), "{}", std("h.3.attn.c_proj.weight"));
    assert!(close(std("h.3.mlp.c_proj.weight"), proj));
    assert!(mean("h.3.attn.c_attn.weight").abs() < 1e-3);
    for (name, value) in [
        ("h.0.ln_1.weight", 1.0),
        ("ln_f.weight", 1.0),
        ("h.0.ln_2.bias", 0.0),
        ("h.5.attn.c_attn.bias", 0.0),
        ("h.5.mlp.c_proj.bias", 0.0),
    ] {
        assert!(vars[name].eq(value).all().int64_value(&[]) == 1, "{name} is not all {value}");
    }
    // Conv1D layout: [in, out].
    assert_eq!(vars["h.0.attn.c_attn.weight"].size(), vec![256, 768]);
    assert_eq!(vars["h.0.mlp.c_proj.weight"].size(), vec![1024, 256]);
}

fn tiny_bert() -> fpt_model::BackboneConfig {
    let cfg: fpt_model::BertConfig = serde_json::from_str(
        r#"{"model_type":"bert","vocab_size":30,"hidden_size":32,"num_hidden_layers":2,"num_attention_heads":4,
            "intermediate_size":64,"max_position_embeddings":24,"type_vocab_size":2}"#,
    )
    .unwrap();
    fpt_model::BackboneConfig::Bert(cfg)
}

#[test]
fn bert_backbones_freeze_by_group_and_read_first_or_last() {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = FptConfig { readout_tokens: 2, ..FptConfig::dense(6, 3) };
    let model = Fpt::new(&vs.root(), &tiny_bert(), &cfg).unwrap();
    FreezeSpec::paper().apply(&vs, &model).unwrap();
    let counts = count_by_group(&vs, &model).unwrap();
    let w = 32i64;
    // Trained: positions, every LayerNorm (embeddings + 2 per layer), input and output layers.
    assert_eq!(counts[&ParamGroup::Positions].trainable, 24 * w);
    assert_eq!(counts[&ParamGroup::LayerNorms].trainable, (1 + 2 * 2) * 2 * w);
    assert_eq!(counts[&ParamGroup::Attention].trainable, 0);
    assert_eq!(counts[&ParamGroup::Attention].total, 2 * 4 * (w * w + w));
    assert_eq!(counts[&ParamGroup::FeedForward].total, 2 * (w * 64 + 64 + 64 * w + w));
    assert_eq!(counts[&ParamGroup::TokenEmbedding].total, (30 + 2) * w);
    let x = Tensor::randn([2, 7, 6], (Kind::Float, Device::Cpu));
    let last = model.forward(&x, false).unwrap();
    assert_eq!(last.size(), vec![2, 2, 3]);

    // Reading the first tokens of the same weights gives a different, valid output.
    let vs2 = nn::VarStore::new(Device::Cpu);
    let first_cfg = FptConfig { readout: fpt_model::Readout::First, ..cfg.clone() };
    let first = Fpt::new(&vs2.root(), &tiny_bert(), &first_cfg).unwrap();
    FreezeSpec::paper().apply(&vs2, &first).unwrap();
    let mut vs2 = vs2;
    vs2.copy(&vs).unwrap();
    let out = first.forward(&x, false).unwrap();
    assert_eq!(out.size(), vec![2, 2, 3]);
    assert!(!out.allclose(&last, 1e-6, 1e-6, false));
    // Bidirectional: the first token's output depends on the last input token.
    let x2 = x.copy();
    let _ = x2.narrow(1, 6, 1).fill_(3.0);
    assert!(!first.forward(&x2, false).unwrap().allclose(&out, 1e-6, 1e-6, false));
}
