"""Training throughput of the padding-free loop against the padded one it replaced, side by side in one run.

For each adapter (default: LoRA and TeamLoRA on SmolLM2-135M, the default run's mixture and settings: CME-mini, 200
examples per task, 256 tokens, 8 examples per step), the same optimiser steps (the same examples, drawn as the
training loop draws them) are timed, interleaved step by step so machine load hits every variant alike:

- ``padded``: the previous loop: every example right-padded to the longest of its micro-batch, logits for every
  position, the model's own loss;
- ``padded+selective``: padded, but logits only where a label follows (``logits_to_keep``);
- ``packed``: the current default: examples concatenated into rows of up to 256 tokens, position ids restarting per
  example, logits only where a label follows.

Each timing is one step's forward, backward and AdamW update. Printed: padding share, median seconds per step, real
tokens per second (prompt + target tokens, never padding) and the ratio to ``padded``.

Usage: ``python benchmarks/train_packing.py [--model smollm2-135m] [--adapters lora,teamlora] [--steps 8]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch

from cme_bench import adapters
from cme_bench.mixture import MixtureConfig, build_mixture
from cme_bench.models import load_model
from cme_bench.train import TrainConfig, _collate, _step, collate, step_examples, tokenize_pairs
from cme_bench.tuners.tokens import token_segments


class _NoAccelerator:
    """The few ``Accelerator`` methods ``train._step`` uses, for one process on the CPU (no wrapping, no scaling)."""

    device = torch.device("cpu")

    def no_sync(self, model):  # one process: nothing to synchronise
        return nullcontext()

    def autocast(self):
        return torch.autocast("cpu", enabled=False)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()


def padded_step(model, batch_examples, pad_id: int) -> None:
    """The loop as it was: one padded micro-batch, every position projected to the vocabulary, the model's loss."""
    batch = collate(batch_examples, pad_id)
    segments = batch.pop("segments")
    with token_segments(segments):
        out = model(**batch)
        aux = adapters.aux_loss(model)
        (out.loss + (aux if aux is not None else 0.0)).backward()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--adapters", default="lora,teamlora")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per variant (after one warm-up step)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--train-cap", type=int, default=200)
    args = ap.parse_args()

    loaded = load_model(args.model)
    records = build_mixture(MixtureConfig(cap_per_task=args.train_cap, seed=0))
    examples = tokenize_pairs(records, loaded.tokenizer, args.max_seq_len)
    pad = loaded.tokenizer.pad_token_id
    print(f"model {loaded.name}, {len(examples)} examples, torch threads {torch.get_num_threads()}")
    for name in args.adapters.split(","):
        torch.manual_seed(0)
        model = adapters.apply_adapter(load_model(args.model).model, adapters.load_preset(name), total_steps=100)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        variants = {
            "padded": None,
            "padded+selective": TrainConfig(packing=False, max_seq_len=args.max_seq_len),
            "packed": TrainConfig(packing=True, max_seq_len=args.max_seq_len),
        }
        times: dict[str, list[float]] = {v: [] for v in variants}
        real = {v: 0 for v in variants}
        positions = {v: 0 for v in variants}
        cfg = TrainConfig(batch_size=args.batch_size, max_seq_len=args.max_seq_len)
        for step, mine in step_examples(len(examples), cfg, 0, 1):
            if step > args.steps:
                break
            batch_examples = [examples[i] for i in mine]
            for variant, vcfg in variants.items():
                t0 = time.perf_counter()
                if vcfg is None:
                    padded_step(model, batch_examples, pad)
                    width = max(len(e["input_ids"]) for e in batch_examples)
                    pos = width * len(batch_examples)
                else:
                    batch = _collate(vcfg, batch_examples, pad, selective=True)
                    pos = batch["segments"].numel()
                    _step(_NoAccelerator(), model, model, [batch])
                opt.step()
                opt.zero_grad(set_to_none=True)
                if step == 0:  # warm-up
                    continue
                times[variant].append(time.perf_counter() - t0)
                real[variant] += sum(len(e["input_ids"]) for e in batch_examples)
                positions[variant] += pos
        base = None
        print(f"\n{name}: {args.steps} steps of {args.batch_size} examples (median s/step, real tokens/s)")
        for variant in variants:
            med = statistics.median(times[variant])
            tps = real[variant] / sum(times[variant])
            base = base or tps
            share = 1 - real[variant] / positions[variant]
            print(f"  {variant:18s} padding {share:6.1%}  {med:7.3f} s/step  {tps:8.1f} tok/s  x{tps / base:.2f}")


if __name__ == "__main__":
    main()
