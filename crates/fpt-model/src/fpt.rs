//! The Frozen Pretrained Transformer: a new input layer, a (mostly frozen) backbone, and a new
//! output layer reading the last `k` tokens.

use crate::backbone::{Backbone, BackboneConfig, Precision};
use crate::freeze::{FreezeSpec, ParamGroup, ParamGroups};
use crate::kernels::dropout;
use crate::layers::init::{new_param, Init};
use crate::layers::{Linear, Rows};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

/// What a token of the task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputSpec {
    /// A float feature vector of this size per token (image patches, bits).
    Dense { dim: i64 },
    /// A token id below this vocabulary size (ListOps, amino acids).
    Tokens { vocab: i64 },
}

/// Which tokens the output layer reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Readout {
    /// The last `readout_tokens` positions (the paper's choice). With GPT-2's causal attention
    /// only the last token has seen the whole sequence.
    #[default]
    Last,
    /// The first `readout_tokens` positions. Only meaningful for bidirectional backbones (BERT),
    /// where every position sees every token; BERT's own convention reads the first token
    /// ([CLS]), but FPT inputs carry no [CLS], so the last token stays the default there too.
    First,
}

/// The wrapper's own shape and hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FptConfig {
    pub input: InputSpec,
    /// Outputs per read-out token (classes, or 2 logits per bit).
    pub classes: i64,
    /// How many final tokens are read out: 1 for classification, one per output patch for the
    /// bit tasks.
    #[serde(default = "defaults::readout_tokens")]
    pub readout_tokens: i64,
    #[serde(default)]
    pub readout: Readout,
    /// Widths of an optional MLP (linear, ReLU, dropout) before the input projection; its
    /// layers are initialised like the projection (`orth_gain`), as the reference does.
    #[serde(default)]
    pub input_hidden: Vec<i64>,
    /// Widths of an optional MLP (linear, ReLU, dropout) before the output projection.
    #[serde(default)]
    pub output_hidden: Vec<i64>,
    /// Dropout of the backbone (embeddings, attention, residuals; overrides the checkpoint's
    /// config), of the wrapper's MLP layers, and after the dense input projection (the
    /// reference's `in_net` ends in `nn.Dropout`; its token embedding has none).
    #[serde(default = "defaults::dropout")]
    pub dropout: f64,
    /// Gain of the orthogonal init (with zero bias) of the dense input layers, hidden ones
    /// included (the reference uses 1.41). `None`, written `"none"`, keeps PyTorch's default
    /// `nn.Linear` init, as the reference's `orth_gain=None` does.
    #[serde(default = "defaults::orth_gain", with = "orth_gain_text")]
    pub orth_gain: Option<f64>,
}

mod defaults {
    pub fn readout_tokens() -> i64 {
        1
    }
    pub fn dropout() -> f64 {
        0.1
    }
    pub fn orth_gain() -> Option<f64> {
        Some(1.41)
    }
}

