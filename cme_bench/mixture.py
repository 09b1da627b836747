"""The training mixture: (prompt, target) pairs rendered from the task configs, plus extra instruction data.

One definition for training and evaluation: task examples come from each task's *training part* and are rendered by
the task's own lm-eval ``Task`` object (``fewshot_context`` with zero shots, ``doc_to_target``), so a training prompt
is byte-identical to the prompt the same document would get at evaluation time. Extra instruction data in the
paper's ``{"instruction", "input", "output"}`` format (JSON list or JSONL) is rendered with the same CME prompt
(:func:`format_prompt`).

Mixing (``MixtureConfig.mixing``):

- ``size``: every example of every source once (after ``cap_per_task``), i.e. proportional to data size;
- ``fixed``: ``proportions`` {source: weight}, normalised, times ``total`` examples;
- ``temperature``: weight of a source proportional to ``n ** (1 / temperature)`` (T=1 is ``size``; larger T
  flattens towards uniform), times ``total`` examples.

A source drawn more often than it has examples is repeated (each pass reshuffled). Everything is deterministic given
``seed``: each source draws from its own ``random.Random`` seeded by (seed, source name), so adding a source never
changes another source's draw.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cme_bench import taskreg
from cme_bench.errors import CmeError, ConfigError
from cme_bench.results import write_jsonl_atomic

MIXING = ("size", "fixed", "temperature")
INSTRUCTION_KEYS = ("instruction", "input", "output")


@dataclass
class MixtureConfig:
    """What to mix.

    Args:
        suite: suite (or group) whose tasks are mixed.
        tasks: any registered tasks (or groups); None = every task of the suite.
        cap_per_task: at most this many examples per source before mixing (None = no cap).
        seed: seed of every random choice.
        mixing: "size", "fixed" or "temperature".
        proportions: {source: weight} for "fixed"; sources are task names or ``instructions:<file stem>``.
        temperature: T for "temperature" mixing.
        total: number of examples for "fixed"/"temperature" (default: the capped total size).
        instruction_files: extra JSON/JSONL files of {"instruction", "input", "output"} records.
        instruction_cap: at most this many records per instruction file (None = cap_per_task).
        shuffle: shuffle the final list (else sources stay in order, each internally shuffled).
    """

    suite: str = taskreg.DEFAULT_SUITE
    tasks: Sequence[str] | None = None
    cap_per_task: int | None = None
    seed: int = 0
    mixing: str = "size"
    proportions: Mapping[str, float] | None = None
    temperature: float = 1.0
    total: int | None = None
    instruction_files: Sequence[str | Path] = field(default_factory=tuple)
    instruction_cap: int | None = None
    shuffle: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.mixing not in MIXING:
            problems.append(f"mixing={self.mixing!r}: must be one of {', '.join(MIXING)}")
        if self.cap_per_task is not None and self.cap_per_task < 1:
            problems.append(f"cap_per_task={self.cap_per_task!r}: must be >= 1 or None")
        if self.instruction_cap is not None and self.instruction_cap < 0:
            problems.append(f"instruction_cap={self.instruction_cap!r}: must be >= 0 or None")
        if self.mixing == "temperature" and not self.temperature > 0:
            problems.append(f"temperature={self.temperature!r}: must be > 0")
        if self.mixing == "fixed" and not self.proportions:
            problems.append("mixing='fixed' needs proportions {source: weight}")
        if self.proportions and any(w < 0 for w in self.proportions.values()):
            problems.append(f"proportions={dict(self.proportions)!r}: weights must be >= 0")
        if self.total is not None and self.total < 1:
            problems.append(f"total={self.total!r}: must be >= 1 or None")
        if problems:
            raise ConfigError(problems, "mixture config")


def format_prompt(instruction: str, input_: str = "") -> str:
    """CME's prompt (build_dataset.py): instruction, ``"\\n" + input`` when non-empty, then the literal ``</s>``."""
    return f"{instruction}\n{input_}</s>" if input_ else f"{instruction}</s>"


