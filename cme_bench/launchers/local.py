"""The ``local`` launcher: the sweep's runs one after another in this process (``runner.sweep``), the default."""

from __future__ import annotations

from typing import Any

from cme_bench.launchers import Emit, Group, Launcher, LaunchOptions


def launch(groups: list[Group], opts: LaunchOptions, emit: Emit) -> list[dict[str, Any]]:
    from cme_bench import runner

    return [outcome for cfg, names, baseline in groups for outcome in runner.sweep(cfg, names, baseline=baseline)]


LAUNCHER = Launcher("local", launch)
