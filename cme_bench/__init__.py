"""cme-bench: train and compare parameter-efficient adapters on the CME multi-task benchmark.

The public API lives in the submodules (``cme_bench.models``, ``cme_bench.adapters``, ``cme_bench.taskreg``,
``cme_bench.runner``, ``cme_bench.report``); this file only carries the version.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
