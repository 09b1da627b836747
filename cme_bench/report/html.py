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
from cme_bench.report.analysis import Analysis
from cme_bench.report.build import AGGREGATE_LABELS, fmt_interval, fmt_score, percent_tasks, slug
from cme_bench.report.load import RunRecord, load_samples
from cme_bench.report.stats import ALPHA, METHODS, pareto_front
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
        path.parent.mkdir(parents=True, exist_ok=True)
        html = self.env.get_template(template).render(**self.common, root=root, **context)
        path.write_text(html, encoding="utf-8")
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
        with_samples.sort(key=lambda r: (not r.is_base, -sign * (a.scores[(r.run_id, task)].value or 0.0)))
        bases = [r for r in with_samples if r.is_base]
        chosen = bases + [r for r in with_samples if not r.is_base][: max(0, self.max_sample_runs - len(bases))]
        chosen.sort(key=lambda r: -sign * (a.scores[(r.run_id, task)].value or 0.0))
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
        a = self.analysis
        pct = self.percent
        scores = []
        for task in run.metrics:
            s = a.scores.get((run.run_id, task))
            meta = a.tasks.get(task)
            p = pct.get(task, True)
            scores.append(
                {
                    "name": meta.display_name if meta else task,
                    "slug": slug(task),
                    "domain": meta.domain if meta else "",
                    "metric": run.metrics[task].metric,
                    "value": fmt_score(s.value if s else run.metrics[task].value, p),
                    "interval": fmt_interval(s.interval, p) if s else "",
                    "stderr": fmt_score(s.stderr, p) if s else "—",
                    "n": s.n if s and s.n is not None else "—",
                    "has_samples": bool(s and s.source == "samples"),
                }
            )
        training = run.section("training")
        loss = training.get("loss_curve") or []
        loss_svg = svg.line_chart(_pairs(loss), title="training loss", xlabel="step", ylabel="loss") if loss else None
        load = training.get("expert_load") or {}
        heat = None
        if isinstance(load, Mapping) and load:
            rows = [(str(k), v) for k, v in load.items() if isinstance(v, list)]
            rows = [(k, [x for x in v if isinstance(x, (int, float))]) for k, v in rows]
            heat = svg.heatmap(rows, title="expert load")
        error = run.data.get("error")
        error_text = str(error) if error else None
        if isinstance(error, Mapping):
            error_text = f"{error.get('type', '')}: {error.get('message', '')}\n\n{error.get('traceback', '')}"
        sections = [
            {"title": t, "text": json.dumps(run.data.get(k), indent=2, ensure_ascii=False, default=str)}
            for t, k in (
                ("Configuration", "config"),
                ("Model", "model"),
                ("Adapter", "adapter"),
                ("Training", "training"),
                ("Evaluation", "evaluation"),
                ("Seeds", "seeds"),
                ("Environment", "environment"),
                ("Costs", "costs"),
            )
            if run.data.get(k) is not None and k != "evaluation"
        ]
        return self.write(
            f"runs/{slug(run.run_id)}.html",
            "run.html.j2",
            root="../",
            title=f"Run {run.name}",
            run=run,
            data=run.data,
            record_path=str(run.path),
            error=error_text,
            scores=scores,
            loss_svg=loss_svg,
            heatmap_svg=heat,
            sections=sections,
        )

    def costs_page(self, table: Table) -> Path:
        a, key = self.analysis, self.analysis.ranking_key
        runs = [
            r
            for r in a.ok_runs
            if key
            and a.aggregates.get((r.run_id, key)) is not None
            and a.aggregates[(r.run_id, key)].value is not None
        ]
        scores = [a.aggregates[(r.run_id, key)].value for r in runs]
        figures, fronts = {}, []
        for name, section, field, label, log_x, unit in (
            ("params_svg", "adapter", "trainable_parameters", "trainable parameters", True, ""),
            ("time_svg", "training", "seconds", "training time (s)", False, " s"),
        ):
            costs = [_cost(r, section, field) for r in runs]
            pts = [(c, s, r.name) for c, s, r in zip(costs, scores, runs)]
            front = pareto_front(costs, scores)
            figures[name] = svg.scatter(
                pts,
                front,
                title=f"{self.ranking_label} vs {label}",
                xlabel=label,
                ylabel=f"{self.ranking_label} (%)",
                log_x=log_x,
            )
            fronts.append(
                {
                    "title": label,
                    "points": [
                        {
                            "name": runs[i].name,
                            "slug": slug(runs[i].run_id),
                            "score": fmt_score(scores[i], True),
                            "cost": f"{costs[i]:.4g}{unit}",
                        }
                        for i in front
                    ],
                }
            )
        return self.write(
            "costs.html",
            "costs.html.j2",
            title="Cost plot",
            ranking_label=self.ranking_label,
            fronts=fronts,
            **figures,
        )

    def methods_page(self) -> Path:
        return self.write(
            "methods.html",
            "methods.html.j2",
            title="Statistical methods",
            methods_html=markdown_lite(METHODS),
            tasks=list(self.analysis.tasks.values()),
        )


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + f" … [{len(text) - MAX_TEXT} more characters]"


def _pairs(points: Any) -> list[tuple[float, float]]:
    out = []
    for p in points if isinstance(points, list) else []:
        if isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p):
            out.append((float(p[0]), float(p[1])))
    return out


def _cost(run: RunRecord, section: str, field: str) -> float:
    value = run.section(section).get(field)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if run.is_base and section in ("adapter", "training"):
        return 0.0  # the base model trains nothing and takes no training time
    return float("nan")
