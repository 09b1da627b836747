"""The ``ray`` launcher: each run of a sweep is a Ray task that asks for ``--cpus-per-run`` / ``--gpus-per-run``.

Ray places the tasks on whichever workers have those resources free. This process (the driver) keeps the retry
loop itself instead of Ray's task retries, so that a retry is visible (a progress line, ``launch.attempts`` in the
record) and resumes: a task whose worker process or node died is submitted again as ``RunSpec.retry()`` (``resume``
on: the run continues from its last checkpoint), at most ``--max-retries`` times, after which the run is recorded as
failed. Exceptions inside a run never reach here: the worker records them and returns a ``failed`` outcome.

``--ray-address`` connects to a running cluster; without it a local one is started for the sweep, listening on the
loopback address only (no dashboard, no usage statistics), and stopped afterwards. Every task runs in a fresh worker
process (``max_calls=1``) so a finished run's memory, GPU memory included, goes back before the next one starts.
Workers' own output stays in Ray's session logs (``/tmp/ray/session_latest/logs`` on each node); the driver prints
one line per state change of a run.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from cme_bench.errors import CmeError
from cme_bench.launchers import Emit, Group, Launcher, LaunchOptions
from cme_bench.launchers.spec import Progress, RunSpec, execute, lost, sweep_specs

log = logging.getLogger(__name__)
POLL_S = 2.0
# Ray on Linux replaces a loopback node address by the machine's routable one unless this says the machine is not
# part of a multi-node cluster. A cluster started just for this sweep needs no address beyond loopback.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def launch(groups: list[Group], opts: LaunchOptions, emit: Emit) -> list[dict[str, Any]]:
    specs = sweep_specs(groups, "ray")
    ray = _connect(opts.ray_address)
    try:
        _check_fits(ray, opts, local=opts.ray_address is None)
        return _run(ray, specs, opts, Progress(len(specs), emit))
    finally:
        ray.shutdown()  # stops the local cluster we started; only disconnects from one given by address


def _connect(address: str | None):
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is None:
        os.environ.setdefault(LOOPBACK_ENV, "0")  # read when ray is imported
    import ray

    quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address is None:
            ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, **quiet)
        else:
            ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise CmeError(f"--launcher ray: could not start or reach {where}: {exc}") from exc
    return ray


def _check_fits(ray, opts: LaunchOptions, *, local: bool) -> None:
    """A run that asks for more than any node has would wait forever: stop now on a cluster we started ourselves.

    A cluster given by address may grow (an autoscaler adds nodes for waiting tasks), so there it is only a warning.
    """
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    need = {"CPU": opts.cpus_per_run, "GPU": opts.gpus_per_run}
    if any(all(have.get(k, 0) >= v for k, v in need.items()) for have in nodes):
        return
    have = ", ".join(f"{int(n.get('CPU', 0))} CPUs/{int(n.get('GPU', 0))} GPUs" for n in nodes) or "no nodes"
    message = f"a run asks for {opts.cpus_per_run} CPUs and {opts.gpus_per_run} GPUs; the nodes have {have}"
    if local:
        raise CmeError(f"--launcher ray: {message} (lower --cpus-per-run / --gpus-per-run)")
    log.warning("%s: the runs wait until a node that fits joins the cluster", message)


class _Board:
    """Where workers post "running here" notes for the driver (a Ray actor)."""

    def __init__(self) -> None:
        self.notes: list[tuple[str, int, str]] = []

    def post(self, note: tuple[str, int, str]) -> None:
        self.notes.append(note)

    def take(self) -> list[tuple[str, int, str]]:
        notes, self.notes = self.notes, []
        return notes


def _task(spec: RunSpec, board) -> dict[str, Any]:
    """What a Ray worker runs: say where, then ``execute`` the run."""
    import ray

    node = ray.get_runtime_context().get_node_id()[:8]
    worker = f"{ray.util.get_node_ip_address()} (node {node}, pid {os.getpid()})"
    # Not waited for: a task blocked in ray.get lends its CPU to another task, which would oversubscribe the node.
    board.post.remote((spec.key, spec.attempt, worker))
    return execute(spec, worker)


def _run(ray, specs: list[RunSpec], opts: LaunchOptions, progress: Progress) -> list[dict[str, Any]]:
    board = ray.remote(num_cpus=0)(_Board).remote()
    task = ray.remote(max_calls=1, max_retries=0)(_task).options(
        num_cpus=opts.cpus_per_run, num_gpus=opts.gpus_per_run, name="cme-bench-run"
    )
    pending: dict[Any, RunSpec] = {}

    def submit(spec: RunSpec, state: str, detail: str = "") -> None:
        pending[task.remote(spec, board)] = spec
        progress(state, spec, detail)

    for spec in specs:
        submit(spec, "queued")
    outcomes: dict[str, dict[str, Any]] = {}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            _report_running(ray, board, pending, progress)
            for ref in ready:
                spec = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # something escaped the run's own guard (an interrupt)
                    outcome = lost(spec, exc)
                except ray.exceptions.RayError as exc:  # the worker process or its node died
                    if spec.attempt <= opts.max_retries:
                        why = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                        submit(spec.retry(), "retried", f"attempt {spec.attempt + 1} of {opts.max_retries + 1}: {why}")
                        continue
                    outcome = lost(spec, exc)
                outcomes[spec.key] = outcome
                progress.outcome(spec, outcome)
    finally:
        for ref in pending:  # interrupted: stop the runs still out; their records stay resumable (--resume)
            ray.cancel(ref, force=True)
        ray.kill(board)
    return [outcomes[s.key] for s in specs]


def _report_running(ray, board, pending: dict[Any, RunSpec], progress: Progress) -> None:
    """Print the notes of runs that started, unless that attempt already ended (a note can arrive late)."""
    out = {(s.key, s.attempt): s for s in pending.values()}
    try:
        notes = ray.get(board.take.remote(), timeout=60)
    except ray.exceptions.RayError as exc:  # the board's node died: the runs go on, their lines don't
        log.warning("progress notes lost: %s", exc)
        return
    for key, attempt, worker in notes:
        if (key, attempt) in out:
            progress("running", out[key, attempt], f"on {worker}" + (f", attempt {attempt}" if attempt > 1 else ""))


LAUNCHER = Launcher(
    "ray",
    launch,
    extra="ray",
    requires=("ray",),
    options=frozenset({"max_retries", "cpus_per_run", "gpus_per_run", "ray_address"}),
)
