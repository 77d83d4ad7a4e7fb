"""The truth and the rounding noise that `fpt_model::tolerance` (crates/fpt-model/src/tolerance.rs)
measures our fp32 results against; shared by the fixture scripts and the tests that call
`transformers` directly."""
import copy

import torch


def float64_outputs(model, x, r, attentions: bool, attention_mask=None) -> dict:
    """The truth and the rounding noise that `fpt_model::tolerance` measures our fp32 against.

    `*_f64`: last_hidden_state, grad_inputs (and attentions) of a float64 copy of `model` on
    the same inputs and cotangent. `*_noise`: the largest distance from that truth of the
    reference's own fp32 results over an ensemble: the inputs as given, and three copies
    perturbed by one unit of fp32 roundoff (relative 2^-24, random), which is what rounding the
    same values in another order does. A single fp32 result's max error is a noisy statistic
    (real weights amplify some elements: MiniLM's varies 10x between such draws); the
    ensemble's max is its upper tail on this machine's kernels. `attention_mask`, when given,
    is passed to every call (Hugging Face's [batch, seq] padding mask)."""
    m64 = copy.deepcopy(model).double().eval()

    def evaluate(m, xin, dtype):
        xx = xin.detach().to(dtype).requires_grad_(True)
        kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
        y = m(inputs_embeds=xx, **kwargs).last_hidden_state
        (y * r.to(dtype)).sum().backward()
        out = {"last_hidden_state": y.detach(), "grad_inputs": xx.grad}
        if attentions:
            with torch.no_grad():
                out["attentions"] = torch.stack(m(inputs_embeds=xx.detach(), output_attentions=True, **kwargs).attentions)
        return {k: v.double().contiguous() for k, v in out.items()}

    truth = evaluate(m64, x, torch.float64)
    noise = {k: torch.zeros((), dtype=torch.float64) for k in truth}
    gen = torch.Generator().manual_seed(1234)
    for i in range(4):
        xi = x if i == 0 else x * (1 + 2.0**-24 * torch.randn(x.shape, generator=gen))
        for k, v in evaluate(model, xi, torch.float32).items():
            noise[k] = torch.maximum(noise[k], (v - truth[k]).abs().max())
    return {**{f"{k}_f64": v for k, v in truth.items()}, **{f"{k}_noise": v for k, v in noise.items()}}
