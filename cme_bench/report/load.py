"""Reading run records (``run.json`` schema v1 and v2, see docs/ARCHITECTURE.md), per-sample logs and profile files.

The report must survive a results folder that other processes are writing into: a malformed or partial record is
skipped with a warning naming the file, a bad line in a sample log is skipped with a warning, and nothing here
raises on content (only on a results folder that does not exist).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from cme_bench.errors import CmeError

log = logging.getLogger(__name__)

SCHEMA_VERSIONS = (1, 2)  # v2 adds the "identity" block (digests of the run, its seed group and evaluation set)
STATUSES = ("running", "success", "failed", "cancelled")
BASE_METHOD = "none"  # the adapter method shown for a base-model row


@dataclass(frozen=True)
class Metric:
    metric: str
    value: float | None
    stderr: float | None
    n: int | None


@dataclass(frozen=True)
class RunRecord:
    """One run record, validated just enough that the report can rely on the fields it reads."""

    path: Path  # the run.json file
    data: Mapping[str, Any] = field(repr=False)
    metrics: Mapping[str, Metric] = field(repr=False)

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def run_id(self) -> str:
        return str(self.data["run_id"])

    @property
    def name(self) -> str:
        return str(self.data.get("name") or self.run_id)

    @property
    def status(self) -> str:
        return str(self.data["status"])

    @property
    def ok(self) -> bool:
        return self.status == "success"

    @property
    def train_only(self) -> bool:
        """A successful ``cme-bench train`` record: trained, never evaluated, so it has no scores to rank."""
        return self.ok and not self.metrics and _is_train_only(self.data)

    def section(self, key: str) -> Mapping[str, Any]:
        value = self.data.get(key)
        return value if isinstance(value, Mapping) else {}

    @cached_property
    def model_name(self) -> str:
        return str(self.section("model").get("name") or self.section("config").get("model") or "?")

    @cached_property
    def method(self) -> str:
        adapter = self.section("adapter")
        return str(adapter.get("method") or self.section("config").get("adapter") or BASE_METHOD)

    @cached_property
    def preset(self) -> str:
        return str(self.section("adapter").get("preset") or self.method)

    @cached_property
    def is_base(self) -> bool:
        return self.method in (BASE_METHOD, "base", "")

    @cached_property
    def _folder_abs(self) -> Path:
        return Path(os.path.normpath(self.folder.absolute()))

    def sample_path(self, task: str) -> Path | None:
        rel = self.section("samples").get(task)
        if not isinstance(rel, str) or not rel:
            return None
        # A record must not point the report at files outside its own run folder (normpath, not resolve(): this runs
        # 15,000 times for a large report and must not stat every path component).
        path = Path(os.path.normpath(self._folder_abs / rel))
        if self._folder_abs not in path.parents:
            log.warning("%s: sample path %r for task %r leaves the run folder; ignored", self.path, rel, task)
            return None
        return path


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _parse_metrics(raw: Any) -> dict[str, Metric]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError("'metrics' is not an object")
    out = {}
    for task, m in raw.items():
        if not isinstance(m, Mapping):
            raise ValueError(f"metrics[{task!r}] is not an object")
        n = m.get("n")
        out[str(task)] = Metric(
            metric=str(m.get("metric") or "score"),
            value=_number(m.get("value")),
            stderr=_number(m.get("stderr")),
            n=int(n) if isinstance(n, int) and not isinstance(n, bool) else None,
        )
    return out


def _is_train_only(data: Mapping[str, Any]) -> bool:
    return data.get("evaluation") is None and isinstance(data.get("training"), Mapping)


def parse_record(path: Path, data: Any) -> RunRecord:
    """Validate a decoded run.json; raises ValueError naming the first problem."""
    if not isinstance(data, Mapping):
        raise ValueError("top level is not an object")
    if data.get("schema_version") not in SCHEMA_VERSIONS:
        expected = " or ".join(map(str, SCHEMA_VERSIONS))
        raise ValueError(f"schema_version is {data.get('schema_version')!r}, expected {expected}")
    if not isinstance(data.get("run_id"), str) or not data["run_id"]:
        raise ValueError("'run_id' is missing or not a string")
    if data.get("status") not in STATUSES:
        raise ValueError(f"'status' is {data.get('status')!r}, expected one of {', '.join(STATUSES)}")
    for key in ("config", "model", "adapter", "training", "evaluation", "samples", "environment", "identity"):
        if data.get(key) is not None and not isinstance(data[key], Mapping):
            raise ValueError(f"{key!r} is not an object")
    metrics = _parse_metrics(data.get("metrics"))
    # A train-only record (`cme-bench train`: training, no evaluation) is a successful run without metrics.
    if data["status"] == "success" and not metrics and not _is_train_only(data):
        raise ValueError("status is 'success' but 'metrics' is empty")
    return RunRecord(path=path, data=data, metrics=metrics)


def iter_record_files(results: Path, exclude: Path | None = None) -> Iterator[Path]:
    excluded = exclude.resolve() if exclude is not None else None
    for path in sorted(results.rglob("run.json")):
        if any(part.startswith(".") for part in path.relative_to(results).parts):
            continue  # an unfinished attempt being built or left by a killed process (cme_bench.runlock)
        if excluded is not None and (excluded == path.resolve().parent or excluded in path.resolve().parents):
            continue
        yield path


def load_runs(results: Path | str, exclude: Path | None = None) -> list[RunRecord]:
    """Every readable run record under ``results`` (recursively), sorted by run id; bad ones are skipped."""
    results = Path(results)
    if not results.is_dir():
        why = "is not a folder" if results.exists() else "does not exist"
        raise CmeError(f"results folder {str(results)!r} {why} (pass --results DIR)")
    runs: dict[str, RunRecord] = {}
    for path in iter_record_files(results, exclude):
        try:
            record = parse_record(path, json.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as err:
            log.warning("skipping malformed run record %s: %s", path, err)
            continue
        if record.run_id in runs:
            log.warning("skipping %s: run id %r already read from %s", path, record.run_id, runs[record.run_id].path)
            continue
        runs[record.run_id] = record
    return [runs[k] for k in sorted(runs)]


def load_samples(run: RunRecord, task: str) -> list[dict[str, Any]]:
    """The per-sample log of one run on one task (empty if absent).

    Lines without an int/str ``doc_id`` or a numeric ``score`` are skipped, with one warning per file.
    """
    path = run.sample_path(task)
    if path is None or not path.is_file():
        if path is not None:
            log.warning("%s: sample log %s for task %r is missing", run.path, path, task)
        return []
    # split("\n"), not splitlines(): U+2028 and friends may occur raw inside a JSON string.
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").split("\n") if line.strip()]
    try:
        # Fast path: one C-level parse of the whole file as a JSON array (a raw newline cannot occur inside a JSON
        # string, so newlines only separate records). Any bad line sends us to the line-by-line path.
        items: list[Any] = json.loads("[" + ",".join(lines) + "]")
    except json.JSONDecodeError:
        items = [_loads_or_none(line) for line in lines]
    # The attempt that wrote this task: its own (tasks merged into a record come from several), else the record's.
    # A sample log is written whole by one attempt, so its first line says which one.
    attempt = ((run.data.get("metrics") or {}).get(task) or {}).get("attempt") or run.data.get("attempt")
    first = items[0] if items and type(items[0]) is dict else {}
    other = first.get("attempt")
    if attempt and other not in (None, attempt):
        log.warning(
            "%s: %s holds samples of another attempt (%s) than the record (%s); ignored for task %r",
            run.path,
            path,
            other,
            attempt,
            task,
        )
        return []
    samples, bad = [], 0
    for item in items:
        # Checked inline (not via _number) because this loop sees every sample of every run.
        score = item.get("score") if type(item) is dict else None
        if type(score) is int:
            score = float(score)
        if type(score) is not float or not math.isfinite(score) or type(item.get("doc_id")) not in (int, str):
            bad += 1
            continue
        item["score"] = score
        samples.append(item)
    if bad:
        log.warning("%s: skipped %d malformed line(s)", path, bad)
    return samples


def _loads_or_none(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None  # counted as a bad line by the caller


# Numeric fields of a profile row that describe the variant rather than a cost.
PROFILE_SHAPE_FIELDS = frozenset({"experts", "rank", "total_rank", "seed", "batch", "seq_len"})


def load_profiles(results: Path) -> dict[tuple[str, str], dict[str, float]]:
    """Cost rows from ``results/**/profile*.json`` keyed by (model, adapter); top-level numeric fields only.

    Accepted shapes (kept loose on purpose, ``cme_bench.profile`` owns the format): a list of rows, or an object
    with a ``rows`` list. A row has ``model`` and ``adapter`` (its label) and optionally ``preset``/``method``; it is
    found under its label (an exact label always wins), and under its preset or method where exactly one row has that
    preset or method (a preset profiled in several forms or ranks is ambiguous, so only its labels match).
    """
    rows: list[Mapping[str, Any]] = []
    for path in sorted(results.rglob("profile*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            log.warning("skipping unreadable profile file %s: %s", path, err)
            continue
        items = data.get("rows") if isinstance(data, Mapping) else data
        if not isinstance(items, list):
            log.warning("skipping profile file %s: no list of rows", path)
            continue
        rows += [r for r in items if isinstance(r, Mapping) and "model" in r]
    keyed: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        names = {row.get("adapter"), row.get("preset"), row.get("method")} - {None, ""}
        for name in names or {BASE_METHOD}:
            keyed.setdefault((str(row["model"]), str(name)), []).append(row)
    out: dict[tuple[str, str], dict[str, float]] = {}
    for key, matches in keyed.items():
        exact = [m for m in matches if m.get("adapter") == key[1]]
        # A row whose own label is the key wins; otherwise the preset/method name must be unambiguous.
        chosen = exact or (matches if len(matches) == 1 else [])
        if chosen:
            costs = {str(k): float(v) for k, v in chosen[-1].items() if _number(v) is not None}
            out[key] = {k: v for k, v in costs.items() if k not in PROFILE_SHAPE_FIELDS}
    return out
