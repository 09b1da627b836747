"""Adapters in other tools' layouts: export a TeamLoRA adapter to its authors' layout, and turn a pickled
``adapter_model.bin`` into safetensors.

- ``export_authors``: the layout of ``Lin-Tianwei/TeamLoRA`` (a PEFT-0.3-style LoRA config with ``lora_nums``; keys
  ``base_model.model.<module>.lora_A.weight``, ``lora_B{i}.weight``, ``lora_route.fc.weight``,
  ``lora_interaction_matrix.weight``). It is the exact inverse of the importer
  (``cme_bench.tuners.teamlora.import_authors_state``): ``B_cat`` is split back into its k column blocks.
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

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
AUTHORS_PREFIX = "base_model.model."
LAYOUTS = ("authors",)


def export_authors(adapter_dir: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the TeamLoRA adapter saved in ``adapter_dir`` (cme-bench's layout) to ``out`` in the authors' layout."""
    from safetensors.torch import load_file, save_file

    from cme_bench.modelcard import read_fields

    folder = Path(adapter_dir)
    if not (folder / CONFIG).is_file():
        raise CmeError(f"{str(folder)!r} is not an adapter folder: {CONFIG} is missing")
    fields = read_fields(folder)
    if fields.get("method") != "teamlora":
        raise CmeError(
            f"the authors' layout holds TeamLoRA adapters only; {str(folder)!r} is {fields.get('method')!r}"
        )
    params = fields["params"]
    if params.get("normalizer_eps") is not None:
        raise CmeError("normalizer_eps is a cme-bench deviation the authors' layout cannot express; not exported")
    k, r_a = int(params["num_experts"]), int(params["r_a"])
    state = load_file(str(folder / WEIGHTS))
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, _, leaf = key.partition(".lora_")
        prefix = AUTHORS_PREFIX + module
        if leaf == "A.weight":
            tensors[f"{prefix}.lora_A.weight"] = value
        elif leaf == "B.weight":  # B_cat = [B_0 | ... | B_{k-1}], columns in slice order
            for i, block in enumerate(torch.split(value, r_a // k, dim=1)):
                tensors[f"{prefix}.lora_B{i}.weight"] = block.contiguous()
        elif leaf == "route.weight":
            tensors[f"{prefix}.lora_route.fc.weight"] = value
        elif leaf == "interaction_matrix":
            tensors[f"{prefix}.lora_interaction_matrix.weight"] = value
        else:
            raise CmeError(f"unexpected TeamLoRA tensor {key!r}")
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": fields.get("base_model_name_or_path") or _base_name(folder),
        "r": r_a,  # the total rank r_A, as in the release; r_B = r / lora_nums
        "lora_nums": k,
        "lora_alpha": params["alpha"],
        "lora_dropout": params["dropout"],
        # The release's balance-loss fields (inherited from LoRAMoE); its code applies no weight.
        "blc_alpha": 0.0,
        "blc_weight": params.get("balance_loss_weight", 0.0),
        "target_modules": list(fields["target_modules"]),  # exact module paths: matched by suffix, as in PEFT
        "merge_weights": False,
        "fan_in_fan_out": False,
        "bias": "none",
        "modules_to_save": None,
        "inference_mode": True,
    }

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
