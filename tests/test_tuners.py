"""Every non-TeamLoRA method against its closed-form formula on small hand-checked tensors, reference == fused for the
routed ones, merges for the mergeable ones, and the PEFT-backed trio's specifics (DoRA, AdaLoRA schedule)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from _helpers import assert_forward_paths_agree, randomise
from torch import nn

from cme_bench import adapters
from cme_bench.errors import CmeError
from cme_bench.models import architecture_info, build_tiny_llama
from cme_bench.tuners import TUNERS, get_method
from cme_bench.tuners.base import Site
from cme_bench.tuners.comol import CoMoLLayer, core_orthogonality
from cme_bench.tuners.hydralora import HydraLoraLayer
from cme_bench.tuners.mixlora import MixLoraBlock, switch_balance_loss
from cme_bench.tuners.moelora import MoeLoraLayer, cv_squared, localized_balance_loss
from cme_bench.tuners.mola import layer_experts
from cme_bench.tuners.moslora import MosLoraLayer
from cme_bench.tuners.multilora import MultiLoraLayer
from cme_bench.tuners.smora import SmoraLayer

EXPECTED_METHODS = {"lora", "dora", "adalora", "moslora", "multilora", "moelora", "hydralora", "loramoe", "mixlora"}
EXPECTED_METHODS |= {"smora", "teamlora", "comol", "mola"}


pytestmark = pytest.mark.usefixtures("one_thread")


def build(cls, method: str, base: nn.Module, site: Site | None = None, **params):
    return cls(base, get_method(method).validate({"dropout": 0.0, **params}), site)


def zero_base(d_in: int, d_out: int) -> nn.Linear:
    base = nn.Linear(d_in, d_out, bias=False)
    with torch.no_grad():
        base.weight.zero_()
    return base


def test_registry_holds_exactly_the_issue_methods():
    assert set(TUNERS.names()) == EXPECTED_METHODS
    for name in EXPECTED_METHODS:
        assert get_method(name).name == name
    with pytest.raises(CmeError, match="Did you mean 'teamlora'"):
        get_method("teamlor")


# ---------------------------------------------------------------------------------------------------------------
# MoELoRA / LoRAMoE


def test_moelora_closed_form():
    """2 experts of rank 1 on a 2 -> 2 zero base, zero router (w = [1/2, 1/2]), alpha = 2 (s = 2)."""
    layer = build(MoeLoraLayer, "moelora", zero_base(2, 2), r=1, num_experts=2, alpha=2.0)
    with torch.no_grad():
        layer.lora_route.weight.zero_()
        layer.lora_A[0].weight.copy_(torch.tensor([[1.0, 0.0]]))
        layer.lora_A[1].weight.copy_(torch.tensor([[0.0, 1.0]]))
        layer.lora_B[0].weight.copy_(torch.tensor([[1.0], [0.0]]))
        layer.lora_B[1].weight.copy_(torch.tensor([[0.0], [3.0]]))
    # delta = 0.5 * 2 * [x0, 0] + 0.5 * 2 * [0, 3 x1]
    out = layer(torch.tensor([[2.0, 5.0]]))
    torch.testing.assert_close(out, torch.tensor([[2.0, 15.0]]))
    assert layer.last_load.tolist() == [0.5, 0.5]


@pytest.mark.parametrize("method", ["moelora", "loramoe"])
def test_moelora_fused_equals_reference(method):
    ref = build(MoeLoraLayer, method, nn.Linear(12, 20), r=4, num_experts=4, forward="reference")
    assert_forward_paths_agree(ref, (3, 5, 12), seed=1)


def test_localized_balance_loss_closed_form():
    """Q = per-sample sums of w; I = 1 +/- delta by expert group; L = var(Q*I) / mean(Q*I)^2 (unbiased var)."""
    w = torch.tensor([[[0.75, 0.25], [0.25, 0.75]], [[1.0, 0.0], [1.0, 0.0]]])  # [batch 2, seq 2, E 2]
    # Q = [[1, 1], [2, 0]]; sample 0 is task 1 (expert 0 in group), sample 1 is task 0 (expert 1 in group)
    q_i = torch.tensor([[1.0 * 1.5, 1.0 * 0.5], [2.0 * 0.5, 0.0 * 1.5]])
    expected = q_i.var() / q_i.mean() ** 2
    got = localized_balance_loss(w, torch.tensor([1, 0]), 0.5)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)
    assert float(localized_balance_loss(w, None, 0.0)) == pytest.approx(float(cv_squared(w.sum(1))), rel=1e-6)


def test_loramoe_aux_is_weighted_and_off_by_default():
    model, _ = build_tiny_llama(seed=0)
    model = adapters.apply_adapter(model, "loramoe", seed=0)
    model(torch.randint(0, 100, (2, 6)))
    assert adapters.aux_loss(model) is None  # released script: blc_weight = 0
    model2, _ = build_tiny_llama(seed=0)
    preset = adapters.preset_from_dict(
        {"method": "loramoe", "params": {"blc_weight": 0.1, "blc_alpha": 0.2, "num_experts": 4, "r": 2}}, name="x"
    )
    model2 = adapters.apply_adapter(model2, preset, seed=0)
    adapters.set_task_types(model2, torch.tensor([1, 0]))
    model2(torch.randint(0, 100, (2, 6)))
    layers = adapters.adapter_layers(model2)
    expected = 0.1 * sum(float(layer.last_aux.detach()) for _, layer in layers)
    assert float(adapters.aux_loss(model2).detach()) == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# HydraLoRA


def test_hydralora_closed_form():
    """Shared A (rank 1) read whole by 2 heads; zero router; s = alpha / r = 1."""
    layer = build(HydraLoraLayer, "hydralora", zero_base(2, 2), r=1, num_experts=2, alpha=1.0)
    with torch.no_grad():
        layer.lora_route.weight.zero_()
        layer.lora_A.weight.copy_(torch.tensor([[1.0, 1.0]]))  # A x = x0 + x1
        layer.lora_B[0].weight.copy_(torch.tensor([[2.0], [0.0]]))
        layer.lora_B[1].weight.copy_(torch.tensor([[0.0], [4.0]]))
    out = layer(torch.tensor([[1.0, 2.0]]))  # 0.5 * [2*3, 0] + 0.5 * [0, 4*3]
    torch.testing.assert_close(out, torch.tensor([[3.0, 6.0]]))


def test_hydralora_fused_equals_reference():
    ref = build(HydraLoraLayer, "hydralora", nn.Linear(12, 20), r=4, num_experts=3)
    assert_forward_paths_agree(ref, (2, 7, 12), seed=2)


# ---------------------------------------------------------------------------------------------------------------
# MoSLoRA / MultiLoRA (mergeable)


def test_moslora_closed_form_and_merge():
    layer = build(MosLoraLayer, "moslora", zero_base(2, 2), r=2, alpha=4.0)  # s = 2
    with torch.no_grad():
        layer.lora_A.weight.copy_(torch.eye(2))
        layer.lora_M.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # swaps the two ranks
        layer.lora_B.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 10.0]]))
    x = torch.tensor([[1.0, 2.0]])
    torch.testing.assert_close(layer(x), torch.tensor([[4.0, 20.0]]))  # 2 * B [2, 1]
    torch.testing.assert_close(layer.delta_weight(), torch.tensor([[0.0, 2.0], [20.0, 0.0]]))


def test_multilora_closed_form_and_zero_start():
    layer = build(MultiLoraLayer, "multilora", zero_base(2, 2), r=1, num_adapters=2, alpha=1.0)
    x = torch.tensor([[1.0, 2.0]], requires_grad=True)
    out = layer(x)
    assert torch.equal(out, torch.zeros(1, 2))  # s_i = 0 at init
    out.sum().backward()
    assert layer.lora_A[0].weight.grad.abs().sum() == 0 and layer.lora_scale.grad.abs().sum() > 0
    with torch.no_grad():
        layer.lora_A[0].weight.copy_(torch.tensor([[1.0, 0.0]]))
        layer.lora_A[1].weight.copy_(torch.tensor([[0.0, 1.0]]))
        layer.lora_B[0].weight.copy_(torch.tensor([[1.0], [1.0]]))
        layer.lora_B[1].weight.copy_(torch.tensor([[1.0], [1.0]]))
        layer.lora_scale.copy_(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
    # s_0 * B_0 A_0 x = [1, 0] * [1, 1]; s_1 * B_1 A_1 x = [0, 3] * [2, 2]
    torch.testing.assert_close(layer(x.detach()), torch.tensor([[1.0, 6.0]]))
    torch.testing.assert_close(layer.delta_weight() @ x.detach().T, torch.tensor([[1.0], [6.0]]))


@pytest.mark.parametrize("preset", ["moslora", "multilora", "lora", "dora", "adalora"])
def test_merge_reproduces_the_adapted_logits(preset):
    model, _ = build_tiny_llama(seed=0)
    model = adapters.apply_adapter(model, preset, seed=0, total_steps=10)
    randomise(model, seed=4, scale=0.05)
    model.eval()
    ids = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    before = model(ids).logits
    merged = adapters.merge_adapter(model)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(merged(ids).logits, before, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("preset", ["teamlora", "moelora", "hydralora", "loramoe", "mixlora", "smora"])
def test_routed_methods_refuse_to_merge(preset):
    model, _ = build_tiny_llama(seed=0)
    model = adapters.apply_adapter(model, preset, seed=0)
    with pytest.raises(CmeError, match="cannot be merged: its expert weights are computed per token"):
        adapters.merge_adapter(model)


# ---------------------------------------------------------------------------------------------------------------
# MixLoRA


def test_mixlora_matches_per_token_top_k_formula():
    model, _ = build_tiny_llama(seed=0)
    mlp = model.model.layers[0].mlp
    block = MixLoraBlock(
        mlp, get_method("mixlora").validate({"r": 2, "num_experts": 4, "top_k": 2, "alpha": 4.0, "dropout": 0.0})
    )
    randomise(block, seed=6)
    x = torch.randn(1, 5, 64)
    out = block(x)
    s = 2.0
    probs = torch.softmax(block.lora_route(x[0]), dim=-1)
    for t in range(5):
        xt = x[0, t]
        top_w, top_i = probs[t].topk(2)
        top_w = top_w / top_w.sum()
        expected = torch.zeros(64)
        for g, e in zip(top_w, top_i.tolist()):
            gate_w = mlp.gate_proj.weight + s * block.lora_gate_B[e].weight @ block.lora_gate_A[e].weight
            up_w = mlp.up_proj.weight + s * block.lora_up_B[e].weight @ block.lora_up_A[e].weight
            down_w = mlp.down_proj.weight + s * block.lora_down_B[e].weight @ block.lora_down_A[e].weight
            expected += g * (down_w @ (torch.nn.functional.silu(gate_w @ xt) * (up_w @ xt)))
        torch.testing.assert_close(out[0, t], expected, rtol=1e-4, atol=1e-5)


def test_switch_balance_loss_closed_form():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    top_i = torch.tensor([[0, 1], [1, 2]])
    # f = [1, 2, 1] / 2 tokens; P = [0.4, 0.4, 0.2]; loss = 3 * (0.5*0.4 + 1.0*0.4 + 0.5*0.2)
    assert float(switch_balance_loss(probs, top_i, 3)) == pytest.approx(3 * 0.7)


# ---------------------------------------------------------------------------------------------------------------
# SMoRA


def test_smora_gates_and_closed_form():
    layer = build(SmoraLayer, "smora", zero_base(2, 2), r=4, activate_r=2, alpha=2.0)  # s = 1
    with torch.no_grad():
        layer.lora_router.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0], [2.0, 0.0]]))
        layer.lora_A.weight.copy_(torch.ones(4, 2))
        layer.lora_B.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]))
    layer.eval()
    x = torch.tensor([[1.0, 0.0]])
    sig = [1 / (1 + math.exp(-v)) for v in (1.0, 0.0, -1.0, 2.0)]
    g0, g3 = 2 * sig[0] / (sig[0] + sig[3]), 2 * sig[3] / (sig[0] + sig[3])  # top-2 = ranks 3 and 0
    torch.testing.assert_close(layer(x), torch.tensor([[g0 * 1.0, g3 * 1.0]]))
    # bias update only in training: selected ranks get pushed down, idle ones up
    layer.train()
    layer(x)
    rate = layer.bias_update_rate
    torch.testing.assert_close(layer.lora_biases, torch.tensor([-rate, rate, rate, -rate]))


# ---------------------------------------------------------------------------------------------------------------
# CoMoL


def released_comol(x, a, cores, router, b, scaling, core_routing=True):
    """Our reading of the released layer (``LinearMoCoreLoraLayer.forward``, eval mode), token by token: softmax router
    on A x (or on x), the cores weighted by it and summed, the row vector A x times that r x r matrix, B, scaling."""
    out = []
    for xt in x.reshape(-1, x.shape[-1]):
        z = a @ xt
        g = torch.softmax(router @ (z if core_routing else xt), dim=-1)
        merged = sum(g[e] * cores[e] for e in range(cores.shape[0]))
        out.append((b @ (z.unsqueeze(0) @ merged).squeeze(0)) * scaling)
    return torch.stack(out).reshape(*x.shape[:-1], b.shape[0])


def test_comol_closed_form():
    """r = 1, 2 cores [[2]] and [[4]], zero router (g = [1/2, 1/2]): C = 3, delta = s B (3 A x)."""
    layer = build(CoMoLLayer, "comol", zero_base(2, 2), r=1, num_experts=2, alpha=2.0)  # s = 2
    with torch.no_grad():
        layer.lora_router.weight.zero_()
        layer.lora_A.weight.copy_(torch.tensor([[1.0, 1.0]]))
        layer.lora_cores.copy_(torch.tensor([[[2.0]], [[4.0]]]))
        layer.lora_B.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    out = layer(torch.tensor([[1.0, 2.0]]))  # A x = 3; 3 * C = 9; s B = [2, -2]
    torch.testing.assert_close(out, torch.tensor([[18.0, -18.0]]))
    assert layer.last_load.tolist() == [0.5, 0.5]


@pytest.mark.parametrize("router_input", ["core", "input"])
@pytest.mark.parametrize("forward", ["reference", "fused"])
def test_comol_matches_the_released_layer(router_input, forward):
    layer = build(
        CoMoLLayer, "comol", nn.Linear(12, 20), r=4, num_experts=3, alpha=8.0, router_input=router_input,
        forward=forward,
    )  # fmt: skip
    randomise(layer, seed=4)
    x = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(0))
    want = layer.base_layer(x) + released_comol(
        x, layer.lora_A.weight, layer.lora_cores, layer.lora_router.weight, layer.lora_B.weight, 2.0,
        core_routing=router_input == "core",
    )  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)
    assert tuple(layer.lora_router.weight.shape) == ((3, 4) if router_input == "core" else (3, 12))


def test_comol_fused_equals_reference():
    ref = build(CoMoLLayer, "comol", nn.Linear(12, 20), r=4, num_experts=3, forward="reference")
    assert_forward_paths_agree(ref, (3, 5, 12), seed=1)


def test_comol_init_and_core_loss():
    layer = build(CoMoLLayer, "comol", nn.Linear(16, 8), r=4, num_experts=3)
    assert torch.count_nonzero(layer.lora_B.weight) == 0 and torch.all(layer.lora_cores.abs() <= 0.5)
    # each core drawn on its own (kaiming, a = sqrt 5)
    assert len({float(c.detach().norm()) for c in layer.lora_cores}) == 3
    # orthogonal cores -> 0; two equal cores -> their pair counts 1 (of E (E - 1) = 2 ordered pairs)
    eye = torch.eye(2)
    assert float(core_orthogonality(torch.stack([eye, torch.tensor([[0.0, 1.0], [1.0, 0.0]])]))) == 0.0
    assert float(core_orthogonality(torch.stack([eye, eye]))) == pytest.approx(1.0, abs=1e-6)
    params = {"r": 2, "num_experts": 3, "use_core_loss": True, "core_loss_weight": 0.1}
    model = adapters.apply_adapter(
        build_tiny_llama(seed=0)[0], adapters.preset_from_dict({"method": "comol", "params": params}, name="c")
    )
    model(torch.randint(0, 100, (2, 5)))
    layers = adapters.adapter_layers(model)
    expected = 0.1 * sum(float(core_orthogonality(layer.lora_cores)) for _, layer in layers)
    assert float(adapters.aux_loss(model).detach()) == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# MoLA


def test_mola_layer_wise_expert_counts():
    """The released 2-4-6-8 over 32 layers; four groups over 2 layers take groups 0 and 2; one count is uniform."""
    released = [2, 4, 6, 8]
    counts = [layer_experts(released, Site(f"model.layers.{i}.mlp.up_proj", i, 32)) for i in range(32)]
    assert counts == [2] * 8 + [4] * 8 + [6] * 8 + [8] * 8
    assert [layer_experts(released, Site("", i, 2)) for i in range(2)] == [2, 6]
    assert layer_experts([5], Site()) == 5
    with pytest.raises(CmeError, match="numbered decoder layer"):
        layer_experts(released, Site("lm_head"))
    model = adapters.apply_adapter(build_tiny_llama(seed=0)[0], "mola", seed=0)
    experts = {path: layer.num_experts for path, layer in adapters.adapter_layers(model)}
    assert experts == {f"model.layers.{i}.mlp.{p}": (2, 6)[i] for i in range(2) for p in ("gate_proj", "up_proj",
                       "down_proj")}  # fmt: skip


def test_mola_strict_load_checks_each_layers_expert_count(tmp_path):
    """A saved MoLA adapter reloads bit for bit; claiming another allocation is refused by shape, layer by layer."""
    import json

    preset = adapters.preset_from_dict({"method": "mola", "params": {"r": 2, "expert_allocation": [2, 3]}}, name="m")
    base = build_tiny_llama(seed=0)[0]
    info = architecture_info(base)
    model = adapters.apply_adapter(base, preset, seed=0)
    randomise(model, seed=1)
    ids = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    folder = adapters.save_adapter(model, tmp_path / "mola", base_info=info)
    loaded = adapters.load_adapter(build_tiny_llama(seed=0)[0], folder)
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["params"]["expert_allocation"] = [2, 4]
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(CmeError, match=r"wrong shapes.*layers\.1"):
        adapters.load_adapter(build_tiny_llama(seed=0)[0], folder)


def test_new_methods_label_their_fused_deviations():
    for method in ("comol", "mola"):
        spec = get_method(method)
        assert spec.deviations_for(spec.validate({"forward": "fused", "dropout": 0.1}))
        assert not spec.deviations_for(spec.validate({"forward": "fused", "dropout": 0.0}))
        assert not spec.deviations_for(spec.validate({"forward": "reference", "dropout": 0.1}))


def test_mola_closed_form_top_2_of_3():
    """3 experts of rank 1 on a zero base; router logits [ln 3, ln 1, -inf-ish]: the top 2 are experts 0 and 1 with
    weights 3/4 and 1/4 (renormalised), expert 2 contributes nothing."""
    site = Site("model.layers.0.mlp.up_proj", 0, 1)
    layer = build(get_method("mola").build_layer, "mola", zero_base(1, 1), site, r=1, expert_allocation=[3], alpha=1.0)
    with torch.no_grad():
        layer.lora_route.weight.copy_(torch.tensor([[math.log(3.0)], [0.0], [-20.0]]))
        for e, (a, b) in enumerate([(1.0, 2.0), (1.0, 4.0), (1.0, 100.0)]):
            layer.lora_A[e].weight.fill_(a)
            layer.lora_B[e].weight.fill_(b)
    out = layer(torch.tensor([[1.0]]))  # x = 1: logits [ln 3, 0, -20]
    torch.testing.assert_close(out, torch.tensor([[0.75 * 2.0 + 0.25 * 4.0]]))
    assert layer.last_load.tolist() == pytest.approx([0.75, 0.25, 0.0])


def test_mola_fused_equals_reference():
    site = Site("model.layers.3.mlp.up_proj", 3, 4)
    ref = build(get_method("mola").build_layer, "mola", nn.Linear(12, 20), site, r=4, forward="reference")
    assert ref.num_experts == 8
    assert_forward_paths_agree(ref, (3, 5, 12), seed=1)


# ---------------------------------------------------------------------------------------------------------------
# PEFT-backed


def test_adalora_needs_total_steps_and_step_hook_allocates():
    model, _ = build_tiny_llama(seed=0)
    preset = adapters.preset_from_dict(
        {"method": "adalora", "params": {"init_r": 4, "target_r": 2, "tinit": 1, "tfinal": 1}}, name="a"
    )
    with pytest.raises(CmeError, match="total_steps"):
        adapters.apply_adapter(copy.deepcopy(model), preset)
    model = adapters.apply_adapter(model, preset, total_steps=6, seed=0)
    assert adapters.aux_loss(model) is None  # PEFT adds the orthogonality penalty itself
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ids = torch.randint(0, 100, (2, 6))
    for step in range(6):
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        adapters.step_hook(model, step)
        opt.zero_grad()
    allocator = model.base_model.rankallocator
    masked = sum(int((layer.lora_E["default"] == 0).sum()) for layer in model.modules() if hasattr(layer, "lora_E"))
    assert allocator.peft_config.total_step == 6 and masked > 0  # budget shrank from init_r towards target_r


def test_adalora_round_trip_after_final_allocation(tmp_path):
    """Once the final budget is fixed PEFT saves resized tensors (rank_pattern); the strict loader must accept them."""
    preset = adapters.preset_from_dict(
        {"method": "adalora", "params": {"init_r": 4, "target_r": 2, "tinit": 1, "tfinal": 1}}, name="a"
    )
    model = adapters.apply_adapter(build_tiny_llama(seed=0)[0], preset, total_steps=4, seed=0)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ids = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    for step in range(5):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        adapters.step_hook(model, step)
        opt.zero_grad()
    assert model.peft_config["default"].rank_pattern
    model.eval()
    adapters.save_adapter(model, tmp_path / "ad", base_info=architecture_info(build_tiny_llama(seed=0)[0]))
    loaded = adapters.load_adapter(build_tiny_llama(seed=0)[0], tmp_path / "ad")
    # Pruned ranks are dropped from the saved tensors, so the matmuls have a smaller inner size: equal up to rounding.
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-5)


def test_dora_is_peft_dora():
    from peft import PeftModel

    model, _ = build_tiny_llama(seed=0)
    model = adapters.apply_adapter(model, "dora", seed=0)
    assert isinstance(model, PeftModel) and model.peft_config["default"].use_dora
    assert any("lora_magnitude_vector" in n for n, p in model.named_parameters() if p.requires_grad)


def _peft_layer(model, path="model.layers.0.mlp.up_proj"):
    return model.base_model.model.get_submodule(path)


def test_dora_closed_form():
    """W' = m * (W0 + s B A) / ||W0 + s B A||_row, with m learnable (here perturbed away from its init)."""
    model = adapters.apply_adapter(build_tiny_llama(seed=0)[0], "dora", seed=0)
    randomise(model, seed=7, scale=0.1)
    layer = _peft_layer(model)
    w0 = layer.base_layer.weight
    delta = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    m = layer.lora_magnitude_vector["default"].weight
    w_new = (m / (w0 + delta).norm(dim=1)).unsqueeze(1) * (w0 + delta)
    x = torch.randn(3, 64)
    torch.testing.assert_close(layer(x), x @ w_new.T, rtol=1e-4, atol=1e-5)


