"""The static HTML site: leaderboard, a page per domain and per task, per-sample viewers, run pages, cost plot and
the statistical methods.

Jinja2 with autoescape on for every template; data for client-side code travels as ``|tojson`` inside
``<script type="application/json">`` and is read with ``JSON.parse``. All CSS and JS are inline and the pages link to
each other relatively, so the folder works from ``file://`` with no server and no network.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape

from cme_bench import __version__
from cme_bench.report import svg
from cme_bench.report.analysis import Analysis, Entry, Score
from cme_bench.report.build import (
    AGGREGATE_LABELS,
    cost_label,
    eval_command,
    eval_set_text,
    fmt_bytes,
    fmt_cost,
    fmt_count,
    fmt_interval,
    fmt_score,
    fmt_seconds,
    percent_tasks,
    settings_text,
    short_labels,
    slug,
)
from cme_bench.report.files import write_text_replace
from cme_bench.report.load import RunRecord, load_samples
from cme_bench.report.references import Reference
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
    env.globals["sticky"] = STICKY
    return env


def sort_value(cell: Cell) -> str:
    if cell.value is None:
        return ""
    if isinstance(cell.value, float):
        return repr(cell.value)
    return str(cell.value)


STICKY = {"rank": "rank", "run": "run"}  # columns that stay visible when the table scrolls sideways


def table_rows(table: Table, root: str) -> Markup:
    """The <tbody> rows of a data table.

    Built in Python rather than in a Jinja macro because a 500-run leaderboard has ~30,000 cells and 37 such tables
    are written; every value still goes through ``escape`` (the same function autoescape uses). Rows of a tie group
    with two or more members carry ``data-tie`` and a shading class (alternating per group); a best value is marked
    only where the table says it is separable.
    """
    best = [table.best_rows(c.key) for c in table.columns]
    # Per-column attributes are the same for every row: escape them once.
    col_attrs = [
        f' data-group="{escape(c.group)}" data-domain="{escape(c.domain or "")}" data-key="{escape(c.key)}"'
        + (f' data-sticky="{STICKY[c.key]}"' if c.key in STICKY else "")
        for c in table.columns
    ]
    root_e = str(escape(root))
    cached = [c.group == "info" and c.key != "rank" for c in table.columns]
    out = []
    shade: dict[str, int] = {}
    for r, row in enumerate(table.rows):
        m = row.meta
        classes = [] if row.ok else ["not-ok"]
        tie = m.get("tie")
        tie_attr = ""
        if tie:
            shade.setdefault(tie, len(shade) % 2)
            classes.append(f"tied tie-{shade[tie]}")
            tie_attr = f' data-tie="{escape(tie)}"'
        row_cls = f' class="{" ".join(classes)}"' if classes else ""
        out.append(
            f'<tr data-method="{escape(m.get("method", ""))}" data-model="{escape(m.get("model", ""))}" '
            f'data-status="{escape(row.status)}" data-id="{escape(row.key)}"{tie_attr}{row_cls}>'
        )
        for i, cell in enumerate(row.cells):
            if cached[i]:  # descriptive cells repeat on every task and domain page: render each once
                out.append(_td(col_attrs[i], cell, root_e, table.columns[i].key == "run", False))
            else:
                out.append(_td.__wrapped__(col_attrs[i], cell, root_e, False, r in best[i]))
        out.append("</tr>\n")
    return Markup("".join(out))


@functools.lru_cache(maxsize=1 << 16)
def _td(attrs: str, cell: Cell, root_e: str, label: bool, best: bool) -> str:
    title = f' title="{escape(cell.note)}"' if cell.note else ""
    cls = ' class="best"' if best else ""
    text = escape(cell.display)
    if cell.href:
        text = f'<a href="{root_e}{escape(cell.href)}">{text}</a>'
    if label:
        text = f'<span class="label">{text}</span>'
    ci = f'<span class="ci">{escape(cell.interval_display)}</span>' if cell.interval_display else ""
    return f'<td{attrs} data-v="{escape(sort_value(cell))}"{title}{cls}>{text}{ci}</td>'


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

    def leaderboard(self, table: Table, others: list[Table] = (), refs: list[Reference] = ()) -> Path:
        a = self.analysis
        task_links = [
            {"name": m.display_name, "slug": slug(t), "domain": m.domain, "metric": m.primary_metric}
            for t, m in a.tasks.items()
        ]
        sets = list(a.eval_sets.values())
        return self.write(
            "index.html",
            "leaderboard.html.j2",
            title="Leaderboard",
            table=table,
            others=[
                {"table": t, "id": f"board-{i + 2}", "about": eval_set_text(es)}
                for i, (t, es) in enumerate(zip(others, sets[1:]))
            ],
            main_set=eval_set_text(sets[0]) if sets else "",
            references=refs,
            trained=[
                {"name": r.name, "id": r.run_id, "slug": slug(r.run_id), "command": eval_command(r)}
                for r in a.trained_only
            ],
            n_failed=sum(not r.ok for r in a.runs),
            n_rows=len(table.rows),
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
        entry = self.analysis.entry_of.get(run.run_id)
        group = entry if entry is not None and entry.n_seeds > 1 else None
        return self.write(
            f"runs/{slug(run.run_id)}.html",
            "run.html.j2",
            root="../",
            title=f"Run {run.name}",
            run=run,
            data=run.data,
            record_path=str(run.path),
            error=_error_text(run),
            scores=_run_scores(self.analysis, self.percent, run.run_id, run.metrics),
            loss_svg=loss_svg,
            heatmap_svg=heatmap_svg,
            facts=run_facts(run),
            group={"slug": slug(group.key), "n": group.n_seeds} if group else None,
            raw=json.dumps(_raw(run), indent=2, ensure_ascii=False, default=str),
        )

    def group_page(self, entry: Entry) -> Path:
        """A seed group: the mean ± std row and every seed's own values (the drill-down of an aggregated row)."""
        a = self.analysis
        columns = [(k, AGGREGATE_LABELS[k][0], True) for k in AGGREGATE_LABELS if (entry.key, k) in a.aggregates]
        columns += [
            (f"task:{t}", m.display_name, self.percent[t])
            for t, m in a.tasks.items()
            if a.scores.get((entry.key, t), Score(None)).value is not None
        ]
        rows = []
        for r in entry.runs:
            rows.append(
                {
                    "name": f"seed {r.section('config').get('seed')}",
                    "slug": slug(r.run_id),
                    "id": r.run_id,
                    "values": [fmt_score(a.value(r.run_id, k).value, p) for k, _, p in columns],
                }
            )
        summary = []
        for k, _, p in columns:
            s = a.value(entry.key, k)
            std = s.seed_std
            summary.append(
                {
                    "mean": fmt_score(s.value, p),
                    "std": "—" if std is None else fmt_score(std, p),
                    "interval": fmt_interval(s.interval, p),
                }
            )
        return self.write(
            f"runs/{slug(entry.key)}.html",
            "group.html.j2",
            root="../",
            title=f"Seeds: {short_labels([entry])[entry.key]}",
            entry=entry,
            settings=settings_text(entry.run, entry.seeds),
            columns=[label for _, label, _ in columns],
            rows=rows,
            summary=summary,
        )

    def costs_page(self, refs: list[Reference] = ()) -> Path:
        a, key = self.analysis, self.analysis.ranking_key
        main = next(iter(a.eval_sets.values()), None)
        entries = [
            e
            for e in (main.entries if main else [])
            if e.ok and key and a.aggregates.get((e.key, key), Score(None)).value is not None
        ]
        labels = short_labels(entries)
        figures = [_cost_figure(a, entries, labels, axis, self.ranking_label) for axis in COST_AXES]
        return self.write(
            "costs.html",
            "costs.html.j2",
            title="Cost plot",
            ranking_label=self.ranking_label,
            figures=figures,
            references=[r for r in refs if r.training_hours is not None],
        )

    def methods_page(self) -> Path:
        return self.write(
            "methods.html",
            "methods.html.j2",
            title="Statistical methods",
            methods_html=markdown_lite(methods_text(self.analysis.n_boot)),
            tasks=list(self.analysis.tasks.values()),
        )


