//! Our GPT-2 and BERT against Hugging Face `GPT2Model` / `BertModel` (eval, fp32) on checkpoints
//! `transformers` wrote: last_hidden_state, input gradients and attention maps within the
//! parity rule of `fpt_model::tolerance` (ours against the reference's fp64 evaluation, at most
//! 4× the reference's own fp32 error plus 16 roundoffs at the output's scale). GPT-2:
//! five shapes (odd head count, widths 30/96/120 that are not powers of two, custom n_inner,
//! exact GELU and ReLU, other eps, a `transformer.`-prefixed file and a sharded one). BERT: three
//! random shapes (odd heads, `bert.`-prefixed masked-LM file with its head, sharded, gelu /
//! relu / gelu_new) and the real all-MiniLM-L6-v2; and BERT with Hugging Face's `attention_mask`
//! (rows right-padded to different lengths, one left-padded, one unpadded). Llama: nine random
//! `LlamaModel` shapes (one with biases), a `Qwen2Model` and a `MistralModel` with sliding
//! windows, and the real SmolLM2-135M-Instruct.

mod common;

use common::{
    assert_parity, make_bert_fixtures, make_bert_mask_fixtures, make_gpt2_fixtures, make_llama_fixtures, max_abs_diff, read_f64,
    read_tensor,
};
use fpt_model::{load_backbone_dir, Backbone};
use std::path::Path;
use tch::{Device, Kind, Tensor};

const CASES: [&str; 5] = ["small4x64", "odd3x96_prefixed", "w120h5_sharded", "deep4x128", "single1x30"];

#[test]
fn gpt2_matches_transformers() {
    let fixtures = make_gpt2_fixtures(Path::new(env!("CARGO_TARGET_TMPDIR")), "parity", &CASES);
    check_cases(&fixtures, &CASES);
}

#[test]
fn bert_and_minilm_match_transformers() {
    let cases = ["bert2x64", "bert3x96_mlm", "bert2x120_sharded", "minilm"];
    let fixtures = make_bert_fixtures(Path::new(env!("CARGO_TARGET_TMPDIR")), "parity", &cases);
    check_cases(&fixtures, &cases);
}

/// The Llama family (eager attention) on eleven random checkpoints. `LlamaModel`: grouped- and
/// multi-query attention, odd head counts, head_dim apart from width/heads, other theta and eps,
/// llama3 RoPE scaling, tied and untied embeddings, `model.`-prefixed, plain and sharded files,
/// biases on every linear layer (`attention_bias`, `mlp_bias`), a config.json in transformers 5's
/// form (`rope_parameters` instead of `rope_theta` and `rope_scaling`). `Qwen2Model` (q/k/v biases, a
/// sliding window on some layers) and `MistralModel` (a sliding window on every layer), with
/// sequences longer than their windows.
#[test]
fn llama_matches_transformers() {
    let cases = [
        "llama2x64_gqa",
        "llama3x96_odd_tied",
        "llama2x120_h5kv1_sharded",
        "llama2x64_rope_llama3_untied",
        "llama2x64_headdim24",
        "llama4x128_deep",
        "llama1x30_single",
        "llama2x64_biases",
        "qwen2x3x64_window",
        "mistral2x96_window",
        "llama2x64_rope_parameters_v5",
    ];
    let fixtures = make_llama_fixtures(Path::new(env!("CARGO_TARGET_TMPDIR")), "parity", &cases);
    check_cases(&fixtures, &cases);
}

/// The real SmolLM2-135M-Instruct that `cargo xtask setup` converts (transformers' SDPA path;
/// no attention maps). Fails, not skips, when it is missing.
#[test]
fn smollm2_matches_transformers() {
    common::smollm2_dir();
    // Its own tag: the two Llama tests run at once, and each fixture folder is removed first.
    let fixtures = make_llama_fixtures(Path::new(env!("CARGO_TARGET_TMPDIR")), "smollm2", &["smollm2"]);
    check_cases(&fixtures, &["smollm2"]);
}

