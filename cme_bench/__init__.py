"""cme-bench: train and compare parameter-efficient adapters on the CME multi-task benchmark.

The public API lives in the submodules (``cme_bench.models``, ``cme_bench.adapters``, ``cme_bench.taskreg``,
``cme_bench.runner``, ``cme_bench.report``). One call is exported here for users outside the CLI:

    import cme_bench
    model = cme_bench.load_adapter(model, "results/<run-id>/adapter")   # any saved adapter, routed ones included

It is resolved lazily, so ``import cme_bench`` (and ``cme-bench --help``) stays free of torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_adapter"]


def load_adapter(model: Any, adapter_dir: Any) -> Any:
    """Attach the adapter saved in ``adapter_dir`` to the transformers causal LM ``model`` (strict: every tensor must
    match) and return the adapted model: a ``PeftModel`` for LoRA/DoRA/AdaLoRA, else ``model`` itself with the
    adapter layers injected in place (``generate``, lm-eval's ``HFLM(pretrained=model)`` and ``save_pretrained`` of
    the base keep working). See ``cme_bench.adapters.load_adapter``."""
    from cme_bench.adapters import load_adapter as _load

    return _load(model, adapter_dir)
