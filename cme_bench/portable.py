"""Adapters in other tools' layouts: export an adapter to its method's authors' layout, and turn a pickled
``adapter_model.bin`` into safetensors.

- ``export_authors``: the method's own ``ForeignLayout.export`` (the exact inverse of its importer) writes the
  tensors and config; TeamLoRA's is the layout of ``Lin-Tianwei/TeamLoRA`` (a PEFT-0.3-style LoRA config with
  ``lora_nums``; keys ``base_model.model.<module>.lora_A.weight``, ``lora_B{i}.weight``, ``lora_route.fc.weight``,
  ``lora_interaction_matrix.weight``).
- ``convert_bin``: checkpoints from the authors' era are usually ``torch.save`` pickles. Loading a pickle can run
  arbitrary code, so cme-bench never does it implicitly; this explicit step reads one with
  ``torch.load(weights_only=True)`` (PyTorch's restricted unpickler: tensors and plain containers only) and writes
  ``adapter_model.safetensors`` beside it. A file the restricted unpickler refuses stays refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from cme_bench.errors import CmeError
from cme_bench.results import write_dir_atomic
from cme_bench.tuners.checkpoint import CONFIG_NAME as CONFIG
from cme_bench.tuners.checkpoint import WEIGHTS_NAME as WEIGHTS

LAYOUTS = ("authors",)


def export_authors(adapter_dir: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the adapter saved in ``adapter_dir`` (cme-bench's layout) to ``out`` in its method's authors' layout
    (the method's ``ForeignLayout.export``; TeamLoRA's is the only one today)."""
    from safetensors.torch import load_file, save_file

    from cme_bench.modelcard import read_fields
    from cme_bench.tuners import get_method

    folder = Path(adapter_dir)
    if not (folder / CONFIG).is_file():
        raise CmeError(f"{str(folder)!r} is not an adapter folder: {CONFIG} is missing")
    fields = read_fields(folder)
    spec = get_method(str(fields.get("method")))
    exporters = [layout for layout in spec.layouts if layout.export is not None]
    if not exporters:
        raise CmeError(f"method {spec.name!r} has no authors' layout to export to ({str(folder)!r})")
    fields = {**fields, "base_model_name_or_path": fields.get("base_model_name_or_path") or _base_name(folder)}
    tensors, config = exporters[0].export(load_file(str(folder / WEIGHTS)), fields)

    def build(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")

    return write_dir_atomic(Path(out), build, overwrite=overwrite)


def _base_name(folder: Path) -> str | None:
    config = json.loads((folder / CONFIG).read_text())
    return config.get("base_model_name_or_path")


def convert_bin(folder: str | Path) -> Path:
    """``adapter_model.bin`` -> ``adapter_model.safetensors`` in the same folder, read with ``weights_only=True``.

    Raises CmeError when there is no ``.bin``, when safetensors already exist, or when the restricted unpickler refuses
    the file (anything beyond tensors and plain containers: the file is never loaded with full pickle).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    source = folder / "adapter_model.bin"
    target = folder / WEIGHTS
    if not source.is_file():
        raise CmeError(f"{str(folder)!r} has no adapter_model.bin to convert")
    if target.exists():
        raise CmeError(f"{str(target)!r} already exists; remove it first to convert again")
    try:
        state = torch.load(str(source), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError for forbidden globals; others for corrupt files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CmeError(
            f"{str(source)!r} is refused by PyTorch's safe unpickler (torch.load weights_only=True): {first}. "
            "It holds more than tensors (objects whose loading could run code); cme-bench will not load it with "
            "full pickle. Re-save it as safetensors where it was made."
        ) from None
    tensors = _tensors(state, source)
    tmp = folder / f".{WEIGHTS}.tmp"
    # clone: safetensors refuses tensors that share storage, which torch.save keeps.
    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(target)
    return target


def _tensors(state: Any, source: Path) -> dict[str, torch.Tensor]:
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise CmeError(f"{str(source)!r} holds {type(state).__name__}, not a mapping of tensor names to tensors")
    bad = [str(k) for k, v in state.items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if bad:
        raise CmeError(f"{str(source)!r}: entries that are not named tensors: {', '.join(bad[:6])}")
    return state
