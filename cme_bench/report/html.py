"""The static HTML site: leaderboard, a page per domain and per task, per-sample viewers, run pages, cost plot and
the statistical methods.

Jinja2 with autoescape on for every template; data for client-side code travels as ``|tojson`` inside
``<script type="application/json">`` and is read with ``JSON.parse``. All CSS and JS are inline and the pages link to
each other relatively, so the folder works from ``file://`` with no server and no network.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape

from cme_bench import __version__
from cme_bench.report import svg
from cme_bench.report.analysis import Analysis, Score
from cme_bench.report.build import (
    AGGREGATE_LABELS,
    fmt_count,
    fmt_interval,
    fmt_score,
    fmt_seconds,
    percent_tasks,
    slug,
)
from cme_bench.report.files import write_text_replace
from cme_bench.report.load import RunRecord, load_samples
from cme_bench.report.stats import ALPHA, methods_text, pareto_front
from cme_bench.report.table import Cell, Table

TEMPLATES = Path(__file__).resolve().parent / "templates"
MAX_TEXT = 4000  # characters of a prompt/prediction embedded in a sample viewer


def environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,  # every template, whatever its extension
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["table_rows"] = table_rows
    return env


def sort_value(cell: Cell) -> str:
    if cell.value is None:
        return ""
    if isinstance(cell.value, float):
        return repr(cell.value)
    return str(cell.value)


def table_rows(table: Table, root: str) -> Markup:
    """The <tbody> rows of a data table.

    Built in Python rather than in a Jinja macro because a 500-run leaderboard has ~30,000 cells and 37 such tables
    are written; every value still goes through ``escape`` (the same function autoescape uses).
    """
    best = [table.best_rows(c.key) for c in table.columns]
    # Per-column attributes are the same for every row: escape them once.
    col_attrs = [
        f' data-group="{escape(c.group)}" data-domain="{escape(c.domain or "")}" data-key="{escape(c.key)}"'
        + (' data-sticky="1"' if c.key == "run" else "")  # the run name stays visible when scrolling sideways
        for c in table.columns
    ]
    root_e = escape(root)
    out = []
    for r, row in enumerate(table.rows):
        m = row.meta
        row_cls = "" if row.ok else ' class="not-ok"'
        out.append(
            f'<tr data-method="{escape(m.get("method", ""))}" data-model="{escape(m.get("model", ""))}" '
            f'data-status="{escape(row.status)}" data-id="{escape(row.key)}"{row_cls}>'
        )
        for i, cell in enumerate(row.cells):
            title = f' title="{escape(cell.note)}"' if cell.note else ""
            cls = ' class="best"' if r in best[i] else ""
            text = escape(cell.display)
            if cell.href:
                text = f'<a href="{root_e}{escape(cell.href)}">{text}</a>'
            ci = f'<span class="ci">{escape(cell.interval_display)}</span>' if cell.interval_display else ""
            out.append(f'<td{col_attrs[i]} data-v="{escape(sort_value(cell))}"{title}{cls}>{text}{ci}</td>')
        out.append("</tr>\n")
    return Markup("".join(out))


def markdown_lite(text: str) -> Markup:
    """Our own METHODS text to HTML: paragraphs, **bold**, *italic*, `code`; escaped first."""
    paragraphs = []
    for para in text.strip().split("\n\n"):
        p = str(escape(para.replace("\n", " ")))
        p = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", p)
        p = re.sub(r"\*(.+?)\*", r"<em>\1</em>", p)
        p = re.sub(r"`(.+?)`", r"<code>\1</code>", p)
        paragraphs.append(f"<p>{p}</p>")
    return Markup("\n".join(paragraphs))


class Site:
    """Writes every page of the site under ``out``."""

    def __init__(self, analysis: Analysis, out: Path, max_sample_runs: int = 40) -> None:
        self.analysis = analysis
        self.out = out
        self.max_sample_runs = max_sample_runs
        self.env = environment()
        self.common = {
            "version": __version__,
            "n_runs": len(analysis.runs),
            "nav_domains": [{"name": d, "slug": slug(d)} for d in analysis.domains],
        }
        self.percent = percent_tasks(analysis)

    def write(self, name: str, template: str, root: str = "", **context: Any) -> Path:
        path = self.out / name
        write_text_replace(path, self.env.get_template(template).render(**self.common, root=root, **context))
        return path

    def filters(self, table: Table) -> dict[str, list[str]]:
        values = {k: sorted({row.meta.get(k, "") for row in table.rows}) for k in ("method", "model", "status")}
        return {"methods": values["method"], "models": values["model"], "statuses": values["status"]}

    @property
    def ranking_label(self) -> str:
        key = self.analysis.ranking_key
        return AGGREGATE_LABELS[key][0] if key else "—"

    def leaderboard(self, table: Table) -> Path:
        a = self.analysis
        task_links = [
            {"name": m.display_name, "slug": slug(t), "domain": m.domain, "metric": m.primary_metric}
            for t, m in a.tasks.items()
        ]
        return self.write(
            "index.html",
            "leaderboard.html.j2",
            title="Leaderboard",
            table=table,
            n_ok=len(a.ok_runs),
            n_tasks=len(a.tasks),
            n_domains=len(a.domains),
            ranking_label=self.ranking_label,
            alpha=ALPHA,
            task_links=task_links,
            **self.filters(table),
        )

    def table_page(self, name: str, table: Table, intro: list[str], links: list[dict[str, str]]) -> Path:
        return self.write(
            name,
            "table_page.html.j2",
            root="../",
            title=table.title,
            table=table,
            intro=intro,
            links=links,
            **self.filters(table),
        )

    def task_page(self, task: str, table: Table) -> Path:
        m = self.analysis.tasks[task]
        intro = [
            f"Task {m.name} · domain {m.domain} · primary metric {m.primary_metric} · "
            f"{'higher' if m.higher_is_better else 'lower'} is better · chance "
            f"{m.chance if m.chance is not None else 'unknown'} · metadata from the {m.source}.",
            "Δ and p compare each run with the base model (adapter none) of the same base model on their common "
            f"items; * marks p < {ALPHA}.",
        ]
        links = [{"href": f"../samples/{slug(task)}.html", "text": "Per-sample viewer (side by side) →"}]
        return self.table_page(f"tasks/{slug(task)}.html", table, intro, links)

    def domain_page(self, domain: str, table: Table) -> Path:
        intro = [f"The domain column is the mean of its {len(self.analysis.domains[domain])} task(s)."]
        return self.table_page(f"domains/{slug(domain)}.html", table, intro, [])

    def samples_page(self, task: str) -> Path:
        a = self.analysis
        with_samples = [r for r in a.ok_runs if a.scores[(r.run_id, task)].source == "samples"]
        sign = 1 if a.tasks[task].higher_is_better else -1
        with_samples.sort(key=lambda r: -sign * (a.scores[(r.run_id, task)].value or 0.0))
        # The best runs, plus the base-model rows the task page compares against (one per base model).
        chosen = with_samples[: self.max_sample_runs]
        shown = {r.run_id for r in chosen}
        bases = {b.run_id for b in map(a.base_run, with_samples) if b is not None} - shown
        chosen += [r for r in with_samples if r.run_id in bases]
        data = self.sample_data(task, chosen)
        return self.write(
            f"samples/{slug(task)}.html",
            "samples.html.j2",
            root="../",
            title=a.tasks[task].display_name,
            task_slug=slug(task),
            data=data,
            n_items=len(data["doc_ids"]),
            n_runs_shown=len(chosen),
            n_runs_skipped=len(with_samples) - len(chosen),
        )

    def sample_data(self, task: str, runs: list[RunRecord]) -> dict[str, Any]:
        items: dict[str, dict[str, str]] = {}
        out_runs, binary = [], True
        for run in runs:
            preds = {}
            for s in load_samples(run, task):
                key = str(s["doc_id"])
                items.setdefault(key, {"prompt": _text(s.get("prompt")), "target": _text(s.get("target"))})
                preds[key] = [_text(s.get("prediction")), s["score"]]
                binary = binary and s["score"] in (0.0, 1.0)
            out_runs.append({"id": run.run_id, "name": run.name, "preds": preds})
        doc_ids = sorted(items, key=lambda k: (0, int(k)) if k.lstrip("-").isdigit() else (1, k))
        return {"task": task, "binary": binary, "doc_ids": doc_ids, "items": items, "runs": out_runs}

    def run_page(self, run: RunRecord) -> Path:
        loss_svg, heatmap_svg = _run_charts(run)
        return self.write(
            f"runs/{slug(run.run_id)}.html",
            "run.html.j2",
            root="../",
            title=f"Run {run.name}",
            run=run,
            data=run.data,
            record_path=str(run.path),
            error=_error_text(run),
            scores=_run_scores(self.analysis, self.percent, run),
            loss_svg=loss_svg,
            heatmap_svg=heatmap_svg,
            sections=_run_sections(run),
        )

    def costs_page(self, table: Table) -> Path:
        a, key = self.analysis, self.analysis.ranking_key
        runs = [r for r in a.ok_runs if key and a.aggregates.get((r.run_id, key), Score(None)).value is not None]
        scores = [a.aggregates[(r.run_id, key)].value for r in runs]
        params_svg, params_front = _cost_figure(runs, scores, COST_AXES[0], self.ranking_label)
        time_svg, time_front = _cost_figure(runs, scores, COST_AXES[1], self.ranking_label)
        return self.write(
            "costs.html",
            "costs.html.j2",
            title="Cost plot",
            ranking_label=self.ranking_label,
            fronts=[params_front, time_front],
            params_svg=params_svg,
            time_svg=time_svg,
        )

    def methods_page(self) -> Path:
        return self.write(
            "methods.html",
            "methods.html.j2",
            title="Statistical methods",
            methods_html=markdown_lite(methods_text(self.analysis.n_boot)),
            tasks=list(self.analysis.tasks.values()),
        )


def _run_scores(a: Analysis, pct: Mapping[str, bool], run: RunRecord) -> list[dict[str, Any]]:
    rows = []
    for task, metric in run.metrics.items():
        s, meta, p = a.scores.get((run.run_id, task)), a.tasks.get(task), pct.get(task, True)
        rows.append(
            {
                "name": meta.display_name if meta else task,
                "slug": slug(task),
                "domain": meta.domain if meta else "",
                "metric": metric.metric,
                "value": fmt_score(s.value if s else metric.value, p),
                "interval": fmt_interval(s.interval, p) if s else "",
                "stderr": fmt_score(s.stderr, p) if s else "—",
                "n": s.n if s and s.n is not None else "—",
                "has_samples": bool(s and s.source == "samples"),
            }
        )
    return rows


def _run_charts(run: RunRecord) -> tuple[Markup | None, Markup | None]:
    """Loss curve and, for routed adapters, the expert-load heatmap (None where the record has no data)."""
    training = run.section("training")
    loss = _pairs(training.get("loss_curve"))
    loss_svg = svg.line_chart(loss, title="training loss", xlabel="step", ylabel="loss") if loss else None
    load = training.get("expert_load")
    if not isinstance(load, Mapping) or not load:
        return loss_svg, None
    rows = [(str(k), [x for x in v if isinstance(x, (int, float))]) for k, v in load.items() if isinstance(v, list)]
    return loss_svg, svg.heatmap(rows, title="expert load")


def _error_text(run: RunRecord) -> str | None:
    error = run.data.get("error")
    if isinstance(error, Mapping):
        return f"{error.get('type', '')}: {error.get('message', '')}\n\n{error.get('traceback', '')}"
    return str(error) if error else None


RUN_SECTIONS = (
    ("Configuration", "config"),
    ("Model", "model"),
    ("Adapter", "adapter"),
    ("Training", "training"),
    ("Evaluation", "evaluation"),
    ("Seeds", "seeds"),
    ("Environment", "environment"),
    ("Costs", "costs"),
)
CHARTED = ("loss_curve", "expert_load")  # shown as charts, left out of the JSON dump
EVALUATION_SUMMARY = ("backend", "batch_size", "limit", "seconds")  # lm-eval's own dump is too long to show


def _run_sections(run: RunRecord) -> list[dict[str, str]]:
    out = []
    for title, key in RUN_SECTIONS:
        value = run.data.get(key)
        if value is None:
            continue
        if key == "training" and isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if k not in CHARTED}
        if key == "evaluation" and isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if k in EVALUATION_SUMMARY}
        out.append({"title": title, "text": json.dumps(value, indent=2, ensure_ascii=False, default=str)})
    return out


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + f" … [{len(text) - MAX_TEXT} more characters]"


def _pairs(points: Any) -> list[tuple[float, float]]:
    out = []
    for p in points if isinstance(points, list) else []:
        if isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p):
            out.append((float(p[0]), float(p[1])))
    return out


# (record section, field, axis label, log-scale x, unit) of each cost plot
COST_AXES = (
    ("adapter", "trainable_parameters", "trainable parameters", True, fmt_count),
    ("training", "seconds", "training time (s)", False, fmt_seconds),
)


def _cost_figure(runs: list[RunRecord], scores: list[float], axis: tuple, ranking_label: str) -> tuple[Markup, dict]:
    """One scatter plot (score vs a cost) with its Pareto front, and the front as a list for the page."""
    section, field, label, log_x, fmt = axis
    costs = [_cost(r, section, field) for r in runs]
    front = pareto_front(costs, scores)
    points = [(c, s, r.name) for c, s, r in zip(costs, scores, runs)]
    figure = svg.scatter(
        points, front, title=f"{ranking_label} vs {label}", xlabel=label, ylabel=f"{ranking_label} (%)", log_x=log_x
    )
    listed = [
        {
            "name": runs[i].name,
            "slug": slug(runs[i].run_id),
            "score": fmt_score(scores[i], True),
            "cost": fmt(costs[i]),
        }
        for i in front
    ]
    return figure, {"title": label, "points": listed}


def _cost(run: RunRecord, section: str, field: str) -> float:
    value = run.section(section).get(field)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if run.is_base and section in ("adapter", "training"):
        return 0.0  # the base model trains nothing and takes no training time
    return float("nan")
