"""Writes GPT-2 checkpoints and reference outputs with Hugging Face `transformers`.

Usage: python make_gpt2_fixtures.py OUT_DIR [CASE ...]

For each case, OUT_DIR/CASE/ holds a checkpoint directory `model/` saved by `save_pretrained`
(plain GPT2Model names, `transformer.`-prefixed GPT2LMHeadModel names, or sharded), and
`reference.safetensors` with:
  inputs_embeds       random [batch, seq, n_embd]
  last_hidden_state   GPT2Model(inputs_embeds=...) in eval mode, fp32, eager attention
  cotangent           random tensor R of the output's shape
  grad_inputs         d(sum(last_hidden_state * R)) / d inputs_embeds
  attentions          every layer's attention probabilities [layers, batch, heads, seq, seq]
  *_f64               the same three outputs from the same model and inputs in float64: the
                      truth that both fp32 results are measured against (see tolerance.rs)
Every parameter is perturbed away from HF's init (biases and layer norms too), so a tensor
that fails to load changes the output. Nothing here is committed; tests run it each time.
"""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

sys.path.insert(0, str(Path(__file__).parent))
from float64_reference import float64_outputs  # noqa: E402

# name: (layers, width, heads, n_inner, activation, eps, n_positions, batch, seq, layout)
CASES = {
    "small4x64": (2, 64, 4, None, "gelu_new", 1e-5, 64, 3, 17, "plain"),
    # odd head count, width not a power of two, GPT2LMHeadModel names ("transformer." prefix)
    "odd3x96_prefixed": (3, 96, 3, None, "gelu_new", 1e-5, 40, 2, 40, "prefixed"),
    # 5 heads of 24 (120 wide), custom n_inner, exact GELU, other eps, sharded files
    "w120h5_sharded": (2, 120, 5, 200, "gelu", 1e-6, 32, 2, 9, "sharded"),
    "deep4x128": (4, 128, 8, None, "relu", 1e-5, 128, 2, 128, "plain"),
    "single1x30": (1, 30, 1, None, "gelu_new", 1e-5, 8, 1, 1, "plain"),
}


def make(out: Path, name: str, seed: int) -> dict:
    layers, width, heads, inner, act, eps, npos, batch, seq, layout = CASES[name]
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=50, n_positions=npos, n_embd=width, n_layer=layers, n_head=heads,
        n_inner=inner, activation_function=act, layer_norm_epsilon=eps,
    )
    model = GPT2Model._from_config(cfg, attn_implementation="eager")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()

    case_dir = out / name
    model_dir = case_dir / "model"
    if layout == "prefixed":
        lm = GPT2LMHeadModel(cfg)
        lm.transformer.load_state_dict(model.state_dict())
        lm.save_pretrained(model_dir, safe_serialization=True)
    elif layout == "sharded":
        model.save_pretrained(model_dir, safe_serialization=True, max_shard_size="40KB")
        assert (model_dir / "model.safetensors.index.json").exists(), "expected a sharded save"
    else:
        model.save_pretrained(model_dir, safe_serialization=True)

    x = torch.randn(batch, seq, width, requires_grad=True)
    y = model(inputs_embeds=x).last_hidden_state
    r = torch.randn_like(y)
    (y * r).sum().backward()
    with torch.no_grad():
        attentions = torch.stack(model(inputs_embeds=x, output_attentions=True).attentions)
    f64 = float64_outputs(model, x, r, attentions=True)
    save_file(
        {
            **f64,
            "attentions": attentions.contiguous(),
            "inputs_embeds": x.detach().contiguous(),
            "last_hidden_state": y.detach().contiguous(),
            "cotangent": r.contiguous(),
            "grad_inputs": x.grad.contiguous(),
        },
        str(case_dir / "reference.safetensors"),
    )
    return {"name": name, "layers": layers, "width": width, "heads": heads, "layout": layout}


def main() -> None:
    out = Path(sys.argv[1])
    names = sys.argv[2:] or list(CASES)
    out.mkdir(parents=True, exist_ok=True)
    made = [make(out, n, seed) for seed, n in enumerate(names)]
    (out / "cases.json").write_text(json.dumps(made, indent=1))
    print(f"wrote {len(made)} GPT-2 reference cases to {out}")


if __name__ == "__main__":
    main()
