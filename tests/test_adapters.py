"""The public adapter API across every preset: presets, zero-init parity, frozen base, save/load round trips (ours,
PEFT's and the TeamLoRA authors' layout), strict refusals, target matching on several architectures, parameter
shares on the paper's base shape, and the ``cme-bench adapters`` verbs."""

from __future__ import annotations

import json

import pytest
import torch
from _helpers import perturb
from safetensors.torch import load_file, save_file
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from cme_bench import adapters
from cme_bench.cli import main as cli_main
from cme_bench.errors import CmeError, ConfigError
from cme_bench.modelcard import read_fields
from cme_bench.models import architecture_info, build_tiny_llama

PRESETS = [p.name for p in adapters.list_presets()]
IDS = torch.tensor([[5, 17, 42, 99, 3, 8], [1, 2, 3, 4, 5, 6]])


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(seed: int = 0, **kw):
    return build_tiny_llama(seed=seed, **kw)[0]


def test_every_method_has_a_preset_and_required_presets_exist():
    methods = {adapters.load_preset(n).method for n in PRESETS}
    assert methods == set(adapters.TUNERS.names())
    assert {"teamlora", "teamlora-r16", "lora", "lora-r128", "moelora", "hydralora"} <= set(PRESETS)
    team = adapters.load_preset("teamlora")
    assert (team.params["r_a"], team.params["num_experts"], team.params["dropout"]) == (128, 4, 0.05)
    assert team.params["balance_loss_weight"] == 0.0 and team.params["forward"] == "fused"
    assert team.params["target_modules"] == ["gate_proj", "up_proj", "down_proj"]
    assert adapters.load_preset("lora").params["r"] == 32 and adapters.load_preset("lora-r128").params["r"] == 128
    moe = adapters.load_preset("moelora").params
    assert (moe["num_experts"], moe["r"]) == (4, 32)


def test_preset_errors_are_readable(tmp_path):
    with pytest.raises(CmeError, match="Did you mean 'teamlora'"):
        adapters.load_preset("teamlroa")
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: teamlora\nparams: {r_a: 10, num_experts: 4, alfa: 3}\nextra: 1\n")
    with pytest.raises(ConfigError, match="extra"):
        adapters.load_preset(str(bad))
    bad.write_text("method: teamlora\nparams: {r_a: 10, num_experts: 4, alfa: 3}\n")
    with pytest.raises(ConfigError) as err:
        adapters.load_preset(str(bad))
    assert "alfa" in str(err.value) and "divisible" in str(err.value)
    good = tmp_path / "mine.yaml"
    good.write_text("method: moelora\nparams: {r: 2, num_experts: 2}\n")
    assert adapters.load_preset(str(good)).name == "mine"


@pytest.mark.parametrize("name", PRESETS)
def test_zero_init_equals_base_and_only_adapter_trains(name):
    base = tiny()
    reference = base(IDS).logits
    model = adapters.apply_adapter(base, name, total_steps=10, seed=0)
    assert not model.training  # the base was in eval mode; the adapter must not switch dropout on
    out = model(input_ids=IDS, labels=IDS)
    torch.testing.assert_close(out.logits, reference, rtol=0, atol=1e-5)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    out.loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    info = adapters.adapter_info(model)
    assert info["preset"] == name and info["trainable_parameters"] == adapters.count_parameters(model)[0]
    assert info["routed"] == bool(adapters.expert_load(model))


@pytest.mark.parametrize("name", PRESETS)
def test_save_load_round_trip_is_bit_identical(name, tmp_path):
    base = tiny()
    info = architecture_info(base)
    model = adapters.apply_adapter(base, name, total_steps=10, seed=0)
    perturb(model)
    expected = model(IDS).logits
    adapters.save_adapter(model, tmp_path / "ad", base_info=info)
    fields = read_fields(tmp_path / "ad")  # PEFT folders: the cme_bench.json sidecar; ours: adapter_config.json
    assert fields["format"] == "cme-bench-adapter" and fields["format_version"] == 1
    assert fields["base_model"]["fingerprint"] == info["fingerprint"]
    loaded = adapters.load_adapter(tiny(), tmp_path / "ad")
    assert torch.equal(loaded(IDS).logits, expected)
    assert adapters.adapter_info(loaded)["method"] == adapters.load_preset(name).method
    state = adapters.adapter_state(loaded)
    assert all(torch.equal(state[k], v) for k, v in adapters.adapter_state(model).items())


