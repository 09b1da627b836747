"""vLLM plugin: registers the routed-adapter model class in every vLLM process.

vLLM loads the ``vllm.general_plugins`` entry points in the main process, the engine-core process and each worker
(the CPU platform starts them with ``spawn``, so a registration done only in the caller's process would not reach
them). Entry point, in pyproject.toml::

    [project.entry-points."vllm.general_plugins"]
    cme_bench = "cme_bench.vllm_backend.plugin:register"

The class is registered by its import string, so registering imports nothing from vLLM's model code. On the CPU
platform, registering also points vLLM's LoRA kernels at ``punica.CmePunicaWrapperCPU`` (see ``punica.py``).
"""

from __future__ import annotations

ROUTED_ARCHITECTURE = "CmeRoutedLlamaForCausalLM"
ROUTED_CLASS = "cme_bench.vllm_backend.model:CmeRoutedLlamaForCausalLM"
CPU_PUNICA = "vllm.lora.punica_wrapper.punica_cpu.PunicaWrapperCPU"
CME_PUNICA = "cme_bench.vllm_backend.punica.CmePunicaWrapperCPU"
CPU_LORA_ENV = "CME_VLLM_CPU_LORA"  # "cme" (default): CmePunicaWrapperCPU; "vllm": vLLM's own CPU LoRA ops


def register() -> None:
    """Register ``ROUTED_ARCHITECTURE``; safe to call more than once (vLLM loads plugins in several processes)."""
    from vllm import ModelRegistry

    if ROUTED_ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ROUTED_ARCHITECTURE, ROUTED_CLASS)
    _use_cme_cpu_lora()


def _use_cme_cpu_lora() -> None:
    """Serve LoRA by request with ``punica.CmePunicaWrapperCPU`` where vLLM would use its CPU torch ops.

    Only a platform whose wrapper is exactly vLLM's CPU one is changed (GPU platforms keep their kernels), and
    ``CME_VLLM_CPU_LORA=vllm`` keeps vLLM's own. The string is resolved by vLLM when an engine enables LoRA.
    """
    import os

    from vllm.platforms import current_platform

    choice = os.environ.get(CPU_LORA_ENV, "cme").strip().lower()
    if choice not in ("cme", "vllm"):
        raise ValueError(f"{CPU_LORA_ENV} must be 'cme' or 'vllm', got {choice!r}")
    if choice == "cme" and current_platform.get_punica_wrapper() == CPU_PUNICA:
        current_platform.get_punica_wrapper = lambda: CME_PUNICA  # instance attribute over the classmethod


def entry_point_installed() -> bool:
    """Whether an installed distribution declares our ``vllm.general_plugins`` entry point."""
    from importlib.metadata import entry_points

    return any(ep.value == f"{__name__}:register" for ep in entry_points(group="vllm.general_plugins"))
