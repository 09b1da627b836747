"""Helpers shared by test modules (adapter layers, multi-process launches): imported as a plain module,
like ``tests/vllm/vllm_helpers.py``, because pytest puts this folder on ``sys.path``."""

from __future__ import annotations

import copy
import json
import socket
from pathlib import Path

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


def assert_scores_match_lm_eval(ours: dict, out: Path, lm_out: Path, tasks: list[str]) -> None:
    """Plain ``lm_eval``'s results and per-sample predictions under ``lm_out`` equal our run record's (``ours``,
    written under ``out``), task by task: the same metric value and the same prediction for every document."""
    theirs = json.loads(next(lm_out.rglob("results_*.json")).read_text())
    for task in tasks:
        metric = ours["metrics"][task]["metric"]
        key = next(k for k in theirs["results"][task] if k.startswith(metric + ",") and "stderr" not in k)
        assert ours["metrics"][task]["value"] == theirs["results"][task][key]
        their_rows = [json.loads(line) for line in next(lm_out.rglob(f"samples_{task}_*.jsonl")).open()]
        their_preds = {r["doc_id"]: r["filtered_resps"][0] for r in their_rows if r["filter"] == key.split(",")[1]}
        our_rows = [json.loads(line) for line in (out / ours["run_id"] / ours["samples"][task]).open()]
        assert {r["doc_id"]: r["prediction"] for r in our_rows} == their_preds and their_preds


def perturb(model: nn.Module, seed: int = 0, scale: float = 0.05) -> None:
    """Add seeded noise to every trainable tensor, so a zero-initialised adapter (B = 0) cannot hide a bug."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def run_dir(out: Path, prefix: str) -> Path:
    """The one run folder ``<prefix>--<8 hex identity digest>`` under ``out`` (or exactly ``prefix``)."""
    if (out / prefix / "run.json").is_file():
        return out / prefix
    found = [p for p in out.glob(f"{prefix}--*") if len(p.name) == len(prefix) + 10]
    assert len(found) == 1, (prefix, sorted(p.name for p in out.iterdir()))
    return found[0]
