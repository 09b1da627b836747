"""Shared pieces of the tuners: the method description, default and validation helpers, target matching, layer
injection, adapter-weight construction, and the small per-layer bookkeeping that native layers share.

Tuners share helper *functions* and one small mixin, not a deep class hierarchy (docs/style.md habit 7). Every
trainable or saved adapter tensor is named with a ``lora_`` prefix, as in PEFT and the TeamLoRA release, so
``adapters.adapter_state`` can pick them out of a model's state dict by name alone.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cme_bench.errors import CmeError, ConfigError
from cme_bench.tuners.tokens import real_tokens

FFN_TARGETS = ["gate_proj", "up_proj", "down_proj"]
FORWARD_MODES = ("reference", "fused")


@dataclass(frozen=True)
class MethodSpec:
    """What cme-bench knows about one adapter method.

    Args:
        name: registry key = preset ``method`` = module name = test id.
        description: one line for ``cme-bench adapters list``.
        defaults: every accepted hyperparameter with its default; a preset may set only these keys.
        routed: whether the adapter output depends on per-token routing weights.
        mergeable: whether the adapter folds exactly into the base weights.
        backend: ``"native"`` (layers in this package) or ``"peft"`` (built through PEFT itself).
        build_layer: for native methods, ``(module, params) -> wrapper module`` injected in place of ``module``.
        scope: ``"linear"`` (targets are ``nn.Linear``) or ``"mlp"`` (targets are FFN blocks, MixLoRA).
        aux_weight_key: the hyperparameter holding the auxiliary-loss weight, if the method has one.
        check: extra validation returning a list of problems.
    """

    name: str
    description: str
    defaults: dict[str, Any]
    routed: bool
    mergeable: bool
    backend: str = "native"
    build_layer: Callable[[nn.Module, dict[str, Any]], nn.Module] | None = None
    scope: str = "linear"
    aux_weight_key: str | None = None
    check: Callable[[dict[str, Any]], list[str]] | None = None
    notes: list[str] = field(default_factory=list)

    def validate(self, params: dict[str, Any], where: str = "adapter preset") -> dict[str, Any]:
        """Defaults overlaid with ``params``; every problem (unknown key, bad value) is reported at once."""
        problems = [f"unknown parameter {k!r} for method {self.name!r}" for k in params if k not in self.defaults]
        merged = {**self.defaults, **params}
        problems += _common_checks(merged)
        if self.check is not None:
            problems += self.check(merged)
        if problems:
            raise ConfigError(problems, where=where)
        merged["target_modules"] = normalise_targets(merged.get("target_modules"))
        return merged


def method_defaults(first: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A method's defaults in preset key order: its own leading keys (ranks, expert counts), the shared alpha 32 /
    dropout 0.05 / FFN targets, then ``extra``.

    Every call builds a fresh ``target_modules`` list, so no two methods share one mutable default.
    """
    return {**first, "alpha": 32, "dropout": 0.05, "target_modules": list(FFN_TARGETS), **extra}


def check_not_above(p: dict[str, Any], key: str, limit: str) -> list[str]:
    """``p[key] <= p[limit]`` for two integer parameters (a non-integer is reported by the common checks instead)."""
    if isinstance(p[key], int) and isinstance(p[limit], int) and p[key] > p[limit]:
        return [f"{key} ({p[key]}) must not exceed {limit} ({p[limit]})"]
    return []


def check_non_negative(p: dict[str, Any], key: str) -> list[str]:
    """``p[key]`` is a number >= 0 (a loss weight)."""
    if not isinstance(p[key], (int, float)) or p[key] < 0:
        return [f"{key} must be a number >= 0, got {p[key]!r}"]
    return []


