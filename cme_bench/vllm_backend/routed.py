"""Inference-only math of the token-routed adapters, on plain tensors, for serving them inside vLLM.

vLLM has no mixture-of-LoRA support (one ``LoRARequest`` per request, see shared/docs/ecosystem.md (b)), so routed
adapters are served by a model class of our own (``model.py``) that adds these deltas to the outputs of vLLM's
projections. Nothing here imports vLLM: the same code is unit-tested against the training layers in
``cme_bench/tuners/`` on CPU, and the vLLM parity tests then only have to check the wiring.

Each delta mirrors the *fused* forward of the matching tuner, in the same operation order, so that greedy decoding
agrees token for token (dropout is off at inference):

- ``teamlora``  (tuners/teamlora.py): ``B_cat (repeat_interleave(w, r_B) * s A x)`` with the Shapley router and the
  interaction matrix, ``w = k phi (I + M') / sum(phi (I + M'))``; teamlora.md section 3.
- ``moelora`` / ``loramoe`` (tuners/moelora.py): ``B_cat (repeat_interleave(softmax(W_r x), r) * s A_cat x)``.
- ``hydralora`` (tuners/hydralora.py): ``B_cat ((w outer s A x).flatten())``, head-major.
- ``smora`` (tuners/smora.py): ``s B (g(x) * A x)`` with sigmoid top-``activate_r`` gates plus the frozen biases.
- ``mixlora`` (tuners/mixlora.py): a whole FFN block, ``down(sum_i g_i h_i) + sum_i g_i s B_down,i A_down,i h_i`` with
  ``h_i = silu(gate + LoRA_gate,i) * (up + LoRA_up,i)`` over each token's top-k experts.

Layout of the adapter file (``adapter_model.safetensors``, keys ``<module path>.<leaf>``) is the tuners' state dict;
``group_by_module`` splits it by module path. All routed math runs in the adapter dtype (fp32 for a bf16 base, as in
training: ``tuners.base.adapter_dtype``) and the delta is cast back to the base output dtype.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cme_bench.errors import CmeError
from cme_bench.tuners.mixlora import mix_experts_ffn

ROUTED_METHODS = ("teamlora", "moelora", "loramoe", "hydralora", "smora", "mixlora")
# Methods whose update is a per-linear delta (``RoutedDelta``); MixLoRA mixes whole FFN blocks (``MixLoraFFN``).
LINEAR_METHODS = ("teamlora", "moelora", "loramoe", "hydralora", "smora")
BLOCK_METHODS = ("mixlora",)
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# ``...layers.<i>.<mlp|self_attn>.<name>_proj.<leaf>``: tolerant of any prefix (``model.``, ``base_model.model.``).
_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(mlp|self_attn)\.([A-Za-z0-9_]+)\.(lora_.+)$")
# MixLoRA's tensors sit on the FFN block itself: ``...layers.<i>.mlp.lora_<proj>_<A|B>.<e>.weight``, ``lora_route``.
_BLOCK_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.(lora_.+)$")


@dataclass(frozen=True)
class RoutedAdapter:
    """A routed adapter folder: its method, hyperparameters and where its tensors live."""

    path: Path
    method: str
    params: dict[str, Any]
    target_modules: list[str]

    @property
    def weights_file(self) -> Path:
        return self.path / ADAPTER_WEIGHTS


def read_adapter_config(path: Path) -> dict[str, Any]:
    cfg_file = Path(path) / ADAPTER_CONFIG
    if not cfg_file.is_file():
        raise CmeError(f"{path} is not an adapter folder: {ADAPTER_CONFIG} is missing")
    try:
        return json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise CmeError(f"{cfg_file} is not valid JSON: {exc}") from exc


def load_routed_adapter(path: str | Path) -> RoutedAdapter:
    path = Path(path)
    cfg = read_adapter_config(path)
    method = cfg.get("method")
    if cfg.get("format") != "cme-bench-adapter" or method not in ROUTED_METHODS:
        raise CmeError(f"{path} is not a routed cme-bench adapter (method {method!r}; routed: {list(ROUTED_METHODS)})")
    if not (path / ADAPTER_WEIGHTS).is_file():
        raise CmeError(f"{path}: {ADAPTER_WEIGHTS} is missing")
    return RoutedAdapter(path, method, dict(cfg.get("params") or {}), list(cfg.get("target_modules") or []))


def _group(tensors: Mapping[str, torch.Tensor], pattern: re.Pattern[str], where: str) -> dict[Any, dict[str, Any]]:
    """Tensors grouped by the leading match groups of ``pattern``, keyed inside by the last; unknown keys fail.

    An unrecognised key means the adapter would be served only partly, which is the silent failure we exist to avoid.
    """
    out: dict[Any, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in tensors.items():
        m = pattern.search(key)
        if m is None:
            unknown.append(key)
            continue
        *outer, inner = m.groups()
        group = (int(outer[0]), *outer[1:]) if len(outer) > 1 else int(outer[0])
        out.setdefault(group, {})[inner] = value
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise CmeError(f"adapter tensors outside {where} cannot be served by vLLM: {shown}")
    return out


def group_by_module(tensors: Mapping[str, torch.Tensor]) -> dict[tuple[int, str, str], dict[str, torch.Tensor]]:
    """``{(layer, "mlp"|"self_attn", "gate_proj"): {"lora_A.weight": t, ...}}``; any other key is an error."""
    return _group(tensors, _KEY, "decoder-layer projections")


def group_by_block(tensors: Mapping[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    """``{layer: {"lora_gate_A.0.weight": t, ..., "lora_route.weight": t}}`` for FFN-block adapters (MixLoRA)."""
    return _group(tensors, _BLOCK_KEY, "decoder-layer FFN blocks")


def _stack(leaves: Mapping[str, torch.Tensor], stem: str, dim: int) -> torch.Tensor:
    """Concatenate ``<stem>.0.weight``, ``<stem>.1.weight``, ... (ModuleList layout) along ``dim``."""
    parts = {}
    for leaf, t in leaves.items():
        m = re.fullmatch(re.escape(stem) + r"\.(\d+)\.weight", leaf)
        if m:
            parts[int(m.group(1))] = t
    if not parts or sorted(parts) != list(range(len(parts))):
        raise CmeError(f"expected {stem}.0.weight, {stem}.1.weight, ... in the adapter, found {sorted(leaves)}")
    return torch.cat([parts[i] for i in range(len(parts))], dim=dim)


def _leaf(leaves: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in leaves:
        raise CmeError(f"adapter tensor {name!r} missing; found {sorted(leaves)}")
    return leaves[name]


class RoutedDelta(nn.Module):
    """The routed update of one projection: ``forward(x) -> delta`` with ``x`` ``[tokens, d_in]``.

    Tensors are buffers, not parameters: vLLM checks that every *parameter* came from the base checkpoint, and the
    adapter tensors are loaded from the adapter file instead (``load``). Shapes are fixed at construction from the
    adapter config so the buffers can be allocated on whatever device vLLM builds the model on.
    """

    def __init__(self, method: str, params: Mapping[str, Any], d_in: int, d_out: int, dtype: torch.dtype) -> None:
        super().__init__()
        if method not in LINEAR_METHODS:
            raise CmeError(f"routed method {method!r} has no per-linear vLLM delta (available: {LINEAR_METHODS})")
        self.method = method
        self.d_in, self.d_out = d_in, d_out
        p = dict(params)
        if method == "teamlora":
            self.k = int(p["num_experts"])
            self.rank = int(p["r_a"])
            self.r_b = self.rank // self.k
            self.scaling = float(p["alpha"]) / self.r_b
            eps = p.get("normalizer_eps")
            self.normalizer_eps = None if eps is None else float(eps)
            n_route = self.k
        elif method in ("moelora", "loramoe"):
            self.k = int(p["num_experts"])
            self.r_b = int(p["r"])
            self.rank = self.k * self.r_b
            self.scaling = float(p["alpha"]) / self.r_b
            n_route = self.k
        elif method == "hydralora":
            self.k = int(p["num_experts"])
            self.r_b = int(p["r"])
            self.rank = self.r_b  # shared A
            self.scaling = float(p["alpha"]) / self.r_b
            n_route = self.k
        else:  # smora
            self.rank = int(p["r"])
            self.k = int(p["activate_r"])
            self.scaling = float(p["alpha"]) / self.k
            n_route = self.rank
        b_cols = self.k * self.r_b if method == "hydralora" else self.rank
        # One stacked input matrix [A; router] so x is read by a single matmul.
        self.register_buffer("w_in", torch.empty(self.rank + n_route, d_in, dtype=dtype), persistent=False)
        self.register_buffer("w_out", torch.empty(d_out, b_cols, dtype=dtype), persistent=False)
        if method == "teamlora":
            self.register_buffer("interaction", torch.empty(self.k, self.k, dtype=dtype), persistent=False)
        if method == "smora":
            self.register_buffer("biases", torch.empty(self.rank, dtype=torch.float32), persistent=False)
        # ``x @ w_in^T`` and ``u @ w_out^T``; ``use_gemms`` swaps in prepacked kernels once the weights are loaded.
        self._gemm_in: Callable[[torch.Tensor], torch.Tensor] = lambda x: F.linear(x, self.w_in)
        self._gemm_out: Callable[[torch.Tensor], torch.Tensor] = lambda u: F.linear(u, self.w_out)

    def use_gemms(self, make: Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]) -> None:
        """Compute the two matmuls with ``make(weight)`` (a ``[out, in]`` weight -> ``x -> x @ weight^T``).

        vLLM's CPU linears run prepacked oneDNN GEMMs, about 3x faster than ``F.linear`` at these shapes; the vLLM
        model (``model.py``) hands the same kernels to its deltas after loading. Call it after ``load``: the kernels
        keep their own packed copy of the weights.
        """
        self._gemm_in, self._gemm_out = make(self.w_in), make(self.w_out)

    # -- loading ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def load(self, leaves: Mapping[str, torch.Tensor]) -> None:
        m = self.method
        if m == "teamlora":
            a, b = _leaf(leaves, "lora_A.weight"), _leaf(leaves, "lora_B.weight")
            route = _leaf(leaves, "lora_route.weight")
            self.interaction.copy_(_leaf(leaves, "lora_interaction_matrix"))
        elif m in ("moelora", "loramoe"):
            a, b = _stack(leaves, "lora_A", 0), _stack(leaves, "lora_B", 1)
            route = _leaf(leaves, "lora_route.weight")
        elif m == "hydralora":
            a, b = _leaf(leaves, "lora_A.weight"), _stack(leaves, "lora_B", 1)
            route = _leaf(leaves, "lora_route.weight")
        else:
            a, b = _leaf(leaves, "lora_A.weight"), _leaf(leaves, "lora_B.weight")
            route = _leaf(leaves, "lora_router.weight")
            # The bias buffer is frozen at inference; an adapter saved without it had never updated it (zeros).
            self.biases.copy_(leaves.get("lora_biases", torch.zeros(self.rank)))
        w_in = torch.cat([a, route], dim=0)
        if w_in.shape != self.w_in.shape or b.shape != self.w_out.shape:
            raise CmeError(
                f"{m} adapter shapes A+router {tuple(w_in.shape)}, B {tuple(b.shape)} do not match the config "
                f"(expected {tuple(self.w_in.shape)} and {tuple(self.w_out.shape)})"
            )
        self.w_in.copy_(w_in)
        self.w_out.copy_(b)

    # -- forward ------------------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xa = x.to(self.w_in.dtype)
        h = self._gemm_in(xa)
        a_out, logits = h[..., : self.rank], h[..., self.rank :]
        m = self.method
        if m == "teamlora":
            phi = F.softmax(logits, dim=-1)
            adjusted = phi + phi @ self.interaction
            norm = adjusted.sum(dim=-1, keepdim=True)
            if self.normalizer_eps is not None:  # the tuner's labelled deviation, mirrored
                eps = self.normalizer_eps
                norm = torch.where(norm >= 0, norm.clamp(min=eps), norm.clamp(max=-eps))
            w = adjusted / norm * self.k
            z = a_out * self.scaling
            delta = self._gemm_out(w.repeat_interleave(self.r_b, dim=-1) * z)
        elif m in ("moelora", "loramoe"):
            w = F.softmax(logits.float(), dim=-1)
            z = a_out * self.scaling
            delta = self._gemm_out(w.to(z.dtype).repeat_interleave(self.r_b, dim=-1) * z)
        elif m == "hydralora":
            w = F.softmax(logits.float(), dim=-1)
            z = a_out * self.scaling
            u = (w.to(z.dtype).unsqueeze(-1) * z.unsqueeze(-2)).flatten(-2)
            delta = self._gemm_out(u)
        else:
            scores = torch.sigmoid(logits).float() + self.biases
            top, idx = scores.topk(self.k, dim=-1)
            sparse = torch.zeros_like(scores).scatter(-1, idx, top)
            g = sparse / sparse.sum(dim=-1, keepdim=True) * self.k
            delta = self._gemm_out(g.to(a_out.dtype) * a_out) * self.scaling
        return delta.to(x.dtype)


class PackedDelta(nn.Module):
    """Deltas for the slices of one fused vLLM projection (``qkv_proj``: q, k, v; ``gate_up_proj``: gate, up).

    Used as a forward hook on the vLLM linear: the hook adds ``cat(delta_i(x))`` (zeros for untargeted slices) to
    the projection output. vLLM linears return ``(output, bias)``; the tuple is kept.
    """

    def __init__(self, deltas: list[RoutedDelta | None], sizes: list[int]) -> None:
        super().__init__()
        self.sizes = list(sizes)
        self.slots = [i for i, d in enumerate(deltas) if d is not None]
        self.deltas = nn.ModuleList(d for d in deltas if d is not None)

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if len(self.sizes) == 1:
            return out + self.deltas[0](x)
        pieces = []
        it = iter(self.deltas)
        for i, size in enumerate(self.sizes):
            if i in self.slots:
                pieces.append(next(it)(x))
            else:
                pieces.append(out.new_zeros(*out.shape[:-1], size))
        return out + torch.cat(pieces, dim=-1)

    def hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if isinstance(output, tuple):
            return (self(args[0], output[0]), *output[1:])
        return self(args[0], output)


class MixLoraFFN(nn.Module):
    """MixLoRA's expert mixture for one gated FFN block, given the block's fused ``gate_up`` output.

    ``forward(x, gate_up, down)`` returns the block output; ``down`` is the frozen down projection (a callable
    returning the projected tensor). Mirrors ``tuners.mixlora.MixLoraBlock.forward`` step by step: the frozen down
    projection is applied once to the gate-weighted sum of expert activations (exact by linearity). The expert loop
    has data-dependent shapes, so engines serving MixLoRA run eagerly (``enforce_eager``, our default).
    """

    def __init__(self, params: Mapping[str, Any], hidden: int, inter: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.num_experts = int(params["num_experts"])
        self.top_k = int(params["top_k"])
        self.r = int(params["r"])
        self.scaling = float(params["alpha"]) / self.r
        self.hidden, self.inter = hidden, inter
        e, r = self.num_experts, self.r
        dims = {"gate": (hidden, inter), "up": (hidden, inter), "down": (inter, hidden)}
        for proj, (d_in, d_out) in dims.items():
            self.register_buffer(f"{proj}_A", torch.empty(e, r, d_in, dtype=dtype), persistent=False)
            self.register_buffer(f"{proj}_B", torch.empty(e, d_out, r, dtype=dtype), persistent=False)
        self.register_buffer("route", torch.empty(e, hidden, dtype=dtype), persistent=False)

    @torch.no_grad()
    def load(self, leaves: Mapping[str, torch.Tensor]) -> None:
        for proj in ("gate", "up", "down"):
            for side in ("A", "B"):
                parts = [_leaf(leaves, f"lora_{proj}_{side}.{i}.weight") for i in range(self.num_experts)]
                target = getattr(self, f"{proj}_{side}")
                stacked = torch.stack(parts)
                if stacked.shape != target.shape:
                    raise CmeError(f"mixlora {proj}_{side}: shape {tuple(stacked.shape)} != {tuple(target.shape)}")
                target.copy_(stacked)
        route = _leaf(leaves, "lora_route.weight")
        if route.shape != self.route.shape:
            raise CmeError(f"mixlora router: shape {tuple(route.shape)} != {tuple(self.route.shape)}")
        self.route.copy_(route)

    def _lora(self, proj: str, e: int, x: torch.Tensor) -> torch.Tensor:
        a, b = getattr(self, f"{proj}_A")[e], getattr(self, f"{proj}_B")[e]
        return F.linear(F.linear(x, a), b) * self.scaling

    def forward(self, x: torch.Tensor, gate_up: torch.Tensor, down) -> torch.Tensor:
        xa = x.to(self.route.dtype)
        probs = F.softmax(F.linear(xa, self.route).float(), dim=-1)
        top_w, top_i = probs.topk(self.top_k, dim=-1)
        top_w = top_w / top_w.sum(dim=-1, keepdim=True)
        base_gate, base_up = gate_up[..., : self.inter], gate_up[..., self.inter :]
        hidden_sum, delta = mix_experts_ffn(
            xa, top_w, top_i, base_gate, base_up, self._lora, F.silu, self.num_experts, self.hidden
        )
        return down(hidden_sum) + delta.to(hidden_sum.dtype)
