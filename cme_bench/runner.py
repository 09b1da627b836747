"""Run orchestration in plain stages: prepare -> train -> save -> evaluate -> finish, and the sweep over adapters.

``run`` (train and evaluate one adapter), ``train_only`` and ``evaluate_base_or_adapter`` chain the stages for one
run; ``sweep`` calls the same stages itself: it trains every adapter first, then evaluates the runs in the groups the
backend says can share one session (one engine for several adapters), opening each session once. The runner talks to
evaluation backends only through ``cme_bench.backends`` (check, group, open a session, ask it for an lm-eval ``LM``);
the per-task loop is ``cme_bench.evaluate.run_tasks``.

Every stage updates ``results/<run-id>/run.json`` atomically, so a crash leaves a record that says how far the run
got (``status: running``, or ``failed``/``cancelled`` with the error); ``--resume`` continues from the last
checkpoint, or, when the adapter was already saved, evaluates it without training again. A failure inside a sweep is
recorded and the sweep goes on; the caller learns from the returned statuses which runs failed.

Before any work, every run computes its identity (``cme_bench.identity``: tasks and names are checked there) and asks
``cme_bench.reuse`` whether a finished record with identical settings exists: train/run records are reused whole,
evaluation-only records (the base row, ``eval --adapter-path``) task by task, the missing tasks merged in.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from cme_bench import (
    adapters,
    backends,
    devices,
    distributed,
    identity,
    modelcard,
    provenance,
    results,
    reuse,
    runlock,
    taskreg,
    trackers,
)
from cme_bench.backends import EvalBackend, EvalSession, EvalTarget
from cme_bench.config import NO_ADAPTER, RunConfig
from cme_bench.errors import CmeError
from cme_bench.evaluate import TaskResult, check_adapter_applied, probe_logits, run_tasks
from cme_bench.models import LoadedModel, architecture_info, load_model
from cme_bench.train import TrainResult, total_steps, train

log = logging.getLogger(__name__)
# Fault injection for the resume-during-evaluation test: SIGKILL this process after recording that many tasks.
KILL_AFTER_TASK_ENV = "CME_BENCH_KILL_AFTER_TASK"


class RunLog:
    """The run folder and its ``run.json``, saved after every change (``report.load.RunRecord`` reads it back)."""

    def __init__(self, run_dir: Path, data: dict[str, Any], enabled: bool = True) -> None:
        self.dir, self.data, self.enabled = run_dir, data, enabled

    def save(self) -> None:
        if self.enabled:
            results.write_json_atomic(self.dir / "run.json", self.data)

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.save()

    def add_task(self, result: TaskResult) -> None:
        rel = f"samples/{result.task}.jsonl"
        if self.enabled:
            results.write_jsonl_atomic(self.dir / rel, runlock.stamp(result.samples, self.data.get("attempt")))
        self.data["metrics"][result.task] = {
            "metric": result.metric,
            "value": result.value,
            "stderr": result.stderr,
            "n": result.n,
            "seconds": result.seconds,
            "attempt": self.data.get("attempt"),  # a merged record holds tasks of several attempts
        }
        self.data["samples"][result.task] = rel
        self.save()
        results.kill_point(KILL_AFTER_TASK_ENV, len(self.data["metrics"]))


@dataclass
class RunState:
    """One run between stages: its config, record and tasks, the adapter to evaluate and the model in memory."""

    cfg: RunConfig
    record: RunLog
    tasks: list[str]
    adapter_dir: Path | None = None  # the saved adapter evaluation serves; None: the base model
    model: Any = None  # the (adapted) model when this process holds it; backends that need it load it otherwise
    tokenizer: Any = None

    @property
    def target(self) -> EvalTarget:
        cfg = self.cfg
        return EvalTarget(
            cfg.model, self.adapter_dir, cfg.trust_remote_code, self.model, self.tokenizer, cfg.device, cfg.dtype
        )


def _open_record(
    cfg: RunConfig, run_id: str, name: str, ident: identity.Identity, tasks: list[str], existing: dict | None = None
) -> RunLog:
    """The run's record, marked running: ``existing`` (a finished record new tasks are merged into), the record on
    disk when resuming, or a fresh one. It carries the identity and the metadata of its tasks from the start.

    One writer per run, and a rerun or a merge over a good record is staged beside it (``runlock``); the attempt
    ends with the last stage (``_guarded``).
    """
    attempt = runlock.begin(Path(cfg.output) / run_id, enabled=cfg.is_main_process())
    if existing is not None and attempt.staged:
        # Tasks merged into a finished record are built beside it like a rerun: its sample logs come along.
        shutil.copytree(attempt.final, attempt.dir, dirs_exist_ok=True)
    elif existing is None and cfg.resume and not attempt.staged:
        existing = results.read_run(attempt.final)
    data = existing or results.new_record(run_id, name, cfg.to_dict())
    meta = {**(data.get("tasks_meta") or {}), **reuse.tasks_meta(tasks, [Path(p) for p in cfg.include_path])}
    data.update(
        status="running",
        error=None,
        config=cfg.to_dict(),
        identity=ident.to_dict(),
        tasks_meta=meta,
        attempt=attempt.id,
    )
    data["schema_version"] = results.SCHEMA_VERSION
    data["environment"].setdefault("hardware", {}).update(devices.describe(cfg.device, cfg.dtype))
    record = RunLog(attempt.dir, data, enabled=cfg.is_main_process())
    record.attempt = attempt
    with runlock.closing(record, keep=True):
        record.save()
        if record.enabled:  # a staged rerun's tracker files go with it (into the staging folder)
            trackers.start_run(run_id, cfg.to_dict(), record.dir)
    return record


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _backend(cfg: RunConfig) -> EvalBackend:
    """The run's evaluation backend, checked before any work (not after hours of training)."""
    backend = backends.get(cfg.backend)
    backend.check()
    return backend


