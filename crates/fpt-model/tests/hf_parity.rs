//! Our GPT-2 and BERT against Hugging Face `GPT2Model` / `BertModel` (eval, fp32) on checkpoints
//! `transformers` wrote: last_hidden_state, input gradients and attention maps within the
//! parity rule of `fpt_model::tolerance` (ours against the reference's fp64 evaluation, at most
//! 4× the reference's own fp32 error plus 16 roundoffs at the output's scale). GPT-2:
//! five shapes (odd head count, widths 30/96/120 that are not powers of two, custom n_inner,
//! exact GELU and ReLU, other eps, a `transformer.`-prefixed file and a sharded one). BERT: three
//! random shapes (odd heads, `bert.`-prefixed masked-LM file with its head, sharded, gelu /
//! relu / gelu_new) and the real all-MiniLM-L6-v2.

mod common;

use common::{assert_parity, make_bert_fixtures, make_gpt2_fixtures, max_abs_diff, read_tensor};
use std::path::Path;
use fpt_model::load_backbone_dir;
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
        if case != "minilm" {
            let maps = Tensor::stack(&model.attention_maps(&inputs.detach()).unwrap(), 0);
            assert_parity(case, &maps, &reference, "attentions");
        }

        // Dropout off in eval: a second pass is bit-identical.
        let again = tch::no_grad(|| model.forward_embeds(&inputs, false).unwrap());
        assert_eq!(max_abs_diff(&again, &hidden.detach()), 0.0, "{case}: eval forward is not deterministic");
    }
}
