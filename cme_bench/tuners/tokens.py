"""Which positions of a training forward are real tokens, and which example each belongs to.

Routed layers see hidden states ``[batch, seq, d]`` and nothing else; a padded micro-batch has padding positions,
and a packed one holds several examples in one row. Their balance losses and expert loads must describe real tokens
only, and per-example statistics (LoRAMoE's importance per sample) must follow examples, not rows. The training loop
says so through ``token_segments``; every layer reads it through the functions below.

``segments`` is a ``[batch, seq]`` integer tensor: the example index (0 .. n-1) of each real token, -1 for padding.
Outside a ``token_segments`` block (inference, tests that call a layer directly) every position counts as real and
each row is one example: exactly the behaviour before padding was masked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

_SEGMENTS: ContextVar[torch.Tensor | None] = ContextVar("cme_bench_token_segments", default=None)


@contextmanager
def token_segments(segments: torch.Tensor | None) -> Iterator[None]:
    """Within this block, routed layers count only the positions whose ``segments`` entry is >= 0."""
    token = _SEGMENTS.set(segments)
    try:
        yield
    finally:
        _SEGMENTS.reset(token)


def _flat_segments(w: torch.Tensor) -> torch.Tensor | None:
    """The current segments flattened to match ``w``'s leading positions, or None when none apply."""
    seg = _SEGMENTS.get()
    if seg is None or seg.numel() != w[..., 0].numel():  # another shape: not a token-level tensor of this forward
        return None
    return seg.reshape(-1).to(w.device)


def real_mask(w: torch.Tensor) -> torch.Tensor | None:
    """A flat boolean mask over ``w``'s positions (``w``: ``[..., E]``), or None when every position is real."""
    seg = _flat_segments(w)
    return None if seg is None else seg >= 0


def real_tokens(w: torch.Tensor) -> torch.Tensor:
    """``w`` (``[..., E]``) as ``[positions, E]`` keeping real tokens only."""
    flat = w.reshape(-1, w.shape[-1])
    mask = real_mask(w)
    return flat if mask is None else flat[mask]


def per_example_sums(w: torch.Tensor) -> torch.Tensor:
    """``[examples, E]``: the sum of ``w`` over each example's real tokens (one example per row without segments)."""
    seg = _flat_segments(w)
    if seg is None:
        return w.reshape(w.shape[0], -1, w.shape[-1]).sum(dim=1) if w.dim() >= 3 else w
    flat = w.reshape(-1, w.shape[-1])
    keep = seg >= 0
    n = int(seg.max().item()) + 1 if bool(keep.any()) else 0
    return flat.new_zeros(n, flat.shape[-1]).index_add(0, seg[keep], flat[keep])
