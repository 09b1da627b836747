"""benchmarks/gpu_check.sh --dry-run: every part of the GPU check runs at CPU sizes and lands in one summary."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_the_summary(tmp_path: Path):
    out = tmp_path / "gpu-check"
    proc = subprocess.run(
        [str(REPO / "benchmarks" / "gpu_check.sh"), str(out), "--dry-run"],
        capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["environment"]["dry_run"] is True and summary["environment"]["device"] == "cpu"
    has_vllm = (REPO / ".venv-vllm" / "bin" / "python").exists()
    expected = {"efficiency": "ok", "plan": "ok", "run": "ok", "vllm": "ok" if has_vllm else "skipped"}
    assert {k: v["status"] for k, v in summary["parts"].items()} == expected
    # The efficiency table: LoRA, MoELoRA reference/fused and TeamLoRA fused/reference, with their ratios.
    forms = {(r["method"], r["form"]) for r in summary["efficiency"]["rows"]}
    assert {("lora", "fused"), ("moelora", "reference"), ("moelora", "fused"), ("teamlora", "fused")} <= forms
    assert any(r["adapter"].startswith("teamlora") and r["train_x_moelora"] for r in summary["efficiency"]["ratios"])
    # The plan was measured beside its prediction.
    assert all(0.85 <= p["ratio"] <= 1.15 for p in summary["plan"]["peaks"].values())
    # The run trained and evaluated (base row + TeamLoRA), on the device the check asked for.
    runs = {r["run_id"]: r for r in summary["run"]}
    assert {r["status"] for r in runs.values()} == {"success"} and len(runs) == 2
    assert all(r["device"] == "cpu" and r["metrics"] for r in runs.values())
    text = (out / "summary.md").read_text()
    assert "# cme-bench GPU check (dry run: CPU sizes)" in text and "## Memory plan" in text
    if has_vllm:
        assert set(summary["vllm"]["rows"]) == {"base", "lora", "teamlora"} and "## Generation throughput" in text
    else:
        assert "no .venv-vllm here" in text
