"""`cme-bench plan`: predicted peak memory of training and generation, whether it fits a GPU, the largest batch.

Planning lives in ``cme_bench.plan``; this module parses and prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cme_bench import devices

HELP = "memory planner: predicted peak memory of training and generation from a model config, and what fits a GPU"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="smollm2-135m",
        help="built-in name, model folder or config.json (weights are not needed), e.g. "
        "benchmarks/configs/llama-2-7b/config.json",
    )
    parser.add_argument("--adapter", default="teamlora", help="adapter preset name or YAML path, or none")
    parser.add_argument("--batch-size", type=int, default=8, help="micro-batch size per GPU (default: %(default)s)")
    parser.add_argument("--max-seq-len", type=int, default=256, help="tokens per sequence (default: %(default)s)")
    parser.add_argument(
        "--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="base-model precision (default: bf16)"
    )
    parser.add_argument("--gpu-memory", help="GPU memory to fit into, e.g. 24GiB, 80GB (default: no fit verdict)")
    parser.add_argument(
        "--measure",
        action="store_true",
        help="also run the planned workloads for real on --device and print measured beside predicted peaks",
    )
    parser.add_argument("--device", default="auto", help=f"for --measure: {devices.DEVICE_HELP}")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the plan as JSON here")


def main(args: argparse.Namespace) -> int:
    from cme_bench import plan
    from cme_bench.results import write_json_atomic

    gpu = devices.memory_string(args.gpu_memory) if args.gpu_memory else None
    req = plan.PlanRequest(args.model, args.adapter, args.batch_size, args.max_seq_len, args.dtype, gpu)
    device = devices.resolve_device(args.device) if args.measure else None  # a missing device fails first
    doc = plan.make_plan(req)
    if device:
        doc["measured"] = {"device": device, **plan.measure(req, device)}
    print(render(doc))
    if args.json:
        write_json_atomic(args.json, doc)
        print(f"\nwrote {args.json}")
    return 0


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**30 else f"{n / 2**20:.1f} MiB"


def render(doc: dict[str, Any]) -> str:
    r, parts, train, gen = doc["request"], doc["parts"], doc["training"], doc["generation"]
    measured = doc.get("measured") or {}
    lines = [
        f"cme-bench plan: {r['model']} + {r['adapter']}, {r['dtype']}, batch {r['batch_size']} x "
        f"{r['max_seq_len']} tokens ({doc['layers']} layers, {doc['trainable_parameters']:,} trainable parameters; "
        f"{doc['seconds']:.1f} s)",
        "",
        f"  base weights            {_size(parts['weights']):>12}",
        f"  adapter weights         {_size(parts['adapter']):>12}",
        f"  gradients               {_size(parts['gradients']):>12}",
        f"  AdamW state             {_size(parts['optimizer']):>12}",
        f"  activations             {_size(train['activations']):>12}   "
        f"with gradient checkpointing {_size(train['activations_checkpointing'])}",
        f"  KV cache (generation)   {_size(gen['kv_cache']):>12}",
        "",
    ]
    rows = [
        ("training", train["total"], "train", "training"),
        ("training, checkpointing", train["total_checkpointing"], "train_checkpointing", "training_checkpointing"),
        ("generation", gen["total"], "generate", "generation"),
    ]
    gpu = doc.get("gpu")
    header = f"  {'peak':<24}{'predicted':>12}"
    header += f"{'measured':>12}{'ratio':>7}" if measured else ""
    header += f"   fits {_size(gpu['usable'])} of {_size(gpu['memory'])}   largest batch" if gpu else ""
    lines.append(header)
    for label, total, mkey, gkey in rows:
        line = f"  {label:<24}{_size(total):>12}"
        if measured:
            line += f"{_size(measured[mkey]):>12}{total / measured[mkey]:>7.2f}"
        if gpu:
            width = len(header) - len(line) - len("largest batch")
            line += f"{'   yes' if gpu['fits'][gkey] else '   NO':<{width}}{gpu['largest_batch'][gkey]:>6}"
        lines.append(line)
    if measured:
        lines.append(f"  (measured on {measured['device']}: allocator peak of the same workload)")
    return "\n".join(lines)
