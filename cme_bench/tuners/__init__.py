"""The adapter-method registry: one name everywhere (CLI value = registry key = preset ``method`` = test id).

Each entry is a lazy ``"module:attr"`` target resolving to a ``MethodSpec`` (see ``tuners.base``). PEFT-backed
methods (lora, dora, adalora) live together in ``peft_methods``; every other method has its own module.

Adding a method (docs/ARCHITECTURE.md, "How to add a method"): write ``cme_bench/tuners/<name>.py`` with the math as
functions of tensors, a layer class that calls them (mixing in ``AdapterLayerMixin``, starting with its
``init_adapter``, adapter tensors named ``lora_*``) and ``METHOD = MethodSpec(...)`` (everything generic code asks:
serving kind and the function vLLM calls, step hook, aux loss, deviations, expert count); add one ``register`` line
below, a preset ``adapters/<name>.yaml``, and tests. No other module changes.
"""

from __future__ import annotations

from cme_bench.registry import Registry
from cme_bench.tuners.base import MethodSpec

TUNERS: Registry[MethodSpec] = Registry("adapter method")

TUNERS.register("lora", "cme_bench.tuners.peft_methods:LORA")
TUNERS.register("dora", "cme_bench.tuners.peft_methods:DORA")
TUNERS.register("adalora", "cme_bench.tuners.peft_methods:ADALORA")
TUNERS.register("moslora", "cme_bench.tuners.moslora:METHOD")
TUNERS.register("multilora", "cme_bench.tuners.multilora:METHOD")
TUNERS.register("moelora", "cme_bench.tuners.moelora:METHOD")
TUNERS.register("hydralora", "cme_bench.tuners.hydralora:METHOD")
TUNERS.register("loramoe", "cme_bench.tuners.loramoe:METHOD")
TUNERS.register("mixlora", "cme_bench.tuners.mixlora:METHOD")
TUNERS.register("smora", "cme_bench.tuners.smora:METHOD")
TUNERS.register("teamlora", "cme_bench.tuners.teamlora:METHOD")
TUNERS.register("comol", "cme_bench.tuners.comol:METHOD")
TUNERS.register("mola", "cme_bench.tuners.mola:METHOD")


def get_method(name: str) -> MethodSpec:
    """The ``MethodSpec`` registered as ``name``; a miss raises CmeError with near matches."""
    return TUNERS.get(name)


__all__ = ["TUNERS", "MethodSpec", "get_method"]
