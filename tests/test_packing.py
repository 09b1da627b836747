"""Padding-free training: packed micro-batches pose the same learning problem as padded ones.

For the same examples, the per-example losses and the adapter gradients of a packed step equal those of the padded
step (fp32, 1e-5), for a PEFT LoRA and for routed adapters, whose routers and balance losses must see real tokens
only; a step cut into token-budget micro-batches has the gradient of the uncut step.
"""

from __future__ import annotations

import copy

import pytest
import torch
from _helpers import perturb
from accelerate import Accelerator

from cme_bench import adapters
from cme_bench.errors import CmeError
from cme_bench.train import (
    IGNORE_INDEX,
    TrainConfig,
    _collate,
    _step,
    collate,
    collate_packed,
    pack_rows,
    split_micro_batches,
    step_examples,
    tokenize_pairs,
)
from cme_bench.tuners.tokens import token_segments

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def examples(tiny_llama):
    _, tok = tiny_llama
    # Lengths from 14 to ~60 tokens, so padded rows carry a lot of padding and packed rows hold several examples.
    recs = [{"prompt": f"Item {i}: " + "abc " * (i * 5 % 13), "target": f"label {i % 3}"} for i in range(8)]
    return tokenize_pairs(recs, tok, 64)


def _adapted(tiny_llama, name: str) -> torch.nn.Module:
    model = copy.deepcopy(tiny_llama[0])
    model = adapters.apply_adapter(model, adapters.load_preset(name), total_steps=10, seed=0)
    perturb(model, seed=1, scale=0.1)  # non-zero B everywhere: a zero B would hide a wrong gradient
    model.eval()  # dropout off, so two forwards are comparable; autograd (and so the balance losses) stays on
    return model


