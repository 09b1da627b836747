"""`cme-bench profile`: the efficiency benchmark: parse flags, run ``cme_bench.profile``, print its tables
and write the profile JSON. Measuring lives in ``cme_bench.profile``; this module only parses and prints."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from cme_bench import devices, runfile
from cme_bench.errors import CmeError

HELP = "efficiency benchmark: training step, prefill/decode latency, peak memory and parameters per adapter"

DEFAULT_ADAPTERS = "lora,moelora,hydralora,teamlora"


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m", help="base model (default: smollm2-135m)")
    parser.add_argument("--adapters", type=_names, default=_names(DEFAULT_ADAPTERS), help="comma-separated presets")
    parser.add_argument(
        "--experts",
        type=_int_list,
        default=None,
        help="k values, e.g. 2,4,8: routed presets get k experts of --rank each (TeamLoRA r_a = k * rank), "
        "non-routed presets the same total rank k * rank, plus rank --rank once; without it presets run as shipped",
    )
    parser.add_argument("--rank", type=int, default=32, help="per-expert rank r_B for --experts (default 32)")
    parser.add_argument("--forms", type=_names, default=["reference", "fused"], help="forward forms of routed presets")
    parser.add_argument("--batch", type=int, default=2, help="sequences per step and per generation (default 2)")
    parser.add_argument("--seq-len", type=int, default=128, help="training sequence length (default 128)")
    parser.add_argument("--prompt-len", type=int, default=None, help="generation prompt length (default: --seq-len)")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens decoded per generation (default 16)")
    parser.add_argument("--repeats", type=int, default=5, help="timed training steps per variant (default 5)")
    parser.add_argument("--infer-repeats", type=int, default=3, help="timed generations per variant (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing (default 1)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-variant peak-memory child processes")
    parser.add_argument("--device", default="auto", help=devices.DEVICE_HELP)
    parser.add_argument("--dtype", default="auto", help=devices.DTYPE_HELP)
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="build --model from its config alone (a config.json is enough) with random weights: costs depend on "
        "shapes only, e.g. --model benchmarks/configs/llama-2-7b/config.json",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--vllm",
        action="store_true",
        help="also time generation through vLLM (fused forms; run from the vLLM environment: scripts/vllm-run.sh)",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the profile JSON here")
    runfile.add_config_argument(parser)


def main(args: argparse.Namespace) -> int:
    import torch

    from cme_bench import profile
    from cme_bench.models import load_model, random_model
    from cme_bench.results import check_output_file, write_json_atomic

    _check(args)
    if args.json:  # before the measurement, not after it
        check_output_file(args.json, flag="--json")
    if args.vllm:
        from cme_bench.vllm_backend import require_vllm

        require_vllm()  # before any measuring: fail fast with the install command
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = devices.resolve(args.device, args.dtype)  # a missing device is a CmeError, before any work
    settings = profile.ProfileSettings(
        batch=args.batch,
        seq_len=args.seq_len,
        prompt_len=args.prompt_len or args.seq_len,
        new_tokens=args.new_tokens,
        warmup=args.warmup,
        repeats=args.repeats,
        infer_repeats=args.infer_repeats,
        memory=not args.no_memory,
        seed=args.seed,
    )
    variants = profile.plan_variants(args.adapters, args.experts, args.rank, args.forms)
    logging.getLogger(__name__).info("profiling %s", ", ".join(v.label for v in variants))
    load = random_model if args.random_weights else load_model
    loaded = load(args.model, device=device, dtype=devices.torch_dtype(dtype))
    doc = profile.run_profile(loaded, variants, settings, rank=args.rank)
    if args.vllm:
        from cme_bench.vllm_backend.timing import time_variants

        fused = [v for v in variants if v.form == "fused"]
        figures = time_variants(
            loaded,
            fused,
            profile.apply_variant,
            batch=settings.batch,
            prompt_len=settings.prompt_len,
            new_tokens=settings.new_tokens,
            warmup=settings.warmup,
            repeats=settings.infer_repeats,
            seed=settings.seed,
        )
        profile.add_vllm_figures(doc, figures)
    print(render(doc))
    if args.json:
        write_json_atomic(args.json, doc)
        print(f"\nwrote {args.json}")
    return 0


def _check(args: argparse.Namespace) -> None:
    problems = [
        f"--{name.replace('_', '-')} must be at least {low}, got {getattr(args, name)}"
        for name, low in (("batch", 1), ("seq_len", 2), ("new_tokens", 2), ("repeats", 1), ("infer_repeats", 1))
        if getattr(args, name) < low
    ]
    if args.warmup < 0:
        problems.append(f"--warmup must be at least 0, got {args.warmup}")
    if problems:
        raise CmeError("; ".join(problems))


# ----------------------------------------------------------------------------------------------------------------
# Text rendering


def render(doc: dict[str, Any]) -> str:
    """The three tables: figures per variant, ratios beside the paper's, and the TeamLoRA efficiency targets."""
    parts = [_header(doc), _figures(doc["rows"]), _ratios(doc["ratios"]), _targets(doc["targets"])]
    if doc["settings"].get("vllm"):
        parts.insert(3, _vllm(doc))
    return "\n\n".join(parts)