def _load_base(cfg: RunConfig, record: RunLog) -> tuple[LoadedModel, dict[str, Any]]:
    """Load the base model (seeded) and describe it in the record."""
    _seed_everything(cfg.seed)
    loaded = _load_model(cfg)
    base_info = architecture_info(loaded.model)
    weights = next(loaded.model.parameters())  # where and how the base really sits, not just what was asked
    placed = {"device": str(weights.device), "dtype": devices.dtype_name(weights.dtype)}
    record.update(model={"spec": loaded.spec, "name": loaded.name, "source": loaded.source, **base_info, **placed})
    return loaded, base_info


def _load_model(cfg: RunConfig) -> LoadedModel:
    """The base model, straight onto ``cfg.device`` in ``cfg.dtype`` (both resolved by ``_resolved``)."""
    return load_model(
        cfg.model, dtype=devices.torch_dtype(cfg.dtype), device=cfg.device, trust_remote_code=cfg.trust_remote_code
    )


def _resolved(cfg: RunConfig) -> RunConfig:
    """``cfg`` with a concrete device and dtype for this machine (``auto`` resolved); a missing device fails here."""
    device, dtype = devices.resolve(cfg.device, cfg.dtype)
    return replace(cfg, device=device, dtype=dtype)


def _shards(backend: EvalBackend) -> bool:
    """Whether every process takes part in evaluating (its shard of the documents): backends that evaluate the
    in-memory model can (``shards_documents``); the others evaluate on the main process alone."""
    return bool(getattr(backend, "shards_documents", False)) and distributed.world_size() > 1


def _adapter_summary(model: torch.nn.Module, **extra: Any) -> dict[str, Any]:
    trainable, base = adapters.count_parameters(model)
    info = adapters.adapter_info(model)
    return {**info, "trainable_parameters": trainable, "trainable_share": trainable / base, **extra}


def _tasks(cfg: RunConfig) -> list[str]:
    """The leaf tasks of ``--tasks`` (any registered task or group) or of the suite; unknown names fail here."""
    return taskreg.resolve_tasks(cfg.tasks or None, cfg.suite, [Path(p) for p in cfg.include_path])


