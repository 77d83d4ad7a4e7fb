//! Right padding, per backbone: an example padded in a batch gives what the example alone,
//! unpadded, gives (eval) — GPT-2, Llama and the LSTM (causal) read out at the last real token
//! and need no mask; BERT (bidirectional) also masks the padding out of attention. Differences stay
//! within `tolerance::reordering_bound` (the padded batch's GEMMs have other shapes); the fp64
//! evaluation of the unpadded example is the truth. Also: a causal backbone refuses a mask, and
//! bad lengths are errors.

use fpt_model::tolerance::{max_abs_diff, reordering_bound};
use fpt_model::{
    Backbone, BackboneConfig, BertConfig, Fpt, FptConfig, FreezeSpec, Gpt2Config, InputSpec, LlamaConfig, Lstm, LstmConfig, Readout,
};
use tch::{nn, Device, Kind, Tensor};

/// The tests seed libtorch's global generator (init, the LSTM's initial-state draws); they run
/// one at a time so that no other test draws in between.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const VOCAB: i64 = 7;
const PAD: i64 = 6;
const EXAMPLES: [&[i64]; 3] = [&[1, 2, 3, 4, 5], &[5, 4, 3, 2, 1, 0, 1, 2, 3], &[2, 1]];

fn gpt2() -> BackboneConfig {
    let mut cfg = Gpt2Config::custom(2, 32, 4);
    cfg.n_positions = 16;
    cfg.into()
}

fn bert() -> BackboneConfig {
    let cfg: BertConfig = serde_json::from_value(serde_json::json!({
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "max_position_embeddings": 16, "vocab_size": 10
    }))
    .unwrap();
    BackboneConfig::Bert(cfg)
}

fn llama() -> BackboneConfig {
    let mut cfg = LlamaConfig::custom(2, 32, 4, 2, 64);
    cfg.max_position_embeddings = 16;
    BackboneConfig::Llama(cfg)
}

