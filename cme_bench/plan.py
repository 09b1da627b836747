"""The memory planner behind ``cme-bench plan``: will model x adapter x batch x length fit this GPU?

It predicts the peak of tensor memory (what ``torch.cuda.max_memory_allocated`` reports on a GPU) for one training
step and for generation, from the model's config alone: the model is built on the meta device (no weights, seconds
even for 7B shapes), the adapter is attached there, and one real training step (``profile.Trainer``: forward with
labels, the method's auxiliary loss, backward, AdamW step) and one prefill are *executed on meta tensors* under a
dispatch mode that adds up every storage an operator creates and subtracts it when the storage dies. That is the
allocator's own bookkeeping replayed without the arithmetic, so activations, autograd's saved tensors, gradient
checkpointing's recomputation, fp32 upcasts in the loss and each adapter's own intermediates are counted as they
really happen, not from a formula that would have to be kept in step with every architecture and method.

Reported parts (bytes): base weights (in ``--dtype``), adapter weights (fp32 on a half-precision base; see
``cme_bench.devices``), gradients (one per trainable parameter), AdamW state (two fp32 moments per trainable
parameter), activations (the rest of the step's peak: saved tensors and temporaries), with and without gradient
checkpointing; generation: weights + KV cache + prefill temporaries. Activations grow linearly with the batch, so two
simulated batch sizes give the largest batch that fits into the usable memory (``USABLE_SHARE`` of the GPU: the CUDA
context, cuBLAS workspaces and allocator fragmentation take the rest).

What it does not see: memory outside torch's allocator (CUDA context, NCCL buffers), and attention kernels that
differ by device: the meta device runs the attention math that the CPU runs, which keeps no T x T matrix for SDPA.
``measure`` runs the same step for real (CPU: torch profiler's allocator events; GPU: ``max_memory_allocated``) and
is what the tests and ``plan --measure`` compare the prediction with.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from cme_bench.errors import CmeError

USABLE_SHARE = 0.9  # of the GPU's memory, for tensors; the rest goes to the CUDA context and fragmentation
ADAMW_STATES = 2  # exp_avg and exp_avg_sq, each the size of its (fp32) parameter


@dataclass(frozen=True)
class PlanRequest:
    model: str
    adapter: str = "teamlora"
    batch_size: int = 8
    max_seq_len: int = 256
    dtype: str = "bf16"
    gpu_memory: int | None = None  # bytes; None: no fit verdict

    def __post_init__(self) -> None:
        problems = [
            f"--{k.replace('_', '-')} must be >= 1" for k in ("batch_size", "max_seq_len") if getattr(self, k) < 1
        ]
        if self.dtype not in ("bf16", "fp16", "fp32"):
            problems.append(f"--dtype must be bf16, fp16 or fp32 for a plan, got {self.dtype!r}")
        if self.gpu_memory is not None and self.gpu_memory <= 0:
            problems.append("--gpu-memory must be positive")
        if problems:
            raise CmeError("; ".join(problems))


# ----------------------------------------------------------------------------------------------------------------
# Counting live storages


class StorageTracker(TorchDispatchMode):
    """Live and peak bytes of every storage created by an operator while the mode is active.

    Storages are keyed by their C++ identity, so views and in-place results are counted once and storages that
    existed before (the weights) never; a storage leaves the count when it is freed (``weakref.finalize``). Works the
    same on meta, CPU and CUDA tensors.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._keys: set[int] = set()

    def reset_peak(self) -> None:
        self.peak = self.live

    def _add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._keys:
            return
        nbytes = storage.nbytes()
        self._keys.add(key)
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, nbytes)

    def _free(self, key: int, nbytes: int) -> None:
        if key in self._keys:
            self._keys.discard(key)
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            # A meta tensor has no value. The model code asks only yes/no questions of its inputs here ("is the
            # mask all ones?", "are the sequences unpacked?"), and our inputs are one full unpadded sequence per
            # row, so the answer is yes.
            return True if args[0].dtype == torch.bool else 0
        out = func(*args, **(kwargs or {}))
        # Views and in-place results share an input's storage: that memory exists already (counted when it was
        # created, or from before the mode, like the weights), so only storages no input holds are new.
        inputs = {v.untyped_storage()._cdata for v in tree_flatten((args, kwargs))[0] if isinstance(v, torch.Tensor)}
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor) and value.untyped_storage()._cdata not in inputs:
                self._add(value)
        return out


# ----------------------------------------------------------------------------------------------------------------
# Building the adapted model


def _dtype(name: str) -> torch.dtype:
    from cme_bench.devices import torch_dtype

    return torch_dtype(name)


def build_adapted(config: Any, adapter: str, dtype: torch.dtype, device: str | torch.device) -> torch.nn.Module:
    """``config``'s model (random weights, or none on meta) with ``adapter`` attached, base frozen."""
    from transformers import AutoModelForCausalLM

    from cme_bench import adapters

    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if adapter != "none":
        model = adapters.apply_adapter(model, adapter, seed=0, total_steps=10_000)
    else:
        model.requires_grad_(False)
    return model