def _training_records(cfg: RunConfig, tasks: list[str]) -> list[dict[str, str]]:
    from cme_bench.mixture import MixtureConfig, build_mixture

    mix = MixtureConfig(
        suite=cfg.suite,
        tasks=tasks,
        mixing=cfg.mix,
        temperature=cfg.temperature,
        cap_per_task=cfg.train_cap or None,
        seed=cfg.seed,
        instruction_files=[Path(p) for p in cfg.extra_data],
    )
    records = build_mixture(mix, include_path=[Path(p) for p in cfg.include_path])
    if not records:
        raise CmeError(f"the training mixture for {cfg.suite} / {tasks} is empty")
    return records


def _costs(result, model, tokenizer) -> dict[str, Any]:
    """The cost figures this run observed: training throughput and HF generation latency (batch 1, 64+16 tokens)."""
    from cme_bench.profile import measure_inference

    seconds_per_step = result.seconds / max(1, result.steps - result.resumed_from)
    inference = measure_inference(model, tokenizer, batch=1, prompt_len=64, new_tokens=16, repeats=3)
    return {
        "train_step_ms": round(1000 * seconds_per_step, 2),  # tokens/s and peak memory are under "training"
        **{k: inference[k] for k in ("prefill_ms", "decode_ms_per_token") if k in inference},
    }


def finish(record: RunLog, status: str, exc: BaseException | None = None) -> None:
    """The last stage: the run's final status (success, failed, cancelled), its error and the finishing time; the
    final scores go to the active experiment trackers, whose runs for this record close."""
    record.update(status=status, error=results.error_info(exc) if exc else None, finished_at=results.now())
    trackers.finish_run(record.data)


def _guarded(record: RunLog, body, *, last: bool = True) -> dict[str, Any]:
    """Run ``body()``; if it raises, the record ends as failed or cancelled, else (when ``last``) as success.

    The attempt ends with the last stage (``runlock.closing``): the lock is released, a staged rerun is swapped in
    (or dropped when a stage fails). A sweep's training stage (``last=False``) keeps it open for the evaluation.
    """
    with runlock.closing(record, keep=not last):
        try:
            body()
        except KeyboardInterrupt as exc:
            finish(record, "cancelled", exc)
            raise
        except Exception as exc:
            finish(record, "failed", exc)
            raise
        if last:
            finish(record, "success")
    return record.data


# --------------------------------------------------------------------------------------------------------------
# Stages


def prepare(
    cfg: RunConfig, run_id: str, name: str, ident: identity.Identity, tasks: list[str], existing: dict | None = None
) -> RunState:
    """Open (or, with ``resume``, reopen; or ``existing``, to merge tasks into) the run's record for ``tasks``."""
    record = _open_record(cfg, run_id, name, ident, tasks, existing)
    return RunState(cfg, record, list(tasks))


def _already_trained(state: RunState) -> bool:
    """With ``resume``: the adapter was trained and saved (the run was interrupted during evaluation)."""
    adapter_dir = state.record.dir / "adapter"
    return bool(
        state.cfg.resume and state.record.data.get("training") and (adapter_dir / "adapter_config.json").is_file()
    )


@dataclass
class Trained:
    """What the train stage hands to the save stage."""

    model: torch.nn.Module
    tokenizer: Any
    result: TrainResult
    base_info: dict[str, Any]
    base_logits: torch.Tensor
    train_records: list[dict[str, str]]  # the exact training examples (their digest goes into the provenance)


def train_stage(state: RunState) -> Trained:
    """Load the base, apply ``cfg.adapter`` and fine-tune it on the suite's training mixture (every process)."""
    cfg, record = state.cfg, state.record
    preset = adapters.load_preset(cfg.adapter)
    loaded, base_info = _load_base(cfg, record)
    train_records = _training_records(cfg, state.tasks)
    base_logits = probe_logits(loaded.model, loaded.tokenizer)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    _seed_everything(cfg.seed)  # adapter initialisation does not depend on what loading consumed
    model = adapters.apply_adapter(
        loaded.model, preset, total_steps=total_steps(len(train_records), cfg, world), seed=cfg.seed
    )
    record.update(adapter=_adapter_summary(model, preset=preset.name, path="adapter"))
    on_step = partial(trackers.log_step, record.data["run_id"])  # per-step metrics to the experiment trackers
    result = train(model, loaded.tokenizer, train_records, cfg, out_dir=record.dir, resume=cfg.resume, on_step=on_step)
    return Trained(model, loaded.tokenizer, result, base_info, base_logits, train_records)