/// The model and its fp64 twin (same weights).
fn token_fpt(cfg: &BackboneConfig, readout: Readout, k: i64) -> (Fpt, Fpt, nn::VarStore, nn::VarStore) {
    tch::manual_seed(11);
    let fc = FptConfig {
        input: InputSpec::Tokens { vocab: VOCAB },
        classes: 3,
        readout_tokens: k,
        readout,
        input_hidden: vec![],
        output_hidden: vec![],
        dropout: 0.1,
        orth_gain: Some(1.41),
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Fpt::new(&vs.root(), cfg, &fc).unwrap();
    FreezeSpec::parse("paper").unwrap().apply(&vs, &model).unwrap();
    let mut vs64 = nn::VarStore::new(Device::Cpu);
    let model64 = Fpt::new(&vs64.root(), cfg, &fc).unwrap();
    FreezeSpec::parse("paper").unwrap().apply(&vs64, &model64).unwrap();
    vs64.copy(&vs).unwrap();
    vs64.double();
    (model, model64, vs, vs64)
}

/// `EXAMPLES` right-padded with `PAD` to the longest, and their lengths.
fn padded_batch() -> (Tensor, Tensor) {
    let width = EXAMPLES.iter().map(|e| e.len()).max().unwrap();
    let rows: Vec<i64> = EXAMPLES.iter().flat_map(|e| e.iter().copied().chain(std::iter::repeat(PAD)).take(width)).collect();
    let lengths: Vec<i64> = EXAMPLES.iter().map(|e| e.len() as i64).collect();
    (Tensor::from_slice(&rows).reshape([EXAMPLES.len() as i64, width as i64]), Tensor::from_slice(&lengths))
}

/// GPT-2, BERT and Llama through the whole FPT (token embedding, backbone, output layer): each
/// example's logits in the padded batch equal its logits alone, for the last token and the
/// last / first two tokens read out (Llama's with its BOS row first: positions shift by one).
#[test]
fn padded_examples_give_their_unpadded_logits_for_gpt2_bert_and_llama() {
    let _serial = serial();
    for (name, cfg) in [("gpt2", gpt2()), ("bert", bert()), ("llama", llama())] {
        for (readout, k) in [(Readout::Last, 1), (Readout::Last, 2), (Readout::First, 2)] {
            let (model, model64, _vs, _vs64) = token_fpt(&cfg, readout, k);
            let (x, lengths) = padded_batch();
            let padded = tch::no_grad(|| model.forward_padded(&x, Some(&lengths), false)).unwrap();
            let expected_shape = if k == 1 { vec![3, 3] } else { vec![3, k, 3] };
            assert_eq!(padded.size(), expected_shape, "{name}");
            for (i, example) in EXAMPLES.iter().enumerate() {
                let alone_x = Tensor::from_slice(example).unsqueeze(0);
                let alone = tch::no_grad(|| model.forward(&alone_x, false)).unwrap().get(0);
                let alone64 = tch::no_grad(|| model64.forward(&alone_x, false)).unwrap().get(0);
                let (d, bound) = (max_abs_diff(&padded.get(i as i64), &alone), reordering_bound(&alone, &alone64));
                assert!(d <= bound, "{name} {readout:?} k={k} example {i}: padded logits differ by {d:.3e} (bound {bound:.3e})");
            }
        }
    }
}

/// What the padding would do without the per-backbone policy: read at the final position (a
/// pad) the logits change; BERT read at the last real token but without the mask also changes.
#[test]
fn without_the_policy_padding_changes_the_logits() {
    let _serial = serial();
    for (name, cfg) in [("gpt2", gpt2()), ("bert", bert())] {
        let (model, _, _vs, _vs64) = token_fpt(&cfg, Readout::Last, 1);
        let (x, lengths) = padded_batch();
        let policy = tch::no_grad(|| model.forward_padded(&x, Some(&lengths), false)).unwrap();
        let final_position = tch::no_grad(|| model.forward(&x, false)).unwrap();
        assert!(max_abs_diff(&policy.get(0), &final_position.get(0)) > 1e-4, "{name}: example 0 is padded");
        assert!(max_abs_diff(&policy.get(1), &final_position.get(1)) < 1e-4, "{name}: example 1 fills the batch");
    }
    // BERT's backbone at the last real token, with and without the key-padding mask.
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let bb = Backbone::new(&vs.root(), &bert()).unwrap();
    FreezeSpec::all().apply(&vs, &bb).unwrap();
    let x = Tensor::randn([1, 8, 32], (Kind::Float, Device::Cpu));
    let at = Tensor::from_slice(&[4i64]).reshape([1, 1]);
    let mask = Tensor::arange(8, (Kind::Int64, Device::Cpu)).lt(5).unsqueeze(0);
    let masked = bb.forward_at(&x, false, &at, Some(&mask)).unwrap();
    let unmasked = bb.forward_at(&x, false, &at, None).unwrap();
    let alone = bb.forward_embeds(&x.narrow(1, 0, 5), false).unwrap().narrow(1, 4, 1);
    assert!(max_abs_diff(&masked, &alone) < max_abs_diff(&unmasked, &alone) * 1e-2, "the mask is what removes the padding's influence");
}

/// The LSTM (causal, recurrent): the state at an example's last real token is the same padded
/// or not, with the same initial states; `Backbone::forward_at` gathers exactly that row.
#[test]
fn the_lstm_reads_the_same_state_at_the_last_real_token_padded_or_not() {
    let _serial = serial();
    tch::manual_seed(5);
    let cfg = LstmConfig { num_layers: 2, hidden_size: 16, dropout: 0.1 };
    let vs = nn::VarStore::new(Device::Cpu);
    let lstm = Lstm::new(&vs.root(), &cfg).unwrap();
    FreezeSpec::all().apply(&vs, &lstm).unwrap();
    let mut vs64 = nn::VarStore::new(Device::Cpu);
    let lstm64 = Lstm::new(&vs64.root(), &cfg).unwrap();
    FreezeSpec::all().apply(&vs64, &lstm64).unwrap();
    vs64.copy(&vs).unwrap();
    vs64.double();
    let opts = (Kind::Float, Device::Cpu);
    let states: Vec<(Tensor, Tensor)> = (0..2).map(|_| (Tensor::randn([1, 16], opts), Tensor::randn([1, 16], opts))).collect();
    let states64: Vec<(Tensor, Tensor)> = states.iter().map(|(h, c)| (h.to_kind(Kind::Double), c.to_kind(Kind::Double))).collect();
    let padded = Tensor::randn([1, 9, 16], opts);
    for len in [1i64, 4, 9] {
        let alone = padded.narrow(1, 0, len);
        let at_pad = lstm.forward_with_states(&padded, &states, false).unwrap().get(0).get(len - 1);
        let ref32 = lstm.forward_with_states(&alone, &states, false).unwrap().get(0).get(len - 1);
        let ref64 = lstm64.forward_with_states(&alone.to_kind(Kind::Double), &states64, false).unwrap().get(0).get(len - 1);
        let (d, bound) = (max_abs_diff(&at_pad, &ref32), reordering_bound(&ref32, &ref64));
        assert!(d <= bound, "length {len}: the padded sequence's state differs by {d:.3e} (bound {bound:.3e})");
    }
    // Backbone::forward_at on the LSTM: the gathered rows of its forward (same initial draws).
    let bb = Backbone::Lstm(lstm);
    let pos = Tensor::from_slice(&[3i64, 8]).reshape([1, 2]);
    tch::manual_seed(9);
    let at = bb.forward_at(&padded, false, &pos, None).unwrap();
    tch::manual_seed(9);
    let full = bb.forward_embeds(&padded, false).unwrap();
    assert!(at.get(0).get(0).equal(&full.get(0).get(3)) && at.get(0).get(1).equal(&full.get(0).get(8)));
}

/// A causal backbone refuses a mask (it needs none); read-out positions and lengths are checked.
#[test]
fn masks_positions_and_lengths_are_checked() {
    let _serial = serial();
    let err = |r: anyhow::Result<Tensor>| format!("{:#}", r.err().expect("must fail"));
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let bb = Backbone::new(&vs.root(), &gpt2()).unwrap();
    FreezeSpec::all().apply(&vs, &bb).unwrap();
    let x = Tensor::randn([2, 5, 32], (Kind::Float, Device::Cpu));
    let pos = Tensor::from_slice(&[4i64, 2]).reshape([2, 1]);
    let mask = Tensor::ones([2, 5], (Kind::Int64, Device::Cpu));
    assert!(err(bb.forward_at(&x, false, &pos, Some(&mask))).contains("gpt2 is causal"));
    assert!(err(bb.forward_at(&x, false, &Tensor::from_slice(&[5i64, 2]).reshape([2, 1]), None)).contains("outside the sequence 0..5"));
    assert!(err(bb.forward_at(&x, false, &Tensor::from_slice(&[1i64, 2]), None)).contains("[batch = 2, k ≥ 1]"));
    assert!(err(bb.forward_at(&x, false, &pos.to_kind(Kind::Int), None)).contains("int64"));
    let bert_vs = nn::VarStore::new(Device::Cpu);
    let bert_bb = Backbone::new(&bert_vs.root(), &bert()).unwrap();
    FreezeSpec::all().apply(&bert_vs, &bert_bb).unwrap();
    assert!(err(bert_bb.forward_at(&x, false, &pos, Some(&Tensor::ones([2, 4], (Kind::Int64, Device::Cpu)))))
        .contains("attention_mask must be [batch = 2, seq = 5]"));

    let (model, _, _vs, _vs64) = token_fpt(&gpt2(), Readout::Last, 2);
    let (x, _) = padded_batch();
    for (lengths, needle) in [
        (Tensor::from_slice(&[5i64, 9]), "lengths must be int64 [batch = 3]"),
        (Tensor::from_slice(&[5i32, 9, 2]), "lengths must be int64"),
        (Tensor::from_slice(&[5i64, 10, 2]), "expected each in 2..=9"),
        (Tensor::from_slice(&[5i64, 9, 1]), "at least the 2 read-out tokens"),
    ] {
        assert!(err(model.forward_padded(&x, Some(&lengths), false)).contains(needle), "{needle}");
    }
}
