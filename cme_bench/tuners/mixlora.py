"""MixLoRA (arXiv 2404.15159), after ``TUDB-Labs/MixLoRA:mixlora/model.py@d59d09b`` and mLoRA's ``mix_lora.py``.

MixLoRA works on a whole FFN block, not on single linears: ``y = sum_{i in TopK} g_i * FFN_{W + Delta W_i}(x)`` where
expert i adds its own LoRA to gate, up and down; ``g = softmax(W_r x)`` in fp32, top-k, renormalised. The router is
``Linear(d -> E)`` without bias, init N(0, 0.02). Auxiliary loss (Switch/Mixtral form): ``E * sum_e f_e P_e`` with
f_e the fraction of tokens whose top-k contains e and P_e the mean router probability; weight ``aux_loss_weight``
(0.001 in the code, 0.01 in the README).

Implementation notes:
- Targets are FFN blocks exposing ``gate_proj``, ``up_proj``, ``down_proj`` and ``act_fn`` (Llama, Qwen2, Mistral).
- The frozen down_proj is applied once to the gate-weighted sum of expert activations (exact by linearity) instead
  of once per selected expert as the release does (docs/baselines.md §8 pitfall).
- Deviations: only the FFN experts are built (the template also puts one plain LoRA on q, k, v, o; combine with a
  separate run if needed); padding is not masked out of the balance loss (the MLP never sees the attention mask);
  router jitter is not implemented (its default is 0).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cme_bench.errors import CmeError
from cme_bench.tuners.base import (
    AdapterLayerMixin,
    MethodSpec,
    check_non_negative,
    check_not_above,
    new_linear,
    new_linears,
    softmax_route,
)
from cme_bench.tuners.tokens import real_mask

PROJECTIONS = ("gate", "up", "down")


class MixLoraBlock(nn.Module, AdapterLayerMixin):
    """A gated FFN block whose E experts are the frozen FFN plus a per-expert LoRA on gate, up and down."""

    method = "mixlora"

    def __init__(self, mlp: nn.Module, params: dict[str, Any]) -> None:
        super().__init__()
        missing = [n for n in ("gate_proj", "up_proj", "down_proj", "act_fn") if not hasattr(mlp, n)]
        if missing:
            raise CmeError(f"mixlora needs a gated FFN block; {type(mlp).__name__} lacks {', '.join(missing)}")
        self.num_experts = int(params["num_experts"])
        self.top_k = int(params["top_k"])
        self.r = int(params["r"])
        self.aux_weight = float(params["aux_loss_weight"])
        self.init_adapter(mlp, params, self.r)
        for proj in PROJECTIONS:
            base = getattr(mlp, f"{proj}_proj")
            setattr(self, f"lora_{proj}_A", new_linears(self.num_experts, base.in_features, self.r, base, "kaiming"))
            setattr(self, f"lora_{proj}_B", new_linears(self.num_experts, self.r, base.out_features, base, "zeros"))
        hidden = mlp.gate_proj.in_features
        self.lora_route = new_linear(hidden, self.num_experts, mlp.gate_proj, "normal:0.02")

    def lora(self, proj: str, expert: int, x: torch.Tensor) -> torch.Tensor:
        a = getattr(self, f"lora_{proj}_A")[expert]
        b = getattr(self, f"lora_{proj}_B")[expert]
        return b(a(self.dropout(x))) * self.scaling

    def route(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router probabilities ``[N, E]``, and the renormalised top-k weights and indices ``[N, k]``."""
        probs = softmax_route(self.lora_route, flat)
        top_w, top_i = probs.topk(self.top_k, dim=-1)
        return probs, top_w / top_w.sum(dim=-1, keepdim=True), top_i

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        mlp = self.base_layer
        flat = x.reshape(-1, shape[-1])
        xa = flat.to(self.lora_route.weight.dtype)
        probs, top_w, top_i = self.route(xa)
        hidden_sum, delta = mix_experts_ffn(
            xa, top_w, top_i, mlp.gate_proj(flat), mlp.up_proj(flat), self.lora, mlp.act_fn,
            self.num_experts, mlp.down_proj.out_features,
        )  # fmt: skip
        out = mlp.down_proj(hidden_sum) + delta.to(hidden_sum.dtype)
        if self.recording():
            self.last_aux = switch_balance_loss(probs, top_i, self.num_experts)
            self.record_load(torch.zeros_like(probs).scatter(-1, top_i, top_w))
        return out.reshape(*shape[:-1], out.shape[-1])


def mix_experts_ffn(
    xa: torch.Tensor,
    top_w: torch.Tensor,
    top_i: torch.Tensor,
    base_gate: torch.Tensor,
    base_up: torch.Tensor,
    lora: Callable[[str, int, torch.Tensor], torch.Tensor],
    act: Callable[[torch.Tensor], torch.Tensor],
    num_experts: int,
    hidden: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MixLoRA's top-k expert loop over one FFN block, shared by the layer and the vLLM model.

    Each token's selected experts run ``act(gate + dgate) * (up + dup)``; returns the gate-weighted sum of those
    hidden states (the frozen down projection is applied once to it, exact by linearity) and the weighted sum of the
    experts' down-projection LoRA deltas.
    """
    hidden_sum = torch.zeros_like(base_up)
    delta = torch.zeros(xa.shape[0], hidden, dtype=xa.dtype, device=xa.device)
    for e in range(num_experts):
        rows, slot = (top_i == e).nonzero(as_tuple=True)
        if rows.numel() == 0:
            continue
        xe = xa[rows]
        gate = base_gate[rows] + lora("gate", e, xe).to(base_gate.dtype)
        up = base_up[rows] + lora("up", e, xe).to(base_up.dtype)
        h = act(gate) * up
        g = top_w[rows, slot].unsqueeze(-1)
        hidden_sum = hidden_sum.index_add(0, rows, (g * h).to(hidden_sum.dtype))
        delta = delta.index_add(0, rows, g.to(delta.dtype) * lora("down", e, h.to(xa.dtype)))
    return hidden_sum, delta


def switch_balance_loss(probs: torch.Tensor, top_i: torch.Tensor, num_experts: int) -> torch.Tensor:
    """``E * sum_e f_e * P_e``: f_e = (tokens with e in their top-k) / tokens, P_e = mean router probability.

    Over real tokens only: padding positions of the training forward are left out (``tuners.tokens``).
    """
    keep = real_mask(probs)
    if keep is not None:
        probs, top_i = probs[keep], top_i.reshape(keep.numel(), -1)[keep]
    counts = torch.zeros(num_experts, device=probs.device).index_add(
        0, top_i.reshape(-1), torch.ones(top_i.numel(), device=probs.device)
    )
    f = counts / probs.shape[0]
    return num_experts * (f * probs.mean(dim=0)).sum()


def _check(p: dict[str, Any]) -> list[str]:
    return check_not_above(p, "top_k", "num_experts") + check_non_negative(p, "aux_loss_weight")


METHOD = MethodSpec(
    name="mixlora",
    description="MixLoRA: top-k sparse FFN experts (frozen FFN + per-expert LoRA) with load-balance loss (routed)",
    defaults={
        "r": 16,
        "num_experts": 8,
        "top_k": 2,
        "alpha": 32,
        "dropout": 0.05,
        "aux_loss_weight": 0.001,
        "target_modules": ["mlp"],
    },
    routed=True,
    mergeable=False,
    scope="mlp",
    build_layer=MixLoraBlock,
    aux_weight_key="aux_loss_weight",
    check=_check,
    notes=["FFN experts only (no attention LoRA)", "balance loss includes padding positions"],
)
