"""The main job end to end on tiny-llama: run, train/eval halves, records, resume after a kill, sweeps, torchrun."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _helpers import assert_scores_match_lm_eval, free_port, run_dir
from safetensors.torch import load_file

from cme_bench import results
from cme_bench.cli import main
from cme_bench.config import RunConfig
from cme_bench.errors import ConfigError
from cme_bench.runner import KILL_AFTER_TASK_ENV
from cme_bench.train import KILL_AFTER_STEP_ENV

TASKS = "cme_mini_boolq,cme_mini_arc_easy"
TRAIN = ["--model", "tiny-llama", "--tasks", TASKS, "--train-cap", "24", "--batch-size", "4"]
FAST = [*TRAIN, "--limit", "6"]
REPO = Path(__file__).resolve().parents[1]


def _cli(*argv: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "cme_bench.cli", *argv], capture_output=True, text=True, env=full_env, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _record(out: Path, prefix: str) -> dict:
    return json.loads((run_dir(out, prefix) / "run.json").read_text())


def test_run_end_to_end_writes_a_complete_record(tmp_path: Path):
    out = tmp_path / "results"
    rc = main(["run", *FAST, "--adapter", "teamlora", "--max-steps", "4", "--output", str(out), "--no-report"])
    assert rc == 0
    base = _record(out, "tiny-llama--none--cme-mini--s0")
    rec = _record(out, "tiny-llama--teamlora--cme-mini--s0")
    assert base["status"] == rec["status"] == "success"
    assert rec["schema_version"] == results.SCHEMA_VERSION
    assert rec["model"]["fingerprint"] == base["model"]["fingerprint"]
    assert rec["adapter"]["method"] == "teamlora" and rec["adapter"]["routed"] is True
    assert rec["adapter"]["trainable_parameters"] > 0
    train = rec["training"]
    assert train["steps"] == 4 and len(train["loss_curve"]) == 4 and train["tokens_per_second"] > 0
    assert set(train["expert_load"]) and all(len(v) == 4 for v in train["expert_load"].values())
    assert rec["costs"]["train_step_ms"] > 0 and rec["costs"]["decode_ms_per_token"] > 0
    assert rec["environment"]["packages"]["torch"].startswith("2.")
    assert "git_dirty" in rec["environment"]
    for task in TASKS.split(","):
        assert rec["metrics"][task]["n"] == 6
        rows = (out / rec["run_id"] / rec["samples"][task]).read_text().splitlines()
        assert len(rows) == 6 and {"doc_id", "prompt", "target", "prediction", "score"} <= set(json.loads(rows[0]))
        assert rec["evaluation"]["lm_eval"]["results"][task]
    assert (out / rec["run_id"] / "adapter" / "adapter_model.safetensors").is_file()
    # A finished run is skipped, not redone.
    mtime = (out / rec["run_id"] / "run.json").stat().st_mtime_ns
    assert main(["run", *FAST, "--adapter", "teamlora", "--max-steps", "4", "--output", str(out), "--no-report"]) == 0
    assert (out / rec["run_id"] / "run.json").stat().st_mtime_ns == mtime


def test_bad_arguments_are_reported_together():
    with pytest.raises(ConfigError) as err:
        RunConfig(batch_size=0, backend="tpu", limit=-1)
    text = str(err.value)
    assert "--batch-size" in text and "--backend" in text and "--limit" in text


@pytest.mark.parametrize("verb", ["run", "sweep", "eval"])
def test_vllm_backend_without_vllm_fails_before_any_work(verb: str, tmp_path: Path, capsys):
    from cme_bench.vllm_backend import is_available

    if is_available():
        pytest.skip("vLLM is installed here; tests/vllm covers --backend vllm")
    out = tmp_path / "results"
    which = {"run": ["--adapter", "lora", *FAST], "sweep": ["--adapters", "lora", *FAST]}
    which["eval"] = ["--adapter", "none"]
    argv = [verb, *which[verb], "--model", "tiny-llama", "--backend", "vllm", "--output", str(out), "--no-report"]
    assert main(argv) == 2
    assert "make vllm-env" in capsys.readouterr().err
    assert not out.exists()  # nothing trained, nothing recorded


def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path: Path):
    common = [*TRAIN, "--adapter", "lora", "--max-steps", "8", "--checkpoint-every", "3"]
    # Reference: uninterrupted.
    _cli("train", *common, "--output", str(tmp_path / "ref"))
    # Killed with SIGKILL right after step 5: the checkpoint of step 3 survives, steps 4-5 are lost.
    killed = _cli("train", *common, "--output", str(tmp_path / "kill"), env={KILL_AFTER_STEP_ENV: "5"}, check=False)
    assert killed.returncode == -9
    folder = run_dir(tmp_path / "kill", "tiny-llama--lora--cme-mini--s0--train")
    assert _record(tmp_path / "kill", folder.name)["status"] == "running"
    assert [p.name for p in (folder / "checkpoints").iterdir()] == ["step-0000003"]
    _cli("train", *common, "--output", str(tmp_path / "kill"), "--resume")
    rec = _record(tmp_path / "kill", folder.name)
    ref = _record(tmp_path / "ref", folder.name)
    assert rec["status"] == "success" and rec["training"]["resumed_from"] == 3
    assert [s for s, _ in rec["training"]["loss_curve"]] == list(range(1, 9))
    for (s1, l1), (s2, l2) in zip(rec["training"]["loss_curve"], ref["training"]["loss_curve"]):
        assert s1 == s2 and l1 == pytest.approx(l2, abs=1e-5)
    a = load_file(folder / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "ref" / folder.name / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)


def test_kill_during_evaluation_resumes_without_training_again(tmp_path: Path):
    out = tmp_path / "results"
    args = [
        "run",
        *FAST,
        "--adapter",
        "lora",
        "--max-steps",
        "3",
        "--output",
        str(out),
        "--no-report",
        "--no-baseline",
    ]
    killed = _cli(*args, env={KILL_AFTER_TASK_ENV: "1"}, check=False)
    assert killed.returncode == -9
    run_id = run_dir(out, "tiny-llama--lora--cme-mini--s0").name
    before = _record(out, run_id)
    assert before["status"] == "running" and list(before["metrics"]) == [TASKS.split(",")[0]]
    adapter = out / run_id / "adapter" / "adapter_model.safetensors"
    mtime = adapter.stat().st_mtime_ns
    resumed = _cli(*args, "--resume")
    after = _record(out, run_id)
    assert after["status"] == "success" and sorted(after["metrics"]) == sorted(TASKS.split(","))
    assert after["training"] == before["training"]  # not trained again
    assert adapter.stat().st_mtime_ns == mtime
    assert "adapter already trained" in resumed.stderr and "not training again" in resumed.stderr


def test_sweep_records_a_failing_method_and_finishes_the_others(tmp_path: Path):
    broken = tmp_path / "broken.yaml"
    # r_a must be divisible by num_experts: this preset loads but fails when the adapter is built.
    broken.write_text("method: teamlora\ndescription: deliberately broken\nparams:\n  r_a: 30\n  num_experts: 4\n")
    out = tmp_path / "results"
    one_task = ["--model", "tiny-llama", "--tasks", "cme_mini_boolq", "--train-cap", "12", "--batch-size", "4"]
    proc = _cli(
        "sweep",
        *one_task,
        "--limit",
        "3",
        "--adapters",
        f"lora,{broken},hydralora",
        "--max-steps",
        "2",
        "--output",
        str(out),
        "--no-report",
        check=False,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "1 of 4 runs failed: " in proc.stdout
    # (a preset that fails validation has no identity, so its failed record carries the bare readable id)
    statuses = {re.sub(r"--[0-9a-f]{8}$", "", d.name): _record(out, d.name)["status"] for d in out.iterdir()}
    assert statuses == {
        "tiny-llama--none--cme-mini--s0": "success",
        "tiny-llama--lora--cme-mini--s0": "success",
        "tiny-llama--broken--cme-mini--s0": "failed",
        "tiny-llama--hydralora--cme-mini--s0": "success",
    }
    err = _record(out, "tiny-llama--broken--cme-mini--s0")["error"]
    assert "r_a" in err["message"] or "divisible" in err["message"]


def test_saved_lora_scores_match_plain_lm_eval(tmp_path: Path, monkeypatch):
    """`cme-bench eval --adapter-path` gives exactly what `lm_eval --model hf ... peft=` gives on the same items."""
    monkeypatch.setenv("CME_BENCH_CACHE", str(tmp_path / "cache"))
    from cme_bench.models import materialize

    model_dir = materialize("tiny-llama")
    out = tmp_path / "results"
    args = ["--model", str(model_dir), "--tasks", TASKS, "--limit", "6", "--no-report", "--no-baseline"]
    assert main(["train", *args[:4], "--adapter", "lora", "--max-steps", "3", "--train-cap", "24",
                 "--lr", "5e-2", "--output", str(out)]) == 0  # fmt: skip
    adapter = next(out.glob("*--train--*")) / "adapter"
    assert main(["eval", *args, "--adapter-path", str(adapter), "--eval-batch-size", "4", "--output", str(out)]) == 0
    ours = _record(out, next(p.name for p in out.glob("*--eval--*")))
    lm_out = tmp_path / "lm_eval"
    subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
         f"pretrained={model_dir},peft={adapter},dtype=float32", "--include_path", str(REPO / "tasks"),
         "--tasks", TASKS, "--limit", "6", "--batch_size", "4", "--device", "cpu", "--log_samples",
         "--output_path", str(lm_out)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert_scores_match_lm_eval(ours, out, lm_out, TASKS.split(","))


def test_eval_refuses_a_folder_that_is_not_an_adapter(tmp_path: Path, capsys):
    assert main(["eval", "--model", "tiny-llama", "--adapter-path", str(tmp_path), "--output", str(tmp_path)]) == 2
    assert "adapter_config.json" in capsys.readouterr().err


def test_two_processes_train_one_adapter(tmp_path: Path):
    """torchrun with 2 CPU processes (gloo): both ranks finish and hold the same adapter."""
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
         "-m", "cme_bench.cli", "train", *TRAIN, "--adapter", "teamlora", "--max-steps", "3",
         "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = _record(tmp_path, "tiny-llama--teamlora--cme-mini--s0--train")
    assert rec["status"] == "success"
    assert rec["training"]["world_size"] == 2
    digests = rec["training"]["rank_adapter_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]
    # 3 steps x 4 per process x 2 processes
    assert rec["training"]["examples"] == 24


@pytest.mark.slow
def test_smollm2_teamlora_learns_the_label_format(tmp_path: Path):
    """Real model, real data: a short TeamLoRA run lowers the loss and beats the base model on held-out items."""
    out = tmp_path / "results"
    args = [
        "--model",
        "smollm2-135m",
        "--tasks",
        "cme_mini_sst2,cme_mini_boolq",
        "--limit",
        "24",
        "--output",
        str(out),
    ]
    rc = main(["run", *args, "--adapter", "teamlora", "--max-steps", "30", "--train-cap", "200", "--no-report"])
    assert rc == 0
    base = _record(out, "smollm2-135m--none--cme-mini--s0")
    rec = _record(out, "smollm2-135m--teamlora--cme-mini--s0")
    curve = [loss for _, loss in rec["training"]["loss_curve"]]
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5
    mean = lambda r: sum(m["value"] for m in r["metrics"].values()) / len(r["metrics"])  # noqa: E731
    assert mean(rec) > mean(base)


def test_backend_typo_names_the_nearest_registered_backend(capsys):
    from cme_bench.backends import BACKENDS

    assert main(["eval", "--adapter", "none", "--model", "tiny-llama", "--backend", "vlm"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean 'vllm'?" in err and "Available: hf, vllm" in err
    assert BACKENDS.names() == ["hf", "vllm"]


def test_cli_presets_and_trainer_read_one_set_of_training_defaults(tmp_path: Path):
    """The flags' defaults and help text come from TrainConfig's fields; presets use its field names."""
    import argparse
    from dataclasses import fields

    from cme_bench.adapters import preset_from_dict
    from cme_bench.config import TrainConfig, add_run_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    cfg = config_from_args(parser.parse_args([]))
    for f in fields(TrainConfig):
        assert getattr(cfg, f.name) == getattr(TrainConfig(), f.name), f.name
    actions = {a.dest: a for a in parser._actions}
    assert actions["learning_rate"].option_strings == ["--lr"]
    assert actions["learning_rate"].default == TrainConfig().learning_rate
    lr_field = next(f for f in fields(TrainConfig) if f.name == "learning_rate")
    assert actions["learning_rate"].help.startswith(lr_field.metadata["help"])
    assert "hf | vllm" in actions["backend"].help
    assert isinstance(cfg, TrainConfig)  # the trainer receives the run's own config: nothing is copied
    with pytest.raises(ConfigError, match="Did you mean 'max_seq_len'"):
        preset_from_dict({"method": "lora", "training": {"max_seq_length": 1024}}, name="x")


class _OneEngineHF:
    """A third backend for the test: HF's sessions, but every target in one group (as vLLM groups LoRA adapters)."""

    def __init__(self) -> None:
        from cme_bench.hf_backend import backend as hf

        self.hf, self.opened = hf, []

    def check(self) -> None:
        self.hf.check()

    def group_key(self, target):
        return "one"

    def open(self, targets, *, seed, batch_size):
        self.opened.append([t.adapter_dir for t in targets])
        return self.hf.open(targets, seed=seed, batch_size=batch_size)


