"""Routed adapters inside vLLM: generic modules that run each method's own math (``MethodSpec.vllm``) on plain tensors.

vLLM has no mixture-of-LoRA support (one ``LoRARequest`` per request), so routed adapters are served by a model class
of our own (``model.py``) that adds these modules' outputs to vLLM's projections. Nothing here knows a method: a
per-linear method gives a ``LinearServing`` (``pack`` its saved tensors into ``A``, ``B``, an optional ``route`` and
extras; ``mix`` the projected input into what ``B`` multiplies), an FFN-block method a ``BlockServing``. The training
layers in ``cme_bench/tuners/`` call the same functions in their fused forms, so greedy decoding agrees token for token
(dropout is off at inference). Nothing here imports vLLM: the modules are unit-tested against the training layers on
CPU, and the vLLM parity tests then only have to check the wiring.

``RoutedDelta`` reads x once: ``A`` and the router are stacked into one input matrix. All routed math runs in the
adapter dtype (fp32 for a bf16 base, as in training: ``tuners.base.adapter_dtype``) and the delta is cast back to the
base output dtype. Adapter folders are read by ``tuners.checkpoint.read_adapter``, the one reader of the format.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cme_bench.errors import CmeError
from cme_bench.tuners import get_method
from cme_bench.tuners.base import BlockServing, LinearServing, MethodSpec
from cme_bench.tuners.checkpoint import AdapterFile, read_adapter

# ``...layers.<i>.<mlp|self_attn>.<name>_proj.<leaf>``: tolerant of any prefix (``model.``, ``base_model.model.``).
_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(mlp|self_attn)\.([A-Za-z0-9_]+)\.(lora_.+)$")
# FFN-block methods keep their tensors on the block itself: ``...layers.<i>.mlp.lora_<...>``.
_BLOCK_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.(lora_.+)$")


def routed_adapter(path: str | Path) -> tuple[AdapterFile, MethodSpec]:
    """The adapter folder at ``path`` and its method, which must be served routed (``MethodSpec.serving``)."""
    saved = read_adapter(path)
    spec = get_method(saved.method)
    if spec.serving != "routed" or spec.vllm is None:
        raise CmeError(f"{path} is not a routed adapter (method {saved.method!r} is served {spec.serving!r})")
    return saved, spec


def _group(tensors: Mapping[str, Any], pattern: re.Pattern[str], where: str) -> dict[Any, dict[str, Any]]:
    """Tensors grouped by the leading match groups of ``pattern``, keyed inside by the last; unknown keys fail.

    An unrecognised key means the adapter would be served only partly, which is the silent failure we exist to avoid.
    """
    out: dict[Any, dict[str, Any]] = {}
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


def group_by_module(tensors: Mapping[str, Any]) -> dict[tuple[int, str, str], dict[str, Any]]:
    """``{(layer, "mlp"|"self_attn", "gate_proj"): {"lora_A.weight": t, ...}}``; any other key is an error."""
    return _group(tensors, _KEY, "decoder-layer projections")


def group_by_block(tensors: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """``{layer: {"lora_<...>": t, ...}}`` for FFN-block adapters."""
    return _group(tensors, _BLOCK_KEY, "decoder-layer FFN blocks")


class _Tensors(nn.Module):
    """Adapter tensors held as buffers, not parameters: vLLM checks that every *parameter* came from the base
    checkpoint, and these come from the adapter file (``load``), after the model was built on its device."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self.register_buffer("anchor", torch.empty(0, dtype=dtype), persistent=False)  # follows the model's device

    def put(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """Register ``t`` as buffer ``name`` on the model's device, floating tensors in the adapter dtype."""
        self.register_buffer(name, t.to(self.anchor.device, self.dtype if t.is_floating_point() else t.dtype),
                             persistent=False)  # fmt: skip
        return getattr(self, name)


class RoutedDelta(_Tensors):
    """The routed update of one projection, ``forward(x) -> delta`` with ``x`` ``[tokens, d_in]``:
    ``mix(x @ A^T, x @ route^T) @ B^T`` with the method's ``LinearServing.mix``."""

    def __init__(self, serving: LinearServing, params: Mapping[str, Any], d_in: int, d_out: int, dtype: torch.dtype):
        super().__init__(dtype)
        self.serving, self.params = serving, dict(params)
        self.d_in, self.d_out = d_in, d_out
        self.rank = 0
        # ``x @ w_in^T`` and ``u @ w_out^T``; ``use_gemms`` swaps in prepacked kernels once the weights are loaded.
        self._gemm_in: Callable[[torch.Tensor], torch.Tensor] = lambda x: F.linear(x, self.w_in)
        self._gemm_out: Callable[[torch.Tensor], torch.Tensor] = lambda u: F.linear(u, self.w_out)
        self._extras: dict[str, torch.Tensor] = {}
        self._routed_input = False

    def use_gemms(self, make: Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]) -> None:
        """Compute the two matmuls with ``make(weight)`` (a ``[out, in]`` weight -> ``x -> x @ weight^T``).

        vLLM's CPU linears run prepacked oneDNN GEMMs, about 3x faster than ``F.linear`` at these shapes; the vLLM
        model (``model.py``) hands the same kernels to its deltas after loading. Call it after ``load``: the kernels
        keep their own packed copy of the weights.
        """
        self._gemm_in, self._gemm_out = make(self.w_in), make(self.w_out)

    @torch.no_grad()
    def load(self, leaves: Mapping[str, torch.Tensor]) -> None:
        t = dict(self.serving.pack(leaves, self.params))
        a, b, route = t.pop("A"), t.pop("B"), t.pop("route", None)
        stacked = a if route is None else torch.cat([a, route], dim=0)
        if stacked.shape[1] != self.d_in or b.shape[0] != self.d_out:
            raise CmeError(
                f"adapter shapes A(+router) {tuple(stacked.shape)}, B {tuple(b.shape)} do not fit a projection "
                f"{self.d_in} -> {self.d_out}"
            )
        self.rank, self._routed_input = a.shape[0], route is not None
        self.put("w_in", stacked)
        self.put("w_out", b)
        self._extras = {name: self.put(f"x_{name}", value) for name, value in t.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._gemm_in(x.to(self.w_in.dtype))
        logits = h[..., self.rank :] if self._routed_input else None
        u, _ = self.serving.mix(h[..., : self.rank], logits, self._extras, self.params)
        return self._gemm_out(u).to(x.dtype)


class RoutedBlock(_Tensors):
    """A routed FFN block, ``forward(x, gate_up, down) -> block output``, with the method's ``BlockServing``;
    ``gate_up`` is vLLM's fused gate/up projection output and ``down`` its frozen down projection."""

    def __init__(self, serving: BlockServing, params: Mapping[str, Any], act: Callable, dtype: torch.dtype):
        super().__init__(dtype)
        self.serving, self.params, self.act = serving, dict(params), act
        self._tensors: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def load(self, leaves: Mapping[str, torch.Tensor]) -> None:
        self._tensors = {name: self.put(f"x_{name}", t) for name, t in self.serving.pack(leaves, self.params).items()}

    def forward(self, x: torch.Tensor, gate_up: torch.Tensor, down: Callable) -> torch.Tensor:
        return self.serving.forward(x, gate_up, down, self.act, self._tensors, self.params)


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
