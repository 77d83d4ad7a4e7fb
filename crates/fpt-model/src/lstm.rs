//! The paper's LSTM baseline: the reference's layer-norm LSTM (`universal_computation/models/
//! lstm.py`, `LNLSTM` with `LayerNormLSTM` cells, unidirectional, no residuals, no positions).
//!
//! Per layer and time step, with `LN` a layer norm over the feature axis that uses the
//! *unbiased* variance and eps 1e-6 (as the reference's own `LayerNorm`):
//! ```text
//! pre = LN_i2h(W_i x + b_i) + LN_h2h(W_h h + b_h)           (4H wide: i, f, o | g)
//! i, f, o = sigmoid(pre[..3H]);  g = tanh(pre[3H..])
//! c' = LN_cell(f * c + i * g);   h' = o * tanh(c');  h' = dropout(h')  (train only)
//! ```
//! The layer's outputs are its `h'` sequence; layers are stacked. Initial states are drawn
//! normal(0, sqrt(2 / (input + hidden))) for every forward pass, as the reference's
//! `init_hidden` does. Initialisation, also the reference's: every weight, bias and layer-norm
//! gain and shift uniform(±1/sqrt(size)).

use crate::freeze::{ParamGroup, ParamGroups};
use crate::kernels::FrozenLinear;
use crate::layers::init::{new_param, Init};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LstmConfig {
    pub num_layers: i64,
    pub hidden_size: i64,
    pub dropout: f64,
}

impl Default for LstmConfig {
    /// The paper's baseline: 3 layers of width 768.
    fn default() -> Self {
        LstmConfig { num_layers: 3, hidden_size: 768, dropout: 0.1 }
    }
}

impl LstmConfig {
    pub fn validate(&self) -> Result<()> {
        if self.num_layers <= 0 || self.hidden_size <= 0 {
            bail!("LSTM num_layers ({}) and hidden_size ({}) must be positive", self.num_layers, self.hidden_size);
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("LSTM dropout {} must be in [0, 1)", self.dropout);
        }
        Ok(())
    }
}

const LN_EPS: f64 = 1e-6;

/// The reference's layer norm: unbiased variance, eps 1e-6, gain `weight` and shift `bias`.
#[derive(Debug)]
struct RefLayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl RefLayerNorm {
    fn new(path: &nn::Path, size: i64) -> Result<Self> {
        let bound = 1.0 / (size as f64).sqrt();
        Ok(RefLayerNorm {
            weight: new_param(path, "weight", &[size], Init::Uniform { bound })?,
            bias: new_param(path, "bias", &[size], Init::Uniform { bound })?,
        })
    }

    /// The norm as libtorch's fused `layer_norm` computes it (one kernel forward and backward,
    /// where the written-out form is eight operations at each of the LSTM's steps). That kernel
    /// divides by the *biased* deviation; with c² = (n − 1)/n, σ²_biased = c² σ²_unbiased, so
    /// (x − μ)/√(σ²_unbiased + ε) = c (x − μ)/√(σ²_biased + c² ε): gain c·weight, eps c²ε.
    fn fused(&self) -> FusedNorm<'_> {
        let n = self.weight.size()[0] as f64;
        let c2 = (n - 1.0) / n;
        FusedNorm { weight: &self.weight * c2.sqrt(), bias: &self.bias, eps: LN_EPS * c2 }
    }
}

/// [`RefLayerNorm`] with its gain scaled for libtorch's `layer_norm`, made once per forward
/// pass (not per time step).
struct FusedNorm<'a> {
    weight: Tensor,
    bias: &'a Tensor,
    eps: f64,
}

impl FusedNorm<'_> {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm([self.weight.size()[0]], Some(&self.weight), Some(self.bias), self.eps, false)
    }
}

/// What a cell applies at every time step: its recurrent product and two norms.
struct CellNorms<'a> {
    recurrent: FrozenLinear<'a>,
    h2h: FusedNorm<'a>,
    cell: FusedNorm<'a>,
}

