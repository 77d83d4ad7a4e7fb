"""Writes Llama checkpoints and reference outputs with Hugging Face `transformers`.

Usage: python make_llama_fixtures.py OUT_DIR [CASE ...]

Like make_gpt2_fixtures.py: for each case, OUT_DIR/CASE/model/ is a checkpoint directory saved by
`save_pretrained` — `LlamaModel` names (`embed_tokens.weight`, `layers.{i}.…`, `norm.weight`),
`model.`-prefixed `LlamaForCausalLM` names (tied embeddings: no `lm_head.weight` stored; untied:
`lm_head.weight` stored, which a backbone loader skips), with transformers 5's `rope_parameters`
in config.json instead of `rope_theta` and `rope_scaling` ("v5_config"), or sharded (`model-0000k-of-0000n.safetensors`
+ `model.safetensors.index.json`) — and OUT_DIR/CASE/reference.safetensors holds:
  inputs_embeds       random [batch, seq, hidden_size]
  last_hidden_state   LlamaModel(inputs_embeds=...) in eval mode, fp32, eager attention, no
                      attention mask (causal; positions 0..seq-1), after the final norm
  cotangent           random tensor R of the output's shape
  grad_inputs         d(sum(last_hidden_state * R)) / d inputs_embeds
  attentions          every layer's attention probabilities [layers, batch, heads, seq, seq]
                      (heads = num_attention_heads: key/value heads repeated, as HF returns them)
  *_f64, *_noise      the fp64 truth of those three outputs and the reference's fp32 noise
                      (float64_reference.py; the rule of fpt_model::tolerance)
OUT_DIR/cases.json lists each case's configuration. Every parameter is perturbed away from HF's
init (the RMSNorm gains too), so a tensor that fails to load changes the output.

The fp64 truth is computed in fp64 throughout. transformers' Llama does not do that by itself
when `.double()`'d: RMSNorm upcasts to fp32 *and back to the input dtype* (for fp64 input: a
round trip through fp32), eager attention takes its softmax in fp32, and the rotary embedding
computes its inverse frequencies, angles, cos and sin in fp32. The classes below replace those
three pieces with versions that compute in max(input dtype, fp32): for fp32 inputs they run the
very same operations (checked: bit-identical outputs), for fp64 they stay in fp64 (the rotary
inverse frequencies are recomputed in fp64 from the config, llama3 scaling included). The fp32
reference's RoPE rounding therefore counts in its noise, as any other fp32 rounding does.

Case "smollm2" uses the real SmolLM2-135M-Instruct that `cargo xtask setup` converts
(`$FPT_SMOLLM2_DIR`, else `<venv>/smollm2`; OUT_DIR/smollm2/model is a symlink to it, not a
copy): transformers' default SDPA attention, random inputs at the scale of the model's token
embeddings, no attention maps. Nothing here is committed; tests run it each time.
"""
import json
import math
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (LlamaConfig, LlamaForCausalLM, LlamaModel, MistralConfig, MistralForCausalLM, MistralModel,
                          Qwen2Config, Qwen2ForCausalLM, Qwen2Model)
from transformers.models.llama import modeling_llama
from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding, repeat_kv
from transformers.models.mistral import modeling_mistral
from transformers.models.qwen2 import modeling_qwen2

sys.path.insert(0, str(Path(__file__).parent))
from float64_reference import float64_outputs  # noqa: E402

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 256}

