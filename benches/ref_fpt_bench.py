"""The PyTorch reference FPT train step, built the way the paper's code builds it: a frozen
backbone run on `inputs_embeds`, every parameter frozen except layer norms and position
embeddings (the authors' name rule: 'ln'/'norm' train, 'wpe'/'position_embeddings' train, the
rest frozen), a linear input layer (orthogonal init, gain 1.41) followed by dropout (the
authors' `in_net`), and a linear output layer on the last token, Adam, gradient clipping at
1.0. It builds the model and step as the authors' `fpt.py` and `trainer.py` do
(github.com/kzl/universal-computation), with what `cargo xtask bench` needs on top: one JSON
line of results, the dropout as an option, the initial weights and batch saved for
`fpt bench --init` (loss curves compared step by step; gpt2 only), and the losses of every step.

Backbones (`--backbone`), built as `benches/fidelity_ref.py` builds them:
- `gpt2`: Hugging Face `GPT2Model`, random init, GPT-2 small's shape with `--layers` (12);
- `minilm`: `BertModel.from_pretrained(--model-dir)` (all-MiniLM-L6-v2);
- `smollm2`: `LlamaModel.from_pretrained(--model-dir)` (SmolLM2-135M), the model's BOS token
  embedding (`embed_tokens(bos_token_id)`) put before the tokens as position 0, as our wrapper
  does; its RMSNorm weights ('norm') train, the embedding is frozen;
- `lstm`: the authors' `LNLSTM` (vendored in `benches/reference/lnlstm.py`), random init,
  `--layers` (3) × `--width` (768), unidirectional, no residuals.

Usage: python benches/ref_fpt_bench.py [--backbone gpt2|minilm|smollm2|lstm] [--model-dir DIR]
       [--batch 16] [--tokens 49] [--dim 16] [--steps 20] [--layers N] [--width N]
       [--bf16] [--threads N] [--dropout 0.1] [--save-init FILE] [--device cpu|cuda]
"""
import argparse
import contextlib
import json
import os
import resource
import sys
import time

import torch
import torch.nn as nn

p = argparse.ArgumentParser()
p.add_argument("--backbone", default="gpt2", choices=["gpt2", "minilm", "smollm2", "lstm"])
p.add_argument("--model-dir", default=None, help="the minilm / smollm2 Hugging Face directory")
p.add_argument("--batch", type=int, default=16)
p.add_argument("--tokens", type=int, default=49)
p.add_argument("--dim", type=int, default=16)
p.add_argument("--classes", type=int, default=10)
p.add_argument("--steps", type=int, default=20)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--layers", type=int, default=None, help="gpt2 (default 12) and lstm (default 3) only")
p.add_argument("--width", type=int, default=None, help="lstm only (default 768)")
p.add_argument("--threads", type=int, default=0)
p.add_argument("--attn", default="sdpa")
p.add_argument("--dropout", type=float, default=0.1,
               help="the backbone's dropout (HF default 0.1 for GPT-2 and BERT) and the input layer's")
p.add_argument("--bf16", action="store_true", help="torch.autocast to bfloat16")
p.add_argument("--save-init", default=None, help="write the initial weights and the batch (safetensors; gpt2 only)")
p.add_argument("--device", default="cpu")
a = p.parse_args()
pretrained = a.backbone in ("minilm", "smollm2")
if pretrained and a.model_dir is None:
    p.error(f"--backbone {a.backbone} needs --model-dir (its Hugging Face directory)")
if not pretrained and a.model_dir is not None:
    p.error(f"--model-dir: --backbone {a.backbone} loads no weights")
if pretrained and a.layers is not None:
    p.error(f"--layers: --backbone {a.backbone} is pretrained and keeps its own layers")
if a.width is not None and a.backbone != "lstm":
    p.error("--width sets the lstm's width only")
if a.save_init and a.backbone != "gpt2":
    p.error("--save-init is implemented for --backbone gpt2 only")
if a.threads:
    torch.set_num_threads(a.threads)
dev = torch.device(a.device)
torch.manual_seed(0)

bos = None  # smollm2: the BOS embedding row, put first
if a.backbone == "gpt2":
    from transformers import GPT2Config, GPT2Model
    cfg = GPT2Config(n_layer=12 if a.layers is None else a.layers, attn_implementation=a.attn,
                     resid_pdrop=a.dropout, embd_pdrop=a.dropout, attn_pdrop=a.dropout)
    backbone = GPT2Model(cfg)
    width, layers = cfg.n_embd, cfg.n_layer