def test_adalora_closed_form():
    """h = W0 x + B (A * E) x * alpha / (r + 1e-5), with r the stored rank (PEFT's ranknum)."""
    preset = adapters.preset_from_dict({"method": "adalora", "params": {"init_r": 4, "target_r": 2}}, name="a")
    model = adapters.apply_adapter(build_tiny_llama(seed=0)[0], preset, total_steps=10, seed=0)
    randomise(model, seed=8, scale=0.1)
    layer = _peft_layer(model)
    a, b, e = (layer.lora_A["default"], layer.lora_B["default"], layer.lora_E["default"])
    assert a.shape == (4, 64) and e.shape == (4, 1) and b.shape == (128, 4)
    x = torch.randn(3, 64)
    expected = layer.base_layer(x) + (x @ (a * e).T @ b.T) * 32 / (4 + 1e-5)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Bookkeeping: recorded only while autograd records the forward, the same rule for every routed method

ROUTED_CASES = [
    ("teamlora", {"r_a": 8, "num_experts": 4, "balance_loss_weight": 0.1, "forward": "fused"}),
    ("teamlora", {"r_a": 8, "num_experts": 4, "balance_loss_weight": 0.1, "forward": "reference"}),
    ("moelora", {"r": 2, "num_experts": 3, "forward": "reference"}),
    ("moelora", {"r": 2, "num_experts": 3, "forward": "fused"}),
    ("loramoe", {"r": 2, "num_experts": 4, "blc_weight": 0.1, "blc_alpha": 0.2}),
    ("hydralora", {"r": 4, "num_experts": 3, "forward": "reference"}),
    ("hydralora", {"r": 4, "num_experts": 3, "forward": "fused"}),
    ("smora", {"r": 8, "activate_r": 3}),
    ("mixlora", {"r": 2, "num_experts": 4, "top_k": 2}),
    ("comol", {"r": 4, "num_experts": 3, "forward": "reference", "use_core_loss": True, "core_loss_weight": 0.1}),
    ("comol", {"r": 4, "num_experts": 3, "forward": "fused", "use_core_loss": True, "core_loss_weight": 0.1}),
    ("mola", {"r": 2, "expert_allocation": [2, 4], "forward": "reference"}),
    ("mola", {"r": 2, "expert_allocation": [2, 4], "forward": "fused"}),
]
WITH_AUX = {"teamlora", "loramoe", "mixlora", "comol"}


