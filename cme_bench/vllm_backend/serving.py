"""How each adapter folder is served by vLLM: the serving plan. Each method says how (``MethodSpec.serving``):

- ``"lora"``: a PEFT LoRA served as is through vLLM's LoRA support, by request, many adapters on one engine; native
  methods that are *exactly* plain LoRAs (``MethodSpec.to_lora``, e.g. MoSLoRA's B' = B M) are converted once into a
  PEFT LoRA folder in the cache and served the same way;
- ``"merged"`` (PEFT formats vLLM rejects or does not know, such as DoRA): merged into the base weights once (PEFT's
  ``merge_and_unload``) and served as a separate base model, one engine each; ``lora_serving="merged"`` does the
  same for the ``"lora"`` methods (faster decoding on CPU, no sharing of the base engine);
- ``"routed"``: the out-of-tree model ``CmeRoutedLlamaForCausalLM`` over the unchanged base folder, one engine each;
  it reads the adapter folder itself (any layout ``tuners.checkpoint.read_adapter`` reads).

Conversions are cached under ``cache_dir()/vllm`` keyed by the adapter files' digest, and written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from cme_bench.errors import CmeError
from cme_bench.paths import cache_dir
from cme_bench.results import write_dir_atomic
from cme_bench.tuners import get_method
from cme_bench.tuners.checkpoint import CONFIG_NAME as ADAPTER_CONFIG
from cme_bench.tuners.checkpoint import WEIGHTS_NAME as ADAPTER_WEIGHTS
from cme_bench.tuners.checkpoint import AdapterFile, read_adapter

log = logging.getLogger(__name__)

# vLLM's LoRAConfig.max_lora_rank accepts only these values (vllm/config/lora.py, MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Bases our routed model (a subclass of vLLM's Llama) can load: Llama layout, no attention biases.
ROUTED_BASES = ("llama",)

Kind = Literal["base", "lora", "merged", "routed"]


@dataclass
class ServingPlan:
    """What to load into vLLM for one (base, adapter) pair.

    ``engine_key`` groups plans that can share one engine: every ``base`` and ``lora`` plan over the same base folder
    shares one (LoRAs by request); ``merged`` and ``routed`` plans each need their own.
    """

    kind: Kind
    model_dir: Path
    adapter_dir: Path | None = None
    method: str | None = None
    lora_dir: Path | None = None  # the PEFT LoRA folder vLLM loads (the adapter itself or its conversion)
    rank: int | None = None
    hf_overrides: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    eager: bool = False  # the routed math has data-dependent shapes: the engine must run eagerly

    @property
    def engine_key(self) -> tuple[str, str]:
        if self.kind in ("base", "lora"):
            return (str(self.model_dir), "")
        return (str(self.model_dir), str(self.adapter_dir))


def lora_rank_limit(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that is >= ``rank``."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise CmeError(f"LoRA rank {rank} is above vLLM's largest max_lora_rank ({VLLM_LORA_RANKS[-1]}); use --backend hf")


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        p = folder / name
        if p.is_file():
            h.update(name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def plan(model_dir: str | Path, adapter_dir: str | Path | None, *, lora_serving: str = "request") -> ServingPlan:
    """The serving plan for ``adapter_dir`` over ``model_dir`` (converting or merging into the cache if needed).

    ``lora_serving``: ``"request"`` (default) serves LoRA-family adapters through vLLM's LoRA support, many adapters
    on one base engine; ``"merged"`` merges them into a copy of the base weights instead (one engine per adapter,
    but decoding at base-model speed: vLLM's LoRA kernels on CPU are PyTorch fallbacks, ~2.5x slower than the base).
    """
    if lora_serving not in ("request", "merged"):
        raise CmeError(f"lora_serving must be 'request' or 'merged', got {lora_serving!r}")
    model_dir = Path(model_dir).resolve()
    if adapter_dir is None:
        return ServingPlan("base", model_dir)
    adapter_dir = Path(adapter_dir).resolve()
    saved = read_adapter(adapter_dir)
    method = saved.method
    spec = get_method(method)
    serving = spec.serving
    if serving == "routed":
        from cme_bench.vllm_backend.plugin import ROUTED_ARCHITECTURE

        model_type = _model_type(model_dir)
        if model_type not in ROUTED_BASES:
            raise CmeError(
                f"routed adapters are served on vLLM for Llama-family bases (model_type {', '.join(ROUTED_BASES)}); "
                f"{model_dir.name} is {model_type!r}: use --backend hf"
            )
        overrides = {"architectures": [ROUTED_ARCHITECTURE], "cme_adapter": str(adapter_dir)}
        eager = spec.vllm is not None and spec.vllm.eager
        return ServingPlan("routed", model_dir, adapter_dir, method, hf_overrides=overrides, eager=eager)
    if serving == "merged" or (serving == "lora" and lora_serving == "merged"):
        return _merged_plan(model_dir, adapter_dir, method)
    if serving != "lora":
        raise CmeError(f"adapter method {method!r} has no vLLM serving path; use --backend hf")
    if spec.to_lora is None:  # a PEFT LoRA: vLLM loads the folder itself
        _check_plain_lora(saved.config, adapter_dir)
        return ServingPlan("lora", model_dir, adapter_dir, method, adapter_dir, _peft_rank(saved.config))
    out = cache_dir() / "vllm" / "lora" / f"{method}-{_digest(adapter_dir)}"
    if not (out / ADAPTER_WEIGHTS).is_file():
        write_dir_atomic(out, lambda tmp: convert_to_lora(adapter_dir, tmp), overwrite=True)
    rank = _peft_rank(json.loads((out / ADAPTER_CONFIG).read_text()))
    note = f"{method} converted exactly to a rank-{rank} LoRA"
    return ServingPlan("lora", model_dir, adapter_dir, method, out, rank, note=note)


def _merged_plan(model_dir: Path, adapter_dir: Path, method: str) -> ServingPlan:
    out = cache_dir() / "vllm" / "merged" / f"{method}-{_digest(adapter_dir)}-{_digest_model(model_dir)}"
    if not (out / "config.json").is_file():
        write_dir_atomic(out, lambda tmp: merge_into_base(model_dir, adapter_dir, tmp), overwrite=True)
    return ServingPlan("merged", out, adapter_dir, method, note=f"{method} merged into the base weights")


def _model_type(model_dir: Path) -> str | None:
    try:
        return json.loads((Path(model_dir) / "config.json").read_text()).get("model_type")
    except (OSError, json.JSONDecodeError):
        return None


def _digest_model(model_dir: Path) -> str:
    h = hashlib.sha256(str(model_dir).encode())
    for p in sorted(model_dir.glob("*.safetensors")):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def _peft_rank(cfg: dict[str, Any]) -> int:
    ranks = [int(cfg.get("r", 8)), *(int(v) for v in (cfg.get("rank_pattern") or {}).values())]
    return max(ranks)


def _check_plain_lora(cfg: dict[str, Any], folder: Path) -> None:
    problems = []
    if cfg.get("use_dora"):
        problems.append("use_dora is set (vLLM rejects DoRA; it is served merged)")
    if cfg.get("modules_to_save"):
        problems.append(f"modules_to_save={cfg['modules_to_save']} (vLLM requires none)")
    if cfg.get("bias", "none") != "none":
        problems.append(f"bias={cfg['bias']!r} (vLLM supports 'none' only)")
    if problems:
        raise CmeError(f"LoRA adapter {folder} cannot be served by vLLM: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------------------------
# Exact conversions to plain LoRA


def _modules(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        module, sep, leaf = key.partition(".lora_")
        if not sep:
            raise CmeError(f"unexpected adapter tensor {key!r} (expected '<module>.lora_*')")
        out.setdefault(module, {})["lora_" + leaf] = t
    return out


def convert_to_lora(adapter_dir: Path, out: Path) -> None:
    """Write a PEFT LoRA folder equivalent to an adapter whose method converts exactly (``MethodSpec.to_lora``)."""
    from safetensors.torch import save_file

    saved: AdapterFile = read_adapter(adapter_dir)
    to_lora = get_method(saved.method).to_lora
    if to_lora is None:
        raise CmeError(f"no LoRA conversion for {saved.method!r}")
    converted: dict[str, torch.Tensor] = {}
    targets = set()
    rank, alpha = 0, 0.0
    for module, leaves in _modules(saved.state()).items():
        a, b, rank, alpha = to_lora(leaves, saved.params)
        prefix = module if module.startswith("base_model.model.") else f"base_model.model.{module}"
        converted[f"{prefix}.lora_A.weight"] = a.contiguous().float()
        converted[f"{prefix}.lora_B.weight"] = b.contiguous().float()
        targets.add(module.rsplit(".", 1)[-1])
    peft_cfg = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": sorted(targets),
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "base_model_name_or_path": None,
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(converted, str(out / ADAPTER_WEIGHTS))
    (out / ADAPTER_CONFIG).write_text(json.dumps(peft_cfg, indent=2))
    # Provenance beside, not inside, the PEFT config (PEFT warns about unknown config keys).
    (out / "cme_bench_source.json").write_text(
        json.dumps({"converted_from": saved.method, "source": str(adapter_dir)})
    )


def merge_into_base(model_dir: Path, adapter_dir: Path, out: Path) -> None:
    """Merge a mergeable adapter (``serving="merged"``; any ``"lora"`` one on request) into the base weights and save
    a full model folder.

    Uses ``cme_bench.adapters`` (strict key check on load, PEFT's ``merge_and_unload``), so the merged weights are
    exactly what the HF backend would evaluate.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cme_bench.adapters import load_adapter, merge_adapter

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    merged = merge_adapter(load_adapter(base, adapter_dir))
    merged.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    log.info("merged %s into %s -> %s", adapter_dir, model_dir, out)
