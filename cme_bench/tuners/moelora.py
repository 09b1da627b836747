"""MoELoRA, the token-routed variant (docs/METHODS.md, "MoELoRA"): a dense mixture of independent LoRA experts.

``h = W0 x + sum_i softmax(W_r x)_i * s * B_i A_i drop_i(x)`` with rank r per expert, s = alpha / r, router
``Linear(d_in -> E)`` without bias computed in fp32, A_i and the router Kaiming-uniform (a = sqrt 5), B_i = 0. This is
the symmetric MoELoRA TeamLoRA compares against (independent A_i and B_i); the task-gated MOELoRA (arXiv 2310.18339)
is a different method and is not implemented.

The same layer serves ``loramoe`` (``cme_bench.tuners.loramoe``), which adds its localized balancing loss.

Forward paths (``forward`` parameter):
- ``reference`` (default): the way the LoRAMoE-family code runs, a loop over experts with a dropout mask per expert;
- ``fused``: one matmul over the stacked ``[A_0; ...; A_{E-1}]`` and one over ``[B_0 | ... | B_{E-1}]`` after the
  per-expert weighting. Deviation when training with dropout > 0: one dropout mask on x is shared by all experts
  (independent masks cannot be folded into one matmul over x). In eval mode, or with dropout 0, both paths agree.
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
    per_expert,
    routed_method,
    stack_leaves,
)
from cme_bench.tuners.tokens import per_example_sums

# ----------------------------------------------------------------------------------------------------------------
# The math, as functions of tensors: the layer below and the vLLM model (``LinearServing``) both call these.

Route = Callable[[torch.Tensor, Params], torch.Tensor]


def dense_route(logits: torch.Tensor, p: Params) -> torch.Tensor:
    """Dense per-token softmax weights ``[..., E]``, in fp32 as the released routers compute them."""
    return F.softmax(logits.float(), dim=-1)


def mix_weights(a_out: torch.Tensor, w: torch.Tensor, p: Params) -> torch.Tensor:
    """Fused form's middle for expert weights ``w`` ``[..., E]`` over the stacked expert outputs ``a_out = A_cat x``
    (``[..., E * r]``): ``u = repeat_interleave(w, r) * s a_out``; delta = ``B_cat u``."""
    r = int(p["r"])
    return per_expert(w, r, a_out * (float(p["alpha"]) / r))


def make_mix(route: Route) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The ``LinearServing.mix`` of a mixture of independent LoRA experts routed by ``route``."""

    def mix(a_out: torch.Tensor, logits: torch.Tensor, t: Tensors, p: Params) -> tuple[torch.Tensor, torch.Tensor]:
        w = route(logits, p)
        return mix_weights(a_out, w, p), w

    return mix


mix = make_mix(dense_route)


def delta_reference(
    x: torch.Tensor, w: torch.Tensor, a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], p: Params,
    drop: Callable = identity,
) -> torch.Tensor:  # fmt: skip
    """The released loop: ``sum_i w_i s B_i A_i drop_i(x)``, a fresh dropout mask per expert."""
    scaling = lora_scaling(p)
    return mix_experts(w, (F.linear(F.linear(drop(x), a_i), b_i) * scaling for a_i, b_i in zip(a, b)))


def pack(leaves: Tensors, p: Params) -> dict[str, torch.Tensor]:
    return {
        "A": stack_leaves(leaves, "lora_A", 0),
        "route": leaf(leaves, "lora_route.weight"),
        "B": stack_leaves(leaves, "lora_B", 1),
    }


class MoeLoraLayer(nn.Module, AdapterLayerMixin):
    """An ``nn.Linear`` with E independent rank-r LoRA experts mixed by a per-token router.

    Shared by three methods: ``route`` is dense softmax here and in LoRAMoE (which sets ``with_aux`` for its L_lbc),
    top-k in MoLA (which also passes its layer's ``num_experts`` and its sparse ``reference`` loop).
    """

    method = "moelora"

    def __init__(
        self, base: nn.Linear, params: dict[str, Any], site: Site | None = None, *, method: str = "moelora",
        num_experts: int | None = None, route: Route = dense_route, reference: Callable | None = None,
        with_aux: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.method = method
        self.num_experts = int(num_experts if num_experts is not None else params["num_experts"])
        self.r = int(params["r"])
        self.route = route
        self.reference = reference or delta_reference
        self.with_aux = with_aux
        self.aux_weight = float(params.get("blc_weight", 0.0))
        self.blc_alpha = float(params.get("blc_alpha", 0.0))
        self.task_types: torch.Tensor | None = None  # LoRAMoE only; set by adapters.set_task_types
        # Scaling alpha / r per expert (token-routed), not alpha / r_total (task-gated). The one dropout module draws
        # a fresh mask on every call, so the loop gets one mask per expert.
        self.init_adapter(base, params, self.r)
        e, r = self.num_experts, self.r
        self.lora_A = new_linears(e, base.in_features, r, base, "kaiming")
        self.lora_B = new_linears(e, r, base.out_features, base, "zeros")
        self.lora_route = new_linear(base.in_features, e, base, "kaiming")

    def extra_repr(self) -> str:
        return describe(self, r=self.r, experts=self.num_experts, fused=self.fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        xa = x.to(self.lora_route.weight.dtype)
        w = self.route(self.lora_route(xa), self.params)
        a = [m.weight for m in self.lora_A]
        b = [m.weight for m in self.lora_B]
        if self.fused:
            a_out = F.linear(self.dropout(xa), torch.cat(a, dim=0))  # one dropout mask for every expert
            delta = F.linear(mix_weights(a_out, w, self.params), torch.cat(b, dim=1))
        else:
            delta = self.reference(xa, w, a, b, self.params, self.dropout)
        if self.recording():
            if self.with_aux:
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


METHOD = routed_method(
    name="moelora",
    paper=("MoELoRA: Contrastive Learning Guided Mixture of Experts on PEFT for LLMs", "2402.12851"),
    description="MoELoRA (dense token-routed mixture of independent LoRA experts) (routed)",
    defaults=method_defaults({"r": 32, "num_experts": 4}, forward="reference"),
    build_layer=MoeLoraLayer,
    vllm=LinearServing(pack=pack, mix=mix),
    deviations=fused_dropout_deviation("moelora"),
    notes=["token-routed dense variant, scaling alpha / r per expert"],
)
