"""TeamLoRA numerics: closed form, fused == loop (values and gradients), PEFT LoRA parity at k=1, the k x MoELoRA
relation at M' = 0, the balance loss, and the unguarded normaliser."""

from __future__ import annotations

import copy

import pytest
import torch
from _helpers import assert_forward_paths_agree, randomise
from torch import nn

from cme_bench import adapters
from cme_bench.models import build_tiny_llama
from cme_bench.tuners.moelora import METHOD as MOELORA
from cme_bench.tuners.moelora import MoeLoraLayer
from cme_bench.tuners.teamlora import METHOD, TeamLoraLayer

pytestmark = pytest.mark.usefixtures("one_thread")


def team_layer(d_in=16, d_out=24, k=4, r_b=8, alpha=16.0, dropout=0.0, forward="fused", **extra) -> TeamLoraLayer:
    params = METHOD.validate(
        {"r_a": k * r_b, "num_experts": k, "alpha": alpha, "dropout": dropout, "forward": forward, **extra}
    )
    return TeamLoraLayer(nn.Linear(d_in, d_out), params)


def test_closed_form_on_hand_checked_tensors():
    """A 3 -> 2 layer with k = 2, r_B = 1, zero router and a hand-set M' gives the hand-computed output."""
    layer = team_layer(d_in=3, d_out=2, k=2, r_b=1, alpha=1.0)
    with torch.no_grad():
        layer.base_layer.weight.zero_()
        layer.base_layer.bias.copy_(torch.tensor([10.0, 20.0]))
        layer.lora_route.weight.zero_()  # phi = [0.5, 0.5]
        layer.lora_interaction_matrix.copy_(torch.tensor([[0.0, 0.2], [-0.1, 0.0]]))
        layer.lora_A.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        layer.lora_B.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # B_0 = e_0, B_1 = e_1
    # phi(I + M') = [0.5 - 0.05, 0.5 + 0.1] = [0.45, 0.6]; w = 2 * [0.45, 0.6] / 1.05; z = s A x = [1, 2] (s = 1)
    out = layer(torch.tensor([[[1.0, 2.0, 3.0]]]))
    expected = torch.tensor([10.0 + 0.9 / 1.05, 20.0 + 2 * 1.2 / 1.05])
    torch.testing.assert_close(out.reshape(-1), expected, rtol=0, atol=1e-6)
    assert float(layer.stats["normalizer_min"]) == pytest.approx(1.05)
    # L_bal = mean_i (m_i - 1/k)^2 with m = w
    w = torch.tensor([0.9, 1.2]) / 1.05
    assert float(layer.last_aux.detach()) == pytest.approx(float(((w - 0.5) ** 2).mean()), abs=1e-7)


