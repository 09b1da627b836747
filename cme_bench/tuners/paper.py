"""The TeamLoRA paper's published figures (arXiv 2408.09856): its parameter-share table and base model's shape, for
``cme-bench adapters count --compare-paper``, and its efficiency comparison (which methods the profile's ratios
divide by, the published ratios and the targets), for ``cme-bench profile``.
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


# The efficiency comparison of the paper: every ratio divides by LoRA (at the per-expert rank and at the same total
# rank) or by MoELoRA (same k and per-expert rank); the targets are about TeamLoRA.
LORA_REFERENCE = "lora"
MOE_REFERENCE = "moelora"
TARGET_METHOD = "teamlora"

# Published training-time and inference ratios. "train_x_moelora" is TeamLoRA's time over MoELoRA's at k experts;
# "train_x_lora" compares with LoRA at the per-expert rank (MoELoRA +62% / +138%); the k = 4 entries for LoRA and
# HydraLoRA come from the results table (LoRA r32 25 h, r128 26 h, MoELoRA 42 h, HydraLoRA 34 h, TeamLoRA 29 h).
# Inference: "about 40% faster" than MoELoRA, no k given.
PAPER_RATIOS: dict[tuple[str, str], dict[int, float]] = {
    ("teamlora", "train_x_moelora"): {2: 0.87, 4: 0.70, 8: 0.63},
    ("teamlora", "train_x_lora"): {4: 29 / 25},
    ("teamlora", "train_x_lora_same_rank"): {4: 29 / 26},
    ("teamlora", "decode_x_moelora"): {2: 0.6, 4: 0.6, 8: 0.6},
    ("moelora", "train_x_lora"): {4: 1.62, 8: 2.38},
    ("moelora", "train_x_lora_same_rank"): {4: 42 / 26},
    ("hydralora", "train_x_moelora"): {4: 34 / 42},
    ("hydralora", "train_x_lora"): {4: 34 / 25},
}

# cme-bench's efficiency targets for TeamLoRA (CPU, SmolLM2-135M, FFN targets); the official setting is k = 4.
TARGETS = (("train_x_moelora", 0.75), ("train_x_lora_same_rank", 1.2), ("decode_x_moelora", 0.7))
TARGET_EXPERTS = 4
