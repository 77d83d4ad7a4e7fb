//! Our GPT-2 against Hugging Face `GPT2Model` (eval, fp32) on checkpoints `transformers` wrote:
//! last_hidden_state within 1e-5 and input gradients within 1e-4, for five shapes (odd head
//! count, widths 30/96/120 that are not powers of two, custom n_inner, exact GELU and ReLU, other
//! eps, a `transformer.`-prefixed file and a sharded one).

mod common;

use common::{make_gpt2_fixtures, max_abs_diff, read_tensor};
use fpt_model::load_gpt2_dir;
use tch::{Device, Kind};

const CASES: [&str; 5] = ["small4x64", "odd3x96_prefixed", "w120h5_sharded", "deep4x128", "single1x30"];

#[test]
fn last_hidden_state_and_input_gradients_match_transformers() {
    let fixtures = make_gpt2_fixtures(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")), "parity", &CASES);
    for case in CASES {
        let dir = fixtures.join(case);
        let reference = dir.join("reference.safetensors");
        let (vs, model) = load_gpt2_dir(&dir.join("model"), Device::Cpu).unwrap_or_else(|e| panic!("{case}: {e:#}"));
        assert!(vs.trainable_variables().is_empty(), "load_gpt2_dir freezes everything");

        let inputs = read_tensor(&reference, "inputs_embeds").set_requires_grad(true);
        let hidden = model.forward_embeds(&inputs, false).unwrap();
        let forward_err = max_abs_diff(&hidden, &read_tensor(&reference, "last_hidden_state"));

        let loss = (&hidden * read_tensor(&reference, "cotangent")).sum(Kind::Float);
        loss.backward();
        let grad_err = max_abs_diff(&inputs.grad(), &read_tensor(&reference, "grad_inputs"));
        println!("{case}: forward max |diff| {forward_err:.3e}, input-gradient max |diff| {grad_err:.3e}");
        assert!(forward_err < 1e-5, "{case}: last_hidden_state differs by {forward_err:e}");
        assert!(grad_err < 1e-4, "{case}: input gradients differ by {grad_err:e}");

        // Dropout off in eval: a second pass is bit-identical.
        let again = tch::no_grad(|| model.forward_embeds(&inputs, false).unwrap());
        assert_eq!(max_abs_diff(&again, &hidden.detach()), 0.0, "{case}: eval forward is not deterministic");
    }
}
