"""Where a run computes and in which precision: ``--device`` and ``--dtype`` resolved once, checked, described.

``--device auto`` picks this process's GPU (``cuda:LOCAL_RANK`` under ``torchrun`` / ``accelerate launch``), else
Apple's ``mps``, else the CPU. ``--dtype auto`` picks bf16 on a GPU that supports it, fp16 on an older CUDA GPU, and
fp32 elsewhere (CPU bf16 works and is tested, but is slower than fp32 on most CPUs). The resolved, concrete values
(``cuda:0``, ``bf16``) are what a run record's ``config`` holds, so two runs that computed differently never share
a record; a device that is not there is a ``CmeError`` naming what is.

The dtype applies to the frozen base model, which is loaded straight onto the device in it. Adapter parameters are
created in fp32 on a bf16/fp16 base (``cme_bench.tuners.base.adapter_dtype``; PEFT's ``autocast_adapter_dtype``
does the same for PEFT methods): AdamW updates of size lr * g (~1e-6 relative) vanish below bf16's 8-bit mantissa,
so low-precision adapter weights would silently stop learning. Each adapter casts its input to fp32, computes its
delta, and casts it back to the base dtype; the adapters are a few percent of the weights, so fp32 costs little.
"""

from __future__ import annotations

import os
import re
from typing import Any

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPE_NAMES = ("auto", "bf16", "fp16", "fp32")
DEVICE_HELP = "auto | cpu | cuda | cuda:N | mps (default: auto: this process's GPU, else the CPU)"
DTYPE_HELP = "base-model precision: auto | bf16 | fp16 | fp32 (default: auto: bf16 on a GPU, else fp32)"
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_names(device: str, dtype: str) -> list[str]:
    """Spelling problems of ``--device`` / ``--dtype`` (no torch import: used by config validation)."""
    problems = []
    if not _DEVICE_RE.match(device):
        problems.append(f"--device must be one of {', '.join(DEVICE_CHOICES)}, got {device!r}")
    if dtype not in DTYPE_NAMES:
        problems.append(f"--dtype must be one of {', '.join(DTYPE_NAMES)}, got {dtype!r}")
    return problems


def torch_dtype(name: str):
    """``bf16`` -> ``torch.bfloat16`` (a concrete name; resolve ``auto`` first)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def dtype_name(dtype: Any) -> str:
    """``torch.bfloat16`` -> ``bf16``."""
    import torch

    names = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64"}
    return names.get(dtype, str(dtype).removeprefix("torch."))


def _available() -> str:
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        found.append("mps")
    return ", ".join(found)


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(spec: str = "auto") -> str:
    """A concrete device string (``cpu``, ``cuda:1``, ``mps``) that exists here.

    Raises:
        CmeError: the device is misspelt or not present on this machine; the message lists the devices that are.
    """
    import torch

    from cme_bench.errors import CmeError

    if problems := check_names(spec, "auto"):
        raise CmeError(problems[0])
    if spec == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            return f"cuda:{local % torch.cuda.device_count()}"
        return "mps" if _mps_available() else "cpu"
    if spec == "cpu":
        return spec
    if spec == "mps":
        if not _mps_available():
            raise CmeError(f"--device mps: Apple's Metal backend is not available here (devices: {_available()})")
        return spec
    if not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise CmeError(
            f"--device {spec}: no CUDA device is available here (torch {torch.__version__}, {built}; "
            f"devices: {_available()}); use --device cpu or --device auto"
        )
    index = int(spec.split(":")[1]) if ":" in spec else int(os.environ.get("LOCAL_RANK", "0"))
    if index >= torch.cuda.device_count():
        raise CmeError(f"--device {spec}: there is no CUDA device {index} here (devices: {_available()})")
    return f"cuda:{index}"


def resolve_dtype(spec: str, device: str) -> str:
    """A concrete dtype name for ``device``: ``auto`` is bf16 on a bf16-capable GPU, fp16 on another GPU, else fp32.

    Raises:
        CmeError: the name is unknown, or the device cannot compute in it (bf16 on a GPU without bf16).
    """
    import torch

    from cme_bench.errors import CmeError

    if problems := check_names("auto", spec):
        raise CmeError(problems[0])
    cuda = device.startswith("cuda")
    if spec == "auto":
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if spec == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise CmeError(f"--dtype bf16: {torch.cuda.get_device_name(device)} has no bf16 support; use --dtype fp16")
    return spec


def resolve(device: str = "auto", dtype: str = "auto") -> tuple[str, str]:
    """``(device, dtype)``, both concrete and checked against this machine."""
    dev = resolve_device(device)
    return dev, resolve_dtype(dtype, dev)


def describe(device: str, dtype: str) -> dict[str, Any]:
    """What a run record says about where it computed (merged into ``environment.hardware``)."""
    import torch

    info: dict[str, Any] = {"device": device, "dtype": dtype}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_bytes=int(props.total_memory), cuda=torch.version.cuda)
    return info


def mixed_precision(device: str, base_dtype: Any) -> str:
    """accelerate's ``mixed_precision`` for training a frozen base of ``base_dtype`` on ``device``.

    On a GPU, autocast in the base dtype keeps the (fp32) adapter matmuls on the tensor cores; fp16 also needs
    accelerate's loss scaling. On the CPU nothing is autocast: the adapters compute in fp32 and cast their delta back.
    """
    if not str(device).startswith("cuda"):
        return "no"
    return {"bf16": "bf16", "fp16": "fp16"}.get(dtype_name(base_dtype), "no")


def memory_string(text: str) -> int:
    """``24GiB`` / ``80GB`` / ``512MiB`` / ``1e9`` -> bytes.

    Raises:
        CmeError: not a size.
    """
    from cme_bench.errors import CmeError

    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
    units |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in units:
        raise CmeError(f"not a memory size: {text!r} (write e.g. 24GiB, 80GB or 512MiB)")
    return int(float(match.group(1)) * units[match.group(2).lower()])
