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
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from cme_bench import adapters, devices
from cme_bench.config import TrainConfig
from cme_bench.errors import CmeError
from cme_bench.results import kill_point, peak_memory_bytes
from cme_bench.tuners.tokens import token_segments

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
# Fault injection for the kill-and-resume test: SIGKILL this process right after the given optimiser step.
KILL_AFTER_STEP_ENV = "CME_BENCH_KILL_AFTER_STEP"


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
    # ``tokens`` and ``tokens_per_second`` count real tokens (prompt + target, no padding); ``positions`` counts
    # every position the model computed, padding included, so 1 - tokens / positions is the padding share.
    positions: int = 0
    packing: bool = False

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
    """Right-pad a micro-batch, one example per row; padding is masked out of attention and of the loss.

    ``segments`` (the example index of each real token, -1 on padding) tells routed layers which positions are real.
    """
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    segments = torch.where(mask.bool(), torch.arange(len(examples)).unsqueeze(1), -1)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "segments": segments}


def pack_rows(lengths: list[int], width: int) -> list[list[int]]:
    """Indices into ``lengths`` grouped into as few rows of at most ``width`` tokens as their total needs, balanced.

    Longest first, each example goes to the currently shortest row (a new row when even that one has no room), so
    the rows end up of similar length and padding them to the longest wastes little: first-fit would fill the first
    rows and leave a short last one. Order is kept inside a row.
    """
    rows: list[list[int]] = [[] for _ in range(max(1, math.ceil(sum(lengths) / width)))]
    used = [0] * len(rows)
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        r = min(range(len(rows)), key=used.__getitem__)
        if used[r] and used[r] + lengths[i] > width:
            rows.append([])
            used.append(0)
            r = len(rows) - 1
        rows[r].append(i)
        used[r] += lengths[i]
    return [sorted(row) for row in rows if row]


