"""Run files: ``--config FILE.yaml`` for run, train, eval, sweep and profile.

A run file is a YAML mapping whose keys are the command's own options, spelled as the flag (``max-steps``,
``max_steps``, ``lr``) or as the configuration field it sets (``learning_rate``). Precedence is
**command line > file > defaults**: a value from the file is applied only to options not given on the command line.
Unknown keys are an error that names the key and the nearest valid one. A sweep file may add ``grid:``, a mapping
from any run setting (``seed``, ``learning_rate``, ``max_steps``, ... or ``adapter``) to a list of values; the sweep
expands into one run (one ``RunConfig``) per combination (``expand``).

Nothing here knows individual options: keys, types and choices come from the verb's argparse parser, so a flag added
to a verb is valid in run files at once.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import logging
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import yaml

from cme_bench.config import RunConfig, option
from cme_bench.errors import CmeError, ConfigError

log = logging.getLogger(__name__)

CONFIG_HELP = (
    "run file (YAML) whose keys are this command's options (e.g. max_steps: 200, lr: 1e-4); "
    "precedence: command line > run file > defaults"
)
GRID_KEY = "grid"
# Options that say how to run, not what to run: never taken from a run file's grid.
_INTERNAL = {"help", "config", "verb", "verbose"}


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE.yaml", help=CONFIG_HELP)


# ----------------------------------------------------------------------------------------------------------------
# Which options were given on the command line


def given_on_command_line(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The dests the user typed in ``argv`` (the verb's own arguments).

    argparse fills every default into the namespace, so "typed" cannot be read from it. Parsing ``argv`` once more
    with every default (and ``set_defaults`` entry) suppressed leaves exactly the typed dests in the namespace.
    """
    saved = [(action, action.default) for action in parser._actions]
    saved_defaults = parser._defaults
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        parser._defaults = {}
        namespace, _ = parser.parse_known_args(list(argv))
    finally:
        for action, default in saved:
            action.default = default
        parser._defaults = saved_defaults
    return set(vars(namespace))


# ----------------------------------------------------------------------------------------------------------------
# Keys and values


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every accepted spelling (dest, flag with - or _) -> its action."""
    out: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if action.dest in _INTERNAL or action.dest.startswith("_") or action.dest is argparse.SUPPRESS:
            continue
        out[action.dest] = action
        for flag in action.option_strings:
            name = flag.lstrip("-")
            out[name] = action
            out[name.replace("-", "_")] = action
    return out


def _run_setting_names() -> set[str]:
    """Every RunConfig field and flag spelling: keys a run file shared between run, train and eval may hold."""
    names = {"adapters", "log_to", "baseline", "no_baseline"}
    for f in fields(RunConfig):
        names |= {f.name, option(f.name).lstrip("-").replace("-", "_")}
    return names | {n.replace("_", "-") for n in names}


def _unknown(key: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return f"unknown key {key!r}" + (f" (nearest valid key: {near[0]!r})" if near else "")


def _coerce(action: argparse.Action, key: str, value: Any) -> Any:
    """A YAML value as the parser would have produced it from the command line; ValueError when it cannot be."""
    if value is None:
        return None
    if action.nargs == 0:  # store_true / store_false
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true or false, got {value!r}")
        # `no-baseline: true` (the flag's spelling) means baseline = false (the dest's spelling).
        return not value if isinstance(action, argparse._StoreFalseAction) and key != action.dest else value
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        return [_convert(action, key, item) for item in items]
    if isinstance(value, list):  # a list for a comma-separated option (tasks, adapters, experts)
        value = ",".join(str(v) for v in value)
    return _convert(action, key, value)


def _convert(action: argparse.Action, key: str, value: Any) -> Any:
    kind = action.type
    if isinstance(value, bool) and kind in (int, float):
        raise ValueError(f"{key}: expected a number, got {value!r}")
    try:
        if kind is None or kind is str:
            converted = str(value)
        elif kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"expected an integer, got {value!r}")
            converted = int(value)
        elif kind is float:
            converted = float(value)
        else:  # a converter function or a type such as Path
            converted = kind(value if not isinstance(value, (int, float)) else str(value))
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        raise ValueError(f"{key}: {exc}") from None
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"{key}: {converted!r} is not one of {', '.join(map(str, action.choices))}")
    return converted


def read(path: Path) -> dict[str, Any]:
    """The YAML mapping in ``path``; CmeError when it is missing or not a mapping."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CmeError(f"run file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CmeError(f"run file {str(path)!r} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of option: value, got {type(data).__name__}", where=f"run file {path}")
    return data


