"""Process-wide performance defaults, set in the environment before torch (and its OpenMP runtime) is loaded.

OpenMP reads its settings once, when the runtime starts, so they must be in ``os.environ`` before the first
``import torch``; ``cme_bench.cli.main`` calls ``apply`` first thing. A variable the user has set always wins, and
``CME_BENCH_NO_PERF_DEFAULTS=1`` turns all of them off. The measurement behind each value is
``benchmarks/threading_defaults.py`` (README, "Performance defaults").

- ``OMP_WAIT_POLICY=PASSIVE``: GNU OpenMP's default lets idle worker threads spin for a while before they sleep. On a
  machine that also runs other work (a shared server, a laptop) the spinning threads take CPU time from the threads
  doing the work, and every parallel region waits for its slowest thread. Passive waiting costs little on an idle
  machine and saves much on a busy one.

The thread count is left to torch (one thread per physical core), and no allocator is preloaded: a preload only
works from the process's start (``LD_PRELOAD``), so it stays the user's choice (see the README).
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

DEFAULTS: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}

OPT_OUT = "CME_BENCH_NO_PERF_DEFAULTS"


def apply(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set every default the user has not set; returns what was set (nothing once torch is loaded: too late)."""
    environ = os.environ if environ is None else environ
    if environ.get(OPT_OUT, "") not in ("", "0") or "torch" in sys.modules:
        return {}
    applied = {key: value for key, value in DEFAULTS.items() if key not in environ}
    environ.update(applied)
    return applied