def collate_packed(examples: list[dict[str, list[int]]], pad_id: int, width: int) -> dict[str, torch.Tensor]:
    """Concatenate a micro-batch into rows of at most ``width`` tokens, without padding between examples.

    Position ids restart at 0 for every example, and no attention mask is passed: transformers then confines
    attention to each example (its packed-sequence support, as ``DataCollatorWithFlattening`` uses it). The first
    label of every example is masked, so no example learns from the one before it (position 0 of an unpacked row
    predicts nothing either). Rows shorter than the longest are filled with padding that forms its own sequence,
    carries no label and counts as no token (``segments`` -1).
    """
    rows = pack_rows([len(e["input_ids"]) for e in examples], width)
    row_len = max(sum(len(examples[i]["input_ids"]) for i in row) for row in rows)
    ids = torch.full((len(rows), row_len), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), row_len), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(rows), row_len), dtype=torch.long)
    segments = torch.full((len(rows), row_len), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            e, n = examples[i], len(examples[i]["input_ids"])
            ids[r, at : at + n] = torch.tensor(e["input_ids"])
            labels[r, at + 1 : at + n] = torch.tensor(e["labels"][1:])
            positions[r, at : at + n] = torch.arange(n)
            segments[r, at : at + n] = i
            at += n
        positions[r, at:] = torch.arange(row_len - at)  # the filler restarts too: a sequence of its own
    return {"input_ids": ids, "position_ids": positions, "labels": labels, "segments": segments}


def split_micro_batches(indices: list[int], lengths: list[int], cfg: TrainConfig) -> list[list[int]]:
    """One optimiser step's examples (of this process) cut into micro-batches: by ``tokens_per_batch`` when it is
    set (consecutive examples while their tokens fit; an example longer than the budget goes alone), else by
    ``batch_size`` examples."""
    if not cfg.tokens_per_batch:
        return [indices[i : i + cfg.batch_size] for i in range(0, len(indices), cfg.batch_size)]
    out: list[list[int]] = [[]]
    used = 0
    for i in indices:
        if out[-1] and used + lengths[i] > cfg.tokens_per_batch:
            out.append([])
            used = 0
        out[-1].append(i)
        used += lengths[i]
    return out


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The example order of one epoch: a pure function of (seed, epoch), so a resumed run replays it exactly."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen).tolist()


def step_examples(n: int, cfg: TrainConfig, rank: int, world: int, start: int = 0):
    """Yield (step, this process's example indices) from optimiser step ``start`` on; each rank takes its slice.

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
                yield step, mine
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


def step_metrics(
    loss: float, aux: float, lr: float, tokens_per_second: float, load: dict[str, list[float]]
) -> dict[str, float]:
    """One optimiser step's metrics for ``on_step``: ``train/loss``, ``train/aux_loss``, ``train/lr``,
    ``train/tokens_per_second`` (this process) and, for routed adapters, ``train/expert_load/<i>`` (expert i's mean
    routing share over the routed layers of the last micro-batch) and ``train/expert_load/max`` (the busiest
    expert's share in any layer)."""
    metrics = {"train/loss": loss, "train/aux_loss": aux, "train/lr": lr, "train/tokens_per_second": tokens_per_second}
    if load:
        per_layer = list(load.values())
        k = min(len(v) for v in per_layer)
        metrics.update({f"train/expert_load/{i}": sum(v[i] for v in per_layer) / len(per_layer) for i in range(k)})
        metrics["train/expert_load/max"] = max(max(v) for v in per_layer)
    return metrics


def _mixed_precision(cfg: TrainConfig, model: torch.nn.Module) -> str:
    """``auto``: autocast in the frozen base's dtype on a GPU, none on the CPU (``devices.mixed_precision``)."""
    if cfg.mixed_precision != "auto":
        return cfg.mixed_precision
    frozen = next((p for p in model.parameters() if not p.requires_grad), None)
    param = frozen if frozen is not None else next(model.parameters())
    return devices.mixed_precision(str(param.device), param.dtype)


def train(
    model: torch.nn.Module,
    tokenizer: Any,
    records: list[dict[str, str]],
    cfg: TrainConfig,
    *,
    out_dir: Path,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Fine-tune the trainable (adapter) parameters of ``model`` on ``records`` ({"prompt", "target"} dicts).

    ``on_step(step, metrics)`` is called on the main process after every optimiser step with ``step_metrics``
    (loss, aux loss, learning rate, throughput, expert load): the hook experiment trackers attach to.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    # 1. Processes, precision, data.
    # Routed adapters with top-k routing leave some experts without gradient in a step; DDP must tolerate that.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # Accumulation is ours (``_step``): the loss is normalised by the step's target tokens, not by a micro-batch count.
    where = next(model.parameters()).device  # where the runner loaded the model (--device)
    if where.type == "cuda" and where.index is not None:
        torch.cuda.set_device(where)  # a single process's accelerate places the model on the *current* GPU
    acc = Accelerator(mixed_precision=_mixed_precision(cfg, model), kwargs_handlers=[ddp], cpu=where.type == "cpu")
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
    tokens, positions, seen, t0 = 0, 0, 0, time.perf_counter()
    lengths = [len(e["input_ids"]) for e in examples]
    selective = _accepts_logits_to_keep(model)
    if cfg.packing and not _packing_confines_attention(model):
        log.warning("this model/transformers version does not confine attention to packed examples: padding instead")
        cfg = replace(cfg, packing=False)
    for step, mine in step_examples(len(examples), cfg, rank, world, start):
        if step >= steps:
            break
        step_tokens, t_step = tokens, time.perf_counter()
        step_lr = scheduler.get_last_lr()[0]  # the rate this step's update uses
        batches = [
            _collate(cfg, [examples[i] for i in micro], tokenizer.pad_token_id, selective)
            for micro in split_micro_batches(mine, lengths, cfg)
        ]
        step_loss, step_aux = _step(acc, ddp_model, model, batches)
        tokens += sum(int((b["segments"] >= 0).sum()) for b in batches)
        positions += sum(b["segments"].numel() for b in batches)
        seen += len(mine)
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
        if on_step is not None and acc.is_main_process:
            seconds_step = time.perf_counter() - t_step
            on_step(
                step + 1,
                step_metrics(
                    step_loss,
                    step_aux,
                    step_lr,
                    (tokens - step_tokens) / seconds_step if seconds_step > 0 else 0.0,
                    adapters.expert_load(model),
                ),
            )
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
        positions=int(acc.reduce(torch.tensor(positions, device=acc.device), "sum")) if world > 1 else positions,
        packing=cfg.packing,
    )


def _packing_confines_attention(model: torch.nn.Module) -> bool:
    """Check, on two short token runs, that a packed row gives the second run the logits it gets alone.

    Packed rows rely on transformers deriving per-example attention from restarting position ids (with no
    attention mask and no cache); an attention implementation or version without that would silently let
    examples attend to each other. Inference mode, dropout off: nothing is recorded or trained.
    """
    vocab = model.get_input_embeddings().weight.shape[0]
    device = model.get_input_embeddings().weight.device
    first, second = torch.arange(3, 8) % vocab, torch.arange(11, 15) % vocab
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            row = torch.cat([first, second]).unsqueeze(0).to(device)
            positions = torch.cat([torch.arange(5), torch.arange(4)]).unsqueeze(0).to(device)
            packed = model(input_ids=row, position_ids=positions, use_cache=False).logits[0, 5:].float()
            alone = model(input_ids=second.unsqueeze(0).to(device), use_cache=False).logits[0].float()
    finally:
        model.train(was_training)
    return bool(torch.allclose(packed, alone, atol=1e-3 * max(1.0, alone.abs().max().item()), rtol=1e-3))


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the model's forward can project only selected positions onto the vocabulary: transformers' boolean
    ``logits_to_keep`` (its ``slice_logits_to_keep``, in causal LMs since transformers 5.2x). Older versions and
    other architectures take only an int or positions shared by every row; then every position's logits are
    computed and the loss masks them."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        source = inspect.getsource(type(base).forward)
    except (OSError, TypeError):  # no source to read (compiled or dynamically built): take the safe path
        return False
    return "slice_logits_to_keep(" in source


def _collate(cfg: TrainConfig, examples: list[dict[str, list[int]]], pad_id: int, selective: bool) -> dict[str, Any]:
    """One micro-batch as model inputs: packed or padded, with the loss targets and the token segments.

    With ``selective``, logits are computed only where a label follows (``logits_to_keep``, a boolean mask over the
    positions) and the loss gets those labels already shifted: prompt positions, most of every example, never reach
    the vocabulary projection. The loss is the same cross-entropy over the same targets.
    """
    batch = collate_packed(examples, pad_id, cfg.max_seq_len) if cfg.packing else collate(examples, pad_id)
    labels = batch.pop("labels")
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    keep = shifted != IGNORE_INDEX
    if selective:
        batch.update(logits_to_keep=keep, labels=shifted[keep], shift_labels=shifted[keep])
    else:
        batch.update(labels=labels)
    batch["targets"] = int(keep.sum())
    # No KV cache in training; transformers also confines attention to packed examples only without a cache.
    batch["use_cache"] = False
    return batch


def _step(acc, ddp_model, model, batches: list[dict[str, Any]]) -> tuple[float, float]:
    """Forward and backward over one optimiser step's micro-batches; returns (LM loss, weighted aux loss).

    The LM loss is the cross-entropy summed over the step's target tokens divided by their number
    (``num_items_in_batch``), so cutting a step into micro-batches, by count or by tokens, does not change the
    gradient. Each micro-batch's auxiliary loss (routed adapters' balance losses) weighs by its share of the
    step's targets. Gradients are synchronised across processes on the last micro-batch only.
    """
    total = sum(b["targets"] for b in batches)
    step_loss = step_aux = 0.0
    for j, batch in enumerate(batches):
        share = batch["targets"] / total
        inputs = {k: v.to(acc.device) if torch.is_tensor(v) else v for k, v in batch.items() if k != "targets"}
        segments = inputs.pop("segments")
        sync = j == len(batches) - 1
        with nullcontext() if sync else acc.no_sync(ddp_model), acc.autocast(), token_segments(segments):
            out = ddp_model(**inputs, num_items_in_batch=total)
            aux = adapters.aux_loss(model)  # routed adapters' balance losses, already weighted
            loss = out.loss + (aux * share if aux is not None else 0.0)
            acc.backward(loss)
        step_loss += out.loss.item()
        step_aux += aux.item() * share if aux is not None else 0.0
    return step_loss, step_aux
