"""Efficiency benchmark (issue 8): what an adapter costs to train and to run, measured side by side.

Owns the variant plan (which adapter configurations one ``cme-bench profile`` compares), the timing loops, the
per-variant peak-memory child process, the ratio and target tables, the profile JSON (schema ``cme-bench-profile``,
version 1, documented in docs/ARCHITECTURE.md) and ``measure_inference``, which the runner calls to record the
inference cost of a trained model.

How it measures, and why:
- Every variant wraps a copy of the one base model that *shares* the frozen base tensors, so all variants stay in
  memory together and their repeats can be interleaved round-robin (the rotation changes each round). On a noisy
  shared machine, interleaving makes a slow spell hit every variant alike, so ratios stay honest even when absolute
  times drift. Medians and quartiles, never means.
- Training step = forward (labels = inputs) + auxiliary loss + backward + AdamW step over the trainable tensors.
- Inference = HF ``generate``, greedy, ``min_new_tokens = max_new_tokens`` so every variant decodes the same count.
  A logits processor timestamps each generated token: prefill = start to the first token, decode = mean gap after.
- Peak memory is per variant, so it is taken in a fresh child process (``python -m cme_bench.profile``) that loads
  the base, applies that variant alone and runs warm-up steps and one generation: peak RSS (``VmHWM``) on CPU,
  CUDA ``max_memory_allocated`` on a GPU. One process cannot tell variants apart (RSS only grows).
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cme_bench.errors import CmeError

log = logging.getLogger(__name__)

SCHEMA = "cme-bench-profile"
VERSION = 1
FORMS = ("reference", "fused")
PROFILE_HORIZON = 10_000  # nominal training length handed to apply_adapter (AdaLoRA's schedule needs one)


@dataclass(frozen=True)
class Variant:
    """One adapter configuration to profile: a preset plus parameter overrides.

    ``label`` is unique within a profile and equals the preset name when nothing is overridden, so the reporter can
    key cost columns by (model, adapter preset) exactly as run records name their adapter.
    """

    label: str
    preset: str
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)
    experts: int | None = None
    form: str = "fused"  # methods with a single forward path report "fused"
    rank: int | None = None  # LoRA rank, or the per-expert rank r_B of a routed method
    total_rank: int | None = None  # LoRA rank, or the sum of expert ranks (k * r_B)


@dataclass(frozen=True)
class ProfileSettings:
    """Workload and repetition settings shared by every variant of one profile."""

    batch: int = 2
    seq_len: int = 128
    prompt_len: int = 128
    new_tokens: int = 16
    warmup: int = 1
    repeats: int = 5
    infer_repeats: int = 3
    memory: bool = True
    seed: int = 0


# ----------------------------------------------------------------------------------------------------------------
# Variant plan


def load_preset(name: str) -> Any:
    from cme_bench import adapters

    return adapters.load_preset(name)


def _per_expert_rank(params: dict[str, Any]) -> int | None:
    if "r_a" in params:  # TeamLoRA: a shared A of rank r_a sliced into num_experts expert ranks r_B
        return params["r_a"] // params["num_experts"]
    return params.get("r")


def make_variant(preset: Any, overrides: dict[str, Any]) -> Variant:
    """A ``Variant`` of ``preset``; overrides equal to the preset's own values are dropped, and the label is the
    preset name plus one part per real change (``-k8``, ``-r64``, ``-fused``/``-reference``)."""
    overrides = {k: v for k, v in overrides.items() if preset.params.get(k) != v}
    params = {**preset.params, **overrides}
    k, rank = params.get("num_experts"), _per_expert_rank(params)
    parts = [preset.name]
    if k != preset.params.get("num_experts"):
        parts.append(f"k{k}")
    if rank != _per_expert_rank(preset.params):
        parts.append(f"r{rank}")
    if "forward" in overrides:
        parts.append(overrides["forward"])
    total = (rank or 0) * k if k is not None else rank
    form = params.get("forward", "fused")  # one forward path only: reported as "fused"
    return Variant("-".join(parts), preset.name, preset.method, overrides, k, form, rank, total)


def _form_overrides(preset: Any, forms: Sequence[str]) -> list[dict[str, Any]]:
    """One override set per forward form to run; ``[{}]`` for methods with a single forward path."""
    if "forward" not in preset.params:
        return [{}]
    return [{"forward": f} for f in forms]


def plan_variants(
    presets: Sequence[str],
    experts: Sequence[int] | None = None,
    rank: int = 32,
    forms: Sequence[str] = FORMS,
    loader: Callable[[str], Any] = load_preset,
) -> list[Variant]:
    """Variants to compare.

    Without ``experts``: each preset as shipped, routed ones in each of ``forms``. With ``experts``: for each k, the
    equal-parameter comparison of TeamLoRA's efficiency table: routed presets with k experts of rank ``rank``
    (TeamLoRA r_A = k * rank), non-routed presets at the same total rank k * rank, plus each non-routed preset once
    at rank ``rank`` (the LoRA that the paper's "MoELoRA is 62% slower" compares against).
    """
    loaded = [loader(name) for name in presets]
    bad = [f for f in forms if f not in FORMS]
    if bad or not forms:
        raise CmeError(f"--forms takes {' and/or '.join(FORMS)}, got {','.join(forms) or '(nothing)'}")
    if not experts:
        return _dedupe(make_variant(p, o) for p in loaded for o in _form_overrides(p, forms))
    out = [_rank_variant(p, rank) for p in loaded if "num_experts" not in p.params]
    for k in experts:
        for p in loaded:
            if "num_experts" not in p.params:
                out.append(_rank_variant(p, k * rank))
                continue
            size = {"num_experts": k, **({"r_a": k * rank} if "r_a" in p.params else {"r": rank})}
            out.extend(make_variant(p, size | o) for o in _form_overrides(p, forms))
    return _dedupe(out)


def _rank_variant(preset: Any, r: int) -> Variant:
    return make_variant(preset, {"r": r} if "r" in preset.params else {})


def _dedupe(variants: Iterable[Variant]) -> list[Variant]:
    seen: dict[str, Variant] = {}
    for v in variants:
        seen.setdefault(v.label, v)
    return list(seen.values())


# ----------------------------------------------------------------------------------------------------------------
# Building adapted models


def share_weights_copy(model: nn.Module) -> nn.Module:
    """A structural copy of ``model`` whose parameters and buffers are the *same* tensors (no memory cost).

    Adapters freeze and wrap base layers; sharing the frozen tensors lets every variant live at once.
    """
    memo: dict[int, Any] = {id(t): t for t in model.parameters()}
    memo.update({id(t): t for t in model.buffers()})
    return copy.deepcopy(model, memo)


def apply_variant(model: nn.Module, variant: Variant, seed: int = 0) -> nn.Module:
    """``variant`` applied to a weight-sharing copy of ``model`` through ``cme_bench.adapters``."""
    from cme_bench import adapters

    base = adapters.load_preset(variant.preset)
    # preset_from_dict re-validates the overridden parameters (e.g. r_a divisible by num_experts).
    data = {"method": base.method, "params": {**base.params, **variant.overrides}}
    preset = adapters.preset_from_dict(data, name=variant.label)
    # total_steps only matters to AdaLoRA's rank schedule, which needs some horizon to be built at all.
    return adapters.apply_adapter(share_weights_copy(model), preset, seed=seed, total_steps=PROFILE_HORIZON)


# ----------------------------------------------------------------------------------------------------------------
# Timing primitives


def quartiles(values: Sequence[float]) -> dict[str, float]:
    """Median and the 25th / 75th percentiles (inclusive method: defined for one value too)."""
    if len(values) == 1:
        return {"median": values[0], "p25": values[0], "p75": values[0]}
    p25, median, p75 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": median, "p25": p25, "p75": p75}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def random_tokens(vocab_size: int, batch: int, length: int, seed: int, device: torch.device) -> torch.Tensor:
    """Fixed pseudo-random token ids; cost does not depend on the text, only on its shape."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=gen).to(device)


class Trainer:
    """One variant's training step: forward + aux loss + backward + AdamW step, timed end to end."""

    def __init__(self, model: nn.Module, tokens: torch.Tensor) -> None:
        self.model = model
        self.tokens = tokens
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-5) if params else None
        self.steps = 0

    def step(self) -> float:
        from cme_bench.adapters import aux_loss, step_hook

        device = self.tokens.device
        self.model.train()
        _sync(device)
        start = time.perf_counter()
        loss = self.model(input_ids=self.tokens, labels=self.tokens).loss
        aux = aux_loss(self.model)  # the method's balance term is part of its training cost
        if aux is not None:
            loss = loss + aux
        loss.backward()
        self.steps += 1
        if self.optimizer is not None:
            self.optimizer.step()
        step_hook(self.model, self.steps)  # AdaLoRA's rank reallocation (needs the grads); no-op for others
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - start


