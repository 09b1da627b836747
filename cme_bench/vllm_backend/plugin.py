"""vLLM plugin: registers the routed-adapter model class in every vLLM process.

vLLM loads the ``vllm.general_plugins`` entry points in the main process, the engine-core process and each worker
(the CPU platform starts them with ``spawn``, so a registration done only in the caller's process would not reach
them). Entry point, in pyproject.toml::

    [project.entry-points."vllm.general_plugins"]
    cme_bench = "cme_bench.vllm_backend.plugin:register"

The class is registered by its import string, so registering imports nothing from vLLM's model code.
"""

from __future__ import annotations

ROUTED_ARCHITECTURE = "CmeRoutedLlamaForCausalLM"
ROUTED_CLASS = "cme_bench.vllm_backend.model:CmeRoutedLlamaForCausalLM"


def register() -> None:
    """Register ``ROUTED_ARCHITECTURE``; safe to call more than once (vLLM loads plugins in several processes)."""
    from vllm import ModelRegistry

    if ROUTED_ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ROUTED_ARCHITECTURE, ROUTED_CLASS)


def entry_point_installed() -> bool:
    """Whether an installed distribution declares our ``vllm.general_plugins`` entry point."""
    from importlib.metadata import entry_points

    return any(ep.value == f"{__name__}:register" for ep in entry_points(group="vllm.general_plugins"))