def resolve(
    parser: argparse.ArgumentParser, data: dict[str, Any], *, where: str, allow_grid: bool = False
) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """``(values by dest, grid by dest)`` from a run file's mapping; every bad key and value reported at once."""
    options = _options(parser)
    valid = sorted({a.dest for a in options.values()} | ({GRID_KEY} if allow_grid else set()))
    values: dict[str, Any] = {}
    grid: dict[str, list[Any]] = {}
    problems: list[str] = []
    for key, value in data.items():
        key = str(key)
        if key == GRID_KEY and allow_grid:
            grid, grid_problems = _resolve_grid(options, value)
            problems += grid_problems
            continue
        if key not in options:
            if key in _run_setting_names():  # e.g. max_steps in a file shared by `run` and `eval`
                log.info("%s: %r is not an option of this command; ignored", where, key)
            else:
                problems.append(_unknown(key, valid))
            continue
        action = options[key]
        if action.dest in values:
            problems.append(f"{key}: {action.dest} is set twice")
            continue
        try:
            values[action.dest] = _coerce(action, key, value)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError(problems, where=where)
    return values, grid


def _resolve_grid(options: dict[str, argparse.Action], grid: Any) -> tuple[dict[str, list[Any]], list[str]]:
    """A grid maps a run setting to a list of values; ``adapter`` (or ``adapters``) is the adapter axis."""
    if not isinstance(grid, dict) or not grid:
        return {}, [f"{GRID_KEY}: expected a mapping of setting: [values], got {grid!r}"]
    settable = {f.name for f in fields(RunConfig)}
    valid = sorted({a.dest for a in options.values() if a.dest in settable} | {"adapter"})
    out: dict[str, list[Any]] = {}
    problems = []
    for key, values in grid.items():
        key = str(key)
        if key in ("adapter", "adapters"):
            dest = "adapter"
        elif key in options and options[key].dest in settable:
            dest = options[key].dest
        else:
            problems.append(f"{GRID_KEY}: " + _unknown(key, valid))
            continue
        if not isinstance(values, list) or not values:
            problems.append(f"{GRID_KEY}.{key}: expected a non-empty list of values, got {values!r}")
            continue
        try:
            if dest == "adapter":
                out[dest] = [str(v) for v in values]
            else:
                out[dest] = [_coerce(options[key], f"{GRID_KEY}.{key}", v) for v in values]
        except ValueError as exc:
            problems.append(str(exc))
    return out, problems


# ----------------------------------------------------------------------------------------------------------------
# Applying a run file to parsed arguments


def apply(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Fill ``args`` from ``args.config`` for every option not typed in ``argv``: command line > file > defaults.

    A sweep's ``grid:`` lands in ``args.grid`` ({dest: [values]}); other verbs refuse it.
    """
    path = Path(args.config)
    allow_grid = hasattr(args, "grid")
    values, grid = resolve(parser, read(path), where=f"run file {path}", allow_grid=allow_grid)
    typed = given_on_command_line(parser, argv)
    for dest, value in values.items():
        if dest not in typed:
            setattr(args, dest, value)
    if allow_grid:
        # A grid axis typed on the command line wins over the file's grid for that setting.
        typed_axes = typed | ({"adapter"} if "adapters" in typed else set())
        args.grid = {dest: vals for dest, vals in grid.items() if dest not in typed_axes}
        if "adapter" in args.grid and "adapters" in values and "adapters" not in typed:
            raise ConfigError("set the adapters once: either `adapters:` or `grid: {adapter: [...]}`", where=str(path))
    return args


def resolved(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The resolved options of a command, by dest, in the parser's order: printed at start, valid as a run file."""
    out: dict[str, Any] = {}
    for action in parser._actions:
        dest = action.dest
        if dest in _INTERNAL or dest.startswith("_") or dest is argparse.SUPPRESS or not hasattr(args, dest):
            continue
        out[dest] = _plain(getattr(args, dest))
    if getattr(args, "grid", None):
        out[GRID_KEY] = {k: [_plain(v) for v in vals] for k, vals in args.grid.items()}
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def dump(values: dict[str, Any]) -> str:
    return yaml.safe_dump(values, sort_keys=False, default_flow_style=None, width=119)


# ----------------------------------------------------------------------------------------------------------------
# Grids


def points(base: RunConfig, grid: dict[str, list[Any]]) -> list[RunConfig]:
    """One config per combination of the grid's non-adapter axes, in file order (the last axis varies fastest).

    Settings other than the seed go into the run id's tag (``learning_rate-0.0001``), so that grid points never share
    a run folder.
    """
    axes = {k: v for k, v in grid.items() if k != "adapter"}
    if not axes:
        return [base]
    out = []
    for combo in itertools.product(*axes.values()):
        point = dict(zip(axes, combo))
        labels = [f"{k}-{v}" for k, v in point.items() if k != "seed"]
        tag = "_".join([t for t in (base.tag, *labels) if t]) or None
        out.append(replace(base, **point, tag=tag))
    return out


def adapters_of(grid: dict[str, list[Any]], names: list[str]) -> list[str]:
    """The adapter axis: the grid's ``adapter`` values, else ``names`` (the ``adapters`` option)."""
    return list(grid.get("adapter") or names)


def expand(base: RunConfig, adapters: list[str], grid: dict[str, list[Any]]) -> list[RunConfig]:
    """Every run a sweep performs (baseline rows aside): grid points x adapters, one ``RunConfig`` each."""
    return [replace(point, adapter=name, name=None) for point in points(base, grid) for name in adapters]
