"""Generation throughput, vLLM vs HF ``generate``, for the base model, ``lora`` and ``teamlora``, side by side.

Run in the vLLM environment (it needs both backends)::

    .venv-vllm/bin/python benchmarks/vllm_throughput.py --model smollm2-135m --batch 32 --max-tokens 64

Both backends decode the same ``--batch`` prompts greedily for exactly ``--max-tokens`` new tokens (EOS ignored), in
the same dtype; tokens/s = batch x max_tokens / wall time of the generate call, after one warm-up call each, and
tokens per CPU-second (this process's CPU time; the vLLM engine runs in-process on CPU) for shared, loaded machines.
HF runs the whole batch as one left-padded ``generate``; vLLM serves the LoRA by request (``lora-merged``: merged
into the base) and TeamLoRA through its routed model, each on its own engine. ``--compile`` lets vLLM use
torch.compile (LoRA by request stays eager: vLLM turns compilation off for LoRA on CPU). Adapters are the shipped
presets with random non-zero weights (speed does not depend on the values). Engine start-up time is reported
separately, not counted in tokens/s.

The ``if __name__ == "__main__":`` guard is required: vLLM's CPU engine re-imports this module in its processes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPT_TEMPLATES = [
    "Write a short story about a robot who learns to {}.",
    "Explain to a child why {} matters.",
    "Question: what is the best way to {}?\nAnswer:",
    "List five facts about {}:",
]
TOPICS = ["paint", "the ocean", "cook pasta", "volcanoes", "sleep", "learn a language", "the moon", "gardening"]


def prompts(n: int) -> list[str]:
    return [PROMPT_TEMPLATES[i % len(PROMPT_TEMPLATES)].format(TOPICS[i % len(TOPICS)]) for i in range(n)]


def make_adapters(model_dir: Path, out: Path, methods: list[str]) -> dict[str, Path]:
    """Shipped presets (``adapters/<name>.yaml``) with random non-zero weights, saved next to each other."""
    import torch
    from transformers import AutoModelForCausalLM

    from cme_bench.adapters import apply_adapter, load_preset, save_adapter
    from cme_bench.models import architecture_info
    from cme_bench.vllm_backend.timing import randomise_adapter

    made = {}
    for name in methods:
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        preset = load_preset(name)
        preset.params["dropout"] = 0.0
        info = architecture_info(base)  # before injection: the fingerprint covers the weights
        model = apply_adapter(base, preset, seed=0)
        randomise_adapter(model, seed=0)
        made[name] = save_adapter(model, out / name, base_info=info)
    return made


def hf_throughput(
    model_dir: Path, adapter: Path | None, texts: list[str], max_tokens: int, dtype, device: str = "cpu"
) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cme_bench.adapters import load_adapter

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, device_map=device)
    if adapter is not None:
        model = load_adapter(model, adapter)
    model.eval()
    batch = tok(texts, return_tensors="pt", padding=True).to(device)
    kwargs = dict(max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.inference_mode():
        model.generate(
            **tok(texts[:2], return_tensors="pt", padding=True).to(device),
            max_new_tokens=4,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        out = model.generate(**batch, **kwargs)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    new = (out.shape[1] - batch.input_ids.shape[1]) * len(texts)
    return _rates(new, seconds, cpu)


def _rates(tokens: int, seconds: float, cpu: float) -> dict[str, Any]:
    # Tokens per CPU-second as well: on a shared machine wall time swings with other processes' load, CPU time less.
    return {
        "tokens": tokens,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "tokens_per_s": tokens / seconds,
        "tokens_per_cpu_s": tokens / max(cpu, 1e-9),
    }


def vllm_throughput(engine, plan, texts: list[str], max_tokens: int) -> dict[str, Any]:
    engine.generate_ids(texts[:2], 4, plan, ignore_eos=True)  # warm-up (also loads the LoRA into the engine)
    t0, c0 = time.perf_counter(), time.process_time()
    ids = engine.generate_ids(texts, max_tokens, plan, ignore_eos=True)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    # In-process engine (the CPU default): process_time covers the engine's threads too.
    return _rates(sum(len(x) for x in ids), seconds, cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="model folder or built-in name (default %(default)s)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--methods",
        default="base,lora,teamlora",
        help="comma-separated; 'lora-merged' = the lora adapter served merged into the base (lora_serving='merged')",
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--device", default="auto", help="where HF generates: auto | cpu | cuda | cuda:N")
    parser.add_argument("--compile", action="store_true", help="let vLLM use torch.compile (slower start-up)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON record here")
    args = parser.parse_args()

    import torch

    from cme_bench import vllm_backend
    from cme_bench.vllm_backend.backend import model_folder

    vllm_backend.require_vllm()
    from cme_bench.devices import resolve_device

    device = resolve_device(args.device)
    model_dir = model_folder(args.model)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    texts = prompts(args.batch)
    dtype = getattr(torch, args.dtype)
    engine_kw = dict(dtype=args.dtype, max_model_len=512, enforce_eager=not args.compile, max_num_seqs=args.batch)
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="cme-vllm-bench-") as tmp:
        presets = sorted({m.removesuffix("-merged") for m in methods if m != "base"})
        made = make_adapters(model_dir, Path(tmp), presets)
        adapters = {m: made[m.removesuffix("-merged")] for m in methods if m != "base"}
        plans = {}
        for m in methods:
            serving = "merged" if m.endswith("-merged") else "request"
            plans[m] = vllm_backend.plan(model_dir, adapters.get(m), lora_serving=serving)
        # HF first: an in-process vLLM engine changes process-wide CPU settings (threads, memory binding).
        for m in methods:
            rows[m] = {"hf": hf_throughput(model_dir, adapters.get(m), texts, args.max_tokens, dtype, device)}
            print(f"HF {m}: {rows[m]['hf']['tokens_per_s']:.1f} tok/s", flush=True)
        # One engine per row, so each is measured alone (the base engine of a sweep would also carry the LoRA
        # machinery, which turns torch.compile off on CPU).
        for m, p in plans.items():
            t0 = time.perf_counter()
            with vllm_backend.start_engine([p], **engine_kw) as engine:
                rows[m]["engine_start_s"] = time.perf_counter() - t0
                rows[m]["vllm"] = vllm_throughput(engine, p, texts, args.max_tokens)
                print(f"vLLM {m}: {rows[m]['vllm']['tokens_per_s']:.1f} tok/s", flush=True)
        for m in methods:
            rows[m]["ratio"] = rows[m]["vllm"]["tokens_per_s"] / rows[m]["hf"]["tokens_per_s"]
            rows[m]["ratio_cpu"] = rows[m]["vllm"]["tokens_per_cpu_s"] / rows[m]["hf"]["tokens_per_cpu_s"]

    print(
        f"\nmodel {model_dir.name}, batch {args.batch}, {args.max_tokens} new tokens, {args.dtype}, "
        f"{os.cpu_count()} CPUs, vLLM {'compiled' if args.compile else 'eager'}"
    )
    print(
        f"{'adapter':10} {'HF tok/s':>10} {'vLLM tok/s':>11} {'ratio':>7}   "
        f"{'HF tok/cpu-s':>13} {'vLLM tok/cpu-s':>15} {'ratio':>7} {'engine start':>13}"
    )
    for m in methods:
        r = rows[m]
        print(
            f"{m:10} {r['hf']['tokens_per_s']:10.1f} {r['vllm']['tokens_per_s']:11.1f} {r['ratio']:6.2f}x   "
            f"{r['hf']['tokens_per_cpu_s']:13.1f} {r['vllm']['tokens_per_cpu_s']:15.1f} {r['ratio_cpu']:6.2f}x "
            f"{r['engine_start_s']:12.1f}s"
        )
    record = {
        "model": str(model_dir),
        "batch": args.batch,
        "max_tokens": args.max_tokens,
        "dtype": args.dtype,
        "device": device,
        "compile": args.compile,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "results": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
