"""Adapter presets and the public adapter API: apply, save, load (strict), merge, count, auxiliary losses and expert
load, for every method in ``cme_bench.tuners.TUNERS``.

Two backends sit behind one API:
- ``peft`` (LoRA, DoRA, AdaLoRA): ``apply_adapter`` returns a ``PeftModel``; adapters are saved in PEFT's own format
  (``base_model_name_or_path`` filled) with cme-bench's fields in the sidecar ``cme_bench.json``;
- ``native`` (every other method): adapter layers are injected into the Hugging Face model in place, so the returned
  object *is* the HF model (``generate``, ``config``, ``device``, ``tie_weights`` all work, and lm-eval's
  ``HFLM(pretrained=model)`` accepts it). The adapter description lives in ``model._cme_adapter``.

Loading is strict: missing or unexpected tensors, wrong shapes or a different base architecture raise ``CmeError``
naming them, because an adapter silently loaded as zeros is the failure users of other tools hit most. Nothing here
unpickles: weights are safetensors, configs JSON/YAML.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from cme_bench import modelcard
from cme_bench.config import check_training
from cme_bench.errors import CmeError, ConfigError, loading
from cme_bench.paths import adapters_dir
from cme_bench.registry import suggest
from cme_bench.tuners import TUNERS, get_method
from cme_bench.tuners.base import AdapterLayerMixin, MethodSpec, find_targets, inject
from cme_bench.tuners.checkpoint import (
    CONFIG_NAME,
    FORMAT,
    WEIGHTS_NAME,
    AdapterFile,
    check_base,
    check_state,
    cme_fields,
    fsync_dir,
    read_adapter,
    replace_dir,
    targets_from_peft,
)
from cme_bench.tuners.paper import PAPER_BASE as PAPER_BASE  # re-exported: part of the public API
from cme_bench.tuners.paper import PAPER_SHARES, paper_base_config

log = logging.getLogger(__name__)

PRESET_KEYS = {"method", "description", "params", "training", "notes"}


# ----------------------------------------------------------------------------------------------------------------
# Presets


@dataclass
class AdapterPreset:
    """A named adapter configuration: a method and its validated hyperparameters.

    ``training`` holds suggested training values from the preset file (labelled there when assumed); ``notes`` are
    free-text caveats shown by ``cme-bench adapters show``.
    """

    name: str
    method: str
    params: dict[str, Any]
    path: Path | None
    description: str
    training: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def list_presets() -> list[AdapterPreset]:
    """Every preset in ``adapters/``, sorted by name."""
    return [load_preset(str(p)) for p in sorted(adapters_dir().glob("*.yaml"))]


def preset_names() -> list[str]:
    return sorted(p.stem for p in adapters_dir().glob("*.yaml"))


def load_preset(name_or_path: str | Path) -> AdapterPreset:
    """A preset by name (``adapters/<name>.yaml``) or by path to a YAML file; CmeError with suggestions otherwise."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if not (path.suffix in (".yaml", ".yml") or path.is_file()):
        path = adapters_dir() / f"{text}.yaml"
        if not path.is_file():
            raise CmeError(suggest(text, preset_names(), "adapter preset"))
    if not path.is_file():
        raise CmeError(f"adapter preset file {str(path)!r} does not exist")
    with loading(path, "adapter preset", "it must be a YAML mapping (see adapters/README.md)"):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(data).__name__}", where=str(path))
    return preset_from_dict(data, name=path.stem, path=path)


def preset_from_dict(data: dict[str, Any], *, name: str, path: Path | None = None) -> AdapterPreset:
    """Validate a preset mapping (``method``, ``params``, optional ``description``/``training``/``notes``)."""
    where = str(path) if path else f"adapter preset {name!r}"
    unknown = sorted(set(data) - PRESET_KEYS)
    if unknown:
        raise ConfigError([f"unknown key {k!r} (allowed: {sorted(PRESET_KEYS)})" for k in unknown], where=where)
    if "method" not in data:
        raise ConfigError("missing key 'method'", where=where)
    spec = get_method(str(data["method"]))
    params = spec.validate(dict(data.get("params") or {}), where=where)
    return AdapterPreset(
        name=name,
        method=spec.name,
        params=params,
        path=path,
        description=str(data.get("description") or spec.description).strip(),
        training=check_training(dict(data.get("training") or {}), where=where),
        notes=[str(n) for n in data.get("notes") or []],
    )