def save_stage(state: RunState, trained: Trained) -> None:
    """Save ``adapter/``, record training and costs, check that the adapter changes the logits (main process)."""
    record, model, tokenizer = state.record, trained.model, trained.tokenizer
    # Expert load averaged over every training forward (not just the last batch).
    record.update(training={**trained.result.to_dict(), "expert_load": adapters.expert_load(model, cumulative=True)})
    adapters.save_adapter(
        model, record.dir / "adapter", base_info=trained.base_info, base_model=state.cfg.model, run=record.data
    )
    shutil.rmtree(record.dir / "checkpoints", ignore_errors=True)  # the saved adapter supersedes them
    check_adapter_applied(trained.base_logits, model, tokenizer)
    record.update(costs=_costs(trained.result, model, tokenizer))
    provenance.write(record.dir / "adapter", record.data, trained.train_records)  # travels with the adapter folder
    state.adapter_dir, state.model, state.tokenizer = record.dir / "adapter", model, tokenizer


def train_and_save(state: RunState) -> None:
    """The train and save stages, or neither when ``resume`` finds the adapter already saved."""
    if _already_trained(state):
        log.info("%s: adapter already trained (%s); not training again", state.record.dir.name, state.record.dir)
        state.adapter_dir = state.record.dir / "adapter"
        return
    trained = train_stage(state)
    if state.cfg.is_main_process():
        save_stage(state, trained)
    else:  # the other processes keep the model: they evaluate their shard of the documents (cme_bench.distributed)
        state.adapter_dir, state.model, state.tokenizer = (
            state.record.dir / "adapter",
            trained.model,
            trained.tokenizer,
        )


def load_stage(state: RunState, adapter_path: Path | None) -> None:
    """For a run that evaluates without training: load the base (and ``adapter_path``) and describe them."""
    loaded, _ = _load_base(state.cfg, state.record)
    model = loaded.model
    if adapter_path is not None:
        base_logits = probe_logits(model, loaded.tokenizer)
        model = adapters.load_adapter(model, adapter_path)
        state.record.data["adapter"] = _adapter_summary(model, path=str(adapter_path))
        provenance.apply(state.record.data, provenance.read(adapter_path), adapter_path)  # how it was trained
        state.record.save()
        check_adapter_applied(base_logits, model, loaded.tokenizer)
    state.adapter_dir, state.model, state.tokenizer = adapter_path, model, loaded.tokenizer


def evaluate_stage(state: RunState, session: EvalSession) -> None:
    """Evaluate the run's target on an open session; every finished task is recorded at once."""
    cfg, record, target = state.cfg, state.record, state.target
    t0 = time.perf_counter()
    out = run_tasks(
        session.lm(target),
        state.tasks,
        include_path=[Path(p) for p in cfg.include_path],
        limit=cfg.limit,
        seed=cfg.seed,
        on_task_done=record.add_task,
        one_at_a_time=cfg.eval_one_at_a_time,
    )
    lm = out.lm_eval
    earlier = record.data.get("evaluation")  # a record that new tasks are merged into keeps its earlier tables
    record.data["evaluation"] = {
        "backend": cfg.backend,
        "batch_size": cfg.eval_batch_size,
        "limit": cfg.limit,
        "processes": distributed.processes(),  # that shared the documents
        "seconds": round(time.perf_counter() - t0, 3),
        "lm_eval": {k: lm.get(k) for k in ("results", "versions", "n-samples", "higher_is_better", "configs")},
        **session.describe(target),
    }
    record.data["evaluation"] = reuse.merge_evaluation(earlier, record.data["evaluation"])
    if record.enabled and state.adapter_dir == record.dir / "adapter":  # an adapter this run trained: card + scores
        modelcard.write_model_card(state.adapter_dir, run=record.data)


