"""Builders shared by the vLLM tests: a tiny Llama vLLM can run on CPU (head_dim 64) and adapters with non-zero
updates (freshly initialised adapters have B = 0 and would make every parity check trivially pass)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cme_bench.adapters import apply_adapter, load_adapter, preset_from_dict, save_adapter
from cme_bench.models import architecture_info, build_tiny_llama, save_model_folder

PROMPTS = [
    "The capital of France is",
    "Question: is the sky blue?\nAnswer:",
    "1, 2, 3, 4,",
    "def add(a, b):",
    "Once upon a time",
    "Sentence 1: A cat sat.\nSentence 2: A dog ran.\nLabel:",
]


def tiny_model(seed: int = 0):
    """hidden 128, 2 heads of 64 (vLLM's CPU attention needs head_dim 64), weights scaled up from the HF init.

    The default init (std 0.02) gives nearly flat logits on a random model, where a 1e-6 kernel difference could
    flip a greedy argmax; std 0.15 makes the top logit margins large enough to compare token for token.
    """
    model, tok = build_tiny_llama(seed=seed, hidden_size=128, num_heads=2, head_dim=64, intermediate_size=256)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed + 1)
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.15)
    return model.float().eval(), tok


def save_base(folder: Path, seed: int = 0) -> Path:
    model, tok = tiny_model(seed)
    return save_model_folder(model, tok, folder)


def make_adapter(base_dir: Path, out: Path, method: str, params: dict[str, Any], seed: int = 0) -> Path:
    """Apply ``method`` to the saved base, give every adapter tensor a random non-zero value, save it."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    preset = preset_from_dict({"method": method, "params": params}, name=method)
    info = architecture_info(base)  # before the adapter is injected: the fingerprint covers the weights
    model = apply_adapter(base, preset, seed=seed)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed + 7)
        for name, t in model.state_dict().items():
            if "lora_" in name and t.is_floating_point():
                if "interaction" in name:
                    t.copy_(torch.empty_like(t).uniform_(-0.1, 0.1).fill_diagonal_(0))
                elif "biases" in name:
                    t.zero_()
                else:
                    t.normal_(0.0, 0.2)
    return save_adapter(model, out, base_info=info)


def hf_model(base_dir: Path, adapter_dir: Path | None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if adapter_dir is not None:
        model = load_adapter(model, adapter_dir)
    return model.eval()


@torch.no_grad()
def hf_greedy(model, tokenizer, prompts: list[str], max_tokens: int) -> list[list[int]]:
    """HF generate, one prompt at a time (no padding), greedy, no early stop: the reference token ids."""
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        gen = model.generate(
            ids, max_new_tokens=max_tokens, do_sample=False, eos_token_id=None, pad_token_id=tokenizer.pad_token_id
        )
        out.append(gen[0, ids.shape[1] :].tolist())
    return out


def normalise_text(text: str) -> str:
    """Generated text with two detokenizer differences on the tiny model's random output removed (same token ids):

    - vLLM's incremental detokenizer holds back an incomplete UTF-8 sequence at the end, HF renders it as U+FFFD;
    - the byte tokenizer's ``<pad>``/``<s>`` are special to transformers (HF skips them) but not marked special in
      its tokenizer.json, so the tokenizers library (vLLM's detokenizer) prints them.
    """
    for special in ("<pad>", "<s>"):
        text = text.replace(special, "")
    return text.rstrip("\ufffd")
