"""Sweep launchers: option checks before any work, and real sweeps on a local two-worker Ray cluster and through
submitit's local executor, with a worker killed (or signalled as at a time limit) in the middle of a run.

The cluster tests (marked ``cluster``) bind to the loopback address only: Ray's nodes get 127.0.0.1 as their address
and no dashboard, and every wait is bounded (the sweep's subprocess timeout, the cluster's start timeouts); the
cluster is shut down in a ``finally``. The kill is deterministic: ``results.kill_point`` signals the process that
finishes optimiser step 2 (the step of the first checkpoint), and only there, so a resumed run goes on.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

from cme_bench import launchers
from cme_bench.cli import main
from cme_bench.results import KILL_SIGNAL_ENV
from cme_bench.train import KILL_AFTER_STEP_ENV

# Two tasks, 6 optimiser steps with a checkpoint every 2, two test documents per task: a run takes seconds.
TINY = [
    "--model",
    "tiny-llama",
    "--tasks",
    "cme_mini_boolq,cme_mini_arc_easy",
    "--train-cap",
    "12",
    "--batch-size",
    "4",
    "--max-steps",
    "6",
    "--checkpoint-every",
    "2",
    "--limit",
    "2",
    "--no-report",
    "--no-baseline",
]
SWEEP_TIMEOUT_S = 420


def _cli(*argv: str, env: dict[str, str] | None = None, rc: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "cme_bench.cli", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=SWEEP_TIMEOUT_S,
    )
    assert proc.returncode == rc, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def _records(out: Path) -> dict[str, dict]:
    return {d.name: json.loads((d / "run.json").read_text()) for d in out.iterdir() if (d / "run.json").is_file()}


def _assert_complete(out: Path, adapters: list[str], failed: tuple[str, ...] = ()) -> dict[str, dict]:
    """Every run recorded once and successful (but ``failed``), with the full loss curve and one sample per test
    document."""
    records = _records(out)
    assert set(records) == {f"tiny-llama--{a}--cme-mini--s0" for a in [*adapters, *failed]}
    for name in failed:
        assert records.pop(f"tiny-llama--{name}--cme-mini--s0")["status"] == "failed"
    for rec in records.values():
        assert rec["status"] == "success", rec["error"]
        assert [s for s, _ in rec["training"]["loss_curve"]] == [1, 2, 3, 4, 5, 6]
        for task, metric in rec["metrics"].items():
            samples = (out / rec["run_id"] / rec["samples"][task]).read_text().splitlines()
            assert metric["n"] == len(samples) == 2
        assert not (out / rec["run_id"] / "checkpoints").exists()  # superseded by the saved adapter
    return records


# --------------------------------------------------------------------------------------------------------------
# Checks before any work (no cluster needed)


@pytest.mark.parametrize(("launcher", "module"), [("ray", "ray"), ("slurm", "submitit")])
def test_a_launcher_without_its_extra_stops_with_the_install_command(launcher, module, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed: importing it fails
    out = tmp_path / "results"
    rc = main(["sweep", "--launcher", launcher, "--adapters", "lora", *TINY, "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"--launcher {launcher} needs {module}" in err and f"pip install 'cme-bench[{launcher}]'" in err
    assert not out.exists()  # stopped before any work


def test_an_unknown_launcher_is_named_with_near_matches(tmp_path, capsys):
    rc = main(["sweep", "--launcher", "rey", "--adapters", "lora", *TINY, "--output", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown launcher 'rey'" in err and "Did you mean 'ray'?" in err
    assert "local, ray, slurm" in err


def test_options_a_launcher_does_not_read_are_refused(tmp_path, capsys):
    argv = ["sweep", "--adapters", "lora", *TINY, "--output", str(tmp_path / "r")]
    assert main([*argv, "--partition", "gpu", "--max-retries", "3"]) == 2  # the local launcher reads neither
    err = capsys.readouterr().err
    assert "--max-retries does not apply to --launcher local" in err
    assert "--partition does not apply to --launcher local" in err
    assert main([*argv, "--launcher", "ray", "--no-wait"]) == 2
    assert "--no-wait does not apply to --launcher ray" in capsys.readouterr().err
    assert main([*argv, "--launcher", "ray", "--cpus-per-run", "0"]) == 2
    assert "--cpus-per-run must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_slurm_without_sbatch_stops_before_submitting(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    rc = main(["sweep", "--launcher", "slurm", "--adapters", "lora", *TINY, "--output", str(tmp_path / "r")])
    assert rc == 2 and "sbatch is not on PATH" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_specs_are_absolute_and_each_run_appears_once(tmp_path, monkeypatch):
    from cme_bench.config import RunConfig
    from cme_bench.launchers.spec import sweep_specs

    monkeypatch.chdir(tmp_path)
    preset = tmp_path / "mine.yaml"
    preset.write_text("method: lora\nparams: {r: 4}\n")
    cfg = RunConfig(model="tiny-llama", output="results", tasks=["cme_mini_boolq"])
    # two grid points (seeds 0 and 1), the second naming lora twice: every run once
    groups = [(cfg, ["lora", "mine.yaml", "lora"], True), (replace(cfg, seed=1), ["lora", "lora"], False)]
    specs = sweep_specs(groups, "ray")
    assert [s.key for s in specs] == [
        "tiny-llama--none--cme-mini--s0",
        "tiny-llama--lora--cme-mini--s0",
        "tiny-llama--mine--cme-mini--s0",
        "tiny-llama--lora--cme-mini--s1",
    ]
    assert all(s.config.output == str(tmp_path / "results") and s.attempt == 1 for s in specs)
    assert specs[2].config.adapter == str(preset) and specs[0].config.model == "tiny-llama"
    again = specs[1].retry()
    assert again.attempt == 2 and again.config.resume and again.key == specs[1].key
    assert launchers.get("local").launch.__module__ == "cme_bench.launchers.local"


# --------------------------------------------------------------------------------------------------------------
# Ray: a real cluster of two worker nodes on this machine


@pytest.fixture
def ray_cluster(monkeypatch):
    """A head node without CPUs and two worker nodes with one CPU each, all on 127.0.0.1, no dashboard.

    The first worker node carries the kill switch: a run that reaches step 2 there is SIGKILLed. Ray keeps its
    sockets and logs under a short temporary folder (socket paths are limited to 107 bytes), removed afterwards.
    """
    ray_tmp = tempfile.mkdtemp(prefix="cmeray-")
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    # Keeps 127.0.0.1 as every node's (and the sweep driver's) address; read when ray is imported.
    from cme_bench.launchers.ray import LOOPBACK_ENV

    monkeypatch.setenv(LOOPBACK_ENV, "0")
    from ray._private import services
    from ray.cluster_utils import Cluster

    assert services.get_node_ip_address() == "127.0.0.1", "ray was imported before the loopback setting"
    loopback = {"node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, **loopback})
    try:
        cluster.add_node(num_cpus=1, env_vars={KILL_AFTER_STEP_ENV: "2"}, **loopback)
        cluster.add_node(num_cpus=1, **loopback)
        cluster.wait_for_nodes(timeout=120)
        yield cluster
    finally:
        cluster.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.cluster
def test_ray_sweep_survives_a_killed_worker_and_resumes_the_run(ray_cluster, tmp_path):
    out = tmp_path / "results"
    adapters = ["lora", "teamlora", "hydralora"]
    proc = _cli(
        "sweep",
        "--launcher",
        "ray",
        "--ray-address",
        ray_cluster.address,
        "--adapters",
        ",".join(adapters),
        *TINY,
        "--output",
        str(out),
    )
    records = _assert_complete(out, adapters)
    launched = {rid: rec["launch"] for rid, rec in records.items()}
    assert all(lau["launcher"] == "ray" for lau in launched.values())
    # Both workers start a run at once (one CPU each), so the one with the kill switch kills at least one run.
    killed = {rid for rid, lau in launched.items() if lau["attempts"] > 1}
    assert killed, launched
    for rid, rec in records.items():
        if rid in killed:  # its second attempt continued from the checkpoint of step 2
            assert launched[rid]["attempts"] == 2 and rec["training"]["resumed_from"] == 2
        else:
            assert launched[rid]["attempts"] == 1 and rec["training"]["resumed_from"] == 0
    assert len({re.search(r"node (\w+)", lau["worker"]).group(1) for lau in launched.values()}) >= 1
    # Progress: one line per state change; each run queued once and done once, a retried line per kill.
    lines = proc.stdout.splitlines()
    for rid in records:
        states = [line.split()[2] for line in lines if re.match(rf"[\d:]+ \[\d/3\] \w+ +{re.escape(rid)}\b", line)]
        assert states.count("queued") == 1 and states.count("done") == 1 and states[-1] == "done", lines
        assert states.count("retried") == (rid in killed), lines
        assert "running" in states
    assert any(re.search(r"running .* on 127\.0\.0\.1 \(node \w+, pid \d+\)", line) for line in lines)
    assert re.search(r"retried .*attempt 2 of 3", proc.stdout)
    table = proc.stdout[proc.stdout.index("adapter ") :].splitlines()[1:]
    assert sorted(row.split()[0] for row in table) == sorted(adapters)
    assert all(row.split()[1] == "success" for row in table)


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                found.append(cmdline.parent.name)
        except OSError:  # the process ended meanwhile
            continue
    return found


@pytest.mark.cluster
def test_ray_sweep_without_an_address_starts_and_stops_its_own_cluster(tmp_path):
    """The sweep's own cluster: loopback only, too-large runs refused, a failing run recorded and not retried."""
    ray_tmp = tempfile.mkdtemp(prefix="cmeray-")  # short: Ray's socket paths are limited to 107 bytes
    env = {"RAY_TMPDIR": ray_tmp}
    try:
        out = tmp_path / "results"
        too_big = _cli("sweep", "--launcher", "ray", "--gpus-per-run", "1", "--adapters", "lora", *TINY, env=env, rc=2)
        assert "a run asks for 1 CPUs and 1 GPUs" in too_big.stderr and not out.exists()
        broken = tmp_path / "broken.yaml"  # r_a must be divisible by num_experts: fails when the adapter is built
        broken.write_text("method: teamlora\nparams:\n  r_a: 30\n  num_experts: 4\n")
        argv = ["sweep", "--launcher", "ray", "--adapters", f"lora,{broken}", *TINY, "--output", str(out)]
        proc = _cli(*argv, env=env, rc=1)
        (rec,) = _assert_complete(out, ["lora"], failed=("broken",)).values()
        assert rec["launch"]["attempts"] == 1 and rec["launch"]["worker"].startswith("127.0.0.1 ")
        assert re.search(r"running +tiny-llama--lora--cme-mini--s0 +on 127\.0\.0\.1 ", proc.stdout)
        assert re.search(r"failed +tiny-llama--broken--cme-mini--s0 +.*r_a", proc.stdout), proc.stdout
        assert "retried" not in proc.stdout and "1 of 2 runs failed" in proc.stdout
        assert (Path(ray_tmp) / "ray" / "session_latest").exists()  # the cluster lived there...
        deadline = time.monotonic() + 30  # ...and its processes end with the sweep (a few take a moment to exit)
        while _processes_mentioning(ray_tmp) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _processes_mentioning(ray_tmp) == []
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------------
# SLURM through submitit, with submitit's local executor standing in for the cluster