def _run_scores(a: Analysis, pct: Mapping[str, bool], key: str, metrics) -> list[dict[str, Any]]:
    rows = []
    for task, metric in metrics.items():
        s, meta, p = a.scores.get((key, task)), a.tasks.get(task), pct.get(task, True)
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


CHARTED = ("loss_curve", "aux_loss_curve", "expert_load")  # shown as charts, left out of the fact lists


def _fmt_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "—"}[value]
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "—"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "—"
    return str(value)


def _numbers(section: Mapping[str, Any]) -> dict[str, Any]:
    """A record section less numeric fields that hold something else (a record may be written by anyone)."""
    out = {}
    for k, v in section.items():
        if k in NUMERIC_FIELDS and (isinstance(v, bool) or not isinstance(v, (int, float))):
            continue
        out[k] = v
    return out


NUMERIC_FIELDS = frozenset(
    {
        "seconds",
        "steps",
        "examples",
        "tokens",
        "tokens_per_second",
        "peak_memory_bytes",
        "parameters",
        "trainable_parameters",
        "trainable_share",
    }
)


def run_facts(run: RunRecord) -> list[dict[str, Any]]:
    """The run page's sections: (title, [(label, value)]) in reading order, human names and units throughout."""
    cfg, model, adapter = run.section("config"), _numbers(run.section("model")), _numbers(run.section("adapter"))
    training, evaluation = _numbers(run.section("training")), _numbers(run.section("evaluation"))
    env = run.section("environment")
    costs = {k: v for k, v in run.section("costs").items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    hw = env.get("hardware") if isinstance(env.get("hardware"), Mapping) else {}
    sections = [
        (
            "What was trained",
            [
                ("Base model", f"{model.get('name') or cfg.get('model') or '?'}"),
                ("Base model parameters", fmt_count(model.get("parameters")) if model.get("parameters") else "—"),
                ("Adapter method", "none (base model)" if run.is_base else run.method),
                ("Preset", None if run.is_base else run.preset),
                ("Adapter parameters", adapter.get("params")),
                (
                    "Trainable parameters",
                    fmt_count(adapter.get("trainable_parameters"))
                    if adapter.get("trainable_parameters") is not None
                    else None,
                ),
                (
                    "Trainable share",
                    f"{100 * adapter['trainable_share']:.3g}%"
                    if isinstance(adapter.get("trainable_share"), (int, float))
                    else None,
                ),
                ("Routed (mixture of experts)", adapter.get("routed")),
                ("Mergeable into the base weights", adapter.get("mergeable")),
            ],
        ),
        (
            "On what",
            [
                ("Suite", cfg.get("suite")),
                ("Tasks", cfg.get("tasks") or ("every task of the suite" if cfg.get("suite") else None)),
                ("Training examples", fmt_count(training.get("examples")) if training.get("examples") else None),
                ("Training tokens", fmt_count(training.get("tokens")) if training.get("tokens") else None),
                ("Examples per task (cap)", cfg.get("train_cap")),
                ("Extra data", cfg.get("extra_data") or None),
                ("Test documents per task (limit)", cfg.get("limit") or "all"),
                ("Seed", cfg.get("seed")),
            ],
        ),
        (
            "How long",
            [
                ("Optimiser steps", training.get("steps") or cfg.get("max_steps")),
                (
                    "Batch size × accumulation",
                    f"{cfg['batch_size']} × {cfg.get('grad_accum', 1)}" if cfg.get("batch_size") else None,
                ),
                ("Learning rate", cfg.get("learning_rate")),
                ("Training time", fmt_seconds(training.get("seconds")) if training.get("seconds") else None),
                ("Evaluation time", fmt_seconds(evaluation.get("seconds")) if evaluation.get("seconds") else None),
                ("Started", run.data.get("created_at")),
                ("Finished", run.data.get("finished_at")),
            ],
        ),
        (
            "What it cost",
            [
                (
                    "Train throughput (tokens/s)",
                    fmt_count(training.get("tokens_per_second")) if training.get("tokens_per_second") else None,
                ),
                (
                    "Peak memory",
                    fmt_bytes(training.get("peak_memory_bytes")) if training.get("peak_memory_bytes") else None,
                ),
                *[(cost_label(k), fmt_cost(k, v)) for k, v in costs.items()],
            ],
        ),
        (
            "Environment",
            [
                ("Evaluation backend", evaluation.get("backend") or cfg.get("backend")),
                ("Device", hw.get("device")),
                ("GPU", hw.get("gpu")),
                ("CPU cores", hw.get("cpu_count")),
                ("Python", env.get("python")),
                ("Platform", env.get("platform")),
                (
                    "Git revision",
                    f"{env.get('git_revision')}{' (dirty)' if env.get('git_dirty') else ''}"
                    if env.get("git_revision")
                    else None,
                ),
                ("Packages", env.get("packages")),
            ],
        ),
    ]
    return [
        {"title": title, "items": [(k, _fmt_value(v)) for k, v in items if v not in (None, "", [], {})]}
        for title, items in sections
    ]


def _raw(run: RunRecord) -> Mapping[str, Any]:
    """The record for the raw-JSON toggle, less what is charted and lm-eval's long dump."""
    data = dict(run.data)
    if isinstance(data.get("training"), Mapping):
        data["training"] = {k: v for k, v in data["training"].items() if k not in CHARTED}
    if isinstance(data.get("evaluation"), Mapping):
        data["evaluation"] = {k: v for k, v in data["evaluation"].items() if k != "lm_eval"}
    return data


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + f" … [{len(text) - MAX_TEXT} more characters]"


def _pairs(points: Any) -> list[tuple[float, float]]:
    out = []
    for p in points if isinstance(points, list) else []:
        if isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p):
            out.append((float(p[0]), float(p[1])))
    return out


