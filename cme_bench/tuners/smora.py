"""SMoRA (arXiv 2501.15103), after ``StyxXuan/smora:packages/peft/src/peft/tuners/srmole/layer.py``.

Each rank is an expert: ``h = W0 x + s * B diag(g(x)) A drop(x)`` with s = alpha / activate_r. The router reads the
dropped input: ``p = sigmoid(W_r drop(x)) + b`` where b is a non-trained per-rank bias; the top ``activate_r`` values
of p are kept (the bias is part of the kept values, as in the code), renormalised to sum 1 and multiplied by
``activate_r``. In training, after routing, ``b += bias_update_rate * sign(mean_count - count_i)`` (aux-loss-free
balancing). A Kaiming, B = 0, router ``nn.Linear`` default init. No auxiliary loss. We compute densely (the release's
indexed-matmul kernels are a speed path with the same result). ``rank_partition`` is fixed to 1 (released default).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cme_bench.tuners.base import (
    FFN_TARGETS,
    AdapterLayerMixin,
    LinearServing,
    MethodSpec,
    Params,
    Site,
    Tensors,
    add_delta,
    check_not_above,
    describe,
    leaf,
    new_linear,
)

# ----------------------------------------------------------------------------------------------------------------
# The math, as functions of tensors: the layer below and the vLLM model (``LinearServing``) both call these.


def gates(logits: torch.Tensor, biases: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g, idx)``: sparse per-rank gates ``[..., r]`` (zeros outside the top ``k`` of ``sigmoid(logits) + b``),
    summing to ``k``, and the kept ranks' indices."""
    scores = torch.sigmoid(logits).float() + biases
    top, idx = scores.topk(k, dim=-1)
    sparse = torch.zeros_like(scores).scatter(-1, idx, top)
    return sparse / sparse.sum(dim=-1, keepdim=True) * k, idx


def mix(
    a_out: torch.Tensor, logits: torch.Tensor, t: Tensors, p: Params
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """``u = s g(x) * A drop(x)`` (router and A read the same dropped input); delta = ``B u``."""
    k = int(p["activate_r"])
    g, idx = gates(logits, t["biases"], k)
    return g.to(a_out.dtype) * a_out * (float(p["alpha"]) / k), (g, idx)


def pack(leaves: Tensors, p: Params) -> dict[str, torch.Tensor]:
    a = leaf(leaves, "lora_A.weight")
    # The bias buffer is frozen at inference; an adapter saved without it had never updated it (zeros).
    biases = leaves.get("lora_biases", torch.zeros(a.shape[0]))
    return {"A": a, "route": leaf(leaves, "lora_router.weight"), "B": leaf(leaves, "lora_B.weight"), "biases": biases}


class SmoraLayer(nn.Module, AdapterLayerMixin):
    """An ``nn.Linear`` whose LoRA ranks are sparsely gated per token."""

    method = "smora"

    def __init__(self, base: nn.Linear, params: dict[str, Any], site: Site | None = None) -> None:
        super().__init__()
        self.r = int(params["r"])
        self.activate_r = int(params["activate_r"])
        self.bias_update_rate = float(params["bias_update_rate"])
        self.init_adapter(base, params, self.activate_r)  # scaling alpha / activate_r, as in the release
        self.lora_A = new_linear(base.in_features, self.r, base, "kaiming")
        self.lora_B = new_linear(self.r, base.out_features, base, "zeros")
        self.lora_router = new_linear(base.in_features, self.r, base, "kaiming")
        self.register_buffer("lora_biases", torch.zeros(self.r, device=base.weight.device, dtype=torch.float32))

    def extra_repr(self) -> str:
        return describe(self, r=self.r, activate_r=self.activate_r)

    @torch.no_grad()
    def update_biases(self, idx: torch.Tensor) -> None:
        counts = torch.bincount(idx.reshape(-1), minlength=self.r).float()
        self.lora_biases += self.bias_update_rate * (counts.mean() - counts).sign()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        xd = self.dropout(x.to(self.lora_A.weight.dtype))
        u, (g, idx) = mix(self.lora_A(xd), self.lora_router(xd), {"biases": self.lora_biases}, self.params)
        if self.training:
            self.update_biases(idx)  # after routing, as released: this forward used the old biases
        if self.recording():
            self.record_load(g / self.activate_r)
        return add_delta(result, self.lora_B(u))


def _check(p: dict[str, Any]) -> list[str]:
    return check_not_above(p, "activate_r", "r")


METHOD = MethodSpec(
    name="smora",
    paper=("Each Rank Could be an Expert: Single-Ranked Mixture of Experts LoRA", "2501.15103"),
    description="SMoRA: each LoRA rank is an expert, sigmoid top-k ranks with bias balancing (routed)",
    defaults={
        "r": 64,
        "activate_r": 8,
        "alpha": 32,
        "dropout": 0.05,
        "bias_update_rate": 1e-5,
        "target_modules": list(FFN_TARGETS),
    },
    routed=True,
    mergeable=False,
    build_layer=SmoraLayer,
    check=_check,
    serving="routed",
    vllm=LinearServing(pack=pack, mix=mix),
    # Each rank is an expert of rank 1: the profile compares SMoRA as a LoRA of total rank r (no expert count).
)
