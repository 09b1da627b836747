"""Training provenance that travels with a saved adapter: ``adapter/training.json``.

An adapter folder copied elsewhere and evaluated with ``cme-bench eval --adapter-path`` must still say how it was
made and what it cost: its training configuration and budget, the digest of the exact training examples, its
identity (the training block and seed that an evaluation's identity builds on) and the training figures (seconds,
tokens/s, peak memory, loss curve and its summary). The runner writes it right after saving the adapter; an
evaluation of the folder copies it into its own run record (:func:`apply`), so the leaderboard shows the adapter's
training settings and costs instead of the evaluation command's defaults.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cme_bench import results
from cme_bench.identity import digest

log = logging.getLogger(__name__)

FILE_NAME = "training.json"
FORMAT, FORMAT_VERSION = "cme-bench-training", 1
# RunConfig fields that describe how an adapter was trained (the evaluation command's values mean nothing for them).
TRAINING_FIELDS = (
    "model", "adapter", "suite", "tasks", "seed", "max_steps", "epochs", "batch_size", "grad_accum", "learning_rate",
    "max_seq_len", "train_cap", "mix", "temperature", "extra_data",
)  # fmt: skip


def _loss_summary(curve: Sequence[Sequence[float]]) -> dict[str, Any] | None:
    losses = [float(loss) for _, loss in curve]
    if not losses:
        return None
    tail = losses[-max(1, len(losses) // 10) :]
    return {"first": losses[0], "last": losses[-1], "min": min(losses), "mean_last_10pct": sum(tail) / len(tail)}


def write(adapter_dir: Path, record: Mapping[str, Any], train_records: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``adapter_dir/training.json`` from the run record of the run that trained it (atomically)."""
    from cme_bench.mixture import mixture_summary

    training = dict(record.get("training") or {})
    config = record.get("config") or {}
    ident = record.get("identity") or {}
    components = ident.get("components") or {}
    environment = record.get("environment") or {}
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "run_id": record.get("run_id"),
        "created_at": results.now(),
        "config": {k: config.get(k) for k in TRAINING_FIELDS},
        "identity": {
            "digest": ident.get("digest"),
            "seed_group": ident.get("seed_group"),
            "components": {k: components.get(k) for k in ("model", "adapter", "training", "seed")},
        },
        "model": record.get("model"),
        "adapter": record.get("adapter"),
        "data": {
            "digest": digest([[r.get("task"), r.get("prompt"), r.get("target")] for r in train_records]),
            "examples": len(train_records),
            "sources": mixture_summary(train_records),
        },
        "training": training,
        "loss": _loss_summary(training.get("loss_curve") or []),
        "costs": record.get("costs") or {},
        "environment": {k: environment.get(k) for k in ("git_revision", "git_dirty", "packages")},
    }
    path = Path(adapter_dir) / FILE_NAME
    results.write_json_atomic(path, doc)
    return path


def read(adapter_dir: Path) -> dict[str, Any] | None:
    """The provenance of a saved adapter, or None (another tool's adapter, or one saved before provenance existed)."""
    path = Path(adapter_dir) / FILE_NAME
    if not path.is_file():
        return None
    try:
        doc = results.read_json(path)
    except (OSError, ValueError) as err:
        log.warning("%s is unreadable (%s); evaluating without training provenance", path, err)
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        log.warning("%s is not a cme-bench training provenance file; ignored", path)
        return None
    return doc


def apply(record: dict[str, Any], provenance: Mapping[str, Any] | None, adapter_dir: Path) -> None:
    """Make an evaluation record describe the adapter's training (or say it is unknown), not the eval defaults."""
    config = record.setdefault("config", {})
    if provenance is None:
        for key in TRAINING_FIELDS:
            if key not in ("model", "adapter", "suite", "tasks", "seed"):
                config[key] = None  # unknown: this adapter was trained elsewhere
        return
    trained = provenance.get("config") or {}
    for key in TRAINING_FIELDS:
        if key not in ("model", "adapter", "tasks", "suite", "seed"):
            config[key] = trained.get(key)
    config["train_seed"] = trained.get("seed")
    config["train_tasks"] = trained.get("tasks")
    record["training"] = provenance.get("training")
    record["costs"] = {**(provenance.get("costs") or {}), **(record.get("costs") or {})}
    adapter = record.get("adapter")
    if isinstance(adapter, dict):
        adapter["provenance"] = {
            "file": str(Path(adapter_dir) / FILE_NAME),
            "run_id": provenance.get("run_id"),
            "identity": (provenance.get("identity") or {}).get("digest"),
            "data_digest": (provenance.get("data") or {}).get("digest"),
            "loss": provenance.get("loss"),
        }