@pytest.mark.cluster
def test_slurm_sweep_requeues_a_signalled_job_which_resumes(tmp_path):
    """USR2 at step 2 is what SLURM sends ahead of a time limit: submitit calls ``checkpoint`` and requeues the job."""
    out = tmp_path / "results"
    adapters = ["lora", "teamlora"]
    argv = ["sweep", "--launcher", "slurm", "--submitit-cluster", "local", "--adapters", ",".join(adapters)]
    proc = _cli(*argv, *TINY, "--output", str(out), env={KILL_AFTER_STEP_ENV: "2", KILL_SIGNAL_ENV: "USR2"})
    records = _assert_complete(out, adapters)
    for rec in records.values():
        assert rec["launch"]["launcher"] == "slurm" and rec["launch"]["attempts"] == 2
        assert rec["training"]["resumed_from"] == 2
    logs = "".join(p.read_text() for p in (out / ".submitit").rglob("*_log.*"))
    assert logs.count("Calling checkpoint method") == 2 and logs.count("Requeued job") == 2
    assert len(re.findall(r"done .*after 2 attempts", proc.stdout)) == 2


@pytest.mark.cluster
def test_slurm_sweep_resubmits_a_killed_job_which_resumes(tmp_path):
    """SIGKILL leaves no result (as a failed node would): the waiting sweep submits the run again, resuming."""
    out = tmp_path / "results"
    argv = ["sweep", "--launcher", "slurm", "--submitit-cluster", "local", "--adapters", "lora"]
    proc = _cli(*argv, *TINY, "--output", str(out), env={KILL_AFTER_STEP_ENV: "2"})
    (rec,) = _assert_complete(out, ["lora"]).values()
    assert rec["launch"]["attempts"] == 2 and rec["training"]["resumed_from"] == 2
    job_ids = re.findall(r"job (\d+)", proc.stdout)
    assert re.search(r"retried .*job \d+, attempt 2", proc.stdout) and len(set(job_ids)) == 2
