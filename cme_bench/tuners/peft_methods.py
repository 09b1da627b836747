"""LoRA, DoRA and AdaLoRA through PEFT itself (a real dependency), so that their adapters are PEFT adapters:
``PeftModel.from_pretrained`` and vLLM load what cme-bench saves.

Hyperparameters use cme-bench's names (``r``, ``alpha``, ``dropout``, ``target_modules``) and are translated to PEFT's
config here. AdaLoRA needs the real number of optimizer steps (``total_steps`` of ``apply_adapter``) and a call to
``update_and_allocate`` after every backward (``adapters.step_hook``); its orthogonality penalty is added to the LM
loss by PEFT's own forward, so ``adapters.aux_loss`` returns None for it (adding it again would count it twice).
"""

from __future__ import annotations

from typing import Any

from cme_bench.errors import CmeError
from cme_bench.tuners.base import MethodSpec, Params, check_not_above, method_defaults


def peft_targets(targets: list[str]) -> list[str] | str:
    """PEFT's form: a list of names/suffixes, or one full-match regex when any target is a ``re:`` pattern."""
    if not any(t.startswith("re:") for t in targets):
        return list(targets)
    parts = [t[3:] if t.startswith("re:") else rf"(?:.*\.)?{t}" for t in targets]
    return "|".join(f"(?:{p})" for p in parts)


def build_peft_config(method: str, params: dict[str, Any], total_steps: int | None) -> Any:
    """The PEFT config object for ``method`` with validated cme-bench ``params``."""
    from peft import AdaLoraConfig, LoraConfig

    common = {
        "lora_alpha": params["alpha"],
        "lora_dropout": float(params["dropout"]),
        "target_modules": peft_targets(params["target_modules"]),
        "bias": "none",
        "task_type": "CAUSAL_LM",
    }
    if method in ("lora", "dora"):
        return LoraConfig(r=params["r"], use_dora=method == "dora", use_rslora=params["use_rslora"], **common)
    if total_steps is None or total_steps < 1:
        raise CmeError("adalora needs the real number of optimizer steps: pass total_steps to apply_adapter")
    if total_steps <= params["tinit"] + params["tfinal"]:
        raise CmeError(
            f"adalora: total_steps ({total_steps}) must exceed tinit + tfinal ({params['tinit']} + "
            f"{params['tfinal']}), or the rank budget never shrinks"
        )
    return AdaLoraConfig(
        init_r=params["init_r"],
        target_r=params["target_r"],
        tinit=params["tinit"],
        tfinal=params["tfinal"],
        deltaT=params["deltaT"],
        beta1=params["beta1"],
        beta2=params["beta2"],
        orth_reg_weight=params["orth_reg_weight"],
        total_step=total_steps,
        **common,
    )


def _check_adalora(p: dict[str, Any]) -> list[str]:
    problems = check_not_above(p, "target_r", "init_r")
    if not isinstance(p["orth_reg_weight"], (int, float)) or p["orth_reg_weight"] <= 0:
        problems.append(f"orth_reg_weight must be > 0 (PEFT refuses <= 0), got {p['orth_reg_weight']!r}")
    return problems


def _peft_spec(name: str, description: str, first: dict[str, Any], serving: str, **extra: Any) -> MethodSpec:
    """A PEFT-backed method: never routed, always mergeable, built by PEFT (see ``build_peft_config``)."""
    return MethodSpec(
        name=name,
        description=description,
        defaults=method_defaults(first),
        routed=False,
        mergeable=True,
        backend="peft",
        serving=serving,
        **extra,
    )


def _adalora_step(model: Any, step: int) -> None:
    """AdaLoRA's ``update_and_allocate``: after backward (it reads the gradients), before ``zero_grad``."""
    model.base_model.update_and_allocate(step)


def _adalora_budget(p: Params) -> dict[str, Any]:
    """Pruned ranks are masked, not removed: stored parameters stay at init_r."""
    return {"budget": {"stored_rank": p["init_r"], "target_rank": p["target_r"]}}


# LoRA and DoRA share PEFT's LoraConfig and its hyperparameters; DoRA only sets use_dora.
# vLLM serves LoRA by request; it rejects DoRA and does not know AdaLoRA, so those two are served merged.
LORA = _peft_spec(
    "lora",
    "LoRA through PEFT (mergeable; vLLM-servable)",
    {"r": 32, "use_rslora": False},
    "lora",
    paper=("LoRA: Low-Rank Adaptation of Large Language Models", "2106.09685"),
)
DORA = _peft_spec(
    "dora",
    "DoRA through PEFT (use_dora; mergeable into full weights)",
    {"r": 32, "use_rslora": False},
    "merged",
    paper=("DoRA: Weight-Decomposed Low-Rank Adaptation", "2402.09353"),
)

ADALORA = _peft_spec(
    "adalora",
    "AdaLoRA through PEFT (SVD-style budgeted rank; needs total_steps and step_hook; mergeable)",
    {
        "init_r": 12,
        "target_r": 8,
        "tinit": 0,
        "tfinal": 0,
        "deltaT": 1,
        "beta1": 0.85,
        "beta2": 0.85,
        "orth_reg_weight": 0.5,
    },
    serving="merged",
    check=_check_adalora,
    step_hook=_adalora_step,
    info=_adalora_budget,
    paper=("AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", "2303.10512"),
)
