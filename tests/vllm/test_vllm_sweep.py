"""``cme-bench sweep --backend vllm``: adapters are trained first, then the base model and the LoRA adapter share one
engine (adapter by request) while the routed adapter gets its own; every run ends with a complete record, and one
that fails to train is recorded as failed while the others are evaluated."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from vllm_helpers import save_base

from cme_bench.cli import main

pytestmark = pytest.mark.vllm


def test_sweep_shares_one_engine_between_base_and_lora(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    base = save_base(tmp_path / "tiny-llama-h64")
    out = tmp_path / "results"
    broken = tmp_path / "broken.yaml"  # r_a must be divisible by num_experts: fails when the adapter is built
    broken.write_text("method: teamlora\ndescription: deliberately broken\nparams:\n  r_a: 30\n  num_experts: 4\n")
    caplog.set_level(logging.INFO, logger="cme_bench")
    argv = ["sweep", "--model", str(base), "--adapters", f"lora,{broken},teamlora", "--backend", "vllm"]
    argv += ["--tasks", "cme_mini_sst2", "--train-cap", "8", "--batch-size", "4", "--max-steps", "2", "--limit", "4"]
    assert main([*argv, "--output", str(out), "--no-report"]) == 1
    starts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("starting vLLM engine")]
    groups = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sweep: one evaluation session")]
    assert len(starts) == 2, starts
    assert groups == ["sweep: one evaluation session for none, lora", "sweep: one evaluation session for teamlora"]
    records = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/run.json")}
    assert len(records) == 4
    # A preset that cannot be built has no identity: its failed record keeps the readable id (no digest suffix).
    failed = records.pop(next(k for k in records if k.startswith(f"{base.name}--broken--cme-mini--s0")))
    assert failed["status"] == "failed" and "divisible" in failed["error"]["message"]
    for rec in records.values():
        assert rec["status"] == "success", rec.get("error")
        assert rec["evaluation"]["backend"] == "vllm"
        assert rec["metrics"]["cme_mini_sst2"]["n"] == 4
    kinds = {rec["config"]["adapter"]: rec["evaluation"]["vllm"]["adapter_kind"] for rec in records.values()}
    assert kinds == {"none": "base", "lora": "lora", "teamlora": "routed"}
