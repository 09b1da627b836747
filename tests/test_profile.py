"""The efficiency profiler on tiny-llama: every column is produced, the JSON round-trips with the documented keys and
loads in the reporter, and the variant plan / ratio arithmetic are right. No assertion depends on measured speed."""

from __future__ import annotations

import json

import pytest

from cme_bench import profile
from cme_bench.cli import main
from cme_bench.models import load_model

ROW_KEYS = {
    "model",
    "adapter",
    "preset",
    "method",
    "experts",
    "form",
    "rank",
    "total_rank",
    "overrides",
    "train_step_ms",
    "train_step_ms_median",
    "tokens_per_second",
    "prefill_ms",
    "prefill_ms_p25",
    "prefill_ms_p75",
    "decode_ms_per_token",
    "decode_ms_p25",
    "decode_ms_p75",
    "peak_memory_bytes",
    "trainable_parameters",
    "trainable_share",
}
FAST = profile.ProfileSettings(
    batch=1, seq_len=16, prompt_len=8, new_tokens=3, warmup=1, repeats=2, infer_repeats=2, memory=False
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: tiny matmuls gain nothing from two, and spinning OpenMP threads crawl on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_profile() -> dict:
    """One in-process profile of LoRA and the routed methods (MoELoRA, TeamLoRA, CoMoL, MoLA) at k = 2 (both forms),
    rank 4, without memory children."""
    variants = profile.plan_variants(["lora", "moelora", "teamlora", "comol", "mola"], experts=[2], rank=4)
    return profile.run_profile(load_model("tiny-llama"), variants, FAST, rank=4)


def test_plan_labels_and_equal_parameter_sizes():
    """k = 4 rows are the shipped presets (so the reporter matches run records); other k get suffixed labels."""
    plan = {v.label: v for v in profile.plan_variants(["lora", "moelora", "teamlora"], experts=[2, 4], rank=32)}
    assert set(plan) == {
        "lora",
        "lora-r64",
        "lora-r128",
        "moelora-k2",
        "moelora-k2-fused",
        "moelora",
        "moelora-fused",
        "teamlora-k2-reference",
        "teamlora-k2",
        "teamlora-reference",
        "teamlora",
    }
    assert plan["teamlora-k2"].overrides == {"num_experts": 2, "r_a": 64}
    assert plan["moelora-k2"].overrides == {"num_experts": 2}
    assert plan["teamlora"].overrides == {} and plan["teamlora"].form == "fused"
    assert plan["moelora"].form == "reference" and plan["moelora-fused"].overrides == {"forward": "fused"}
    for label in ("teamlora-k2", "moelora-k2", "lora-r64"):
        assert plan[label].total_rank == 64


def test_plan_sizes_come_from_the_method():
    """Expert count, per-expert rank and the resize for a k sweep are each method's own (MoLA: the largest layer)."""
    shipped = profile.plan_variants(["mola"], forms=["reference"])
    assert [(v.label, v.experts, v.rank, v.total_rank) for v in shipped] == [("mola", 8, 8, 64)]
    plan = {v.label: v for v in profile.plan_variants(["comol", "mola", "smora"], experts=[4], rank=8)}
    assert plan["mola-k4-fused"].overrides == {"expert_allocation": [4], "forward": "fused"}
    assert plan["comol-k4-r8"].overrides == {"num_experts": 4, "r": 8} and plan["comol-k4-r8"].total_rank == 32
    assert plan["smora-r32"].experts is None and plan["smora-r8"].overrides == {"r": 8}


def test_plan_without_experts_runs_presets_as_shipped():
    plan = profile.plan_variants(["lora", "teamlora"], forms=["fused"])
    assert [(v.label, v.overrides) for v in plan] == [("lora", {}), ("teamlora", {})]


def test_profile_produces_every_column(tiny_profile):
    rows = tiny_profile["rows"]
    assert {r["adapter"] for r in rows} == {
        "lora-r4",
        "lora-r8",
        "moelora-k2-r4",
        "moelora-k2-r4-fused",
        "teamlora-k2-r4-reference",
        "teamlora-k2-r4",
        "comol-k2-r4",
        "comol-k2-r4-fused",
        "mola-k2-r4",
        "mola-k2-r4-fused",
    }
    for row in rows:
        assert set(row) == ROW_KEYS
        assert set(row["train_step_ms"]) == {"median", "p25", "p75"}
        assert row["train_step_ms"]["p25"] <= row["train_step_ms"]["median"] <= row["train_step_ms"]["p75"]
        assert row["tokens_per_second"] > 0 and row["prefill_ms"] > 0 and row["decode_ms_per_token"] > 0
        assert row["trainable_parameters"] > 0 and 0 < row["trainable_share"] < 1
        assert row["form"] in ("fused", "reference") and row["model"] == "tiny-llama"
    by = {r["adapter"]: r for r in rows}
    # Equal parameter count up to TeamLoRA's k x k interaction matrices: the comparison the paper makes.
    team, moe = by["teamlora-k2-r4"]["trainable_parameters"], by["moelora-k2-r4"]["trainable_parameters"]
    assert 0 < team - moe < 0.02 * moe


def test_ratios_and_targets_cover_teamlora(tiny_profile):
    ratios = {r["adapter"]: r for r in tiny_profile["ratios"]}
    for label in ("comol-k2-r4", "mola-k2-r4-fused"):  # every routed row is compared with LoRA and MoELoRA
        assert ratios[label]["experts"] == 2 and ratios[label]["train_x_moelora"] is not None
    assert ratios["moelora-k2-r4"]["train_x_moelora"] == pytest.approx(1.0)
    team = ratios["teamlora-k2-r4"]
    assert team["paper_train_x_moelora"] == 0.87
    assert all(team[k] is not None for k in ("train_x_lora", "train_x_lora_same_rank", "decode_x_moelora"))
    targets = [t for t in tiny_profile["targets"] if t["adapter"] == "teamlora-k2-r4"]
    assert {t["ratio"] for t in targets} == {"train_x_moelora", "train_x_lora_same_rank", "decode_x_moelora"}
    assert all(isinstance(t["met"], bool) and not t["official"] for t in targets)


def test_ratio_arithmetic_on_hand_built_rows():
    def row(adapter, method, k, form, rank, total, train, decode):
        names = ("adapter", "method", "experts", "form", "rank", "total_rank")
        return dict(zip(names, (adapter, method, k, form, rank, total))) | {
            "train_step_ms_median": train,
            "decode_ms_per_token": decode,
        }

    rows = [
        row("lora", "lora", None, "fused", 32, 32, 100.0, 10.0),
        row("lora-r128", "lora", None, "fused", 128, 128, 110.0, 11.0),
        row("moelora", "moelora", 4, "reference", 32, 128, 200.0, 20.0),
        row("teamlora", "teamlora", 4, "fused", 32, 128, 120.0, 12.0),
    ]
    team = {r["adapter"]: r for r in profile.ratio_table(rows, rank=32)}["teamlora"]
    assert team["train_x_lora"] == pytest.approx(1.2)
    assert team["train_x_lora_same_rank"] == pytest.approx(120 / 110)
    assert team["train_x_moelora"] == pytest.approx(0.6) and team["decode_x_moelora"] == pytest.approx(0.6)
    checks = {t["ratio"]: t for t in profile.check_targets([team])}
    assert checks["train_x_moelora"]["met"] and checks["train_x_lora_same_rank"]["met"]
    assert checks["decode_x_moelora"]["met"] and checks["decode_x_moelora"]["official"]


def test_quartiles():
    assert profile.quartiles([3.0]) == {"median": 3.0, "p25": 3.0, "p75": 3.0}
    q = profile.quartiles([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (q["p25"], q["median"], q["p75"]) == (2.0, 3.0, 4.0)


def test_cli_json_round_trips_and_loads_in_the_reporter(tmp_path, capsys):
    out = tmp_path / "profile-tiny.json"
    argv = ["profile", "--model", "tiny-llama", "--adapters", "lora,teamlora", "--forms", "fused", "--no-memory"]
    argv += ["--batch", "1", "--seq-len", "16", "--new-tokens", "3", "--repeats", "1", "--infer-repeats", "1"]
    assert main([*argv, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "train ms" in printed and "decode/MoELoRA" in printed and "efficiency targets" in printed
    doc = json.loads(out.read_text())
    assert doc["schema"] == "cme-bench-profile" and doc["version"] == 1 and doc["model"] == "tiny-llama"
    assert {"batch", "seq_len", "prompt_len", "new_tokens", "repeats", "device", "threads"} <= set(doc["settings"])
    assert [r["adapter"] for r in doc["rows"]] == ["lora", "teamlora"]
    assert all(set(r) == ROW_KEYS for r in doc["rows"])
    load = pytest.importorskip("cme_bench.report.load")
    costs = load.load_profiles(tmp_path)
    assert costs[("tiny-llama", "teamlora")]["decode_ms_per_token"] == doc["rows"][1]["decode_ms_per_token"]
    assert costs[("tiny-llama", "lora")]["train_step_ms_median"] == doc["rows"][0]["train_step_ms"]["median"]


def test_cli_rejects_bad_values(capsys):
    assert main(["profile", "--model", "tiny-llama", "--repeats", "0"]) == 2
    assert "--repeats must be at least 1" in capsys.readouterr().err
    assert main(["profile", "--model", "tiny-llama", "--adapters", "nope"]) == 2


def test_cli_vllm_without_vllm_says_how_to_install(capsys):
    from cme_bench.vllm_backend import is_available

    if is_available():
        pytest.skip("vLLM is installed here; tests/vllm/test_vllm_profile.py covers --vllm")
    assert main(["profile", "--model", "tiny-llama", "--vllm"]) == 2
    assert "make vllm-env" in capsys.readouterr().err


def test_peak_memory_child_process():
    """A fresh child loads the model, applies one variant, trains and generates, and reports its peak RSS."""
    variant = profile.plan_variants(["teamlora"], experts=[2], rank=4, forms=["fused"])[0]
    peak = profile.measure_peak_memory("tiny-llama", variant, FAST, "cpu")
    assert isinstance(peak, int) and peak > 50 * 2**20  # at least the interpreter + torch


def test_measure_inference_for_the_runner(tiny_llama_fresh):
    model, tokenizer = tiny_llama_fresh
    out = profile.measure_inference(model, tokenizer, batch=1, prompt_len=8, new_tokens=3, repeats=2, warmup=0)
    assert out["prefill_ms"] > 0 and out["decode_ms_per_token"] > 0
    assert out["prefill_ms_p25"] <= out["prefill_ms"] <= out["prefill_ms_p75"]
    assert (out["batch"], out["prompt_len"], out["new_tokens"]) == (1, 8, 3)
