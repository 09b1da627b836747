"""MultiLoRA (arXiv 2311.11501), after the re-implementation ``pUmpKin-Co/MTL-LoRA:src/adapter/multilora.py@7848a70``.

``h = W0 x + s * sum_i s_i * (B_i A_i drop(x))`` with n parallel LoRAs of rank r, s = alpha / r, and a learnable
per-output-channel scale s_i in R^{d_out}. A_i and B_i are Kaiming-uniform, s_i = 0 (so Delta W = 0 at step 0 and
only s_i receives gradient at first). No router. Mergeable: ``Delta W = s sum_i diag(s_i) B_i A_i``.
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
    new_linears,
)


class MultiLoraLayer(nn.Module, AdapterLayerMixin):
    """An ``nn.Linear`` with n scaled parallel LoRAs."""

    method = "multilora"

    def __init__(self, base: nn.Linear, params: dict[str, Any], site: Site | None = None) -> None:
        super().__init__()
        self.r = int(params["r"])
        self.n = int(params["num_adapters"])
        self.init_adapter(base, params, self.r)
        self.lora_A = new_linears(self.n, base.in_features, self.r, base, "kaiming")
        self.lora_B = new_linears(self.n, self.r, base.out_features, base, "kaiming")
        dtype = self.lora_A[0].weight.dtype
        self.lora_scale = nn.Parameter(torch.zeros(self.n, base.out_features, device=base.weight.device, dtype=dtype))

    def extra_repr(self) -> str:
        return describe(self, r=self.r, n=self.n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        xa = self.lora_dropout(x.to(self.lora_scale.dtype))
        delta = sum(self.lora_scale[i] * self.lora_B[i](self.lora_A[i](xa)) for i in range(self.n))
        return add_delta(result, delta * self.scaling)

    def delta_weight(self) -> torch.Tensor:
        """``s sum_i diag(s_i) B_i A_i``, shaped like the base weight."""
        terms = [
            self.lora_scale[i].unsqueeze(1) * (self.lora_B[i].weight @ self.lora_A[i].weight) for i in range(self.n)
        ]
        return self.scaling * torch.stack(terms).sum(0)


def to_lora(leaves: Tensors, p: Params) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """The exact plain LoRA: ``s sum_i diag(s_i) B_i A_i = (n alpha / (n r)) [diag(s_i) B_i] [A_i]``, i.e.
    ``A' = [A_i]``, ``B' = [diag(s_i) B_i]`` of rank ``n r`` with alpha ``n alpha``."""
    n = int(p["num_adapters"])
    scale = leaf(leaves, "lora_scale")
    a = torch.cat([leaf(leaves, f"lora_A.{i}.weight") for i in range(n)], dim=0)
    b = torch.cat([scale[i].unsqueeze(1) * leaf(leaves, f"lora_B.{i}.weight") for i in range(n)], dim=1)
    return a, b, n * int(p["r"]), n * float(p["alpha"])


METHOD = MethodSpec(
    name="multilora",
    paper=("MultiLoRA: Democratizing LoRA for Better Multi-Task Learning", "2311.11501"),
    description="MultiLoRA: n parallel LoRAs with learnable per-channel scales (mergeable)",
    defaults=method_defaults({"r": 32, "num_adapters": 3}),
    routed=False,
    mergeable=True,
    build_layer=MultiLoraLayer,
    serving="lora",
    to_lora=to_lora,
)