def _as_preset(preset: AdapterPreset | str | Path) -> AdapterPreset:
    return preset if isinstance(preset, AdapterPreset) else load_preset(preset)


# ----------------------------------------------------------------------------------------------------------------
# Apply


def apply_adapter(
    model: nn.Module,
    preset: AdapterPreset | str | Path,
    *,
    total_steps: int | None = None,
    seed: int | None = None,
) -> nn.Module:
    """Attach the adapter described by ``preset`` to ``model`` and return the trainable model (base frozen).

    Args:
        model: a Hugging Face causal LM (any architecture built from ``nn.Linear``); may live on the meta device.
        preset: an ``AdapterPreset``, a preset name or a YAML path.
        total_steps: the real number of optimizer steps (required by AdaLoRA's rank schedule).
        seed: seeds the adapter initialisation without touching the caller's global RNG.

    Returns:
        A ``PeftModel`` for PEFT methods; for native methods ``model`` itself with adapter layers injected.
    """
    preset = _as_preset(preset)
    if getattr(model, "_cme_adapter", None) is not None:
        raise CmeError(f"this model already carries a {model._cme_adapter['method']!r} adapter")
    spec = get_method(preset.method)
    was_training = model.training
    if seed is None:
        adapted, targets = _attach(model, spec, preset, total_steps)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            adapted, targets = _attach(model, spec, preset, total_steps)
    # New modules start in training mode; keep the caller's mode so an eval-mode model does not gain active dropout.
    adapted.train(was_training)
    adapted._cme_adapter = {
        "method": spec.name,
        "preset": preset.name,
        "params": dict(preset.params),
        "backend": spec.backend,
        "routed": spec.routed,
        "mergeable": spec.mergeable,
        "targets": targets,
        "total_steps": total_steps,
    }
    return adapted


def _attach(
    model: nn.Module, spec: MethodSpec, preset: AdapterPreset, total_steps: int | None
) -> tuple[nn.Module, list[str]]:
    if spec.backend == "peft":
        return _apply_peft(model, spec, preset, total_steps)
    return _apply_native(model, spec, preset.params)


def _apply_native(model: nn.Module, spec: MethodSpec, params: dict[str, Any]) -> tuple[nn.Module, list[str]]:
    kind = nn.Module if spec.scope == "mlp" else nn.Linear
    paths = find_targets(model, params["target_modules"], kind)
    if spec.scope == "mlp":
        paths = [p for p in paths if hasattr(model.get_submodule(p), "gate_proj")]
        if not paths:
            raise CmeError(f"{spec.name}: no target among {params['target_modules']} is a gated FFN block")
    for p in model.parameters():
        p.requires_grad_(False)
    inject(model, paths, lambda module, site: spec.build_layer(module, params, site))
    return model, paths


def _apply_peft(
    model: nn.Module, spec: MethodSpec, preset: AdapterPreset, total_steps: int | None
) -> tuple[nn.Module, list[str]]:
    from peft import get_peft_model

    from cme_bench.tuners.peft_methods import build_peft_config

    paths = find_targets(model, preset.params["target_modules"], nn.Linear)
    config = build_peft_config(spec.name, preset.params, total_steps)
    # On the meta device (parameter counting) let PEFT create the adapter on meta too instead of initialising
    # hundreds of millions of CPU weights it would throw away.
    on_meta = any(p.device.type == "meta" for p in model.parameters())
    return get_peft_model(model, config, low_cpu_mem_usage=on_meta), paths


def _info(model: nn.Module) -> dict[str, Any]:
    info = getattr(model, "_cme_adapter", None)
    if info is None:
        raise CmeError("this model carries no cme-bench adapter (use apply_adapter or load_adapter first)")
    return info