def test_every_routed_method_has_a_bookkeeping_case():
    assert {m for m, _ in ROUTED_CASES} == {n for n in TUNERS.names() if get_method(n).routed}


def routed_layer(method: str, params: dict, dropout: float) -> nn.Module:
    spec = get_method(method)
    base = build_tiny_llama(seed=0)[0].model.layers[0].mlp if spec.scope == "mlp" else nn.Linear(64, 20)
    site = Site("model.layers.1.mlp.up_proj", 1, 2)  # MoLA: the second half of the layers (4 experts here)
    layer = spec.build_layer(base, spec.validate({**params, "dropout": dropout}), site)
    randomise(layer, seed=3)
    return layer


@pytest.mark.parametrize(
    ("method", "params"), ROUTED_CASES, ids=[f"{m}-{p.get('forward', '')}" for m, p in ROUTED_CASES]
)
def test_inference_forward_equals_training_forward_and_records_nothing(method, params):
    """Eval mode under inference_mode (dropout > 0 switched off) gives bit for bit the output of a training-mode
    forward with dropout 0, and leaves the bookkeeping alone; the training forward records aux loss, load and stats."""
    trained = routed_layer(method, params, dropout=0.0)
    served = routed_layer(method, params, dropout=0.1)
    served.load_state_dict(trained.state_dict())
    served.eval()
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out_served = served(x)
    assert served.last_aux is None and served.last_load is None and served.load_sum is None
    assert served.load_count == 0 and served.stats == {}

    trained.train()
    out_trained = trained(x)
    assert torch.equal(out_served, out_trained)
    assert trained.load_count == 1 and trained.last_load is not None
    assert sum(trained.last_load.tolist()) == pytest.approx(1.0, abs=1e-5)
    if method in WITH_AUX:
        assert trained.last_aux is not None and trained.last_aux.requires_grad
        (out_trained.sum() + trained.last_aux).backward()  # the aux loss is in the graph of the training forward
    else:
        assert trained.last_aux is None
    if method == "teamlora":
        assert set(trained.stats) == {"normalizer_min", "balance_excess"}

    # A later inference forward (eval + no_grad) keeps the last training forward's bookkeeping as it was.
    kept = (trained.last_aux, trained.last_load, trained.load_sum, dict(trained.stats))
    trained.eval()
    with torch.no_grad():
        again = trained(x)
    if method != "smora":  # SMoRA's training forward moved its balancing biases
        assert torch.equal(again, out_trained.detach())
    assert trained.load_count == 1
    assert trained.last_load is kept[1] and trained.load_sum is kept[2] and trained.last_aux is kept[0]
    assert trained.stats == kept[3]


def test_model_level_diagnostics_come_from_training_forwards_only():
    """``expert_load`` / ``adapter_stats`` / ``aux_loss`` see training forwards, not generation or evaluation."""
    model, _ = build_tiny_llama(seed=0)
    preset = adapters.preset_from_dict(
        {"method": "teamlora", "params": {"r_a": 8, "num_experts": 4, "balance_loss_weight": 0.5}}, name="t"
    )
    model = adapters.apply_adapter(model, preset, seed=0)
    ids = torch.randint(0, 100, (2, 5), generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.inference_mode():
        model(ids)
    assert adapters.expert_load(model) == {} and adapters.adapter_stats(model) == {}
    assert adapters.aux_loss(model) is None
    model.train()
    model(ids)
    load = adapters.expert_load(model, cumulative=True)
    assert load and adapters.aux_loss(model) is not None and "teamlora/normalizer_min" in adapters.adapter_stats(model)
    model.eval()
    with torch.no_grad():
        model(ids)
    assert adapters.expert_load(model, cumulative=True) == load