@pytest.mark.parametrize("name", ["lora", "dora", "adalora"])
def test_peft_methods_load_with_plain_peft(name, tmp_path):
    from peft import PeftModel

    model = adapters.apply_adapter(tiny(), name, total_steps=10, seed=0)
    perturb(model)
    model.eval()
    adapters.save_adapter(model, tmp_path / "ad", base_info=architecture_info(tiny()))
    plain = PeftModel.from_pretrained(tiny(), str(tmp_path / "ad"))
    plain.eval()
    torch.testing.assert_close(plain(IDS).logits, model(IDS).logits, rtol=0, atol=1e-6)


def test_save_is_atomic_and_overwrites(tmp_path):
    model = adapters.apply_adapter(tiny(), "teamlora-r16", seed=0)
    out = tmp_path / "ad"
    adapters.save_adapter(model, out, base_info=architecture_info(tiny()))
    perturb(model)
    adapters.save_adapter(model, out, base_info=architecture_info(tiny()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ad"]  # no temporary or backup folder left behind
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    loaded = adapters.load_adapter(tiny(), out)
    assert torch.equal(loaded(IDS).logits, model(IDS).logits)


# ---------------------------------------------------------------------------------------------------------------
# Strict loading


@pytest.fixture
def saved_teamlora(tmp_path):
    model = adapters.apply_adapter(tiny(), "teamlora-r16", seed=0)
    perturb(model)
    return adapters.save_adapter(model, tmp_path / "ad", base_info=architecture_info(tiny()))


def _edit_weights(folder, edit):
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "adapter_model.safetensors"))


def test_missing_key_is_refused_and_the_base_is_left_clean(saved_teamlora):
    key = "model.layers.1.mlp.down_proj.lora_B.weight"
    _edit_weights(saved_teamlora, lambda t: t.pop(key))
    base = tiny()
    with pytest.raises(CmeError, match=r"missing keys \(1\): model.layers.1.mlp.down_proj.lora_B.weight"):
        adapters.load_adapter(base, saved_teamlora)
    assert not adapters.adapter_layers(base) and base._cme_adapter is None
    assert torch.equal(base(IDS).logits, tiny()(IDS).logits)


def test_unexpected_key_is_refused(saved_teamlora):
    _edit_weights(saved_teamlora, lambda t: t.update({"model.layers.0.mlp.gate_proj.lora_extra": torch.ones(2)}))
    with pytest.raises(CmeError, match=r"unexpected keys.*lora_extra"):
        adapters.load_adapter(tiny(), saved_teamlora)


def test_wrong_shape_is_refused(saved_teamlora):
    key = "model.layers.0.mlp.up_proj.lora_A.weight"
    _edit_weights(saved_teamlora, lambda t: t.update({key: torch.zeros(8, 64)}))
    with pytest.raises(
        CmeError, match=r"wrong shapes.*up_proj.lora_A.weight: checkpoint \(8, 64\) vs model \(64, 64\)"
    ):
        adapters.load_adapter(tiny(), saved_teamlora)


def test_different_base_architecture_is_refused(saved_teamlora):
    with pytest.raises(CmeError, match="hidden_size: adapter was trained on 64, this model has 32"):
        adapters.load_adapter(tiny(hidden_size=32, intermediate_size=64), saved_teamlora)