def _evaluate_alone(state: RunState, backend: EvalBackend) -> None:
    """The evaluate stage on a session of the run's own; under torchrun every process evaluates its shard of the
    documents when the backend can (``_shards``), else the main process evaluates alone."""
    cfg = state.cfg
    shards = _shards(backend)
    if not (shards or cfg.is_main_process()):
        return
    with distributed.sharded(shards), backend.open([state.target], seed=cfg.seed, batch_size=cfg.eval_batch_size) as s:
        evaluate_stage(state, s)


# --------------------------------------------------------------------------------------------------------------
# Public entry points


def run(cfg: RunConfig) -> dict[str, Any]:
    """Fine-tune ``cfg.adapter`` on the suite's training mixture, then evaluate it on the suite.

    With ``cfg.resume``, a run whose adapter was already trained and saved (the record has ``training`` and
    ``adapter/`` exists: it was interrupted during evaluation) is not trained again, only evaluated.
    """
    cfg = _resolved(cfg)
    if cfg.adapter == NO_ADAPTER:
        return evaluate_base_or_adapter(cfg, adapter_path=None)
    backend = _backend(cfg)
    preset, tasks, ident, run_id = _plan(cfg)
    if (done := reuse.finished(cfg.force, Path(cfg.output) / run_id, ident)) is not None:
        return done
    state = prepare(cfg, run_id, cfg.name or preset.name, ident, tasks)

    def body() -> None:
        train_and_save(state)
        _evaluate_alone(state, backend)

    return _guarded(state.record, body)


def train_only(cfg: RunConfig) -> dict[str, Any]:
    """Fine-tune and save ``cfg.adapter`` without evaluating it (run id suffix ``train``)."""
    cfg = _resolved(cfg)
    preset, tasks, ident, run_id = _plan(cfg, evaluate=False)
    if (done := reuse.finished(cfg.force, Path(cfg.output) / run_id, ident)) is not None:
        return done
    state = prepare(cfg, run_id, cfg.name or preset.name, ident, tasks)
    return _guarded(state.record, lambda: train_and_save(state))


def _plan(cfg: RunConfig, *, evaluate: bool = True) -> tuple[Any, list[str], identity.Identity, str]:
    """Preset, tasks, identity and run id of a training run: every name is checked before any work starts."""
    preset = adapters.load_preset(cfg.adapter)
    tasks = _tasks(cfg)
    ident = identity.compute(cfg, tasks, preset=preset, evaluate=evaluate)
    return preset, tasks, ident, cfg.run_id(None if evaluate else "train", ident.digest)


def _adapter_label(path: Path) -> str:
    """A short name for a saved adapter folder: the preset it was trained with (its provenance says), else the
    folder's own name, or its run's name for ``<run>/adapter``."""
    trained = (provenance.read(path) or {}).get("config") or {}
    if trained.get("adapter"):
        return results.slug(Path(str(trained["adapter"])).stem)
    path = path.resolve()
    return results.slug(path.parent.name if path.name == "adapter" else path.name)


def _eval_only_plan(
    cfg: RunConfig, adapter_path: Path | None
) -> tuple[RunConfig, str, str, identity.Identity, list[str]]:
    """Config, run id, display name, identity and tasks of an evaluation-only run (checked before any work).

    The run id carries the identity without the task list (``row_key``): evaluations of other tasks with otherwise
    identical settings merge into the same record. Its seed is the identity's (a saved adapter's training seed).
    """
    label = NO_ADAPTER if adapter_path is None else _adapter_label(adapter_path)
    cfg = replace(cfg, adapter=label)
    tasks = _tasks(cfg)
    trained = provenance.read(adapter_path) if adapter_path is not None else None
    ident = identity.compute(cfg, tasks, adapter_dir=adapter_path, provenance=trained)
    stage = None if adapter_path is None else "eval"
    run_id = replace(cfg, seed=ident.components["seed"]).run_id(stage, ident.row_key)
    return cfg, run_id, cfg.name or ("base" if adapter_path is None else label), ident, tasks


