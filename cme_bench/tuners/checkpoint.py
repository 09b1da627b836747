"""The adapter format's one reader and its helpers: ``read_adapter`` (config, layout detection, tensors mapped to our
keys), strict key/shape checks, the base-model check and the atomic folder write. Every backend reads adapters
through ``read_adapter``: ``cme_bench.adapters`` (HF) and the vLLM serving plan and model. Nothing here unpickles.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
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
SIDECAR_NAME = "cme_bench.json"  # cme-bench's fields beside a PEFT adapter_config.json
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


@dataclass(frozen=True)
class AdapterFile:
    """A saved adapter folder, read once: what it is and where its tensors are.

    ``layout`` is ``"cme-bench"``, ``"peft"`` or the name of an authors' layout (``ForeignLayout``) a method
    declares; ``params`` are the method's hyperparameters (``{}`` for a PEFT adapter saved by another tool);
    ``state()`` loads the tensors keyed as ``cme_bench.adapters.adapter_state`` names them.
    """

    folder: Path
    layout: str
    method: str
    preset: str
    params: dict[str, Any]
    target_modules: list[str]
    base_model: dict[str, Any] | None
    config: dict[str, Any]
    weights: Path
    foreign: Any = None  # the ForeignLayout that maps the tensors, for an authors' layout

    def state(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        tensors = load_file(str(self.weights))
        return self.foreign.state(tensors, self.params) if self.foreign is not None else tensors


def read_adapter(adapter_dir: str | Path) -> AdapterFile:
    """Read ``adapter_dir`` in any supported layout (ours, PEFT's, an authors' release); CmeError otherwise."""
    folder, config, weights = read_adapter_config(adapter_dir)
    layout = detect_layout(config)
    if layout == "cme-bench":
        return AdapterFile(
            folder, layout, config["method"], config["preset"], dict(config["params"]),
            list(config["target_modules"]), config.get("base_model"), config, weights,
        )  # fmt: skip
    if layout == "peft":
        # cme-bench's fields: the sidecar file, or (folders saved before it existed) the "cme_bench" key of the config.
        sidecar = folder / SIDECAR_NAME
        cme = json.loads(sidecar.read_text()) if sidecar.is_file() else config.get("cme_bench") or {}
        targets = cme.get("target_modules") or targets_from_peft(config.get("target_modules"))
        method = cme.get("method") or peft_method(config)
        return AdapterFile(
            folder, layout, method, cme.get("preset", folder.name), dict(cme.get("params") or {}), list(targets),
            cme.get("base_model"), config, weights,
        )  # fmt: skip
    spec, foreign = _foreign_layouts()[layout]
    params = spec.validate(foreign.params(config), where=str(folder / CONFIG_NAME))
    log.info("detected the %s checkpoint layout in %s", layout, folder)
    return AdapterFile(
        folder, layout, spec.name, layout, params, params["target_modules"], None, config, weights, foreign
    )


def _foreign_layouts() -> dict[str, tuple[Any, Any]]:
    """``{layout name: (MethodSpec, ForeignLayout)}`` over every registered method."""
    from cme_bench.tuners import TUNERS

    out = {}
    for name in TUNERS.names():
        spec = TUNERS.get(name)
        out.update({layout.name: (spec, layout) for layout in spec.layouts})
    return out


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
    """``"cme-bench"``, the name of an authors' layout a method declares (checked before PEFT's: the TeamLoRA
    release writes a PEFT-style config), or ``"peft"``."""
    if config.get("format") == FORMAT:
        return "cme-bench"
    for name, (_, layout) in _foreign_layouts().items():
        if layout.detect(config):
            return name
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
