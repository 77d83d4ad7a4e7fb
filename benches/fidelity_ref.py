"""The authors' FPT recipe in PyTorch, for `cargo xtask fidelity`: one training run, evaluated on
the whole test split at fixed steps, written as JSON.

Built as github.com/kzl/universal-computation builds it (`fpt.py`, `trainer.py`,
`experiment.py`, `models/lstm.py`):
- input layer `Linear(dim, width)` with orthogonal init (gain 1.41) and zero bias, followed by
  `Dropout(dropout)` (`in_net`); read-out of the last token(s); output `Linear(width, out)`;
- the backbone run on `inputs_embeds`, frozen by the reference's name rule (`ln`/`norm` train,
  `wpe`/`position_embeddings` train, everything else frozen); the LSTM is the reference's
  `LNLSTM` (3 layers, no residual, unidirectional), vendored in `benches/reference/lnlstm.py`;
- Adam (lr, PyTorch defaults otherwise), gradient-norm clipping at 1.0, cross-entropy;
- MNIST-style data: pixels / 255 (`ToTensor`, `Normalize(0, 1)`), `p×p` patches ordered as
  `rearrange('b c (h p1) (w p2) -> b (h w) (p1 p2 c)')`, batches drawn by a fresh shuffle per
  epoch with `drop_last`; bit XOR: `bit_xor.py` with patch size 1 (one bit per token, the last
  `n` tokens read out, two logits each);
- `--bf16`: forward and loss under `torch.autocast(..., dtype=torch.bfloat16)`.

The backbone differs from the reference only where the reference has no such model: the
language-pretrained model here is all-MiniLM-L6-v2 (`transformers.BertModel`), not GPT-2.

Usage: python benches/fidelity_ref.py --task mnist --data DIR --backbone minilm --model-dir DIR
       --init pretrained --steps 1000 --eval-at 500,1000 --seed 0 --out FILE.json [--bf16]
"""
import argparse
import contextlib
import gzip
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn

p = argparse.ArgumentParser()
p.add_argument("--task", required=True, choices=["mnist", "fashion-mnist", "bit-xor"])
p.add_argument("--data", help="folder of the four IDX files (gzipped or not)")
p.add_argument("--backbone", required=True, choices=["minilm", "lstm"])
p.add_argument("--model-dir", help="Hugging Face BERT directory (config.json + weights)")
p.add_argument("--init", default="pretrained", choices=["pretrained", "random"])
p.add_argument("--lstm-layers", type=int, default=3)
p.add_argument("--lstm-width", type=int, default=768)
p.add_argument("--patch", type=int, default=4)
p.add_argument("--xor-n", type=int, default=5)
p.add_argument("--eval-examples", type=int, default=1000, help="bit XOR's fixed evaluation set")
p.add_argument("--steps", type=int, required=True)
p.add_argument("--eval-at", required=True, help="comma-separated steps")
p.add_argument("--batch", type=int, default=32)
p.add_argument("--eval-batch", type=int, default=256)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--dropout", type=float, default=0.1)
p.add_argument("--orth-gain", type=float, default=1.41)
p.add_argument("--bf16", action="store_true")
p.add_argument("--bf16-scope", default="all", choices=["all", "backbone"],
               help="what --bf16 autocasts: the whole model (default) or the frozen backbone only")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--threads", type=int, default=0)
p.add_argument("--out", required=True)
a = p.parse_args()

if a.threads:
    torch.set_num_threads(a.threads)
torch.manual_seed(a.seed)
np.random.seed(a.seed)
eval_at = sorted({int(s) for s in a.eval_at.split(",") if s})
if not eval_at or eval_at[-1] > a.steps or eval_at[0] < 1:
    sys.exit(f"--eval-at {a.eval_at}: steps must lie in 1..={a.steps}")


def read_idx(folder, name):
    """An IDX file as a numpy array (`name.gz` or `name`)."""
    for path, opener in ((os.path.join(folder, name + ".gz"), gzip.open), (os.path.join(folder, name), open)):
        if os.path.isfile(path):
            with opener(path, "rb") as f:
                raw = f.read()
            ndim = raw[3]
            dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
            return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)
    sys.exit(f"{folder}: missing {name}.gz (or {name})")


