"""Result integrity: run identity from content, reuse only on an exact match (the base row task by task), adapter
training provenance, seed lists, and user tasks (plain lm-eval YAML) as first-class citizens. All on tiny-llama."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cme_bench import identity, results
from cme_bench.cli import main
from cme_bench.config import RunConfig

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = ["--model", "tiny-llama", "--adapter", "none", "--no-report"]
DIGEST = re.compile(r"--[0-9a-f]{8}$")


def _runs(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("*/run.json"))}


def _ident(cfg: RunConfig, tasks: list[str], **kw) -> identity.Identity:
    return identity.compute(cfg, tasks, **kw)


# ------------------------------------------------------------------------------------------------------------------
# Identity from content (no model run)


def test_one_adapter_param_changes_the_identity_and_the_preset_name_does_not(tmp_path: Path) -> None:
    from cme_bench.adapters import load_preset

    for name, r in (("a", 8), ("b", 8), ("c", 16)):
        (tmp_path / f"{name}.yaml").write_text(f"method: lora\nparams:\n  r: {r}\n")
    cfg = RunConfig(model="tiny-llama", tasks=["cme_mini_cb"])
    digests = {n: _ident(cfg, ["cme_mini_cb"], preset=load_preset(tmp_path / f"{n}.yaml")).digest for n in "abc"}
    assert digests["a"] == digests["b"]  # same method and parameters under another name: the same run
    assert digests["a"] != digests["c"]
    # The training budget and the limit are part of it too; the output folder and the eval batch size are not.
    preset = load_preset(tmp_path / "a.yaml")
    same = RunConfig(model="tiny-llama", tasks=["cme_mini_cb"], output=str(tmp_path), eval_batch_size=3)
    assert _ident(same, ["cme_mini_cb"], preset=preset).digest == digests["a"]
    fewer = _ident(RunConfig(model="tiny-llama", tasks=["cme_mini_cb"], max_steps=7), ["cme_mini_cb"], preset=preset)
    assert fewer.digest != digests["a"]
    lim = _ident(RunConfig(model="tiny-llama", limit=5), ["cme_mini_cb"])
    assert lim.eval_set != _ident(RunConfig(model="tiny-llama", limit=10), ["cme_mini_cb"]).eval_set


PLAIN_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    train: {data}/train.jsonl
    test: {data}/test.jsonl
training_split: train
test_split: test
output_type: generate_until
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 4
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1
  display_name: "Plain capitals"
  domain: geography
  chance: 0.0
  suite: my-suite
"""