def _prepare_eval_only(cfg: RunConfig, adapter_path: Path | None) -> RunState | dict[str, Any]:
    """The state of an evaluation-only run over the tasks its record lacks, or the finished record when it has all.

    A finished record with identical settings keeps its tasks; only missing (or since changed) tasks are evaluated
    and merged in (``reuse.plan_evaluation``).
    """
    cfg, run_id, name, ident, tasks = _eval_only_plan(cfg, adapter_path)
    plan = reuse.plan_evaluation(cfg.force, Path(cfg.output) / run_id, ident, tasks)
    if plan.done:
        plan.existing[reuse.REUSE_KEY] = {"run_id": run_id, "reused": plan.reused, "evaluated": []}
        return plan.existing
    previous = plan.existing
    if previous is not None:
        log.info("%s: %d task(s) already evaluated with identical settings; evaluating %s", run_id,
                 len(previous.get("metrics") or {}), ", ".join(plan.todo))  # fmt: skip
    merged = reuse.merged_identity(ident, previous, plan.todo)
    state = prepare(cfg, run_id, name, merged, plan.todo, previous)
    if previous is not None:  # the record holds more tasks than this command asked for
        state.record.data["config"]["tasks"] = sorted(merged.task_digests)
    return state


def _mark_merge(data: dict[str, Any], state: RunState, kept: list[str]) -> dict[str, Any]:
    """Tell the command what was reused (in memory only: never written to run.json)."""
    if kept:
        data[reuse.REUSE_KEY] = {"run_id": state.record.dir.name, "reused": kept, "evaluated": list(state.tasks)}
    return data


def evaluate_base_or_adapter(cfg: RunConfig, adapter_path: Path | None) -> dict[str, Any]:
    """Evaluate the base model (``adapter_path`` None) or a saved adapter (ours or PEFT's) on the suite."""
    backend = _backend(cfg)
    state = _prepare_eval_only(_resolved(cfg), adapter_path)
    if not isinstance(state, RunState):
        return state
    kept = sorted(set(state.record.data.get("metrics") or {}) - set(state.tasks))

    def body() -> None:
        load_stage(state, adapter_path)
        _evaluate_alone(state, backend)

    return _mark_merge(_guarded(state.record, body), state, kept)


def sweep(cfg: RunConfig, adapter_names: list[str], *, baseline: bool = True) -> list[dict[str, Any]]:
    """Run every adapter with identical data, seed and budget; failures are recorded and the sweep goes on.

    Stages: train and save every adapter first; then evaluate the runs group by group, each group on one session of
    the backend (``EvalBackend.group_key``: e.g. the base model and every LoRA-family adapter on one vLLM engine).
    """
    backend = _backend(cfg)
    cfg = _resolved(cfg)  # a missing device fails the sweep once, not every run in it
    _tasks(cfg)  # a misspelt task stops the sweep before any work, instead of failing every run in turn
    names = ([NO_ADAPTER] if baseline else []) + adapter_names
    outcomes: dict[str, dict[str, Any]] = {}
    pending: dict[str, RunState] = {}  # runs left to evaluate
    for i, name in enumerate(names, 1):
        one = replace(cfg, adapter=name, name=None)
        try:
            if name == NO_ADAPTER:
                prepared = _prepare_eval_only(one, None)
                if not isinstance(prepared, RunState):  # every task already evaluated with identical settings
                    outcomes[name] = _outcome(name, prepared)
                    continue
                state = prepared
            else:
                preset, tasks, ident, run_id = _plan(one)
                if (done := reuse.finished(one.force, Path(one.output) / run_id, ident)) is not None:
                    outcomes[name] = _outcome(name, done)
                    continue
                state = prepare(one, run_id, preset.name, ident, tasks)
            if name != NO_ADAPTER:
                log.info("sweep %d/%d: training %s", i, len(names), name)
                _guarded(state.record, partial(train_and_save, state), last=False)
                state.model = state.tokenizer = None  # evaluation loads it again when it needs it: memory stays flat
            pending[name] = state
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # recorded in run.json by the stage's guard (or below); the sweep goes on
            outcomes[name] = record_failure(one, exc)
    if not cfg.is_main_process():  # other ranks only help training
        return [outcomes.get(n) or _outcome(n, {**pending[n].record.data, "status": "success"}) for n in names]
    groups, unservable = backends.group_targets(backend, {n: s.target for n, s in pending.items()})
    for name, exc in unservable.items():
        outcomes[name] = record_failure(pending[name].cfg, exc, pending[name].record.dir.name)
    for members in groups:
        log.info("sweep: one evaluation session for %s", ", ".join(members))
        outcomes.update(_evaluate_group(backend, cfg, {n: pending[n] for n in members}))
    return [outcomes[n] for n in names]


