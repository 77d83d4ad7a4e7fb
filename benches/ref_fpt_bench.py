"""The PyTorch reference FPT train step, built the way the paper's code builds it: Hugging Face
`GPT2Model` with random init, every parameter frozen except layer norms and position
embeddings, a linear input layer (orthogonal init, gain 1.41) followed by dropout (the authors'
`in_net`), and a linear output layer on the
last token, Adam, gradient clipping at 1.0. It builds the model and step as the
authors' `fpt.py` and `trainer.py` do (github.com/kzl/universal-computation), with what `cargo xtask bench` needs on top: one JSON line of results,
the dropout as an option, the initial weights and batch saved for `fpt bench --init` (loss
curves compared step by step), and the losses of every step.

Usage: python benches/ref_fpt_bench.py [--batch 16] [--tokens 49] [--dim 16] [--steps 20]
       [--bf16] [--threads N] [--dropout 0.1] [--save-init FILE] [--device cpu|cuda]
"""
import argparse
import contextlib
import json
import resource
import time

import torch
import torch.nn as nn
from transformers import GPT2Config, GPT2Model

p = argparse.ArgumentParser()
p.add_argument("--batch", type=int, default=16)
p.add_argument("--tokens", type=int, default=49)
p.add_argument("--dim", type=int, default=16)
p.add_argument("--classes", type=int, default=10)
p.add_argument("--steps", type=int, default=20)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--layers", type=int, default=12)
p.add_argument("--threads", type=int, default=0)
p.add_argument("--attn", default="sdpa")
p.add_argument("--dropout", type=float, default=0.1, help="GPT-2's resid/embd/attn dropout (HF default 0.1)")
p.add_argument("--bf16", action="store_true", help="torch.autocast to bfloat16")
p.add_argument("--save-init", default=None, help="write the initial weights and the batch (safetensors)")
p.add_argument("--device", default="cpu")
a = p.parse_args()
if a.threads:
    torch.set_num_threads(a.threads)
dev = torch.device(a.device)
torch.manual_seed(0)
cfg = GPT2Config(n_layer=a.layers, attn_implementation=a.attn,
                 resid_pdrop=a.dropout, embd_pdrop=a.dropout, attn_pdrop=a.dropout)
gpt = GPT2Model(cfg)
for name, prm in gpt.named_parameters():
    n = name.lower()
    prm.requires_grad = ("ln" in n) or ("wpe" in n)
inp = nn.Linear(a.dim, cfg.n_embd)
nn.init.orthogonal_(inp.weight, gain=1.41)
inp.bias.data.zero_()
in_drop = nn.Dropout(a.dropout)
out = nn.Linear(cfg.n_embd, a.classes)
x = torch.randn(a.batch, a.tokens, a.dim)
y = torch.randint(0, a.classes, (a.batch,))
if a.save_init:
    from safetensors.torch import save_file
    tensors = {k: v.contiguous() for k, v in gpt.state_dict().items()}
    tensors.update({
        "input_layer.proj.weight": inp.weight.data, "input_layer.proj.bias": inp.bias.data,
        "output_layer.proj.weight": out.weight.data, "output_layer.proj.bias": out.bias.data,
        "bench.x": x, "bench.y": y,
    })
    save_file({k: v.contiguous() for k, v in tensors.items()}, a.save_init)
gpt, inp, out, x, y = gpt.to(dev), inp.to(dev), out.to(dev), x.to(dev), y.to(dev)
params = [q for m in (gpt, inp, out) for q in m.parameters() if q.requires_grad]
opt = torch.optim.Adam(params, lr=1e-3)
gpt.train()
losses = []


def ctx():
    return torch.autocast(dev.type, dtype=torch.bfloat16) if a.bf16 else contextlib.nullcontext()


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


def step():
    with ctx():
        h = gpt(inputs_embeds=in_drop(inp(x))).last_hidden_state[:, -1]
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
    "implementation": "reference", "torch": torch.__version__, "device": a.device,
    "threads": torch.get_num_threads(), "precision": "autocast-bf16" if a.bf16 else "fp32",
    "batch": a.batch, "tokens": a.tokens, "dim": a.dim, "layers": a.layers, "steps": a.steps,
    "samples_per_s": a.batch / dt, "ms_per_step": dt * 1e3,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "losses": [l.item() for l in losses],
}))
