"""Supervised fine-tuning of an adapted model on prompt/target pairs: the one training loop.

``train()`` reads top to bottom: tokenise (prompt tokens masked with -100), then for each optimiser step run the
micro-batches, add the adapters' auxiliary losses to the LM loss, step, log, and checkpoint. Distribution, gradient
accumulation and mixed precision come from ``accelerate``, so the same command trains on several processes under
``accelerate launch`` or ``torchrun`` (gloo on CPU, NCCL on GPU).

Checkpoints (``<out>/checkpoints/step-<N>/``) hold the trainable adapter tensors, the optimiser state and the RNG
state as safetensors plus a JSON file; they are written to a temporary folder and renamed, so a killed process loses
at most the steps since the last one. Data order is a pure function of (seed, epoch), so a resumed run sees exactly
the batches an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from cme_bench import adapters
from cme_bench.errors import CmeError, ConfigError
from cme_bench.results import kill_point, peak_memory_bytes

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
# Fault injection for the kill-and-resume test: SIGKILL this process right after the given optimiser step.
KILL_AFTER_STEP_ENV = "CME_BENCH_KILL_AFTER_STEP"


@dataclass
class TrainConfig:
    """Training hyperparameters. Defaults follow the LoRAMoE/TeamLoRA family (lr 2e-4, cosine, warmup 3%).

    Args:
        learning_rate: peak AdamW learning rate.
        batch_size: micro-batch size per process.
        grad_accum: micro-batches per optimiser step.
        max_steps: optimiser steps; 0 means ``epochs`` passes over the data.
        epochs: passes over the data when ``max_steps`` is 0.
        max_seq_len: prompt+target tokens kept per example (the prompt is cut from the left if needed).
        warmup_ratio: share of the steps spent warming up linearly.
        weight_decay: AdamW weight decay.
        max_grad_norm: gradient clipping norm (0 disables).
        checkpoint_every: optimiser steps between checkpoints (0 disables).
        gradient_checkpointing: trade compute for activation memory.
        mixed_precision: "auto" (bf16 on a bf16-capable GPU, fp32 otherwise), "no" or "bf16".
        seed: data order, dropout and initialisation seed.
    """

    learning_rate: float = 2e-4
    batch_size: int = 8
    grad_accum: int = 1
    max_steps: int = 0
    epochs: float = 1.0
    max_seq_len: int = 512
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    checkpoint_every: int = 50
    gradient_checkpointing: bool = False
    mixed_precision: str = "auto"
    seed: int = 0
    log_every: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        for name in ("batch_size", "grad_accum", "max_seq_len", "log_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("max_steps", "checkpoint_every", "weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not self.learning_rate > 0:
            problems.append(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if self.max_steps == 0 and not self.epochs > 0:
            problems.append(f"epochs must be > 0 when max_steps is 0, got {self.epochs!r}")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.mixed_precision not in ("auto", "no", "bf16"):
            problems.append(f"mixed_precision must be auto, no or bf16, got {self.mixed_precision!r}")
        if problems:
            raise ConfigError(problems, "training config")


@dataclass
class TrainResult:
    steps: int
    examples: int
    tokens: int
    seconds: float
    tokens_per_second: float
    peak_memory_bytes: int
    loss_curve: list[list[float]]
    resumed_from: int
    world_size: int
    rank_adapter_sha256: list[str]
    aux_loss_curve: list[list[float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------------------
# Data


def tokenize_pairs(records: list[dict[str, str]], tokenizer: Any, max_seq_len: int) -> list[dict[str, list[int]]]:
    """Prompt and target tokenised separately (as lm-eval tokenises the prompt it generates from), then joined.

    Labels are -100 on the prompt, so only the target and its EOS are learned. When the pair is too long the prompt
    loses its beginning: the target is what the model must learn to produce.
    """
    out = []
    for rec in records:
        prompt = tokenizer(rec["prompt"], add_special_tokens=True)["input_ids"]
        target = tokenizer(rec["target"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        target = target[:max_seq_len]
        prompt = prompt[max(0, len(prompt) + len(target) - max_seq_len) :]
        out.append({"input_ids": prompt + target, "labels": [IGNORE_INDEX] * len(prompt) + target})
    return out


def collate(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch; padding is masked out of attention and of the loss."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The example order of one epoch: a pure function of (seed, epoch), so a resumed run replays it exactly."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen).tolist()


def micro_batches(n: int, cfg: TrainConfig, rank: int, world: int, start: int = 0):
    """Yield (step, micro-batch indices) from optimiser step ``start`` on; each rank takes its own slice.

    Every epoch yields at least one step: fewer examples than one step needs is refused (``check_fits``), never an
    endless search for a full batch.
    """
    check_fits(n, cfg, world)
    per_step = cfg.batch_size * cfg.grad_accum * world
    step, epoch = 0, 0
    while True:
        order = epoch_order(n, cfg.seed, epoch)
        for first in range(0, len(order) - per_step + 1, per_step):
            if step >= start:
                chunk = order[first : first + per_step]
                mine = chunk[rank::world]
                yield step, [mine[i : i + cfg.batch_size] for i in range(0, len(mine), cfg.batch_size)]
            step += 1
        epoch += 1


def check_fits(n_examples: int, cfg: TrainConfig, world: int) -> None:
    """Refuse a step larger than the data: batches never wrap across epochs, so it could never be filled."""
    per_step = cfg.batch_size * cfg.grad_accum * world
    if n_examples < per_step:
        raise CmeError(
            f"the training mixture has {n_examples} examples, fewer than one optimiser step needs ({per_step} = "
            f"--batch-size {cfg.batch_size} x --grad-accum {cfg.grad_accum} x {world} process(es)); lower "
            "--batch-size or --grad-accum, or raise --train-cap"
        )


def total_steps(n_examples: int, cfg: TrainConfig, world: int) -> int:
    check_fits(n_examples, cfg, world)
    if cfg.max_steps:
        return cfg.max_steps
    per_step = cfg.batch_size * cfg.grad_accum * world
    return max(1, math.floor(cfg.epochs * (n_examples // per_step)))


def warmup_steps(cfg: TrainConfig, steps: int) -> int:
    """Linear warm-up length: ``warmup_ratio`` of the steps, but never all of them (a 1-step run at lr 0 learns
    nothing, and its adapter would not even change the model)."""
    return min(math.ceil(cfg.warmup_ratio * steps), steps - 1)


# --------------------------------------------------------------------------------------------------------------
# Checkpoints (safetensors + JSON, no pickle)


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for idx, slots in state["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in [*tensors.items(), *meta["scalars"].items()]:
        idx, key = flat.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(ckpt_root: Path, step: int, model, optimizer, loss_curve: list, aux_curve: list) -> Path:
    ckpt_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".step-", dir=ckpt_root))
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in adapters.adapter_state(model).items()},
        tmp / "adapter.safetensors",
    )
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    save_file({"torch_rng": torch.get_rng_state()}, tmp / "rng.safetensors")
    meta = {"step": step, "optimizer": opt_meta, "loss_curve": loss_curve, "aux_loss_curve": aux_curve}
    (tmp / "state.json").write_text(json.dumps(meta))
    final = ckpt_root / f"step-{step:07d}"
    os.replace(tmp, final)
    for old in sorted(ckpt_root.glob("step-*"))[:-1]:  # keep only the newest complete checkpoint
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    done = sorted(p for p in ckpt_root.glob("step-*") if (p / "state.json").is_file())
    return done[-1] if done else None


def load_checkpoint(path: Path, model, optimizer) -> dict[str, Any]:
    meta = json.loads((path / "state.json").read_text())
    adapters.load_adapter_state(model, load_file(path / "adapter.safetensors"))
    optimizer.load_state_dict(_unflatten_optimizer(load_file(path / "optimizer.safetensors"), meta["optimizer"]))
    torch.set_rng_state(load_file(path / "rng.safetensors")["torch_rng"])
    return meta


def state_digest(model: torch.nn.Module) -> str:
    """SHA-256 over the trainable adapter tensors (names and fp32 values)."""
    h = hashlib.sha256()
    for name, value in sorted(adapters.adapter_state(model).items()):
        h.update(name.encode())
        h.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------------------
# The loop


def _mixed_precision(cfg: TrainConfig) -> str:
    if cfg.mixed_precision != "auto":
        return cfg.mixed_precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def train(
    model: torch.nn.Module,
    tokenizer: Any,
    records: list[dict[str, str]],
    cfg: TrainConfig,
    *,
    out_dir: Path,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Fine-tune the trainable (adapter) parameters of ``model`` on ``records`` ({"prompt", "target"} dicts)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    # 1. Processes, precision, data.
    # Routed adapters with top-k routing leave some experts without gradient in a step; DDP must tolerate that.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    acc = Accelerator(
        mixed_precision=_mixed_precision(cfg),
        gradient_accumulation_steps=cfg.grad_accum,  # accelerate divides the loss and syncs on the last micro-batch
        kwargs_handlers=[ddp],
        cpu=not torch.cuda.is_available(),
    )
    rank, world = acc.process_index, acc.num_processes
    examples = tokenize_pairs(records, tokenizer, cfg.max_seq_len)
    steps = total_steps(len(examples), cfg, world)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()

    # 2. Optimiser over the adapter parameters only; cosine schedule with linear warm-up.
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise CmeError("the model has no trainable parameters: was an adapter applied?")
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup_steps(cfg, steps), steps)
    model.train()
    ddp_model, optimizer = acc.prepare(model, optimizer)

    # 3. Resume: adapter, optimiser, RNG and curves from the newest checkpoint; the schedule is replayed.
    ckpt_root = Path(out_dir) / "checkpoints"
    start, loss_curve, aux_curve = 0, [], []
    ckpt = latest_checkpoint(ckpt_root) if resume else None
    if ckpt is not None:
        meta = load_checkpoint(ckpt, model, optimizer)
        start, loss_curve, aux_curve = meta["step"], meta["loss_curve"], meta["aux_loss_curve"]
        for _ in range(start):
            scheduler.step()
        log.info("resumed from %s (step %d of %d)", ckpt, start, steps)

    # 4. Train.
    bar = tqdm(total=steps, initial=start, desc="train", disable=not progress or not acc.is_main_process)
    tokens, seen, t0 = 0, 0, time.perf_counter()
    for step, batches in micro_batches(len(examples), cfg, rank, world, start):
        if step >= steps:
            break
        step_loss, step_aux = 0.0, 0.0
        for micro in batches:
            batch = {
                k: v.to(acc.device) for k, v in collate([examples[i] for i in micro], tokenizer.pad_token_id).items()
            }
            with acc.accumulate(ddp_model), acc.autocast():
                out = ddp_model(**batch)
                aux = adapters.aux_loss(model)  # routed adapters' balance losses, already weighted
                loss = out.loss + (aux if aux is not None else 0.0)
                acc.backward(loss)
            step_loss += out.loss.item() / len(batches)
            step_aux += (aux.item() if aux is not None else 0.0) / len(batches)
            tokens += int(batch["attention_mask"].sum())
            seen += len(micro)
        if cfg.max_grad_norm:
            acc.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        adapters.step_hook(model, step)  # AdaLoRA's rank reallocation: after backward, before zero_grad
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()

        loss_curve.append([step + 1, round(step_loss, 6)])
        if step_aux:
            aux_curve.append([step + 1, round(step_aux, 6)])
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if not math.isfinite(step_loss):
            raise CmeError(f"training diverged: loss is {step_loss} at step {step + 1}")
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < steps:
            if acc.is_main_process:
                save_checkpoint(ckpt_root, step + 1, model, optimizer, loss_curve, aux_curve)
            acc.wait_for_everyone()
        kill_point(KILL_AFTER_STEP_ENV, step + 1)
    bar.close()
    seconds = time.perf_counter() - t0

    # 5. Every rank must hold the same adapter; a mismatch means the processes did not train one model.
    digest = state_digest(model)
    digests = acc.gather_for_metrics([digest], use_gather_object=True) if world > 1 else [digest]
    if len(set(digests)) != 1:
        raise CmeError(f"ranks disagree on the trained adapter: {digests}")
    model.eval()
    total_tokens = int(acc.reduce(torch.tensor(tokens, device=acc.device), "sum")) if world > 1 else tokens
    return TrainResult(
        steps=len(loss_curve),
        examples=seen * world,
        tokens=total_tokens,
        seconds=round(seconds, 3),
        tokens_per_second=round(total_tokens / seconds, 2) if seconds > 0 else 0.0,
        peak_memory_bytes=peak_memory_bytes(),
        loss_curve=loss_curve,
        resumed_from=start,
        world_size=world,
        rank_adapter_sha256=list(digests),
        aux_loss_curve=aux_curve,
    )
