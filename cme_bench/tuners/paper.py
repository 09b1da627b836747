"""The TeamLoRA paper's parameter-share table and its base model's shape (teamlora.md §7-§8), for
``cme-bench adapters count --compare-paper``.
"""

from __future__ import annotations

from typing import Any

# The paper's trainable-share column: (row label, preset, printed share in %).
PAPER_SHARES = [
    ("LoRA r32", "lora", 0.67),
    ("LoRA r128", "lora-r128", 2.68),
    ("MoELoRA 4 x r32", "moelora", 2.71),
    ("HydraLoRA A r32 + 4 heads", "hydralora", 1.84),
    ("TeamLoRA r_B=32 (r_A=128)", "teamlora", 2.71),
    ("TeamLoRA r_B=16 (r_A=64)", "teamlora-r16", 1.35),
]
PAPER_BASE = "llama2-7b-cme"


def paper_base_config() -> Any:
    """Chinese-LLaMA-2-7B's shape: LLaMA-2-7B with a 55,296-token vocabulary (6,929,256,448 parameters)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=55296,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
    )