def test_peft_adapter_with_wrong_rank_is_refused(tmp_path):
    model = adapters.apply_adapter(tiny(), "lora", seed=0)
    adapters.save_adapter(model, tmp_path / "ad", base_info=architecture_info(tiny()))
    config_path = tmp_path / "ad" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["r"] = 16
    config_path.write_text(json.dumps(config))
    base = tiny()
    with pytest.raises(CmeError, match="wrong shapes"):
        adapters.load_adapter(base, tmp_path / "ad")
    assert not any("lora_" in n for n, _ in base.named_parameters())  # PEFT's layers were removed again


def test_pickled_weights_are_never_loaded(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (tmp_path / "adapter_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(CmeError, match="never unpickles"):
        adapters.load_adapter(tiny(), tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# The TeamLoRA authors' layout


def _authors_checkpoint(folder, k=2, r_a=8, seed=0):
    """A checkpoint as the released code saves it: PEFT-style LoRA config with lora_nums, old-PEFT key names."""
    folder.mkdir()
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r_a, "lora_alpha": 16, "lora_nums": k,
        "lora_dropout": 0.05, "blc_alpha": 0.0, "blc_weight": 0.0, "merge_weights": False, "bias": "none",
        "target_modules": ["gate_proj", "down_proj", "up_proj"], "fan_in_fan_out": False, "inference_mode": True,
    }  # fmt: skip
    (folder / "adapter_config.json").write_text(json.dumps(config))
    g = torch.Generator().manual_seed(seed)
    dims = {"gate_proj": (64, 128), "up_proj": (64, 128), "down_proj": (128, 64)}
    tensors = {}
    for layer in range(2):
        for proj, (d_in, d_out) in dims.items():
            prefix = f"base_model.model.model.layers.{layer}.mlp.{proj}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(r_a, d_in, generator=g) * 0.1
            for i in range(k):
                tensors[f"{prefix}.lora_B{i}.weight"] = torch.randn(d_out, r_a // k, generator=g) * 0.1
            tensors[f"{prefix}.lora_route.fc.weight"] = torch.randn(k, d_in, generator=g) * 0.1
            tensors[f"{prefix}.lora_interaction_matrix.weight"] = torch.randn(k, k, generator=g) * 0.05
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return tensors


def _released_forward(x, w0, t, prefix, k, r_a, alpha):
    """The released ``Linear.forward`` (eval mode), written out from lora.py@8d8c102."""
    r_b = r_a // k
    result = x @ w0.T
    phi = torch.softmax(x @ t[f"{prefix}.lora_route.fc.weight"].T, dim=-1)
    adjusted = phi + torch.einsum("bse,ef->bsf", phi, t[f"{prefix}.lora_interaction_matrix.weight"])
    w = adjusted / adjusted.sum(dim=-1, keepdim=True) * k
    z = (x @ t[f"{prefix}.lora_A.weight"].T) * (alpha / r_b)
    for i, z_i in enumerate(torch.split(z, r_b, -1)):
        result = result + w[:, :, i : i + 1] * (z_i @ t[f"{prefix}.lora_B{i}.weight"].T)
    return result


def test_authors_layout_is_detected_and_matches_the_released_forward(tmp_path):
    tensors = _authors_checkpoint(tmp_path / "authors")
    base = tiny()
    w0 = base.model.layers[1].mlp.up_proj.weight.detach().clone()
    model = adapters.load_adapter(base, tmp_path / "authors")
    info = adapters.adapter_info(model)
    assert info["method"] == "teamlora" and info["params"]["num_experts"] == 2 and info["params"]["r_a"] == 8
    assert type(model).__name__ == "LlamaForCausalLM"  # not wrapped as a plain PEFT LoRA
    layer = model.model.layers[1].mlp.up_proj
    x = torch.randn(2, 3, 64)
    expected = _released_forward(x, w0, tensors, "base_model.model.model.layers.1.mlp.up_proj", 2, 8, 16)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_authors_layout_with_leftover_keys_is_refused(tmp_path):
    _authors_checkpoint(tmp_path / "authors")
    _edit_weights(tmp_path / "authors", lambda t: t.update({"base_model.model.lm_head.weight": torch.ones(1)}))
    with pytest.raises(CmeError, match=r"unexpected keys in the TeamLoRA authors' checkpoint.*lm_head"):
        adapters.load_adapter(tiny(), tmp_path / "authors")


def test_authors_layout_with_missing_expert_is_refused(tmp_path):
    _authors_checkpoint(tmp_path / "authors")
    _edit_weights(
        tmp_path / "authors", lambda t: t.pop("base_model.model.model.layers.0.mlp.gate_proj.lora_B1.weight")
    )
    with pytest.raises(CmeError, match=r"expected lora_B0\.\.lora_B1"):
        adapters.load_adapter(tiny(), tmp_path / "authors")


# ---------------------------------------------------------------------------------------------------------------
# Targets on several architectures


def _tiny_arch(cls_config, cls_model):
    config = cls_config(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,
    )  # fmt: skip
    torch.manual_seed(0)
    return cls_model(config).eval()


@pytest.mark.parametrize(
    ("cls_config", "cls_model"),
    [(LlamaConfig, LlamaForCausalLM), (Qwen2Config, Qwen2ForCausalLM), (MistralConfig, MistralForCausalLM)],
)
@pytest.mark.parametrize("name", ["teamlora-r16", "lora", "mixlora"])
def test_default_ffn_targets_on_llama_qwen2_mistral(cls_config, cls_model, name):
    model = _tiny_arch(cls_config, cls_model)
    before = model(IDS).logits
    model = adapters.apply_adapter(model, name, seed=0)
    info = model._cme_adapter
    expected = 2 if name == "mixlora" else 6
    assert len(info["targets"]) == expected
    assert all(t.split(".")[-1] in ("gate_proj", "up_proj", "down_proj", "mlp") for t in info["targets"])
    torch.testing.assert_close(model(IDS).logits, before, rtol=0, atol=1e-5)


def test_regex_and_name_targets():
    preset = adapters.preset_from_dict(
        {
            "method": "teamlora",
            "params": {"r_a": 4, "num_experts": 2, "target_modules": [r"re:.*\.1\.self_attn\.(q|v)_proj", "o_proj"]},
        },
        name="x",
    )
    model = adapters.apply_adapter(tiny(), preset, seed=0)
    assert sorted(model._cme_adapter["targets"]) == [
        "model.layers.0.self_attn.o_proj",
        "model.layers.1.self_attn.o_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.v_proj",
    ]
    peft_preset = adapters.preset_from_dict(
        {"method": "lora", "params": {"r": 2, "target_modules": [r"re:.*\.1\.self_attn\.(q|v)_proj", "o_proj"]}},
        name="y",
    )
    peft_model = adapters.apply_adapter(tiny(), peft_preset)
    lora_modules = sorted(
        n.replace("base_model.model.", "") for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and m.lora_A
    )
    assert lora_modules == sorted(model._cme_adapter["targets"])


def test_unknown_target_names_linear_layers():
    preset = adapters.preset_from_dict({"method": "moelora", "params": {"target_modules": ["c_fc"]}}, name="x")
    with pytest.raises(CmeError, match=r"\['c_fc'\] match no Linear.*gate_proj"):
        adapters.apply_adapter(tiny(), preset)


def test_routed_model_generates_and_is_hf_compatible():
    model = adapters.apply_adapter(tiny(), "teamlora", seed=0)
    perturb(model)
    out = model.generate(input_ids=IDS[:1], max_length=10, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 10)
    assert model.device.type == "cpu" and model.config.model_type == "llama"
    model.tie_weights()


# ---------------------------------------------------------------------------------------------------------------
# Parameter shares on the paper's base shape (meta device) and the CLI


def test_paper_parameter_shares():
    rows = {r["preset"]: r for r in adapters.compare_paper()}
    assert rows["lora"]["base"] == 6_929_256_448
    assert rows["lora"]["trainable"] == 46_399_488
    assert rows["lora-r128"]["trainable"] == 185_597_952
    assert rows["moelora"]["trainable"] == 188_055_552
    assert rows["teamlora"]["trainable"] == 188_057_088  # router and interaction matrices included
    for preset, percent in [("lora", 0.67), ("lora-r128", 2.68), ("moelora", 2.71), ("teamlora", 2.71)]:
        assert round(100 * rows[preset]["share"], 2) == percent
    assert rows["hydralora"]["trainable"] == 129_073_152
    assert (round(100 * rows["hydralora"]["share_without_router"], 2), round(100 * rows["hydralora"]["share"], 2)) == (
        1.83,
        1.86,
    )
    assert rows["teamlora-r16"]["trainable"] == 95_258_112
    team16 = rows["teamlora-r16"]
    assert (round(100 * team16["share_without_router"], 2), round(100 * team16["share"], 2)) == (1.34, 1.37)
    assert [r["paper_percent"] for r in rows.values()] == [0.67, 2.68, 2.71, 1.84, 2.71, 1.35]


def test_cli_count_from_a_config_only_folder(tmp_path, capsys):
    adapters.paper_base_config().save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    assert cli_main(["adapters", "count", "--model", str(tmp_path), "--adapter", "teamlora"]) == 0
    out = capsys.readouterr().out
    assert "188,057,088" in out and "2.714%" in out and "6,929,256,448" in out


def test_cli_compare_paper_list_and_show(capsys):
    assert cli_main(["adapters", "count", "--compare-paper"]) == 0
    out = capsys.readouterr().out
    assert "HydraLoRA" in out and "1.863" in out and "1.827" in out and "1.84" in out and "1.339" in out
    assert cli_main(["adapters", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PRESETS)
    assert cli_main(["adapters", "show", "teamlora"]) == 0
    assert "r_a: 128" in capsys.readouterr().out
    assert cli_main(["adapters", "show", "teamlroa"]) == 2
    assert "Did you mean 'teamlora'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["teamlora-r16", "moelora", "mixlora", "smora"])
def test_bf16_base_keeps_fp32_adapters_and_bf16_outputs(name):
    base = tiny().to(torch.bfloat16)
    reference = base(IDS).logits
    model = adapters.apply_adapter(base, name, seed=0)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    out = model(input_ids=IDS, labels=IDS)
    assert out.logits.dtype == torch.bfloat16
    torch.testing.assert_close(out.logits, reference, rtol=0, atol=2e-2)
    out.loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n)


def test_cli_merge_writes_a_plain_model_and_refuses_routed(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    base = tiny()
    model = adapters.apply_adapter(base, "moslora", seed=0)
    perturb(model)
    expected = model(IDS).logits
    adapters.save_adapter(model, tmp_path / "ad", base_info=architecture_info(tiny()))
    argv = ["adapters", "merge", str(tmp_path / "ad"), "--model", "tiny-llama", "--out", str(tmp_path / "merged")]
    assert cli_main(argv) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(merged(IDS).logits, expected, rtol=1e-4, atol=1e-4)
    routed = adapters.apply_adapter(tiny(), "teamlora-r16", seed=0)
    adapters.save_adapter(routed, tmp_path / "team", base_info=architecture_info(tiny()))
    argv = ["adapters", "merge", str(tmp_path / "team"), "--model", "tiny-llama", "--out", str(tmp_path / "m2")]
    assert cli_main(argv) == 2
    assert "teamlora cannot be merged" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(adapters.TUNERS.names()))  # one preset per method: its namesake
def test_a_few_training_steps_reduce_the_loss(name):
    """The training-loop contract: LM loss + aux_loss, backward, step, step_hook, zero_grad."""
    model = adapters.apply_adapter(tiny(), name, total_steps=8, seed=0)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for step in range(8):
        out = model(input_ids=IDS, labels=IDS)
        aux = adapters.aux_loss(model)
        loss = out.loss if aux is None else out.loss + aux
        loss.backward()
        opt.step()
        adapters.step_hook(model, step)
        opt.zero_grad()
        losses.append(float(out.loss.detach()))
    assert losses[-1] < losses[0] - 0.05, losses
