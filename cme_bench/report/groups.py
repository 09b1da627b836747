"""Which run records belong together: seed groups (rows that differ only by seed) and evaluation sets (runs that were
scored on the same documents, so they may be ranked against each other).

Both keys come from the record's ``identity`` block (schema v2: ``identity.seed_group`` and ``identity.eval_set``,
digests written by the runner) when present. Older records (schema v1) have no identity; their keys are built from
the configuration fields that change a run's numbers, so v1 and v2 records are grouped by the same rule.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from cme_bench.report.load import RunRecord

# Config fields that do not change a run's numbers (bookkeeping, paths, speed-only settings). The seed is left out of
# the seed-group key on purpose; everything else in the config is part of it.
NOT_IDENTITY = frozenset(
    {
        "seed",
        "tag",
        "name",
        "output",
        "force",
        "resume",
        "checkpoint_every",
        "include_path",
        "eval_batch_size",
        "trust_remote_code",
        "gradient_checkpointing",
        "adapter",  # the preset's name: the resolved method and params below identify the adapter
        "model",  # the model's spec: the fingerprint (or name) below identifies it
    }
)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _identity(run: RunRecord, key: str) -> str | None:
    value = run.section("identity").get(key)
    return str(value) if isinstance(value, str) and value else None


def tasks_of(run: RunRecord) -> list[str]:
    """The tasks a run was evaluated on: its metrics, else the configured task list."""
    if run.metrics:
        return sorted(run.metrics)
    tasks = run.section("config").get("tasks")
    return sorted(map(str, tasks)) if isinstance(tasks, list) else []


def eval_set_key(run: RunRecord) -> str:
    """Runs with equal keys were scored on the same documents: ``identity.eval_set``, else (task names, limit)."""
    return _identity(run, "eval_set") or "v1:" + _digest(
        {"tasks": tasks_of(run), "limit": run.section("config").get("limit")}
    )


def seed_group_key(run: RunRecord) -> str:
    """Runs with equal keys differ only by seed: ``identity.seed_group``, else a digest of the identifying config."""
    found = _identity(run, "seed_group")
    if found:
        return found
    config = {k: v for k, v in run.section("config").items() if k not in NOT_IDENTITY}
    model = run.section("model")
    adapter = run.section("adapter")
    return "v1:" + _digest(
        {
            "config": config,
            "model": model.get("fingerprint") or run.model_name,
            "method": run.method,
            "params": adapter.get("params"),
            "eval_set": eval_set_key(run),
        }
    )


def seed_of(run: RunRecord) -> int | str | None:
    seed = run.section("config").get("seed")
    return seed if isinstance(seed, (int, str)) and not isinstance(seed, bool) else None


def seed_groups(records: Iterable[RunRecord]) -> dict[str, list[RunRecord]]:
    """Successful runs grouped by ``seed_group_key`` (members sorted by seed, then run id), in first-seen order.

    Unsuccessful runs are left out: a failed seed never enters a mean, it is listed on its own with its status. Two
    records with the same key *and* the same seed are repeats, not seeds: the second one opens a group of its own
    (key suffixed ``#2``), so a mean is always over distinct seeds.
    """
    groups: dict[str, list[RunRecord]] = {}
    for run in records:
        if not run.ok:
            continue
        base, copy = seed_group_key(run), 1
        key = base
        while key in groups and any(seed_of(m) == seed_of(run) for m in groups[key]):
            copy += 1
            key = f"{base}#{copy}"
        groups.setdefault(key, []).append(run)
    for members in groups.values():
        members.sort(key=lambda r: (str(seed_of(r)), r.run_id))
    return groups


def differing_settings(rows: Mapping[str, Mapping[str, str]]) -> dict[str, list[str]]:
    """For each row key, the ``name value`` settings whose value is not the same in every row that has one (in field
    order; a row without a field, such as a base model's learning rate, neither varies it nor shows it)."""
    fields: list[str] = []
    for settings in rows.values():
        fields += [f for f in settings if f not in fields]
    varying = [f for f in fields if len({s[f] for s in rows.values() if s.get(f)}) > 1]
    return {key: [f"{f} {s[f]}" for f in varying if s.get(f)] for key, s in rows.items()}
