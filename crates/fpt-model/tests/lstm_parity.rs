//! Our layer-norm LSTM against the paper's own (`benches/reference/lnlstm.py`, the authors'
//! `models/lstm.py` vendored verbatim), run by `tests/reference/make_lstm_fixtures.py`: the same
//! weights and initial states, eval mode, fp32. The output, the input gradient and the gradient of
//! every parameter must meet the parity rule of `fpt_model::tolerance` (ours against the
//! reference's fp64 evaluation, at most 4× the reference's own fp32 error plus 16 roundoffs at
//! the value's scale), which holds on any CPU's kernels.

mod common;

use common::{assert_parity, make_lstm_fixtures, read_tensor};
use fpt_model::{Lstm, LstmConfig};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

#[test]
fn lstm_matches_the_reference_lnlstm() {
    let dir = make_lstm_fixtures(Path::new(env!("CARGO_TARGET_TMPDIR")), "parity").join("lstm");
    let reference = dir.join("reference.safetensors");
    let x = read_tensor(&reference, "inputs_embeds");
    let [batch, _, width] = x.size()[..] else { panic!("inputs_embeds must be [batch, seq, width]") };
    let layers = (0..).take_while(|l| Tensor::read_safetensors(&reference).unwrap().iter().any(|(n, _)| n == &format!("h0_{l}"))).count();
    assert!(layers >= 2, "the fixture should stack layers, has {layers}");

    let mut vs = nn::VarStore::new(Device::Cpu);
    let lstm = Lstm::new(&vs.root(), &LstmConfig { num_layers: layers as i64, hidden_size: width, dropout: 0.1 }).unwrap();
    let names: Vec<String> = vs.variables().keys().cloned().collect();
    assert_eq!(names.len(), 10 * layers, "every reference parameter has one of ours: {names:?}");
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            var.copy_(&read_tensor(&reference, &name).reshape(var.size()));
        }
    });
    vs.float();

    let x = x.set_requires_grad(true);
    let states: Vec<(Tensor, Tensor)> =
        (0..layers).map(|l| (read_tensor(&reference, &format!("h0_{l}")), read_tensor(&reference, &format!("c0_{l}")))).collect();
    assert_eq!(states[0].0.size(), [batch, width]);
    // train = false: the reference runs in eval mode, dropout off.
    let y = lstm.forward_with_states(&x, &states, false).unwrap();
    assert_parity("lstm", &y, &reference, "last_hidden_state");
    (&y * read_tensor(&reference, "cotangent")).sum(Kind::Float).backward();
    assert_parity("lstm", &x.grad(), &reference, "grad_inputs");
    for name in &names {
        let grad = vs.variables()[name].grad().reshape(-1);
        assert_parity("lstm", &grad, &reference, &format!("grad.{name}"));
    }
}
