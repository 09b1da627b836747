"""Helpers shared by test modules (adapter layers, multi-process launches): imported as a plain module,
like ``tests/vllm/vllm_helpers.py``, because pytest puts this folder on ``sys.path``."""

from __future__ import annotations

import copy
import socket

import torch
from torch import nn


def randomise(module: nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    """Give every adapter tensor non-zero values so that B = 0 cannot hide a bug."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def assert_forward_paths_agree(
    layer: nn.Module, x_shape: tuple[int, ...], seed: int = 0, atol: float = 1e-5, dtype: torch.dtype | None = None
) -> None:
    """Randomise ``layer``'s adapter, copy it with the other ``fused`` setting, and compare both outputs on one
    random input (drawn from the global generator after the copy, so a test's ``manual_seed`` still fixes it)."""
    randomise(layer, seed=seed)
    other = copy.deepcopy(layer)
    other.fused = not layer.fused
    x = torch.randn(*x_shape, dtype=dtype)
    torch.testing.assert_close(layer(x), other(x), rtol=0, atol=atol)


def free_port() -> int:
    """A TCP port on the loopback address that nothing listens on now (for torchrun's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