def _bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        key = t.untyped_storage()._cdata if t.device.type != "meta" else id(t)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def _static(model: torch.nn.Module) -> dict[str, int]:
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    adapter_buffers = [b for n, b in model.named_buffers() if "lora_" in n]
    base_buffers = [b for n, b in model.named_buffers() if "lora_" not in n]
    return {
        "weights": _bytes(frozen) + _bytes(base_buffers),
        "adapter": _bytes(trainable) + _bytes(adapter_buffers),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "gradients": _bytes(trainable),
        "optimizer": ADAMW_STATES * _bytes(trainable),
    }


def _tokens(model: torch.nn.Module, batch: int, length: int, device: str | torch.device) -> torch.Tensor:
    vocab = model.get_input_embeddings().weight.shape[0]
    if torch.device(device).type == "meta":
        return torch.empty(batch, length, dtype=torch.long, device="meta")
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(0)).to(device)


def _train_step(model: torch.nn.Module, tokens: torch.Tensor, checkpointing: bool) -> None:
    """One steady-state training step: AdamW's moments exist before it, as in every step of a run but the first."""
    from cme_bench.profile import Trainer

    if checkpointing:  # as train.train enables it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    trainer = Trainer(model, tokens)
    if trainer.optimizer is not None:
        # The state AdamW creates lazily on its first step (the format of torch.optim.AdamW._init_group).
        for group in trainer.optimizer.param_groups:
            for p in group["params"]:
                trainer.optimizer.state[p] = {
                    "step": torch.tensor(0.0),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }
    trainer.step()
    if checkpointing:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model.gradient_checkpointing_disable()


@torch.no_grad()
def _prefill(model: torch.nn.Module, tokens: torch.Tensor) -> None:
    """Generation's peak: the prompt's forward pass filling the KV cache; only the last position's logits."""
    model.eval()
    model(input_ids=tokens, use_cache=True, logits_to_keep=1)


WORKLOAD_STEPS = {
    "train": lambda model, tokens: _train_step(model, tokens, False),
    "train_checkpointing": lambda model, tokens: _train_step(model, tokens, True),
    "generate": _prefill,
}


