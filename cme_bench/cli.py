"""The ``cme-bench`` console script: argument parsing and error reporting only.

Each verb lives in its own module ``cme_bench/commands/<verb>.py`` exposing ``HELP`` (one line),
``add_arguments(parser)`` and ``main(args) -> int``. Those modules import nothing heavy at module level (torch,
transformers and lm-eval are imported inside ``main``), so ``cme-bench --help`` stays instant.

Adding a verb: write its module, then add its name to ``VERBS``. A verb that adds ``--config``
(``runfile.add_config_argument``) reads run files: ``parse_args`` fills the options not typed on the command line
from the file, and ``main`` prints the resolved configuration before any work.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from cme_bench import __version__, perf_env
from cme_bench.errors import CmeError

VERBS = ("run", "train", "eval", "sweep", "report", "tasks", "adapters", "profile", "plan")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cme-bench",
        description="Train parameter-efficient adapters on the CME multi-task mixture, evaluate them through "
        "lm-evaluation-harness, and compare them in tables and an HTML leaderboard.",
    )
    parser.add_argument("--version", action="version", version=f"cme-bench {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    sub.required = True
    for verb in VERBS:
        module = importlib.import_module(f"cme_bench.commands.{verb}")
        p = sub.add_parser(verb, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_command=module.main, _parser=p)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; with ``--config FILE``, options not typed on the command line come from the run file."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if getattr(args, "config", None) is not None:
        from cme_bench import runfile

        runfile.apply(args, args._parser, argv[argv.index(args.verb) + 1 :])
    return args


def main(argv: Sequence[str] | None = None) -> int:
    perf_env.apply()  # before any verb imports torch: OpenMP reads its settings once, at start-up
    try:
        args = parse_args(argv)
    except CmeError as err:  # a bad run file: one readable message, like any other user error
        print(f"cme-bench: error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # lm-eval and transformers log every task set-up step at INFO; our own progress bars say what matters.
        for noisy in ("lm_eval", "transformers", "datasets", "accelerate"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    if hasattr(args, "config"):
        from cme_bench import runfile

        source = f"run file {args.config}" if args.config else "no run file"
        print(f"# resolved configuration (command line > run file > defaults; {source})")
        print(runfile.dump(runfile.resolved(args, args._parser)), end="", flush=True)
    try:
        return int(args._command(args) or 0)
    except CmeError as err:
        if args.verbose or os.environ.get("CME_BENCH_TRACEBACK"):
            raise
        print(f"cme-bench {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        # The environment said no (disk full, file-size limit, permission denied): one line naming the file.
        if args.verbose or os.environ.get("CME_BENCH_TRACEBACK"):
            raise
        where = f": {err.filename}" if err.filename else ""
        print(f"cme-bench {args.verb}: error: {err.strerror or err}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cme-bench {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
