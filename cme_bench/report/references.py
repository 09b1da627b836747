"""Reference rows: figures reported elsewhere (a paper's table), with their source, shown beside measured rows.

A references file is YAML: optional ``defaults`` (source fields shared by every row) and ``rows``, each with a
``label`` and a ``value`` (on the leaderboard's scale, percent) plus source fields (``paper``, ``table``, ``model``,
``benchmark``, ``metric``, ``confidence``) and optional figures (``training_hours``, ``trainable_percent``). cme-bench
ships the TeamLoRA paper's CME averages (``references.yaml`` beside this module). Reference rows are never ranked,
never averaged and carry no intervals: nothing here reproduces them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cme_bench.errors import CmeError

BUILTIN = Path(__file__).resolve().parent / "references.yaml"
SOURCE_FIELDS = ("paper", "table", "model", "benchmark", "metric", "confidence")


@dataclass(frozen=True)
class Reference:
    label: str
    value: float  # percent
    method: str
    paper: str
    table: str
    model: str
    benchmark: str
    metric: str
    confidence: str
    training_hours: float | None
    trainable_percent: float | None
    file: str


def _number(value: Any, where: str, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CmeError(f"{where}: {key!r} must be a number, got {value!r}")
    return float(value)


def load_references(path: Path | str) -> list[Reference]:
    """The rows of one references file; a malformed file raises CmeError naming the file and the row."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise CmeError(f"cannot read references file {str(path)!r}: {err}") from err
    if not isinstance(data, Mapping) or not isinstance(data.get("rows"), list):
        raise CmeError(f"references file {str(path)!r}: expected a mapping with a 'rows' list")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        raise CmeError(f"references file {str(path)!r}: 'defaults' must be a mapping")
    out = []
    for i, row in enumerate(data["rows"]):
        where = f"{path} row {i + 1}"
        if not isinstance(row, Mapping):
            raise CmeError(f"{where}: a row must be a mapping")
        row = {**defaults, **row}
        if not isinstance(row.get("label"), str) or not row["label"]:
            raise CmeError(f"{where}: 'label' is required")
        value = _number(row.get("value"), where, "value")
        if value is None:
            raise CmeError(f"{where}: 'value' is required")
        out.append(
            Reference(
                label=row["label"],
                value=value,
                method=str(row.get("method") or ""),
                **{k: str(row.get(k) or "") for k in SOURCE_FIELDS},
                training_hours=_number(row.get("training_hours"), where, "training_hours"),
                trainable_percent=_number(row.get("trainable_percent"), where, "trainable_percent"),
                file=str(path),
            )
        )
    return out


def references(extra: Iterable[Path | str] = (), builtin: bool = True) -> list[Reference]:
    """The shipped reference rows (unless ``builtin`` is False) followed by those of each ``extra`` file."""
    files = ([BUILTIN] if builtin else []) + [Path(p) for p in extra]
    return [ref for f in files for ref in load_references(f)]