elif a.backbone == "minilm":
    from transformers import BertConfig, BertModel
    cfg = BertConfig.from_pretrained(a.model_dir)
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = a.dropout
    backbone = BertModel.from_pretrained(a.model_dir, config=cfg, attn_implementation=a.attn)
    width, layers = cfg.hidden_size, cfg.num_hidden_layers
elif a.backbone == "smollm2":
    from transformers import LlamaConfig, LlamaModel
    cfg = LlamaConfig.from_pretrained(a.model_dir)
    cfg.attention_dropout = a.dropout  # LlamaModel's only dropout, as our wrapper sets it
    backbone = LlamaModel.from_pretrained(a.model_dir, config=cfg, attn_implementation=a.attn,
                                          dtype=torch.float32)
    width, layers = cfg.hidden_size, cfg.num_hidden_layers
    bos_id = 1 if cfg.bos_token_id is None else cfg.bos_token_id
else:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference"))
    from lnlstm import LNLSTM
    width = 768 if a.width is None else a.width
    layers = 3 if a.layers is None else a.layers
    backbone = LNLSTM(input_size=width, hidden_size=width, num_layers=layers, batch_first=True,
                      residual=False, dropout=a.dropout, bidirectional=0)

# fpt.py's freezing rule (as benches/fidelity_ref.py applies it).
for name, prm in backbone.named_parameters():
    n = name.lower()
    prm.requires_grad = ("ln" in n or "norm" in n or "wpe" in n or "position_embeddings" in n
                         or "pos_drop" in n)
inp = nn.Linear(a.dim, width)
nn.init.orthogonal_(inp.weight, gain=1.41)
inp.bias.data.zero_()
in_drop = nn.Dropout(a.dropout)
out = nn.Linear(width, a.classes)
x = torch.randn(a.batch, a.tokens, a.dim)
y = torch.randint(0, a.classes, (a.batch,))
if a.save_init:
    from safetensors.torch import save_file
    tensors = {k: v.contiguous() for k, v in backbone.state_dict().items()}
    tensors.update({
        "input_layer.proj.weight": inp.weight.data, "input_layer.proj.bias": inp.bias.data,
        "output_layer.proj.weight": out.weight.data, "output_layer.proj.bias": out.bias.data,
        "bench.x": x, "bench.y": y,
    })
    save_file({k: v.contiguous() for k, v in tensors.items()}, a.save_init)
backbone, inp, out, x, y = backbone.to(dev), inp.to(dev), out.to(dev), x.to(dev), y.to(dev)
params = [q for m in (backbone, inp, out) for q in m.parameters() if q.requires_grad]
opt = torch.optim.Adam(params, lr=1e-3)
backbone.train()  # from_pretrained returns eval mode
inp.train()
in_drop.train()
losses = []


def ctx():
    return torch.autocast(dev.type, dtype=torch.bfloat16) if a.bf16 else contextlib.nullcontext()


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


def last_hidden(embeds):
    if a.backbone == "lstm":
        h, *_ = backbone(embeds)
        return h[:, -1]
    if a.backbone == "smollm2":
        # The frozen BOS row first, as our wrapper puts it (autocast's cat promotes to fp32).
        row = backbone.embed_tokens.weight[bos_id].view(1, 1, -1).expand(embeds.shape[0], 1, -1)
        embeds = torch.cat([row, embeds], 1)
    return backbone(inputs_embeds=embeds).last_hidden_state[:, -1]


def step():
    with ctx():
        h = last_hidden(in_drop(inp(x)))
        loss = nn.functional.cross_entropy(out(h).float(), y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad()
    losses.append(loss.detach())


for _ in range(a.warmup):
    step()
sync()
t = time.perf_counter()
for _ in range(a.steps):
    step()
sync()
dt = (time.perf_counter() - t) / a.steps
print(json.dumps({
    "implementation": "reference", "backbone": a.backbone, "torch": torch.__version__, "device": a.device,
    "threads": torch.get_num_threads(), "precision": "autocast-bf16" if a.bf16 else "fp32",
    "batch": a.batch, "tokens": a.tokens, "dim": a.dim, "layers": layers, "width": width, "steps": a.steps,
    "samples_per_s": a.batch / dt, "ms_per_step": dt * 1e3,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "losses": [l.item() for l in losses],
}))