@contextlib.contextmanager
def _memory_efficient_attention():
    """SDPA on meta tensors as the fused kernels compute it (CPU and CUDA flash attention: output + log-sum-exp, no
    T x T matrix); without this the meta device would pick the math path, which stores the attention weights."""
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention

    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if q.device.type != "meta":
            return original(q, k, v, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
        if enable_gqa and k.shape[-3] != q.shape[-3]:
            k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
            v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        return flash(q, k, v, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)[0]

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def _simulate(config: Any, adapter: str, dtype: torch.dtype, batch: int, length: int) -> dict[str, int]:
    """Static bytes of the adapted model and the peaks above them (training without/with checkpointing, prefill),
    executed on meta tensors."""
    model = build_adapted(config, adapter, dtype, "meta")
    out: dict[str, int] = _static(model)
    for key, run in WORKLOAD_STEPS.items():
        tokens = _tokens(model, batch, length, "meta")
        with _memory_efficient_attention(), StorageTracker() as tracker:
            run(model, tokens)
        out[key] = tracker.peak
    return out


def _with_layers(config: Any, layers: int) -> Any:
    short = copy.deepcopy(config)
    short.num_hidden_layers = layers
    if isinstance(getattr(short, "layer_types", None), list):
        short.layer_types = short.layer_types[:layers]
    return short


def simulate_layers(config: Any, adapter: str, dtype: torch.dtype, batch: int, length: int) -> dict[str, int]:
    """``_simulate`` for the whole depth, from models of 1 and 2 layers.

    Decoder layers are identical, so every quantity is affine in the depth: what a second layer adds, each further
    layer adds again. Two short models cost a fixed, small number of meta operators whatever the depth (a 7B plan
    answers in seconds), and the peaks fall at the same point of the step (the start of backward, the end of
    prefill) at every depth.
    """
    depth = config.num_hidden_layers
    if depth <= 2:
        return _simulate(config, adapter, dtype, batch, length)
    one = _simulate(_with_layers(config, 1), adapter, dtype, batch, length)
    two = _simulate(_with_layers(config, 2), adapter, dtype, batch, length)
    return {k: one[k] + (depth - 1) * (two[k] - one[k]) for k in one}


def kv_cache_bytes(config: Any, batch: int, length: int, dtype: torch.dtype) -> int:
    layers = config.num_hidden_layers
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * layers * heads * head_dim * length * batch * torch.empty(0, dtype=dtype).element_size()


# ----------------------------------------------------------------------------------------------------------------
# The plan


def _largest_batch(usable: int, held: int, peak_above: int, fixed: int, batch: int) -> int:
    """Largest batch whose peak fits ``usable``, assuming the part of the simulated peak above ``fixed`` (gradients
    and optimizer state, which do not grow with the batch) scales with the batch. A linear extrapolation from the
    planned batch (within a few percent of the budget for batches several times larger): plan at that batch to
    confirm it."""
    per_example = (peak_above - fixed) / batch
    if per_example <= 0:
        return 0
    return max(0, math.floor((usable - held - fixed) / per_example))


def make_plan(req: PlanRequest) -> dict[str, Any]:
    """Predicted peaks (bytes) for ``req``, the parts they are made of, and, with a GPU size, the fit verdicts."""
    from cme_bench.models import load_config

    t0 = time.perf_counter()
    config = load_config(req.model)
    dtype = _dtype(req.dtype)
    sim = simulate_layers(config, req.adapter, dtype, req.batch_size, req.max_seq_len)
    held = sim["weights"] + sim["adapter"]
    # The simulated step's peak already holds gradients and AdamW state; activations are the rest of it.
    persistent = sim["gradients"] + sim["optimizer"]
    train = {
        "activations": sim["train"] - persistent,
        "activations_checkpointing": sim["train_checkpointing"] - persistent,
        "total": held + sim["train"],
        "total_checkpointing": held + sim["train_checkpointing"],
    }
    generate = {
        "kv_cache": kv_cache_bytes(config, req.batch_size, req.max_seq_len, dtype),
        "total": held + sim["generate"],
    }
    plan: dict[str, Any] = {
        "request": asdict(req),
        "model_type": getattr(config, "model_type", None),
        "layers": config.num_hidden_layers,
        "parts": {k: sim[k] for k in ("weights", "adapter", "gradients", "optimizer")},
        "trainable_parameters": sim["trainable_parameters"],
        "training": train,
        "generation": generate,
    }
    if req.gpu_memory:
        usable = int(USABLE_SHARE * req.gpu_memory)
        fit = lambda key, fixed: _largest_batch(usable, held, sim[key], fixed, req.batch_size)  # noqa: E731
        plan["gpu"] = {
            "memory": req.gpu_memory,
            "usable": usable,
            "fits": {
                "training": train["total"] <= usable,
                "training_checkpointing": train["total_checkpointing"] <= usable,
                "generation": generate["total"] <= usable,
            },
            "largest_batch": {
                "training": fit("train", persistent),
                "training_checkpointing": fit("train_checkpointing", persistent),
                "generation": fit("generate", 0),
            },
        }
    plan["seconds"] = round(time.perf_counter() - t0, 3)
    return plan


# ----------------------------------------------------------------------------------------------------------------
# Measuring the same workload for real (child process: a fresh allocator and nothing else in memory)


def _profiler_peak(body, *args: Any) -> int:
    """Peak bytes allocated by torch's CPU allocator while ``body(*args)`` runs (the profiler's memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        body(*args)
    with tempfile.TemporaryDirectory(prefix="cme-plan-") as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text(encoding="utf-8"))["traceEvents"]
    memory = sorted(
        (e for e in events if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0),  # 0: CPU
        key=lambda e: e["ts"],
    )
    if not memory:
        return 0
    # The running total counts from the process's first profiled allocation, not from this session: start from
    # the total just before this session's first event.
    first = memory[0]["args"]
    baseline = first["Total Allocated"] - first["Bytes"]
    return max(e["args"]["Total Allocated"] for e in memory) - baseline


def _measure_child(job: dict[str, Any]) -> dict[str, int]:
    from cme_bench.models import load_config

    config = load_config(job["model"])
    dtype, device = _dtype(job["dtype"]), job["device"]
    out = {}
    for key in job["workloads"]:
        # Built outside the measured region: initialisation's temporaries are no part of a run's steady state.
        model = build_adapted(config, job["adapter"], dtype, device)
        tokens = _tokens(model, job["batch_size"], job["max_seq_len"], device)
        static = _static(model)
        held = static["weights"] + static["adapter"]
        body = WORKLOAD_STEPS[key]
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            body(model, tokens)
            out[key] = held + int(torch.cuda.max_memory_allocated(device)) - before
        else:
            out[key] = held + _profiler_peak(body, model, tokens)
        del model, tokens  # before the next workload's model is built
    return out


def measure(req: PlanRequest, device: str = "cpu", workloads=tuple(WORKLOAD_STEPS)) -> dict[str, int]:
    """Measured peaks (bytes) of the planned workloads on ``device`` in a fresh child process: the weights held plus
    the allocator's peak during two training steps (without / with checkpointing) or the prefill, comparable with
    the plan's ``training.total``, ``training.total_checkpointing`` and ``generation.total``."""
    job = {**asdict(req), "device": device, "workloads": list(workloads)}
    with tempfile.TemporaryDirectory(prefix="cme-plan-") as tmp:
        out = Path(tmp) / "peaks.json"
        cmd = [sys.executable, "-m", "cme_bench.plan", json.dumps(job), str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=1800)
        if proc.returncode != 0 or not out.is_file():
            raise CmeError(f"measuring the plan's workload failed: {proc.stderr.strip()[-2000:]}")
        return json.loads(out.read_text(encoding="utf-8"))


if __name__ == "__main__":
    Path(sys.argv[2]).write_text(json.dumps(_measure_child(json.loads(sys.argv[1]))), encoding="utf-8")
