"""RunConfig and TrainConfig: everything one run needs, validated once at the boundary, shared by run/train/eval/sweep.

One source per setting: each field carries its default, help text and flag (``setting``), and ``add_run_arguments``
builds the command line from them; ``RunConfig`` extends ``TrainConfig``, so the trainer, the CLI and the run record
read the same values, and a preset's ``training`` block uses the same names. Precedence: command-line flags > the
defaults below. Adapter hyperparameters live in the adapter preset (``adapters/<name>.yaml``), not here. The defaults
make ``cme-bench run`` with no arguments a quick, complete run on a laptop (SmolLM2-135M + TeamLoRA on CME-mini:
60 steps of 8 examples, 20 test documents per task, about 7.5 minutes on 2 idle CPU cores, base-model row included); a
paper-scale run raises ``--max-steps`` (or uses ``--max-steps 0 --epochs E``), ``--train-cap 0`` and ``--limit 0``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cme_bench import devices
from cme_bench.backends import BACKENDS, DEFAULT_BACKEND
from cme_bench.errors import ConfigError
from cme_bench.registry import suggest
from cme_bench.results import make_run_id

NO_ADAPTER = "none"


def setting(
    default: Any = None,
    help: str | None = None,
    *,
    flag: str | None = None,
    group: str | None = None,
    factory: Any = None,
) -> Any:
    """A config field whose command-line flag, help text and group live on the field (``add_run_arguments``).

    ``flag``: the option (default ``--<name-with-dashes>`` when ``group`` is set); ``group``: "training" or
    "evaluation" (None: not generated, or added by hand); a field without ``help`` has no flag.
    """
    meta = {"help": help, "flag": flag, "group": group}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Training hyperparameters: the one source of their defaults and help text (CLI flags, presets, ``train``).

    The defaults are the quick laptop run's (60 steps); a paper-scale recipe (LoRAMoE/TeamLoRA family: lr 2e-4,
    cosine, 3% warm-up, one epoch) sits in each preset's ``training`` block, whose keys are these field names.
    """

    max_steps: int = setting(60, "optimiser steps (0: use --epochs)", group="training")
    epochs: float = setting(1.0, "passes over the mixture when --max-steps is 0", group="training")
    batch_size: int = setting(8, "micro-batch size per process", group="training")
    grad_accum: int = setting(1, "micro-batches per optimiser step", group="training")
    learning_rate: float = setting(
        5e-4, "peak learning rate (AdamW, cosine schedule, linear warm-up)", flag="--lr", group="training"
    )
    max_seq_len: int = setting(
        256, "tokens kept per training example (the prompt is cut from the left)", group="training"
    )
    warmup_ratio: float = setting(0.03, "share of the steps spent warming up linearly")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    max_grad_norm: float = setting(1.0, "gradient clipping norm (0: none)")
    checkpoint_every: int = setting(20, "optimiser steps between checkpoints (0: none)", group="training")
    gradient_checkpointing: bool = setting(False, "trade compute for activation memory", group="training")
    packing: bool = setting(
        True,
        "pad every example to its micro-batch's longest instead of packing examples into rows",
        flag="--no-packing",
        group="training",
    )
    tokens_per_batch: int = setting(
        0, "cut each step's examples into micro-batches of at most N tokens (0: by --batch-size)", group="training"
    )
    mixed_precision: str = setting(
        "auto", "auto (autocast in the base model's dtype on a GPU, none on the CPU) | no | bf16 | fp16"
    )
    seed: int = setting(0, "data order, dropout and initialisation seed")

    def __post_init__(self) -> None:
        if problems := self.training_problems():
            raise ConfigError(problems, "training config")

    def training_problems(self) -> list[str]:
        """Every invalid training value, named by its flag (or field name when it has none)."""
        problems = []
        for name in ("batch_size", "grad_accum", "max_seq_len"):
            if getattr(self, name) < 1:
                problems.append(f"{option(name)} must be >= 1, got {getattr(self, name)!r}")
        for name in ("max_steps", "checkpoint_every", "weight_decay", "max_grad_norm", "tokens_per_batch"):
            if getattr(self, name) < 0:
                problems.append(f"{option(name)} must be >= 0, got {getattr(self, name)!r}")
        if not self.learning_rate > 0:
            problems.append(f"--lr must be > 0, got {self.learning_rate!r}")
        if self.max_steps == 0 and not self.epochs > 0:
            problems.append(f"--epochs must be > 0 when --max-steps is 0, got {self.epochs!r}")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            problems.append(f"mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")
        return problems


def option(name: str) -> str:
    """The command-line spelling of a config field: its flag when it has one, else its name."""
    for f in fields(RunConfig):
        if f.name == name:
            if f.metadata.get("flag") or f.metadata.get("group"):
                return f.metadata.get("flag") or "--" + name.replace("_", "-")
            return name
    raise KeyError(name)


def training_fields() -> dict[str, str]:
    """TrainConfig field name -> help text (what a preset's ``training`` block may hold)."""
    return {f.name: f.metadata.get("help") or "" for f in fields(TrainConfig)}


def check_training(values: dict[str, Any], *, where: str) -> dict[str, Any]:
    """A preset's ``training`` block: its keys must be ``TrainConfig`` field names (near matches suggested)."""
    known = list(training_fields())
    problems = [suggest(key, known, "training setting") for key in values if key not in known]
    if problems:
        raise ConfigError(problems, where=where)
    return values