def _common_checks(p: dict[str, Any]) -> list[str]:
    problems = []
    for key in ("r", "r_a", "num_experts", "init_r", "target_r", "num_adapters", "activate_r", "top_k"):
        if key in p and (not isinstance(p[key], int) or isinstance(p[key], bool) or p[key] < 1):
            problems.append(f"{key} must be a positive integer, got {p[key]!r}")
    if "dropout" in p and not (isinstance(p["dropout"], (int, float)) and 0.0 <= p["dropout"] < 1.0):
        problems.append(f"dropout must be in [0, 1), got {p['dropout']!r}")
    if "alpha" in p and not isinstance(p["alpha"], (int, float)):
        problems.append(f"alpha must be a number, got {p['alpha']!r}")
    if "forward" in p and p["forward"] not in FORWARD_MODES:
        problems.append(f"forward must be one of {list(FORWARD_MODES)}, got {p['forward']!r}")
    return problems


# ----------------------------------------------------------------------------------------------------------------
# Targets


def normalise_targets(targets: str | Iterable[str] | None) -> list[str]:
    """Targets as a list: plain entries match a module name or dotted suffix, ``re:`` entries are full-match regex."""
    if targets is None:
        return list(FFN_TARGETS)
    if isinstance(targets, str):
        return [targets]
    return [str(t) for t in targets]


def target_matches(path: str, target: str) -> bool:
    if target.startswith("re:"):
        return re.fullmatch(target[3:], path) is not None
    return path == target or path.endswith("." + target)


