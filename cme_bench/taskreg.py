"""The task registry: the CME suites defined as lm-eval YAML under ``tasks/`` (plus any ``--include-path`` folders).

This module owns the questions "which tasks make up a suite", "what is task X" (domain, metric, chance level) and
"how do per-task scores become a suite score"; the YAML files own the definitions themselves. Nothing here loads
data unless asked to (:func:`load_tasks`, :func:`validate`), so listing is fast.

Naming: task names are ``cme_<dataset>`` (full suite) and ``cme_mini_<dataset>`` (CME-mini), group names
``cme`` / ``cme-mini`` and ``<suite>-<domain>``; lm-eval's built-in tasks never start with ``cme``. A suite is a group
whose ``metadata.suite`` equals its own name; its members are domain groups, whose members are tasks.

Suite score: lm-eval's group ``score`` is the mean over domains (nested groups, ``weight_by_size: false``).
:func:`aggregate` recomputes it from per-task scores and adds the mean over tasks, which lm-eval cannot express
in the same group.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cme_bench.errors import CmeError
from cme_bench.paths import tasks_dir
from cme_bench.registry import suggest

log = logging.getLogger(__name__)

DEFAULT_SUITE = "cme-mini"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
BUILTIN_PREFIX = "cme"
REQUIRED_METADATA = {
    "version": (int, float, str),
    "domain": (str,),
    "task_type": (str,),
    "display_name": (str,),
    "primary_metric": (str,),
    "higher_is_better": (bool,),
    "chance": (int, float),
}
TASK_TYPES = ("classification", "multiple_choice", "open_qa", "math", "summarization", "other")


@dataclass(frozen=True)
class TaskInfo:
    """What the runner and the reporter need to know about one task, read from its YAML ``metadata``."""

    name: str
    suite: str | None
    domain: str
    task_type: str
    display_name: str
    primary_metric: str
    higher_is_better: bool
    chance: float
    output_type: str
    version: str
    reconstructed: bool
    yaml_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # other metadata keys (data, hub_id, ...)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SuiteScore:
    """A suite's headline numbers from per-task scores (primary metrics, 0-1 scale)."""

    suite: str
    mean_over_domains: float | None
    mean_over_tasks: float | None
    domains: dict[str, float]
    missing: list[str]


# --------------------------------------------------------------------------------------------------------------------
# Index
# --------------------------------------------------------------------------------------------------------------------


def _paths(include_path: Sequence[Path | str] | Path | str = ()) -> tuple[str, ...]:
    extra = [include_path] if isinstance(include_path, (str, Path)) else list(include_path)
    paths = [tasks_dir(), *(Path(p).expanduser() for p in extra)]
    for p in paths:
        if not p.is_dir():
            raise CmeError(f"task folder {str(p)!r} does not exist")
    return tuple(str(p.resolve()) for p in paths)


def _cache_jinja_templates() -> None:
    """Make lm-eval reuse compiled Jinja templates instead of compiling the template again for every document.

    ``lm_eval.utils.apply_template`` calls ``env.from_string`` per document, which is ~95% of rendering time (about
    1 ms per prompt; 25 s for the whole CME-mini training part). Caching by template source returns the same
    compiled template, so the rendered text is unchanged; the environment's filters and settings are untouched.
    """
    from lm_eval import utils

    env = utils.env
    if getattr(env, "_cme_bench_cached", False):
        return
    original = env.from_string
    cached = functools.lru_cache(maxsize=1024)(original)

    def from_string(source: Any, globals: Any = None, template_class: Any = None) -> Any:
        if globals is None and template_class is None and isinstance(source, str):
            return cached(source)
        return original(source, globals, template_class)

    env.from_string = from_string  # type: ignore[method-assign]
    env._cme_bench_cached = True  # type: ignore[attr-defined]


def _quiet_custom_dataset_hint(record: logging.LogRecord) -> bool:
    # lm-eval warns once per custom_dataset task that kwargs can be passed via --metadata: noise for our tasks.
    return "Custom kwargs can be passed" not in record.getMessage()


def _check_yaml_syntax(folders: Sequence[str]) -> None:
    """A YAML in an ``--include-path`` folder that does not parse is an error naming it (lm-eval skips it silently).

    Syntax only (tags such as ``!function`` are accepted unread); ``tasks validate`` checks the contents.
    """
    import yaml

    from cme_bench.errors import LoadError

    class _SyntaxOnly(yaml.SafeLoader): ...

    _SyntaxOnly.add_multi_constructor("!", lambda loader, suffix, node: None)
    for folder in folders:
        for path in sorted(Path(folder).rglob("*.yaml")):
            try:
                data = yaml.load(path.read_text(encoding="utf-8"), Loader=_SyntaxOnly)
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
                mark = getattr(err, "problem_mark", None)
                where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
                reason = getattr(err, "problem", None) or err
                raise LoadError(path, f"task YAML {str(path)!r}: {where}{reason}") from err
            if not isinstance(data, dict):
                raise LoadError(path, f"task YAML {str(path)!r}: expected a mapping, got {type(data).__name__}")


