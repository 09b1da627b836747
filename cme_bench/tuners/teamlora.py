"""TeamLoRA (arXiv 2408.09856) as released in ``Lin-Tianwei/TeamLoRA:lora.py@8d8c102``.

Collaboration: a shared ``A`` of rank r_A whose scaled output ``z = (alpha / r_B) A x`` is split into k slices of
width r_B = r_A / k; expert i applies ``B_i`` to dropout(slice i). Competition: a per-token softmax router
``phi = softmax(W_r x)`` (no bias), an interaction matrix ``M'`` (k x k, off-diagonal U(-0.1, 0.1), diagonal 0 at init
and trainable afterwards, as released), and weights ``w = k * phi (I + M') / sum_j (phi (I + M'))_j``.

Two forward paths (``forward`` parameter):
- ``reference``: the released loop over experts (one ``B_i`` matmul per slice, dropout per slice);
- ``fused`` (default): ``B_cat (e(w) * dropout(z))`` with ``e`` = ``repeat_interleave(w, r_B)``: one matmul for A and
  one for the concatenated B, for any k and r_B. One dropout mask over z has the same distribution as k independent
  masks over its disjoint slices.

Storage: ``lora_B.weight`` is ``B_cat = [B_0 | ... | B_{k-1}]`` (d_out x r_A, columns in slice order), so the fused
path needs no concatenation and the loop path uses column views. The authors' ``lora_B{i}`` / ``lora_route.fc`` /
``lora_interaction_matrix.weight`` keys are mapped by ``import_authors_state``.

Deviation hook, off by default: ``normalizer_eps`` (a clamp on the normaliser's magnitude; the release has none),
labelled in ``adapter_info``. The math lives in functions of tensors (``shapley_weights``, ``mix``,
``delta_reference``, ``balance_loss``); the layer and the vLLM model (``METHOD.vllm``) both call them. The
normaliser's per-forward minimum is logged in ``stats`` on every forward that records bookkeeping
(``AdapterLayerMixin.recording``: autograd on), with the balance loss and the expert load; read it with
``adapters.adapter_stats``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cme_bench.errors import CmeError
from cme_bench.tuners.base import (
    AdapterLayerMixin,
    ForeignLayout,
    LinearServing,
    Params,
    Site,
    Tensors,
    adapter_dtype,
    add_delta,
    describe,
    identity,
    leaf,
    method_defaults,
    new_linear,
    per_expert,
    routed_method,
)
from cme_bench.tuners.tokens import real_tokens

# ----------------------------------------------------------------------------------------------------------------
# The math, as functions of tensors: the layer below and the vLLM model (``LinearServing``) both call these.


def shapley_weights(
    logits: torch.Tensor, interaction: torch.Tensor, k: int, eps: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w, norm)``: ``w = k * phi (I + M') / sum(phi (I + M'))`` per token (``[..., k]``) and the normaliser.

    ``eps`` (None as released) is the labelled deviation: keep ``|norm| >= eps`` with its sign, so a drifting M'
    cannot divide by ~0.
    """
    phi = F.softmax(logits, dim=-1)
    adjusted = phi + phi @ interaction  # einsum('bse,ef->bsf') in the release
    norm = adjusted.sum(dim=-1, keepdim=True)
    guarded = norm
    if eps is not None:
        guarded = torch.where(norm >= 0, norm.clamp(min=eps), norm.clamp(max=-eps))
    return adjusted / guarded * k, norm


def _sizes(p: Params) -> tuple[int, int, float]:
    """``(k, r_B, scaling)``; scaling is alpha / r_B, the per-expert rank, as released."""
    k = int(p["num_experts"])
    r_b = int(p["r_a"]) // k
    return k, r_b, float(p["alpha"]) / r_b


