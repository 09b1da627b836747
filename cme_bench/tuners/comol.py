"""CoMoL (Cao, Fan et al., arXiv 2603.00573), after ``DCDmllm/CoMoL:src/mocorelora/layer.py`` (called "MoCoreLoRA"
there).

One shared LoRA pair (A: d_in -> r, B: r -> d_out) and E learnable *core matrices* C_e (r x r), soft-merged per token
by a router on the projected input ("core-space routing", ``router_input="core"``, the default; ``"input"`` routes on
x, the release's ablation)::

    z = A drop(x);  g = softmax(W_r z);  C(x) = sum_e g_e C_e;  h = W0 x + s B drop(z drop(C(x)))

with ``z drop(C)`` the row vector z times the r x r matrix, s = alpha / r (the released script sets alpha = r, so
s = 1). Dense routing (every core weighted), computed in the adapter dtype as released; no top-k, no balance loss.
A and every C_e Kaiming-uniform (a = sqrt 5), B = 0 (the adapter starts as the base), router ``nn.Linear``'s
default (the same Kaiming-uniform). One dropout module serves the three places, a fresh mask each call.

Optional, off by default as released (``use_core_loss``): an orthogonality penalty on the cores,
``sum_{i != j} cos(C_i, C_j)^2 / (E (E - 1))``; ``core_loss_weight`` is its weight in the training loss (ours: the
release leaves how it is added to the loss outside the layer).

Forward paths (``forward`` parameter):
- ``reference`` (default): as released, the merged core C(x) is materialised per token (``[..., r, r]``);
- ``fused``: ``u = sum_e g_e (z C_e)``, one matmul of z with the concatenated cores ``[C_1 | ... | C_E]``
  (r -> E r) and a weighted sum over E, never an r x r matrix per token. Exact in eval mode; training with
  dropout > 0 it skips the dropout on C(x) (a labelled deviation). vLLM serves this form (``METHOD.vllm``).
"""

from __future__ import annotations

from collections.abc import Callable
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
    adapter_dtype,
    add_delta,
    check_non_negative,
    describe,
    identity,
    init_weight,
    leaf,
    lora_scaling,
    method_defaults,
    new_linear,
    routed_method,
)

ROUTER_INPUTS = ("core", "input")


# ----------------------------------------------------------------------------------------------------------------
# The math, as functions of tensors: the layer below and the vLLM model (``LinearServing``) both call these.


def merged_core(g: torch.Tensor, cores: torch.Tensor) -> torch.Tensor:
    """``C(x) = sum_e g_e C_e`` per token: ``[..., E]`` weights over ``[E, r, r]`` cores -> ``[..., r, r]``."""
    return torch.einsum("...e,eij->...ij", g.to(cores.dtype), cores)


def delta_reference(
    z: torch.Tensor, g: torch.Tensor, cores: torch.Tensor, b: torch.Tensor, p: Params, drop: Callable = identity
) -> torch.Tensor:
    """The released form: ``s B drop(z drop(C(x)))`` with the merged core materialised per token."""
    u = (z.unsqueeze(-2) @ drop(merged_core(g, cores))).squeeze(-2)
    return F.linear(drop(u), b) * lora_scaling(p)