def _time_unit(values: list[float]) -> tuple[float, str]:
    """Seconds, minutes or hours, whichever keeps the axis numbers small and round."""
    top = max(values, default=0.0)
    return (3600.0, "h") if top >= 3 * 3600 else (60.0, "min") if top >= 180 else (1.0, "s")


# (title, record section, field, axis name, unit chooser: values -> (divisor, unit) or None for counts)
COST_AXES = (
    ("trainable parameters", "adapter", "trainable_parameters", "trainable parameters", None),
    ("training time", "training", "seconds", "training time", _time_unit),
)


def _cost_figure(a: Analysis, entries: list[Entry], labels: Mapping[str, str], axis: tuple, ranking_label: str):
    """One scatter plot (score vs a cost, log axis) with its Pareto front. The base model (no cost) is a dashed line,
    and every run that cannot be plotted is listed with the reason."""
    title, section, field, name, unit_of = axis
    key = a.ranking_key
    plotted, missing, base = [], [], None
    for e in entries:
        score = a.aggregates[(e.key, key)].value
        if e.run.is_base:
            if base is None:
                who = "" if labels[e.key] == "base model" else f" ({labels[e.key]})"
                base = (score, f"base model{who}: {fmt_score(score, True)}")
            continue
        values = [r.section(section).get(field) for r in e.runs]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values):
            plotted.append((e, sum(values) / len(values), score))
        else:
            missing.append({"name": labels[e.key], "slug": slug(e.key), "reason": f"no {title}"})
    divisor, unit = unit_of([c for _, c, _ in plotted]) if unit_of else (1.0, "")
    front = pareto_front([c for _, c, _ in plotted], [s for _, _, s in plotted])
    figure = svg.scatter(
        [(c / divisor, s, labels[e.key]) for e, c, s in plotted],
        front,
        title=f"{ranking_label} vs {title}",
        xlabel=f"{name} ({unit}, log scale)" if unit else f"{name} (log scale)",
        ylabel=f"{ranking_label} (%)",
        log_x=True,
        xfmt=(lambda v: f"{v:g}") if unit else fmt_count,
        baseline=base,
    )

    def cost_text(c: float) -> str:
        return fmt_seconds(c) if unit else fmt_count(c)

    listed = [
        {
            "name": labels[plotted[i][0].key],
            "slug": slug(plotted[i][0].key),
            "score": fmt_score(plotted[i][2], True),
            "cost": cost_text(plotted[i][1]),
        }
        for i in front
    ]
    return {"title": title, "svg": figure, "front": listed, "missing": missing, "n_plotted": len(plotted)}
