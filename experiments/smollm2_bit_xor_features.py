"""What frozen SmolLM2 hands the output layer on bit XOR before any training, pretrained against
random init: the question behind docs/results.md's "SmolLM2: pretrained against random" (the
random-init model learns bit XOR faster there).

The inputs are built as FPT builds them at step 0 (`fpt-model`'s dense input layer: an orthogonal
576 × 1 weight of gain 1.41 and a zero bias, so a 0 bit is a zero token; SmolLM2's BOS embedding
first), 1,000 random examples of two 5-bit strings; the features are `LlamaModel`'s last hidden
state at the 5 read-out positions (the last 5). Printed, per init:
- the size of the features, their mean over examples and the spread around it, and the largest
  coordinate (a "massive activation": one coordinate carrying a large, nearly constant share);
- how well a linear read-out of the standardised features predicts each position's XOR bit
  (ridge, lambda 1, trained on 800 examples, accuracy on the other 200);
- how fast Adam trains an output layer alone on those frozen features, raw (as FPT's output
  layer sees them) against standardised: a test, by training, of the hypothesis that the one
  large coordinate is what slows the pretrained model (the input layer and norms stay fixed here,
  where FPT trains them too).
Runs in about 80 s on one thread with the venv's transformers:
    .venv/bin/python experiments/smollm2_bit_xor_features.py [SMOLLM2_DIR]
(default: .venv/smollm2, which `cargo xtask setup` writes).
"""
import sys
from pathlib import Path

import torch
from transformers import LlamaModel

N, BITS = 1000, 5
SEEDS = [1, 2, 3]  # the read-out's init and batches


def main() -> None:
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / ".venv/smollm2"
    torch.set_num_threads(1)
    torch.manual_seed(0)
    pretrained = LlamaModel.from_pretrained(directory, dtype=torch.float32).eval()
    random_init = LlamaModel._from_config(pretrained.config).eval()  # Hugging Face's init, as model.init = "random"
    width = pretrained.config.hidden_size
    bits = torch.randint(0, 2, (N, 2 * BITS)).float()
    targets = (bits[:, :BITS] != bits[:, BITS:]).float() * 2 - 1
    proj = torch.nn.init.orthogonal_(torch.empty(width, 1)).squeeze(1) * 1.41
    for name, model in [("pretrained", pretrained), ("random init", random_init)]:
        bos = model.embed_tokens.weight[model.config.bos_token_id].detach()
        x = torch.cat([bos.expand(N, 1, width), bits.unsqueeze(-1) * proj], 1)
        with torch.no_grad():
            h = model(inputs_embeds=x).last_hidden_state[:, -BITS:]
        mean = h.mean(0, keepdim=True)
        spread = (h - mean).pow(2).sum(-1).mean().sqrt()
        top = int(h.abs().mean((0, 1)).argmax())
        share = (h[..., top] ** 2 / h.pow(2).sum(-1)).mean()
        print(f"{name}: |h| {h.norm(dim=-1).mean():.1f}, |mean over examples| {mean.norm(dim=-1).mean():.1f}, "
              f"spread around it {spread:.2f}; largest coordinate {top}: mean {h[..., top].mean():.1f}, "
              f"std {h[..., top].std():.2f}, {share:.0%} of |h|^2")
        accuracies = []
        for p in range(BITS):
            f = h[:, p]
            f = (f - f[:800].mean(0)) / (f[:800].std(0) + 1e-6)
            f = torch.cat([f, torch.ones(N, 1)], 1)
            a, t = f[:800], targets[:800, p]
            w = torch.linalg.solve(a.T @ a + torch.eye(width + 1), a.T @ t)
            accuracies.append(((f[800:] @ w).sign() == targets[800:, p]).float().mean().item())
        print("  linear read-out, held-out accuracy per position:", " ".join(f"{a:.3f}" for a in accuracies))
        for features in ["raw", "standardised"]:
            curves = [adam_read_out(h, targets, features == "standardised", seed) for seed in SEEDS]
            steps = [s for s, _ in curves[0]]
            mean = [sum(c[i][1] for c in curves) / len(curves) for i in range(len(steps))]
            print(f"  Adam on the read-out alone, {features} features, held-out accuracy at steps "
                  f"{', '.join(map(str, steps))}, mean of seeds {SEEDS}:", " ".join(f"{a:.3f}" for a in mean),
                  "(per seed at the last:", " ".join(f"{c[-1][1]:.3f}" for c in curves) + ")")


def adam_read_out(h: torch.Tensor, targets: torch.Tensor, standardise: bool, seed: int) -> list:
    """The part of FPT's training that the massive-activation hypothesis is about, alone: the
    output layer (PyTorch's `Linear(width, 2)` init, shared by the 5 positions, as FPT's) trained
    by Adam (lr 1e-3, batch 32, cross-entropy) on the frozen features of 800 examples; accuracy
    over all 5 positions of the other 200, at every 100th of 400 steps. Standardised: each
    coordinate scaled to mean 0, std 1 (statistics of the 800), which takes the one large
    coordinate's weight in a step away."""
    torch.manual_seed(seed)
    f = h
    if standardise:
        f = (h - h[:800].mean((0, 1))) / (h[:800].std((0, 1)) + 1e-6)
    labels = (targets > 0).long()
    head = torch.nn.Linear(h.shape[-1], 2)
    adam = torch.optim.Adam(head.parameters(), lr=1e-3)
    curve = []
    for step in range(1, 401):
        batch = torch.randint(0, 800, (32,))
        loss = torch.nn.functional.cross_entropy(head(f[batch]).reshape(-1, 2), labels[batch].reshape(-1))
        adam.zero_grad()
        loss.backward()
        adam.step()
        if step % 100 == 0:
            with torch.no_grad():
                curve.append((step, (head(f[800:]).argmax(-1) == labels[800:]).float().mean().item()))
    return curve


if __name__ == "__main__":
    main()
