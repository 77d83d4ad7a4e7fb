"""Writes a BERT checkpoint and reference outputs of `BertModel` with a padding mask.

Usage: python make_bert_mask_fixtures.py OUT_DIR

OUT_DIR/bert_mask/model/ is a random BertModel (eager attention) saved by `save_pretrained`;
OUT_DIR/bert_mask/reference.safetensors holds inputs_embeds, attention_mask ([batch, seq], 1 for
a token, 0 for padding: rows right-padded to different lengths, one row left-padded and one
unpadded), BertModel(inputs_embeds=..., attention_mask=...) in eval mode (fp32), a cotangent R
and d(sum(out * R))/d inputs_embeds, the attention maps, and the float64 truth and fp32 noise
of each (`*_f64`, `*_noise`, as float64_reference.py computes them).
"""
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertModel

sys.path.insert(0, str(Path(__file__).parent))
from float64_reference import float64_outputs  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1]) / "bert_mask"
    torch.manual_seed(7)
    cfg = BertConfig(
        vocab_size=40, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
        intermediate_size=96, hidden_act="gelu", layer_norm_eps=1e-12, max_position_embeddings=32,
    )
    model = BertModel._from_config(cfg, attn_implementation="eager")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(out / "model", safe_serialization=True)
    model.eval()
    batch, seq = 4, 11
    mask = torch.zeros(batch, seq, dtype=torch.long)
    for row, length in enumerate([3, 11, 7]):
        mask[row, :length] = 1
    mask[3, 5:] = 1  # left-padded: the mask, not the layout, is what BERT honours
    x = torch.randn(batch, seq, cfg.hidden_size, requires_grad=True)
    y = model(inputs_embeds=x, attention_mask=mask).last_hidden_state
    r = torch.randn_like(y)
    (y * r).sum().backward()
    with torch.no_grad():
        maps = torch.stack(model(inputs_embeds=x, attention_mask=mask, output_attentions=True).attentions)
    tensors = {
        "inputs_embeds": x.detach().contiguous(), "attention_mask": mask.float().contiguous(),
        "last_hidden_state": y.detach().contiguous(), "cotangent": r.contiguous(),
        "grad_inputs": x.grad.contiguous(), "attentions": maps.contiguous(),
    }
    tensors.update(float64_outputs(model, x, r, attentions=True, attention_mask=mask))
    save_file(tensors, str(out / "reference.safetensors"))
    print(f"wrote the masked BERT reference case to {out}")


if __name__ == "__main__":
    main()
