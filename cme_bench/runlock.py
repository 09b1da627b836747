"""One writer per run folder, and reruns that cannot lose a good record.

``begin(run_dir)`` starts an *attempt* at a run:

- it takes the run's lock, ``<results>/.<run-id>.lock`` (``flock``, so the kernel releases it when the process
  dies, however it dies). A second process on the same run stops at once with ``RunBusy`` naming the holder (pid,
  host, start time); it does not wait. A lock file left behind by a killed process is recovered silently apart from
  one log line: nobody holds its ``flock`` any more. The file is removed on release.
- it chooses where the attempt writes. Over a record that finished successfully (a ``--force`` rerun) or that
  cannot be read, the attempt is *staged*: it builds the new record in ``<results>/.<run-id>.attempt-<id>/`` and
  ``end(ok=True)`` swaps it into place in one ``renameat2(RENAME_EXCHANGE)`` (two renames where the kernel lacks
  it). A failed, interrupted or killed rerun never touches the previous record. Otherwise (a new run, or a failed
  or interrupted one being retried or resumed) the attempt writes in place, so checkpoints and finished tasks are
  picked up.
- every attempt has an id, written into ``run.json`` (``"attempt"``) and into every per-sample line, so a reader
  can tell samples of another attempt from this record's own (the report does).

``end(ok=False, started=False)`` (nothing was loaded: a mistyped ``--model``) leaves no record behind: the folder
is removed when this attempt created it, and the previous ``run.json`` is restored when it existed. Hidden
leftovers of killed attempts (``.<run-id>.attempt-*``, ``.<run-id>.old-*``) are cleared by the next attempt, which
holds the lock. Report readers skip hidden folders.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cme_bench import results
from cme_bench.errors import CmeError

log = logging.getLogger(__name__)

ATTEMPT_KEY = "attempt"  # in run.json and in every line of samples/<task>.jsonl
_LOCK_TRIES = 10  # re-opens when the lock file is replaced under us between open and flock (bounded)


class RunBusy(CmeError):
    """Another live process holds the run's lock."""


@dataclass
class Attempt:
    """One attempt at a run: where it writes (``dir``) and what ``end`` must do to the run folder (``final``)."""

    final: Path
    dir: Path
    id: str
    staged: bool = False
    created: bool = False  # ``final`` did not exist before this attempt
    previous: bytes | None = None  # run.json as it was before an in-place attempt
    lock_fd: int | None = None
    lock_path: Path | None = None


def lock_path(run_dir: Path) -> Path:
    return run_dir.parent / f".{run_dir.name}.lock"


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 1024).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _lock(run_dir: Path, attempt_id: str) -> tuple[int, Path]:
    path = lock_path(run_dir)
    for _ in range(_LOCK_TRIES):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunBusy(
                f"run {run_dir.name!r} is being written by another process ({holder or 'unknown holder'}; lock "
                f"{path}). Wait for it to finish, or use --tag to run a variant under another id"
            ) from None
        # The previous holder unlinks the file on release: make sure we locked the file that is at the path now.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            stale = _holder(fd)
            if stale:
                log.info("recovered the lock of %s left by a process that is gone (%s)", run_dir.name, stale)
            os.ftruncate(fd, 0)
            info = f"pid {os.getpid()} on {socket.gethostname()} since {results.now()}, attempt {attempt_id}"
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, info.encode() + b"\n")
            return fd, path
        os.close(fd)
    raise CmeError(f"could not take the lock {path}: it keeps being replaced")


def _unlock(fd: int, path: Path) -> None:
    try:
        if os.path.samestat(os.fstat(fd), os.stat(path)):
            path.unlink()
    except OSError:
        pass
    os.close(fd)  # closing releases the flock


def _clear_leftovers(run_dir: Path) -> None:
    """Remove what killed attempts left beside ``run_dir``; put back a record caught between two renames."""
    parent = run_dir.parent
    olds = sorted(parent.glob(f".{run_dir.name}.old-*"))
    if not run_dir.exists() and olds:
        os.replace(olds[-1], run_dir)
        log.warning("restored %s from an interrupted swap", run_dir)
        olds = olds[:-1]
    for path in [*olds, *parent.glob(f".{run_dir.name}.attempt-*")]:
        log.info("removing %s, left by an attempt that was killed", path)
        shutil.rmtree(path, ignore_errors=True)


