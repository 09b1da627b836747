"""The memory planner: predictions against the real allocator's peaks, 7B shapes in seconds, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cme_bench.cli import main
from cme_bench.plan import PlanRequest, make_plan, measure

LLAMA_7B = str(Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "llama-2-7b" / "config.json")
LLAMA_7B_PARAMETERS = 6_738_415_616


def _check_within(plan: dict, measured: dict, tolerance: float = 0.15) -> None:
    predicted = {
        "train": plan["training"]["total"],
        "train_checkpointing": plan["training"]["total_checkpointing"],
        "generate": plan["generation"]["total"],
    }
    for key, value in measured.items():
        assert abs(predicted[key] / value - 1) <= tolerance, (key, predicted[key], value)


@pytest.mark.parametrize("adapter", ["teamlora", "lora"])
def test_tiny_llama_plan_matches_the_measured_peaks(adapter: str):
    req = PlanRequest("tiny-llama", adapter, batch_size=4, max_seq_len=128, dtype="fp32")
    plan = make_plan(req)
    _check_within(plan, measure(req, "cpu"))
    assert plan["training"]["activations_checkpointing"] < plan["training"]["activations"]


def test_smollm2_plan_matches_the_measured_peaks():
    """30 layers, extrapolated from 1- and 2-layer simulations, against the real model's allocator peaks."""
    req = PlanRequest("smollm2-135m", "teamlora", batch_size=2, max_seq_len=64, dtype="fp32")
    _check_within(make_plan(req), measure(req, "cpu", workloads=("train", "generate")))


def test_llama_2_7b_plan_answers_in_seconds():
    make_plan(PlanRequest("tiny-llama", "teamlora", batch_size=1, max_seq_len=8))  # imports, not planning
    plan = make_plan(PlanRequest(LLAMA_7B, "teamlora", batch_size=4, max_seq_len=512, gpu_memory=24 * 2**30))
    assert plan["seconds"] < 5
    assert plan["layers"] == 32
    # bf16 weights: 2 bytes per parameter (+ the rotary frequency buffers)
    assert 0 <= plan["parts"]["weights"] - 2 * LLAMA_7B_PARAMETERS < 2**20
    # fp32 adapter, its gradients and two AdamW moments
    assert plan["parts"]["adapter"] == plan["parts"]["gradients"] == 4 * plan["trainable_parameters"]
    assert plan["parts"]["optimizer"] == 2 * plan["parts"]["adapter"]
    assert plan["generation"]["kv_cache"] == 2 * 32 * 4096 * 4 * 512 * 2  # K and V, 32 layers, bf16
    gpu = plan["gpu"]
    assert gpu["fits"] == {"training": False, "training_checkpointing": True, "generation": True}
    assert gpu["largest_batch"]["training"] < 4 <= gpu["largest_batch"]["training_checkpointing"]


def test_the_largest_batch_is_extrapolated_within_a_few_percent():
    """The largest batch comes from a line through the planned batch; planning at it lands at the budget."""
    gpu = 24 * 2**20
    plan = make_plan(PlanRequest("tiny-llama", "lora", batch_size=4, max_seq_len=64, dtype="fp32", gpu_memory=gpu))
    best, usable = plan["gpu"]["largest_batch"]["training"], plan["gpu"]["usable"]
    assert best > 4
    at = lambda b: make_plan(PlanRequest("tiny-llama", "lora", b, 64, "fp32", gpu))["training"]["total"]  # noqa: E731
    assert 0.95 * usable <= at(best) <= 1.03 * usable < at(best + 2)


def test_plan_cli_prints_and_writes_json(tmp_path: Path, capsys):
    out = tmp_path / "plan.json"
    argv = ["plan", "--model", LLAMA_7B, "--adapter", "lora", "--batch-size", "1", "--max-seq-len", "256"]
    assert main([*argv, "--gpu-memory", "80GiB", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "base weights" in text and "KV cache" in text and "largest batch" in text
    doc = json.loads(out.read_text())
    assert doc["gpu"]["fits"]["training"] is True and doc["request"]["adapter"] == "lora"
    assert main([*argv, "--gpu-memory", "lots"]) == 2
