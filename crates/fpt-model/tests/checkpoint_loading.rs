//! Checkpoint directories written from Rust: round trip, accepted variants (bf16, LM head and
//! mask buffers, shards) and every kind of bad input, each with an error naming the problem.

use fpt_model::checkpoint::load_weights;
use fpt_model::{load_backbone_dir as load_gpt2_dir, FreezeSpec, Gpt2, Gpt2Config};
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

fn tiny_config() -> Gpt2Config {
    let mut cfg = Gpt2Config::custom(2, 24, 3);
    cfg.vocab_size = 11;
    cfg.n_positions = 16;
    cfg
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ckpt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A random tiny GPT-2's tensors, by Hugging Face name.
fn tiny_tensors(seed: i64) -> Vec<(String, Tensor)> {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Gpt2::new(&vs.root(), &tiny_config()).unwrap();
    FreezeSpec::all().apply(&vs, &model).unwrap();
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

fn write_dir(dir: &Path, tensors: &[(String, Tensor)]) {
    std::fs::write(dir.join("config.json"), serde_json::to_string(&tiny_config()).unwrap()).unwrap();
    Tensor::write_safetensors(tensors, dir.join("model.safetensors")).unwrap();
}

fn load_err(dir: &Path) -> String {
    let err = load_gpt2_dir(dir, Device::Cpu).expect_err("load should fail");
    format!("{err:#}")
}

#[test]
fn round_trip_restores_every_tensor() {
    let dir = scratch("roundtrip");
    let original = tiny_tensors(1);
    write_dir(&dir, &original);
    tch::manual_seed(99); // a different random init underneath
    let (vs, model) = load_gpt2_dir(&dir, Device::Cpu).unwrap();
    let loaded = vs.variables();
    assert_eq!(loaded.len(), original.len());
    for (name, t) in &original {
        assert!(loaded[name].equal(t), "{name} differs after loading");
    }
    let x = Tensor::randn([2, 5, 24], (Kind::Float, Device::Cpu));
    assert_eq!(model.forward_embeds(&x, false).unwrap().size(), vec![2, 5, 24]);
}

#[test]
fn accepts_prefix_bf16_lm_head_and_mask_buffers() {
    let dir = scratch("variants");
    // Generated once: tests share libtorch's global generator, so a second call with the same
    // seed can differ when another test draws numbers in between.
    let original = tiny_tensors(2);
    let mut tensors: Vec<(String, Tensor)> = original
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .map(|(n, t)| (format!("transformer.{n}"), t.to_kind(Kind::BFloat16)))
        .collect();
    tensors.push(("lm_head.weight".into(), Tensor::zeros([11, 24], (Kind::Float, Device::Cpu))));
    tensors.push(("transformer.h.0.attn.bias".into(), Tensor::ones([1, 1, 16, 16], (Kind::Float, Device::Cpu))));
    tensors.push(("h.1.attn.masked_bias".into(), Tensor::from(-1e4f32)));
    write_dir(&dir, &tensors);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Gpt2::new(&vs.root(), &tiny_config()).unwrap();
    FreezeSpec::all().apply(&vs, &model).unwrap();
    let report = load_weights(&vs, &dir).unwrap();
    assert_eq!(report.loaded, original.len());
    assert_eq!(report.skipped.len(), 3, "{:?}", report.skipped);
    let wpe = &vs.variables()["wpe.weight"];
    assert_eq!(wpe.kind(), Kind::Float);
    let source = &original.iter().find(|(n, _)| n == "wpe.weight").unwrap().1;
    assert!(wpe.allclose(&source.to_kind(Kind::BFloat16).to_kind(Kind::Float), 0.0, 0.0, false));
}

#[test]
fn sharded_directory_loads() {
    let dir = scratch("sharded");
    let tensors = tiny_tensors(3);
    let (first, second) = tensors.split_at(tensors.len() / 2);
    Tensor::write_safetensors(first, dir.join("a.safetensors")).unwrap();
    Tensor::write_safetensors(second, dir.join("b.safetensors")).unwrap();
    let map: serde_json::Map<String, serde_json::Value> = first
        .iter()
        .map(|(n, _)| (n.clone(), "a.safetensors".into()))
        .chain(second.iter().map(|(n, _)| (n.clone(), "b.safetensors".into())))
        .collect();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_string(&tiny_config()).unwrap()).unwrap();
    let (vs, _) = load_gpt2_dir(&dir, Device::Cpu).unwrap();
    assert!(vs.variables()["h.1.mlp.c_fc.weight"].equal(&tensors.iter().find(|(n, _)| n == "h.1.mlp.c_fc.weight").unwrap().1));

    // An index that names a shard which is not there.
    std::fs::remove_file(dir.join("b.safetensors")).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("b.safetensors") && err.contains("not in"), "{err}");
    // An index that is not the expected JSON.
    std::fs::write(dir.join("model.safetensors.index.json"), "{\"weights\": 3}").unwrap();
    let err = load_err(&dir);
    assert!(err.contains("weight_map") && err.contains("index.json"), "{err}");
}

