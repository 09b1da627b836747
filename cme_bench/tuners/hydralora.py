"""HydraLoRA (arXiv 2404.19245), after ``Clin0212/HydraLoRA:HydraLoRA/peft/tuners/lora.py@afb693b``.

``h = W0 x + sum_i w_i(x) * s * B_i A drop(x)``: one shared A (r x d_in), N heads B_i (d_out x r), a dense per-token
softmax router ``Linear(d_in -> N)`` without bias in fp32, s = alpha / r. A and the router: Kaiming-uniform; B_i = 0.
Each head reads the *whole* A output (TeamLoRA's experts read disjoint slices). No auxiliary loss.

Forward paths (``forward`` parameter):
- ``reference`` (default): as released, A x is recomputed for every head with its own dropout mask (N x the A cost);
- ``fused``: ``z = s A drop(x)`` once, then one matmul of ``[B_0 | ... | B_{N-1}]`` with ``(w outer z)``. With
  dropout > 0 in training this shares one mask across heads (a different training distribution: labelled deviation).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cme_bench.tuners.base import (
    AdapterLayerMixin,
    MethodSpec,
    add_delta,
    describe,
    method_defaults,
    mix_experts,
    new_linear,
    new_linears,
    softmax_route,
)


class HydraLoraLayer(nn.Module, AdapterLayerMixin):
    """An ``nn.Linear`` with a shared A and N routed B heads."""

    method = "hydralora"

    def __init__(self, base: nn.Linear, params: dict[str, Any]) -> None:
        super().__init__()
        self.num_experts = int(params["num_experts"])
        self.r = int(params["r"])
        self.fused = params["forward"] == "fused"
        self.init_adapter(base, params, self.r)
        self.lora_A = new_linear(base.in_features, self.r, base, "kaiming")
        self.lora_B = new_linears(self.num_experts, self.r, base.out_features, base, "zeros")
        self.lora_route = new_linear(base.in_features, self.num_experts, base, "kaiming")

    def extra_repr(self) -> str:
        return describe(self, r=self.r, heads=self.num_experts, fused=self.fused)

    def delta_reference(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # A x is recomputed per head, each time with a fresh dropout mask, as released.
        return mix_experts(w, (head(self.lora_A(self.dropout(x))) * self.scaling for head in self.lora_B))

    def delta_fused(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        z = self.lora_A(self.dropout(x)) * self.scaling  # [..., r]
        u = (w.to(z.dtype).unsqueeze(-1) * z.unsqueeze(-2)).flatten(-2)  # [..., N*r], head-major
        return F.linear(u, torch.cat([b.weight for b in self.lora_B], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        xa = x.to(self.lora_A.weight.dtype)
        w = softmax_route(self.lora_route, xa)
        delta = self.delta_fused(xa, w) if self.fused else self.delta_reference(xa, w)
        if self.recording():
            self.record_load(w)
        return add_delta(result, delta)


METHOD = MethodSpec(
    name="hydralora",
    description="HydraLoRA: shared A, several routed B heads (routed)",
    defaults=method_defaults({"r": 32, "num_experts": 4}, forward="reference"),
    routed=True,
    mergeable=False,
    build_layer=HydraLoraLayer,
    notes=["TeamLoRA's table row: A rank 32 + 4 heads of rank 32"],
)