def _needs_staging(run_dir: Path) -> bool:
    """A record worth protecting: a successful one, or one we cannot read (and so cannot judge)."""
    path = run_dir / "run.json"
    if not path.is_file():
        return False
    try:
        data = results.read_json(path)
    except (OSError, ValueError):
        return True
    return not isinstance(data, dict) or data.get("status") not in ("running", "failed", "cancelled")


def begin(run_dir: Path, *, enabled: bool = True) -> Attempt:
    """Lock ``run_dir`` and set up an attempt (see the module docstring). ``enabled=False``: non-main ranks."""
    run_dir = Path(run_dir)
    attempt = Attempt(final=run_dir, dir=run_dir, id=uuid.uuid4().hex[:12])
    if not enabled:
        return attempt
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    attempt.lock_fd, attempt.lock_path = _lock(run_dir, attempt.id)
    try:
        _clear_leftovers(run_dir)
        if _needs_staging(run_dir):
            attempt.staged = True
            attempt.dir = run_dir.parent / f".{run_dir.name}.attempt-{attempt.id}"
            attempt.dir.mkdir()
            log.info("rerun of %s is built in %s; the previous record stays until it succeeds", run_dir, attempt.dir)
        else:
            attempt.created = not run_dir.exists()
            if (run_dir / "run.json").is_file():
                attempt.previous = (run_dir / "run.json").read_bytes()
    except BaseException:
        _unlock(attempt.lock_fd, attempt.lock_path)
        raise
    return attempt


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False where unsupported."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False  # no kernel/file-system support: fall back to two renames
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(staging: Path, final: Path) -> None:
    if not final.exists():
        os.replace(staging, final)
        return
    if _exchange(staging, final):
        shutil.rmtree(staging)  # now holds the previous record
        return
    old = final.parent / f".{final.name}.old-{staging.name.rsplit('-', 1)[-1]}"
    os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old)


def end(attempt: Attempt, *, ok: bool, started: bool = True) -> Path:
    """Finish ``attempt``: swap a successful staged attempt in, discard a failed one; release the lock.

    Returns the folder that now holds the attempt's record (``final`` when it was swapped in).
    """
    if attempt.lock_fd is None:
        return attempt.dir
    try:
        if ok:
            if attempt.staged:
                _swap_in(attempt.dir, attempt.final)
                attempt.dir, attempt.staged = attempt.final, False
            return attempt.final
        if attempt.staged:
            shutil.rmtree(attempt.dir, ignore_errors=True)
            log.warning(
                "the rerun of %s did not finish: the previous record in %s is unchanged",
                attempt.final.name,
                attempt.final,
            )
        elif not started:
            # Nothing was loaded (e.g. a mistyped --model): a run that never started leaves no record.
            if attempt.created:
                shutil.rmtree(attempt.final, ignore_errors=True)
            elif attempt.previous is not None:
                results.write_text_atomic(attempt.final / "run.json", attempt.previous.decode("utf-8"))
        return attempt.dir
    finally:
        _unlock(attempt.lock_fd, attempt.lock_path)
        attempt.lock_fd = None


@contextlib.contextmanager
def closing(record: Any, *, keep: bool = False) -> Iterator[None]:
    """End ``record.attempt`` when the block exits: success swaps it in, an exception (any) discards it.

    ``record`` is the runner's ``RunRecord``; its ``dir`` follows the record to its final folder. A run counts as
    started once its record names a model. ``keep``: on success the attempt stays open (only failures end it).
    """
    try:
        yield
    except BaseException:
        record.dir = end(record.attempt, ok=False, started=record.data.get("model") is not None)
        raise
    if not keep:
        record.dir = end(record.attempt, ok=True)


def stamp(rows: list[dict[str, Any]], attempt_id: str | None) -> list[dict[str, Any]]:
    """Per-sample rows tagged with the attempt that wrote them."""
    if not attempt_id:
        return rows
    return [{**row, ATTEMPT_KEY: attempt_id} for row in rows]


def require_resumable(run_dir: Path) -> None:
    """``--resume`` on a run that has no record: say so instead of silently starting from scratch."""
    if not (Path(run_dir) / "run.json").is_file():
        raise CmeError(
            f"--resume: nothing to resume for run {Path(run_dir).name!r} (no {Path(run_dir) / 'run.json'}); "
            "drop --resume to start it, or check --output, --tag and --seed"
        )