def test_a_registered_backend_drives_the_sweep_through_its_grouping_hook(tmp_path: Path, monkeypatch):
    """Registering a backend is all it takes: the sweep trains both adapters, then opens ONE session for the base and
    both adapters, as the backend's ``group_key`` says; the runner names no backend."""
    from cme_bench.backends import BACKENDS

    backend = _OneEngineHF()
    monkeypatch.setitem(BACKENDS._items, "one-engine-hf", backend)
    out = tmp_path / "results"
    one_task = ["--model", "tiny-llama", "--tasks", "cme_mini_boolq", "--train-cap", "8", "--batch-size", "4"]
    argv = ["sweep", *one_task, "--limit", "2", "--adapters", "lora,moslora", "--max-steps", "2", "--lr", "5e-2"]
    assert main([*argv, "--backend", "one-engine-hf", "--output", str(out), "--no-report"]) == 0
    assert len(backend.opened) == 1 and len(backend.opened[0]) == 3
    records = [json.loads(p.read_text()) for p in out.glob("*/run.json")]
    assert sorted(r["config"]["adapter"] for r in records) == ["lora", "moslora", "none"]
    for rec in records:
        assert rec["status"] == "success" and rec["evaluation"]["backend"] == "one-engine-hf"
        assert rec["metrics"]["cme_mini_boolq"]["n"] == 2


def test_tasks_together_score_as_one_at_a_time():
    """All tasks' requests in one lm-eval call give each task exactly the per-task loop's results, handed over in
    order, task by task (what the run record writes)."""
    from cme_bench.backends import EvalTarget
    from cme_bench.evaluate import evaluate
    from cme_bench.models import load_model

    loaded = load_model("tiny-llama")
    target = EvalTarget("tiny-llama", None, model=loaded.model, tokenizer=loaded.tokenizer)
    tasks = [*TASKS.split(","), "cme_mini_nq_open"]  # two multiple-choice tasks and a generation task
    runs = {}
    for one in (True, False):
        done: list = []
        out = evaluate(
            target, tasks, limit=3, batch_size=4, progress=False, one_at_a_time=one, on_task_done=done.append
        )
        assert [r.task for r in done] == tasks
        runs[one] = {t: (r.metric, r.value, r.n, [s["prediction"] for s in r.samples]) for t, r in out.tasks.items()}
        assert set(out.lm_eval["results"]) == set(tasks)
    assert runs[True] == runs[False]