/// `orth_gain` as TOML writes it: a number, or the string "none".
pub mod orth_gain_text {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Gain(f64),
        Word(String),
    }

    pub fn serialize<S: Serializer>(gain: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match gain {
            Some(g) => s.serialize_f64(*g),
            None => s.serialize_str("none"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        match Text::deserialize(d)? {
            Text::Gain(g) => Ok(Some(g)),
            Text::Word(w) if w == "none" => Ok(None),
            Text::Word(w) => Err(serde::de::Error::custom(format!(
                "orth_gain {w:?}: expected a number (the reference uses 1.41) or \"none\" (PyTorch's default init)"
            ))),
        }
    }
}

impl FptConfig {
    /// A classifier over dense tokens with the paper's defaults.
    pub fn dense(dim: i64, classes: i64) -> Self {
        FptConfig {
            input: InputSpec::Dense { dim },
            classes,
            readout_tokens: 1,
            readout: Readout::Last,
            input_hidden: vec![],
            output_hidden: vec![],
            dropout: defaults::dropout(),
            orth_gain: defaults::orth_gain(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        match self.input {
            InputSpec::Dense { dim } if dim <= 0 => bail!("input dim is {dim}; it must be positive"),
            InputSpec::Tokens { vocab } if vocab <= 0 => bail!("input vocab is {vocab}; it must be positive"),
            _ => {}
        }
        if self.classes <= 0 {
            bail!("classes is {}; it must be positive", self.classes);
        }
        if self.readout_tokens <= 0 {
            bail!("readout_tokens is {}; it must be positive", self.readout_tokens);
        }
        if let Some(w) = self.input_hidden.iter().chain(&self.output_hidden).find(|w| **w <= 0) {
            bail!("hidden layer width {w} must be positive");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("dropout is {}; it must be in [0, 1)", self.dropout);
        }
        if let Some(gain) = self.orth_gain {
            if !(gain.is_finite() && gain > 0.0) {
                bail!("orth_gain is {gain}; it must be a positive finite number (the reference uses 1.41) or \"none\"");
            }
        }
        Ok(())
    }
}

/// A wrapper linear layer: orthogonal with `gain` and a zero bias (the reference's input
/// layers), or PyTorch's default init when `orthogonal_gain` is `None`.
fn linear(path: &nn::Path, n_in: i64, n_out: i64, orthogonal_gain: Option<f64>) -> Result<Linear> {
    match orthogonal_gain {
        Some(gain) => Linear::orthogonal(path, n_in, n_out, gain),
        None => Linear::pytorch_default(path, n_in, n_out),
    }
}

/// Linear + ReLU + dropout layers, in order.
#[derive(Debug)]
struct Mlp {
    layers: Vec<Linear>,
    dropout: f64,
}

impl Mlp {
    /// Returns the MLP and its output width. `orthogonal_gain` as for [`linear`], for
    /// every layer.
    fn new(path: &nn::Path, n_in: i64, widths: &[i64], dropout: f64, orthogonal_gain: Option<f64>) -> Result<(Self, i64)> {
        let mut layers = Vec::new();
        let mut width = n_in;
        for (i, &w) in widths.iter().enumerate() {
            layers.push(linear(&(path / i), width, w, orthogonal_gain)?);
            width = w;
        }
        Ok((Mlp { layers, dropout }, width))
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.shallow_clone();
        for layer in &self.layers {
            h = dropout(&layer.forward(&h).relu(), self.dropout, train);
        }
        h
    }
}

#[derive(Debug)]
enum InputLayer {
    Dense { hidden: Mlp, proj: Linear },
    Tokens { embedding: Tensor, vocab: i64 },
}

/// Input layer → backbone → output layer on the last `readout_tokens` positions.
///
/// A Llama backbone gets its own BOS embedding row before the tokens (frozen with the token
/// embedding; read-outs and lengths still count the input's tokens only): docs/model.md,
/// "Llama backbone", on why the paper's recipe needs it there.
///
/// Variables: the backbone's under Hugging Face names at the path given to [`Fpt::new`]; the
/// input layer under `input_layer.` (`hidden.{i}.*`, `proj.*` or `embedding.weight`); the output
/// layer under `output_layer.` (`hidden.{i}.*`, `proj.*`).
#[derive(Debug)]
pub struct Fpt {
    cfg: FptConfig,
    backbone: Backbone,
    input: InputLayer,
    output_hidden: Mlp,
    output_proj: Linear,
}

impl Fpt {
    /// Builds the model with Hugging Face's random backbone init, every tensor trainable; freeze
    /// after with [`Fpt::freeze`], and load pretrained weights with
    /// [`crate::checkpoint::load_weights`]. `backbone.*pdrop` are replaced by `cfg.dropout`.
    pub fn new(path: &nn::Path, backbone: &BackboneConfig, cfg: &FptConfig) -> Result<Self> {
        cfg.validate()?;
        let width = backbone.width();
        let backbone = Backbone::new(path, &backbone.clone().with_dropout(cfg.dropout))?;
        let in_path = path / "input_layer";
        let input = match cfg.input {
            InputSpec::Dense { dim } => {
                let (hidden, n_in) = Mlp::new(&(&in_path / "hidden"), dim, &cfg.input_hidden, cfg.dropout, cfg.orth_gain)?;
                let proj = linear(&(&in_path / "proj"), n_in, width, cfg.orth_gain)?;
                InputLayer::Dense { hidden, proj }
            }
            InputSpec::Tokens { vocab } => {
                if !cfg.input_hidden.is_empty() {
                    bail!("input_hidden needs dense inputs; token inputs use an embedding table");
                }
                // PyTorch's nn.Embedding default init, as the reference: normal(0, 1).
                let embedding = new_param(&(&in_path / "embedding"), "weight", &[vocab, width], Init::Normal { std: 1.0 })?;
                InputLayer::Tokens { embedding, vocab }
            }
        };
        let out_path = path / "output_layer";
        let (output_hidden, n_out_in) = Mlp::new(&(&out_path / "hidden"), width, &cfg.output_hidden, cfg.dropout, None)?;
        let output_proj = linear(&(&out_path / "proj"), n_out_in, cfg.classes, None)?;
        Ok(Fpt { cfg: cfg.clone(), backbone, input, output_hidden, output_proj })
    }

    pub fn config(&self) -> &FptConfig {
        &self.cfg
    }

    /// Applies `spec` to the model's variables in `vs` (the VarStore it was built in), once,
    /// from the groups the model declares ([`ParamGroups`]).
    pub fn freeze(&self, vs: &nn::VarStore, spec: &FreezeSpec) -> Result<()> {
        spec.apply(vs, self)
    }

    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// Switches the backbone to `precision` ([`Backbone::set_precision`]; `vs` is the model's
    /// VarStore, after any checkpoint was loaded).
    pub fn set_precision(&mut self, vs: &nn::VarStore, precision: Precision) -> Result<()> {
        self.backbone.set_precision(vs, precision)
    }

    /// Token features `[batch, seq, dim]` (float) or token ids `[batch, seq]` (int64) to logits:
    /// `[batch, classes]` when one token is read out, else `[batch, readout_tokens, classes]`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let embeds = self.embed(x, train)?;
        let seq = embeds.size()[1];
        let k = self.cfg.readout_tokens;
        if seq < k {
            bail!("sequence of {seq} tokens is shorter than the {k} read-out tokens");
        }
        let (embeds, n) = self.prefixed(embeds);
        // Read-out rows are the input's tokens, after any prefix.
        let start = match self.cfg.readout {
            Readout::Last => n + seq - k,
            Readout::First => n,
        };
        let last = self.backbone.forward_rows(&embeds, train, Some(Rows { start, len: k }))?.to_kind(Kind::Float);
        let logits = self.output_proj.forward(&self.output_hidden.forward(&last, train));
        Ok(if k == 1 { logits.squeeze_dim(1) } else { logits })
    }

    /// [`Fpt::forward`] for right-padded inputs: `lengths` (`[batch]` int64) counts each
    /// example's real tokens, the rest of its row being padding. The read-out is gathered per
    /// example — `Readout::Last`: its last `readout_tokens` real tokens; `Readout::First`: its
    /// first — and a bidirectional backbone (BERT) also gets the key-padding mask (Hugging
    /// Face's `attention_mask`), so no token attends to the padding. A causal backbone (GPT-2,
    /// the LSTM) needs no mask: nothing after the read-out reaches it. Either way an example's
    /// logits are those of the example alone, unpadded (tested per backbone). `lengths = None`
    /// is [`Fpt::forward`]: every position is input and the read-out is the final one.
    pub fn forward_padded(&self, x: &Tensor, lengths: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let Some(lengths) = lengths else { return self.forward(x, train) };
        let embeds = self.embed(x, train)?;
        let size = embeds.size();
        let (b, seq) = (size[0], size[1]);
        let k = self.cfg.readout_tokens;
        if lengths.size() != [b] || lengths.kind() != Kind::Int64 {
            bail!("lengths must be int64 [batch = {b}], got {:?} {:?}", lengths.kind(), lengths.size());
        }
        let lengths = lengths.to_device(embeds.device());
        // Checked on the CPU only (a GPU read-back would stall the step); task batches hold
        // lengths in 1..=seq by construction.
        if lengths.device() == tch::Device::Cpu && b > 0 {
            let (lo, hi) = (lengths.min().int64_value(&[]), lengths.max().int64_value(&[]));
            if lo < k || hi > seq {
                bail!("lengths span {lo}..={hi}; expected each in {k}..={seq} (at least the {k} read-out tokens, at most the sequence)");
            }
        }
        let (embeds, n) = self.prefixed(embeds);
        // Positions count the prefix rows (before every example's tokens) too.
        let offsets = Tensor::arange(k, (Kind::Int64, embeds.device())).unsqueeze(0) + n;
        let positions = match self.cfg.readout {
            Readout::Last => lengths.unsqueeze(1) - k + offsets,
            Readout::First => offsets.expand([b, k], false).contiguous(),
        };
        let mask = (!self.backbone.is_causal())
            .then(|| Tensor::arange(seq + n, (Kind::Int64, embeds.device())).unsqueeze(0).lt_tensor(&(lengths.unsqueeze(1) + n)));
        let read = self.backbone.forward_at(&embeds, train, &positions, mask.as_ref())?.to_kind(Kind::Float);
        let logits = self.output_proj.forward(&self.output_hidden.forward(&read, train));
        Ok(if k == 1 { logits.squeeze_dim(1) } else { logits })
    }

    /// The backbone's attention probabilities per layer, `[batch, heads, seq, seq]` (eval); with
    /// a prefix (Llama's BOS row) its positions come first, `seq` counting them.
    pub fn attention_maps(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let (embeds, _) = self.prefixed(self.embed(x, false)?);
        self.backbone.attention_maps(&embeds)
    }

    /// `embeds` `[batch, seq, width]` with the backbone's input prefix
    /// ([`Backbone::input_prefix`], Llama's BOS embedding) before every example's tokens, and how
    /// many rows it added.
    fn prefixed(&self, embeds: Tensor) -> (Tensor, i64) {
        match self.backbone.input_prefix() {
            None => (embeds, 0),
            Some(prefix) => {
                let (b, n, w) = (embeds.size()[0], prefix.size()[1], prefix.size()[2]);
                let prefix = prefix.to_device(embeds.device()).to_kind(embeds.kind()).expand([b, n, w], false);
                (Tensor::cat(&[&prefix, &embeds], 1), n)
            }
        }
    }

    /// The input layer: token features or ids to backbone-width embeddings, validated.
    fn embed(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let size = x.size();
        let embeds = match &self.input {
            InputLayer::Dense { hidden, proj } => {
                let InputSpec::Dense { dim } = self.cfg.input else { unreachable!("input layer matches config") };
                if size.len() != 3 || size[2] != dim {
                    bail!("dense input must be [batch, seq, {dim}], got {size:?}");
                }
                if !x.is_floating_point() {
                    bail!("dense input must be a float tensor, got {:?}", x.kind());
                }
                let projected = proj.forward(&hidden.forward(&x.to_kind(Kind::Float), train));
                dropout(&projected, self.cfg.dropout, train)
            }
            InputLayer::Tokens { embedding, vocab } => {
                if size.len() != 2 {
                    bail!("token input must be [batch, seq] ids, got {size:?}");
                }
                if x.kind() != Kind::Int64 {
                    bail!("token input must be int64 ids, got {:?}", x.kind());
                }
                // Checked on the CPU only: reading the range back from a GPU would stall the
                // step. (Task loaders map every token into the vocabulary; on CUDA a bad id
                // still trips the embedding kernel's own assert.)
                if x.numel() > 0 && x.device() == tch::Device::Cpu {
                    let (lo, hi) = (x.min().int64_value(&[]), x.max().int64_value(&[]));
                    if lo < 0 || hi >= *vocab {
                        bail!("token ids span {lo}..={hi}, outside the vocabulary 0..{vocab}");
                    }
                }
                Tensor::embedding(embedding, x, -1, false, false)
            }
        };
        Ok(embeds)
    }
}

/// The wrapper's own layers are `input` and `output`; every other variable is the backbone's,
/// grouped as the backbone declares.
impl ParamGroups for Fpt {
    fn param_group(&self, name: &str) -> Option<ParamGroup> {
        match name.split('.').next() {
            Some("input_layer") => Some(ParamGroup::Input),
            Some("output_layer") => Some(ParamGroup::Output),
            _ => self.backbone.param_group(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpt2::Gpt2Config;
    use tch::Device;

    fn tiny(cfg: &FptConfig) -> (nn::VarStore, Fpt) {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut backbone = Gpt2Config::custom(1, 32, 4);
        backbone.n_positions = 16;
        let model = Fpt::new(&vs.root(), &backbone.into(), cfg).unwrap();
        model.freeze(&vs, &FreezeSpec::parse("paper").unwrap()).unwrap();
        (vs, model)
    }

    fn var(vs: &nn::VarStore, name: &str) -> Tensor {
        vs.variables().remove(name).unwrap_or_else(|| panic!("no variable {name}"))
    }

    /// The smaller Gram matrix of an orthogonal `[out, in]` weight is gain² · I.
    fn assert_orthogonal(w: &Tensor, gain: f64, name: &str) {
        let (out, inp) = (w.size()[0], w.size()[1]);
        let gram = if out <= inp { w.matmul(&w.tr()) } else { w.tr().matmul(w) };
        let eye = Tensor::eye(out.min(inp), (Kind::Float, Device::Cpu)) * (gain * gain);
        let err = (gram - eye).abs().max().double_value(&[]);
        // fp32 Gram of unit vectors of length ≤ 48: errors near 1e-6; 1e-4 still catches any
        // non-orthogonal init (PyTorch's uniform default is off by O(0.1)).
        assert!(err < 1e-4, "{name}: Gram matrix off gain² I by {err}");
    }

    #[test]
    fn dense_input_layers_hidden_ones_included_are_orthogonal_with_zero_bias() {
        let mut cfg = FptConfig::dense(6, 3);
        cfg.input_hidden = vec![48, 8];
        cfg.output_hidden = vec![5];
        let (vs, _) = tiny(&cfg);
        for (layer, gain) in [("input_layer.hidden.0", 1.41), ("input_layer.hidden.1", 1.41), ("input_layer.proj", 1.41)] {
            assert_orthogonal(&var(&vs, &format!("{layer}.weight")), gain, layer);
            assert_eq!(var(&vs, &format!("{layer}.bias")).abs().max().double_value(&[]), 0.0, "{layer}.bias");
        }
        // The output MLP keeps PyTorch's default init, as the reference's out_net does.
        let bias = var(&vs, "output_layer.hidden.0.bias");
        assert!(bias.abs().max().double_value(&[]) > 0.0);
        assert!(bias.abs().max().double_value(&[]) <= 1.0 / 32f64.sqrt());
    }

    #[test]
    fn orth_gain_none_keeps_pytorch_default_init() {
        let mut cfg = FptConfig::dense(6, 3);
        cfg.input_hidden = vec![8];
        cfg.orth_gain = None;
        let (vs, _) = tiny(&cfg);
        for (layer, fan_in) in [("input_layer.hidden.0", 6f64), ("input_layer.proj", 8f64)] {
            let bound = 1.0 / fan_in.sqrt();
            for part in ["weight", "bias"] {
                let t = var(&vs, &format!("{layer}.{part}"));
                let max = t.abs().max().double_value(&[]);
                assert!(max > 0.0 && max <= bound, "{layer}.{part}: max |x| {max}, bound {bound}");
            }
        }
    }

    #[test]
    fn orth_gain_reads_a_number_or_none_from_toml() {
        let parse = |text: &str| toml::from_str::<FptConfig>(&format!("input = {{ dense = {{ dim = 4 }} }}\nclasses = 2\n{text}"));
        assert_eq!(parse("").unwrap().orth_gain, Some(1.41));
        assert_eq!(parse("orth_gain = 2.0").unwrap().orth_gain, Some(2.0));
        assert_eq!(parse("orth_gain = \"none\"").unwrap().orth_gain, None);
        let err = parse("orth_gain = \"big\"").unwrap_err().to_string();
        assert!(err.contains("orth_gain") && err.contains("none"), "{err}");
        let round_trip: FptConfig = toml::from_str(&toml::to_string(&parse("orth_gain = \"none\"").unwrap()).unwrap()).unwrap();
        assert_eq!(round_trip.orth_gain, None);
    }

    #[test]
    fn dropout_follows_the_dense_input_projection_in_training_only() {
        let mut cfg = FptConfig::dense(6, 3);
        cfg.dropout = 0.5;
        let (_vs, model) = tiny(&cfg);
        let x = Tensor::randn([64, 8, 6], (Kind::Float, Device::Cpu));
        let zeros = |t: &Tensor| t.eq(0.0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        let eval = model.embed(&x, false).unwrap();
        assert_eq!(zeros(&eval), 0.0, "no dropout in evaluation");
        let train = model.embed(&x, true).unwrap();
        // 16,384 Bernoulli(0.5) draws: the fraction lies within ±0.02 of 0.5 with
        // overwhelming probability (its standard deviation is 0.004).
        let dropped = zeros(&train);
        assert!((dropped - 0.5).abs() < 0.02, "dropped fraction {dropped}");
        let kept = train.ne(0.0);
        let scaled = (eval * 2.0).masked_select(&kept);
        assert!(train.masked_select(&kept).allclose(&scaled, 1e-6, 1e-6, false), "kept values are scaled by 1/(1-p)");
    }

    #[test]
    fn token_embeddings_get_no_input_dropout_as_in_the_reference() {
        let mut cfg = FptConfig::dense(1, 3);
        cfg.input = InputSpec::Tokens { vocab: 10 };
        cfg.dropout = 0.5;
        let (_vs, model) = tiny(&cfg);
        let ids = Tensor::randint(10, [16, 8], (Kind::Int64, Device::Cpu));
        assert!(model.embed(&ids, true).unwrap().equal(&model.embed(&ids, false).unwrap()));
    }
}
