"""MoLA (Gao et al., "Higher Layers Need More LoRA Experts", arXiv 2402.08562; NAACL 2025 Findings as "MoLA: MoE LoRA
with Layer-wise Expert Allocation"), after ``GCYZSL/MoLA:src/mola_lora_hacked.py`` (``Linear_MoE``).

Per adapted linear of decoder layer l: a router ``Linear(d_in -> E_l)`` without bias and E_l independent rank-r LoRA
experts. Per token: softmax over E_l in fp32, keep the top-k (k = 2, or E_l when a layer has fewer experts),
renormalise the kept weights to sum 1; ``h = W0 x + sum_kept w_i s B_i A_i drop(x)``, s = alpha / r.

Layer-wise expert counts (``expert_allocation``): a list of G counts spread over the model's L decoder layers in G
equal groups (layer l gets entry ``l * G // L``; G = L gives one count per layer, as the release's comma lists do).
The released default for a 32-layer model is 2 experts in layers 1-8, 4 in 9-16, 6 in 17-24 and 8 in 25-32
(``[2, 4, 6, 8]``). This is the one method whose layers differ by depth: ``build_layer`` reads the module's
``Site``. Defaults as released: r 8, alpha 16, dropout 0.05; A and router Kaiming-uniform (a = sqrt 5), B = 0.
The released balance loss is off by default (and, as released, appears unused), so none is built.

Forward paths (``forward`` parameter):
- ``reference`` (default): as released, each expert runs on the tokens routed to it (a fresh dropout mask per
  expert) and its weighted output is scattered back;
- ``fused``: MoELoRA's fused form with the top-k weights (zeros elsewhere): one matmul over the stacked A_i, one over
  the stacked B_i. It computes every expert for every token (cheaper on CPU at small E than gathering) and, training
  with dropout > 0, shares one dropout mask across experts (a labelled deviation). vLLM serves this form.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cme_bench.errors import CmeError
from cme_bench.tuners.base import (
    LinearServing,
    Params,
    Site,
    fused_dropout_deviation,
    identity,
    lora_scaling,
    method_defaults,
    routed_method,
    top_k_renormalised,
)
from cme_bench.tuners.moelora import MoeLoraLayer, make_mix, pack

RELEASED_ALLOCATION = [2, 4, 6, 8]


def layer_experts(allocation: Sequence[int], site: Site) -> int:
    """The expert count of the layer at ``site``: ``allocation[layer * G // num_layers]`` (G = len(allocation))."""
    if len(allocation) == 1:
        return int(allocation[0])
    if site.layer is None or not site.num_layers:
        raise CmeError(
            f"mola: {site.path or 'this module'} is not inside a numbered decoder layer, so the layer-wise "
            f"expert_allocation {list(allocation)} cannot place it; give one count (e.g. [4])"
        )
    return int(allocation[site.layer * len(allocation) // site.num_layers])


# ----------------------------------------------------------------------------------------------------------------
# The math, as functions of tensors: the layer below and the vLLM model (``LinearServing``) both call these.


def top_k_route(logits: torch.Tensor, p: Params) -> torch.Tensor:
    """Top-k softmax weights (fp32, renormalised over the kept experts), zeros elsewhere: ``[..., E_l]``."""
    probs = F.softmax(logits.float(), dim=-1)
    w, idx = top_k_renormalised(probs, min(int(p["top_k"]), probs.shape[-1]))
    return torch.zeros_like(probs).scatter(-1, idx, w)


mix = make_mix(top_k_route)


def delta_reference(
    x: torch.Tensor, w: torch.Tensor, a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], p: Params,
    drop: Callable = identity,
) -> torch.Tensor:  # fmt: skip
    """The released loop: each expert on its routed tokens only, ``w_i s B_i A_i drop(x)``, scattered back."""
    scaling = lora_scaling(p)
    flat, weights = x.reshape(-1, x.shape[-1]), w.reshape(-1, w.shape[-1])
    out = flat.new_zeros(flat.shape[0], b[0].shape[0])
    for e, (a_e, b_e) in enumerate(zip(a, b)):
        rows = weights[:, e].nonzero(as_tuple=True)[0]
        if rows.numel() == 0:
            continue
        y = F.linear(F.linear(drop(flat[rows]), a_e), b_e) * scaling
        out = out.index_add(0, rows, y * weights[rows, e : e + 1].to(y.dtype))
    return out.reshape(*x.shape[:-1], out.shape[-1])


def build_layer(base: nn.Linear, params: dict[str, Any], site: Site | None = None) -> MoeLoraLayer:
    """MoELoRA's layer with top-k routing, the released sparse loop, and this layer's own expert count."""
    experts = layer_experts(params["expert_allocation"], site or Site())
    return MoeLoraLayer(
        base, params, site, method="mola", num_experts=experts, route=top_k_route, reference=delta_reference
    )


def _check(p: dict[str, Any]) -> list[str]:
    allocation = p["expert_allocation"]
    if not (
        isinstance(allocation, list)
        and allocation
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in allocation)
    ):
        return [f"expert_allocation must be a non-empty list of positive integers, got {allocation!r}"]
    return []


METHOD = routed_method(
    name="mola",
    paper=("Higher Layers Need More LoRA Experts", "2402.08562"),
    description="MoLA: top-2 MoE-LoRA, layer-wise expert counts (released 2-4-6-8 over four layer groups) (routed)",
    defaults=method_defaults(
        {"r": 8, "expert_allocation": list(RELEASED_ALLOCATION), "top_k": 2}, alpha=16, forward="reference"
    ),
    build_layer=build_layer,
    check=_check,
    vllm=LinearServing(pack=pack, mix=mix),
    deviations=fused_dropout_deviation("mola"),
    experts=lambda p: max(p["expert_allocation"]),
    resize=lambda p, k, rank: {"expert_allocation": [k], "r": rank} if k is not None else {},
    notes=[
        "released settings: r 8, alpha 16, dropout 0.05, all seven projections, experts 2-4-6-8 over four groups",
        "top_k is capped at a layer's expert count; the balance loss is off, as released",
    ],
)