def patches(images):
    """[n, 28, 28] uint8 → [n, tokens, p*p] float, the reference's rearrange with c = 1."""
    n, h, w = images.shape
    q = a.patch
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    x = x.reshape(n, h // q, q, w // q, q).permute(0, 1, 3, 2, 4).reshape(n, (h // q) * (w // q), q * q)
    return x.contiguous()


# ---- data -----------------------------------------------------------------------------------
if a.task in ("mnist", "fashion-mnist"):
    train_x = patches(read_idx(a.data, "train-images-idx3-ubyte"))
    train_y = torch.from_numpy(read_idx(a.data, "train-labels-idx1-ubyte").astype(np.int64))
    test_x = patches(read_idx(a.data, "t10k-images-idx3-ubyte"))
    test_y = torch.from_numpy(read_idx(a.data, "t10k-labels-idx1-ubyte").astype(np.int64))
    input_dim, out_dim, readout = a.patch * a.patch, 10, 1
    shuffle = torch.Generator().manual_seed(a.seed)
    order, cursor = torch.randperm(len(train_y), generator=shuffle), 0

    def train_batch():
        global order, cursor
        if cursor + a.batch > len(order):  # drop_last, then a fresh shuffle (DataLoader)
            order, cursor = torch.randperm(len(train_y), generator=shuffle), 0
        idx = order[cursor:cursor + a.batch]
        cursor += a.batch
        return train_x[idx], train_y[idx]
else:
    def xor_batch(rng, size):
        bits = rng.randint(low=0, high=2, size=(size, 2, a.xor_n))  # bit_xor.py, num_patterns 2
        xored = np.logical_xor(bits[:, 0], bits[:, 1])
        x = torch.from_numpy(bits.astype(np.float32)).reshape(size, 2 * a.xor_n, 1)  # patch size 1
        return x, torch.from_numpy(xored.astype(np.int64))

    train_rng = np.random.RandomState(a.seed)
    test_x, test_y = xor_batch(np.random.RandomState(10_000 + a.seed), a.eval_examples)
    input_dim, out_dim, readout = 1, 2, a.xor_n

    def train_batch():
        return xor_batch(train_rng, a.batch)

# ---- model ----------------------------------------------------------------------------------
if a.backbone == "minilm":
    from transformers import BertConfig, BertModel
    config = BertConfig.from_pretrained(a.model_dir)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = a.dropout
    backbone = BertModel.from_pretrained(a.model_dir, config=config) if a.init == "pretrained" else BertModel(config)
    width = config.hidden_size
else:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference"))
    from lnlstm import LNLSTM
    width = a.lstm_width
    backbone = LNLSTM(input_size=width, hidden_size=width, num_layers=a.lstm_layers, batch_first=True,
                      residual=False, dropout=a.dropout, bidirectional=0)

# fpt.py's freezing rule, verbatim in effect.
for name, prm in backbone.named_parameters():
    n = name.lower()
    if "ln" in n or "norm" in n:
        prm.requires_grad = True
    elif "wpe" in n or "position_embeddings" in n or "pos_drop" in n:
        prm.requires_grad = True
    else:
        prm.requires_grad = False

in_proj = nn.Linear(input_dim, width)
nn.init.orthogonal_(in_proj.weight, gain=a.orth_gain)
in_proj.bias.data.zero_()
in_net = nn.Sequential(in_proj, nn.Dropout(a.dropout))
out_net = nn.Linear(width, out_dim)
modules = nn.ModuleList([in_net, backbone, out_net])
params = [q for q in modules.parameters() if q.requires_grad]
trainable = sum(q.numel() for q in params)
opt = torch.optim.Adam(params, lr=a.lr)


def ctx():
    return torch.autocast("cpu", dtype=torch.bfloat16) if a.bf16 else torch.autocast("cpu", enabled=False)


def wrapper_ctx():
    """The input and output layers: inside the model-wide autocast, or in fp32."""
    return torch.autocast("cpu", enabled=False) if a.bf16 and a.bf16_scope == "backbone" else contextlib.nullcontext()


def logits(x):
    with wrapper_ctx():
        h = in_net(x)
    if a.backbone == "minilm":
        h = backbone(inputs_embeds=h, return_dict=True).last_hidden_state
    else:
        h, *_ = backbone(h)
    with wrapper_ctx():
        return out_net(h[:, -readout:].float()).float()  # [batch, readout, out_dim]


def loss_and_correct(x, y):
    out = logits(x).reshape(-1, out_dim)
    y = y.reshape(-1)
    return nn.functional.cross_entropy(out, y), (out.argmax(-1) == y).sum().item(), y.numel()


def evaluate():
    modules.eval()
    correct = total = 0
    loss_sum = 0.0
    with torch.no_grad(), ctx():
        for i in range(0, len(test_y), a.eval_batch):
            loss, c, n = loss_and_correct(test_x[i:i + a.eval_batch], test_y[i:i + a.eval_batch])
            loss_sum += loss.item() * n
            correct, total = correct + c, total + n
    modules.train()
    return correct / total, loss_sum / total


evals = []
start = time.perf_counter()
train_time = 0.0
modules.train()
for step in range(1, a.steps + 1):
    t = time.perf_counter()
    x, y = train_batch()
    with ctx():
        loss, _, _ = loss_and_correct(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad()
    train_time += time.perf_counter() - t
    if step in eval_at:
        acc, eval_loss = evaluate()
        evals.append({"step": step, "eval_acc": acc, "eval_loss": eval_loss})
        print(json.dumps({"step": step, "train_loss": loss.item(), "eval_acc": acc}), flush=True)

result = {
    "implementation": "reference", "torch": torch.__version__, "threads": torch.get_num_threads(),
    "task": a.task, "backbone": a.backbone, "init": a.init, "seed": a.seed, "steps": a.steps,
    "batch": a.batch, "lr": a.lr, "precision": "autocast-bf16" if a.bf16 else "fp32",
    "trainable_params": trainable, "evals": evals, "train_s": train_time,
    "wall_s": time.perf_counter() - start,
}
tmp = a.out + ".tmp"
with open(tmp, "w") as f:
    json.dump(result, f)
os.replace(tmp, a.out)