def _evaluate_group(backend: EvalBackend, cfg: RunConfig, states: dict[str, RunState]) -> dict[str, dict[str, Any]]:
    """Evaluate runs that share one session; a session that does not open fails them all, the sweep goes on."""
    outcomes: dict[str, dict[str, Any]] = {}
    try:
        session = backend.open([s.target for s in states.values()], seed=cfg.seed, batch_size=cfg.eval_batch_size)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        return {name: record_failure(s.cfg, exc, s.record.dir.name) for name, s in states.items()}
    with session:
        for name, state in states.items():

            def body(state: RunState = state, name: str = name) -> None:
                if name == NO_ADAPTER:
                    load_stage(state, None)
                evaluate_stage(state, session)

            try:
                outcomes[name] = _outcome(name, _guarded(state.record, body))
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # recorded in run.json by the guard
                outcomes[name] = record_failure(state.cfg, exc, state.record.dir.name)
    return outcomes


def planned_run_id(cfg: RunConfig, *, evaluate: bool = True) -> str:
    """The folder a run of ``cfg`` writes (its identity's run id), found without loading the model."""
    return _plan(cfg, evaluate=evaluate)[3]


def _planned_run_id(one: RunConfig) -> str:
    """The run id ``one`` gets (its identity's); the readable id without digest when even planning fails."""
    try:
        return _eval_only_plan(one, None)[1] if one.adapter == NO_ADAPTER else _plan(one)[3]
    except Exception:
        return one.run_id()


def _outcome(name: str, record: dict[str, Any]) -> dict[str, Any]:
    reused = bool((record.pop(reuse.REUSE_KEY, None) or {}).get("reused"))
    return {"adapter": name, "run_id": record["run_id"], "status": record["status"], "reused": reused}


def record_failure(one: RunConfig, exc: BaseException, run_id: str | None = None) -> dict[str, Any]:
    """Mark ``one``'s run failed, unless its own guard already did, and return the sweep outcome.

    Public for the cluster launchers: a run whose worker died on every attempt is recorded here. ``run_id``: the
    run's folder when known; else the one its identity gives, or the readable id without digest when even planning
    fails (e.g. an invalid preset: no identity exists).
    """
    log.error("sweep: %s failed: %s", one.adapter, exc)
    run_id = run_id or _planned_run_id(one)
    run_file = Path(one.output) / run_id / "run.json"
    if isinstance(exc, runlock.RunBusy):  # another process is writing that run: its record is not ours to touch
        return {"adapter": one.adapter, "run_id": run_id, "status": "failed", "error": str(exc)}
    existing = results.read_run(run_file.parent)
    if existing is None or existing.get("status") == "running":
        # The failure came before the record existed (e.g. an invalid preset), or outside the run's own guard
        # (a session that did not open): record it now.
        rec = existing or results.new_record(run_id, one.adapter, one.to_dict())
        rec.update(status="failed", error=results.error_info(exc), finished_at=results.now())
        results.write_json_atomic(run_file, rec)
    return {"adapter": one.adapter, "run_id": run_id, "status": "failed", "error": str(exc)}
