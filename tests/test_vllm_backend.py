"""The vLLM backend's pure-torch parts, in the main environment (no vLLM needed):

- ``routed.RoutedDelta`` (the math our vLLM model adds inside each projection) equals the training layers in
  ``cme_bench/tuners`` for every routed method served on vLLM, on a saved-and-reloaded adapter;
- the exact LoRA conversions of MoSLoRA and MultiLoRA reproduce the adapted model's logits;
- the serving plan and the "vLLM is not installed" message.
The engine-level token parity lives in tests/vllm (``make test-vllm``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cme_bench.adapters import apply_adapter, load_adapter, preset_from_dict, save_adapter
from cme_bench.models import architecture_info, build_tiny_llama

ROUTED = {
    "teamlora": {"r_a": 8, "num_experts": 4, "alpha": 16, "dropout": 0.0},
    "moelora": {"r": 4, "num_experts": 3, "alpha": 8, "dropout": 0.0},
    "loramoe": {"r": 2, "num_experts": 4, "alpha": 8, "dropout": 0.0},
    "hydralora": {"r": 4, "num_experts": 3, "alpha": 8, "dropout": 0.0},
    "smora": {"r": 8, "activate_r": 3, "alpha": 8, "dropout": 0.0},
}


def _adapted(method: str, params: dict, tmp_path: Path, seed: int = 0):
    base, tok = build_tiny_llama(seed=0)
    info = architecture_info(base)  # before injection: the fingerprint covers the weights
    model = apply_adapter(base, preset_from_dict({"method": method, "params": params}, name=method), seed=seed)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed + 3)
        for name, t in model.state_dict().items():
            if "lora_" in name and t.is_floating_point() and "biases" not in name:
                t.normal_(0.0, 0.3)
            elif "biases" in name:
                t.uniform_(-0.05, 0.05)  # a trained SMoRA carries non-zero biases: they must be served too
    out = save_adapter(model, tmp_path / method, base_info=info)
    return model.eval(), tok, out


@pytest.mark.parametrize("method", sorted(ROUTED))
def test_routed_delta_matches_tuner_layers(method: str, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from cme_bench.vllm_backend.routed import RoutedDelta, group_by_module, load_routed_adapter

    model, _, folder = _adapted(method, ROUTED[method], tmp_path)
    adapter = load_routed_adapter(folder)
    groups = group_by_module(load_file(str(adapter.weights_file)))
    assert groups, "no adapted projection found in the file"
    # Each projection on inputs of its own width; tolerance covers the stacked [A; router] matmul's rounding.
    for (layer, part, name), leaves in groups.items():
        module = model.get_submodule(f"model.layers.{layer}.{part}.{name}")
        base = module.base_layer
        xin = torch.randn(5, base.in_features, generator=torch.Generator().manual_seed(1))
        delta = RoutedDelta(method, adapter.params, base.in_features, base.out_features, torch.float32)
        delta.load(leaves)
        with torch.no_grad():
            torch.testing.assert_close(base(xin) + delta(xin), module(xin), rtol=1e-4, atol=1e-4)


def test_mixlora_ffn_matches_tuner_block(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from cme_bench.vllm_backend.routed import MixLoraFFN, group_by_block, load_routed_adapter

    params = {"r": 4, "num_experts": 4, "top_k": 2, "alpha": 8, "dropout": 0.0}
    model, _, folder = _adapted("mixlora", params, tmp_path)
    adapter = load_routed_adapter(folder)
    blocks = group_by_block(load_file(str(adapter.weights_file)))
    assert sorted(blocks) == [0, 1]
    for idx, leaves in blocks.items():
        block = model.get_submodule(f"model.layers.{idx}.mlp")
        mlp = block.base_layer
        ffn = MixLoraFFN(adapter.params, mlp.gate_proj.in_features, mlp.gate_proj.out_features, torch.float32)
        ffn.load(leaves)
        x = torch.randn(9, mlp.gate_proj.in_features, generator=torch.Generator().manual_seed(idx))
        with torch.no_grad():
            gate_up = torch.cat([mlp.gate_proj(x), mlp.up_proj(x)], dim=-1)
            torch.testing.assert_close(ffn(x, gate_up, mlp.down_proj), block(x), rtol=1e-4, atol=1e-4)


def test_packed_delta_adds_per_slice() -> None:
    from cme_bench.vllm_backend.routed import PackedDelta, RoutedDelta

    params = ROUTED["teamlora"]
    d = RoutedDelta("teamlora", params, 16, 6, torch.float32)
    d.load(
        {
            "lora_A.weight": torch.randn(8, 16),
            "lora_B.weight": torch.randn(6, 8),
            "lora_route.weight": torch.randn(4, 16),
            "lora_interaction_matrix": torch.zeros(4, 4),
        }
    )
    packed = PackedDelta([None, d], [5, 6])
    x, out = torch.randn(3, 16), torch.randn(3, 11)
    got, bias = packed.hook(None, (x,), (out, None))
    assert bias is None
    torch.testing.assert_close(got[:, :5], out[:, :5])
    torch.testing.assert_close(got[:, 5:], out[:, 5:] + d(x))


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("moslora", {"r": 4, "alpha": 8, "dropout": 0.0}),
        ("multilora", {"r": 2, "num_adapters": 3, "alpha": 8, "dropout": 0.0}),
    ],
)
def test_mergeable_adapters_convert_exactly_to_lora(method: str, params: dict, tmp_path: Path) -> None:
    from cme_bench.vllm_backend.serving import convert_to_lora, plan

    model, _, folder = _adapted(method, params, tmp_path)
    ids = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(ids).logits
    out = tmp_path / "converted"
    convert_to_lora(folder, out)
    base, _ = build_tiny_llama(seed=0)
    lora = load_adapter(base, out).eval()  # PEFT LoRA: what vLLM loads
    with torch.no_grad():
        torch.testing.assert_close(lora(ids).logits, want, rtol=1e-4, atol=1e-4)
    p = plan(tmp_path / "base-unused", folder)
    assert p.kind == "lora" and p.rank == (params["r"] * params.get("num_adapters", 1))


def test_plan_kinds_and_rank_rounding(tmp_path: Path) -> None:
    import json

    from cme_bench.vllm_backend.serving import lora_rank_limit, plan

    _, _, folder = _adapted("teamlora", ROUTED["teamlora"], tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    p = plan(tmp_path, folder)
    assert p.kind == "routed" and p.hf_overrides["cme_adapter"] == str(folder.resolve())
    assert plan(tmp_path, None).kind == "base"
    assert [lora_rank_limit(r) for r in (1, 2, 8, 9, 32, 96, 300)] == [1, 8, 8, 16, 32, 128, 320]


def test_missing_vllm_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import cme_bench.vllm_backend.check as vb
    from cme_bench import backends
    from cme_bench.errors import CmeError

    monkeypatch.setattr(vb, "is_available", lambda: False)
    monkeypatch.setattr(vb, "_checked", False)
    with pytest.raises(CmeError, match="make vllm-env"):
        backends.get("vllm").check()


@pytest.mark.parametrize(
    ("method", "params", "lora_serving"),
    [
        ("dora", {"r": 4, "alpha": 8, "dropout": 0.0}, "request"),  # vLLM rejects DoRA: always merged
        ("lora", {"r": 4, "alpha": 8, "dropout": 0.0}, "merged"),
        ("moslora", {"r": 4, "alpha": 8, "dropout": 0.0}, "merged"),
    ],
)
def test_merged_serving_reproduces_the_adapter(
    method: str, params: dict, lora_serving: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM

    from cme_bench.models import save_model_folder
    from cme_bench.vllm_backend.serving import plan

    monkeypatch.setenv("CME_BENCH_CACHE", str(tmp_path / "cache"))
    base, tok = build_tiny_llama(seed=0)
    base_dir = save_model_folder(base, tok, tmp_path / "base")
    model, _, folder = _adapted(method, params, tmp_path)
    p = plan(base_dir, folder, lora_serving=lora_serving)
    assert p.kind == "merged" and p.model_dir != base_dir.resolve()
    merged = AutoModelForCausalLM.from_pretrained(p.model_dir, dtype=torch.float32).eval()
    ids = torch.randint(3, 200, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)
    assert plan(base_dir, folder, lora_serving=lora_serving).model_dir == p.model_dir  # cached, not merged again


def test_routed_needs_a_llama_base(tmp_path: Path) -> None:
    import json

    from cme_bench.errors import CmeError
    from cme_bench.vllm_backend.serving import plan

    _, _, folder = _adapted("teamlora", ROUTED["teamlora"], tmp_path)
    qwen = tmp_path / "qwen"
    qwen.mkdir()
    (qwen / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(CmeError, match="Llama-family"):
        plan(qwen, folder)


def test_teamlora_authors_layout_is_served_routed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint in the TeamLoRA release's layout is re-saved in ours and served by the routed model."""
    import json

    from safetensors.torch import load_file, save_file

    from cme_bench.vllm_backend.routed import RoutedDelta, group_by_module, load_routed_adapter
    from cme_bench.vllm_backend.serving import plan

    monkeypatch.setenv("CME_BENCH_CACHE", str(tmp_path / "cache"))
    k, r_a, d, inter = 2, 4, 64, 128
    g = torch.Generator().manual_seed(0)
    state = {}
    for layer in range(2):
        for proj, (d_in, d_out) in {"gate_proj": (d, inter), "down_proj": (inter, d)}.items():
            prefix = f"base_model.model.model.layers.{layer}.mlp.{proj}"
            state[f"{prefix}.lora_A.weight"] = torch.randn(r_a, d_in, generator=g)
            for i in range(k):
                state[f"{prefix}.lora_B{i}.weight"] = torch.randn(d_out, r_a // k, generator=g)
            state[f"{prefix}.lora_route.fc.weight"] = torch.randn(k, d_in, generator=g)
            state[f"{prefix}.lora_interaction_matrix.weight"] = torch.rand(k, k, generator=g).fill_diagonal_(0) * 0.1
    authors = tmp_path / "authors"
    authors.mkdir()
    save_file(state, str(authors / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "r": r_a,
        "lora_nums": k,
        "lora_alpha": 8,
        "target_modules": ["gate_proj", "down_proj"],
    }
    (authors / "adapter_config.json").write_text(json.dumps(config))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))

    p = plan(tmp_path, authors)
    assert p.kind == "routed" and p.method == "teamlora"
    adapter = load_routed_adapter(p.adapter_dir)
    groups = group_by_module(load_file(str(adapter.weights_file)))
    assert len(groups) == 4
    leaves = groups[(0, "mlp", "gate_proj")]
    delta = RoutedDelta("teamlora", adapter.params, d, inter, torch.float32)
    delta.load(leaves)
    # The HF layer built by cme_bench.adapters from the same authors' folder gives the same update.
    base, _ = build_tiny_llama(seed=0)
    model = load_adapter(base, authors).eval()
    layer = model.get_submodule("model.layers.0.mlp.gate_proj")
    x = torch.randn(3, d, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(layer.base_layer(x) + delta(x), layer(x), rtol=1e-4, atol=1e-4)