# name: (layers, hidden, heads, kv_heads, head_dim, intermediate, rope_theta, rms_eps,
#        rope_scaling, tie_word_embeddings, max_pos, batch, seq, layout[, other config fields])
# A "model_type" among the other fields picks Qwen2's or Mistral's classes instead of Llama's.
CASES = {
    # grouped-query attention (2 query heads per key/value head), LlamaModel names
    "llama2x64_gqa": (2, 64, 4, 2, None, 128, 10000.0, 1e-6, None, False, 64, 3, 17, "plain"),
    # odd head count (3 heads of 32, no grouping), other theta and eps, LlamaForCausalLM names
    # ("model." prefix) with tied embeddings (no lm_head stored), seq 40
    "llama3x96_odd_tied": (3, 96, 3, 3, None, 200, 500000.0, 1e-5, None, True, 40, 2, 40, "causal_lm"),
    # 5 query heads sharing 1 key/value head (multi-query), head_dim 24, sharded files
    "llama2x120_h5kv1_sharded": (2, 120, 5, 1, None, 240, 10000.0, 1e-5, None, False, 32, 2, 9, "sharded"),
    # llama3 RoPE scaling (head_dim 16, theta 5e5: 2 frequencies kept, 1 smoothed, 5 divided by 8),
    # LlamaForCausalLM names with an untied lm_head.weight stored
    "llama2x64_rope_llama3_untied": (2, 64, 4, 2, None, 128, 500000.0, 1e-5, LLAMA3, False, 1024, 2, 64, "causal_lm"),
    # head_dim set apart from hidden/heads (4 heads of 24 on width 64: q_proj is [96, 64])
    "llama2x64_headdim24": (2, 64, 4, 2, 24, 128, 10000.0, 1e-6, None, False, 64, 2, 13, "plain"),
    "llama4x128_deep": (4, 128, 8, 2, None, 344, 10000.0, 1e-6, None, False, 128, 2, 128, "plain"),
    "llama1x30_single": (1, 30, 1, 1, None, 64, 10000.0, 1e-5, None, True, 8, 1, 1, "plain"),
    "smollm2": None,
    # biases on every linear layer (attention_bias: q/k/v/o, mlp_bias: gate/up/down), GQA.
    # After "smollm2" so that no earlier case's seed (its place here) moves.
    "llama2x64_biases": (2, 64, 4, 2, None, 128, 10000.0, 1e-6, None, False, 64, 2, 11, "plain",
                         {"attention_bias": True, "mlp_bias": True}),
    # Qwen2 (biases on q/k/v, none on o or the MLP): layer 0 full attention, layers 1-2 through a
    # 5-key sliding window (use_sliding_window, max_window_layers 1), 13 positions, `model.` names
    "qwen2x3x64_window": (3, 64, 4, 2, None, 128, 1000000.0, 1e-6, None, True, 64, 2, 13, "causal_lm",
                          {"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 5, "max_window_layers": 1}),
    # Mistral: a 4-key sliding window on every layer, head_dim 24 set apart from 96/4, 11 positions
    "mistral2x96_window": (2, 96, 4, 1, 24, 160, 10000.0, 1e-5, None, False, 64, 2, 11, "plain",
                           {"model_type": "mistral", "sliding_window": 4}),
    # llama3 RoPE scaling written as transformers 5 writes it: config.json holds one
    # `rope_parameters` dict (rope_theta, rope_type and the type's fields) and no rope_theta or
    # rope_scaling (older transformers write those; the file is rewritten into the new form then)
    "llama2x64_rope_parameters_v5": (2, 64, 4, 2, None, 128, 500000.0, 1e-5, LLAMA3, False, 1024, 2, 64, "v5_config"),
}

CLASSES = {  # model_type: (config, model, causal LM)
    "llama": (LlamaConfig, LlamaModel, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2Model, Qwen2ForCausalLM),
    "mistral": (MistralConfig, MistralModel, MistralForCausalLM),
}


# ---- fp64-faithful versions of the three pieces that transformers computes in fp32 -------------

class RMSNorm64(LlamaRMSNorm):
    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.promote_types(input_dtype, torch.float32))
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


def rope_of(config) -> tuple:
    """RoPE's base and scaling dict: transformers 5 keeps both in `config.rope_parameters`,
    earlier versions in `rope_theta` and `rope_scaling` (this script runs under either)."""
    params = getattr(config, "rope_parameters", None)
    if params:
        return params["rope_theta"], {k: v for k, v in params.items() if k != "rope_theta"}
    return config.rope_theta, config.rope_scaling or {}


def inv_freq_f64(config) -> torch.Tensor:
    """The rotary inverse frequencies of `modeling_rope_utils` (default and llama3), in fp64."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    dim = int(head_dim * getattr(config, "partial_rotary_factor", 1.0))
    theta, scaling = rope_of(config)
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind != "llama3":
        raise SystemExit(f"make_llama_fixtures: no fp64 RoPE for rope_type {kind!r}")
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context_len = scaling["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = old_context_len / low, old_context_len / high
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, inv_freq_llama)


class Rotary64(LlamaRotaryEmbedding):
    # self.inv_freq64 is a plain attribute: deepcopy keeps it, .double() does not round it.
    def forward(self, x, position_ids):
        if x.dtype != torch.float64:
            return super().forward(x, position_ids)
        with torch.no_grad():
            freqs = position_ids[:, :, None].to(torch.float64) * self.inv_freq64.to(x.device)[None, None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            return emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling


def eager_attention_forward_64(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask[:, :, :, : key_states.shape[-2]]
    softmax_dtype = torch.promote_types(query.dtype, torch.float32)
    attn_weights = torch.nn.functional.softmax(attn_weights, dim=-1, dtype=softmax_dtype).to(query.dtype)
    attn_weights = torch.nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states).transpose(1, 2).contiguous()
    return attn_output, attn_weights


for module in (modeling_llama, modeling_qwen2, modeling_mistral):
    module.eager_attention_forward = eager_attention_forward_64

# Qwen2's and Mistral's norm and rotary classes are copies of Llama's (transformers' modular
# files); the fp32 check in make() confirms the swapped forward is theirs bit for bit.
RMS_NORMS = (LlamaRMSNorm, modeling_qwen2.Qwen2RMSNorm, modeling_mistral.MistralRMSNorm)
ROTARIES = (LlamaRotaryEmbedding, modeling_qwen2.Qwen2RotaryEmbedding, modeling_mistral.MistralRotaryEmbedding)


def make_fp64_faithful(model) -> None:
    for m in model.modules():
        if type(m) in RMS_NORMS:
            m.__class__ = RMSNorm64
        elif type(m) in ROTARIES:
            m.__class__ = Rotary64
            m.inv_freq64 = inv_freq_f64(m.config)
            # the fp32 frequencies transformers uses are these, rounded (a check of the fp64 copy)
            torch.testing.assert_close(m.inv_freq.double(), m.inv_freq64, rtol=1e-6, atol=0)


# ---- cases ---------------------------------------------------------------------------------------

def smollm2_dir() -> Path:
    env = os.environ.get("FPT_SMOLLM2_DIR")
    path = Path(env) if env else Path(sys.prefix) / "smollm2"
    if not (path / "conversion.json").is_file():
        raise SystemExit(f"make_llama_fixtures: no converted SmolLM2 at {path}: run `cargo xtask setup` (or set FPT_SMOLLM2_DIR)")
    return path.resolve()


def write_v5_rope(path: Path) -> None:
    """Rewrites a config.json into transformers 5's RoPE form (a no-op where it is already)."""
    config = json.loads(path.read_text())
    if "rope_parameters" not in config:
        params = {"rope_theta": config.pop("rope_theta")}
        params.update(config.pop("rope_scaling", None) or {"rope_type": "default"})
        config["rope_parameters"] = params
    assert "rope_theta" not in config and "rope_scaling" not in config, path
    path.write_text(json.dumps(config, indent=2))


def make(out: Path, name: str, seed: int) -> dict:
    torch.manual_seed(seed)
    case_dir = out / name
    model_dir = case_dir / "model"
    case_dir.mkdir(parents=True, exist_ok=True)
    if name == "smollm2":
        src = smollm2_dir()
        model_dir.symlink_to(src, target_is_directory=True)
        model = LlamaModel.from_pretrained(src, attn_implementation="sdpa", dtype=torch.float32)
        batch, seq, layout = 2, 12, "causal_lm"
        # inputs at the scale of the pretrained token embeddings (what the residual stream expects)
        scale = model.embed_tokens.weight.detach().std().item()
        attentions = False
    else:
        layers, hidden, heads, kv, head_dim, inter, theta, eps, rope_scaling, tied, max_pos, batch, seq, layout, *more = CASES[name]
        fields = dict(more[0]) if more else {}
        if head_dim is not None:  # else each class's own default (Qwen2 would read a None as set)
            fields["head_dim"] = head_dim
        config_class, model_class, lm_class = CLASSES[fields.pop("model_type", "llama")]
        cfg = config_class(
            vocab_size=50, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv, hidden_act="silu",
            max_position_embeddings=max_pos, rms_norm_eps=eps, rope_theta=theta, rope_scaling=rope_scaling,
            tie_word_embeddings=tied, **fields,
        )
        model = model_class._from_config(cfg, attn_implementation="eager")
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        if layout == "causal_lm":
            lm = lm_class._from_config(cfg, attn_implementation="eager")
            lm.model.load_state_dict(model.state_dict(), strict=True)
            lm.save_pretrained(model_dir, safe_serialization=True)
        elif layout == "sharded":
            model.save_pretrained(model_dir, safe_serialization=True, max_shard_size="60KB")
            assert (model_dir / "model.safetensors.index.json").exists(), "expected a sharded save"
        else:
            model.save_pretrained(model_dir, safe_serialization=True)
        if layout == "v5_config":
            write_v5_rope(model_dir / "config.json")
        scale = 1.0
        attentions = True
    model.eval()
    cfg = model.config
    width = cfg.hidden_size

    x = (scale * torch.randn(batch, seq, width)).requires_grad_(True)
    y = model(inputs_embeds=x).last_hidden_state
    r = torch.randn_like(y)
    (y * r).sum().backward()
    tensors = {"inputs_embeds": x.detach().contiguous(), "last_hidden_state": y.detach().contiguous(),
               "cotangent": r.contiguous(), "grad_inputs": x.grad.contiguous()}
    if attentions:
        with torch.no_grad():
            tensors["attentions"] = torch.stack(model(inputs_embeds=x, output_attentions=True).attentions).contiguous()

    make_fp64_faithful(model)
    with torch.no_grad():  # the fp32 path is unchanged by the fp64-faithful classes
        assert torch.equal(model(inputs_embeds=x).last_hidden_state, y), f"{name}: fp64-faithful patch changed fp32"
    tensors.update(float64_outputs(model, x, r, attentions=attentions))
    save_file(tensors, str(case_dir / "reference.safetensors"))

    files = sorted(p.name for p in model_dir.iterdir())
    return {
        "name": name, "layout": layout, "layers": cfg.num_hidden_layers, "hidden_size": width,
        "heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads,
        "head_dim": getattr(cfg, "head_dim", None) or width // cfg.num_attention_heads,
        "intermediate_size": cfg.intermediate_size, "rope_theta": rope_of(cfg)[0], "rms_norm_eps": cfg.rms_norm_eps,
        "rope_scaling": rope_of(cfg)[1], "tie_word_embeddings": cfg.tie_word_embeddings,
        "model_type": cfg.model_type, "attention_bias": getattr(cfg, "attention_bias", None),
        "mlp_bias": getattr(cfg, "mlp_bias", None), "sliding_window": getattr(cfg, "sliding_window", None),
        "layer_types": getattr(cfg, "layer_types", None),
        "attn_implementation": cfg._attn_implementation, "batch": batch, "seq": seq, "input_scale": scale,
        "attentions": attentions, "files": files,
        "noise": {k[: -len("_noise")]: tensors[k].item() for k in tensors if k.endswith("_noise")},
    }


def main() -> None:
    out = Path(sys.argv[1])
    names = sys.argv[2:] or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise SystemExit(f"make_llama_fixtures: unknown case(s) {unknown}; known: {list(CASES)}")
    out.mkdir(parents=True, exist_ok=True)
    # Each case's seed is its place in CASES, whichever cases are asked for: a case's inputs (and
    # so its conditioning; SmolLM2's input gradient is ill-conditioned for some draws) do not
    # depend on the other cases of the run.
    made = [make(out, n, list(CASES).index(n)) for n in names]
    (out / "cases.json").write_text(json.dumps(made, indent=1))
    print(f"wrote {len(made)} Llama reference cases to {out}")


if __name__ == "__main__":
    main()
