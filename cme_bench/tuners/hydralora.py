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

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cme_bench.tuners.base import (
    AdapterLayerMixin,
    LinearServing,
    Params,
    Site,
    Tensors,
    add_delta,
    describe,
    fused_dropout_deviation,
    identity,
    leaf,
    lora_scaling,
    method_defaults,
    mix_experts,
    new_linear,
    new_linears,
    routed_method,
    stack_leaves,
)

# ----------------------------------------------------------------------------------------------------------------
# The math, as functions of tensors: the layer below and the vLLM model (``LinearServing``) both call these.


def mix(a_out: torch.Tensor, logits: torch.Tensor, t: Tensors, p: Params) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused form's middle: ``u = (w outer s A x).flatten()`` (head-major, ``[..., N * r]``); delta = ``B_cat u``."""
    w = F.softmax(logits.float(), dim=-1)
    z = a_out * lora_scaling(p)
    return (w.to(z.dtype).unsqueeze(-1) * z.unsqueeze(-2)).flatten(-2), w


def delta_reference(
    x: torch.Tensor, w: torch.Tensor, a: torch.Tensor, b: Sequence[torch.Tensor], p: Params,
    drop: Callable = identity,
) -> torch.Tensor:  # fmt: skip
    """As released: ``A x`` recomputed for every head, each time with a fresh dropout mask (N x the A cost)."""
    scaling = lora_scaling(p)
    return mix_experts(w, (F.linear(F.linear(drop(x), a), b_i) * scaling for b_i in b))


def pack(leaves: Tensors, p: Params) -> dict[str, torch.Tensor]:
    return {
        "A": leaf(leaves, "lora_A.weight"),
        "route": leaf(leaves, "lora_route.weight"),
        "B": stack_leaves(leaves, "lora_B", 1),
    }


class HydraLoraLayer(nn.Module, AdapterLayerMixin):
    """An ``nn.Linear`` with a shared A and N routed B heads."""

    method = "hydralora"

    def __init__(self, base: nn.Linear, params: dict[str, Any], site: Site | None = None) -> None:
        super().__init__()
        self.num_experts = int(params["num_experts"])
        self.r = int(params["r"])
        self.init_adapter(base, params, self.r)
        self.lora_A = new_linear(base.in_features, self.r, base, "kaiming")
        self.lora_B = new_linears(self.num_experts, self.r, base.out_features, base, "zeros")
        self.lora_route = new_linear(base.in_features, self.num_experts, base, "kaiming")

    def extra_repr(self) -> str:
        return describe(self, r=self.r, heads=self.num_experts, fused=self.fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        xa = x.to(self.lora_A.weight.dtype)
        logits = self.lora_route(xa)
        b = [m.weight for m in self.lora_B]
        if self.fused:
            u, w = mix(self.lora_A(self.dropout(xa)), logits, {}, self.params)
            delta = F.linear(u, torch.cat(b, dim=1))
        else:
            w = F.softmax(logits.float(), dim=-1)
            delta = delta_reference(xa, w, self.lora_A.weight, b, self.params, self.dropout)
        if self.recording():
            self.record_load(w)
        return add_delta(result, delta)


METHOD = routed_method(
    name="hydralora",
    paper=("HydraLoRA: An Asymmetric LoRA Architecture for Efficient Fine-Tuning", "2404.19245"),
    description="HydraLoRA: shared A, several routed B heads (routed)",
    defaults=method_defaults({"r": 32, "num_experts": 4}, forward="reference"),
    build_layer=HydraLoraLayer,
    vllm=LinearServing(pack=pack, mix=mix),
    deviations=fused_dropout_deviation("hydralora"),
    notes=["TeamLoRA's table row: A rank 32 + 4 heads of rank 32"],
)
