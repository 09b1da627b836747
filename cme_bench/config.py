"""RunConfig: everything one run needs, validated once at the boundary, shared by run/train/eval/sweep.

Precedence: command-line flags > the defaults below. Adapter hyperparameters live in the adapter preset
(``adapters/<name>.yaml``), not here. The defaults make ``cme-bench run`` with no arguments a quick, complete run on a
laptop (SmolLM2-135M + TeamLoRA on CME-mini: 60 steps of 8 examples, 20 test documents per task, under 15 minutes
on 2 CPU cores, base-model row included); a paper-scale run raises ``--max-steps`` (or uses ``--max-steps 0
--epochs E``), ``--train-cap 0`` and ``--limit 0``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cme_bench.errors import ConfigError
from cme_bench.results import make_run_id

BACKENDS = ("hf", "vllm")
NO_ADAPTER = "none"


@dataclass
class RunConfig:
    model: str = "smollm2-135m"
    adapter: str = "teamlora"
    suite: str = "cme-mini"
    tasks: list[str] | None = None
    include_path: list[str] = field(default_factory=list)
    output: str = "results"
    seed: int = 0
    trust_remote_code: bool = False
    # training
    max_steps: int = 60
    epochs: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 5e-4
    max_seq_len: int = 256
    train_cap: int = 200
    mix: str = "size"
    temperature: float = 2.0
    extra_data: list[str] = field(default_factory=list)
    checkpoint_every: int = 20
    gradient_checkpointing: bool = False
    resume: bool = False
    # evaluation
    limit: int | None = 20
    eval_batch_size: int = 16
    backend: str = "hf"
    # bookkeeping
    force: bool = False
    tag: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        problems = []
        for key in ("max_steps", "batch_size", "grad_accum", "max_seq_len", "train_cap", "eval_batch_size"):
            value = getattr(self, key)
            if value < (0 if key in ("max_steps", "train_cap") else 1):
                problems.append(f"--{key.replace('_', '-')} must be positive, got {value!r}")
        if self.tasks is not None and not self.tasks:
            problems.append("--tasks is empty; name at least one task, or leave it out to run the whole --suite")
        if self.limit is not None and self.limit < 0:
            problems.append(f"--limit must be >= 0 (0 = every test document), got {self.limit!r}")
        if self.backend not in BACKENDS:
            problems.append(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.mix not in ("size", "temperature"):
            problems.append(f"--mix must be size or temperature, got {self.mix!r}")
        if self.checkpoint_every < 0:
            problems.append(f"--checkpoint-every must be >= 0 (0 = no checkpoints), got {self.checkpoint_every!r}")
        if not self.epochs > 0:
            problems.append(f"--epochs must be > 0, got {self.epochs!r}")
        if not self.temperature > 0:
            problems.append(f"--temperature must be > 0, got {self.temperature!r}")
        if Path(self.output).exists() and not Path(self.output).is_dir():
            problems.append(f"--output {self.output!r} is a file, not a results folder")
        if not self.learning_rate > 0:
            problems.append(f"--lr must be > 0, got {self.learning_rate!r}")
        for path in self.include_path + self.extra_data:
            if not Path(path).exists():
                problems.append(f"path does not exist: {path}")
        if problems:
            raise ConfigError(problems, "arguments")
        if self.limit == 0:
            self.limit = None

    @property
    def adapter_label(self) -> str:
        return NO_ADAPTER if self.adapter == NO_ADAPTER else Path(self.adapter).stem

    def run_id(self, stage: str | None = None) -> str:
        tag = "-".join(t for t in (self.tag, stage) if t) or None
        return make_run_id(self.model, self.adapter_label, self.suite, self.seed, tag)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def is_main_process(self) -> bool:
        return int(os.environ.get("RANK", "0")) == 0


# (flag, RunConfig field, type, help): the training and evaluation flags of add_run_arguments.
TRAIN_FLAGS: list[tuple[str, str, type, str | None]] = [
    ("--max-steps", "max_steps", int, "optimiser steps (0: use --epochs)"),
    ("--epochs", "epochs", float, "passes over the mixture when --max-steps is 0"),
    ("--batch-size", "batch_size", int, "micro-batch size per process"),
    ("--grad-accum", "grad_accum", int, "micro-batches per optimiser step"),
    ("--lr", "learning_rate", float, "peak learning rate (AdamW, cosine schedule, 3%% warm-up)"),
    ("--max-seq-len", "max_seq_len", int, "tokens kept per training example"),
    ("--train-cap", "train_cap", int, "training examples per task (0: all)"),
    ("--mix", "mix", str, "mixing: size | temperature (fixed proportions: `tasks export`)"),
    ("--temperature", "temperature", float, "temperature of --mix temperature"),
    ("--checkpoint-every", "checkpoint_every", int, "optimiser steps between checkpoints (0: none)"),
    ("--gradient-checkpointing", "gradient_checkpointing", bool, "trade compute for activation memory"),
    ("--resume", "resume", bool, "continue from the run's last checkpoint"),
]
EVAL_FLAGS: list[tuple[str, str, type, str | None]] = [
    ("--limit", "limit", int, "test documents per task (0: all)"),
    ("--eval-batch-size", "eval_batch_size", int, "generation batch size"),
    ("--backend", "backend", str, "generation backend: hf | vllm"),
]


def add_run_arguments(parser: argparse.ArgumentParser, *, train: bool = True, evaluate: bool = True) -> None:
    """The flags shared by run/train/eval/sweep; each verb adds its own on top."""
    d = RunConfig()
    parser.add_argument("--model", default=d.model, help="model folder, .gguf file, built-in name or hf:org/name")
    parser.add_argument("--suite", default=d.suite, help="task suite (default: %(default)s)")
    parser.add_argument("--tasks", help="comma-separated task names (default: every task of the suite)")
    parser.add_argument("--include-path", action="append", default=[], help="extra folder of lm-eval task YAMLs")
    parser.add_argument("--output", default=d.output, help="results folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow a model folder's own Python code (off by default)"
    )
    parser.add_argument("--tag", help="suffix for the run id, to keep variants of one setting apart")
    parser.add_argument("--force", action="store_true", help="rerun even if a finished run record exists")
    if train:
        parser.add_argument("--extra-data", action="append", default=[], help="instruction JSONL to mix in")
    groups = [("training", TRAIN_FLAGS)] if train else []
    groups += [("evaluation", EVAL_FLAGS)] if evaluate else []
    for title, flags in groups:
        group = parser.add_argument_group(title)
        for flag, dest, kind, help_text in flags:
            if kind is bool:
                group.add_argument(flag, dest=dest, action="store_true", help=help_text)
            else:
                group.add_argument(
                    flag, dest=dest, type=kind, default=getattr(d, dest), help=f"{help_text} (default: %(default)s)"
                )


def config_from_args(args: argparse.Namespace, **overrides: Any) -> RunConfig:
    names = {f.name for f in fields(RunConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    if isinstance(values.get("tasks"), str):  # "" stays an empty list, which RunConfig refuses
        values["tasks"] = [t.strip() for t in values["tasks"].split(",") if t.strip()]
    values.update(overrides)
    return RunConfig(**values)
