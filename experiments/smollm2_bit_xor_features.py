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
  (ridge, lambda 1, trained on 800 examples, accuracy on the other 200).
Nothing is trained. Runs in about 70 s on one thread with the venv's transformers:
    .venv/bin/python experiments/smollm2_bit_xor_features.py [SMOLLM2_DIR]
(default: .venv/smollm2, which `cargo xtask setup` writes).
"""
import sys
from pathlib import Path

import torch
from transformers import LlamaModel

N, BITS = 1000, 5


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


if __name__ == "__main__":
    main()
