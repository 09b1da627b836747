"""The evaluation-backend seam: what the runner asks of a backend, and the registry of backends.

A backend turns "this base model with this adapter" into an lm-eval ``LM``; everything else (the per-task loop,
the run record, resume) is shared and lives in ``cme_bench.evaluate`` and ``cme_bench.runner``. The registry holds
lazy ``"module:attr"`` targets, as lm-eval's ``MODEL_MAPPING`` does, so a backend's heavy dependencies (vLLM) are
imported only when it is selected. The CLI's ``--backend`` values are this registry's names.

Adding a backend: write a module with an object that satisfies ``EvalBackend`` and register it below.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cme_bench.registry import Registry

if TYPE_CHECKING:
    from lm_eval.api.model import LM


@dataclass
class EvalTarget:
    """What one run evaluates: the base model spec and its saved adapter folder (None: the base model alone).

    ``model``/``tokenizer``: the run's in-memory adapted model, when this process already holds it; a backend that
    evaluates in-memory models uses it instead of loading ``adapter_dir`` again.
    """

    model_spec: str
    adapter_dir: Path | None
    trust_remote_code: bool = False
    model: Any = None
    tokenizer: Any = None
    device: str = "cpu"  # where a backend that loads the model puts it, in ``dtype`` (resolved: cme_bench.devices)
    dtype: str = "fp32"


class EvalSession(Protocol):
    """Open resources (an engine) serving a group of targets; a context manager that releases them on exit."""

    def lm(self, target: EvalTarget) -> LM:
        """An lm-eval ``LM`` that evaluates ``target`` (one of the targets the session was opened for)."""
        ...

    def describe(self, target: EvalTarget) -> dict[str, Any]:
        """Backend-specific facts for the run record's ``evaluation`` block (e.g. ``{"vllm": {...}}``), or ``{}``."""
        ...

    def __enter__(self) -> EvalSession: ...

    def __exit__(self, *exc: object) -> None: ...


class EvalBackend(Protocol):
    """One way to generate and score: the runner and the sweep talk to backends only through this."""

    def check(self) -> None:
        """Fail fast, before any training, when this backend cannot run here (``CmeError`` saying how to fix it)."""
        ...

    def group_key(self, target: EvalTarget) -> Hashable:
        """Targets with equal keys can share one session (engine); raises when ``target`` cannot be served."""
        ...

    def open(self, targets: Sequence[EvalTarget], *, seed: int, batch_size: int) -> EvalSession:
        """A session serving ``targets`` (all with one ``group_key``)."""
        ...


BACKENDS: Registry[EvalBackend] = Registry("evaluation backend")
BACKENDS.register("hf", "cme_bench.hf_backend:backend")
BACKENDS.register("vllm", "cme_bench.vllm_backend.backend:backend")

DEFAULT_BACKEND = "hf"


def get(name: str) -> EvalBackend:
    """The backend registered as ``name`` (``CmeError`` with near matches otherwise)."""
    return BACKENDS.get(name)


def group_targets(
    backend: EvalBackend, targets: dict[str, EvalTarget]
) -> tuple[list[list[str]], dict[str, Exception]]:
    """Names grouped by ``backend.group_key`` (first-seen order), and the names whose target cannot be served."""
    groups: dict[Hashable, list[str]] = {}
    failed: dict[str, Exception] = {}
    for name, target in targets.items():
        try:
            key = backend.group_key(target)
        except Exception as exc:  # e.g. an adapter this backend cannot serve: that run fails, the others go on
            failed[name] = exc
            continue
        groups.setdefault(key, []).append(name)
    return list(groups.values()), failed
