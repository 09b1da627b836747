"""Bad and hostile inputs across every verb: one readable error, exit 2, no traceback, nothing of the user's touched.

Each catalogue case prepares files in its own temporary folder (the working directory while it runs), calls the
console script in-process, and checks: exit code 2, the message names the offending flag or file, no "Traceback",
and every file that existed before is byte-identical afterwards. Most cases fail before any model is loaded.
The fault tests at the end run real processes: Ctrl-C, SIGKILL and a file-size limit during a ``--force`` rerun,
and two processes on one run.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cme_bench.cli import build_parser, main
from cme_bench.config import config_from_args

pytestmark = pytest.mark.usefixtures("one_thread")

TASK = "cme_mini_boolq"
EVAL = ["--tasks", TASK, "--limit", "2", "--no-report"]


# --------------------------------------------------------------------------------------------------------------
# Assets shared by the cases (built once, copied into each case's folder)


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    """A tiny-llama model folder, a LoRA and a TeamLoRA adapter saved on it, and a different-shaped model."""
    from cme_bench import adapters
    from cme_bench.models import architecture_info, build_tiny_llama

    root = tmp_path_factory.mktemp("assets")
    model, tok = build_tiny_llama(seed=0)
    model.save_pretrained(root / "model", safe_serialization=True)
    tok.save_pretrained(root / "model")
    other, other_tok = build_tiny_llama(seed=0, hidden_size=32, num_heads=2)
    other.save_pretrained(root / "other-model", safe_serialization=True)
    other_tok.save_pretrained(root / "other-model")
    for preset in ("lora", "teamlora"):
        base, _ = build_tiny_llama(seed=0)
        info = architecture_info(base)
        adapters.save_adapter(adapters.apply_adapter(base, preset, seed=0), root / preset, base_info=info)
    return {
        "model": root / "model",
        "other": root / "other-model",
        "lora": root / "lora",
        "teamlora": root / "teamlora",
    }


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _record(status: str = "success", run_id: str = "m--lora--cme-mini--s0") -> dict:
    """A minimal schema-v1 run record the report can read."""
    return {
        "schema_version": 1,
        "run_id": run_id,
        "name": "lora",
        "status": status,
        "error": None,
        "config": {"model": "m", "adapter": "lora", "suite": "cme-mini", "seed": 0},
        "model": {"name": "m"},
        "adapter": {"preset": "lora", "method": "lora"},
        "metrics": {TASK: {"metric": "acc", "value": 0.5, "stderr": 0.1, "n": 2}},
        "samples": {TASK: f"samples/{TASK}.jsonl"},
    }


def _results_root(tmp: Path, name: str = "results") -> Path:
    """A results folder with two run records the user cares about."""
    root = tmp / name
    for rid in ("m--lora--cme-mini--s0", "m--none--cme-mini--s0"):
        _write(root / rid / "run.json", json.dumps(_record(run_id=rid)))
        _write(root / rid / "samples" / f"{TASK}.jsonl", json.dumps({"doc_id": 0, "score": 1.0}) + "\n")
    return root


# Set-ups: (tmp, assets) -> None. Each leaves the user's files the case must not touch.


def _model_variant(kind: str) -> Callable[[Path, dict[str, Path]], None]:
    def setup(tmp: Path, assets: dict[str, Path]) -> None:
        folder = _copy(assets["model"], tmp / "m")
        weights = folder / "model.safetensors"
        if kind == "config":
            _write(folder / "config.json", "{not json")
        elif kind == "config-list":
            _write(folder / "config.json", "[1, 2]")
        elif kind == "empty":
            _write(weights, b"")
        elif kind == "random":
            _write(weights, os.urandom(4096))
        elif kind == "truncated":
            _write(weights, weights.read_bytes()[: weights.stat().st_size // 2])
        elif kind == "pickle":
            weights.rename(folder / "pytorch_model.bin")

    return setup


def _gguf(data: bytes) -> Callable[[Path, dict[str, Path]], None]:
    return lambda tmp, assets: _write(tmp / "model.gguf", data)


def _adapter_variant(kind: str, preset: str = "lora") -> Callable[[Path, dict[str, Path]], None]:
    def setup(tmp: Path, assets: dict[str, Path]) -> None:
        folder = _copy(assets[preset], tmp / "ad")
        config, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
        if kind == "no-config":
            config.unlink()
        elif kind == "config-not-json":
            _write(config, "{'method': lora")
        elif kind == "config-list":
            _write(config, "[]")
        elif kind == "no-method":
            data = json.loads(config.read_text())
            data.pop("method", None)
            data.get("cme_bench", {}).pop("method", None)
            data.pop("peft_type", None)
            data["format"] = "cme-bench-adapter"
            _write(config, json.dumps(data))
        elif kind == "unknown-layout":
            _write(config, json.dumps({"r": 8}))
        elif kind == "weights-random":
            _write(weights, os.urandom(2048))
        elif kind == "weights-empty":
            _write(weights, b"")
        elif kind == "weights-truncated":
            _write(weights, weights.read_bytes()[:-100])
        elif kind == "weights-pickle":
            weights.rename(folder / "adapter_model.bin")

    return setup


def _bad_yaml(tmp: Path, assets: dict[str, Path]) -> None:
    _write(tmp / "extra" / "mytask.yaml", "task: my_task\ndataset_path: [unclosed\n  metric_list: {\n")


def _file(name: str, data: str = "x") -> Callable[[Path, dict[str, Path]], None]:
    return lambda tmp, assets: _write(tmp / name, data)


def _results(tmp: Path, assets: dict[str, Path]) -> None:
    _results_root(tmp)


def _cwd_with_files(tmp: Path, assets: dict[str, Path]) -> None:
    _results_root(tmp)
    _copy(assets["lora"], tmp / "ad")
    _write(tmp / "notes.txt", "my notes")


def _nonempty_out(tmp: Path, assets: dict[str, Path]) -> None:
    _copy(assets["lora"], tmp / "ad")
    _write(tmp / "out" / "keep.txt", "precious")


def _nonempty_out_teamlora(tmp: Path, assets: dict[str, Path]) -> None:
    _copy(assets["teamlora"], tmp / "ad")
    _write(tmp / "out" / "keep.txt", "precious")


def _results_out(tmp: Path, assets: dict[str, Path]) -> None:
    _copy(assets["lora"], tmp / "ad")
    _results_root(tmp, "out")


def _checkout_out(tmp: Path, assets: dict[str, Path]) -> None:
    _copy(assets["lora"], tmp / "ad")
    _write(tmp / "out" / ".git" / "HEAD", "ref: refs/heads/main\n")
    _write(tmp / "out" / "src.py", "print('mine')\n")


def _corrupt_record(tmp: Path, assets: dict[str, Path]) -> None:
    argv = ["eval", "--adapter", "none", "--model", "tiny-llama", *EVAL, "--output", str(tmp / "r")]
    run_id = config_from_args(build_parser().parse_args(argv), adapter="none").run_id()
    _write(tmp / "r" / run_id / "run.json", '{"status": "succ')


def _preset(text: str) -> Callable[[Path, dict[str, Path]], None]:
    return lambda tmp, assets: _write(tmp / "p.yaml", text)


def _none(tmp: Path, assets: dict[str, Path]) -> None:
    _write(tmp / "bystander.txt", "untouched")


@dataclass
class Case:
    id: str
    argv: list[str]
    names: list[str]  # each must appear in stderr (the flag, file or value at fault)
    setup: Callable[[Path, dict[str, Path]], None] = _none
    category: str = "flags"
    extra: list[str] = field(default_factory=list)


EV = ["eval", "--adapter", "none"]
EVM = [*EV, *EVAL, "--model"]
ADP = ["eval", "--model", "{model}", *EVAL, "--adapter-path", "ad"]
TRAIN_FAST = ["--model", "tiny-llama", "--tasks", TASK, "--train-cap", "8", "--batch-size", "2", "--no-report"]

CASES = [
    # --- flags of run/train/eval/sweep: refused before anything is loaded
    Case("tasks-empty", ["run", *TRAIN_FAST, "--tasks", ""], ["--tasks"]),
    Case("eval-tasks-empty", [*EV, "--model", "tiny-llama", "--tasks", " , "], ["--tasks"]),
    Case("max-steps-negative", ["run", *TRAIN_FAST, "--max-steps", "-1"], ["--max-steps"]),
    Case("batch-size-zero", ["train", *TRAIN_FAST[:-1], "--batch-size", "0"], ["--batch-size"]),
    Case("grad-accum-zero", ["train", *TRAIN_FAST[:-1], "--grad-accum", "0"], ["--grad-accum"]),
    Case("lr-zero", ["train", *TRAIN_FAST[:-1], "--lr", "0"], ["--lr"]),
    Case("limit-negative", [*EV, "--model", "tiny-llama", "--limit", "-1"], ["--limit"]),
    Case("mix-unknown", ["train", *TRAIN_FAST[:-1], "--mix", "random"], ["--mix"]),
    Case("backend-unknown", [*EV, "--model", "tiny-llama", "--backend", "tpu"], ["--backend"]),
    Case("epochs-zero", ["train", *TRAIN_FAST[:-1], "--max-steps", "0", "--epochs", "0"], ["--epochs"]),
    Case("checkpoint-every-negative", ["train", *TRAIN_FAST[:-1], "--checkpoint-every", "-5"], ["--checkpoint-every"]),
    Case("temperature-zero", ["train", *TRAIN_FAST[:-1], "--temperature", "0"], ["--temperature"]),
    Case("max-seq-len-zero", ["train", *TRAIN_FAST[:-1], "--max-seq-len", "0"], ["--max-seq-len"]),
    Case("eval-batch-size-zero", [*EV, "--model", "tiny-llama", "--eval-batch-size", "0"], ["--eval-batch-size"]),
    Case("seed-not-a-number", [*EV, "--model", "tiny-llama", "--seed", "abc"], ["--seed"]),
    Case("include-path-missing", [*EV, "--model", "tiny-llama", "--include-path", "nope-dir"], ["nope-dir"]),
    Case("extra-data-missing", ["train", *TRAIN_FAST[:-1], "--extra-data", "gone.jsonl"], ["gone.jsonl"]),
    Case("output-is-a-file", [*EVM, "tiny-llama", "--output", "res.txt"], ["--output", "res.txt"], _file("res.txt")),
    Case("task-unknown", [*EV, "--model", "tiny-llama", "--tasks", "cme_mini_nope"], ["cme_mini_nope"]),
    Case("suite-unknown", [*EV, "--model", "tiny-llama", "--suite", "cme-maxi"], ["cme-maxi"]),
    Case("resume-nothing", ["train", *TRAIN_FAST[:-1], "--resume", "--output", "r"], ["--resume"]),
    Case("sweep-adapters-empty", ["sweep", *TRAIN_FAST, "--adapters", ","], ["--adapters"]),
    Case("sweep-adapter-unknown", ["sweep", *TRAIN_FAST, "--adapters", "lora,loar"], ["loar"]),
    Case("verb-unknown", ["frobnicate"], ["frobnicate"]),
    # --- adapter presets
    Case("preset-unknown", ["train", *TRAIN_FAST[:-1], "--adapter", "teamlorra"], ["teamlorra"], category="preset"),
    Case(
        "preset-file-missing", ["train", *TRAIN_FAST[:-1], "--adapter", "mine.yaml"], ["mine.yaml"], category="preset"
    ),
    Case(
        "preset-not-mapping",
        ["train", *TRAIN_FAST[:-1], "--adapter", "p.yaml"],
        ["p.yaml"],
        _preset("- a\n- b\n"),
        "preset",
    ),
    Case(
        "preset-no-method",
        ["train", *TRAIN_FAST[:-1], "--adapter", "p.yaml"],
        ["p.yaml", "method"],
        _preset("params: {r: 4}\n"),
        "preset",
    ),
    Case(
        "preset-unknown-key",
        ["train", *TRAIN_FAST[:-1], "--adapter", "p.yaml"],
        ["p.yaml", "colour"],
        _preset("method: lora\ncolour: red\n"),
        "preset",
    ),
    Case(
        "preset-bad-yaml",
        ["train", *TRAIN_FAST[:-1], "--adapter", "p.yaml"],
        ["p.yaml"],
        _preset("method: [lora\n"),
        "preset",
    ),
    # --- models: every load failure is one LoadError naming the file
    Case("model-missing", [*EVM, "does/not/exist"], ["does/not/exist", "Tried"], category="model"),
    Case("model-builtin-typo", [*EVM, "smollm2-135n"], ["smollm2-135n", "smollm2-135m"], category="model"),
    Case("model-config-invalid", [*EVM, "m"], ["m", "config"], _model_variant("config"), "model"),
    Case("model-config-not-object", [*EVM, "m"], ["'m'"], _model_variant("config-list"), "model"),
    Case("model-weights-empty", [*EVM, "m"], ["'m'"], _model_variant("empty"), "model"),
    Case("model-weights-random", [*EVM, "m"], ["'m'"], _model_variant("random"), "model"),
    Case("model-weights-truncated", [*EVM, "m"], ["'m'"], _model_variant("truncated"), "model"),
    Case("model-pickle-only", [*EVM, "m"], ["m", "safetensors"], _model_variant("pickle"), "model"),
    Case("gguf-wrong-magic", [*EVM, "model.gguf"], ["model.gguf", "GGUF"], _gguf(b"GGML" + os.urandom(64)), "model"),
    Case("gguf-empty", [*EVM, "model.gguf"], ["model.gguf"], _gguf(b""), "model"),
    Case(
        "gguf-truncated", [*EVM, "model.gguf"], ["model.gguf"], _gguf(b"GGUF\x03\x00\x00\x00" + b"\x01" * 7), "model"
    ),
    Case("hub-offline", [*EVM, "hf:nobody/nothing-here"], ["hf:nobody/nothing-here", "offline"], category="model"),
    Case(
        "count-config-invalid",
        ["adapters", "count", "--model", "m", "--adapter", "lora"],
        ["config.json"],
        _model_variant("config"),
        "model",
    ),
    Case(
        "count-model-missing",
        ["adapters", "count", "--model", "nowhere", "--adapter", "lora"],
        ["nowhere"],
        category="model",
    ),
    Case("count-no-adapter", ["adapters", "count", "--model", "tiny-llama"], ["--adapter"], category="model"),
    # --- saved adapters (eval --adapter-path, adapters merge)
    Case("adapter-dir-missing", [*ADP[:-1], "nothere"], ["nothere"], category="adapter"),
    Case("adapter-no-config", ADP, ["ad", "adapter_config.json"], _adapter_variant("no-config"), "adapter"),
    Case("adapter-config-not-json", ADP, ["adapter_config.json"], _adapter_variant("config-not-json"), "adapter"),
    Case("adapter-config-list", ADP, ["adapter_config.json"], _adapter_variant("config-list"), "adapter"),
    Case("adapter-config-no-method", ADP, ["adapter_config.json", "method"], _adapter_variant("no-method"), "adapter"),
    Case("adapter-config-unknown", ADP, ["adapter_config.json"], _adapter_variant("unknown-layout"), "adapter"),
    Case("adapter-weights-random", ADP, ["adapter_model.safetensors"], _adapter_variant("weights-random"), "adapter"),
    Case("adapter-weights-empty", ADP, ["adapter_model.safetensors"], _adapter_variant("weights-empty"), "adapter"),
    Case(
        "adapter-weights-truncated",
        ADP,
        ["adapter_model.safetensors"],
        _adapter_variant("weights-truncated"),
        "adapter",
    ),
    Case("adapter-weights-pickle", ADP, ["adapter_model.bin"], _adapter_variant("weights-pickle"), "adapter"),
    Case(
        "adapter-other-base",
        ["eval", "--model", "{other}", *EVAL, "--adapter-path", "ad"],
        ["hidden_size"],
        _adapter_variant("fine"),
        "adapter",
    ),
    Case(
        "merge-adapter-not-json",
        ["adapters", "merge", "ad", "--model", "{model}", "--out", "new"],
        ["adapter_config.json"],
        _adapter_variant("config-not-json"),
        "adapter",
    ),
    Case(
        "merge-routed",
        ["adapters", "merge", "ad", "--model", "{model}", "--out", "new"],
        ["teamlora"],
        _adapter_variant("fine", "teamlora"),
        "adapter",
    ),
    # --- destructive targets: refused before anything is touched
    Case(
        "merge-out-cwd",
        ["adapters", "merge", "ad", "--model", "{model}", "--out", "."],
        ["--out", "current"],
        _cwd_with_files,
        "destructive",
    ),
    Case(
        "merge-out-nonempty",
        ["adapters", "merge", "ad", "--model", "{model}", "--out", "out"],
        ["--out", "--overwrite"],
        _nonempty_out,
        "destructive",
    ),
    Case(
        "export-out-nonempty",
        ["adapters", "export", "ad", "--layout", "authors", "--out", "out"],
        ["--out", "--overwrite"],
        _nonempty_out_teamlora,
        "destructive",
    ),
    Case(
        "merge-out-results-root",
        ["adapters", "merge", "ad", "--model", "{model}", "--out", "out", "--overwrite"],
        ["--out", "run records"],
        _results_out,
        "destructive",
    ),
    Case(
        "merge-out-checkout",
        ["adapters", "merge", "ad", "--model", "{model}", "--out", "out", "--overwrite"],
        ["--out", "git checkout"],
        _checkout_out,
        "destructive",
    ),
    Case(
        "merge-out-parent-of-cwd",
        ["adapters", "merge", "ad", "--model", "{model}", "--out", ".."],
        ["--out"],
        _cwd_with_files,
        "destructive",
    ),
    Case("corrupt-record", [*EVM, "tiny-llama", "--output", "r"], ["run.json"], _corrupt_record, "destructive"),
    # --- tasks
    Case(
        "validate-unknown-task",
        ["tasks", "validate", "--no-data", "--task", "cme_mini_nope"],
        ["cme_mini_nope"],
        category="tasks",
    ),
    Case("show-unknown-task", ["tasks", "show", "cme_mini_nope"], ["cme_mini_nope"], category="tasks"),
    Case("show-index-out-of-range", ["tasks", "show", TASK, "--index", "999999"], ["--index"], category="tasks"),
    Case("list-unknown-suite", ["tasks", "list", "--suite", "cme-maxi"], ["cme-maxi"], category="tasks"),
    Case("list-bad-include-yaml", ["tasks", "list", "--include-path", "extra"], ["mytask.yaml"], _bad_yaml, "tasks"),
    Case(
        "eval-bad-include-yaml", [*EVM, "tiny-llama", "--include-path", "extra"], ["mytask.yaml"], _bad_yaml, "tasks"
    ),
    Case(
        "export-out-is-folder",
        ["tasks", "export", "--out", "dir"],
        ["--out", "dir"],
        lambda t, a: _write(t / "dir" / "f.txt", "x"),
        "tasks",
    ),
    Case(
        "export-out-under-file",
        ["tasks", "export", "--out", "f.txt/x.jsonl"],
        ["--out", "f.txt"],
        _file("f.txt"),
        "tasks",
    ),
    Case(
        "export-bad-proportions",
        ["tasks", "export", "--out", "x.jsonl", "--mixing", "fixed", "--proportions", "a"],
        ["--proportions"],
        category="tasks",
    ),
    # --- report
    Case(
        "report-max-sample-runs-negative",
        ["report", "--results", "results", "--max-sample-runs", "-1"],
        ["--max-sample-runs"],
        _results,
        "report",
    ),
    Case(
        "report-out-is-results",
        ["report", "--results", "results", "--out", "results"],
        ["--out", "--results"],
        _results,
        "report",
    ),
    Case("report-out-above-results", ["report", "--results", "results", "--out", "."], ["--out"], _results, "report"),
    Case(
        "report-out-is-file",
        ["report", "--results", "results", "--out", "f.txt"],
        ["--out", "f.txt"],
        lambda t, a: (_results(t, a), _write(t / "f.txt", "x")),
        "report",
    ),
    Case(
        "report-results-is-file", ["report", "--results", "f.txt"], ["f.txt", "not a folder"], _file("f.txt"), "report"
    ),
    Case("report-results-missing", ["report", "--results", "nowhere"], ["nowhere"], category="report"),
    Case(
        "report-results-empty",
        ["report", "--results", "empty"],
        ["empty"],
        lambda t, a: (t / "empty").mkdir(),
        "report",
    ),
    Case(
        "report-bootstrap-small",
        ["report", "--results", "results", "--bootstrap", "5"],
        ["--bootstrap"],
        _results,
        "report",
    ),
    # --- profile: outputs and settings checked before the measurement
    Case(
        "profile-json-under-file",
        ["profile", "--model", "tiny-llama", "--adapters", "lora", "--json", "f.txt/p.json"],
        ["--json", "f.txt"],
        _file("f.txt"),
        "profile",
    ),
    Case(
        "profile-json-is-folder",
        ["profile", "--model", "tiny-llama", "--adapters", "lora", "--json", "d"],
        ["--json"],
        lambda t, a: (t / "d").mkdir(),
        "profile",
    ),
    Case(
        "profile-batch-zero",
        ["profile", "--model", "tiny-llama", "--adapters", "lora", "--batch", "0"],
        ["--batch"],
        category="profile",
    ),
    Case(
        "profile-experts-not-ints",
        ["profile", "--model", "tiny-llama", "--experts", "a,b"],
        ["--experts"],
        category="profile",
    ),
    Case(
        "profile-preset-unknown",
        ["profile", "--model", "tiny-llama", "--adapters", "lorra"],
        ["lorra"],
        category="profile",
    ),
    Case(
        "profile-forms-unknown",
        ["profile", "--model", "tiny-llama", "--adapters", "lora", "--forms", "fast"],
        ["--forms"],
        category="profile",
    ),
    Case(
        "profile-model-missing",
        ["profile", "--model", "no/such/model", "--adapters", "lora"],
        ["no/such/model"],
        category="profile",
    ),
    # --- the training step larger than the data (used to hang): refused before training
    Case(
        "batch-larger-than-data",
        [
            "train",
            "--model",
            "tiny-llama",
            "--tasks",
            TASK,
            "--train-cap",
            "16",
            "--batch-size",
            "64",
            "--max-steps",
            "2",
            "--output",
            "r",
        ],
        ["--batch-size", "16"],
        category="hang",
    ),
]


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, assets, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CME_BENCH_CACHE", str(tmp_path.parent / "cache"))
    case.setup(tmp_path, assets)
    before = _digests(tmp_path)
    argv = [a.format(**{k: str(v) for k, v in assets.items()}) for a in case.argv]
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, f"exit {rc}: {err[-2000:]}"
    assert "Traceback" not in err
    for name in case.names:
        assert name in err, f"{name!r} not named in: {err[-1500:]}"
    after = _digests(tmp_path)
    changed = [p for p, d in before.items() if after.get(p) != d]
    assert not changed, f"pre-existing files changed or removed: {changed}"


def test_catalogue_size():
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)
    assert len({c.category for c in CASES}) >= 8


# --------------------------------------------------------------------------------------------------------------
# Tolerant handling that used to go wrong


def test_one_step_run_trains_the_adapter(tmp_path: Path):
    """With 1 step, the warm-up used to take the only step at learning rate 0: "the adapter is not applied"."""
    out = tmp_path / "r"
    rc = main(["train", *TRAIN_FAST[:-1], "--adapter", "lora", "--max-steps", "1", "--output", str(out)])
    assert rc == 0
    (record,) = [json.loads(p.read_text()) for p in out.glob("*/run.json")]
    assert record["status"] == "success" and record["training"]["steps"] == 1


def test_merge_overwrite_keeps_unrelated_files(assets, tmp_path: Path):
    out = tmp_path / "merged"
    _write(out / "keep.txt", "precious")
    rc = main(
        ["adapters", "merge", str(assets["lora"]), "--model", str(assets["model"]), "--out", str(out), "--overwrite"]
    )
    assert rc == 0
    assert (out / "keep.txt").read_text() == "precious"
    assert (out / "config.json").is_file() and list(out.glob("*.safetensors"))


def test_written_files_honour_the_umask(tmp_path: Path):
    from cme_bench.results import write_dir_atomic, write_json_atomic

    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": 1})
        write_dir_atomic(tmp_path / "d", lambda tmp: (tmp / "f.txt").write_text("x"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_report_names_samples_of_another_attempt(tmp_path: Path, caplog):
    from cme_bench.report.load import load_runs, load_samples

    root = _results_root(tmp_path)
    rec_path = root / "m--lora--cme-mini--s0" / "run.json"
    _write(rec_path, json.dumps({**_record(), "attempt": "aaaa"}))
    _write(rec_path.parent / "samples" / f"{TASK}.jsonl", json.dumps({"doc_id": 0, "score": 1.0, "attempt": "bbbb"}))
    run = next(r for r in load_runs(root) if r.run_id == "m--lora--cme-mini--s0")
    assert load_samples(run, TASK) == []
    assert str(rec_path) in caplog.text and "another attempt" in caplog.text


def test_report_skips_unfinished_attempts(tmp_path: Path):
    from cme_bench.report.load import load_runs

    root = _results_root(tmp_path)
    _write(root / ".m--lora--cme-mini--s0.attempt-123" / "run.json", json.dumps(_record(status="running")))
    assert sorted(r.run_id for r in load_runs(root)) == ["m--lora--cme-mini--s0", "m--none--cme-mini--s0"]


def test_hang_is_bounded():
    """A step larger than the mixture used to loop forever in step_examples; now it is refused at once.

    Run in a daemon thread with a bounded join, so the old behaviour fails this test instead of hanging the suite.
    """
    import threading

    from cme_bench.errors import CmeError
    from cme_bench.train import TrainConfig, step_examples

    outcome: list[BaseException | object] = []

    def first_batch() -> None:
        try:
            outcome.append(next(step_examples(16, TrainConfig(batch_size=64, max_steps=2), rank=0, world=1)))
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=first_batch, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert outcome, "step_examples did not return within 30 s (an endless wait for a batch)"
    assert isinstance(outcome[0], CmeError) and "fewer than one optimiser step" in str(outcome[0])


# --------------------------------------------------------------------------------------------------------------
# Faults in real processes: no good record is ever lost

EVAL_ARGS = ["eval", "--adapter", "none", "--model", "tiny-llama", "--tasks", TASK, "--limit", "2", "--no-report"]


def _cli(argv: list[str], *, env: dict[str, str] | None = None, preexec=None, wait: bool = True):
    cmd = [sys.executable, "-m", "cme_bench.cli", *argv]
    full = {**os.environ, **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=300, preexec_fn=preexec)


@pytest.fixture(scope="module")
def good_results(tmp_path_factory) -> Path:
    """A results folder holding one successful evaluation (copied per test)."""
    out = tmp_path_factory.mktemp("good") / "results"
    assert main([*EVAL_ARGS, "--output", str(out)]) == 0
    return out


def _fresh(good_results: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    out = _copy(good_results, tmp_path / "results")
    return out, _digests(out)


def test_ctrl_c_during_a_forced_rerun_keeps_the_good_record(good_results, tmp_path: Path):
    out, before = _fresh(good_results, tmp_path)
    proc = _cli(
        [*EVAL_ARGS, "--output", str(out), "--force"],
        env={"CME_BENCH_KILL_AFTER_TASK": "1", "CME_BENCH_KILL_SIGNAL": "INT"},
    )
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "previous record" in proc.stderr and "unchanged" in proc.stderr
    assert _digests(out) == before


def test_sigkill_during_a_forced_rerun_keeps_the_good_record(good_results, tmp_path: Path, capsys):
    out, before = _fresh(good_results, tmp_path)
    proc = _cli([*EVAL_ARGS, "--output", str(out), "--force"], env={"CME_BENCH_KILL_AFTER_TASK": "1"})
    assert proc.returncode == -signal.SIGKILL
    assert {p: d for p, d in _digests(out).items() if not Path(p).parts[0].startswith(".")} == before
    assert main(["report", "--results", str(out), "--out", str(tmp_path / "site"), "--no-html"]) == 0
    assert "1 run(s) (1 successful)" in capsys.readouterr().out
    assert main([*EVAL_ARGS, "--output", str(out), "--force"]) == 0  # and clears what the killed attempt left
    assert [p.name for p in out.iterdir()] == [next(iter(before)).split("/")[0]]


def test_write_failure_during_a_forced_rerun_keeps_the_good_record(good_results, tmp_path: Path):
    out, before = _fresh(good_results, tmp_path)
    limit = 3000  # bytes per file: the new run record cannot be written, the old one is never rewritten

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = _cli([*EVAL_ARGS, "--output", str(out), "--force"], preexec=small_files)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "unchanged" in proc.stderr
    assert _digests(out) == before


def test_second_writer_on_one_run_stops_and_a_crashed_holder_is_recovered(tmp_path: Path, capsys):
    out = tmp_path / "results"
    first = _cli(
        [*EVAL_ARGS, "--output", str(out)],
        env={"CME_BENCH_KILL_AFTER_TASK": "1", "CME_BENCH_KILL_SIGNAL": "STOP"},
        wait=False,
    )
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("*/samples/*.jsonl")):  # bounded: the first writer stops itself after one task
            assert first.poll() is None and time.monotonic() < deadline, "first writer did not reach its stop"
            time.sleep(0.2)
        assert main([*EVAL_ARGS, "--output", str(out)]) == 2  # this process is the second writer
        err = capsys.readouterr().err
        assert "being written by another process" in err and f"pid {first.pid}" in err
    finally:
        first.kill()  # SIGKILL: a crash while holding the lock
        first.communicate(timeout=60)
    assert main([*EVAL_ARGS, "--output", str(out)]) == 0  # the dead holder's lock is recovered
    (record,) = [json.loads(p.read_text()) for p in out.glob("*/run.json")]
    assert record["status"] == "success" and record["metrics"][TASK]["n"] == 2
    samples = [
        json.loads(line) for line in (out / record["run_id"] / record["samples"][TASK]).read_text().split("\n") if line
    ]
    assert len(samples) == 2 and {s["attempt"] for s in samples} == {record["attempt"]}
