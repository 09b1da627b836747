"""Adapter checkpoint helpers: the on-disk format, layout detection, strict key/shape checks, the base-model check,
and the atomic folder write. ``cme_bench.adapters`` builds save/load on these; nothing here unpickles.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cme_bench.errors import CmeError, LoadError, loading

log = logging.getLogger(__name__)

FORMAT = "cme-bench-adapter"
FORMAT_VERSION = 1
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
BASE_FIELDS = ("architecture", "model_type", "hidden_size", "num_layers", "vocab_size")


def check_state(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> None:
    """Raise CmeError naming every missing key, unexpected key and wrong shape of ``given`` against ``expected``."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(given))
        if tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {shorten(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {shorten(unexpected)}")
    if shapes:
        problems.append(f"wrong shapes ({len(shapes)}): {shorten(shapes)}")
    if problems:
        raise CmeError("adapter checkpoint does not match the model:\n  - " + "\n  - ".join(problems))


def shorten(items: list[str], n: int = 6) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n} more)" if len(items) > n else "")


def cme_fields(info: dict[str, Any], base_info: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": info["method"],
        "preset": info["preset"],
        "params": info["params"],
        "target_modules": info["targets"],
        "base_model": base_info,
    }


def fsync_dir(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())


def replace_dir(tmp: Path, out_dir: Path) -> None:
    """``os.replace`` a folder into place; an existing ``out_dir`` is moved aside first (replace needs it gone)."""
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


def read_adapter_config(adapter_dir: str | Path) -> tuple[Path, dict[str, Any], Path]:
    """``(folder, adapter_config.json contents, weights path)``; refuses pickled weights."""
    folder = Path(adapter_dir).expanduser()
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise CmeError(f"{str(folder)!r} is not an adapter folder: {CONFIG_NAME} is missing")
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        hint = (
            f" ({', '.join(pickled)} found: convert it to safetensors; cme-bench never unpickles)" if pickled else ""
        )
        raise CmeError(f"{str(folder)!r} has no {WEIGHTS_NAME}{hint}")
    with loading(config_path, "adapter config", "it must be the JSON object cme-bench or PEFT saved"):
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError(f"expected a JSON object, got {type(config).__name__}")
    with loading(weights, "adapter weights", "the file is not a complete safetensors file"):
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as fh:  # header and size check only; tensors load later
            fh.keys()
    if config.get("format") == FORMAT:
        missing = [k for k in ("method", "preset", "params", "target_modules") if k not in config]
        if missing:
            raise LoadError(config_path, f"adapter config {str(config_path)!r} lacks {', '.join(map(repr, missing))}")
    return folder, config, weights


def detect_layout(config: dict[str, Any]) -> str:
    """``"cme-bench"``, ``"teamlora-authors"`` (PEFT-style LoRA config with ``lora_nums``) or ``"peft"``."""
    if config.get("format") == FORMAT:
        return "cme-bench"
    if "peft_type" in config and config.get("lora_nums"):
        return "teamlora-authors"
    if "peft_type" in config:
        return "peft"
    raise CmeError(
        f"unrecognised adapter_config.json (keys: {', '.join(sorted(config)) or 'none'}): neither cme-bench's "
        "(format, method, ...) nor PEFT's (peft_type)"
    )


def peft_method(config: dict[str, Any]) -> str:
    if config["peft_type"] == "ADALORA":
        return "adalora"
    if config["peft_type"] == "LORA":
        return "dora" if config.get("use_dora") else "lora"
    raise CmeError(f"unsupported PEFT adapter type {config['peft_type']!r} (supported: LORA, ADALORA)")


def targets_from_peft(targets: Any) -> list[str]:
    if isinstance(targets, str):
        return ["re:" + targets]
    return sorted(targets or [])


def check_base(saved: dict[str, Any] | None, base_model: nn.Module) -> None:
    """Refuse a base whose architecture differs from the one the adapter was trained on (naming each field)."""
    if not saved:
        log.warning("adapter records no base model; skipping the architecture check")
        return
    from cme_bench.models import architecture_info

    current = architecture_info(base_model)
    diffs = [
        f"{k}: adapter was trained on {saved[k]!r}, this model has {current.get(k)!r}"
        for k in BASE_FIELDS
        if k in saved and saved[k] is not None and saved[k] != current.get(k)
    ]
    if diffs:
        raise CmeError("adapter was trained on a different base architecture:\n  - " + "\n  - ".join(diffs))
    if saved.get("fingerprint") and saved["fingerprint"] != current.get("fingerprint"):
        log.warning("base model fingerprint differs from the adapter's (same architecture, different weights?)")
