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
labelled in ``adapter_info``. The normaliser's per-forward minimum is logged in ``stats`` on every forward that
records bookkeeping (``AdapterLayerMixin.recording``: autograd on), with the balance loss and the expert load; read it
with ``adapters.adapter_stats``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cme_bench.errors import CmeError
from cme_bench.tuners.base import (
    AdapterLayerMixin,
    MethodSpec,
    adapter_dtype,
    add_delta,
    describe,
    method_defaults,
    new_linear,
)
from cme_bench.tuners.tokens import real_tokens


class TeamLoraLayer(nn.Module, AdapterLayerMixin):
    """An ``nn.Linear`` with a TeamLoRA adapter: shared A, k sliced experts, Shapley router and interaction matrix."""

    method = "teamlora"

    def __init__(self, base: nn.Linear, params: dict[str, Any]) -> None:
        super().__init__()
        self.k = int(params["num_experts"])
        self.r_a = int(params["r_a"])
        self.r_b = self.r_a // self.k
        self.fused = params["forward"] == "fused"
        self.normalizer_eps = params["normalizer_eps"]
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

    # -- competition module ------------------------------------------------------------------------------------

    def expert_weights(self, x: torch.Tensor) -> torch.Tensor:
        """``w = k * phi (I + M') / sum(phi (I + M'))`` per token, shape ``[..., k]``."""
        phi = F.softmax(self.lora_route(x), dim=-1)
        adjusted = phi + phi @ self.lora_interaction_matrix  # einsum('bse,ef->bsf') in the release
        norm = adjusted.sum(dim=-1, keepdim=True)
        if norm.numel() and self.recording():
            # Kept as a tensor: converting here would force a device sync in every layer of every forward.
            self.stats["normalizer_min"] = norm.detach().min()
        if self.normalizer_eps is not None:
            # Labelled deviation: keep |norm| >= eps with its sign, so a drifting M' cannot divide by ~0.
            eps = float(self.normalizer_eps)
            norm = torch.where(norm >= 0, norm.clamp(min=eps), norm.clamp(max=-eps))
        return adjusted / norm * self.k

    def balance_loss(self, w: torch.Tensor) -> torch.Tensor:
        """``(1/k) sum_i (m_i - 1/k)^2`` on the k-scaled weights, averaged over the real tokens of the batch.

        The release averages over every batch x seq position, padding included; padding is masked here (the same
        value on an unpadded or packed batch), a labelled deviation.
        """
        m = real_tokens(w).reshape(-1, self.k).mean(dim=0)
        return ((m - 1.0 / self.k) ** 2).mean()

    # -- forward paths -----------------------------------------------------------------------------------------

    def delta_fused(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        z = self.dropout(self.lora_A(x) * self.scaling)
        return F.linear(w.repeat_interleave(self.r_b, dim=-1) * z, self.lora_B.weight)

    def delta_reference(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        z = self.lora_A(x) * self.scaling
        out = None
        for i, z_i in enumerate(torch.split(z, self.r_b, dim=-1)):
            b_i = self.lora_B.weight[:, i * self.r_b : (i + 1) * self.r_b]
            term = w[..., i : i + 1] * F.linear(self.dropout(z_i), b_i)
            out = term if out is None else out + term
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        xa = x.to(self.lora_A.weight.dtype)
        w = self.expert_weights(xa)
        delta = self.delta_fused(xa, w) if self.fused else self.delta_reference(xa, w)
        if self.recording():
            self.last_aux = self.balance_loss(w)
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
        module, _, leaf = name.partition(".lora_")
        leaf = "lora_" + leaf
        if leaf == "lora_A.weight":
            out[f"{module}.lora_A.weight"] = value
        elif leaf == "lora_route.fc.weight":
            out[f"{module}.lora_route.weight"] = value
        elif leaf == "lora_interaction_matrix.weight":
            out[f"{module}.lora_interaction_matrix"] = value
        elif leaf.startswith("lora_B") and leaf.endswith(".weight") and leaf[6:-7].isdigit():
            pieces.setdefault(module, {})[int(leaf[6:-7])] = value
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


def _check(p: dict[str, Any]) -> list[str]:
    problems = []
    if isinstance(p["r_a"], int) and isinstance(p["num_experts"], int) and p["r_a"] % p["num_experts"]:
        problems.append(f"r_a ({p['r_a']}) must be divisible by num_experts ({p['num_experts']}), as released")
    if p["normalizer_eps"] is not None and not (isinstance(p["normalizer_eps"], float) and p["normalizer_eps"] > 0):
        problems.append(f"normalizer_eps must be null or a positive float, got {p['normalizer_eps']!r}")
    return problems


METHOD = MethodSpec(
    name="teamlora",
    description="TeamLoRA: shared A (r_a), k sliced B experts, Shapley router + interaction matrix (routed)",
    defaults=method_defaults(
        {"r_a": 128, "num_experts": 4}, balance_loss_weight=0.0, forward="fused", normalizer_eps=None
    ),
    routed=True,
    mergeable=False,
    build_layer=TeamLoraLayer,
    aux_weight_key="balance_loss_weight",
    check=_check,
    notes=[
        "scaling alpha / r_B (per-expert rank), as released",
        "interaction matrix diagonal is 0 at init and trainable afterwards, as released",
    ],
)