def _header(doc: dict[str, Any]) -> str:
    s = doc["settings"]
    return (
        f"cme-bench profile: {doc['model']} on {s['device']} ({s['dtype']}, {s['threads']} threads); "
        f"train batch {s['batch']} x {s['seq_len']} tokens, {s['repeats']} timed steps after {s['warmup']} warm-up; "
        f"generation batch {s['batch']}, {s['prompt_len']}-token prompt, {s['new_tokens']} new tokens, "
        f"{s['infer_repeats']} runs. Medians, [p25-p75]."
    )


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def _figures(rows: list[dict[str, Any]]) -> str:
    header = ["adapter", "method", "k", "form", "train ms", "[p25-p75]", "tok/s", "prefill ms", "decode ms/tok"]
    header += ["peak MiB", "trainable", "share %"]
    body = []
    for r in rows:
        t = r["train_step_ms"]
        peak = None if r["peak_memory_bytes"] is None else r["peak_memory_bytes"] / 2**20
        share = None if r["trainable_share"] is None else 100 * r["trainable_share"]
        body.append(
            [
                r["adapter"],
                r["method"],
                _num(r["experts"], "{}"),
                r["form"],
                _num(t["median"]),
                f"[{t['p25']:.0f}-{t['p75']:.0f}]",
                _num(r["tokens_per_second"], "{:.0f}"),
                _num(r["prefill_ms"]),
                _num(r["decode_ms_per_token"], "{:.2f}"),
                _num(peak, "{:.0f}"),
                f"{r['trainable_parameters']:,}",
                _num(share, "{:.2f}"),
            ]
        )
    return _table(header, body)


RATIO_COLUMNS = (
    ("train/LoRA(r)", "train_x_lora"),
    ("train/LoRA(kr)", "train_x_lora_same_rank"),
    ("train/MoELoRA", "train_x_moelora"),
    ("decode/LoRA(kr)", "decode_x_lora_same_rank"),
    ("decode/MoELoRA", "decode_x_moelora"),
)


def _ratios(ratios: list[dict[str, Any]]) -> str:
    """Ours with the paper's in brackets; LoRA(r) has the per-expert rank, LoRA(kr) the same total rank, MoELoRA is
    the reference (loop) form with the same k."""
    header = ["ratios (paper)", "k", "form", *(c for c, _ in RATIO_COLUMNS)]
    body = []
    for r in sorted(ratios, key=lambda r: (r["experts"], r["method"], r["form"])):
        cells = [r["adapter"], str(r["experts"]), r["form"]]
        for _, key in RATIO_COLUMNS:
            paper = r.get(f"paper_{key}")
            cells.append(_num(r.get(key), "{:.2f}") + ("" if paper is None else f" ({paper:.2f})"))
        body.append(cells)
    legend = "LoRA(r): per-expert rank; LoRA(kr): same total rank; MoELoRA: reference (loop) form, same k and rank."
    return _table(header, body) + "\n" + legend


def _vllm(doc: dict[str, Any]) -> str:
    """Generation through vLLM beside HF's, and TeamLoRA's vLLM decode over MoELoRA's and LoRA's."""
    ratios = {r["adapter"]: r for r in doc["ratios"]}
    header = ["vLLM", "served as", "prefill ms", "decode ms/tok", "HF decode", "HF/vLLM", "/MoELoRA", "/LoRA(kr)"]
    body = []
    for r in doc["rows"]:
        if r.get("vllm_decode_ms_per_token") is None:
            continue
        hf, vl = r.get("decode_ms_per_token"), r["vllm_decode_ms_per_token"]
        ratio = ratios.get(r["adapter"], {})
        body.append(
            [
                r["adapter"],
                r.get("vllm_serving", "-"),
                _num(r.get("vllm_prefill_ms")),
                _num(vl, "{:.2f}"),
                _num(hf, "{:.2f}"),
                _num(hf / vl if hf and vl else None, "{:.2f}x"),
                _num(ratio.get("vllm_decode_x_moelora"), "{:.2f}"),
                _num(ratio.get("vllm_decode_x_lora_same_rank"), "{:.2f}"),
            ]
        )
    if not body:
        return "vLLM: no variant could be timed (see the log)"
    legend = "vLLM serves routed adapters with their fused math; /MoELoRA compares with MoELoRA's fused row."
    return _table(header, body) + "\n" + legend


def _targets(targets: list[dict[str, Any]]) -> str:
    if not targets:
        return "targets: no TeamLoRA row to check"
    lines = ["efficiency targets for TeamLoRA (official at k = 4):"]
    for t in sorted(targets, key=lambda t: (not t["official"], t["experts"], t["form"], t["ratio"])):
        verdict = "n/a " if t["met"] is None else ("MET " if t["met"] else "MISS")
        where = f"{t['adapter']} (k={t['experts']}, {t['form']})"
        lines.append(f"  {verdict} {where}: {t['ratio']} {_num(t['value'], '{:.3f}')} <= {t['limit']}")
    return "\n".join(lines)
