"""`cme-bench tasks`: list, show, validate and export the CME task registry (``tasks/`` + ``--include-path``).

- ``tasks list [--suite NAME]``: the tasks of a suite with domain, metric and chance level (``--sizes`` loads data);
- ``tasks show TASK``: metadata, sizes, and the prompt and target of one document;
- ``tasks validate [--strict]``: loads and renders every task; each problem names its file and key (exit 1 if any
  error; missing cme-bench metadata is a warning, an error with ``--strict``);
- ``tasks export --suite NAME --out FILE.jsonl``: the training mixture as JSONL ({"task", "prompt", "target"}).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cme_bench.errors import CmeError

HELP = "list, show, validate and export the CME tasks (lm-eval YAML under tasks/)"


def _include(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--include-path",
        action="append",
        default=[],
        metavar="DIR",
        help="extra folder of lm-eval task YAMLs (repeatable)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("list", help="tasks of a suite (default cme-mini), or --all")
    p.add_argument("--suite", default="cme-mini", help="suite, domain group or task (default: cme-mini)")
    p.add_argument("--all", action="store_true", help="every registered task: each suite, then ungrouped tasks")
    p.add_argument("--sizes", action="store_true", help="also load the data and show train/test sizes")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _include(p)

    p = sub.add_parser("show", help="one task: metadata, sizes, an example prompt and target")
    p.add_argument("task")
    p.add_argument("--part", choices=("test", "train"), default="test", help="which part to draw the example from")
    p.add_argument("--index", type=int, default=0, help="document index within the part")
    _include(p)

    p = sub.add_parser("validate", help="load and render every task; report problems by file and key")
    p.add_argument("--no-data", action="store_true", help="static checks only (no data loading)")
    p.add_argument("--task", action="append", default=None, help="only these tasks' data (static checks: all)")
    p.add_argument("--strict", action="store_true", help="warnings (e.g. missing cme-bench metadata) fail too")
    _include(p)

    p = sub.add_parser("export", help="write the training mixture as JSONL")
    p.add_argument("--suite", default="cme-mini")
    p.add_argument("--out", required=True, type=Path, help="output .jsonl file")
    p.add_argument("--tasks", nargs="+", default=None, help="subset of the suite's tasks")
    p.add_argument("--cap-per-task", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mixing", choices=("size", "fixed", "temperature"), default="size")
    p.add_argument("--proportions", default=None, help="for --mixing fixed: SOURCE=WEIGHT,SOURCE=WEIGHT,...")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--total", type=int, default=None, help="examples to draw for fixed/temperature mixing")
    p.add_argument("--instructions", nargs="+", default=[], type=Path, help="extra {instruction,input,output} files")
    p.add_argument("--instruction-cap", type=int, default=None)
    _include(p)


def main(args: argparse.Namespace) -> int:
    return {"list": _list, "show": _show, "validate": _validate, "export": _export}[args.action](args)


def _list(args: argparse.Namespace) -> int:
    from cme_bench import taskreg

    suites = taskreg.suites(args.include_path) if args.all else [args.suite]
    listing = [(suite, domain, tasks) for suite in suites for domain, tasks in
               taskreg.suite_domains(suite, args.include_path).items()]  # fmt: skip
    if args.all:  # tasks that no suite groups (user tasks are first-class): listed under their own metadata
        grouped = {t for _, _, tasks in listing for t in tasks}
        for name in taskreg.all_tasks(args.include_path):
            if name not in grouped:
                info = taskreg.task_info(name, args.include_path)
                listing.append((info.suite or "-", info.domain, [name]))
    rows = []
    for suite, domain, tasks in listing:
        for name in tasks:
            info = taskreg.task_info(name, args.include_path)
            row = {"suite": suite, "domain": domain, "task": name, "display_name": info.display_name,
                   "task_type": info.task_type, "metric": info.primary_metric, "chance": info.chance}  # fmt: skip
            if args.sizes:
                task = taskreg.load_tasks([name], args.include_path)[name]
                row["train"], row["test"] = (len(taskreg.docs(task, p)) for p in ("train", "test"))
            rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    cols = list(rows[0]) if rows else []
    widths = {c: max(len(c), *(len(_cell(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(_cell(r[c]).ljust(widths[c]) for c in cols))
    print(f"\n{len(rows)} tasks")
    return 0


def _cell(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _show(args: argparse.Namespace) -> int:
    from cme_bench import taskreg

    info = taskreg.task_info(args.task, args.include_path)
    task = taskreg.load_tasks([args.task], args.include_path)[args.task]
    train, test = taskreg.docs(task, "train"), taskreg.docs(task, "test")
    docs = train if args.part == "train" else test
    if not 0 <= args.index < len(docs):
        raise CmeError(f"--index {args.index} is out of range: the {args.part} part has {len(docs)} documents")
    prompt, target = taskreg.render(task, docs[args.index])
    gen = task.config.generation_kwargs or {}
    print(f"task:        {info.name}  ({info.display_name}, suite {info.suite}, domain {info.domain})")
    print(f"file:        {info.yaml_path}")
    print(f"type:        {info.task_type} ({info.output_type}); version {info.version}")
    print(f"metric:      {info.primary_metric} (higher is better: {info.higher_is_better}; chance {info.chance:.3f})")
    print(f"generation:  max_gen_toks={gen.get('max_gen_toks')}, until={gen.get('until')!r}")
    print(f"sizes:       train {len(train)}, test {len(test)}")
    print(f"reconstructed: {info.reconstructed}")
    print(f"\n--- prompt ({args.part}[{args.index}]) ---\n{prompt}\n--- target ---\n{target}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from cme_bench import taskcheck

    problems = taskcheck.validate(args.include_path, load_data=not args.no_data, names=args.task)
    for problem in problems:
        print(problem)
    n_files = len(taskcheck.yaml_files(args.include_path))
    errors = [p for p in problems if p.level == "error" or args.strict]
    warnings = len(problems) - len(errors)
    line = f"{n_files} YAML files checked: {len(errors) or 'no'} problem{'s' if len(errors) != 1 else ''}"
    if warnings:
        line += f", {warnings} warning{'s' if warnings != 1 else ''} (--strict makes them fail)"
    print(line)
    return 1 if errors else 0


def _parse_proportions(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    out = {}
    for part in text.split(","):
        name, sep, weight = part.partition("=")
        try:
            out[name.strip()] = float(weight)
        except ValueError:
            sep = ""
        if not sep:
            raise CmeError(f"--proportions: {part!r} is not SOURCE=WEIGHT")
    return out


def _export(args: argparse.Namespace) -> int:
    from cme_bench import mixture
    from cme_bench.results import check_output_file

    check_output_file(args.out, flag="--out")
    cfg = mixture.MixtureConfig(
        suite=args.suite,
        tasks=args.tasks,
        cap_per_task=args.cap_per_task,
        seed=args.seed,
        mixing=args.mixing,
        proportions=_parse_proportions(args.proportions),
        temperature=args.temperature,
        total=args.total,
        instruction_files=tuple(args.instructions),
        instruction_cap=args.instruction_cap,
    )
    examples = mixture.build_mixture(cfg, args.include_path)
    if not examples:
        raise CmeError(f"the mixture is empty: no training documents in {', '.join(args.tasks or [args.suite])} "
                       "(a task needs a training split; nothing written)")  # fmt: skip
    mixture.write_jsonl(examples, args.out)
    for source, n in sorted(mixture.mixture_summary(examples).items()):
        print(f"{source:40s} {n:7d}")
    print(f"{len(examples)} examples written to {args.out}")
    return 0
