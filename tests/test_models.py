"""Model resolution: local folders, GGUF, built-ins, the hub only on request, and one readable error otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cme_bench.errors import CmeError
from cme_bench.models import (
    architecture_info,
    build_on_meta,
    build_tiny_llama,
    fingerprint,
    load_config,
    load_model,
    materialize,
    save_model_folder,
)


def test_tiny_llama_is_deterministic_and_seed_sensitive():
    a, _ = build_tiny_llama(seed=0)
    b, _ = build_tiny_llama(seed=0)
    c, _ = build_tiny_llama(seed=1)
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(c)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_tiny_llama_does_not_disturb_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_llama(seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_byte_tokenizer_round_trips_and_maps_eos(tiny_llama):
    _, tok = tiny_llama
    text = "Sentence 1: the café.\nAnswer:</s>"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.eos_token_id in ids  # the literal </s> of CME's prompt is the EOS token here, as with LLaMA-2
    assert tok.padding_side == "left"


def test_local_folder_round_trip(tmp_path: Path, tiny_llama):
    model, tok = tiny_llama
    folder = save_model_folder(model, tok, tmp_path / "m")
    assert (folder / "model.safetensors").is_file()
    loaded = load_model(str(folder))
    assert loaded.source == "folder" and loaded.path == folder.resolve()
    assert loaded.fingerprint == fingerprint(model)
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.equal(loaded.model(ids).logits, model(ids).logits)


def test_folder_with_only_pickle_weights_is_refused(tmp_path: Path, tiny_llama):
    model, tok = tiny_llama
    folder = save_model_folder(model, tok, tmp_path / "m")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(CmeError, match=r"pytorch_model\.bin"):
        load_model(str(folder))


def test_unknown_model_lists_every_attempt_and_never_contacts_the_hub():
    with pytest.raises(CmeError) as err:
        load_model("does/not/exist")
    msg = str(err.value)
    for attempt in ("local model folder", "GGUF file", "built-in name", "hub id: not contacted", "hf:does/not/exist"):
        assert attempt in msg


def test_near_miss_builtin_is_suggested():
    with pytest.raises(CmeError, match="Did you mean 'tiny-llama'"):
        load_model("tiny-lama")


def test_config_only_folder_builds_on_meta(tmp_path: Path, tiny_llama):
    model, _ = tiny_llama
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    config = load_config(str(tmp_path))
    meta = build_on_meta(config)
    assert all(p.device.type == "meta" for p in meta.parameters())
    assert sum(p.numel() for p in meta.parameters()) == sum(p.numel() for p in model.parameters())
    assert architecture_info(meta)["architecture"] == "LlamaForCausalLM"


def test_materialize_tiny_llama_is_cached(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CME_BENCH_CACHE", str(tmp_path))
    first = materialize("tiny-llama")
    stamp = (first / "config.json").stat().st_mtime_ns
    assert materialize("tiny-llama") == first
    assert (first / "config.json").stat().st_mtime_ns == stamp
    assert load_model(str(first)).fingerprint == fingerprint(build_tiny_llama(seed=0)[0])


@pytest.mark.slow
def test_smollm2_is_real_and_cached(smollm2):
    """The embedded default really is SmolLM2: greedy completion of a simple factual prompt."""
    tok, model = smollm2.tokenizer, smollm2.model
    assert smollm2.source == "builtin" and smollm2.path is not None
    assert (smollm2.path / "model.safetensors").is_file()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1] :])


@pytest.mark.slow
def test_smollm2_gguf_file_loads_directly():
    from cme_bench.models import smollm2_gguf

    loaded = load_model(str(smollm2_gguf()))
    assert loaded.source == "gguf"
    assert loaded.model.config.vocab_size == 49152