@dataclass
class RunConfig(TrainConfig):
    """Everything one run needs: the training settings (inherited, one source) plus model, data and evaluation."""

    model: str = "smollm2-135m"
    adapter: str = "teamlora"
    suite: str = "cme-mini"
    tasks: list[str] | None = None
    include_path: list[str] = field(default_factory=list)
    output: str = "results"
    trust_remote_code: bool = False
    # where and in which precision (cme_bench.devices; the runner stores the resolved values, e.g. cuda:0 / bf16)
    device: str = "auto"
    dtype: str = "auto"
    # training data and bookkeeping (the optimisation settings are TrainConfig's)
    train_cap: int = setting(200, "training examples per task (0: all)", group="training")
    mix: str = setting("size", "mixing: size | temperature (fixed proportions: `tasks export`)", group="training")
    temperature: float = setting(2.0, "temperature of --mix temperature", group="training")
    extra_data: list[str] = field(default_factory=list)
    resume: bool = setting(False, "continue from the run's last checkpoint", group="training")
    # evaluation
    limit: int | None = setting(20, "test documents per task (0: all)", group="evaluation")
    eval_batch_size: int = setting(16, "generation batch size", group="evaluation")
    backend: str = setting(DEFAULT_BACKEND, "evaluation backend", group="evaluation")
    eval_one_at_a_time: bool = setting(
        False,
        "evaluate one task at a time, each recorded as soon as it finishes (default: every task's requests together, "
        "batched across tasks as lm-eval does)",
        group="evaluation",
    )
    # bookkeeping
    force: bool = False
    tag: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        problems = self.training_problems()
        if self.train_cap < 0:
            problems.append(f"--train-cap must be >= 0, got {self.train_cap!r}")
        if self.eval_batch_size < 1:
            problems.append(f"--eval-batch-size must be >= 1, got {self.eval_batch_size!r}")
        if self.tasks is not None and not self.tasks:
            problems.append("--tasks is empty; name at least one task, or leave it out to run the whole --suite")
        if self.limit is not None and self.limit < 0:
            problems.append(f"--limit must be >= 0 (0 = every test document), got {self.limit!r}")
        if self.backend not in BACKENDS:
            problems.append(f"--backend: {suggest(self.backend, BACKENDS.names(), 'evaluation backend')}")
        problems += devices.check_names(self.device, self.dtype)
        if self.mix not in ("size", "temperature"):
            problems.append(f"--mix must be size or temperature, got {self.mix!r}")
        if not self.temperature > 0:
            problems.append(f"--temperature must be > 0, got {self.temperature!r}")
        if Path(self.output).exists() and not Path(self.output).is_dir():
            problems.append(f"--output {self.output!r} is a file, not a results folder")
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

    def run_id(self, stage: str | None = None, digest: str | None = None) -> str:
        """The run folder's name; ``digest``: the run's identity digest (``cme_bench.identity``), shortened."""
        tag = "-".join(t for t in (self.tag, stage) if t) or None
        return make_run_id(self.model, self.adapter_label, self.suite, self.seed, tag, digest)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def is_main_process(self) -> bool:
        return int(os.environ.get("RANK", "0")) == 0


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
    parser.add_argument("--device", default=d.device, help=devices.DEVICE_HELP)
    parser.add_argument("--dtype", default=d.dtype, help=devices.DTYPE_HELP)
    parser.add_argument("--tag", help="suffix for the run id, to keep variants of one setting apart")
    parser.add_argument("--force", action="store_true", help="rerun even if a finished run record exists")
    if train:
        parser.add_argument("--extra-data", action="append", default=[], help="instruction JSONL to mix in")
    wanted = [title for title, on in (("training", train), ("evaluation", evaluate)) if on]
    groups = {title: parser.add_argument_group(title) for title in wanted}
    for f in fields(RunConfig):  # the flags whose field names a group: help, default and type from the field
        if f.metadata.get("group") not in groups:
            continue
        group, flag, help_text = groups[f.metadata["group"]], option(f.name), f.metadata["help"].replace("%", "%%")
        if f.name == "backend":  # the choices are the backend registry's names
            help_text += f" ({' | '.join(BACKENDS.names())})"
        if f.type in (bool, "bool"):  # the flag flips the default: --resume turns on, --no-packing turns off
            action = "store_false" if getattr(d, f.name) else "store_true"
            group.add_argument(flag, dest=f.name, action=action, help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str, "int | None": int}.get(str(f.type), str)
            group.add_argument(
                flag, dest=f.name, type=kind, default=getattr(d, f.name), help=f"{help_text} (default: %(default)s)"
            )


def add_seeds_argument(parser: argparse.ArgumentParser) -> None:
    """``--seeds 1,2,3``: one run per seed, each its own identity (the report groups runs that differ by seed)."""
    parser.add_argument(
        "--seeds", type=_seed_list, default=None, metavar="S,S,...", help="comma-separated seeds: one run per seed"
    )


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct integers, got {text!r}")
    return seeds


def seeds_from_args(args: argparse.Namespace) -> list[int]:
    """``--seeds`` if given (then ``--seed`` must be left at its default), else ``[--seed]``."""
    seeds = getattr(args, "seeds", None)
    if seeds is None:
        return [args.seed]
    if args.seed != RunConfig.seed:
        raise ConfigError("give either --seed or --seeds, not both", "arguments")
    return seeds


def config_from_args(args: argparse.Namespace, **overrides: Any) -> RunConfig:
    names = {f.name for f in fields(RunConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    if isinstance(values.get("tasks"), str):  # "" stays an empty list, which RunConfig refuses
        values["tasks"] = [t.strip() for t in values["tasks"].split(",") if t.strip()]
    values.update(overrides)
    return RunConfig(**values)
