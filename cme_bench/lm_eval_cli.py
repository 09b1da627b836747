"""Plain lm-evaluation-harness on any cme-bench adapter, routed ones included: the lm-eval model ``cme-bench``.

lm-eval 0.4 finds models in its own registry (``lm_eval.api.registry``), filled when a module calling
``register_model`` is imported; it has no plugin entry point. Importing this module registers ``cme-bench``, and
running it as a script runs lm-eval's own command line after that import::

    python -m cme_bench.lm_eval_cli --model cme-bench \\
        --model_args pretrained=smollm2-135m,adapter=results/<run-id>/adapter \\
        --tasks cme_mini_boolq --include_path tasks --batch_size 16

Every lm-eval option works as with ``lm_eval`` itself. ``pretrained`` is anything ``cme-bench --model`` accepts (a
model folder, a ``.gguf`` file, a built-in name, ``hf:org/name``); ``adapter`` a saved adapter folder (cme-bench's
or PEFT's; omitted: the base model); optional ``dtype`` (``float32``, ``bfloat16``, ...) and ``trust_remote_code``.
The model is loaded with ``cme_bench.models.load_model`` and the adapter attached with ``cme_bench.load_adapter``
(strictly), then handed to lm-eval's ``HFLM`` as an in-memory model: prompts, generation and scoring are lm-eval's,
exactly as ``cme-bench eval`` runs them, so the scores agree item for item. From Python, ``import
cme_bench.lm_eval_cli`` then ``lm_eval.simple_evaluate(model="cme-bench", model_args=...)``.
"""

from __future__ import annotations

import sys
from typing import Any

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

MODEL_NAME = "cme-bench"


@register_model(MODEL_NAME)
class CmeBenchLM(HFLM):
    """lm-eval's ``HFLM`` over a model loaded by cme-bench with one of its adapters attached."""

    def __init__(
        self,
        pretrained: str,
        adapter: str | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        device: str | None = None,
        **kwargs: Any,
    ) -> None:
        import torch

        from cme_bench.adapters import load_adapter
        from cme_bench.models import load_model

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = None if dtype in (None, "auto") else getattr(torch, str(dtype))
        remote = str(trust_remote_code).lower() in ("true", "1")  # model_args arrive as strings or parsed bools
        loaded = load_model(str(pretrained), dtype=torch_dtype, device=device, trust_remote_code=remote)
        model = load_adapter(loaded.model, adapter) if adapter else loaded.model
        model.eval()
        super().__init__(pretrained=model, tokenizer=loaded.tokenizer, device=str(model.device), **kwargs)


def main() -> None:
    """lm-eval's command line, with the ``cme-bench`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    sys.exit(main())