#[test]
fn missing_unexpected_and_misshaped_tensors_are_each_listed() {
    let dir = scratch("mismatch");
    let mut tensors = tiny_tensors(4);
    tensors.retain(|(n, _)| n != "h.1.ln_2.bias" && n != "ln_f.weight");
    tensors.push(("h.0.attn.rotary.weight".into(), Tensor::zeros([3], (Kind::Float, Device::Cpu))));
    for (name, t) in tensors.iter_mut() {
        if name == "h.0.mlp.c_fc.weight" {
            *t = t.transpose(0, 1).contiguous(); // a Linear-layout [out, in] weight
        }
    }
    write_dir(&dir, &tensors);
    let err = load_err(&dir);
    for expected in [
        "missing (2)",
        "h.1.ln_2.bias",
        "ln_f.weight",
        "unexpected (1)",
        "h.0.attn.rotary.weight",
        "wrong shape (1)",
        "h.0.mlp.c_fc.weight: file has [96, 24], model expects [24, 96]",
    ] {
        assert!(err.contains(expected), "error lacks {expected:?}:\n{err}");
    }
}

#[test]
fn integer_tensors_are_rejected() {
    let dir = scratch("dtype");
    let mut tensors = tiny_tensors(5);
    for (name, t) in tensors.iter_mut() {
        if name == "wpe.weight" {
            *t = t.to_kind(Kind::Int);
        }
    }
    write_dir(&dir, &tensors);
    let err = load_err(&dir);
    assert!(err.contains("unsupported dtype") && err.contains("wpe.weight"), "{err}");
}

#[test]
fn corrupt_and_absent_files_name_the_file() {
    let tensors = tiny_tensors(6);
    // Garbage, empty and truncated weight files.
    let full = {
        let dir = scratch("full");
        write_dir(&dir, &tensors);
        std::fs::read(dir.join("model.safetensors")).unwrap()
    };
    for (case, bytes) in [
        ("garbage", b"this is not a safetensors file at all".to_vec()),
        ("empty", Vec::new()),
        ("truncated", full[..full.len() / 2].to_vec()),
        ("header-only", full[..40].to_vec()),
    ] {
        let dir = scratch(case);
        write_dir(&dir, &tensors);
        std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
        let err = load_err(&dir);
        assert!(err.contains("model.safetensors") && err.contains("not a valid safetensors file"), "{case}: {err}");
    }

    // Pickled weights only: refused with the conversion command.
    let dir = scratch("pickle");
    write_dir(&dir, &tensors);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("pytorch_model.bin"), b"PK\x03\x04 pickle").unwrap();
    let err = load_err(&dir);
    assert!(err.contains("pytorch_model.bin") && err.contains("save_pretrained") && err.contains("execute code"), "{err}");

    // No weights at all.
    std::fs::remove_file(dir.join("pytorch_model.bin")).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("neither model.safetensors nor model.safetensors.index.json"), "{err}");

    // config.json absent, malformed, or for another architecture.
    let dir = scratch("config");
    write_dir(&dir, &tensors);
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("config.json"), "{err}");
    std::fs::write(dir.join("config.json"), "{\"n_embd\": \"wide\"}").unwrap();
    let err = load_err(&dir);
    assert!(err.contains("config.json") && err.contains("not a valid GPT-2 config.json"), "{err}");
    std::fs::write(dir.join("config.json"), "{\"model_type\": \"t5\"}").unwrap();
    let err = load_err(&dir);
    assert!(err.contains("config.json") && err.contains("model_type \"t5\" is not supported"), "{err}");
    // A BERT config over GPT-2 weights: the architecture follows config.json, and every tensor
    // name then disagrees — listed, not silently ignored.
    std::fs::write(
        dir.join("config.json"),
        "{\"model_type\": \"bert\", \"hidden_size\": 24, \"num_attention_heads\": 3, \"num_hidden_layers\": 1, \"intermediate_size\": 8}",
    )
    .unwrap();
    let err = load_err(&dir);
    // Long lists show their first items and a count.
    assert!(err.contains("missing (21)") && err.contains("embeddings.LayerNorm.bias") && err.contains("… and 13 more"), "{err}");
    assert!(err.contains("unexpected (28)") && err.contains("h.0.attn.c_attn.weight") && err.contains("… and 20 more"), "{err}");
    assert!(err.lines().count() < 25, "{err}");

    // Not a directory.
    let err = format!("{:#}", load_gpt2_dir(Path::new("/nonexistent/gpt2"), Device::Cpu).unwrap_err());
    assert!(err.contains("/nonexistent/gpt2"), "{err}");
}

/// A config.json whose sizes disagree with its weights fails before the model is allocated:
/// 20,000,000 positions (1.9 GB as a random init) over a 16-position file, and a vocabulary of
/// 10^12 that could not be allocated at all.
#[test]
fn config_sizes_are_checked_against_the_header_before_allocating() {
    let tensors = tiny_tensors(7);
    for (field, value, expected) in [
        ("n_positions", 20_000_000i64, "wpe.weight: file has [16, 24], model expects [20000000, 24]"),
        ("vocab_size", 1_000_000_000_000, "wte.weight: file has [11, 24], model expects [1000000000000, 24]"),
    ] {
        let dir = scratch(field);
        write_dir(&dir, &tensors);
        let mut cfg = serde_json::to_value(tiny_config()).unwrap();
        cfg[field] = serde_json::json!(value);
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
        let start = std::time::Instant::now();
        let err = load_err(&dir);
        assert!(err.contains(expected) && err.contains("wrong shape (1)") && err.contains("config.json"), "{field}: {err}");
        // Allocating and drawing 1.9 GB takes seconds; the header check takes milliseconds.
        assert!(start.elapsed().as_secs_f64() < 2.0, "{field}: took {:?}", start.elapsed());
    }
}
