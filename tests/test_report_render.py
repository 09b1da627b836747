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
    assert first.startswith("| 1") and "**81.2**" in first
    assert md.splitlines()[1].count("---:") == sum(c.ordered for c in table.columns)


def test_csv_has_raw_values_and_intervals(table):
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert [r["run"] for r in rows][0] == EVIL  # CSV holds the raw text; it is not a markup format
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
    assert r"\textbf{81.2}" in tex and r"\textless{}script\textgreater{}" in tex and "<script>" not in tex
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
        "costs.html", "domains/knowledge.html", "domains/reasoning.html", "index.html", "methods.html",
        "runs/tiny--broken.html", "runs/tiny--lora.html", "runs/tiny--none.html", "runs/tiny--teamlora.html",
        "samples/t_a.html", "samples/t_b.html", "samples/t_c.html", "tasks/t_a.html", "tasks/t_b.html",
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
    assert "McNemar" in (out / "methods.html").read_text() and "Statistical methods" in (out / "leaderboard.md").read_text()


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
    assert cli_main(["report", "--results", str(results), "--bootstrap", "100", "--no-html"]) == 0


def test_cli_report_errors(tmp_path, capsys):
    assert cli_main(["report", "--results", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli_main(["report", "--results", str(tmp_path / "empty")]) == 2
    assert "no readable run records" in capsys.readouterr().err
