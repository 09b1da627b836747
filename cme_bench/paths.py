"""Where cme-bench finds its own folders: ``tasks/``, ``adapters/``, ``results/`` and the cache.

A source checkout (the documented way to install) uses the folders at the repository root; an installed wheel uses
the copies bundled under ``cme_bench/_builtin``. Environment variables override both:

- ``CME_BENCH_TASKS``: the task YAML folder;
- ``CME_BENCH_ADAPTERS``: the adapter preset folder;
- ``CME_BENCH_CACHE``: the cache folder (default ``$XDG_CACHE_HOME/cme-bench``, i.e. ``~/.cache/cme-bench``).
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent


def _builtin(name: str, env: str) -> Path:
    if os.environ.get(env):
        return Path(os.environ[env]).expanduser().resolve()
    for candidate in (REPO_DIR / name, PACKAGE_DIR / "_builtin" / name):
        if candidate.is_dir():
            return candidate
    return REPO_DIR / name


def tasks_dir() -> Path:
    """The folder of lm-eval task YAMLs that ships with cme-bench."""
    return _builtin("tasks", "CME_BENCH_TASKS")


def adapters_dir() -> Path:
    """The folder of adapter preset YAMLs that ships with cme-bench."""
    return _builtin("adapters", "CME_BENCH_ADAPTERS")


def cache_dir() -> Path:
    """The cache folder (created on demand by whoever writes into it)."""
    if os.environ.get("CME_BENCH_CACHE"):
        return Path(os.environ["CME_BENCH_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "cme-bench"