def mix(
    a_out: torch.Tensor, logits: torch.Tensor, t: Tensors, p: Params, drop: Callable = identity
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Fused form's middle: ``u = e(w) * drop(s A x)`` with ``e = repeat_interleave(., r_B)``; delta = ``B_cat u``.

    One dropout mask over z has the same distribution as k independent masks over its disjoint slices.
    """
    k, r_b, scaling = _sizes(p)
    w, norm = shapley_weights(logits, t["interaction"], k, p.get("normalizer_eps"))
    return per_expert(w, r_b, drop(a_out * scaling)), (w, norm)


def delta_reference(
    a_out: torch.Tensor, w: torch.Tensor, b_cat: torch.Tensor, p: Params, drop: Callable = identity
) -> torch.Tensor:
    """The released loop: ``sum_i w_i B_i drop(z_i)`` over the k slices ``z_i`` of ``z = s A x``."""
    _, r_b, scaling = _sizes(p)
    z = a_out * scaling
    out = None
    for i, z_i in enumerate(torch.split(z, r_b, dim=-1)):
        term = w[..., i : i + 1] * F.linear(drop(z_i), b_cat[:, i * r_b : (i + 1) * r_b])
        out = term if out is None else out + term
    return out


def balance_loss(w: torch.Tensor, k: int) -> torch.Tensor:
    """``(1/k) sum_i (m_i - 1/k)^2`` on the k-scaled weights, averaged over the real tokens of the batch.

    The release averages over every batch x seq position, padding included; padding is masked here (the same value
    on an unpadded or packed batch), a labelled deviation.
    """
    m = real_tokens(w).reshape(-1, k).mean(dim=0)
    return ((m - 1.0 / k) ** 2).mean()


def pack(leaves: Tensors, p: Params) -> dict[str, torch.Tensor]:
    return {
        "A": leaf(leaves, "lora_A.weight"),
        "route": leaf(leaves, "lora_route.weight"),
        "B": leaf(leaves, "lora_B.weight"),
        "interaction": leaf(leaves, "lora_interaction_matrix"),
    }


class TeamLoraLayer(nn.Module, AdapterLayerMixin):
    """An ``nn.Linear`` with a TeamLoRA adapter: shared A, k sliced experts, Shapley router and interaction matrix."""

    method = "teamlora"

    def __init__(self, base: nn.Linear, params: dict[str, Any], site: Site | None = None) -> None:
        super().__init__()
        self.k, self.r_b, _ = _sizes(params)
        self.r_a = int(params["r_a"])
        self.aux_weight = float(params["balance_loss_weight"])
        self.init_adapter(base, params, self.r_b)  # scaling alpha / r_B: the per-expert rank, as released
        self.lora_A = new_linear(base.in_features, self.r_a, base, "kaiming")
        self.lora_B = new_linear(self.r_a, base.out_features, base, "zeros")
        self.lora_route = new_linear(base.in_features, self.k, base, "kaiming")
        matrix = torch.empty(self.k, self.k, device=base.weight.device, dtype=adapter_dtype(base))
        self.lora_interaction_matrix = nn.Parameter(matrix)
        self.reset_interaction()

    def reset_interaction(self) -> None:
        """Off-diagonal U(-0.1, 0.1), diagonal 0 (released ``nn.Embedding`` init + ``fill_diagonal_(0)``)."""
        if self.lora_interaction_matrix.device.type == "meta":
            return
        with torch.no_grad():
            self.lora_interaction_matrix.uniform_(-0.1, 0.1).fill_diagonal_(0)

    def extra_repr(self) -> str:
        return describe(self, r_a=self.r_a, k=self.k, r_b=self.r_b, fused=self.fused)

    def expert_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The per-token expert weights ``w`` (``[..., k]``) for input ``x``."""
        logits = self.lora_route(x)
        return shapley_weights(logits, self.lora_interaction_matrix, self.k, self.params.get("normalizer_eps"))[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        xa = x.to(self.lora_A.weight.dtype)
        a_out, logits = self.lora_A(xa), self.lora_route(xa)
        if self.fused:
            u, (w, norm) = mix(a_out, logits, {"interaction": self.lora_interaction_matrix}, self.params, self.dropout)
            delta = F.linear(u, self.lora_B.weight)
        else:
            eps = self.params.get("normalizer_eps")
            w, norm = shapley_weights(logits, self.lora_interaction_matrix, self.k, eps)
            delta = delta_reference(a_out, w, self.lora_B.weight, self.params, self.dropout)
        if self.recording():
            if norm.numel():
                # Kept as a tensor: converting here would force a device sync in every layer of every forward.
                self.stats["normalizer_min"] = norm.detach().min()
            self.last_aux = balance_loss(w, self.k)
            # L_bal never drops below (1 - 1/k)^2 because sum_i w_i = k; the excess is the load diagnostic.
            self.stats["balance_excess"] = self.last_aux.detach() - (1 - 1 / self.k) ** 2
            self.record_load(w / self.k)
        return add_delta(result, delta)


def import_authors_state(state: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Map the released layout (``lora_B{i}.weight``, ``lora_route.fc.weight``, ``lora_interaction_matrix.weight``,
    keys prefixed ``base_model.model.``) to ours. Any key that is not one of those four kinds is an error.
    """
    out: dict[str, torch.Tensor] = {}
    pieces: dict[str, dict[int, torch.Tensor]] = {}
    leftovers = []
    for key, value in state.items():
        name = key.removeprefix("base_model.model.")
        module, _, rest = name.partition(".lora_")
        rest = "lora_" + rest
        if rest == "lora_A.weight":
            out[f"{module}.lora_A.weight"] = value
        elif rest == "lora_route.fc.weight":
            out[f"{module}.lora_route.weight"] = value
        elif rest == "lora_interaction_matrix.weight":
            out[f"{module}.lora_interaction_matrix"] = value
        elif rest.startswith("lora_B") and rest.endswith(".weight") and rest[6:-7].isdigit():
            pieces.setdefault(module, {})[int(rest[6:-7])] = value
        else:
            leftovers.append(key)
    if leftovers:
        raise_leftovers(leftovers)
    for module, parts in pieces.items():
        if sorted(parts) != list(range(k)):
            raise CmeError(f"{module}: expected lora_B0..lora_B{k - 1}, found lora_B{sorted(parts)}")
        out[f"{module}.lora_B.weight"] = torch.cat([parts[i] for i in range(k)], dim=1)
    return out


def raise_leftovers(keys: list[str]) -> None:
    shown = ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
    raise CmeError(f"unexpected keys in the TeamLoRA authors' checkpoint: {shown}")


def _authors_params(config: Params) -> dict[str, Any]:
    """The release's PEFT-style config (``r`` = r_A, ``lora_nums`` = k) as our hyperparameters."""
    targets = config.get("target_modules") or []
    return {
        "r_a": int(config["r"]),
        "num_experts": int(config["lora_nums"]),
        "alpha": config.get("lora_alpha") or 1,
        "dropout": float(config.get("lora_dropout") or 0.0),
        "target_modules": ["re:" + targets] if isinstance(targets, str) else list(targets),
    }


AUTHORS_PREFIX = "base_model.model."


def export_authors(state: Tensors, fields: Params) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The exact inverse of ``import_authors_state`` + ``_authors_params``: ``B_cat`` split back into its k column
    blocks, keys prefixed ``base_model.model.``, and the release's PEFT-0.3-style config (``r`` = r_A,
    ``lora_nums`` = k). The normaliser clamp is a cme-bench deviation the release cannot express: refused."""
    params = fields["params"]
    if params.get("normalizer_eps") is not None:
        raise CmeError("normalizer_eps is a cme-bench deviation the authors' layout cannot express; not exported")
    k, r_a = int(params["num_experts"]), int(params["r_a"])
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, _, leaf = key.partition(".lora_")
        prefix = AUTHORS_PREFIX + module
        if leaf == "A.weight":
            tensors[f"{prefix}.lora_A.weight"] = value
        elif leaf == "B.weight":  # B_cat = [B_0 | ... | B_{k-1}], columns in slice order
            for i, block in enumerate(torch.split(value, r_a // k, dim=1)):
                tensors[f"{prefix}.lora_B{i}.weight"] = block.contiguous()
        elif leaf == "route.weight":
            tensors[f"{prefix}.lora_route.fc.weight"] = value
        elif leaf == "interaction_matrix":
            tensors[f"{prefix}.lora_interaction_matrix.weight"] = value
        else:
            raise CmeError(f"unexpected TeamLoRA tensor {key!r}")
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": fields.get("base_model_name_or_path"),
        "r": r_a,  # the total rank r_A, as in the release; r_B = r / lora_nums
        "lora_nums": k,
        "lora_alpha": params["alpha"],
        "lora_dropout": params["dropout"],
        # The release's balance-loss fields (inherited from LoRAMoE); its code applies no weight.
        "blc_alpha": 0.0,
        "blc_weight": params.get("balance_loss_weight", 0.0),
        "target_modules": list(fields["target_modules"]),  # exact module paths: matched by suffix, as in PEFT
        "merge_weights": False,
        "fan_in_fan_out": False,
        "bias": "none",
        "modules_to_save": None,
        "inference_mode": True,
    }
    return tensors, config


AUTHORS_LAYOUT = ForeignLayout(
    name="teamlora-authors",
    detect=lambda config: "peft_type" in config and bool(config.get("lora_nums")),
    params=_authors_params,
    state=lambda tensors, params: import_authors_state(dict(tensors), int(params["num_experts"])),
    export=export_authors,
)


def _deviations(p: Params) -> list[str]:
    if p.get("normalizer_eps") is None:
        return []
    return [f"teamlora normaliser clamped to |sum| >= {p['normalizer_eps']} (not in the release)"]


def _check(p: dict[str, Any]) -> list[str]:
    problems = []
    if isinstance(p["r_a"], int) and isinstance(p["num_experts"], int) and p["r_a"] % p["num_experts"]:
        problems.append(f"r_a ({p['r_a']}) must be divisible by num_experts ({p['num_experts']}), as released")
    if p["normalizer_eps"] is not None and not (isinstance(p["normalizer_eps"], float) and p["normalizer_eps"] > 0):
        problems.append(f"normalizer_eps must be null or a positive float, got {p['normalizer_eps']!r}")
    return problems


METHOD = routed_method(
    name="teamlora",
    paper=("TeamLoRA: Boosting Low-Rank Adaptation with Expert Collaboration and Competition", "2408.09856"),
    description="TeamLoRA: shared A (r_a), k sliced B experts, Shapley router + interaction matrix (routed)",
    defaults=method_defaults(
        {"r_a": 128, "num_experts": 4}, balance_loss_weight=0.0, forward="fused", normalizer_eps=None
    ),
    build_layer=TeamLoraLayer,
    aux_weight_key="balance_loss_weight",
    check=_check,
    vllm=LinearServing(pack=pack, mix=mix),
    deviations=_deviations,
    rank=lambda p: p["r_a"] // p["num_experts"],
    resize=lambda p, k, rank: {"num_experts": k, "r_a": k * rank},
    layouts=(AUTHORS_LAYOUT,),
    notes=[
        "scaling alpha / r_B (per-expert rank), as released",
        "interaction matrix diagonal is 0 at init and trainable afterwards, as released",
    ],
)
