"""MoSLoRA (arXiv 2406.11909), after ``wutaiqiang/MoSLoRA:commonsense_reasoning/peft/src/peft/tuners/lora.py@4e50e60``.

``h = W0 x + s * B M A drop(x)`` with a learnable r x r mixer M (``lora_AB`` in the release), s = alpha / r. A and M
are Kaiming-uniform (a = sqrt 5), B = 0. No router, no auxiliary loss. Mergeable: ``Delta W = s B M A``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cme_bench.tuners.base import (
    AdapterLayerMixin,
    MethodSpec,
    Params,
    Site,
    Tensors,
    add_delta,
    describe,
    leaf,
    method_defaults,
    new_linear,
)


class MosLoraLayer(nn.Module, AdapterLayerMixin):
    """An ``nn.Linear`` with a LoRA whose two factors are joined by a learnable r x r mixer."""

    method = "moslora"

    def __init__(self, base: nn.Linear, params: dict[str, Any], site: Site | None = None) -> None:
        super().__init__()
        self.r = int(params["r"])
        self.init_adapter(base, params, self.r)
        self.lora_A = new_linear(base.in_features, self.r, base, "kaiming")
        self.lora_M = new_linear(self.r, self.r, base, "kaiming")
        self.lora_B = new_linear(self.r, base.out_features, base, "zeros")

    def extra_repr(self) -> str:
        return describe(self, r=self.r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        xa = x.to(self.lora_A.weight.dtype)
        return add_delta(result, self.lora_B(self.lora_M(self.lora_A(self.lora_dropout(xa)))) * self.scaling)

    def delta_weight(self) -> torch.Tensor:
        """``s B M A``, shaped like the base weight."""
        return self.scaling * self.lora_B.weight @ self.lora_M.weight @ self.lora_A.weight


def to_lora(leaves: Tensors, p: Params) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """The exact plain LoRA: ``s B M A`` with ``s = alpha / r`` is ``B' = B M`` on the same A, rank and alpha."""
    b = leaf(leaves, "lora_B.weight").double() @ leaf(leaves, "lora_M.weight").double()
    return leaf(leaves, "lora_A.weight"), b, int(p["r"]), float(p["alpha"])


METHOD = MethodSpec(
    name="moslora",
    paper=("Mixture-of-Subspaces in Low-Rank Adaptation", "2406.11909"),
    description="MoSLoRA: LoRA with a learnable r x r subspace mixer (mergeable)",
    defaults=method_defaults({"r": 32}),
    routed=False,
    mergeable=True,
    build_layer=MosLoraLayer,
    serving="lora",
    to_lora=to_lora,
)
