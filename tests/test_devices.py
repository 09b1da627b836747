"""--device / --dtype: resolution, readable errors for devices that are not there, and a bf16 CPU run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _helpers import run_dir

from cme_bench import devices
from cme_bench.cli import main
from cme_bench.config import RunConfig
from cme_bench.errors import CmeError, ConfigError

CUDA = torch.cuda.is_available()


def test_auto_resolves_to_what_this_machine_has():
    device, dtype = devices.resolve("auto", "auto")
    if CUDA:
        assert device.startswith("cuda:") and dtype in ("bf16", "fp16")
    else:
        assert (device, dtype) in (("cpu", "fp32"), ("mps", "fp32"))
    assert devices.resolve("cpu", "bf16") == ("cpu", "bf16")


@pytest.mark.skipif(CUDA, reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_missing_gpu_is_one_readable_error(device: str):
    with pytest.raises(CmeError, match=f"--device {device}: no CUDA device is available here"):
        devices.resolve_device(device)


def test_misspelt_device_and_dtype_are_reported_together():
    with pytest.raises(ConfigError) as err:
        RunConfig(device="gpu", dtype="half")
    assert "--device must be one of auto, cpu, cuda, cuda:N, mps" in str(err.value)
    assert "--dtype must be one of auto, bf16, fp16, fp32" in str(err.value)


def test_memory_sizes():
    assert devices.memory_string("24GiB") == 24 * 2**30
    assert devices.memory_string("80 GB") == 80 * 10**9
    assert devices.memory_string("512MiB") == 512 * 2**20
    with pytest.raises(CmeError, match="not a memory size"):
        devices.memory_string("lots")


@pytest.mark.skipif(CUDA, reason="needs a machine without CUDA")
@pytest.mark.parametrize("verb", ["profile", "run", "eval", "plan"])
def test_cuda_on_a_cpu_machine_exits_2_with_one_line(verb: str, tmp_path: Path, capsys):
    extra = {"run": ["--output", str(tmp_path)], "eval": ["--adapter", "none", "--output", str(tmp_path)]}
    extra["plan"] = ["--measure"]
    assert main([verb, "--model", "tiny-llama", "--device", "cuda", *extra.get(verb, [])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"cme-bench {verb}: error: --device cuda: no CUDA device is available here")
    assert "Traceback" not in "\n".join(err)


def test_bf16_cpu_run_end_to_end(tmp_path: Path):
    """Train 2 steps and evaluate 2 documents with the base model in bf16 on the CPU; adapters stay fp32."""
    out = tmp_path / "results"
    args = ["--model", "tiny-llama", "--tasks", "cme_mini_boolq", "--train-cap", "8", "--batch-size", "4"]
    args += ["--max-steps", "2", "--limit", "2", "--device", "cpu", "--dtype", "bf16", "--output", str(out)]
    assert main(["run", *args, "--adapter", "teamlora", "--no-report"]) == 0
    rec = json.loads((run_dir(out, "tiny-llama--teamlora--cme-mini--s0") / "run.json").read_text())
    assert rec["status"] == "success"
    assert rec["config"]["device"] == "cpu" and rec["config"]["dtype"] == "bf16"
    assert rec["environment"]["hardware"]["dtype"] == "bf16" and rec["environment"]["hardware"]["device"] == "cpu"
    assert rec["model"]["dtype"] == "bf16" and rec["model"]["device"] == "cpu"  # the loaded weights, not the flag
    assert rec["training"]["steps"] == 2 and all(loss == loss for _, loss in rec["training"]["loss_curve"])
    assert rec["metrics"]["cme_mini_boolq"]["n"] == 2
    from safetensors.torch import load_file

    saved = load_file(out / rec["run_id"] / "adapter" / "adapter_model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}  # fp32 adapter weights on a bf16 base
    # The base model row (evaluation only) uses the device and dtype too.
    base = json.loads((run_dir(out, "tiny-llama--none--cme-mini--s0") / "run.json").read_text())
    assert base["model"]["dtype"] == "bf16" and base["config"]["dtype"] == "bf16"