@pytest.mark.parametrize(("k", "r_b"), [(2, 4), (4, 8), (4, 32), (8, 16), (1, 8)])
def test_fused_equals_loop_values_and_gradients(k, r_b):
    fused = team_layer(k=k, r_b=r_b, dropout=0.05, forward="fused")
    randomise(fused, seed=k * 100 + r_b)
    loop = copy.deepcopy(fused)
    loop.fused = False
    fused.eval(), loop.eval()  # dropout off: both forms must then agree to float tolerance
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(1))
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = fused(x1), loop(x2)
    torch.testing.assert_close(y1, y2, rtol=0, atol=1e-5)
    probe = torch.randn(y1.shape, generator=torch.Generator().manual_seed(2))
    ((y1 * probe).sum() + fused.last_aux).backward()
    ((y2 * probe).sum() + loop.last_aux).backward()
    # Gradients sum many more terms than the forward; fp32 summation order differs between the forms.
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-5)
    for (name, p1), (_, p2) in zip(fused.named_parameters(), loop.named_parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_fused_equals_loop_exactly_in_fp64():
    """In fp64 the two forms agree to 1e-12: the relation is algebraic, not approximate."""
    assert_forward_paths_agree(team_layer(k=4, r_b=8).double(), (2, 3, 16), atol=1e-12, dtype=torch.float64)


def test_fused_dropout_masks_each_slice_like_the_loop():
    """In training, the fused form's one mask over z zeroes whole entries of z, never rescaling B itself."""
    layer = team_layer(k=2, r_b=4, dropout=0.5)
    randomise(layer)
    layer.train()
    x = torch.randn(64, 16)
    torch.manual_seed(0)
    y = layer(x) - layer.base_layer(x)
    # Rebuild the delta from the same mask: the mask is whatever zeroed the scaled A-output entries.
    torch.manual_seed(0)
    z = layer.lora_A(x) * layer.scaling
    mask = layer.lora_dropout(torch.ones_like(z))
    w = layer.expert_weights(x)
    expected = (w.repeat_interleave(4, dim=-1) * z * mask) @ layer.lora_B.weight.T
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_k1_equals_peft_lora_of_rank_r_a():
    """TeamLoRA with k = 1 (phi = 1, M' = [0]) is PEFT's LoRA of rank r_A with scaling alpha / r_A."""
    base, _ = build_tiny_llama(seed=0)
    team = adapters.apply_adapter(
        copy.deepcopy(base),
        adapters.preset_from_dict(
            {"method": "teamlora", "params": {"r_a": 8, "num_experts": 1, "alpha": 16}}, name="t"
        ),
        seed=0,
    )
    peft = adapters.apply_adapter(
        copy.deepcopy(base), adapters.preset_from_dict({"method": "lora", "params": {"r": 8, "alpha": 16}}, name="l")
    )
    peft_layers = {n.replace("base_model.model.", ""): m for n, m in peft.named_modules() if hasattr(m, "lora_A")}
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for path, layer in adapters.adapter_layers(team):
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g))
            target = peft_layers[path]
            target.lora_A["default"].weight.copy_(layer.lora_A.weight)
            target.lora_B["default"].weight.copy_(layer.lora_B.weight)
            assert target.scaling["default"] == layer.scaling == 2.0
    team.eval(), peft.eval()
    ids = torch.randint(0, 100, (2, 7), generator=g)
    torch.testing.assert_close(team(ids).logits, peft(ids).logits, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(team(ids).logits, base(ids).logits, atol=1e-3)  # the adapter does something


@pytest.mark.parametrize("forward", ["reference", "fused"])
def test_zero_interaction_equals_k_times_moelora(forward):
    """With M' = 0, TeamLoRA's delta is k times MoELoRA's (experts of rank r_B, A_i = row blocks of the shared A)."""
    k, r_b = 4, 8
    team = team_layer(k=k, r_b=r_b, alpha=16.0, forward="fused")
    randomise(team, seed=5)
    with torch.no_grad():
        team.lora_interaction_matrix.zero_()
    moe = MoeLoraLayer(
        team.base_layer,
        MOELORA.validate({"r": r_b, "num_experts": k, "alpha": 16.0, "dropout": 0.0, "forward": forward}),
    )
    with torch.no_grad():
        moe.lora_route.weight.copy_(team.lora_route.weight)
        for i in range(k):
            moe.lora_A[i].weight.copy_(team.lora_A.weight[i * r_b : (i + 1) * r_b])
            moe.lora_B[i].weight.copy_(team.lora_B.weight[:, i * r_b : (i + 1) * r_b])
    assert moe.scaling == team.scaling
    x = torch.randn(2, 6, 16)
    base = team.base_layer(x)
    torch.testing.assert_close(team(x) - base, k * (moe(x) - base), rtol=1e-5, atol=1e-5)


def test_interaction_matrix_init_and_balance_loss_floor():
    layer = team_layer(k=4, r_b=2)
    m = layer.lora_interaction_matrix.detach()
    assert torch.all(m.diagonal() == 0)
    off = m[~torch.eye(4, dtype=torch.bool)]
    assert off.abs().max() <= 0.1 and off.abs().max() > 0
    assert layer.lora_interaction_matrix.requires_grad  # trainable, diagonal included, as released
    randomise(layer)
    layer(torch.randn(4, 9, 16))
    # sum_i w_i = k for every token, so L_bal >= (1 - 1/k)^2 and the logged excess is >= 0
    assert float(layer.last_aux.detach()) >= (1 - 1 / 4) ** 2 - 1e-6
    assert float(layer.stats["balance_excess"]) >= -1e-6


def test_normaliser_has_no_silent_epsilon():
    """A normaliser of exactly 0 gives non-finite weights as released; normalizer_eps is the labelled guard."""
    layer = team_layer(d_in=4, d_out=3, k=2, r_b=2)
    randomise(layer)
    with torch.no_grad():
        layer.lora_route.weight.zero_()
        layer.lora_interaction_matrix.copy_(torch.tensor([[0.0, -1.0], [-1.0, 0.0]]))
    x = torch.randn(1, 2, 4)
    assert not torch.isfinite(layer(x)).all()
    assert float(layer.stats["normalizer_min"]) == 0.0
    guarded = team_layer(d_in=4, d_out=3, k=2, r_b=2, normalizer_eps=1e-3)
    guarded.load_state_dict(layer.state_dict())
    assert torch.isfinite(guarded(x)).all()
    assert adapters.deviations("teamlora", {"normalizer_eps": 1e-3})


def test_aux_loss_is_weighted_sum_over_layers():
    model, _ = build_tiny_llama(seed=0)
    preset = adapters.preset_from_dict(
        {"method": "teamlora", "params": {"r_a": 8, "num_experts": 4, "balance_loss_weight": 0.5}}, name="t"
    )
    model = adapters.apply_adapter(model, preset, seed=0)
    model(torch.randint(0, 100, (2, 5)))
    layers = adapters.adapter_layers(model)
    assert len(layers) == 2 * 3
    expected = 0.5 * sum(float(layer.last_aux.detach()) for _, layer in layers)
    assert float(adapters.aux_loss(model).detach()) == pytest.approx(expected, rel=1e-6)
    stats = adapters.adapter_stats(model)
    assert stats["teamlora/normalizer_min"] == min(float(layer.stats["normalizer_min"]) for _, layer in layers)
    load = adapters.expert_load(model)
    assert set(load) == {path for path, _ in layers}
    assert all(len(v) == 4 and sum(v) == pytest.approx(1.0, abs=1e-5) for v in load.values())


def test_config_validation_lists_every_problem():
    with pytest.raises(Exception) as err:
        METHOD.validate({"r_a": 30, "num_experts": 4, "dropout": 1.5, "bogus": 1})
    text = str(err.value)
    assert "divisible" in text and "dropout" in text and "bogus" in text