def read_instructions(path: str | Path) -> list[dict[str, str]]:
    """Records of a JSON list or JSONL file in the paper's {"instruction", "input", "output"} format."""
    path = Path(path)
    if not path.is_file():
        raise CmeError(f"instruction file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if text.lstrip().startswith("["):
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise CmeError(f"{path}: not JSON or JSONL ({err})") from err
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or not {"instruction", "output"} <= set(rec):
            raise CmeError(f"{path}: record {i} needs keys 'instruction' and 'output' (and optionally 'input')")
    return [{k: str(rec.get(k) or "") for k in INSTRUCTION_KEYS} for rec in records]


@functools.lru_cache(maxsize=256)
def _train_docs(name: str, paths: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
    task = taskreg._load_task(name, paths)
    train = taskreg.docs(task, "train")
    return tuple(train.to_list() if hasattr(train, "to_list") else (dict(d) for d in train))


def _sources(cfg: MixtureConfig, include_path: Sequence[Path | str]) -> dict[str, int]:
    """{source: available size} for the selected tasks and instruction files, checking names."""
    names = taskreg.resolve_tasks(cfg.tasks, cfg.suite, include_path)  # any registered task, not only the suite's
    paths = taskreg._paths(include_path)
    sizes = {name: len(_train_docs(name, paths)) for name in names}
    for path in cfg.instruction_files:
        sizes[f"instructions:{Path(path).stem}"] = len(read_instructions(path))
    return sizes


def _capped(cfg: MixtureConfig, source: str, size: int) -> int:
    cap = cfg.instruction_cap if source.startswith("instructions:") and cfg.instruction_cap is not None else None
    cap = cap if cap is not None else cfg.cap_per_task
    return size if cap is None else min(size, cap)


def plan(cfg: MixtureConfig, sizes: Mapping[str, int]) -> dict[str, int]:
    """How many examples each source contributes (before rendering), per the mixing rule."""
    capped = {s: _capped(cfg, s, n) for s, n in sizes.items()}
    if cfg.mixing == "size":
        return capped
    total = cfg.total if cfg.total is not None else sum(capped.values())
    if cfg.mixing == "fixed":
        unknown = sorted(set(cfg.proportions or {}) - set(capped))
        if unknown:
            raise ConfigError([f"proportions name unknown source {s!r}" for s in unknown], "mixture config")
        weights = {s: float((cfg.proportions or {}).get(s, 0.0)) for s in capped}
    else:
        weights = {s: n ** (1.0 / cfg.temperature) for s, n in capped.items()}
    norm = sum(w for s, w in weights.items() if capped[s] > 0)
    if norm <= 0:
        raise ConfigError("all mixing weights are zero", "mixture config")
    counts = {s: int(total * w / norm) if capped[s] else 0 for s, w in weights.items()}
    # Largest remainders get the examples lost to rounding down, so the counts sum to `total`.
    remainders = sorted(capped, key=lambda s: (-(total * weights[s] / norm - counts[s]), s))
    for s in remainders[: total - sum(counts.values())]:
        if capped[s]:
            counts[s] += 1
    return counts


def _draw(pool_size: int, capped: int, count: int, rng: random.Random) -> list[int]:
    """``count`` indices: a seeded subset of ``capped`` of the pool, cycled (reshuffled per pass) when needed."""
    subset = rng.sample(range(pool_size), capped)
    out: list[int] = []
    while len(out) < count:
        order = subset[:]
        rng.shuffle(order)
        out += order[: count - len(out)]
    return out


def build_mixture(cfg: MixtureConfig, include_path: Sequence[Path | str] = ()) -> list[dict[str, str]]:
    """The training examples ``{"task", "prompt", "target"}`` of a suite's training parts (+ instruction files).

    ``target`` is the bare answer: the trainer appends the tokenizer's EOS, as CME's build_dataset.py does.
    """
    sizes = _sources(cfg, include_path)
    counts = plan(cfg, sizes)
    paths = taskreg._paths(include_path)
    files = {f"instructions:{Path(p).stem}": p for p in cfg.instruction_files}
    examples: list[dict[str, str]] = []
    for source, count in counts.items():
        if count == 0:
            continue
        rng = random.Random(f"{cfg.seed}:{source}")
        indices = _draw(sizes[source], _capped(cfg, source, sizes[source]), count, rng)
        examples += _render(source, indices, paths, files)
    if cfg.shuffle:
        random.Random(f"{cfg.seed}:mixture").shuffle(examples)
    return examples


def _render(source: str, indices: list[int], paths: tuple[str, ...], files: Mapping[str, Any]) -> list[dict]:
    if source in files:
        records = read_instructions(files[source])
        return [
            {"task": source, "prompt": format_prompt(r["instruction"], r["input"]), "target": r["output"]}
            for r in (records[i] for i in indices)
        ]
    task = taskreg._load_task(source, paths)
    docs = _train_docs(source, paths)
    rendered: dict[int, tuple[str, str]] = {}
    out = []
    for i in indices:
        if i not in rendered:
            rendered[i] = taskreg.render(task, docs[i])
        prompt, target = rendered[i]
        out.append({"task": source, "prompt": prompt, "target": target})
    return out


def mixture_summary(examples: Iterable[Mapping[str, str]]) -> dict[str, int]:
    """{source: number of examples}, in first-seen order."""
    counts: dict[str, int] = {}
    for ex in examples:
        counts[ex["task"]] = counts.get(ex["task"], 0) + 1
    return counts


def write_jsonl(examples: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write one JSON object per line, atomically (temporary file in the same folder, then ``os.replace``)."""
    path = Path(path)
    write_jsonl_atomic(path, [dict(ex) for ex in examples])
    return path