def adapter_layers(model: nn.Module) -> list[tuple[str, AdapterLayerMixin]]:
    """``(module path, layer)`` for every native adapter layer in ``model``."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, AdapterLayerMixin)]


# ----------------------------------------------------------------------------------------------------------------
# Training-time hooks and diagnostics


def aux_loss(model: nn.Module) -> torch.Tensor | None:
    """The weighted sum of every layer's auxiliary loss from the last forward, to add to the LM loss.

    None when there is nothing to add: the method has no auxiliary loss, its weight is 0, or (AdaLoRA) PEFT already
    added its orthogonality penalty to ``outputs.loss``.
    """
    terms = [
        layer.aux_weight * layer.last_aux
        for _, layer in adapter_layers(model)
        if layer.aux_weight and layer.last_aux is not None
    ]
    return torch.stack([t.float() for t in terms]).sum() if terms else None


def expert_load(model: nn.Module, *, cumulative: bool = False) -> dict[str, list[float]]:
    """Per routed layer, the mean routing weight per expert (each token's weights normalised to sum 1).

    ``cumulative=False`` reports the last forward; ``True`` the mean over forwards since ``reset_expert_load``.
    Only forwards run with autograd on count (training): inference under ``no_grad`` records nothing.
    TeamLoRA reports ``w / k``; SMoRA its per-rank gates / activate_r; MixLoRA its renormalised top-k gates.
    ``{}`` for methods without routing.
    """
    out = {}
    for name, layer in adapter_layers(model):
        if cumulative and layer.load_sum is not None:
            out[name] = (layer.load_sum / max(layer.load_count, 1)).tolist()
        elif not cumulative and layer.last_load is not None:
            out[name] = layer.last_load.tolist()
    return out


def reset_expert_load(model: nn.Module) -> None:
    for _, layer in adapter_layers(model):
        layer.reset_load()


def adapter_stats(model: nn.Module) -> dict[str, float]:
    """Scalar diagnostics of the last forward run with autograd on (training), e.g. TeamLoRA's
    ``<method>/normalizer_min`` (min over layers) and ``<method>/balance_excess`` (mean of L_bal - (1 - 1/k)^2), and
    ``<method>/aux_loss`` (unweighted mean)."""
    collected: dict[str, list[float]] = {}
    for _, layer in adapter_layers(model):
        for key, value in layer.stats.items():
            collected.setdefault(f"{layer.method}/{key}", []).append(float(value))
        if layer.last_aux is not None:
            collected.setdefault(f"{layer.method}/aux_loss", []).append(float(layer.last_aux.detach()))
    return {k: (min(v) if k.endswith("_min") else sum(v) / len(v)) for k, v in collected.items()}


def set_task_types(model: nn.Module, task_types: torch.Tensor | None) -> None:
    """Per-sample task types ``[batch]`` for LoRAMoE's localized balancing loss (1 = the first expert group)."""
    for _, layer in adapter_layers(model):
        if hasattr(layer, "task_types"):
            layer.task_types = task_types


def step_hook(model: nn.Module, step: int) -> None:
    """Call after ``backward`` and before ``zero_grad``: the method's ``step_hook`` (AdaLoRA's
    ``update_and_allocate``); a no-op for methods without one."""
    info = getattr(model, "_cme_adapter", None)
    hook = get_method(info["method"]).step_hook if info else None
    if hook is not None:
        hook(model, step)


# ----------------------------------------------------------------------------------------------------------------
# Counting and description


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable adapter parameters, base parameters)``; works on the meta device."""
    trainable = base = 0
    for name, p in model.named_parameters():
        # AdaLoRA's frozen ``ranknum`` and any other adapter-owned tensor are not base parameters.
        if p.requires_grad:
            trainable += p.numel()
        elif "lora_" not in name and "ranknum" not in name:
            base += p.numel()
    return trainable, base


def adapter_info(model: nn.Module) -> dict[str, Any]:
    """What a run record says about the adapter (method, preset, params, routed, mergeable, counts, deviations)."""
    info = _info(model)
    trainable, base = count_parameters(model)
    spec = get_method(info["method"])
    out = {k: v for k, v in info.items() if k != "targets"}
    out.update(
        {
            "num_targets": len(info["targets"]),
            "trainable_parameters": trainable,
            "base_parameters": base,
            "trainable_share": trainable / base if base else None,
            "notes": list(spec.notes),
            "deviations": spec.deviations_for(info["params"]),
        }
    )
    if spec.info is not None:
        out.update(spec.info(info["params"]))
    return out


def deviations(method: str, params: dict[str, Any]) -> list[str]:
    """Labelled departures from the released code that these hyperparameters switch on (the method says which)."""
    return get_method(method).deviations_for(params)


def count_on_meta(config: Any, preset: AdapterPreset | str | Path) -> dict[str, Any]:
    """Adapter parameter counts for a model ``config`` built on the meta device (no weights; seconds for 7B).

    Returns ``trainable``, ``base``, ``router`` (router parameters included in ``trainable``), ``share`` and
    ``share_without_router`` (fractions of the base).
    """
    from cme_bench.models import build_on_meta

    preset = _as_preset(preset)
    model = apply_adapter(build_on_meta(config), preset, total_steps=1000)
    trainable, base = count_parameters(model)
    router = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and ".lora_route" in n)
    return {
        "preset": preset.name,
        "method": preset.method,
        "trainable": trainable,
        "base": base,
        "router": router,
        "share": trainable / base,
        "share_without_router": (trainable - router) / base,
    }


def compare_paper() -> list[dict[str, Any]]:
    """Our shares beside the paper's printed ones, on the paper's base shape with FFN-only targets."""
    config = paper_base_config()
    return [{"row": row, "paper_percent": paper, **count_on_meta(config, name)} for row, name, paper in PAPER_SHARES]


# ----------------------------------------------------------------------------------------------------------------
# State, save and load


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every adapter tensor (trainable ones and saved buffers such as SMoRA's biases), detached.

    Keys: for native methods the module path in the base model plus the ``lora_*`` name; for PEFT methods PEFT's own
    ``get_peft_model_state_dict`` keys (what ``adapter_model.safetensors`` holds).
    """
    info = _info(model)
    if info["backend"] == "peft":
        from peft import get_peft_model_state_dict

        return {k: v.detach() for k, v in get_peft_model_state_dict(model).items()}
    return {k: v.detach() for k, v in model.state_dict().items() if ".lora_" in k or k.startswith("lora_")}


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into the adapter of ``model``; missing/unexpected keys or wrong shapes raise CmeError."""
    expected = adapter_state(model)
    check_state(expected, state)
    if _info(model)["backend"] == "peft":
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, state)
        return
    live = model.state_dict()
    with torch.no_grad():
        for key, value in state.items():
            live[key].copy_(value.to(live[key].dtype))


def save_adapter(
    model: nn.Module,
    out_dir: str | Path,
    *,
    base_info: dict[str, Any],
    base_model: str | None = None,
    run: dict[str, Any] | None = None,
) -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` + a ``README.md`` model card atomically.

    The folder is written under a temporary name next to ``out_dir`` and moved into place with ``os.replace``, so a
    crash never leaves a half-written adapter. ``base_info`` is ``cme_bench.models.architecture_info(base)``;
    ``base_model`` the model spec the adapter was trained on (recorded as ``base_model_name_or_path``: a folder, a
    hub id, or a built-in's materialised folder); ``run`` the run record, for the model card's training section.
    """
    info = _info(model)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    base_ref = base_reference(base_model) if base_model else (getattr(model, "name_or_path", None) or None)
    try:
        if info["backend"] == "peft":
            _write_peft(model, tmp, info, base_info, base_ref)
        else:
            _write_native(model, tmp, info, base_info, base_ref)
        modelcard.write_model_card(tmp, run=run)
        fsync_dir(tmp)
        replace_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def base_reference(spec: str) -> str | None:
    """What ``base_model_name_or_path`` should say for a model spec: a folder (built-ins and GGUF files: their
    materialised folder) or a hub id; None when nothing loadable can be named."""
    from cme_bench.models import materialize

    if spec.startswith("hf:"):
        return spec[3:]
    try:
        return str(materialize(spec))
    except CmeError:
        return None


