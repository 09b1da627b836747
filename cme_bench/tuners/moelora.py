"""MoELoRA, variant 5c of docs/baselines.md: a dense, token-routed mixture of independent LoRA experts.

``h = W0 x + sum_i softmax(W_r x)_i * s * B_i A_i drop_i(x)`` with rank r per expert, s = alpha / r, router
``Linear(d_in -> E)`` without bias computed in fp32, A_i and the router Kaiming-uniform (a = sqrt 5), B_i = 0. This is
the symmetric MoELoRA TeamLoRA compares against (independent A_i and B_i); the task-gated MOELoRA (5a) is a different
method and is not implemented.

The same layer serves ``loramoe`` (``cme_bench.tuners.loramoe``), which adds its localized balancing loss.

Forward paths (``forward`` parameter):
- ``reference`` (default): the way the LoRAMoE-family code runs, a loop over experts with a dropout mask per expert;
- ``fused``: one matmul over the stacked ``[A_0; ...; A_{E-1}]`` and one over ``[B_0 | ... | B_{E-1}]`` after the
  per-expert weighting. Deviation when training with dropout > 0: one dropout mask on x is shared by all experts
  (independent masks cannot be folded into one matmul over x). In eval mode, or with dropout 0, both paths agree.
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
from cme_bench.tuners.tokens import per_example_sums


class MoeLoraLayer(nn.Module, AdapterLayerMixin):
    """An ``nn.Linear`` with E independent rank-r LoRA experts mixed by a dense per-token softmax router."""

    method = "moelora"

    def __init__(self, base: nn.Linear, params: dict[str, Any], method: str = "moelora") -> None:
        super().__init__()
        self.method = method
        self.num_experts = int(params["num_experts"])
        self.r = int(params["r"])
        self.fused = params["forward"] == "fused"
        self.aux_weight = float(params.get("blc_weight", 0.0))
        self.blc_alpha = float(params.get("blc_alpha", 0.0))
        self.task_types: torch.Tensor | None = None  # LoRAMoE only; set by adapters.set_task_types
        # Scaling alpha / r per expert (5c), not alpha / r_total (5a). The one dropout module draws a fresh mask on
        # every call, so the loop gets one mask per expert.
        self.init_adapter(base, params, self.r)
        e, r = self.num_experts, self.r
        self.lora_A = new_linears(e, base.in_features, r, base, "kaiming")
        self.lora_B = new_linears(e, r, base.out_features, base, "zeros")
        self.lora_route = new_linear(base.in_features, e, base, "kaiming")

    def extra_repr(self) -> str:
        return describe(self, r=self.r, experts=self.num_experts, fused=self.fused)

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """Dense softmax routing weights in fp32, shape ``[..., E]``."""
        return softmax_route(self.lora_route, x)

    def delta_reference(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        experts = zip(self.lora_A, self.lora_B)
        return mix_experts(w, (b(a(self.dropout(x))) * self.scaling for a, b in experts))

    def delta_fused(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        a_cat = torch.cat([a.weight for a in self.lora_A], dim=0)  # [E*r, d_in]
        b_cat = torch.cat([b.weight for b in self.lora_B], dim=1)  # [d_out, E*r]
        z = F.linear(self.dropout(x), a_cat) * self.scaling
        return F.linear(w.to(z.dtype).repeat_interleave(self.r, dim=-1) * z, b_cat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        xa = x.to(self.lora_route.weight.dtype)
        w = self.route(xa)
        delta = self.delta_fused(xa, w) if self.fused else self.delta_reference(xa, w)
        if self.recording():
            if self.method == "loramoe":
                self.last_aux = localized_balance_loss(w, self.task_types, self.blc_alpha)
            self.record_load(w)
        return add_delta(result, delta)


def cv_squared(x: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation ``var / (mean^2 + 1e-10)`` over all entries, as in the LoRAMoE code."""
    x = x.float().reshape(-1)
    if x.numel() <= 1:
        return x.new_zeros(())
    return x.var() / (x.mean() ** 2 + 1e-10)


def localized_balance_loss(w: torch.Tensor, task_types: torch.Tensor | None, delta: float) -> torch.Tensor:
    """LoRAMoE's L_lbc = CV^2(Q * I) (before its weight beta).

    ``Q[b, e] = sum_t w_e(x_bt)`` over the real tokens of example b (``tuners.tokens``: the release sums over padding
    too, and packed rows hold several examples; a labelled deviation); ``I[b, e] = 1 + delta`` if expert e belongs to
    sample b's group (the first E/2 experts serve ``task_type == 1``, the rest the others) else ``1 - delta``.
    Without task types every ``I`` is 1, i.e. a plain CV^2 balance over (sample, expert): a labelled deviation,
    reported by ``adapter_info``.
    """
    q = per_example_sums(w)
    if task_types is None or delta == 0.0:
        return cv_squared(q)
    num_experts = q.shape[-1]
    first_half = torch.arange(num_experts, device=q.device) < num_experts // 2
    in_group = (task_types.to(q.device).reshape(-1, 1) == 1) == first_half.reshape(1, -1)
    importance = torch.where(in_group, 1.0 + delta, 1.0 - delta)
    return cv_squared(q * importance)


METHOD = MethodSpec(
    name="moelora",
    description="MoELoRA (dense token-routed mixture of independent LoRA experts, variant 5c) (routed)",
    defaults=method_defaults({"r": 32, "num_experts": 4}, forward="reference"),
    routed=True,
    mergeable=False,
    build_layer=MoeLoraLayer,
    notes=["variant 5c (token-level dense), scaling alpha / r per expert"],
)
