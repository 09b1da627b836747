"""The model card (``README.md``) of a saved adapter folder: what it is, how it was trained, how to load it.

``write_model_card(folder, run=...)`` reads everything about the adapter from the folder itself (its config, its
sidecar, the shapes in ``adapter_model.safetensors``) and, when given, the run record for the training data, budget
and scores. ``adapters.save_adapter`` writes it with the adapter; the runner rewrites it once the adapter has been
evaluated, so the scores appear. The card's YAML header follows the Hugging Face model-card metadata
(``base_model``, ``library_name``, ``tags``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from cme_bench.results import write_text_atomic

CARD_NAME = "README.md"
SIDECAR_NAME = "cme_bench.json"  # cme-bench's fields beside a PEFT adapter_config.json

# Papers behind the methods, for the citation section (arXiv ids as in each tuner's module docstring).
PAPERS: dict[str, tuple[str, str]] = {
    "lora": ("LoRA: Low-Rank Adaptation of Large Language Models", "2106.09685"),
    "dora": ("DoRA: Weight-Decomposed Low-Rank Adaptation", "2402.09353"),
    "adalora": ("AdaLoRA: Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", "2303.10512"),
    "moslora": ("Mixture-of-Subspaces in Low-Rank Adaptation", "2406.11909"),
    "multilora": ("MultiLoRA: Democratizing LoRA for Better Multi-Task Learning", "2311.11501"),
    "moelora": ("MoELoRA: Contrastive Learning Guided Mixture of Experts on PEFT for LLMs", "2402.12851"),
    "hydralora": ("HydraLoRA: An Asymmetric LoRA Architecture for Efficient Fine-Tuning", "2404.19245"),
    "loramoe": ("LoRAMoE: Alleviate World Knowledge Forgetting in LLMs via MoE-Style Plugin", "2312.09979"),
    "mixlora": ("MixLoRA: Enhancing LLMs Fine-Tuning with LoRA-based Mixture of Experts", "2404.15159"),
    "smora": ("Each Rank Could be an Expert: Single-Ranked Mixture of Experts LoRA", "2501.15103"),
    "teamlora": ("TeamLoRA: Boosting Low-Rank Adaptation with Expert Collaboration and Competition", "2408.09856"),
}


def read_fields(folder: Path) -> dict[str, Any]:
    """cme-bench's fields of a saved adapter: the sidecar, the legacy ``cme_bench`` key, or our own config."""
    folder = Path(folder)
    sidecar = folder / SIDECAR_NAME
    if sidecar.is_file():
        return json.loads(sidecar.read_text())
    config = json.loads((folder / "adapter_config.json").read_text())
    return config.get("cme_bench") or config


def _parameter_count(folder: Path) -> int | None:
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        return None
    from safetensors import safe_open

    total = 0
    with safe_open(str(weights), framework="pt") as fh:
        for key in fh.keys():  # noqa: SIM118 (safe_open has no __iter__)
            n = 1
            for dim in fh.get_slice(key).get_shape():
                n *= dim
            total += n
    return total


def _targets_summary(targets: list[str]) -> str:
    """``model.layers.0.mlp.gate_proj`` ... -> ``model.layers.*.mlp.gate_proj`` (n modules)."""
    if not targets:
        return "(none recorded)"
    patterns = sorted({re.sub(r"\.\d+\.", ".*.", t) for t in targets})
    return f"{len(targets)} modules: " + ", ".join(f"`{p}`" for p in patterns)


def _load_snippet(fields: dict[str, Any], peft: bool, base: str) -> str:
    if peft:
        return (
            "```python\n"
            "from peft import AutoPeftModelForCausalLM  # plain PEFT: no cme-bench needed\n\n"
            'model = AutoPeftModelForCausalLM.from_pretrained("path/to/this/folder")'
            f"  # base: {base}\n"
            "```"
        )
    return (
        "```python\n"
        "import cme_bench\n"
        "from transformers import AutoModelForCausalLM\n\n"
        f'model = AutoModelForCausalLM.from_pretrained("{base}")\n'
        'model = cme_bench.load_adapter(model, "path/to/this/folder")  '
        f"# {fields.get('method')}: layers injected in place, strict key check\n"
        "```"
    )


def _lm_eval_snippet(base: str) -> str:
    return (
        "```bash\n"
        "python -m cme_bench.lm_eval_cli --model cme-bench \\\n"
        f"  --model_args pretrained={base},adapter=path/to/this/folder \\\n"
        "  --tasks cme_mini_boolq --include_path $(python -c 'import cme_bench.paths as p; print(p.tasks_dir())')\n"
        "```"
    )


def _citation(method: str) -> str:
    entries = []
    if method in PAPERS:
        title, arxiv = PAPERS[method]
        entries.append(
            f"@article{{{method}_{arxiv.replace('.', '_')},\n  title   = {{{title}}},\n"
            f"  journal = {{arXiv preprint arXiv:{arxiv}}},\n  year    = {{20{arxiv[:2]}}}\n}}"
        )
    return "```bibtex\n" + "\n\n".join(entries or ["% no paper recorded for this method"]) + "\n```"


