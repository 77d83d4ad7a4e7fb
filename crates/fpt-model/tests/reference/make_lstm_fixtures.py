"""Writes reference outputs of the paper's layer-norm LSTM (`benches/reference/lnlstm.py`, the
authors' `models/lstm.py` vendored verbatim) for `tests/lstm_parity.rs`.

Usage: python make_lstm_fixtures.py OUT_DIR

OUT_DIR/lstm/reference.safetensors holds, for `LNLSTM(input_size=W, hidden_size=W,
num_layers=L, batch_first=True, residual=False, bidirectional=0)` as `benches/fidelity_ref.py`
builds it (eval mode, fp32, given initial states):
- every parameter under fpt's name (`lstm.{l}.{i2h,h2h}.{weight,bias}`,
  `lstm.{l}.{ln_i2h,ln_h2h,ln_cell}.{weight,bias}`; the reference's `alpha`/`beta` of shape
  [1, n] flattened), perturbed away from the tiny init so that every term matters;
- inputs_embeds, h0_{l}, c0_{l}, the output, a cotangent R, and the gradients of sum(out * R)
  with respect to the input (`grad_inputs`) and every parameter (`grad.{name}`);
- `train_losses`, `train_grad_sq`, `train_zero_fraction`: in training mode (dropout 0.1), per
  draw of the dropout masks, sum(out * R), the squared norm of its parameter gradient and the
  fraction of exact zeros in the output;
- the float64 truth (`*_f64`) and the reference's own fp32 noise (`*_noise`) of each, measured
  as `float64_reference.py` measures it.
"""
import copy
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT / "benches" / "reference"))
from lnlstm import LNLSTM  # noqa: E402

LAYERS, WIDTH, BATCH, SEQ = 2, 16, 3, 7
TRAIN_DRAWS = 400


def our_name(ref_name: str) -> str:
    """`params.0.ln_i2h.alpha` → `lstm.0.ln_i2h.weight`."""
    _, layer, module, leaf = ref_name.split(".")
    leaf = {"alpha": "weight", "beta": "bias"}.get(leaf, leaf)
    return f"lstm.{layer}.{module}.{leaf}"


def evaluate(model, x, states, r, dtype):
    """Output, input gradient and parameter gradients of sum(model(x) * r) in `dtype`."""
    m = copy.deepcopy(model).to(dtype).eval()
    xx = x.detach().to(dtype).requires_grad_(True)
    hiddens = [(h.to(dtype).unsqueeze(0), c.to(dtype).unsqueeze(0)) for h, c in states]
    y, _ = m(xx, hiddens)
    (y * r.to(dtype)).sum().backward()
    out = {"last_hidden_state": y.detach(), "grad_inputs": xx.grad}
    for name, p in m.named_parameters():
        out[f"grad.{our_name(name)}"] = p.grad.reshape(-1)
    return {k: v.double().contiguous() for k, v in out.items()}


def main() -> None:
    out = Path(sys.argv[1]) / "lstm"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(11)
    model = LNLSTM(input_size=WIDTH, hidden_size=WIDTH, num_layers=LAYERS, batch_first=True,
                   residual=False, dropout=0.1, bidirectional=0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            # Layer-norm gains near 1 and other weights at unit scale / sqrt(width), so that no
            # path (the gains start at ±0.06) hides another.
            if name.endswith("alpha"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / WIDTH**0.5)
    model.eval()
    x = torch.randn(BATCH, SEQ, WIDTH)
    states = [(torch.randn(BATCH, WIDTH), torch.randn(BATCH, WIDTH)) for _ in range(LAYERS)]
    r = torch.randn(BATCH, SEQ, WIDTH)

    tensors = {"inputs_embeds": x, "cotangent": r}
    for layer, (h, c) in enumerate(states):
        tensors[f"h0_{layer}"], tensors[f"c0_{layer}"] = h, c
    for name, p in model.named_parameters():
        tensors[our_name(name)] = p.detach().reshape(-1).clone()
    fp32 = evaluate(model, x, states, r, torch.float32)
    tensors.update({k: v.float() for k, v in fp32.items()})
    truth = evaluate(model, x, states, r, torch.float64)
    noise = {k: torch.zeros((), dtype=torch.float64) for k in truth}
    gen = torch.Generator().manual_seed(1234)
    for i in range(4):
        xi = x if i == 0 else x * (1 + 2.0**-24 * torch.randn(x.shape, generator=gen))
        for k, v in evaluate(model, xi, states, r, torch.float32).items():
            noise[k] = torch.maximum(noise[k], (v - truth[k]).abs().max())
    tensors.update({f"{k}_f64": v for k, v in truth.items()})
    tensors.update({f"{k}_noise": v for k, v in noise.items()})
    # Training mode: the only randomness left is dropout (p = 0.1 on every step's h). Its
    # statistics over many draws: the loss sum(out * R), and the squared norm of its gradient
    # with respect to the parameters (what clipping and Adam see).
    train = copy.deepcopy(model).train()
    hiddens = [(h.unsqueeze(0), c.unsqueeze(0)) for h, c in states]
    losses, grad_sq, zeros = [], [], []
    torch.manual_seed(5)
    for _ in range(TRAIN_DRAWS):
        train.zero_grad()
        y, _ = train(x, hiddens)
        loss = (y * r).sum()
        loss.backward()
        losses.append(loss.item())
        zeros.append(float((y == 0).double().mean()))
        grad_sq.append(sum(float(p.grad.pow(2).sum()) for p in train.parameters()))
    tensors["train_losses"] = torch.tensor(losses, dtype=torch.float64)
    tensors["train_grad_sq"] = torch.tensor(grad_sq, dtype=torch.float64)
    tensors["train_zero_fraction"] = torch.tensor(zeros, dtype=torch.float64)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "reference.safetensors"))
    print(f"wrote the LNLSTM reference case to {out}")


if __name__ == "__main__":
    main()
