//! Our layer-norm LSTM against the paper's own (`benches/reference/lnlstm.py`, the authors'
//! `models/lstm.py` vendored verbatim), run by `tests/reference/make_lstm_fixtures.py` on the
//! same weights and initial states:
//! - eval mode, fp32: the output, the input gradient and the gradient of every parameter meet
//!   the parity rule of `fpt_model::tolerance` (ours against the reference's fp64 evaluation, at
//!   most 4× the reference's own fp32 error plus 16 roundoffs at the value's scale), which holds
//!   on any CPU's kernels;
//! - training mode, dropout 0.1: over independent draws of the dropout masks, the loss, the
//!   squared gradient norm and the fraction of dropped outputs have the reference's means.

mod common;

use common::{assert_parity, make_lstm_fixtures, read_tensor};
use fpt_model::{Lstm, LstmConfig};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tch::{nn, Device, Kind, Tensor};

/// The fixture (written once for both tests), our LSTM holding its weights, and its initial
/// states.
fn load() -> (PathBuf, nn::VarStore, Lstm, Vec<(Tensor, Tensor)>) {
    static FIXTURE: OnceLock<PathBuf> = OnceLock::new();
    let reference = FIXTURE
        .get_or_init(|| make_lstm_fixtures(Path::new(env!("CARGO_TARGET_TMPDIR")), "lstm").join("lstm/reference.safetensors"))
        .clone();
    let names: Vec<String> = Tensor::read_safetensors(&reference).unwrap().into_iter().map(|(n, _)| n).collect();
    let layers = (0..).take_while(|l| names.contains(&format!("h0_{l}"))).count();
    assert!(layers >= 2, "the fixture should stack layers, has {layers}");
    let width = read_tensor(&reference, "inputs_embeds").size()[2];
    let vs = nn::VarStore::new(Device::Cpu);
    let lstm = Lstm::new(&vs.root(), &LstmConfig { num_layers: layers as i64, hidden_size: width, dropout: 0.1 }).unwrap();
    assert_eq!(vs.variables().len(), 10 * layers, "every reference parameter has one of ours");
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            var.copy_(&read_tensor(&reference, &name).reshape(var.size()));
        }
    });
    let states = (0..layers).map(|l| (read_tensor(&reference, &format!("h0_{l}")), read_tensor(&reference, &format!("c0_{l}")))).collect();
    (reference, vs, lstm, states)
}

#[test]
fn lstm_matches_the_reference_lnlstm() {
    let (reference, vs, lstm, states) = load();
    let x = read_tensor(&reference, "inputs_embeds").set_requires_grad(true);
    // train = false: the reference runs in eval mode, dropout off.
    let y = lstm.forward_with_states(&x, &states, false).unwrap();
    assert_parity("lstm", &y, &reference, "last_hidden_state");
    (&y * read_tensor(&reference, "cotangent")).sum(Kind::Float).backward();
    assert_parity("lstm", &x.grad(), &reference, "grad_inputs");
    for (name, var) in vs.variables() {
        assert_parity("lstm", &var.grad().reshape(-1), &reference, &format!("grad.{name}"));
    }
}

/// Dropout on every step's h (which is both the output and the next step's state) is where a
/// training-mode LSTM can differ from the reference while eval parity holds: a mask shared
/// across time steps, a missing 1/(1-p), or dropout on the cell state would all pass the test
/// above. Each statistic's means must agree within 4 standard errors of their difference
/// (a false alarm about once in 16,000 runs per statistic; the masks differ between the two, so
/// only the distributions can agree). With 400 draws a side, that resolves about 15% of the
/// loss's mean and 0.3 points of the dropped fraction (p = 10%).
#[test]
fn lstm_dropout_statistics_match_the_reference() {
    let (reference, vs, lstm, states) = load();
    let x = read_tensor(&reference, "inputs_embeds");
    let r = read_tensor(&reference, "cotangent");
    let theirs = |name: &str| Vec::<f64>::try_from(&read_tensor(&reference, name).to_kind(Kind::Double)).unwrap();
    let (ref_losses, ref_grad_sq, ref_zeros) = (theirs("train_losses"), theirs("train_grad_sq"), theirs("train_zero_fraction"));
    let (mut losses, mut grad_sq, mut zeros) = (Vec::new(), Vec::new(), Vec::new());
    tch::manual_seed(5);
    for _ in 0..ref_losses.len() {
        for (_, var) in vs.variables() {
            let mut g = var.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let y = lstm.forward_with_states(&x, &states, true).unwrap();
        let loss = (&y * &r).sum(Kind::Float);
        loss.backward();
        losses.push(loss.double_value(&[]));
        grad_sq.push(vs.variables().values().map(|v| v.grad().pow_tensor_scalar(2).sum(Kind::Double).double_value(&[])).sum());
        zeros.push(y.eq(0.0).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]));
    }
    let mean_var = |v: &[f64]| {
        let n = v.len() as f64;
        let m = v.iter().sum::<f64>() / n;
        (m, v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0) / n)
    };
    for (what, ours, theirs) in
        [("loss", &losses, &ref_losses), ("squared gradient norm", &grad_sq, &ref_grad_sq), ("dropped fraction", &zeros, &ref_zeros)]
    {
        let ((mo, vo), (mt, vt)) = (mean_var(ours), mean_var(theirs));
        let se = (vo + vt).sqrt();
        println!("{what}: ours {mo:.5} vs reference {mt:.5} (standard error of the difference {se:.5})");
        assert!((mo - mt).abs() <= 4.0 * se, "{what}: ours {mo} vs reference {mt}, more than 4 standard errors ({se}) apart");
    }
    let (dropped, _) = mean_var(&zeros);
    assert!((dropped - 0.1).abs() < 0.01, "ours drops {dropped} of the outputs, p = 0.1");
}