class _TokenClock:
    """A logits processor that only records when each new token's logits are ready (one call per decode step)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        _sync(scores.device)
        self.stamps.append(time.perf_counter())
        return scores


def time_generation(model: nn.Module, prompt: torch.Tensor, new_tokens: int, pad_token_id: int | None) -> tuple:
    """(prefill seconds, mean decode seconds per token) of one greedy generation of exactly ``new_tokens``."""
    from transformers import LogitsProcessorList

    clock = _TokenClock()
    model.eval()
    _sync(prompt.device)
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,  # EOS is masked until then: every variant decodes the same count
            do_sample=False,
            pad_token_id=pad_token_id,
            logits_processor=LogitsProcessorList([clock]),
        )
    stamps = clock.stamps
    decode = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else float("nan")
    return stamps[0] - start, decode


def _pad_id(tokenizer: Any) -> int | None:
    if tokenizer is None:
        return None
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def measure_inference(
    model: nn.Module,
    tokenizer: Any,
    *,
    batch: int = 1,
    prompt_len: int = 128,
    new_tokens: int = 16,
    repeats: int = 3,
    warmup: int = 1,
    seed: int = 0,
) -> dict[str, float]:
    """Prefill and per-token decode latency of HF greedy generation for one (trained) model.

    Returns ``{"prefill_ms", "decode_ms_per_token", "prefill_ms_p25", ..., "batch", "prompt_len", "new_tokens"}``
    with medians over ``repeats`` after ``warmup`` untimed generations; the runner stores it under ``costs``.
    The model's train/eval mode is restored afterwards.
    """
    vocab = model.get_input_embeddings().weight.shape[0]
    prompt = random_tokens(vocab, batch, prompt_len, seed, _device(model))
    was_training = model.training
    for _ in range(warmup):
        time_generation(model, prompt, new_tokens, _pad_id(tokenizer))
    runs = [time_generation(model, prompt, new_tokens, _pad_id(tokenizer)) for _ in range(repeats)]
    model.train(was_training)
    return _inference_figures([r[0] for r in runs], [r[1] for r in runs]) | {
        "batch": batch,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
    }


def _inference_figures(prefill: Sequence[float], decode: Sequence[float]) -> dict[str, float]:
    p, d = quartiles([s * 1e3 for s in prefill]), quartiles([s * 1e3 for s in decode])
    return {
        "prefill_ms": p["median"],
        "prefill_ms_p25": p["p25"],
        "prefill_ms_p75": p["p75"],
        "decode_ms_per_token": d["median"],
        "decode_ms_p25": d["p25"],
        "decode_ms_p75": d["p75"],
    }


# ----------------------------------------------------------------------------------------------------------------
# Interleaved measurement of many variants


def _rotations(labels: list[str], rounds: int, what: str = "") -> Iterable[str]:
    """Round-robin order, rotated by one each round so no variant always runs first (right after a cold switch)."""
    n = len(labels)
    for r in range(rounds):
        if what:
            log.info("%s: round %d of %d", what, r + 1, rounds)
        yield from (labels[(r + i) % n] for i in range(n))


def time_training(trainers: dict[str, Trainer], warmup: int, repeats: int) -> dict[str, list[float]]:
    labels = list(trainers)
    for label in _rotations(labels, warmup):
        trainers[label].step()
    times: dict[str, list[float]] = {label: [] for label in labels}
    for label in _rotations(labels, repeats, "training steps"):
        times[label].append(trainers[label].step())
        log.debug("train %s %.1f ms", label, times[label][-1] * 1e3)
    return times


def time_inference(
    models: dict[str, nn.Module], prompt: torch.Tensor, settings: ProfileSettings, pad_id: int | None
) -> dict[str, list[tuple[float, float]]]:
    """(prefill s, decode s per token) of each timed generation, per label, interleaved like ``time_training``."""
    labels = list(models)
    for label in _rotations(labels, settings.warmup):
        time_generation(models[label], prompt, settings.new_tokens, pad_id)
    runs: dict[str, list[tuple[float, float]]] = {label: [] for label in labels}
    for label in _rotations(labels, settings.infer_repeats, "generations"):
        runs[label].append(time_generation(models[label], prompt, settings.new_tokens, pad_id))
    return runs


def timing_groups(variants: Sequence[Variant], rank: int) -> list[list[Variant]]:
    """Variants timed together: one group per k (its routed variants, the LoRA of the same total rank and the
    LoRA at rank ``rank``, which every group repeats and pools), or one group when nothing is routed.

    Why groups: all members of a group live at once with their optimiser state, and at k = 8 on a small model
    that state is large (a third of the base per variant); interleaving is only needed among rows compared.
    """
    ks = sorted({v.experts for v in variants if v.experts is not None})
    if not ks:
        return [list(variants)]
    groups = []
    for k in ks:
        groups.append(
            [v for v in variants if v.experts == k or (v.experts is None and v.total_rank in (rank, k * rank))]
        )
    placed = {v.label for g in groups for v in g}
    groups[0] += [v for v in variants if v.label not in placed]
    return groups


# ----------------------------------------------------------------------------------------------------------------
# The whole profile


def run_profile(
    loaded: Any,
    variants: Sequence[Variant],
    settings: ProfileSettings,
    *,
    rank: int = 32,
    build: Callable[[nn.Module, Variant, int], nn.Module] = apply_variant,
) -> dict[str, Any]:
    """Profile every variant on ``loaded`` (a ``models.LoadedModel``) and return the profile document (JSON-ready)."""
    from cme_bench.adapters import count_parameters

    if not variants:
        raise CmeError("nothing to profile: no adapter variants")
    model, device = loaded.model, _device(loaded.model)
    vocab = model.get_input_embeddings().weight.shape[0]
    tokens = random_tokens(vocab, settings.batch, settings.seq_len, settings.seed, device)
    prompt = random_tokens(vocab, settings.batch, settings.prompt_len, settings.seed + 1, device)
    train: dict[str, list[float]] = {v.label: [] for v in variants}
    infer: dict[str, list[tuple[float, float]]] = {v.label: [] for v in variants}
    counts: dict[str, tuple[int, int]] = {}
    for i, group in enumerate(timing_groups(variants, rank)):
        log.info("timing group %d: %s", i + 1, ", ".join(v.label for v in group))
        adapted = {v.label: build(model, v, settings.seed) for v in group}
        counts |= {k: count_parameters(m) for k, m in adapted.items()}
        trainers = {k: Trainer(m, tokens) for k, m in adapted.items()}
        for k, times in time_training(trainers, settings.warmup, settings.repeats).items():
            train[k] += times
        del trainers  # free this group's optimiser state before the next group is built
        for k, runs in time_inference(adapted, prompt, settings, _pad_id(loaded.tokenizer)).items():
            infer[k] += runs
        del adapted
        gc.collect()
    rows = []
    for i, v in enumerate(variants):
        if settings.memory:
            log.info("peak memory of %s in a child process (%d of %d)", v.label, i + 1, len(variants))
        dtype = next(model.parameters()).dtype
        random_weights = loaded.source == "random"
        peak = (
            measure_peak_memory(loaded.spec, v, settings, str(device), dtype, random_weights)
            if settings.memory
            else None
        )
        figures = _inference_figures([r[0] for r in infer[v.label]], [r[1] for r in infer[v.label]])
        rows.append(_row(loaded.name, v, settings, train[v.label], figures, peak, *counts[v.label]))
    ratios = ratio_table(rows, rank)
    return {
        "schema": SCHEMA,
        "version": VERSION,
        "model": loaded.name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": _settings_record(loaded, settings, rank),
        "rows": rows,
        "ratios": ratios,
        "targets": check_targets(ratios),
    }


def _row(
    model: str,
    v: Variant,
    settings: ProfileSettings,
    train_s: list[float],
    infer: dict[str, float],
    peak: int | None,
    trainable: int,
    base: int,
) -> dict[str, Any]:
    step = quartiles([t * 1e3 for t in train_s])
    return {
        "model": model,
        "adapter": v.label,
        "preset": v.preset,
        "method": v.method,
        "experts": v.experts,
        "form": v.form,
        "rank": v.rank,
        "total_rank": v.total_rank,
        "overrides": v.overrides,
        "train_step_ms": step,
        # Flat copy of the median: the reporter keeps only top-level numbers as cost columns.
        "train_step_ms_median": step["median"],
        "tokens_per_second": settings.batch * settings.seq_len / (step["median"] / 1e3),
        **infer,
        "peak_memory_bytes": peak,
        "trainable_parameters": trainable,
        "trainable_share": trainable / base if base else None,
    }


def _settings_record(loaded: Any, settings: ProfileSettings, rank: int) -> dict[str, Any]:
    import platform

    import transformers

    model = loaded.model
    return dataclasses.asdict(settings) | {
        "rank": rank,
        "device": str(_device(model)),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "memory_method": "cuda max_memory_allocated" if _device(model).type == "cuda" else "child peak RSS (VmHWM)",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }


# ----------------------------------------------------------------------------------------------------------------
# Ratios against LoRA and MoELoRA, beside the TeamLoRA paper's figures

# Published training-time and inference ratios (docs teamlora.md sections 6-7). "train_x_moelora" is TeamLoRA's time
# over MoELoRA's at k experts; "train_x_lora" compares with LoRA at the per-expert rank (MoELoRA +62% / +138%); the
# k = 4 entries for LoRA and HydraLoRA come from the results table (LoRA r32 25 h, r128 26 h, MoELoRA 42 h,
# HydraLoRA 34 h, TeamLoRA 29 h). Inference: "about 40% faster" than MoELoRA, no k given.
PAPER: dict[tuple[str, str], dict[int, float]] = {
    ("teamlora", "train_x_moelora"): {2: 0.87, 4: 0.70, 8: 0.63},
    ("teamlora", "train_x_lora"): {4: 29 / 25},
    ("teamlora", "train_x_lora_same_rank"): {4: 29 / 26},
    ("teamlora", "decode_x_moelora"): {2: 0.6, 4: 0.6, 8: 0.6},
    ("moelora", "train_x_lora"): {4: 1.62, 8: 2.38},
    ("moelora", "train_x_lora_same_rank"): {4: 42 / 26},
    ("hydralora", "train_x_moelora"): {4: 34 / 42},
    ("hydralora", "train_x_lora"): {4: 34 / 25},
}

# Issue 8's targets for TeamLoRA (CPU, SmolLM2-135M, FFN targets); the official setting is k = 4.
TARGETS = (("train_x_moelora", 0.75), ("train_x_lora_same_rank", 1.2), ("decode_x_moelora", 0.7))
TARGET_EXPERTS = 4


def _ratio(row: dict[str, Any], ref: dict[str, Any] | None, key: str) -> float | None:
    if ref is None or row.get(key) is None or not ref.get(key):
        return None
    return row[key] / ref[key]


def _find(rows: Sequence[dict[str, Any]], **want: Any) -> dict[str, Any] | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in want.items())), None)


def ratio_table(rows: Sequence[dict[str, Any]], rank: int) -> list[dict[str, Any]]:
    """One ratio row per routed variant: train step and decode time over LoRA (rank ``rank`` and the same total
    rank) and over MoELoRA's reference form with the same k and per-expert rank; paper figures beside them."""
    lora = [r for r in rows if r["method"] == "lora"]
    out = []
    for r in rows:
        if r["experts"] is None:
            continue
        refs = {
            "lora": _find(lora, total_rank=rank),
            "lora_same_rank": _find(lora, total_rank=r["total_rank"]),
            "moelora": _find(rows, method="moelora", experts=r["experts"], rank=r["rank"], form="reference"),
        }
        item = {k: r[k] for k in ("adapter", "method", "experts", "form")}
        for name, ref in refs.items():
            item[f"train_x_{name}"] = _ratio(r, ref, "train_step_ms_median")
            item[f"decode_x_{name}"] = _ratio(r, ref, "decode_ms_per_token")
        for (method, key), values in PAPER.items():
            if method == r["method"] and r["experts"] in values:
                item[f"paper_{key}"] = values[r["experts"]]
        out.append(item)
    return out