def find_targets(model: nn.Module, targets: list[str], kind: type[nn.Module] | tuple = nn.Linear) -> list[str]:
    """Module paths in ``model`` matching ``targets`` and of type ``kind``; a target that matches nothing is an error.

    Matching nothing silently would train nothing, so every target must match at least one module of the right type.
    """
    found: list[str] = []
    unmatched = set(targets)
    for path, module in model.named_modules():
        hits = [t for t in targets if target_matches(path, t)]
        if hits and isinstance(module, kind):
            found.append(path)
            unmatched.difference_update(hits)
    if unmatched:
        names = sorted({p.rsplit(".", 1)[-1] for p, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise CmeError(
            f"target modules {sorted(unmatched)} match no {getattr(kind, '__name__', 'suitable')} module in "
            f"{type(model).__name__}; linear layer names there: {', '.join(names) or '(none)'}"
        )
    return found


def inject(model: nn.Module, paths: list[str], build: Callable[[nn.Module], nn.Module]) -> None:
    """Replace each module at ``paths`` by ``build(module)`` in its parent, in place."""
    for path in paths:
        parent_path, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, child, build(getattr(parent, child)))


# ----------------------------------------------------------------------------------------------------------------
# Parameters and initialisation


def adapter_dtype(base: nn.Linear) -> torch.dtype:
    """Adapters train in fp32 on a bf16/fp16 base (PEFT's autocast_adapter_dtype does the same); fp64 stays fp64."""
    dtype = base.weight.dtype
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def new_linear(d_in: int, d_out: int, like: nn.Linear, init: str) -> nn.Linear:
    """A bias-free ``nn.Linear`` on ``like`'s device; init: ``"kaiming"`` (a=sqrt 5), ``"zeros"``, ``"normal:STD"``."""
    layer = nn.Linear(d_in, d_out, bias=False, device=like.weight.device, dtype=adapter_dtype(like))
    init_weight(layer.weight, init)
    return layer


def new_linears(n: int, d_in: int, d_out: int, like: nn.Linear, init: str) -> nn.ModuleList:
    """``n`` independent ``new_linear`` factors (one per expert), initialised in index order."""
    return nn.ModuleList(new_linear(d_in, d_out, like, init) for _ in range(n))


def init_weight(weight: torch.Tensor, init: str) -> None:
    if weight.device.type == "meta":
        return
    with torch.no_grad():
        if init == "kaiming":
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        elif init == "zeros":
            nn.init.zeros_(weight)
        elif init.startswith("normal:"):
            nn.init.normal_(weight, std=float(init.split(":", 1)[1]))
        else:
            raise ValueError(f"unknown init {init!r}")


def make_dropout(p: float) -> nn.Module:
    return nn.Dropout(p) if p > 0 else nn.Identity()


# ----------------------------------------------------------------------------------------------------------------
# Per-layer bookkeeping shared by routed layers


class AdapterLayerMixin:
    """Bookkeeping every native adapter layer carries.

    ``last_aux`` holds the unweighted auxiliary loss of the last forward (a tensor in the graph) and ``aux_weight``
    its configured weight; ``last_load`` the mean routing weight per expert of the last forward (normalised to sum 1,
    detached); ``load_sum``/``load_count`` accumulate it until ``reset_load``; ``stats`` holds scalar diagnostics as
    0-d tensors (converted only when read, so a forward never waits for the device). A layer's ``__init__`` sets
    all of this, with its base layer, scaling and dropout, through ``init_adapter``.

    Bookkeeping is training state: every routed layer records it only when ``recording()`` is true, i.e. when
    autograd records the forward (the auxiliary loss matters only to a backward pass; the loads and stats describe
    the forwards training took). Under ``torch.no_grad`` / ``torch.inference_mode`` (generation, lm-eval, the
    profiler's decode timing) a forward records nothing and the values of the last recorded forward stay. Nothing
    reads loads gathered during evaluation: the runner stores the training load before it evaluates.
    """

    method: str = ""
    aux_weight: float = 0.0

    def init_bookkeeping(self) -> None:
        self.last_aux: torch.Tensor | None = None
        self.last_load: torch.Tensor | None = None
        self.load_sum: torch.Tensor | None = None
        self.load_count = 0
        self.stats: dict[str, torch.Tensor] = {}

    @staticmethod
    def recording() -> bool:
        """Whether this forward keeps the bookkeeping (aux loss, load, stats): only while autograd records it."""
        return torch.is_grad_enabled()

    def record_load(self, weights: torch.Tensor) -> None:
        """Record routing weights ``[..., E]`` (already normalised so each token's weights sum to 1)."""
        mean = real_tokens(weights.detach()).float().mean(0)  # padding is no load
        self.last_load = mean
        self.load_sum = mean if self.load_sum is None else self.load_sum + mean
        self.load_count += 1

    def dropout(self, x: torch.Tensor) -> torch.Tensor:
        """``lora_dropout(x)``, without the module call where it is the identity (an ``nn.Dropout`` in eval mode)."""
        return self.lora_dropout(x) if self.lora_dropout.training else x

    def reset_load(self) -> None:
        self.load_sum, self.load_count = None, 0

    def init_adapter(self, base: nn.Module, params: dict[str, Any], scale_rank: int) -> None:
        """The start every native layer shares: bookkeeping, the frozen ``base_layer``, ``scaling = alpha /
        scale_rank`` and ``lora_dropout``.

        Call it before creating any ``lora_*`` weight: the submodule order (base, dropout, adapter weights) fixes the
        parameter order and, with a seed, which random numbers each weight's init draws.
        """
        self.init_bookkeeping()
        self.base_layer = base
        self.scaling = float(params["alpha"]) / scale_rank
        self.lora_dropout = make_dropout(float(params["dropout"]))


def base_forward(base: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return base(x)


def softmax_route(router: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """Dense per-token softmax routing weights ``[..., E]``, computed in fp32 as the released routers do."""
    return F.softmax(router(x).float(), dim=-1)


def mix_experts(w: torch.Tensor, outputs: Iterable[torch.Tensor]) -> torch.Tensor:
    """``sum_i w[..., i] * y_i`` over expert outputs ``y_i``, accumulated in expert order like the released loops.

    ``outputs`` may be a generator: each expert's output (and its dropout mask) is then computed in turn, in the
    same order as the loop it replaces.
    """
    out = None
    for i, y in enumerate(outputs):
        term = w[..., i : i + 1].to(y.dtype) * y
        out = term if out is None else out + term
    return out


def add_delta(result: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Add an adapter delta computed in the adapter dtype to the base output, keeping the base dtype."""
    return result + delta.to(result.dtype)


def describe(layer: nn.Module, **extra: Any) -> str:
    base = layer.base_layer
    dims = f"in_features={base.in_features}, out_features={base.out_features}" if hasattr(base, "in_features") else ""
    return ", ".join([dims] + [f"{k}={v}" for k, v in extra.items()])
