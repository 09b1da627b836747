"""``cme-bench profile --vllm``: every fused variant is also timed through vLLM, served as an evaluation serves it,
and the figures and ratios land in the profile JSON the reporter reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vllm_helpers import save_base

from cme_bench.cli import main

pytestmark = pytest.mark.vllm


def test_profile_times_generation_through_vllm(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = save_base(tmp_path / "tiny-llama-h64")
    out = tmp_path / "profile.json"
    argv = ["profile", "--model", str(base), "--adapters", "lora,moelora,teamlora", "--experts", "2", "--rank", "8"]
    argv += ["--batch", "2", "--seq-len", "16", "--new-tokens", "4", "--repeats", "1", "--infer-repeats", "2"]
    assert main([*argv, "--no-memory", "--vllm", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    rows = {r["adapter"]: r for r in doc["rows"]}
    served = {label: r.get("vllm_serving") for label, r in rows.items()}
    assert served == {
        "lora-r8": "lora",
        "lora-r16": "lora",
        "moelora-k2-r8": None,  # reference form: vLLM serves routed adapters fused only
        "moelora-k2-r8-fused": "routed",
        "teamlora-k2-r8-reference": None,
        "teamlora-k2-r8": "routed",
    }
    for label, kind in served.items():
        if kind:
            assert rows[label]["vllm_decode_ms_per_token"] > 0 and rows[label]["vllm_prefill_ms"] > 0
    team = next(r for r in doc["ratios"] if r["adapter"] == "teamlora-k2-r8")
    assert team["vllm_decode_x_moelora"] == pytest.approx(
        rows["teamlora-k2-r8"]["vllm_decode_ms_per_token"] / rows["moelora-k2-r8-fused"]["vllm_decode_ms_per_token"]
    )
    assert "served as" in capsys.readouterr().out