def render(folder: Path, *, run: dict[str, Any] | None = None) -> str:
    """The card's Markdown for the adapter in ``folder`` (``run``: its run record, for training and scores)."""
    folder = Path(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    fields = read_fields(folder)
    peft = "peft_type" in config
    method = fields.get("method", "?")
    base_info = fields.get("base_model") or {}
    base = config.get("base_model_name_or_path") or fields.get("base_model_name_or_path") or "path/to/base-model"
    run = run or {}
    adapter = run.get("adapter") or {}
    count = _parameter_count(folder)
    share = adapter.get("trainable_share")
    if share is None and count and base_info.get("parameters"):
        share = count / base_info["parameters"]
    params = fields.get("params") or {}
    header = ["---", f"library_name: {'peft' if peft else 'cme-bench'}"]
    if not base.startswith("path/to"):
        header.append(f"base_model: {json.dumps(base)}")
    header += ["tags:", "- cme-bench", f"- {method}", "---", ""]
    lines = [
        f"# {fields.get('preset', method)} adapter ({method})",
        "",
        "Trained with cme-bench on a multi-task instruction mixture." if run else "Saved by cme-bench.",
        "",
        "| | |",
        "|---|---|",
        f"| method | `{method}` |",
        f"| base model | `{base}` ({base_info.get('architecture', '?')}, {base_info.get('parameters') or '?'} "
        f"parameters, fingerprint `{str(base_info.get('fingerprint', '?'))[:16]}`) |",
        f"| target modules | {_targets_summary(fields.get('target_modules') or [])} |",
        f"| trainable parameters | {count:,}" + (f" ({100 * share:.3f}% of the base)" if share else "") + " |"
        if count is not None
        else "| trainable parameters | ? |",
        "| hyperparameters | "
        + ", ".join(f"{k}={v}" for k, v in params.items() if k != "target_modules").replace("|", "/")
        + " |",
        "| format | "
        + ("PEFT (`adapter_config.json`); cme-bench's fields in `cme_bench.json`" if peft else "cme-bench native")
        + " |",
        "",
    ]
    lines += _training_section(run)
    lines += _scores_section(run)
    lines += [
        "## How to load it",
        "",
        _load_snippet(fields, peft, base),
        "",
        "Evaluate it with plain lm-eval (the `cme-bench` model is registered when `cme_bench.lm_eval_cli` runs):",
        "",
        _lm_eval_snippet(base),
        "",
        "## Citation",
        "",
        _citation(method),
        "",
    ]
    return "\n".join(header + lines)


def _training_section(run: dict[str, Any]) -> list[str]:
    training, config = run.get("training"), run.get("config") or {}
    if not training:
        return []
    tasks = config.get("tasks")
    data = f"suite `{config.get('suite')}`" + (f", tasks {', '.join(f'`{t}`' for t in tasks)}" if tasks else "")
    cap = config.get("train_cap")
    return [
        "## Training",
        "",
        f"- data: {data}; mixing `{config.get('mix')}`, {cap or 'all'} examples per task"
        + (f", extra data {config['extra_data']}" if config.get("extra_data") else ""),
        f"- budget: {training.get('steps')} optimiser steps of {config.get('batch_size')} x "
        f"{config.get('grad_accum')} examples ({training.get('examples')} examples, {training.get('tokens')} tokens), "
        f"learning rate {config.get('learning_rate')}, max {config.get('max_seq_len')} tokens, seed "
        f"{config.get('seed')}; {training.get('seconds')} s on {training.get('world_size', 1)} process(es)",
        f"- run: `{run.get('run_id')}`",
        "",
    ]


def _scores_section(run: dict[str, Any]) -> list[str]:
    metrics = run.get("metrics") or {}
    if not metrics:
        return []
    limit = (run.get("evaluation") or {}).get("limit")
    rows = ["## Scores", "", f"lm-eval, {'all' if limit is None else limit} test documents per task.", ""]
    rows += ["| task | metric | value | stderr | n |", "|---|---|---|---|---|"]
    for task, m in sorted(metrics.items()):
        stderr = "-" if m.get("stderr") is None else f"{m['stderr']:.4f}"
        rows.append(f"| {task} | {m['metric']} | {m['value']:.4f} | {stderr} | {m.get('n')} |")
    average = sum(m["value"] for m in metrics.values()) / len(metrics)
    rows += [f"| **average** | | **{average:.4f}** | | |", ""]
    return rows


def write_model_card(folder: Path, *, run: dict[str, Any] | None = None) -> Path:
    """Write (atomically) ``folder/README.md`` for the adapter saved in ``folder``."""
    path = Path(folder) / CARD_NAME
    write_text_atomic(path, render(folder, run=run))
    return path