def _write_native(
    model: nn.Module, tmp: Path, info: dict[str, Any], base_info: dict[str, Any], base_ref: str | None
) -> None:
    from safetensors.torch import save_file

    tmp.mkdir()
    tensors = {k: v.contiguous().cpu() for k, v in adapter_state(model).items()}
    save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": FORMAT, "method": info["method"]})
    config = {**cme_fields(info, base_info), "base_model_name_or_path": base_ref}
    (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _write_peft(
    model: nn.Module, tmp: Path, info: dict[str, Any], base_info: dict[str, Any], base_ref: str | None
) -> None:
    """PEFT's own folder, untouched but for ``base_model_name_or_path``; our fields go to a sidecar file, because
    PEFT warns about unknown keys in its config (and tells the user to upgrade PEFT)."""
    model.save_pretrained(str(tmp), safe_serialization=True)
    config_path = tmp / CONFIG_NAME
    config = json.loads(config_path.read_text())
    if base_ref:
        config["base_model_name_or_path"] = base_ref
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (tmp / modelcard.SIDECAR_NAME).write_text(json.dumps(cme_fields(info, base_info), indent=2, sort_keys=True) + "\n")


def load_adapter(base_model: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """Attach a saved adapter to ``base_model`` strictly (ours, PEFT's, or an authors' layout a method declares)."""
    saved = read_adapter(adapter_dir)
    with loading(saved.weights, "adapter weights"):
        state = saved.state()
    if saved.layout == "peft":
        return _load_peft(base_model, saved, state)
    if saved.foreign is None:  # an authors' release records no base model
        check_base(saved.base_model, base_model)
    preset = AdapterPreset(saved.preset, saved.method, saved.params, None, "")
    model = _apply_saved(base_model, preset, saved.target_modules)
    try:
        load_adapter_state(model, state)
    except CmeError:
        # Do not hand the caller back a base model carrying a half-loaded adapter.
        _unwrap_native(model)
        model._cme_adapter = None
        raise
    return model


def _apply_saved(base_model: nn.Module, preset: AdapterPreset, targets: list[str]) -> nn.Module:
    """Re-apply with the exact saved module paths, so the layer set cannot drift with the target patterns."""
    spec = get_method(preset.method)
    params = spec.validate({**preset.params}, where="saved adapter config")
    exact = AdapterPreset(preset.name, spec.name, {**params, "target_modules": targets}, None, "")
    model = apply_adapter(base_model, exact)
    model._cme_adapter["params"] = params
    return model


def _load_peft(base_model: nn.Module, saved: AdapterFile, state: dict[str, torch.Tensor]):
    from peft import PeftConfig, get_peft_model

    if saved.base_model:
        check_base(saved.base_model, base_model)
    with warnings.catch_warnings():
        # Folders saved by older cme-bench carry a "cme_bench" key in PEFT's config; PEFT warns and ignores it.
        warnings.filterwarnings("ignore", message=r"Unexpected keyword arguments \['cme_bench'\]")
        peft_config = PeftConfig.from_pretrained(str(saved.folder))
    peft_config.inference_mode = False
    # The base in hand was checked by architecture above; the recorded name is for tools that load the base
    # themselves. Without this PEFT warns that the name "changed" to the in-memory model's (often none).
    peft_config.base_model_name_or_path = None
    targets = find_targets(base_model, targets_from_peft(peft_config.target_modules), nn.Linear)
    was_training = base_model.training
    model = get_peft_model(base_model, peft_config)
    model.train(was_training)
    spec = get_method(saved.method)
    model._cme_adapter = {
        "method": saved.method,
        "preset": saved.preset,
        "params": saved.params,
        "backend": spec.backend,
        "routed": spec.routed,
        "mergeable": spec.mergeable,
        "targets": targets,
        "total_steps": getattr(peft_config, "total_step", None),
    }
    try:
        load_adapter_state(model, state)
    except CmeError:
        model.unload()  # restores the base model's own modules
        raise
    return model


# ----------------------------------------------------------------------------------------------------------------
# Merge


def merge_adapter(model: nn.Module) -> nn.Module:
    """Fold a mergeable adapter into the base weights and return the plain HF model.

    Routed methods raise CmeError: their weights depend on each token, so no single weight matrix reproduces them.
    """
    info = _info(model)
    if not info["mergeable"]:
        raise CmeError(
            f"{info['method']} cannot be merged: its expert weights are computed per token by a router, so no "
            "single weight matrix reproduces it. Evaluate it unmerged with the HF backend (collapsing the routing to "
            "a constant and merging is an approximation that a report would have to label)."
        )
    if info["backend"] == "peft":
        merged = model.merge_and_unload()
    else:
        merged = _merge_native(model)
    merged._cme_adapter = None
    for p in merged.parameters():
        p.requires_grad_(False)
    return merged


def _merge_native(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            layer.base_layer.weight += layer.delta_weight().to(layer.base_layer.weight.dtype)
    return _unwrap_native(model)


def _unwrap_native(model: nn.Module) -> nn.Module:
    """Put every wrapped base module back in place of its adapter layer (base parameters stay frozen)."""
    for path, layer in adapter_layers(model):
        parent_path, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, child, layer.base_layer)
    return model


def methods() -> list[MethodSpec]:
    """Every registered method, sorted by name."""
    return [TUNERS.get(name) for name in TUNERS.names()]