#[derive(Debug)]
struct Cell {
    i2h_w: Tensor,
    i2h_b: Tensor,
    h2h_w: Tensor,
    h2h_b: Tensor,
    ln_i2h: RefLayerNorm,
    ln_h2h: RefLayerNorm,
    ln_cell: RefLayerNorm,
    input: i64,
    hidden: i64,
}

impl Cell {
    fn new(path: &nn::Path, input: i64, hidden: i64) -> Result<Self> {
        let bound = 1.0 / (hidden as f64).sqrt();
        let i2h = path / "i2h";
        let h2h = path / "h2h";
        Ok(Cell {
            i2h_w: new_param(&i2h, "weight", &[4 * hidden, input], Init::Uniform { bound })?,
            i2h_b: new_param(&i2h, "bias", &[4 * hidden], Init::Uniform { bound })?,
            h2h_w: new_param(&h2h, "weight", &[4 * hidden, hidden], Init::Uniform { bound })?,
            h2h_b: new_param(&h2h, "bias", &[4 * hidden], Init::Uniform { bound })?,
            ln_i2h: RefLayerNorm::new(&(path / "ln_i2h"), 4 * hidden)?,
            ln_h2h: RefLayerNorm::new(&(path / "ln_h2h"), 4 * hidden)?,
            ln_cell: RefLayerNorm::new(&(path / "ln_cell"), hidden)?,
            input,
            hidden,
        })
    }

    /// One step: `x` [batch, input], state ([batch, hidden], [batch, hidden]).
    /// One time step from `x_normed`, the step's LN_i2h(W_i x + b_i) (computed for the whole
    /// sequence at once: it does not depend on the state).
    fn step(&self, x_normed: &Tensor, norms: &CellNorms, h: &Tensor, c: &Tensor, dropout: f64, train: bool) -> (Tensor, Tensor) {
        let pre = x_normed + norms.h2h.forward(&norms.recurrent.forward(h));
        let hs = self.hidden;
        let gates = pre.narrow(-1, 0, 3 * hs).sigmoid();
        let g = pre.narrow(-1, 3 * hs, hs).tanh();
        let (i, f, o) = (gates.narrow(-1, 0, hs), gates.narrow(-1, hs, hs), gates.narrow(-1, 2 * hs, hs));
        let c_new = norms.cell.forward(&(c * f).addcmul(&i, &g));
        let h_new = crate::kernels::dropout(&(o * c_new.tanh()), dropout, train);
        (h_new, c_new)
    }
}

/// A stack of layer-norm LSTM layers over `[batch, seq, hidden_size]` token features.
#[derive(Debug)]
pub struct Lstm {
    cfg: LstmConfig,
    cells: Vec<Cell>,
}

impl Lstm {
    /// Variables `lstm.{l}.{i2h,h2h}.{weight,bias}` and `lstm.{l}.{ln_i2h,ln_h2h,ln_cell}.{weight,bias}`.
    pub fn new(path: &nn::Path, cfg: &LstmConfig) -> Result<Self> {
        cfg.validate()?;
        let root = path / "lstm";
        let cells = (0..cfg.num_layers).map(|l| Cell::new(&(&root / l), cfg.hidden_size, cfg.hidden_size)).collect::<Result<Vec<_>>>()?;
        Ok(Lstm { cfg: cfg.clone(), cells })
    }

    pub fn config(&self) -> &LstmConfig {
        &self.cfg
    }

    /// The top layer's hidden states `[batch, seq, hidden]`, from initial states drawn as the
    /// reference draws them.
    pub fn forward_embeds(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let size = x.size();
        let &[b, _, w] = size.as_slice() else { bail!("LSTM input must have rank 3 [batch, seq, width], got {size:?}") };
        if w != self.cfg.hidden_size {
            bail!("LSTM input width is {w}, but hidden_size is {}", self.cfg.hidden_size);
        }
        let states: Vec<(Tensor, Tensor)> = self
            .cells
            .iter()
            .map(|cell| {
                let std = (2.0 / (cell.input + cell.hidden) as f64).sqrt();
                let opts = (Kind::Float, x.device());
                (Tensor::randn([b, cell.hidden], opts) * std, Tensor::randn([b, cell.hidden], opts) * std)
            })
            .collect();
        self.forward_with_states(x, &states, train)
    }