def check_targets(ratios: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 8's TeamLoRA targets for every TeamLoRA row; ``official`` marks k = 4, the setting the issue names."""
    out = []
    for r in ratios:
        if r["method"] != "teamlora":
            continue
        for key, limit in TARGETS:
            value = r.get(key)
            out.append(
                {
                    "adapter": r["adapter"],
                    "experts": r["experts"],
                    "form": r["form"],
                    "ratio": key,
                    "value": value,
                    "limit": limit,
                    "met": None if value is None else value <= limit,
                    "official": r["experts"] == TARGET_EXPERTS,
                }
            )
    return out


def add_vllm_figures(doc: dict[str, Any], figures: dict[str, dict[str, Any] | None]) -> None:
    """Merge ``vllm_backend.timing`` figures into ``doc``'s rows and add vLLM decode ratios to its ratio rows.

    vLLM serves routed adapters with their fused math whatever the ``forward`` form, so the vLLM ratios compare
    with MoELoRA's fused row (the reference row's HF figures stay the HF baseline).
    """
    rows = doc["rows"]
    for r in rows:
        r.update(figures.get(r["adapter"]) or {})
    for item in doc["ratios"]:
        r = _find(rows, adapter=item["adapter"])
        if r is None:
            continue
        moe = _find(rows, method="moelora", experts=r["experts"], rank=r["rank"], form="fused")
        lora = _find([x for x in rows if x["method"] == "lora"], total_rank=r["total_rank"])
        item["vllm_decode_x_moelora"] = _ratio(r, moe, "vllm_decode_ms_per_token")
        item["vllm_decode_x_lora_same_rank"] = _ratio(r, lora, "vllm_decode_ms_per_token")
    doc["settings"]["vllm"] = True


# ----------------------------------------------------------------------------------------------------------------
# Peak memory in a child process


def measure_peak_memory(
    spec: str,
    variant: Variant | None,
    settings: ProfileSettings,
    device: str,
    dtype: torch.dtype = torch.float32,
    random_weights: bool = False,
) -> int | None:
    """Peak memory (bytes) of a fresh process that loads ``spec`` in ``dtype``, applies ``variant``, trains and
    generates."""
    from cme_bench.devices import dtype_name

    job = {"spec": spec, "variant": dataclasses.asdict(variant) if variant else None, "device": device}
    job["dtype"] = dtype_name(dtype)
    job["random"] = random_weights
    job["settings"] = dataclasses.asdict(settings) | {"threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="cme-profile-") as tmp:
        out = Path(tmp) / "peak.json"
        cmd = [sys.executable, "-m", "cme_bench.profile", json.dumps(job), str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if proc.returncode != 0 or not out.is_file():
            log.warning("peak-memory child for %s failed: %s", job["variant"], proc.stderr.strip()[-2000:])
            return None
        return int(json.loads(out.read_text(encoding="utf-8"))["peak_memory_bytes"])


def _child_main(job_json: str, out_path: str) -> int:
    """Child process body: one variant, warm-up + one timed step and one generation, then report the peak."""
    from cme_bench.devices import torch_dtype
    from cme_bench.models import load_model, random_model

    job = json.loads(job_json)
    settings = ProfileSettings(**{k: v for k, v in job["settings"].items() if k != "threads"})
    torch.set_num_threads(int(job["settings"]["threads"]))
    load = random_model if job.get("random") else load_model
    loaded = load(job["spec"], device=job["device"], dtype=torch_dtype(job["dtype"]))
    model = loaded.model
    if job["variant"] is not None:
        model = apply_variant(model, Variant(**job["variant"]), seed=settings.seed)
    if job["device"].startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    device = _device(model)
    vocab = model.get_input_embeddings().weight.shape[0]
    trainer = Trainer(model, random_tokens(vocab, settings.batch, settings.seq_len, settings.seed, device))
    for _ in range(settings.warmup + 1):
        trainer.step()
    prompt = random_tokens(vocab, settings.batch, settings.prompt_len, settings.seed + 1, device)
    time_generation(model, prompt, settings.new_tokens, _pad_id(loaded.tokenizer))
    Path(out_path).write_text(json.dumps({"peak_memory_bytes": peak_memory_bytes(device)}), encoding="utf-8")
    return 0


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA max allocated on a GPU, else this process's peak RSS.

    On Linux the peak is ``VmHWM`` from /proc/self/status, which starts afresh with the exec'd image; ``ru_maxrss``
    does not: it is inherited across fork and execve, so a child of a large parent would report the parent's peak.
    """
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text(encoding="utf-8").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # reported in kB
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux, bytes on macOS


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1], sys.argv[2]))
