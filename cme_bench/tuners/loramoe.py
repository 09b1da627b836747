"""LoRAMoE (arXiv 2312.09979), after ``Ablustrund/LoRAMoE:peft/tuners/lora.py@1177288``.

The layer is MoELoRA's (dense softmax router in fp32, independent A_i and B_i of rank r per expert, dropout per expert,
s = alpha / r) plus the localized balancing constraint L_lbc = blc_weight * CV^2(Q * I) with ``blc_alpha`` = delta
(see ``moelora.localized_balance_loss``). The released script sets both to 0, so the loss is off by default.
L_lbc needs each sample's ``task_type``; pass it with ``cme_bench.adapters.set_task_types`` before the forward.
"""

from __future__ import annotations

import functools
from typing import Any

from cme_bench.tuners.base import (
    LinearServing,
    Params,
    check_non_negative,
    fused_dropout_deviation,
    method_defaults,
    routed_method,
)
from cme_bench.tuners.moelora import MoeLoraLayer, mix, pack


def _deviations(p: Params) -> list[str]:
    out = fused_dropout_deviation("loramoe")(p)
    if p.get("blc_weight"):
        out.append("loramoe L_lbc without task types set (set_task_types) reduces to a plain CV^2 balance")
    return out


def _check(p: dict[str, Any]) -> list[str]:
    problems = check_non_negative(p, "blc_weight")
    if not isinstance(p["blc_alpha"], (int, float)) or not 0 <= p["blc_alpha"] < 1:
        problems.append(f"blc_alpha must be in [0, 1), got {p['blc_alpha']!r}")
    if isinstance(p["num_experts"], int) and p["blc_alpha"] and p["num_experts"] % 2:
        problems.append(f"L_lbc splits experts into two groups: num_experts must be even, got {p['num_experts']}")
    return problems


METHOD = routed_method(
    name="loramoe",
    paper=("LoRAMoE: Alleviate World Knowledge Forgetting in LLMs via MoE-Style Plugin", "2312.09979"),
    description="LoRAMoE: dense token-routed LoRA experts with the localized balancing loss (off by default) (routed)",
    defaults=method_defaults({"r": 4, "num_experts": 8}, forward="reference", blc_weight=0.0, blc_alpha=0.0),
    build_layer=functools.partial(MoeLoraLayer, method="loramoe", with_aux=True),
    aux_weight_key="blc_weight",
    check=_check,
    vllm=LinearServing(pack=pack, mix=mix),
    deviations=_deviations,
    notes=["released script: blc_weight = blc_alpha = 0"],
)
