"""The ``hf`` evaluation backend: lm-eval's ``HFLM`` over the in-memory adapted model.

lm-eval receives the very model object we trained (``HFLM(pretrained=<model>)``), never a path it would reload with
its own loader: a routed adapter can therefore never be silently replaced by a plain one. A target without an
in-memory model (a resumed run, a sweep that trained everything first) is loaded from its saved adapter folder with
``adapters.load_adapter`` (strict). Sessions hold nothing shared, so every target is its own group.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

from cme_bench.backends import EvalTarget
from cme_bench.distributed import doc_key, run_sharded


def _progress_lm(model: Any, tokenizer: Any, batch_size: int):
    """An HFLM that reports through ``on_phase`` when generation ends and scoring begins (``evaluate.run_tasks``)."""
    from lm_eval.models.huggingface import HFLM

    class ProgressHFLM(HFLM):
        on_phase: Callable[[str], None] = staticmethod(lambda phase: None)

        def _answer(self, kind: str, requests, disable_tqdm: bool, phase: str | None = None):
            """HFLM's own ``kind`` method on ``requests``, reporting ``phase`` and then scoring. Under torchrun,
            inside distributed.sharded(), each rank answers its shard of the documents and receives everyone's
            answers; otherwise run_sharded is a plain call."""
            if phase:
                self.on_phase(phase)
            compute = lambda part: getattr(super(ProgressHFLM, self), kind)(part, disable_tqdm)  # noqa: E731
            out = run_sharded(requests, doc_key, compute)
            if phase:
                self.on_phase("scoring")
            return out

        def generate_until(self, requests, disable_tqdm: bool = False):
            return self._answer("generate_until", requests, disable_tqdm, f"generating {len(requests)}")

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return self._answer("loglikelihood", requests, disable_tqdm, f"scoring {len(requests)} continuations")

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return self._answer("loglikelihood_rolling", requests, disable_tqdm)

    return ProgressHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))


class HFSession:
    """Builds one ``HFLM`` per target; loads the model when the target does not carry it."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size

    def lm(self, target: EvalTarget):
        model, tokenizer = target.model, target.tokenizer
        if model is None:
            from cme_bench import adapters
            from cme_bench.devices import torch_dtype
            from cme_bench.models import load_model

            loaded = load_model(
                target.model_spec,
                device=target.device,
                dtype=torch_dtype(target.dtype),
                trust_remote_code=target.trust_remote_code,
            )
            model, tokenizer = loaded.model, loaded.tokenizer
            if target.adapter_dir is not None:
                model = adapters.load_adapter(model, target.adapter_dir)
        return _progress_lm(model, tokenizer, self.batch_size)

    def describe(self, target: EvalTarget) -> dict[str, Any]:
        return {}

    def __enter__(self) -> HFSession:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class HFBackend:
    """lm-eval and transformers are part of the main environment: nothing to check."""

    shards_documents = True  # under torchrun every process evaluates its shard (cme_bench.distributed)

    def check(self) -> None:
        return None

    def group_key(self, target: EvalTarget) -> Hashable:
        # A session holds nothing to share: one group per target keeps the sweep's log honest.
        return target.model_spec, None if target.adapter_dir is None else str(target.adapter_dir)

    def open(self, targets: Sequence[EvalTarget], *, seed: int, batch_size: int) -> HFSession:
        return HFSession(batch_size)


backend = HFBackend()