def _plain_task(folder: Path, name: str = "my_plain_qa", n_train: int = 8, n_test: int = 6) -> Path:
    """A plain lm-eval task (no cme-bench hooks) over local JSONL files written here."""
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    rows = [{"question": f"capital of country {i}?", "answer": f"city{i}"} for i in range(n_train + n_test)]
    for part, chunk in (("train", rows[:n_train]), ("test", rows[n_train:])):
        (data / f"{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chunk))
    yaml_file = folder / "tasks" / f"{name}.yaml"
    yaml_file.parent.mkdir(parents=True, exist_ok=True)
    yaml_file.write_text(PLAIN_YAML.format(name=name, data=data))
    return yaml_file


def test_one_task_yaml_line_or_data_row_changes_the_identity(tmp_path: Path) -> None:
    from cme_bench import taskreg

    yaml_file = _plain_task(tmp_path)
    include = [yaml_file.parent]
    assert taskreg.suite_tasks("my-suite", include) == ["my_plain_qa"]  # metadata.suite alone makes a suite
    assert "my-suite" in taskreg.suites(include)
    before = identity.task_digest("my_plain_qa", include)
    original = yaml_file.read_text()
    yaml_file.write_text(original.replace("max_gen_toks: 4", "max_gen_toks: 5"))
    assert identity.task_digest("my_plain_qa", include) != before
    yaml_file.write_text(original.replace('display_name: "Plain capitals"', 'display_name: "Capitals"'))
    assert identity.task_digest("my_plain_qa", include) == before  # cosmetic metadata: same numbers
    yaml_file.write_text(original)
    test_file = tmp_path / "data" / "test.jsonl"
    test_file.write_text(test_file.read_text().replace("city9", "town9"))
    assert identity.task_digest("my_plain_qa", include) != before
    # The digest does not depend on where the checkout or the task folder lives.
    cfg = identity.task_config("cme_mini_cb")
    assert str(Path.cwd()) not in json.dumps(cfg)
    assert cfg["process_docs"]["function"] == "cme_bench.taskdata.process_cb"


# ------------------------------------------------------------------------------------------------------------------
# Reuse: exact match only, the base row task by task


def test_eval_tasks_a_then_b_returns_b_and_merges_into_the_base_row(tmp_path: Path, capsys) -> None:
    out = tmp_path / "results"
    common = [*BASE, "--limit", "3", "--output", str(out)]
    assert main(["eval", *common, "--tasks", "cme_mini_cb"]) == 0
    capsys.readouterr()
    assert main(["eval", *common, "--tasks", "cme_mini_copa"]) == 0
    printed = capsys.readouterr().out
    (run_id, rec), = _runs(out).items()  # fmt: skip
    assert rec["metrics"]["cme_mini_copa"]["n"] == 3  # B was evaluated, not A's record returned
    assert DIGEST.search(run_id) and run_id.startswith("tiny-llama--none--cme-mini--s0--")
    assert sorted(rec["metrics"]) == ["cme_mini_cb", "cme_mini_copa"]  # merged at task granularity
    assert sorted(rec["evaluation"]["lm_eval"]["results"]) == ["cme_mini_cb", "cme_mini_copa"]
    assert sorted(rec["identity"]["components"]["evaluation"]["tasks"]) == ["cme_mini_cb", "cme_mini_copa"]
    assert rec["config"]["tasks"] == ["cme_mini_cb", "cme_mini_copa"]
    assert f"{run_id}: evaluated cme_mini_copa and merged into the finished run's 1 task(s)" in printed
    # Both tasks again: nothing to evaluate, and the output says so.
    stamp = (out / run_id / "run.json").stat().st_mtime_ns
    assert main(["eval", *common, "--tasks", "cme_mini_copa,cme_mini_cb"]) == 0
    assert f"reused finished run {run_id} (identical settings); --force to rerun" in capsys.readouterr().out
    assert (out / run_id / "run.json").stat().st_mtime_ns == stamp


def test_a_task_whose_config_changed_is_evaluated_again(tmp_path: Path) -> None:
    from cme_bench import reuse

    tasks = ["cme_mini_cb", "cme_mini_copa"]
    ident = identity.compute(RunConfig(model="tiny-llama", adapter="none", limit=3), tasks)
    recorded = ident.with_tasks({"cme_mini_cb": ident.task_digests["cme_mini_cb"], "cme_mini_copa": "0" * 64})
    rec = results.new_record("r", "base", {})
    metrics = {t: {"metric": "acc", "value": 0.5, "n": 3} for t in tasks}
    rec.update(status="success", identity=recorded.to_dict(), metrics=metrics)
    results.write_json_atomic(tmp_path / "r" / "run.json", rec)
    plan = reuse.plan_evaluation(False, tmp_path / "r", ident, tasks)
    assert (plan.reused, plan.todo) == (["cme_mini_cb"], ["cme_mini_copa"])
    assert reuse.plan_evaluation(True, tmp_path / "r", ident, tasks).todo == tasks  # --force
    other = identity.compute(RunConfig(model="tiny-llama", adapter="none", limit=4), tasks)
    assert reuse.plan_evaluation(False, tmp_path / "r", other, tasks).todo == tasks  # another limit: nothing reused


def test_limit_5_after_limit_10_is_a_new_run(tmp_path: Path) -> None:
    out = tmp_path / "results"
    for limit in ("10", "5"):
        assert main(["eval", *BASE, "--tasks", "cme_mini_cb", "--limit", limit, "--output", str(out)]) == 0
    runs = _runs(out)
    assert sorted(r["metrics"]["cme_mini_cb"]["n"] for r in runs.values()) == [5, 10]
    assert len({r["identity"]["eval_set"] for r in runs.values()}) == 2
    assert len({DIGEST.sub("", name) for name in runs}) == 1  # readable part equal, digest apart


def test_same_folder_name_and_non_ascii_tags_do_not_collide(tmp_path: Path) -> None:
    from cme_bench.models import build_tiny_llama, save_model_folder

    folders = []
    for seed, where in ((0, "a"), (1, "b")):
        folders.append(save_model_folder(*build_tiny_llama(seed=seed), tmp_path / where / "model"))
    out = tmp_path / "results"
    common = ["--adapter", "none", "--tasks", "cme_mini_cb", "--limit", "2", "--no-report", "--output", str(out)]
    assert main(["eval", "--model", str(folders[0]), "--tag", "α", *common]) == 0
    assert main(["eval", "--model", str(folders[1]), "--tag", "β", *common]) == 0
    assert main(["eval", "--model", str(folders[1]), "--tag", "α", *common]) == 0
    runs = _runs(out)
    assert len(runs) == 3
    assert len({r["model"]["fingerprint"] for r in runs.values()}) == 2


# ------------------------------------------------------------------------------------------------------------------
# Provenance travels with the adapter


def test_train_then_eval_records_the_adapters_training_settings_and_costs(tmp_path: Path, capsys) -> None:
    from cme_bench.report.load import load_runs

    out = tmp_path / "results"
    task = ["--model", "tiny-llama", "--tasks", "cme_mini_cb", "--output", str(out)]
    assert main(["train", *task, "--adapter", "lora", "--max-steps", "3", "--lr", "1e-3", "--batch-size", "4"]) == 0
    (train_dir,) = out.glob("*--train--*")
    prov = json.loads((train_dir / "adapter" / "training.json").read_text())
    assert prov["config"]["max_steps"] == 3 and prov["config"]["learning_rate"] == 1e-3
    assert prov["training"]["tokens_per_second"] > 0 and prov["data"]["sources"] == {"cme_mini_cb": 25}
    assert prov["loss"]["first"] > 0 and prov["identity"]["components"]["training"]
    # Evaluated from a copy elsewhere: the record says how the adapter was trained, not the eval defaults.
    copy = tmp_path / "elsewhere" / "my-adapter"
    import shutil

    shutil.copytree(train_dir / "adapter", copy)
    assert main(["eval", *task, "--adapter-path", str(copy), "--limit", "2", "--no-report"]) == 0
    (eval_dir,) = out.glob("*--eval--*")
    rec = json.loads((eval_dir / "run.json").read_text())
    assert (rec["config"]["max_steps"], rec["config"]["learning_rate"], rec["config"]["batch_size"]) == (3, 1e-3, 4)
    assert rec["training"]["seconds"] > 0 and rec["training"]["peak_memory_bytes"] > 0
    assert rec["training"]["tokens_per_second"] == prov["training"]["tokens_per_second"]
    assert rec["costs"]["train_step_ms"] > 0
    assert rec["adapter"]["provenance"]["run_id"] == train_dir.name
    assert rec["identity"]["components"]["training"] == prov["identity"]["components"]["training"]
    # The train-only record is a first-class record: the report reads it instead of calling it malformed.
    ids = {r.run_id: r for r in load_runs(out)}
    assert ids[train_dir.name].ok and not ids[train_dir.name].metrics and ids[eval_dir.name].ok
    # Training again with the same settings is reused, and says so.
    capsys.readouterr()
    assert main(["train", *task, "--adapter", "lora", "--max-steps", "3", "--lr", "1e-3", "--batch-size", "4"]) == 0
    assert f"reused finished run {train_dir.name} (identical settings)" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------------------------
# Seeds


def test_run_with_a_seed_list_makes_one_run_per_seed(tmp_path: Path) -> None:
    out = tmp_path / "results"
    argv = ["run", "--model", "tiny-llama", "--adapter", "lora", "--tasks", "cme_mini_cb", "--max-steps", "2"]
    argv += ["--batch-size", "4", "--train-cap", "8", "--limit", "2", "--seeds", "1,2", "--no-report"]
    assert main([*argv, "--output", str(out)]) == 0
    runs = _runs(out)
    lora = [r for r in runs.values() if r["config"]["adapter"] == "lora"]
    assert sorted(r["config"]["seed"] for r in lora) == [1, 2]
    assert len({r["identity"]["digest"] for r in lora}) == 2
    assert len({r["identity"]["seed_group"] for r in lora}) == 1  # they differ by seed only
    assert len({r["identity"]["eval_set"] for r in runs.values()}) == 1  # base row included: same documents
    assert sum(r["config"]["adapter"] == "none" for r in runs.values()) == 1
    assert main([*argv, "--seed", "3", "--output", str(out)]) == 2  # --seed and --seeds together


def test_a_three_seed_sweep_is_one_aggregated_leaderboard_row(tmp_path: Path) -> None:
    from cme_bench.report.pipeline import build_report

    out = tmp_path / "results"
    argv = ["sweep", "--model", "tiny-llama", "--adapters", "lora", "--tasks", "cme_mini_cb", "--max-steps", "2"]
    argv += ["--batch-size", "4", "--train-cap", "8", "--limit", "3", "--seeds", "1,2,3", "--no-report"]
    assert main([*argv, "--output", str(out)]) == 0
    report = build_report(out, n_boot=20)
    lora = [e for e in report.analysis.entries if e.run.method == "lora"]
    assert len(lora) == 1 and lora[0].n_seeds == 3 and lora[0].seeds == [1, 2, 3]
    assert len(report.analysis.eval_sets) == 1  # the base row and every seed: the same documents


# ------------------------------------------------------------------------------------------------------------------
# User tasks are first-class


def test_unknown_task_fails_before_any_work_with_suggestions(tmp_path: Path, capsys) -> None:
    out = tmp_path / "results"
    argv = ["run", "--model", "tiny-llama", "--adapter", "lora", "--tasks", "cme_mini_cb,cme_mini_rtee"]
    assert main([*argv, "--output", str(out), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "cme_mini_rtee" in err and "cme_mini_rte" in err
    assert not out.exists()  # the base row was not evaluated first
    sweep = ["sweep", "--model", "tiny-llama", "--adapters", "lora", "--tasks", "cme_mini_rtee", "--no-report"]
    assert main([*sweep, "--output", str(out)]) == 2
    assert not out.exists()


def test_plain_lm_eval_yaml_validates_trains_and_evaluates(tmp_path: Path, capsys) -> None:
    yaml_file = _plain_task(tmp_path)
    inc = ["--include-path", str(yaml_file.parent)]
    assert main(["tasks", "validate", *inc, "--task", "my_plain_qa"]) == 0
    printed = capsys.readouterr().out
    assert "metadata.task_type: missing [warning]" in printed and "no problems" in printed
    assert main(["tasks", "validate", *inc, "--task", "my_plain_qa", "--strict"]) == 1
    capsys.readouterr()
    assert main(["tasks", "list", "--all", "--json", *inc]) == 0
    listed = {r["task"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed["my_plain_qa"]["display_name"] == "Plain capitals" and "cme_mini_cb" in listed
    out = tmp_path / "results"
    argv = ["run", "--model", "tiny-llama", "--adapter", "lora", "--tasks", "my_plain_qa", *inc, "--max-steps", "2"]
    assert main([*argv, "--batch-size", "4", "--limit", "4", "--output", str(out), "--no-report"]) == 0
    runs = _runs(out)
    assert len(runs) == 2
    for rec in runs.values():
        assert rec["status"] == "success" and rec["metrics"]["my_plain_qa"]["n"] == 4
        assert rec["metrics"]["my_plain_qa"]["metric"] == "exact_match"
        meta = rec["tasks_meta"]["my_plain_qa"]
        assert meta["display_name"] == "Plain capitals" and meta["domain"] == "geography" and meta["chance"] == 0.0
    trained = next(r for r in runs.values() if r["training"])
    assert trained["training"]["steps"] == 2
    # A report built without the include path still knows the task: from the records' tasks_meta.
    from cme_bench.report.pipeline import build_report

    meta = build_report(out, n_boot=20).analysis.tasks["my_plain_qa"]
    assert (meta.display_name, meta.domain, meta.chance) == ("Plain capitals", "geography", 0.0)
    assert meta.source == "run record"


def test_export_of_no_example_is_an_error_and_data_files_are_checked(tmp_path: Path, capsys) -> None:
    yaml_file = _plain_task(tmp_path)  # evaluation only: no training split
    text = yaml_file.read_text().replace("training_split: train\n", "")
    yaml_file.write_text(re.sub(r"    train: .*\n", "", text))
    inc = ["--include-path", str(yaml_file.parent)]
    assert main(["tasks", "export", "--suite", "my_plain_qa", *inc, "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "the mixture is empty" in capsys.readouterr().err and not (tmp_path / "x.jsonl").exists()
    (tmp_path / "data" / "test.jsonl").unlink()
    assert main(["tasks", "validate", "--no-data", *inc]) == 1
    assert f"data file not found: {tmp_path / 'data' / 'test.jsonl'}" in capsys.readouterr().out


def test_schema_v1_records_still_load(tmp_path: Path) -> None:
    from cme_bench.report.load import load_runs

    rec = results.new_record("m--none--cme-mini--s0", "base", {"model": "m", "adapter": "none", "seed": 0})
    for key in ("identity", "tasks_meta"):
        rec.pop(key)
    rec.update(schema_version=1, status="success", metrics={"t": {"metric": "acc", "value": 0.5, "n": 2}})
    results.write_json_atomic(tmp_path / "m--none--cme-mini--s0" / "run.json", rec)
    (run,) = load_runs(tmp_path)
    assert run.ok and run.metrics["t"].value == 0.5
