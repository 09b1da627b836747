"""`cme-bench report`: run records -> Markdown/CSV/LaTeX/JSON tables and a static HTML leaderboard."""

from __future__ import annotations

import argparse

HELP = "turn run records into tables and a static HTML leaderboard (with intervals and paired tests)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default="results", metavar="DIR", help="folder searched for */run.json")
    parser.add_argument("--out", default=None, metavar="DIR", help="output folder (default: RESULTS/leaderboard)")
    parser.add_argument("--open", action="store_true", help="open the leaderboard in the default browser")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="B", help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument(
        "--max-sample-runs",
        type=int,
        default=40,
        metavar="N",
        help="runs embedded per task in the sample viewer (best N plus base models; default 40)",
    )
    parser.add_argument("--no-html", action="store_true", help="write only the text tables")
    parser.add_argument(
        "--references",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML file of reported figures shown beside the runs, never ranked (repeatable; the TeamLoRA paper's "
        "CME averages are always included unless --no-builtin-references)",
    )
    parser.add_argument(
        "--no-builtin-references", action="store_true", help="leave out the shipped TeamLoRA paper figures"
    )
    parser.add_argument(
        "--include-path",
        action="append",
        default=[],
        metavar="DIR",
        help="extra folder of lm-eval task YAMLs, for the metadata of user tasks (the run records carry it too)",
    )


def main(args: argparse.Namespace) -> int:
    import logging
    import time
    import webbrowser
    from pathlib import Path

    from cme_bench.errors import CmeError
    from cme_bench.report.pipeline import build_report, write_site, write_text_outputs
    from cme_bench.report.summary import top_rows

    if args.bootstrap < 10:
        raise CmeError(f"--bootstrap {args.bootstrap} is too small; use at least 10 (1000 is the default)")
    if args.max_sample_runs < 0:
        raise CmeError(f"--max-sample-runs must be >= 0 (0: no sample viewer rows), got {args.max_sample_runs}")
    results = Path(args.results)
    out = Path(args.out) if args.out else results / "leaderboard"
    if out.exists() and not out.is_dir():
        raise CmeError(f"--out {str(out)!r} is a file; name a folder for the leaderboard")
    if out.resolve() == results.resolve() or out.resolve() in results.resolve().parents:
        raise CmeError(
            f"--out {str(out)!r} is --results {str(results)!r} or a folder above it: the leaderboard would be "
            "written among the run records it reads; use a folder of its own (default: RESULTS/leaderboard)"
        )
    start = time.perf_counter()
    kwargs = {}
    if args.include_path:
        from functools import partial

        from cme_bench.taskreg import task_info

        kwargs["task_info"] = partial(task_info, include_path=args.include_path)
    report = build_report(
        results,
        out=out,
        n_boot=args.bootstrap,
        seed=args.seed,
        reference_files=tuple(args.references),
        builtin_references=not args.no_builtin_references,
        **kwargs,
    )
    if not report.analysis.runs:
        raise CmeError(f"no readable run records (*/run.json) under {str(results)!r}")
    files = write_text_outputs(report, out)
    index = None if args.no_html else write_site(report, out, max_sample_runs=args.max_sample_runs)
    logging.getLogger(__name__).debug("report took %.2f s", time.perf_counter() - start)
    a = report.analysis
    groups = sum(1 for e in a.entries if e.n_seeds > 1)
    print(
        f"{len(a.runs)} run(s) ({len(a.ok_runs)} successful) in {len(report.leaderboard.rows)} leaderboard row(s)"
        + (f" ({groups} averaged over seeds)" if groups else "")
        + f", {len(a.tasks)} task(s), {len(a.domains)} domain(s), {len(report.references)} reported reference row(s)"
    )
    for line in top_rows(report):
        print(line)
    for path in files.values():
        print(f"wrote {path}")
    if index is not None:
        print(f"wrote {index} (static site: open it from disk, no server needed)")
        if args.open:
            webbrowser.open(index.resolve().as_uri())
    return 0
