"""The ``local`` launcher: the sweep's runs one after another in this process (``runner.sweep``), the default."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cme_bench.config import RunConfig
from cme_bench.launchers import Launcher, LaunchOptions


def launch(
    cfg: RunConfig, names: list[str], baseline: bool, opts: LaunchOptions, emit: Callable[[str], None]
) -> list[dict[str, Any]]:
    from cme_bench import runner

    return runner.sweep(cfg, names, baseline=baseline)


LAUNCHER = Launcher("local", launch)