    /// The same with given initial states, one (h, c) per layer.
    pub fn forward_with_states(&self, x: &Tensor, states: &[(Tensor, Tensor)], train: bool) -> Result<Tensor> {
        if states.len() != self.cells.len() {
            bail!("{} initial states for {} layers", states.len(), self.cells.len());
        }
        let seq = x.size()[1];
        let mut layer_in = x.shallow_clone();
        for (cell, (h0, c0)) in self.cells.iter().zip(states) {
            // The input projections of every step at once; the recurrence stays sequential.
            let x_normed = cell.ln_i2h.fused().forward(&layer_in.linear(&cell.i2h_w, Some(&cell.i2h_b)));
            let norms =
                CellNorms { recurrent: FrozenLinear::new(&cell.h2h_w, &cell.h2h_b), h2h: cell.ln_h2h.fused(), cell: cell.ln_cell.fused() };
            let (mut h, mut c) = (h0.shallow_clone(), c0.shallow_clone());
            let mut outputs = Vec::with_capacity(seq as usize);
            // One unbind, not a select per step: a select's backward writes a zero-filled
            // gradient of the whole sequence for its one step, and the steps' are then summed.
            for x_t in x_normed.unbind(1) {
                let (h_new, c_new) = cell.step(&x_t, &norms, &h, &c, self.cfg.dropout, train);
                outputs.push(h_new.shallow_clone());
                h = h_new;
                c = c_new;
            }
            layer_in = Tensor::stack(&outputs, 1);
        }
        Ok(layer_in)
    }
}

