"""Run orchestration: train + evaluate + record one run, evaluate a base or saved adapter, and sweep adapters.

Every stage updates ``results/<run-id>/run.json`` atomically, so a crash leaves a record that says how far the run
got (``status: running``, or ``failed``/``cancelled`` with the error); ``--resume`` continues from the last
checkpoint, or, when the adapter was already saved, evaluates it without training again. A failure inside a sweep is
recorded and the sweep goes on; the caller learns from the returned statuses which runs failed. A ``--backend vllm``
sweep trains every adapter first and then evaluates them on shared engines (``_sweep_vllm``).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from cme_bench import adapters, results, runlock, taskreg
from cme_bench.config import NO_ADAPTER, RunConfig
from cme_bench.errors import CmeError
from cme_bench.evaluate import EvalOutput, TaskResult, check_adapter_applied, evaluate, probe_logits
from cme_bench.models import LoadedModel, architecture_info, load_model
from cme_bench.train import TrainConfig, total_steps, train

log = logging.getLogger(__name__)
# Fault injection for the resume-during-evaluation test: SIGKILL this process after recording that many tasks.
KILL_AFTER_TASK_ENV = "CME_BENCH_KILL_AFTER_TASK"


class RunRecord:
    """The run folder and its ``run.json``, saved after every change."""

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
        }
        self.data["samples"][result.task] = rel
        self.save()
        results.kill_point(KILL_AFTER_TASK_ENV, len(self.data["metrics"]))


def _open_record(cfg: RunConfig, run_id: str, name: str) -> RunRecord:
    # One writer per run; a rerun over a good record is staged beside it (runlock). Ended by _guarded.
    attempt = runlock.begin(Path(cfg.output) / run_id, enabled=cfg.is_main_process())
    existing = results.read_run(attempt.final) if cfg.resume and not attempt.staged else None
    data = existing or results.new_record(run_id, name, cfg.to_dict())
    data.update(status="running", error=None, config=cfg.to_dict(), attempt=attempt.id)
    record = RunRecord(attempt.dir, data, enabled=cfg.is_main_process())
    record.attempt = attempt
    with runlock.closing(record, keep=True):
        record.save()
    return record


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _check_backend(cfg: RunConfig) -> None:
    """Fail before any work when ``--backend vllm`` cannot run here (not after hours of training)."""
    if cfg.backend == "vllm":
        from cme_bench import vllm_backend

        vllm_backend.require_vllm()


def _finished(cfg: RunConfig, run_id: str) -> dict[str, Any] | None:
    """The record of an already successful run, unless --force asks to redo it."""
    if cfg.force or not results.is_completed(Path(cfg.output) / run_id):
        return None
    log.info("%s already finished (use --force to rerun)", run_id)
    return results.read_run(Path(cfg.output) / run_id)


def _load_base(cfg: RunConfig, record: RunRecord) -> tuple[LoadedModel, dict[str, Any]]:
    """Load the base model (seeded) and describe it in the record."""
    _seed_everything(cfg.seed)
    loaded = load_model(cfg.model, trust_remote_code=cfg.trust_remote_code)
    base_info = architecture_info(loaded.model)
    record.update(model={"spec": loaded.spec, "name": loaded.name, "source": loaded.source, **base_info})
    return loaded, base_info


def _adapter_summary(model: torch.nn.Module, **extra: Any) -> dict[str, Any]:
    trainable, base = adapters.count_parameters(model)
    info = adapters.adapter_info(model)
    return {**info, "trainable_parameters": trainable, "trainable_share": trainable / base, **extra}


def _tasks(cfg: RunConfig) -> list[str]:
    if cfg.tasks:
        return list(cfg.tasks)
    return taskreg.suite_tasks(cfg.suite, [Path(p) for p in cfg.include_path])


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


def _train_config(cfg: RunConfig) -> TrainConfig:
    return TrainConfig(
        learning_rate=cfg.learning_rate,
        batch_size=cfg.batch_size,
        grad_accum=cfg.grad_accum,
        max_steps=cfg.max_steps,
        epochs=cfg.epochs,
        max_seq_len=cfg.max_seq_len,
        checkpoint_every=cfg.checkpoint_every,
        gradient_checkpointing=cfg.gradient_checkpointing,
        seed=cfg.seed,
    )


def _evaluate(
    cfg: RunConfig,
    record: RunRecord,
    model,
    tokenizer,
    tasks: list[str],
    adapter_dir: Path | None,
    vllm_engine=None,
):
    """Evaluate with the chosen backend and store the results in the record.

    ``vllm_engine``: an engine already serving this adapter (a sweep's shared engine); otherwise one is started.
    """
    include = [Path(p) for p in cfg.include_path]
    t0 = time.perf_counter()
    if cfg.backend == "vllm":
        from cme_bench import vllm_backend

        out: EvalOutput = vllm_backend.evaluate_run(
            record.data["model"]["spec"],
            adapter_dir,
            tasks,
            limit=cfg.limit,
            batch_size=cfg.eval_batch_size,
            include_path=include,
            seed=cfg.seed,
            primary_metric=lambda t: taskreg.task_info(t, include).primary_metric,
            on_task_done=record.add_task,
            engine=vllm_engine,
        )
    else:
        out = evaluate(
            model,
            tokenizer,
            tasks,
            include_path=include,
            limit=cfg.limit,
            batch_size=cfg.eval_batch_size,
            seed=cfg.seed,
            primary_metric=lambda t: taskreg.task_info(t, include).primary_metric,
            on_task_done=record.add_task,
        )
    lm = out.lm_eval
    record.data["evaluation"] = {
        "backend": cfg.backend,
        "batch_size": cfg.eval_batch_size,
        "limit": cfg.limit,
        "seconds": round(time.perf_counter() - t0, 3),
        "lm_eval": {k: lm.get(k) for k in ("results", "versions", "n-samples", "higher_is_better", "configs")},
    }
    if cfg.backend == "vllm":  # how vLLM served the adapter: base, lora (by request), merged or routed
        record.data["evaluation"]["vllm"] = (lm.get("config") or {}).get("vllm")


def _costs(result, model, tokenizer) -> dict[str, Any]:
    """The cost figures this run observed: training throughput and HF generation latency (batch 1, 64+16 tokens)."""
    from cme_bench.profile import measure_inference

    seconds_per_step = result.seconds / max(1, result.steps - result.resumed_from)
    inference = measure_inference(model, tokenizer, batch=1, prompt_len=64, new_tokens=16, repeats=3)
    return {
        "train_step_ms": round(1000 * seconds_per_step, 2),  # tokens/s and peak memory are under "training"
        **{k: inference[k] for k in ("prefill_ms", "decode_ms_per_token") if k in inference},
    }


def _finish(record: RunRecord, status: str, exc: BaseException | None = None) -> None:
    record.update(status=status, error=results.error_info(exc) if exc else None, finished_at=results.now())


def _guarded(record: RunRecord, body, *, finish: bool = True) -> dict[str, Any]:
    """Run ``body()``; if it raises, the record ends as failed or cancelled, else as success (when ``finish``).

    Either way the attempt ends (``runlock.closing``): the lock is released, a staged rerun is swapped in or dropped.
    """
    with runlock.closing(record):
        try:
            body()
        except KeyboardInterrupt as exc:
            _finish(record, "cancelled", exc)
            raise
        except Exception as exc:
            _finish(record, "failed", exc)
            raise
        if finish:
            _finish(record, "success")
    return record.data


# --------------------------------------------------------------------------------------------------------------
# Public entry points


def run(cfg: RunConfig, *, do_eval: bool = True, evaluate_later: bool = False, vllm_engine=None) -> dict[str, Any]:
    """Fine-tune ``cfg.adapter`` on the suite's training mixture, then (``do_eval``) evaluate it on the suite.

    With ``cfg.resume``, a run whose adapter was already trained and saved (the record has ``training`` and
    ``adapter/`` exists: it was interrupted during evaluation) is not trained again. ``evaluate_later`` stops after
    training and leaves the record ``running`` (a vLLM sweep evaluates all its adapters afterwards, on shared engines,
    by calling ``run`` again with ``resume``). ``vllm_engine``: see ``_evaluate``.
    """
    if cfg.adapter == NO_ADAPTER:
        return evaluate_base_or_adapter(cfg, adapter_path=None, vllm_engine=vllm_engine)
    if do_eval:
        _check_backend(cfg)
    run_id = cfg.run_id(None if do_eval else "train")
    if (done := _finished(cfg, run_id)) is not None:
        return done
    preset = adapters.load_preset(cfg.adapter)
    record = _open_record(cfg, run_id, cfg.name or preset.name)

    def body() -> None:
        tasks = _tasks(cfg)
        adapter_dir = record.dir / "adapter"
        if cfg.resume and record.data.get("training") and (adapter_dir / "adapter_config.json").is_file():
            log.info("%s: adapter already trained (%s); not training again", run_id, adapter_dir)
            if evaluate_later or not cfg.is_main_process():
                return
            model = tokenizer = None
            if cfg.backend != "vllm":  # vLLM serves the saved folder; HF needs the model in memory
                loaded = load_model(cfg.model, trust_remote_code=cfg.trust_remote_code)
                model, tokenizer = adapters.load_adapter(loaded.model, adapter_dir), loaded.tokenizer
        else:
            model, tokenizer = _train(cfg, record, preset, tasks)
            if model is None or evaluate_later:
                return
        if do_eval:
            _evaluate(cfg, record, model, tokenizer, tasks, adapter_dir, vllm_engine)

    return _guarded(record, body, finish=not evaluate_later)


def _train(cfg: RunConfig, record: RunRecord, preset, tasks: list[str]):
    """Train, save ``adapter/``, record training and costs; ``(model, tokenizer)``, ``(None, None)`` off rank 0."""
    loaded, base_info = _load_base(cfg, record)
    train_records = _training_records(cfg, tasks)
    base_logits = probe_logits(loaded.model, loaded.tokenizer)
    tcfg = _train_config(cfg)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    _seed_everything(cfg.seed)  # adapter initialisation does not depend on what loading consumed
    model = adapters.apply_adapter(
        loaded.model, preset, total_steps=total_steps(len(train_records), tcfg, world), seed=cfg.seed
    )
    record.update(adapter=_adapter_summary(model, preset=preset.name, path="adapter"))
    result = train(model, loaded.tokenizer, train_records, tcfg, out_dir=record.dir, resume=cfg.resume)
    if not cfg.is_main_process():
        return None, None
    adapters.save_adapter(model, record.dir / "adapter", base_info=base_info)
    shutil.rmtree(record.dir / "checkpoints", ignore_errors=True)  # the saved adapter supersedes them
    # Expert load averaged over every training forward (not just the last batch).
    record.update(training={**result.to_dict(), "expert_load": adapters.expert_load(model, cumulative=True)})
    check_adapter_applied(base_logits, model, loaded.tokenizer)
    record.update(costs=_costs(result, model, loaded.tokenizer))
    return model, loaded.tokenizer


def _adapter_label(path: Path) -> str:
    """A short name for a saved adapter folder: its own name, or its run's name for ``<run>/adapter``."""
    path = path.resolve()
    return results.slug(path.parent.name if path.name == "adapter" else path.name)


def evaluate_base_or_adapter(cfg: RunConfig, adapter_path: Path | None, *, vllm_engine=None) -> dict[str, Any]:
    """Evaluate the base model (``adapter_path`` None) or a saved adapter (ours or PEFT's) on the suite."""
    _check_backend(cfg)
    label = NO_ADAPTER if adapter_path is None else _adapter_label(adapter_path)
    cfg = replace(cfg, adapter=label)
    run_id = cfg.run_id(None if adapter_path is None else "eval")
    if (done := _finished(cfg, run_id)) is not None:
        return done
    record = _open_record(cfg, run_id, cfg.name or ("base" if adapter_path is None else label))

    def body() -> None:
        loaded, _ = _load_base(cfg, record)
        tasks = _tasks(cfg)
        model = loaded.model
        if adapter_path is not None:
            base_logits = probe_logits(model, loaded.tokenizer)
            model = adapters.load_adapter(model, adapter_path)
            record.update(adapter=_adapter_summary(model, path=str(adapter_path)))
            check_adapter_applied(base_logits, model, loaded.tokenizer)
        _evaluate(cfg, record, model, loaded.tokenizer, tasks, adapter_path, vllm_engine)

    return _guarded(record, body)


def sweep(cfg: RunConfig, adapter_names: list[str], *, baseline: bool = True) -> list[dict[str, Any]]:
    """Run every adapter with identical data, seed and budget; failures are recorded and the sweep goes on.

    With ``backend="vllm"`` all adapters are trained first, then evaluated on as few engines as possible: the base
    model and every LoRA-family adapter on one engine (adapters by request), each routed or merged adapter on its own.
    """
    _check_backend(cfg)
    names = ([NO_ADAPTER] if baseline else []) + adapter_names
    if cfg.backend == "vllm":
        return _sweep_vllm(cfg, names)
    outcomes: list[dict[str, Any]] = []
    for i, name in enumerate(names, 1):
        log.info("sweep %d/%d: %s", i, len(names), name)
        outcomes.append(_sweep_step(cfg, name, run))
    return outcomes


def _sweep_step(cfg: RunConfig, name: str, step, **kwargs: Any) -> dict[str, Any]:
    """``step(one, **kwargs)`` for adapter ``name``; a failure is recorded and returned as the outcome."""
    one = replace(cfg, adapter=name, name=None)
    try:
        record = step(one, **kwargs)
        return {"adapter": name, "run_id": record["run_id"], "status": record["status"]}
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # recorded in run.json by run(); the sweep goes on
        return _record_failure(one, exc)


def _record_failure(one: RunConfig, exc: Exception) -> dict[str, Any]:
    """Mark ``one``'s run failed, unless its own guard already did, and return the sweep outcome."""
    log.error("sweep: %s failed: %s", one.adapter, exc)
    run_id = one.run_id()
    run_file = Path(one.output) / run_id / "run.json"
    if isinstance(exc, runlock.RunBusy):  # another process is writing that run: its record is not ours to touch
        return {"adapter": one.adapter, "run_id": run_id, "status": "failed", "error": str(exc)}
    existing = results.read_run(run_file.parent)
    if existing is None or existing.get("status") == "running":
        # The failure came before the record existed (e.g. an invalid preset), or outside the run's own guard
        # (a shared engine that did not start): record it now.
        rec = existing or results.new_record(run_id, one.adapter, one.to_dict())
        rec.update(status="failed", error=results.error_info(exc), finished_at=results.now())
        results.write_json_atomic(run_file, rec)
    return {"adapter": one.adapter, "run_id": run_id, "status": "failed", "error": str(exc)}


def _sweep_vllm(cfg: RunConfig, names: list[str]) -> list[dict[str, Any]]:
    """Train every adapter (HF), then evaluate base and adapters on shared vLLM engines (``plans_by_engine``)."""
    from cme_bench import vllm_backend
    from cme_bench.vllm_backend.engine import Engine, plans_by_engine
    from cme_bench.vllm_backend.run import model_folder

    outcomes: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names, 1):
        if name != NO_ADAPTER:
            log.info("sweep %d/%d: training %s", i, len(names), name)
            outcomes[name] = _sweep_step(cfg, name, run, evaluate_later=True)
    ready = [n for n in names if n == NO_ADAPTER or outcomes[n]["status"] == "running"]
    model_dir = model_folder(cfg.model)
    plans = {}
    for name in ready:
        adapter_dir = None if name == NO_ADAPTER else Path(cfg.output) / outcomes[name]["run_id"] / "adapter"
        try:
            plans[name] = vllm_backend.plan(model_dir, adapter_dir)
        except Exception as exc:  # e.g. an adapter vLLM cannot serve: that run fails, the others go on
            outcomes[name] = _record_failure(replace(cfg, adapter=name, name=None), exc)
    for group in plans_by_engine(list(plans.values())):
        members = [n for n, p in plans.items() if p in group]
        log.info("sweep: one vLLM engine for %s", ", ".join(members))
        try:
            engine = Engine(group, seed=cfg.seed)
        except Exception as exc:  # every run of this engine fails; the other engines go on
            for name in members:
                outcomes[name] = _record_failure(replace(cfg, adapter=name, name=None), exc)
            continue
        with engine:
            for name in members:
                # resume: the record and the adapter trained above are picked up, training is not repeated
                outcomes[name] = _sweep_step(replace(cfg, resume=True), name, run, vllm_engine=engine)
    return [outcomes[n] for n in names]