/// The key-padding mask FPT gives BERT for right-padded batches is Hugging Face's
/// `attention_mask`: every position's hidden state, the input gradients and the attention maps
/// equal `BertModel(inputs_embeds=…, attention_mask=…)`'s; the read-out gathered at each row's
/// last real token is the full output's row there.
#[test]
fn bert_attention_mask_matches_transformers() {
    let dir = make_bert_mask_fixtures(Path::new(env!("CARGO_TARGET_TMPDIR")), "mask").join("bert_mask");
    let reference = dir.join("reference.safetensors");
    let (_vs, model) = load_backbone_dir(&dir.join("model"), Device::Cpu).unwrap();
    let Backbone::Bert(bert) = &model else { panic!("the fixture is a BERT checkpoint") };
    let inputs = read_tensor(&reference, "inputs_embeds").set_requires_grad(true);
    let mask = read_tensor(&reference, "attention_mask");
    let hidden = bert.forward_masked(&inputs, Some(&mask), false).unwrap();
    assert_parity("bert_mask", &hidden, &reference, "last_hidden_state");
    (&hidden * read_tensor(&reference, "cotangent")).sum(Kind::Float).backward();
    assert_parity("bert_mask", &inputs.grad(), &reference, "grad_inputs");
    let maps = Tensor::stack(&bert.attention_maps_masked(&inputs.detach(), Some(&mask)).unwrap(), 0);
    assert_parity("bert_mask", &maps, &reference, "attentions");
    // Without the mask the padded rows differ: the mask is what makes them match.
    let unmasked = bert.forward_embeds(&inputs.detach(), false).unwrap();
    assert!(max_abs_diff(&unmasked.get(0), &hidden.detach().get(0)) > 1e-3, "row 0 is padded: the mask must matter");
    // The per-row read-out (the last real token of the three right-padded rows, and of the
    // unpadded one), as Backbone::forward_at computes it with the same mask.
    let rows = Tensor::from_slice(&[2i64, 10, 6]).reshape([3, 1]);
    let first3 = |t: &Tensor| t.narrow(0, 0, 3);
    let at = model.forward_at(&first3(&inputs.detach()), false, &rows, Some(&first3(&mask))).unwrap();
    let truth = read_f64(&reference, "last_hidden_state_f64");
    let noise = read_f64(&reference, "last_hidden_state_noise").double_value(&[]);
    for (i, p) in [2i64, 10, 6].into_iter().enumerate() {
        let (ours, row) = (at.get(i as i64).get(0), truth.get(i as i64).get(p));
        fpt_model::tolerance::check_parity(&format!("bert_mask read-out row {i}"), &ours, &row, noise).unwrap_or_else(|e| panic!("{e}"));
    }
}

fn check_cases(fixtures: &Path, cases: &[&str]) {
    for &case in cases {
        let dir = fixtures.join(case);
        let reference = dir.join("reference.safetensors");
        let (vs, model) = load_backbone_dir(&dir.join("model"), Device::Cpu).unwrap_or_else(|e| panic!("{case}: {e:#}"));
        assert!(vs.trainable_variables().is_empty(), "load_backbone_dir freezes everything");

        let inputs = read_tensor(&reference, "inputs_embeds").set_requires_grad(true);
        let hidden = model.forward_embeds(&inputs, false).unwrap();
        assert_parity(case, &hidden, &reference, "last_hidden_state");

        let loss = (&hidden * read_tensor(&reference, "cotangent")).sum(Kind::Float);
        loss.backward();
        assert_parity(case, &inputs.grad(), &reference, "grad_inputs");

        // Attention maps (what `fpt attention` draws) equal transformers' output_attentions.
        if case != "minilm" && case != "smollm2" {
            let maps = Tensor::stack(&model.attention_maps(&inputs.detach()).unwrap(), 0);
            assert_parity(case, &maps, &reference, "attentions");
        }

        // Dropout off in eval: a second pass is bit-identical.
        let again = tch::no_grad(|| model.forward_embeds(&inputs, false).unwrap());
        assert_eq!(max_abs_diff(&again, &hidden.detach()), 0.0, "{case}: eval forward is not deterministic");
    }
}