/// The LSTM's parameter groups: the input and recurrent weights `i2h`, `h2h` count as
/// feed-forward, the `ln_*` norms as layer norms (so `freeze = "paper"` trains input, output and
/// layer norms, the paper's frozen LSTM).
impl ParamGroups for Lstm {
    fn param_group(&self, name: &str) -> Option<ParamGroup> {
        let parts: Vec<&str> = name.split('.').collect();
        Some(match parts.as_slice() {
            ["lstm", _, "i2h" | "h2h", _] => ParamGroup::FeedForward,
            ["lstm", _, "ln_i2h" | "ln_h2h" | "ln_cell", _] => ParamGroup::LayerNorms,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variable_has_a_group() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let model = Lstm::new(&vs.root(), &LstmConfig { num_layers: 2, hidden_size: 4, dropout: 0.0 }).unwrap();
        assert_eq!(model.param_group("lstm.1.i2h.weight"), Some(ParamGroup::FeedForward));
        assert_eq!(model.param_group("lstm.1.h2h.bias"), Some(ParamGroup::FeedForward));
        assert_eq!(model.param_group("lstm.0.ln_cell.weight"), Some(ParamGroup::LayerNorms));
        for name in vs.variables().keys() {
            assert!(model.param_group(name).is_some(), "{name} has no group");
        }
    }

    /// The cell equations against a hand-written f64 implementation on a tiny input.
    #[test]
    fn frozen_weights_take_the_fast_paths_with_the_same_outputs_and_input_gradients() {
        let mut vs = nn::VarStore::new(tch::Device::Cpu);
        let lstm = Lstm::new(&vs.root(), &LstmConfig { num_layers: 2, hidden_size: 8, dropout: 0.0 }).unwrap();
        let wave = |n: &[i64], freq: f64| (Tensor::arange(n.iter().product::<i64>(), (Kind::Float, tch::Device::Cpu)) * freq).sin().view(n);
        let x = wave(&[3, 6, 8], 0.37);
        let states = [(wave(&[3, 8], 0.71), wave(&[3, 8], 1.13)), (wave(&[3, 8], 0.53), wave(&[3, 8], 0.91))];
        let up = wave(&[3, 6, 8], 0.29);
        let run = |kind: Kind| {
            let x = x.to_kind(kind).set_requires_grad(true);
            let states: Vec<_> = states.iter().map(|(h, c)| (h.to_kind(kind), c.to_kind(kind))).collect();
            let y = lstm.forward_with_states(&x, &states, false).unwrap();
            let g = Tensor::run_backward(&[(&y * up.to_kind(kind)).sum(kind)], &[&x], false, false).remove(0);
            (y, g)
        };
        // Trainable weights: libtorch's linear for the recurrent product; frozen: the node.
        let (y_trained, g_trained) = run(Kind::Float);
        vs.freeze();
        let (y_frozen, g_frozen) = run(Kind::Float);
        vs.double();
        let (y64, g64) = run(Kind::Double);
        for (what, ours, other, truth) in [("outputs", &y_frozen, &y_trained, &y64), ("input gradients", &g_frozen, &g_trained, &g64)] {
            let (d, bound) = (crate::tolerance::max_abs_diff(ours, truth), crate::tolerance::reordering_bound(other, truth));
            assert!(d <= bound, "{what} differ by {d} (bound {bound})");
        }
    }

    #[test]
    fn matches_a_hand_written_cell() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let cfg = LstmConfig { num_layers: 1, hidden_size: 3, dropout: 0.0 };
        let lstm = Lstm::new(&vs.root(), &cfg).unwrap();
        let x = Tensor::randn([1, 2, 3], (Kind::Float, tch::Device::Cpu));
        let (h0, c0) = (Tensor::randn([1, 3], (Kind::Float, tch::Device::Cpu)), Tensor::randn([1, 3], (Kind::Float, tch::Device::Cpu)));
        let ours = lstm.forward_with_states(&x, &[(h0.shallow_clone(), c0.shallow_clone())], false).unwrap();

        let v = |t: &Tensor| Vec::<f64>::try_from(&t.to_kind(Kind::Double).flatten(0, -1)).unwrap();
        let vars = vs.variables();
        let p = |n: &str| v(&vars[&format!("lstm.0.{n}")]);
        let (wi, bi, wh, bh) = (p("i2h.weight"), p("i2h.bias"), p("h2h.weight"), p("h2h.bias"));
        let ln = |xs: &[f64], g: &[f64], b: &[f64]| -> Vec<f64> {
            let n = xs.len() as f64;
            let mean = xs.iter().sum::<f64>() / n;
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0); // unbiased
            xs.iter().enumerate().map(|(i, x)| (x - mean) / (var + 1e-6).sqrt() * g[i] + b[i]).collect()
        };
        let matvec = |w: &[f64], b: &[f64], x: &[f64]| -> Vec<f64> {
            (0..12).map(|r| b[r] + (0..3).map(|k| w[r * 3 + k] * x[k]).sum::<f64>()).collect()
        };
        let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
        let xs = v(&x);
        let (mut h, mut c) = (v(&h0), v(&c0));
        let mut expected = Vec::new();
        for t in 0..2 {
            let a = ln(&matvec(&wi, &bi, &xs[t * 3..t * 3 + 3]), &p("ln_i2h.weight"), &p("ln_i2h.bias"));
            let bb = ln(&matvec(&wh, &bh, &h), &p("ln_h2h.weight"), &p("ln_h2h.bias"));
            let pre: Vec<f64> = a.iter().zip(&bb).map(|(x, y)| x + y).collect();
            let cell: Vec<f64> = (0..3).map(|j| sig(pre[3 + j]) * c[j] + sig(pre[j]) * pre[9 + j].tanh()).collect();
            c = ln(&cell, &p("ln_cell.weight"), &p("ln_cell.bias"));
            h = (0..3).map(|j| sig(pre[6 + j]) * c[j].tanh()).collect();
            expected.extend(h.iter().copied());
        }
        let got = v(&ours);
        for (g, e) in got.iter().zip(&expected) {
            assert!((g - e).abs() < 1e-5, "ours {got:?} vs hand-written {expected:?}");
        }
    }
}
