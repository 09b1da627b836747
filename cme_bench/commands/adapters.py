"""`cme-bench adapters`: list and show presets, count trainable parameters, merge mergeable adapters.

- ``list``: every preset in ``adapters/`` with its method, routed/mergeable flags and description;
- ``show NAME``: a preset's resolved hyperparameters, training values and notes;
- ``count --model M --adapter NAME [--compare-paper]``: trainable parameters and their share of the base, counted on
  the meta device (a folder holding only ``config.json`` is enough; ``llama2-7b-cme`` is the paper's base shape);
- ``merge --model M ADAPTER_DIR --out OUT``: fold a mergeable adapter into the base and save a plain HF folder;
- ``export ADAPTER_DIR --layout authors --out OUT``: a TeamLoRA adapter in its authors' checkpoint layout;
- ``convert FOLDER``: a pickled ``adapter_model.bin`` to ``adapter_model.safetensors`` (restricted unpickler only).
"""

from __future__ import annotations

import argparse

HELP = "list, show, count, merge, export and convert adapters (TeamLoRA and baselines)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    sub.add_parser("list", help="list the adapter presets")
    show = sub.add_parser("show", help="show one preset")
    show.add_argument("name", help="preset name or YAML path")
    count = sub.add_parser("count", help="count trainable parameters on the meta device (no weights)")
    count.add_argument("--model", default=None, help="folder with config.json, a built-in name, or llama2-7b-cme")
    count.add_argument("--adapter", default=None, help="preset name or YAML path")
    count.add_argument(
        "--compare-paper", action="store_true", help="print the TeamLoRA paper's shares beside ours (its base shape)"
    )
    merge = sub.add_parser("merge", help="merge a mergeable adapter into its base and save the merged model")
    merge.add_argument("adapter_dir", help="a saved adapter folder")
    merge.add_argument("--model", required=True, help="the base model the adapter was trained on")
    merge.add_argument("--out", required=True, help="output folder for the merged model (a new or empty folder)")
    merge.add_argument(
        "--overwrite",
        action="store_true",
        help="write into an existing non-empty --out (files of the same name are replaced, nothing else removed)",
    )
    export = sub.add_parser("export", help="write a saved adapter in another tool's layout")
    export.add_argument("adapter_dir", help="a saved cme-bench adapter folder")
    export.add_argument(
        "--layout", required=True, choices=["authors"], help="authors: the TeamLoRA release's checkpoint layout"
    )
    export.add_argument("--out", required=True, help="output folder (a new or empty folder)")
    export.add_argument("--overwrite", action="store_true", help="write into an existing non-empty --out (as merge)")
    convert = sub.add_parser(
        "convert",
        help="turn a pickled adapter_model.bin into adapter_model.safetensors (torch.load weights_only=True only)",
    )
    convert.add_argument("folder", help="an adapter folder holding adapter_model.bin")


def main(args: argparse.Namespace) -> int:
    actions = {"list": _list, "show": _show, "count": _count, "merge": _merge, "export": _export, "convert": _convert}
    return actions[args.action](args)


def _list(args: argparse.Namespace) -> int:
    from cme_bench.adapters import list_presets
    from cme_bench.tuners import get_method

    presets = list_presets()
    width = max(len(p.name) for p in presets)
    print(f"{'preset':<{width}}  {'method':<10} {'routed':<6} {'merge':<5} description")
    for p in presets:
        spec = get_method(p.method)
        flags = f"{'yes' if spec.routed else 'no':<6} {'yes' if spec.mergeable else 'no':<5}"
        print(f"{p.name:<{width}}  {p.method:<10} {flags} {p.description}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from cme_bench.adapters import deviations, load_preset
    from cme_bench.config import training_fields
    from cme_bench.tuners import get_method

    p = load_preset(args.name)
    spec = get_method(p.method)
    print(f"preset: {p.name}  ({p.path})")
    print(f"method: {p.method} ({spec.backend}; routed: {spec.routed}; mergeable: {spec.mergeable})")
    print(f"description: {p.description}")
    print("params:")
    for key, value in p.params.items():
        print(f"  {key}: {value}")
    if p.training:
        print("training (the authors' recipe; a run's values come from its flags):")
        helps = training_fields()
        for key, value in p.training.items():
            print(f"  {key}: {value}  # {helps[key]}")
    for note in [*spec.notes, *p.notes, *deviations(p.method, p.params)]:
        print(f"note: {note}")
    return 0


def _resolve_config(spec: str | None):
    from cme_bench.tuners.paper import PAPER_BASE, paper_base_config

    if spec in (None, PAPER_BASE):
        return PAPER_BASE, paper_base_config()
    from cme_bench.models import load_config

    return spec, load_config(spec)


def _count(args: argparse.Namespace) -> int:
    from cme_bench.adapters import compare_paper, count_on_meta
    from cme_bench.errors import CmeError

    if args.compare_paper:
        _print_paper_table(compare_paper())
        if args.adapter is None:
            return 0
    if args.adapter is None:
        raise CmeError("count needs --adapter NAME (or --compare-paper)")
    name, config = _resolve_config(args.model)
    c = count_on_meta(config, args.adapter)
    print(f"model: {name} ({(config.architectures or [config.model_type])[0]}), base parameters {c['base']:,}")
    print(f"adapter: {c['preset']} (method {c['method']})")
    print(f"trainable parameters: {c['trainable']:,} ({100 * c['share']:.3f}% of the base)")
    if c["router"]:
        print(f"  of which routers: {c['router']:,}; without routers {100 * c['share_without_router']:.3f}%")
    return 0


def _print_paper_table(rows: list[dict]) -> None:
    print("Trainable share on the paper's base shape (Chinese-LLaMA-2-7B: vocab 55,296, FFN-only targets)")
    print(f"{'row':<27} {'preset':<13} {'trainable':>12} {'ours %':>7} {'w/o router %':>13} {'paper %':>8}")
    for r in rows:
        print(
            f"{r['row']:<27} {r['preset']:<13} {r['trainable']:>12,} {100 * r['share']:>7.3f} "
            f"{100 * r['share_without_router']:>13.3f} {r['paper_percent']:>8.2f}"
        )
    print("HydraLoRA and TeamLoRA r_B=16: the paper's figure lies between ours without and with the router;")
    print("see adapters/README.md for the arithmetic.")


def _merge(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cme_bench.adapters import load_adapter, merge_adapter
    from cme_bench.models import load_model, save_model_folder
    from cme_bench.results import check_output_dir
    from cme_bench.tuners.checkpoint import read_adapter_config

    # Every input and the output are checked before the model is loaded: a bad --out never costs a load.
    out = check_output_dir(Path(args.out), overwrite=args.overwrite)
    read_adapter_config(args.adapter_dir)
    loaded = load_model(args.model)
    model = merge_adapter(load_adapter(loaded.model, args.adapter_dir))
    out = save_model_folder(model, loaded.tokenizer, out, overwrite=args.overwrite)
    print(f"merged {args.adapter_dir} into {args.model}: {out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from cme_bench.portable import export_authors

    out = export_authors(args.adapter_dir, args.out, overwrite=args.overwrite)
    print(f"exported {args.adapter_dir} in the {args.layout} layout: {out}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from cme_bench.portable import convert_bin

    out = convert_bin(args.folder)
    print(f"wrote {out} (read with torch.load(weights_only=True); adapter_model.bin left in place)")
    return 0