def _per_example_losses(model, batch: dict[str, torch.Tensor]) -> dict[int, float]:
    """Mean next-token cross-entropy of every example, from full logits, keyed by example index."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "segments")}
    with torch.no_grad(), token_segments(batch["segments"]):
        logits = model(**inputs, use_cache=False).logits
    shifted = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE_INDEX)
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), shifted, reduction="none", ignore_index=-100)
    out = {}
    for ex in batch["segments"].unique().tolist():
        if ex >= 0:
            sel = (batch["segments"] == ex) & (shifted != IGNORE_INDEX)
            out[ex] = ce[sel].mean().item()
    return out


def _gradients(model, batches: list[dict]) -> tuple[dict[str, torch.Tensor], float, float]:
    model.zero_grad(set_to_none=True)
    loss, aux = _step(Accelerator(cpu=True), model, model, batches)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, loss, aux


def test_pack_rows_places_every_example_once_within_the_width():
    lengths = [50, 10, 30, 60, 5, 64, 20]
    rows = pack_rows(lengths, 64)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert len(rows) == 4  # ceil(239 / 64) rows, balanced: 64 | 60 | 50+5 | 30+20+10
    assert sorted(sum(lengths[i] for i in row) for row in rows) == [55, 60, 60, 64]


def test_packed_layout_restarts_positions_and_masks_each_first_label(examples, tiny_llama):
    batch = collate_packed(examples, tiny_llama[1].pad_token_id, 64)
    for r in range(batch["input_ids"].shape[0]):
        seg = batch["segments"][r]
        for ex in seg.unique().tolist():
            where = (seg == ex).nonzero().flatten()
            if ex >= 0:
                assert batch["position_ids"][r, where].tolist() == list(range(len(where)))
                assert batch["labels"][r, where[0]] == IGNORE_INDEX
                assert batch["input_ids"][r, where].tolist() == examples[ex]["input_ids"]
    assert int((batch["segments"] >= 0).sum()) == sum(len(e["input_ids"]) for e in examples)


@pytest.mark.parametrize("method", ["lora", "teamlora", "mixlora", "loramoe", "comol", "mola"])
def test_packed_step_equals_padded_step(method: str, examples, tiny_llama):
    model = _adapted(tiny_llama, method)
    pad = tiny_llama[1].pad_token_id
    padded, packed = collate(examples, pad), collate_packed(examples, pad, 64)
    assert packed["input_ids"].numel() < padded["input_ids"].numel()  # packing removed padding
    losses_padded, losses_packed = _per_example_losses(model, padded), _per_example_losses(model, packed)
    assert losses_padded.keys() == losses_packed.keys() == set(range(len(examples)))
    for ex in losses_padded:
        assert losses_packed[ex] == pytest.approx(losses_padded[ex], abs=1e-5)

    g_pad, loss_pad, aux_pad = _gradients(model, [_collate(TrainConfig(packing=False), examples, pad, True)])
    g_pack, loss_pack, aux_pack = _gradients(model, [_collate(TrainConfig(packing=True), examples, pad, True)])
    assert loss_pack == pytest.approx(loss_pad, abs=1e-5)
    assert aux_pack == pytest.approx(aux_pad, abs=1e-5)
    assert g_pad.keys() == g_pack.keys() and g_pad
    for name in g_pad:
        torch.testing.assert_close(g_pack[name], g_pad[name], atol=1e-5, rtol=1e-4, msg=name)


def _balance_losses(model) -> torch.Tensor:
    """Every TeamLoRA layer's unweighted balance loss of the last forward (the preset's weight is 0 by default)."""
    return torch.stack([m.last_aux.detach() for m in model.modules() if getattr(m, "last_aux", None) is not None])


def test_balance_loss_ignores_padding(examples, tiny_llama):
    """TeamLoRA's balance loss on a padded batch equals the one on the same tokens packed without padding, and
    differs from the loss over every position (what counting padding would give)."""
    model = _adapted(tiny_llama, "teamlora")
    pad = tiny_llama[1].pad_token_id
    padded = collate(examples, pad)
    inputs = {k: padded[k] for k in ("input_ids", "attention_mask")}
    with token_segments(padded["segments"]):
        model(**inputs, use_cache=False)
        masked = _balance_losses(model)
    model(**inputs, use_cache=False)  # no segments: every position counts, padding included
    unmasked = _balance_losses(model)
    packed = collate_packed(examples, pad, 64)
    with token_segments(packed["segments"]):
        model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False)
        packed_aux = _balance_losses(model)
    torch.testing.assert_close(packed_aux, masked, atol=1e-6, rtol=1e-5)
    assert (unmasked - masked).abs().max() > 1e-6


def test_token_budget_micro_batches_keep_the_gradient(examples, tiny_llama):
    model = _adapted(tiny_llama, "teamlora")
    pad = tiny_llama[1].pad_token_id
    lengths = [len(e["input_ids"]) for e in examples]
    cfg = TrainConfig(tokens_per_batch=80, max_seq_len=64)
    micro = split_micro_batches(list(range(len(examples))), lengths, cfg)
    assert len(micro) > 2 and all(sum(lengths[i] for i in m) <= 80 or len(m) == 1 for m in micro)
    whole, loss_whole, _ = _gradients(model, [_collate(cfg, examples, pad, True)])
    cut, loss_cut, _ = _gradients(model, [_collate(cfg, [examples[i] for i in m], pad, True) for m in micro])
    assert loss_cut == pytest.approx(loss_whole, abs=1e-5)
    for name in whole:
        torch.testing.assert_close(cut[name], whole[name], atol=2e-5, rtol=1e-4, msg=name)


def test_a_step_larger_than_the_data_is_an_error_not_a_hang():
    with pytest.raises(CmeError, match="fewer than one optimiser step"):
        next(step_examples(16, TrainConfig(batch_size=64, max_steps=2), 0, 1))


def test_a_model_that_ignores_restarting_positions_is_trained_padded(tiny_llama, tmp_path):
    """If attention is not confined to packed examples (here: a forward that always passes an attention mask, which
    turns off transformers' packed-sequence detection), training must pad instead of mixing examples."""
    from cme_bench.train import _packing_confines_attention, train

    model, tok = copy.deepcopy(tiny_llama[0]), tiny_llama[1]
    assert _packing_confines_attention(model)

    plain_forward = type(model).forward

    def leaky_forward(self, input_ids=None, attention_mask=None, **kwargs):
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        return plain_forward(self, input_ids=input_ids, attention_mask=mask, **kwargs)

    model.__class__ = type("LeakyLlama", (type(model),), {"forward": leaky_forward})
    assert not _packing_confines_attention(model)
    model = adapters.apply_adapter(model, adapters.load_preset("lora"), total_steps=2, seed=0)
    recs = [{"prompt": f"q{i} " * (i + 2), "target": f"a{i}"} for i in range(4)]
    result = train(model, tok, recs, TrainConfig(max_steps=2, batch_size=2, checkpoint_every=0), out_dir=tmp_path)
    assert result.packing is False and result.steps == 2
