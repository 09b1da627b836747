"""Renderers (Markdown, CSV, LaTeX, JSON, HTML) and the `cme-bench report` command on hand-built records."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from test_report_fixtures import SCORES, build_world, fake_task_info, write_run

from cme_bench.cli import main as cli_main
from cme_bench.report.analysis import analyse
from cme_bench.report.build import leaderboard_table
from cme_bench.report.frames import frame
from cme_bench.report.load import load_runs
from cme_bench.report.pipeline import build_report, write_site, write_text_outputs
from cme_bench.report.render_text import latex_escape, to_csv, to_json, to_latex, to_markdown

EVIL = "<script>alert(1)</script>"


@pytest.fixture
def table(tmp_path: Path):
    return leaderboard_table(analyse(load_runs(build_world(tmp_path / "results")), fake_task_info, n_boot=200))


def test_markdown_escapes_and_bolds_best(table):
    md = to_markdown(table)
    assert EVIL not in md and "&lt;script&gt;alert(1)&lt;/script&gt;" in md
    first = md.splitlines()[2]
    # four documents per task separate nothing: the top score is not bold; the base model's 0 parameters are
    assert first.startswith("| 1") and "81.2" in first and "**81.2**" not in first
    assert "| **0** |" in md
    assert md.splitlines()[1].count("---:") == sum(c.ordered for c in table.columns)


def test_csv_has_raw_values_and_intervals(table):
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert rows[0]["run"] == EVIL  # CSV holds the raw text; it is not a markup format
    assert float(rows[0]["cme_avg_domains"]) == pytest.approx(0.8125)
    assert float(rows[0]["cme_avg_domains_lo"]) <= 0.8125 <= float(rows[0]["cme_avg_domains_hi"])
    assert rows[3]["status"] == "failed" and rows[3]["cme_avg_domains"] == ""


def test_csv_guards_spreadsheet_formulas(tmp_path):
    write_run(tmp_path, "r", name="=HYPERLINK(1)", scores=SCORES["lora"])
    table = leaderboard_table(analyse(load_runs(tmp_path), fake_task_info, n_boot=50))
    assert "'=HYPERLINK(1)" in to_csv(table)


def test_latex_escapes_and_bolds(table):
    assert latex_escape("50% & co_x $#{}") == r"50\% \& co\_x \$\#\{\}"
    tex = to_latex(table)
    assert r"\bfseries 0 " in tex and r"\textless{}script\textgreater{}" in tex and "<script>" not in tex
    assert tex.count(r"\\") == len(table.rows) + 1  # header + one line per row


def test_json_round_trip(table):
    doc = json.loads(to_json({"leaderboard": table}))
    rows = doc["tables"]["leaderboard"]["rows"]
    assert rows[0]["cells"]["cme_avg_domains"]["value"] == pytest.approx(0.8125)
    assert rows[0]["cells"]["run"]["value"] == EVIL and rows[3]["status"] == "failed"


def test_site_is_static_and_escaped(tmp_path):
    results = build_world(tmp_path / "results")
    out = tmp_path / "site"
    report = build_report(results, task_info=fake_task_info, out=out, n_boot=200)
    index = write_site(report, out)
    write_text_outputs(report, out)
    pages = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.html"))
    assert pages == [
        "costs.html",
        "domains/knowledge.html",
        "domains/reasoning.html",
        "index.html",
        "methods.html",
        "runs/tiny--broken.html",
        "runs/tiny--lora.html",
        "runs/tiny--none.html",
        "runs/tiny--teamlora.html",
        "samples/t_a.html",
        "samples/t_b.html",
        "samples/t_c.html",
        "tasks/t_a.html",
        "tasks/t_b.html",
        "tasks/t_c.html",
    ]
    for page in out.rglob("*.html"):
        html = page.read_text()
        assert EVIL not in html, page
        # no network: no absolute URL except the SVG namespace, which is an identifier, not a fetch
        assert not re.search(r"(src|href)=\"(https?:)?//", html), page
        assert "http://www.w3.org/2000/svg" in html or "https://" not in html
    board = index.read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in board
    assert 'href="tasks/t_a.html"' in board and 'href="runs/tiny--teamlora.html"' in board
    samples = (out / "samples" / "t_a.html").read_text()
    data = re.search(r'<script type="application/json" id="samples-data">(.*?)</script>', samples, re.S).group(1)
    assert "\\u003cscript\\u003e" in data
    parsed = json.loads(data)
    assert parsed["binary"] and parsed["doc_ids"] == ["0", "1", "2", "3"] and len(parsed["runs"]) == 3
    assert "<svg" in (out / "runs" / "tiny--teamlora.html").read_text()  # loss curve + expert heatmap
    assert "CUDA out of memory" in (out / "runs" / "tiny--broken.html").read_text()
    assert "Pareto front" in (out / "costs.html").read_text()
    methods = (out / "methods.html").read_text()
    assert "McNemar" in methods and "200 resamples" in methods  # the parameters this report used
    assert "Statistical methods" in (out / "leaderboard.md").read_text()


def test_profile_costs_become_columns(tmp_path):
    results = build_world(tmp_path / "results")
    rows = [{"model": "tiny-llama", "adapter": "lora", "decode_ms_per_token": 3.5, "tokens_per_second": 900}]
    (results / "profile.json").write_text(json.dumps(rows))
    report = build_report(results, task_info=fake_task_info, n_boot=50)
    table = report.leaderboard
    assert table.cell("tiny--lora", "cost:decode_ms_per_token").value == 3.5
    assert table.cell("tiny--none", "cost:decode_ms_per_token").value is None
    col = table.columns[table.index("cost:tokens_per_second")]
    assert col.higher_is_better is True and col.group == "cost"


def test_cli_report_end_to_end(tmp_path, capsys, monkeypatch):
    import cme_bench.report.taskmeta as taskmeta

    monkeypatch.setattr(taskmeta, "default_task_info", lambda: fake_task_info)
    results = build_world(tmp_path / "results")
    assert cli_main(["report", "--results", str(results), "--bootstrap", "100"]) == 0
    out = results / "leaderboard"
    assert (out / "index.html").is_file() and (out / "leaderboard.tex").is_file()
    assert "3 successful" in capsys.readouterr().out
    # a second run must not read the leaderboard folder (or anything in it) as run records
    opened = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    assert cli_main(["report", "--results", str(results), "--bootstrap", "100", "--open"]) == 0
    assert opened == [(out / "index.html").resolve().as_uri()]
    assert not list(out.rglob("*.tmp"))  # every file was renamed into place


def test_cli_report_errors(tmp_path, capsys):
    assert cli_main(["report", "--results", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli_main(["report", "--results", str(tmp_path / "empty")]) == 2
    assert "no readable run records" in capsys.readouterr().err


def test_odd_but_valid_records_never_crash_the_site(tmp_path):
    """Strange field values (wrong types, missing sections, string doc ids) render; nothing is averaged wrongly."""
    results = tmp_path / "results"
    write_run(
        results,
        "odd",
        name=12345,
        scores={"t_a": [1, 0]},
        extra={
            "training": {"loss_curve": "oops", "expert_load": [1, 2], "seconds": "slow"},
            "error": "plain string",
            "adapter": {"method": "x" * 300},
            "environment": None,
        },
    )
    folder = write_run(results, "strid", scores={"t_a": [1, 1]})
    (folder / "samples" / "t_a.jsonl").write_text('{"doc_id": "q-1", "score": 1}\n{"doc_id": "q-2", "score": 0.5}\n')
    write_run(results, "nan", scores={"t_a": [1]}, extra={"metrics": {"t_a": {"metric": "acc", "value": "0.5"}}})
    out = tmp_path / "site"
    report = build_report(results, task_info=fake_task_info, out=out, n_boot=50)
    write_site(report, out)
    write_text_outputs(report, out)
    a = report.analysis
    assert a.scores[("nan", "t_a")].value == 1.0  # a non-numeric recorded value falls back to the samples' mean
    assert a.scores[("strid", "t_a")].value == 1.0 and a.items["t_a"].doc_ids[:2] == [0, 1]
    assert "12345" in (out / "runs" / "odd.html").read_text()


def test_only_failed_runs(tmp_path):
    results = tmp_path / "results"
    write_run(results, "f1", status="failed")
    write_run(results, "f2", status="cancelled")
    out = tmp_path / "site"
    report = build_report(results, task_info=fake_task_info, out=out, n_boot=50)
    write_site(report, out)
    write_text_outputs(report, out)
    assert [r.status for r in report.leaderboard.rows] == ["failed", "cancelled"]  # by run id
    assert report.analysis.ranking_key is None and "no runs with both values" in (out / "costs.html").read_text()


def _write_train_only(results: Path, run_id: str, name: str) -> None:
    """A `cme-bench train` record: success, training filled, no evaluation and no metrics (other tasks and limit)."""
    config = {"model": "tiny-llama", "adapter": "lora", "suite": "cme-mini", "seed": 0, "tasks": ["t_a"], "limit": 20}
    write_run(results, run_id, name=name, extra={"evaluation": None, "samples": {}, "config": config})


def test_train_only_record_is_listed_under_the_tables_never_a_row(tmp_path):
    results = build_world(tmp_path / "results")
    _write_train_only(results, "tiny--lora--train", "Zq & <i>")
    out = tmp_path / "site"
    report = build_report(results, task_info=fake_task_info, out=out, n_boot=50)
    index = write_site(report, out).read_text()
    write_text_outputs(report, out)
    a = report.analysis
    # never a row, never an evaluation set of its own
    assert report.others == [] and len(a.eval_sets) == 1
    tables = [report.leaderboard, *report.tasks.values(), *report.domains.values()]
    assert "tiny--lora--train" not in [row.key for t in tables for row in t.rows]
    assert all(r.run_id != "tiny--lora--train" for e in a.entries for r in e.runs)
    assert [r.run_id for r in a.trained_only] == ["tiny--lora--train"]
    assert "Evaluated on other documents" not in index
    # listed below the tables, escaped, with its run page and the command that evaluates it
    section = index[index.index("Trained, not evaluated yet") :]
    assert 'href="runs/tiny--lora--train.html"' in section and "Zq &amp; &lt;i&gt;" in section
    command = f"cme-bench eval --model tiny-llama --adapter-path {results / 'tiny--lora--train' / 'adapter'}"
    assert command in section
    assert "1 trained, not evaluated yet" in index and "not successful" in index  # the failed run still counts
    assert "tiny--lora--train" in (out / "runs" / "tiny--lora--train.html").read_text()  # its run page
    # text outputs: no score row; Markdown lists it like the page
    for name in ("leaderboard.csv", "leaderboard.tex"):
        assert "lora--train" not in (out / name).read_text() and "Zq" not in (out / name).read_text(), name
    md = (out / "leaderboard.md").read_text()
    assert md.count("Zq &amp; &lt;i&gt;") == 1 and command in md.split("## Trained, not evaluated yet")[1]
    data = json.loads((out / "leaderboard.json").read_text())
    assert data["trained_not_evaluated"] == ["tiny--lora--train"]
    assert all(r["key"] != "tiny--lora--train" for r in data["tables"]["leaderboard"]["rows"])
    assert "tiny--lora--train" not in set(frame(results, task_info=fake_task_info)["run"])


def test_only_train_only_records_and_an_evaluated_one_leaves_the_list(tmp_path):
    results = tmp_path / "results"
    _write_train_only(results, "t1", "t1")
    out = tmp_path / "site"
    report = build_report(results, task_info=fake_task_info, out=out, n_boot=50)
    index = write_site(report, out).read_text()
    write_text_outputs(report, out)
    assert report.leaderboard.rows == () and report.others == [] and report.analysis.eval_sets == {}
    assert 'href="runs/t1.html"' in index and (out / "runs" / "t1.html").is_file()
    # `eval --adapter-path` of t1 names it as the adapter's provenance: t1 is no longer "not evaluated yet"
    adapter = {"method": "lora", "preset": "lora", "path": "adapter", "provenance": {"run_id": "t1"}}
    write_run(results, "t1--eval", scores={"t_a": [1, 0]}, extra={"adapter": adapter})
    report = build_report(results, task_info=fake_task_info, out=out, n_boot=50)
    assert report.analysis.trained_only == [] and [r.key for r in report.leaderboard.rows] == ["t1--eval"]
    assert "Trained, not evaluated yet" not in write_site(report, out).read_text()


def _tiny_table():
    from cme_bench.report.table import Cell, Column, Row, Table

    columns = (
        Column("run", "Run", "info"),
        Column("acc", "Acc", "task", True, unit="%"),
        Column("time", "Time", "efficiency", False),
    )
    rows = (
        Row("a", (Cell("a|b", "a|b"), Cell(0.5, "50.0", (0.4, 0.6), "[40.0, 60.0]", 0.05), Cell(10.0, "10"))),
        Row("b", (Cell("b_1", "b_1"), Cell(0.7, "70.0", None, "", 0.1), Cell(20.0, "20"))),
    )
    return Table("T", columns, rows, ("note",))


def test_markdown_golden():
    assert to_markdown(_tiny_table(), intervals_for=("task",)) == (
        "| Run | Acc | Time |\n"
        "|---|---:|---:|\n"
        "| a\\|b | 50.0 \\[40.0, 60.0\\] | **10** |\n"
        "| b\\_1 | **70.0** | 20 |\n"
        "\n_note_\n"
    )


def test_latex_golden():
    lines = to_latex(_tiny_table(), caption="Cap").splitlines()
    assert lines[0] == r"% requires \usepackage{booktabs}"
    assert lines[5:7] == [r"\resizebox{\linewidth}{!}{%", r"\begin{tabular}{lrr}"]
    assert lines[8] == r"Run & Acc & Time \\"
    assert lines[10] == r"a\textbar{}b & 50.0{\scriptsize$\pm$5.0} & \bfseries 10 \\"
    assert lines[11] == r"b\_1 & \bfseries 70.0{\scriptsize$\pm$10.0} & 20 \\"
    assert r"\caption{Cap}" in lines and r"\end{tabular}}" in lines


def test_csv_golden():
    assert to_csv(_tiny_table()) == (
        "run,acc,acc_lo,acc_hi,acc_stderr,time,time_lo,time_hi,time_stderr\n"
        "a|b,0.5,0.4,0.6,0.05,10.0,,,\n"
        "b_1,0.7,,,0.1,20.0,,,\n"
    )
