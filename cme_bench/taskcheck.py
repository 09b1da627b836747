"""``cme-bench tasks validate``: checks every task YAML and reports each problem with its file and key.

lm-eval's own index skips a YAML it cannot parse with only a debug log, so a broken task would silently vanish.
This module globs the folders itself and checks, per file:

1. YAML syntax, ``include:`` targets and every ``!function`` reference (resolved like lm-eval does);
2. task configs: a safe, prefixed name, no unknown keys (typos such as ``doc_to_txt``), local ``data_files`` of the
   json/csv/parquet/text/arrow builders that exist, a ``primary_metric`` that the task actually reports, and the
   cme-bench ``metadata`` fields the reporter uses: a missing one is a *warning* (any YAML plain lm-eval accepts is
   a valid task; ``tasks validate --strict`` turns warnings into errors);
3. group configs: members that exist, ``aggregate_metric_list`` present;
4. with data (the default): the task loads, its first documents render, and a perfect prediction (the target
   itself) scores 1.0 on the primary metric through lm-eval's ``process_results`` (no training documents: a
   warning, the task can still be evaluated). Hub tasks are checked against
   the hand-written rows in ``tasks/<task>/schema_rows.json`` instead of the network.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cme_bench import taskreg
from cme_bench.errors import CmeError
from cme_bench.paths import tasks_dir
from cme_bench.registry import suggest

log = logging.getLogger(__name__)
SCHEMA_ROWS = "schema_rows.json"
_IGNORE_DIRS = {"__pycache__", ".ipynb_checkpoints"}


LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")  # datasets builders that read local data_files


@dataclass(frozen=True)
class Problem:
    path: str
    key: str
    message: str
    level: str = "error"  # "error" | "warning" (a warning fails validation only with --strict)

    def __str__(self) -> str:
        return f"{self.path}: {self.key}: {self.message}" + (" [warning]" if self.level == "warning" else "")


class _Fn(str):
    """A ``!function`` reference kept unresolved, so that a failure can be blamed on its key."""


def _raw_loader() -> type:
    class Loader(yaml.SafeLoader): ...

    Loader.add_constructor("!function", lambda loader, node: _Fn(loader.construct_scalar(node)))
    return Loader


def _load_raw(path: Path, problems: list[Problem], seen: frozenset[Path] = frozenset()) -> dict[str, Any] | None:
    """The YAML with includes merged (local keys win, as in lm-eval), ``!function`` values as ``_Fn``."""
    try:
        cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=_raw_loader())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(syntax)"
        problems.append(Problem(str(path), where, f"YAML syntax error: {getattr(err, 'problem', err)}"))
        return None
    if not isinstance(cfg, dict):
        problems.append(Problem(str(path), "(top level)", f"expected a mapping, got {type(cfg).__name__}"))
        return None
    includes = cfg.pop("include", None)
    merged: dict[str, Any] = {}
    for inc in [includes] if isinstance(includes, str) else includes or []:
        inc_path = (path.parent / inc).resolve()
        if inc_path in seen or not inc_path.is_file():
            why = "include cycle" if inc_path in seen else "file not found"
            problems.append(Problem(str(path), "include", f"{inc!r}: {why} ({inc_path})"))
            return None
        sub = _load_raw(inc_path, problems, seen | {path.resolve()})
        if sub is None:
            return None
        for key, value in sub.items():  # functions keep the folder of the file that names them
            merged[key] = (value, inc_path) if isinstance(value, _Fn) else value
    merged.update({k: (v, path) if isinstance(v, _Fn) else v for k, v in cfg.items()})
    return merged


def resolved_config(path: Path) -> dict[str, Any] | None:
    """A task YAML with its includes merged (local keys win); each top-level ``!function`` value is a tuple
    (reference, file that names it). None when the file does not parse (``validate`` says why)."""
    return _load_raw(Path(path), [])


def _check_functions(path: Path, cfg: dict[str, Any], problems: list[Problem]) -> None:
    from lm_eval.tasks._yaml_loader import _import_func_in_yml

    for key, value in cfg.items():
        if isinstance(value, tuple) and isinstance(value[0], _Fn):
            try:
                _import_func_in_yml(str(value[0]), value[1].parent)
            except Exception as err:
                problems.append(Problem(str(path), key, f"!function {value[0]}: {type(err).__name__}: {err}"))


def _check_task(path: Path, cfg: dict[str, Any], builtin: bool, problems: list[Problem]) -> None:
    from lm_eval.config.task import TaskConfig

    from cme_bench.registry import suggest

    name = cfg.get("task")
    add = lambda key, msg: problems.append(Problem(str(path), key, msg))  # noqa: E731
    if not isinstance(name, str) or not taskreg.SAFE_NAME.match(name):
        add("task", f"{name!r} is not a safe name (letters, digits, '_', '-', '.')")
    elif builtin and not name.startswith(taskreg.BUILTIN_PREFIX + "_"):
        add("task", f"{name!r}: tasks shipped in tasks/ must start with 'cme_' (no clash with lm-eval built-ins)")
    known = [f.name for f in dataclasses.fields(TaskConfig)] + ["include"]
    for key in cfg:
        if key not in known:
            add(key, suggest(key, known, "task config key").replace("unknown task config key", "unknown key"))
    _check_data_files(path, cfg, problems)
    # cme-bench's metadata only improves the report (names, domains, chance); plain lm-eval tasks run without it.
    warn = lambda key, msg: problems.append(Problem(str(path), key, msg, "warning"))  # noqa: E731
    meta = cfg.get("metadata")
    if not isinstance(meta, dict):
        warn("metadata", "missing: the report will show the raw task name, domain 'other' and no chance level "
             "(add version, domain, task_type, display_name, primary_metric, chance)")  # fmt: skip
        return
    for key, types in taskreg.REQUIRED_METADATA.items():
        if key not in meta:
            warn(f"metadata.{key}", "missing")
        elif not isinstance(meta[key], types) or (key == "chance" and isinstance(meta[key], bool)):
            add(f"metadata.{key}", f"{meta[key]!r} has the wrong type (expected {types[0].__name__})")
    if meta.get("task_type") not in (None, *taskreg.TASK_TYPES):
        add("metadata.task_type", f"{meta['task_type']!r}: expected one of {', '.join(taskreg.TASK_TYPES)}")
    metrics = [m.get("metric") for m in cfg.get("metric_list") or [] if isinstance(m, dict)]
    if meta.get("primary_metric") and metrics and meta["primary_metric"] not in metrics:
        add("metadata.primary_metric", f"{meta['primary_metric']!r} is not in metric_list ({', '.join(metrics)})")
    chance = meta.get("chance")
    if isinstance(chance, (int, float)) and not 0 <= chance < 1:
        add("metadata.chance", f"{chance!r}: must be in [0, 1)")


def _check_data_files(path: Path, cfg: dict[str, Any], problems: list[Problem]) -> None:
    """Local ``data_files`` of the json/csv/... builders must exist (relative paths: to the working folder, as
    ``datasets`` reads them, or to the YAML's folder)."""
    if cfg.get("dataset_path") not in LOCAL_BUILDERS:
        return
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if files is None:
        why = f"missing: dataset_path {cfg['dataset_path']!r} reads local files"
        problems.append(Problem(str(path), "dataset_kwargs.data_files", why))
        return
    items = files.items() if isinstance(files, dict) else [("", files)]
    for split, value in items:
        for name in [value] if isinstance(value, str) else value or []:
            if "://" in str(name) or any(ch in str(name) for ch in "*?["):
                continue  # remote or glob patterns: datasets resolves them
            if not (Path(name).expanduser().is_file() or (path.parent / name).is_file()):
                key = "dataset_kwargs.data_files" + (f".{split}" if split else "")
                problems.append(Problem(str(path), key, f"data file not found: {name}"))


def _check_group(path: Path, cfg: dict[str, Any], names: set[str], problems: list[Problem]) -> None:
    for member in [cfg["task"]] if isinstance(cfg.get("task"), str) else cfg.get("task") or []:
        member = member.get("task") if isinstance(member, dict) else member
        if member not in names:
            from cme_bench.registry import suggest

            problems.append(Problem(str(path), "task", suggest(str(member), sorted(names), "group member")))
    if not cfg.get("aggregate_metric_list"):
        problems.append(Problem(str(path), "aggregate_metric_list", "missing: the group would report no score"))


def yaml_files(include_path: Sequence[Path | str] = ()) -> list[tuple[Path, bool]]:
    """(file, shipped-with-cme-bench) for every YAML under ``tasks/`` and the extra folders."""
    out = []
    for i, folder in enumerate(Path(p) for p in taskreg._paths(include_path)):
        for path in sorted(folder.rglob("*.yaml")):
            if not _IGNORE_DIRS & set(path.parts):
                out.append((path, i == 0 and Path(folder) == tasks_dir().resolve()))
    return out


def check_configs(include_path: Sequence[Path | str] = ()) -> tuple[list[Problem], dict[str, Path]]:
    """Static checks of every YAML; returns the problems and {task name: file} of the tasks found."""
    problems: list[Problem] = []
    parsed: list[tuple[Path, bool, dict[str, Any]]] = []
    for path, builtin in yaml_files(include_path):
        cfg = _load_raw(path, problems)
        if cfg is not None:
            parsed.append((path, builtin, cfg))
    names: dict[str, Path] = {}
    tasks: dict[str, Path] = {}
    for path, _, cfg in parsed:
        name = cfg.get("group") or cfg.get("task")
        if isinstance(name, str):
            if name in names:
                problems.append(Problem(str(path), "task/group", f"{name!r} is also defined in {names[name]}"))
            names[name] = path
    for path, builtin, cfg in parsed:
        _check_functions(path, cfg, problems)
        if "group" in cfg:
            _check_group(path, cfg, set(names), problems)
        elif "task" in cfg:
            _check_task(path, cfg, builtin, problems)
            tasks[str(cfg["task"])] = path
    return problems, tasks


def offline_task(name: str, rows: list[dict[str, Any]], include_path: Sequence[Path | str] = ()) -> Any:
    """The task built by lm-eval from its own YAML, but with ``rows`` (in the hub schema) as every split's data.

    Lets a hub task run its real ``process_docs``, prompt and ``process_results`` without the network.
    """
    import datasets
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    path = taskreg.task_info(name, include_path).yaml_path
    cfg = load_yaml(path, resolve_func=True)
    splits = {cfg.get(k) for k in ("training_split", "validation_split", "test_split", "fewshot_split")} - {None}
    cfg["custom_dataset"] = lambda **_: datasets.DatasetDict({s: datasets.Dataset.from_list(rows) for s in splits})
    return ConfigurableTask(config=cfg)


def check_task_data(task: Any, info: taskreg.TaskInfo, n_docs: int = 2) -> list[str]:
    """Render the first documents of a loaded task and score their own targets; returns error messages."""
    errors = []
    for part in ("train", "test"):
        docs = taskreg.docs(task, part)
        if docs is None or len(docs) == 0:
            errors.append(f"the {part} part has no documents")
            continue
        for doc in list(docs)[:n_docs]:
            prompt, target = taskreg.render(task, doc)
            if not prompt.strip() or not target.strip():
                errors.append(f"empty prompt or target for doc {doc.get('id', '?')!r}")
            elif task.config.process_results is not None:
                value = task.process_results(doc, [target]).get(info.primary_metric)
                if value != 1.0:
                    errors.append(f"the target itself scores {info.primary_metric}={value!r} (doc {doc.get('id')!r})")
    return errors


def validate(
    include_path: Sequence[Path | str] = (), *, load_data: bool = True, names: Sequence[str] | None = None
) -> list[Problem]:
    """Every problem found in the task folders (empty list = all good)."""
    problems, tasks = check_configs(include_path)
    for name in names or ():
        if name not in tasks:  # a misspelt --task would otherwise check nothing and report "no problems"
            raise CmeError(suggest(name, sorted(tasks), "task"))
    if not load_data:
        return problems
    broken = {p.path for p in problems}
    for name, path in sorted(tasks.items()):
        if (names is not None and name not in names) or str(path) in broken:
            continue
        try:
            info = taskreg.task_info(name, include_path)
            rows_file = path.parent / SCHEMA_ROWS
            if rows_file.is_file():
                task = offline_task(name, json.loads(rows_file.read_text(encoding="utf-8")), include_path)
            elif _loads_offline(taskreg._entry(name, include_path).cfg or {}):
                task = taskreg.load_tasks([name], include_path)[name]
            else:
                log.info("%s: hub data set and no %s: data not checked offline", name, SCHEMA_ROWS)
                continue
            errors = check_task_data(task, info)
        except Exception as err:
            errors = [re.sub(r"\s+", " ", f"{type(err).__name__}: {err}")[:500]]
        problems += [Problem(str(path), "data", e, _level(e)) for e in errors]
    return problems


def _loads_offline(cfg: dict[str, Any]) -> bool:
    return "custom_dataset" in cfg or cfg.get("dataset_path") in LOCAL_BUILDERS


def _level(message: str) -> str:
    # A task without training documents can still be evaluated; it only contributes nothing to a mixture.
    return "warning" if message == "the train part has no documents" else "error"
