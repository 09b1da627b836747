"""The ``slurm`` launcher: a sweep is one SLURM job array, submitted through submitit, one run per array task.

Each task runs ``SlurmRun`` on a ``RunSpec``. Shortly before a job's time limit SLURM signals it (submitit asks for
USR2 90 s ahead); submitit then calls ``SlurmRun.checkpoint``, which returns the same run with ``resume`` on, and
requeues the job: the run continues from its last training checkpoint (at most ``--max-retries`` time-outs). A job
that ends without a result (its node failed, it was killed or ran out of memory) is submitted again the same way
while this command waits, within the same bound. ``--no-wait`` returns once the array is submitted: the records land
in the results folder as the jobs finish and ``cme-bench report`` collects them. Submission files and job logs go to
``<results>/.submitit/<time>/``, which the jobs must see (shared storage), as they must see the results folder and
this Python environment.

``--submitit-cluster local`` runs the same array as processes on this machine (submitit's local executor, which
imitates the time-limit signal and the requeue), to try a sweep before sending it to a cluster.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from cme_bench.errors import CmeError
from cme_bench.launchers import Emit, Group, Launcher, LaunchOptions
from cme_bench.launchers.spec import Progress, RunSpec, execute, lost, sweep_specs

log = logging.getLogger(__name__)
# Seconds between two looks at the jobs: SLURM's accounting is queried at most that often.
POLL_S = {"slurm": 30.0, "local": 2.0}
# SLURM states in which a job is going to run again (the cluster requeued it).
REQUEUED = {"REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "PREEMPTED", "TIMEOUT", "RESIZING"}


class SlurmRun:
    """What a job runs. submitit calls ``checkpoint`` on any submitted callable that has one (the protocol of
    ``submitit.helpers.Checkpointable``) when the job is about to be stopped, and requeues what it returns."""

    def __call__(self, spec: RunSpec) -> dict[str, Any]:
        return execute(spec, _where())

    def checkpoint(self, spec: RunSpec):
        import submitit

        log.warning("%s: stopping for a requeue; the next attempt resumes from the last checkpoint", spec.key)
        return submitit.helpers.DelayedSubmission(self, spec.retry())


def _where() -> str:
    import submitit

    try:
        job = submitit.JobEnvironment().job_id
    except RuntimeError:  # not inside a submitit job (called directly)
        job = "-"
    return f"{socket.gethostname()} (job {job}, pid {os.getpid()})"


def _preflight(opts: LaunchOptions) -> None:
    if opts.submitit_cluster == "slurm" and shutil.which("sbatch") is None:
        raise CmeError(
            "--launcher slurm: sbatch is not on PATH; run the sweep on a SLURM login node "
            "(or --submitit-cluster local to run the job array on this machine)"
        )


def _executor(folder: Path, opts: LaunchOptions):
    import submitit

    cluster = opts.submitit_cluster
    bound = {f"{cluster}_max_num_timeout": opts.max_retries}  # requeues after a time-out
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster, **bound)
    params: dict[str, Any] = {
        "name": "cme-bench",
        "timeout_min": opts.time_limit,
        "nodes": 1,
        "tasks_per_node": 1,
        "cpus_per_task": opts.cpus_per_run,
        "gpus_per_node": opts.gpus_per_run,
    }
    if opts.mem_gb is not None:
        params["mem_gb"] = opts.mem_gb
    if cluster == "slurm":
        params.update(slurm_array_parallelism=1000)  # the cluster's own limits decide how many run at once
        if opts.partition:
            params["slurm_partition"] = opts.partition
    executor.update_parameters(**params)
    return executor


def launch(groups: list[Group], opts: LaunchOptions, emit: Emit) -> list[dict[str, Any]] | None:
    specs = sweep_specs(groups, "slurm")
    output = Path(specs[0].config.output)
    folder = output / ".submitit" / dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    executor = _executor(folder, opts)
    jobs = executor.map_array(SlurmRun(), specs)  # one job array
    progress = Progress(len(specs), emit)
    for job, spec in zip(jobs, specs):
        progress("queued", spec, f"job {job.job_id}")
    if not opts.wait:
        emit(f"submitted {len(jobs)} runs as jobs {', '.join(j.job_id for j in jobs)}; their files and logs: {folder}")
        emit(f"the records land in {output} as the jobs finish; `cme-bench report --results {output}` collects them")
        return None
    return _collect(executor, dict(zip(jobs, specs)), opts, progress)


def _collect(executor, pending: dict[Any, RunSpec], opts: LaunchOptions, progress: Progress) -> list[dict[str, Any]]:
    """Wait for every job; say each state change; submit again (resuming) a job that ended without a result."""
    order = [s.key for s in pending.values()]
    outcomes: dict[str, dict[str, Any]] = {}
    seen: dict[str, str] = {}
    while pending:
        for job, spec in list(pending.items()):
            _say_state(job, spec, seen, progress)
            if not job.done():
                continue
            del pending[job]
            try:
                outcome = job.result()
            except Exception as exc:  # no result: the job was killed, its node failed, it ran out of memory...
                if spec.attempt <= opts.max_retries:
                    retry = spec.retry()
                    new = executor.submit(SlurmRun(), retry)
                    pending[new] = retry
                    why = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                    progress("retried", spec, f"job {new.job_id}, attempt {retry.attempt}: {why}")
                    continue
                outcome = lost(spec, exc)
            outcomes[spec.key] = outcome
            progress.outcome(spec, outcome)
        if pending:
            time.sleep(POLL_S[opts.submitit_cluster])
    return [outcomes[key] for key in order]


def _say_state(job, spec: RunSpec, seen: dict[str, str], progress: Progress) -> None:
    state = str(job.state).split()[0].upper() if job.state else "UNKNOWN"
    if seen.get(job.job_id) == state:
        return
    seen[job.job_id] = state
    if state == "RUNNING":
        node = (job.get_info() or {}).get("NodeList") if hasattr(job, "get_info") else None
        progress("running", spec, f"job {job.job_id}" + (f" on {node}" if node and node != "None" else ""))
    elif state in REQUEUED:
        progress("retried", spec, f"job {job.job_id} requeued by the cluster ({state})")


LAUNCHER = Launcher(
    "slurm",
    launch,
    extra="slurm",
    requires=("submitit",),
    options=frozenset(
        {"max_retries", "cpus_per_run", "gpus_per_run", "partition", "mem_gb", "time_limit", "wait"}
        | {"submitit_cluster"}
    ),
    preflight=_preflight,
)
