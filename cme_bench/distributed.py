"""Multi-process evaluation: every rank answers its shard of the documents, and every rank gets all the answers.

Under ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE`` > 1) each process runs lm-eval's whole pipeline: it builds
every prompt and scores every answer, which is cheap, but the model calls in between (generation and
log-likelihoods, which are not) are split by document: ``shard`` gives rank r the documents r, r + W, r + 2W, ... in
order of first appearance, so all requests of one document (e.g. the choices of a multiple-choice item) stay on one
rank. ``gather`` puts the per-request answers of every rank back into the original order on every rank. lm-eval then
sees exactly the answers a single process would have produced and computes the same per-sample rows and metrics;
rank 0 writes the record.

The answers travel as Python objects over a gloo group (CPU), whatever backend training used, so the same code runs
with NCCL on GPUs and gloo on CPUs. One process (``WORLD_SIZE`` unset or 1) calls the model directly: nothing here
costs anything then.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
TIMEOUT = dt.timedelta(minutes=30)  # a rank that waits longer for the others is stuck, not slow
_group: Any = None
_active = False  # inside sharded(): every process takes part in the evaluation


@contextlib.contextmanager
def sharded(enabled: bool = True):
    """Within this block ``run_sharded`` splits the work across the processes. Every process must enter it and make
    the same sequence of calls (the runner does so only when all ranks evaluate); outside it, one process works alone.
    """
    global _active
    before, _active = _active, enabled and world_size() > 1
    try:
        yield
    finally:
        _active = before


def processes() -> int:
    """How many processes share the current evaluation."""
    return world_size() if _active else 1


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def doc_key(request: Any) -> tuple[str, Any]:
    """The document an lm-eval request belongs to (task, doc id): the unit evaluation is sharded by."""
    return (request.task_name, request.doc_id)


def shard(keys: Sequence[Hashable], rank: int, world: int) -> list[int]:
    """Positions of the items this rank computes: those whose key (a document id) is the rank-th of every
    ``world`` distinct keys, in order of first appearance. Deterministic, so every rank agrees without talking."""
    slot: dict[Hashable, int] = {}
    for key in keys:
        slot.setdefault(key, len(slot) % world)
    return [i for i, key in enumerate(keys) if slot[key] == rank]


def _object_group():
    """A gloo group over every process (initialising the default group first if training did not)."""
    global _group
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", timeout=TIMEOUT)
    if _group is None:
        _group = dist.new_group(backend="gloo", timeout=TIMEOUT) if dist.get_backend() != "gloo" else dist.group.WORLD
    return _group


def gather(positions: list[int], answers: list[R], total: int) -> list[R]:
    """Every rank's ``(positions, answers)`` merged into one list of ``total`` answers in the original order."""
    import torch.distributed as dist

    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, (positions, answers), group=_object_group())
    merged: list[Any] = [None] * total
    for part_positions, part_answers in parts:
        for i, answer in zip(part_positions, part_answers, strict=True):
            merged[i] = answer
    if any(m is None for m in merged):
        raise RuntimeError(f"distributed evaluation lost answers: {sum(m is None for m in merged)} of {total}")
    return merged


def run_sharded(items: list[T], key: Callable[[T], Hashable], compute: Callable[[list[T]], list[R]]) -> list[R]:
    """``compute(items)``, with the work split by ``key`` across the processes and every answer on every rank."""
    world = world_size()
    if not _active or world <= 1:
        return compute(items)
    mine = shard([key(item) for item in items], rank(), world)
    log.info("rank %d of %d answers %d of %d requests", rank(), world, len(mine), len(items))
    answers = compute([items[i] for i in mine]) if mine else []
    return gather(mine, list(answers), len(items))