def mix(
    a_out: torch.Tensor, logits: torch.Tensor | None, t: Tensors, p: Params, drop: Callable = identity
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused form's middle: ``u = s drop(sum_e g_e (z C_e))`` over ``z = a_out``; delta = ``B u``.

    ``logits`` is None for core-space routing served by vLLM (the router then reads ``z`` here, ``t["router"]``).
    """
    if logits is None:
        logits = F.linear(a_out, t["router"])
    g = F.softmax(logits, dim=-1)
    cores = t["cores"]
    e, r, _ = cores.shape
    zc = F.linear(a_out, cores.permute(0, 2, 1).reshape(e * r, r))  # [..., E * r]: (z C_e) for every e
    u = (g.to(zc.dtype).unsqueeze(-1) * zc.unflatten(-1, (e, r))).sum(dim=-2)
    return drop(u) * (float(p["alpha"]) / r), g


def core_orthogonality(cores: torch.Tensor) -> torch.Tensor:
    """``sum_{i != j} cos(vec C_i, vec C_j)^2 / (E (E - 1))``: 0 when the cores are mutually orthogonal."""
    e = cores.shape[0]
    if e < 2:
        return cores.new_zeros(())
    flat = cores.reshape(e, -1)
    unit = flat / (flat.norm(dim=1, keepdim=True) + 1e-8)
    off_diagonal = (unit @ unit.T) * (1 - torch.eye(e, device=cores.device, dtype=cores.dtype))
    return (off_diagonal**2).sum() / (e * (e - 1))


def pack(leaves: Tensors, p: Params) -> dict[str, torch.Tensor]:
    t = {"A": leaf(leaves, "lora_A.weight"), "B": leaf(leaves, "lora_B.weight"), "cores": leaf(leaves, "lora_cores")}
    router = leaf(leaves, "lora_router.weight")
    # Routing on x reads the input once with A; core-space routing reads z, so the router stays inside ``mix``.
    return t | ({"route": router} if p["router_input"] == "input" else {"router": router})


class CoMoLLayer(nn.Module, AdapterLayerMixin):
    """An ``nn.Linear`` with a shared LoRA pair whose r x r core is a per-token soft merge of E learnable cores."""

    method = "comol"

    def __init__(self, base: nn.Linear, params: dict[str, Any], site: Site | None = None) -> None:
        super().__init__()
        self.num_experts = int(params["num_experts"])
        self.r = int(params["r"])
        self.core_routing = params["router_input"] == "core"
        self.aux_weight = float(params["core_loss_weight"]) if params["use_core_loss"] else 0.0
        self.init_adapter(base, params, self.r)
        e, r = self.num_experts, self.r
        self.lora_A = new_linear(base.in_features, r, base, "kaiming")
        cores = torch.empty(e, r, r, device=base.weight.device, dtype=adapter_dtype(base))
        for core in cores:
            init_weight(core, "kaiming")
        self.lora_cores = nn.Parameter(cores)
        self.lora_B = new_linear(r, base.out_features, base, "zeros")
        self.lora_router = new_linear(r if self.core_routing else base.in_features, e, base, "kaiming")

    def extra_repr(self) -> str:
        return describe(self, r=self.r, cores=self.num_experts, router=self.params["router_input"], fused=self.fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        xa = x.to(self.lora_A.weight.dtype)
        z = self.lora_A(self.dropout(xa))
        logits = self.lora_router(z if self.core_routing else xa)
        if self.fused:
            u, g = mix(z, logits, {"cores": self.lora_cores}, self.params, self.dropout)
            delta = F.linear(u, self.lora_B.weight)
        else:
            g = F.softmax(logits, dim=-1)
            delta = delta_reference(z, g, self.lora_cores, self.lora_B.weight, self.params, self.dropout)
        if self.recording():
            if self.aux_weight:
                self.last_aux = core_orthogonality(self.lora_cores)
            self.record_load(g)
        return add_delta(result, delta)


def _deviations(p: Params) -> list[str]:
    if p["forward"] == "fused" and p["dropout"]:
        return ["comol fused form skips the dropout on the merged core C(x) in training (release: drops it)"]
    return []


def _check(p: dict[str, Any]) -> list[str]:
    problems = check_non_negative(p, "core_loss_weight")
    if p["router_input"] not in ROUTER_INPUTS:
        problems.append(f"router_input must be one of {list(ROUTER_INPUTS)}, got {p['router_input']!r}")
    if not isinstance(p["use_core_loss"], bool):
        problems.append(f"use_core_loss must be true or false, got {p['use_core_loss']!r}")
    return problems


METHOD = routed_method(
    name="comol",
    paper=("CoMoL", "2603.00573"),  # arXiv 2603.00573 (Cao, Fan et al.); the code calls it MoCoreLoRA
    description="CoMoL: shared LoRA A/B, E r x r core matrices soft-merged per token by a core-space router (routed)",
    defaults=method_defaults(
        {"r": 16, "num_experts": 8},
        alpha=16,
        dropout=0.1,
        router_input="core",
        forward="reference",
        use_core_loss=False,
        core_loss_weight=0.0,
    ),
    build_layer=CoMoLLayer,
    aux_weight_key="core_loss_weight",
    check=_check,
    vllm=LinearServing(pack=pack, mix=mix),
    deviations=_deviations,
    notes=[
        "released settings: r 16, 8 cores, alpha = r, dropout 0.1; the release adapts q,k,v,o,down",
        "per-expert rank = the shared rank r (the cores share A and B)",
    ],
)
