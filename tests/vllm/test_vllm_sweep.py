"""``cme-bench sweep --backend vllm``: adapters are trained first, then the base model and the LoRA adapter share one
engine (adapter by request) while the routed adapter gets its own; every run ends with a complete record."""

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
    caplog.set_level(logging.INFO, logger="cme_bench")
    argv = ["sweep", "--model", str(base), "--adapters", "lora,teamlora", "--backend", "vllm"]
    argv += ["--tasks", "cme_mini_sst2", "--train-cap", "8", "--batch-size", "4", "--max-steps", "2", "--limit", "4"]
    assert main([*argv, "--output", str(out), "--no-report"]) == 0
    starts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("starting vLLM engine")]
    groups = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sweep: one vLLM engine for")]
    assert len(starts) == 2, starts
    assert groups == ["sweep: one vLLM engine for none, lora", "sweep: one vLLM engine for teamlora"]
    records = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/run.json")}
    assert len(records) == 3
    for rec in records.values():
        assert rec["status"] == "success", rec.get("error")
        assert rec["evaluation"]["backend"] == "vllm"
        assert rec["metrics"]["cme_mini_sst2"]["n"] == 4
    kinds = {rec["config"]["adapter"]: rec["evaluation"]["vllm"]["adapter_kind"] for rec in records.values()}
    assert kinds == {"none": "base", "lora": "lora", "teamlora": "routed"}
