"""Adapters outside cme-bench: plain PEFT (no warning, base resolved from a folder), model cards, the top-level
``cme_bench.load_adapter``, plain lm-eval through the registered ``cme-bench`` model, the TeamLoRA authors' layout
round trip, and the explicit ``.bin`` conversion."""

from __future__ import annotations

import json
import logging
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from _helpers import assert_scores_match_lm_eval, perturb
from safetensors.torch import load_file

import cme_bench
from cme_bench import adapters
from cme_bench.cli import main
from cme_bench.errors import CmeError
from cme_bench.models import architecture_info, build_tiny_llama

REPO = Path(__file__).resolve().parents[1]
IDS = torch.tensor([[5, 17, 42, 99, 3, 8], [1, 2, 3, 4, 5, 6]])
TASKS = "cme_mini_boolq,cme_mini_arc_easy"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    """Built-in models materialise into the test's own folder."""
    monkeypatch.setenv("CME_BENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def tiny():
    return build_tiny_llama(seed=0)[0]


def _saved(name: str, out: Path) -> tuple[torch.nn.Module, Path]:
    model = adapters.apply_adapter(tiny(), name, total_steps=10, seed=0)
    perturb(model)
    model.eval()
    return model, adapters.save_adapter(model, out, base_info=architecture_info(tiny()), base_model="tiny-llama")


# ---------------------------------------------------------------------------------------------------------------
# PEFT-format adapters


def test_saved_lora_loads_in_plain_peft_without_any_warning(tmp_path: Path, cache: Path, caplog):
    from peft import AutoPeftModelForCausalLM, PeftModel

    from cme_bench.models import materialize

    model, folder = _saved("lora", tmp_path / "ad")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(materialize("tiny-llama"))
    assert "cme_bench" not in config  # our fields sit in the sidecar, where PEFT does not look
    assert json.loads((folder / "cme_bench.json").read_text())["method"] == "lora"
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain = PeftModel.from_pretrained(tiny(), str(folder))
    relevant = [w for w in caught if not issubclass(w.category, (DeprecationWarning, FutureWarning))]
    assert not relevant, [str(w.message) for w in relevant]
    assert not [r for r in caplog.records if r.name.startswith(("peft", "transformers"))], caplog.text
    plain.eval()
    torch.testing.assert_close(plain(IDS).logits, model(IDS).logits, rtol=0, atol=1e-6)
    # AutoPeftModel finds the base through base_model_name_or_path: the materialised local folder, no hub.
    auto = AutoPeftModelForCausalLM.from_pretrained(str(folder))
    auto.eval()
    torch.testing.assert_close(auto(IDS).logits, model(IDS).logits, rtol=0, atol=1e-6)


def test_folders_saved_with_the_old_cme_bench_key_still_load(tmp_path: Path, cache: Path):
    model, folder = _saved("lora", tmp_path / "ad")
    sidecar = folder / "cme_bench.json"
    config = json.loads((folder / "adapter_config.json").read_text())
    config["cme_bench"] = json.loads(sidecar.read_text())
    (folder / "adapter_config.json").write_text(json.dumps(config))
    sidecar.unlink()
    loaded = adapters.load_adapter(tiny(), folder)
    assert adapters.adapter_info(loaded)["preset"] == "lora"
    assert torch.equal(loaded(IDS).logits, model(IDS).logits)


# ---------------------------------------------------------------------------------------------------------------
# Model cards and the top-level loader


def test_every_saved_adapter_has_a_model_card(tmp_path: Path, cache: Path):
    model, folder = _saved("teamlora-r16", tmp_path / "ad")
    card = (folder / "README.md").read_text()
    trainable, _ = adapters.count_parameters(model)
    assert card.startswith("---\nlibrary_name: cme-bench\nbase_model: ")
    assert "| method | `teamlora` |" in card and f"| trainable parameters | {trainable:,}" in card
    params = adapters.adapter_info(model)["params"]
    assert "`model.layers.*.mlp.gate_proj`" in card and f"r_a={params['r_a']}" in card
    assert "cme_bench.load_adapter(model," in card and "--model cme-bench" in card
    assert "arXiv:2408.09856" in card
    assert "## Scores" not in card  # not evaluated
    _, lora = _saved("lora", tmp_path / "lora")
    lora_card = (lora / "README.md").read_text()
    assert "library_name: peft" in lora_card and "AutoPeftModelForCausalLM.from_pretrained" in lora_card


def test_top_level_load_adapter_puts_a_routed_adapter_on_a_transformers_model(tmp_path: Path, cache: Path):
    from transformers import AutoModelForCausalLM

    model, folder = _saved("teamlora-r16", tmp_path / "ad")
    base_path = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(base_path)  # plain transformers, from the recorded folder
    adapted = cme_bench.load_adapter(base, folder)
    assert torch.equal(adapted(IDS).logits, model(IDS).logits)


# ---------------------------------------------------------------------------------------------------------------
# Plain lm-eval


def test_plain_lm_eval_scores_a_teamlora_adapter_like_cme_bench_eval(tmp_path: Path, cache: Path):
    out = tmp_path / "results"
    common = ["--model", "tiny-llama", "--tasks", TASKS, "--output", str(out)]
    assert main(["train", *common, "--adapter", "teamlora", "--max-steps", "3", "--train-cap", "24",
                 "--batch-size", "4", "--lr", "5e-2"]) == 0  # fmt: skip
    adapter = next(out.glob("*--train--*")) / "adapter"
    assert main(["eval", *common, "--adapter-path", str(adapter), "--limit", "4", "--eval-batch-size", "4",
                 "--no-report"]) == 0  # fmt: skip
    ours = json.loads(next(out.glob("*--eval--*/run.json")).read_text())
    lm_out = tmp_path / "lm_eval"
    proc = subprocess.run(
        [sys.executable, "-m", "cme_bench.lm_eval_cli", "--model", "cme-bench", "--model_args",
         f"pretrained=tiny-llama,adapter={adapter}", "--include_path", str(REPO / "tasks"), "--tasks", TASKS,
         "--limit", "4", "--batch_size", "4", "--device", "cpu", "--log_samples", "--output_path", str(lm_out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_scores_match_lm_eval(ours, out, lm_out, TASKS.split(","))


# ---------------------------------------------------------------------------------------------------------------
# The TeamLoRA authors' layout


def test_export_to_the_authors_layout_and_back_is_exact(tmp_path: Path, cache: Path, capsys):
    model, folder = _saved("teamlora-r16", tmp_path / "ad")
    exported = tmp_path / "authors"
    assert main(["adapters", "export", str(folder), "--layout", "authors", "--out", str(exported)]) == 0
    config = json.loads((exported / "adapter_config.json").read_text())
    params = adapters.adapter_info(model)["params"]
    assert config["peft_type"] == "LORA" and config["lora_nums"] == params["num_experts"]
    assert config["r"] == params["r_a"] and config["lora_alpha"] == params["alpha"]
    keys = set(load_file(str(exported / "adapter_model.safetensors")))
    prefix = "base_model.model.model.layers.0.mlp.gate_proj"
    assert {f"{prefix}.lora_A.weight", f"{prefix}.lora_route.fc.weight", f"{prefix}.lora_interaction_matrix.weight",
            *(f"{prefix}.lora_B{i}.weight" for i in range(params["num_experts"]))} <= keys  # fmt: skip
    reloaded = adapters.load_adapter(tiny(), exported)  # the importer: detected as the authors' layout
    assert adapters.adapter_info(reloaded)["preset"] == "teamlora-authors"
    assert torch.equal(reloaded(IDS).logits, model(IDS).logits)


def test_export_refuses_what_the_authors_layout_cannot_hold(tmp_path: Path, cache: Path, capsys):
    _, folder = _saved("lora", tmp_path / "ad")
    assert main(["adapters", "export", str(folder), "--layout", "authors", "--out", str(tmp_path / "x")]) == 2
    assert "has no authors' layout to export to" in capsys.readouterr().err and not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------------------------
# .bin conversion


def test_convert_reads_a_weights_only_bin_and_the_adapter_then_loads(tmp_path: Path, cache: Path, capsys):
    model, folder = _saved("lora", tmp_path / "ad")
    weights = folder / "adapter_model.safetensors"
    torch.save(load_file(str(weights)), folder / "adapter_model.bin")  # as older PEFT / the authors saved it
    weights.unlink()
    with pytest.raises(CmeError, match="never unpickles"):  # loading never falls back to the pickle
        adapters.load_adapter(tiny(), folder)
    assert main(["adapters", "convert", str(folder)]) == 0
    assert "weights_only=True" in capsys.readouterr().out
    assert torch.equal(adapters.load_adapter(tiny(), folder)(IDS).logits, model(IDS).logits)


class _Payload:
    """Unpickling this with full pickle would create ``marker``: the safe unpickler must refuse it instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_convert_refuses_a_pickle_that_is_more_than_tensors(tmp_path: Path, capsys):
    folder = tmp_path / "ad"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    marker = tmp_path / "code-ran"
    with open(folder / "adapter_model.bin", "wb") as fh:
        pickle.dump({"lora_A.weight": torch.ones(2), "payload": _Payload(marker)}, fh)
    assert main(["adapters", "convert", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "refused by PyTorch's safe unpickler (torch.load weights_only=True)" in err
    assert not marker.exists() and not (folder / "adapter_model.safetensors").exists()