@functools.lru_cache(maxsize=8)
def _task_manager(paths: tuple[str, ...]) -> Any:
    from lm_eval.tasks import TaskManager

    _check_yaml_syntax(paths[1:])
    _cache_jinja_templates()
    logging.getLogger("lm_eval.api.task").addFilter(_quiet_custom_dataset_hint)
    # include_defaults=False: indexing lm-eval's ~10k built-in YAMLs costs seconds and could shadow nothing of ours.
    return TaskManager(include_path=list(paths), include_defaults=False)


def task_manager(include_path: Sequence[Path | str] = ()) -> Any:
    """An lm-eval ``TaskManager`` over ``tasks/`` and ``include_path`` (cached per folder set, built-ins excluded)."""
    return _task_manager(_paths(include_path))


def _entry(name: str, include_path: Sequence[Path | str] = ()) -> Any:
    tm = task_manager(include_path)
    entry = tm.task_index.get(name)
    if entry is None:
        raise CmeError(suggest(name, [n for n in tm.all_tasks if not n.startswith("_")], "task or suite"))
    return entry


def _members(cfg: Mapping[str, Any]) -> list[str]:
    items = cfg.get("task") or []
    items = [items] if isinstance(items, str) else items
    return [it["task"] if isinstance(it, dict) else str(it) for it in items]


def suites(include_path: Sequence[Path | str] = ()) -> list[str]:
    """Suite names: groups whose ``metadata.suite`` is their own name (``cme``, ``cme-mini``), and suites that only
    their tasks' ``metadata.suite`` names (no group YAML needed)."""
    tm = task_manager(include_path)
    grouped = {g for g in tm.all_groups if (tm.task_index[g].cfg or {}).get("metadata", {}).get("suite") == g}
    return sorted(grouped | set(_metadata_suites(include_path)))


def _metadata_suites(include_path: Sequence[Path | str] = ()) -> dict[str, list[str]]:
    """{suite: [task, ...]} from the tasks' own ``metadata.suite``, for suites that have no group of that name."""
    from lm_eval.tasks._index import Kind

    tm = task_manager(include_path)
    out: dict[str, list[str]] = {}
    for name, entry in sorted(tm.task_index.items()):
        suite = ((entry.cfg or {}).get("metadata") or {}).get("suite") if entry.kind == Kind.TASK else None
        if isinstance(suite, str) and suite not in tm.task_index:
            out.setdefault(suite, []).append(name)
    return out


def suite_domains(suite: str = DEFAULT_SUITE, include_path: Sequence[Path | str] = ()) -> dict[str, list[str]]:
    """``{domain: [task, ...]}`` of a suite in YAML order (tasks listed directly in a suite go under their domain)."""
    from lm_eval.tasks._index import Kind

    tm = task_manager(include_path)
    out: dict[str, list[str]] = {}

    def walk(name: str) -> None:
        entry = _entry(name, include_path)
        if entry.kind == Kind.GROUP:
            for child in _members(entry.cfg or {}):
                walk(child)
        elif entry.kind == Kind.TAG:
            for child in sorted(entry.tags):
                walk(child)
        else:
            domain = (entry.cfg or {}).get("metadata", {}).get("domain", "other")
            out.setdefault(domain, [])
            if name not in out[domain]:
                out[domain].append(name)

    if suite not in tm.task_index and suite in (by_metadata := _metadata_suites(include_path)):
        for name in by_metadata[suite]:  # a suite named only by its tasks' metadata
            walk(name)
        return out
    walk(suite)
    return out


def suite_tasks(suite: str = DEFAULT_SUITE, include_path: Sequence[Path | str] = ()) -> list[str]:
    """Leaf task names of a suite (or of any group, tag or single task), in YAML order."""
    return [t for tasks in suite_domains(suite, include_path).values() for t in tasks]


def task_config(name: str, include_path: Sequence[Path | str] = ()) -> dict[str, Any]:
    """The task's config as lm-eval's index holds it (includes merged; functions as path strings)."""
    return dict(_entry(name, include_path).cfg or {})


def all_tasks(include_path: Sequence[Path | str] = ()) -> list[str]:
    """Every registered leaf task, grouped or not, sorted."""
    from lm_eval.tasks._index import Kind

    tm = task_manager(include_path)
    return sorted(n for n, e in tm.task_index.items() if e.kind == Kind.TASK and not n.startswith("_"))


def resolve_tasks(
    names: Sequence[str] | None, suite: str = DEFAULT_SUITE, include_path: Sequence[Path | str] = ()
) -> list[str]:
    """Leaf tasks to run: the suite's when ``names`` is None, else each name's (a task, or a group's members).

    Any registered task is accepted, grouped or not: the suite is a default, not a gate. Unknown names raise
    CmeError with near matches, before any model is loaded.
    """
    if names is None:
        return suite_tasks(suite, include_path)
    out: list[str] = []
    tm = task_manager(include_path)
    for name in names:
        if name not in tm.task_index and name not in _metadata_suites(include_path):
            known = all_tasks(include_path) + suites(include_path) + sorted(tm.all_groups)
            raise CmeError(suggest(name, known, "task"))
        out += [t for t in suite_tasks(name, include_path) if t not in out]
    return out


def task_info(name: str, include_path: Sequence[Path | str] = ()) -> TaskInfo:
    """Metadata of one task without loading its data."""
    entry = _entry(name, include_path)
    cfg = entry.cfg or {}
    if "task" not in cfg or not isinstance(cfg.get("task"), str):
        raise CmeError(f"{name!r} is a group, not a task; its tasks: {', '.join(suite_tasks(name, include_path))}")
    meta = dict(cfg.get("metadata") or {})
    known = {"version", "suite", "domain", "task_type", "display_name", "primary_metric", "higher_is_better"}
    known |= {"chance", "reconstructed"}
    metric_names = [m.get("metric") for m in cfg.get("metric_list") or [] if isinstance(m, dict)]
    return TaskInfo(
        name=name,
        suite=meta.get("suite"),
        domain=str(meta.get("domain", "other")),
        task_type=str(meta.get("task_type", "other")),
        display_name=str(meta.get("display_name", name)),
        primary_metric=str(meta.get("primary_metric") or (metric_names[0] if metric_names else "acc")),
        higher_is_better=bool(meta.get("higher_is_better", True)),
        chance=float(meta.get("chance", 0.0)),
        output_type=str(cfg.get("output_type", "generate_until")),
        version=str(meta.get("version", "0")),
        reconstructed=bool(meta.get("reconstructed", False)),
        yaml_path=str(entry.yaml_path) if entry.yaml_path else None,
        extra={k: v for k, v in meta.items() if k not in known},
    )


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _load_task(name: str, paths: tuple[str, ...]) -> Any:
    return _task_manager(paths).load([name])["tasks"][name]


def load_tasks(names: Sequence[str], include_path: Sequence[Path | str] = ()) -> dict[str, Any]:
    """lm-eval ``Task`` objects by name, data loaded; cached in-process (one load per task per process)."""
    paths = _paths(include_path)
    out = {}
    for name in names:
        _entry(name, include_path)
        try:
            out[name] = _load_task(name, paths)
        except CmeError:
            raise
        except Exception as err:
            path = task_info(name, include_path).yaml_path
            raise CmeError(f"task {name!r} ({path}) failed to load: {type(err).__name__}: {err}") from err
    return out


def docs(task: Any, part: str) -> Any:
    """The processed ``train`` or ``test`` documents of a loaded task (lm-eval applies ``process_docs``)."""
    if part == "train":
        return task.training_docs() if task.has_training_docs() else []
    return task.test_docs() if task.has_test_docs() else task.validation_docs()


def render(task: Any, doc: Mapping[str, Any]) -> tuple[str, str]:
    """(prompt, target) of one document exactly as lm-eval builds them for a zero-shot evaluation."""
    prompt = task.fewshot_context(doc, 0)
    target = task.doc_to_target(doc)
    if isinstance(target, list):
        target = target[0]
    if isinstance(target, int) and task.config.doc_to_choice is not None:
        target = task.doc_to_choice(doc)[target]
    return str(prompt), str(target)


# --------------------------------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------------------------------


def aggregate(
    scores: Mapping[str, float], suite: str = DEFAULT_SUITE, include_path: Sequence[Path | str] = ()
) -> SuiteScore:
    """Mean over domains (each domain = mean of its tasks) and mean over tasks, from per-task primary scores.

    Tasks missing from ``scores`` are listed in ``missing`` and left out of both means (a domain with no scored task
    is left out of the domain mean).
    """
    domains = suite_domains(suite, include_path)
    dom_means: dict[str, float] = {}
    task_values: list[float] = []
    missing: list[str] = []
    for domain, tasks in domains.items():
        values = [float(scores[t]) for t in tasks if t in scores and scores[t] is not None]
        missing += [t for t in tasks if t not in scores or scores[t] is None]
        if values:
            dom_means[domain] = sum(values) / len(values)
            task_values += values
    return SuiteScore(
        suite=suite,
        mean_over_domains=sum(dom_means.values()) / len(dom_means) if dom_means else None,
        mean_over_tasks=sum(task_values) / len(task_values) if task_values else None,
        domains=dom_means,
        missing=missing,
    )


def chance_normalized(value: float, chance: float) -> float:
    """(value - chance) / (1 - chance): 0 at random guessing, 1 at a perfect score."""
    return (value - chance) / (1.0 - chance) if chance < 1.0 else 0.0
