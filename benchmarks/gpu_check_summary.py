"""Summarise a ``benchmarks/gpu_check.sh`` folder into ``summary.json`` and ``summary.md``.

Reads what each part wrote (``steps.tsv``, ``environment.json``, ``profile.json``, ``plan.json``, ``vllm.json``,
``results/*/run.json``) and reports every part, including the ones that failed or were skipped, with why.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

PARTS = {
    "efficiency": "efficiency table at the model shape (cme-bench profile)",
    "plan": "memory plan vs measured peak (cme-bench plan --measure)",
    "vllm": "vLLM vs HF generation throughput (benchmarks/vllm_throughput.py)",
    "run": "short TeamLoRA run with evaluation (cme-bench run)",
}


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _steps(out: Path) -> dict[str, dict[str, Any]]:
    steps = {}
    for line in (out / "steps.tsv").read_text(encoding="utf-8").splitlines():
        name, rc, seconds, *why = line.split("\t")
        status = "skipped" if rc == "skipped" else ("ok" if rc == "0" else f"failed (exit {rc})")
        steps[name] = {"status": status, "seconds": int(seconds), "note": why[0] if why else None}
    return steps


def _efficiency(doc: dict[str, Any]) -> dict[str, Any]:
    rows = [
        {k: r.get(k) for k in ("adapter", "method", "experts", "form", "train_step_ms", "decode_ms_per_token")}
        for r in doc["rows"]
    ]
    keys = ("adapter", "experts", "form", "train_x_lora_same_rank", "train_x_moelora", "decode_x_moelora")
    return {
        "model": doc["model"],
        "device": doc["settings"]["device"],
        "dtype": doc["settings"]["dtype"],
        "rows": rows,
        "ratios": [{k: r.get(k) for k in keys} for r in doc["ratios"]],
    }


def _plan(doc: dict[str, Any]) -> dict[str, Any]:
    measured = doc.get("measured") or {}
    pairs = {
        "train": doc["training"]["total"],
        "train_checkpointing": doc["training"]["total_checkpointing"],
        "generate": doc["generation"]["total"],
    }
    return {
        "request": doc["request"],
        "device": measured.get("device"),
        "peaks": {
            k: {"predicted": v, "measured": measured.get(k), "ratio": v / measured[k] if measured.get(k) else None}
            for k, v in pairs.items()
        },
        "gpu": doc.get("gpu"),
    }


def _vllm(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": Path(doc["model"]).name,
        "batch": doc["batch"],
        "max_tokens": doc["max_tokens"],
        "rows": {
            m: {"hf_tokens_per_s": r["hf"]["tokens_per_s"], "vllm_tokens_per_s": r["vllm"]["tokens_per_s"]}
            for m, r in doc["results"].items()
        },
    }


def _runs(out: Path) -> list[dict[str, Any]]:
    runs = []
    for path in sorted((out / "results").glob("*/run.json")):
        rec = _json(path)
        runs.append(
            {
                "run_id": rec["run_id"],
                "status": rec["status"],
                "device": rec["config"].get("device"),
                "dtype": rec["config"].get("dtype"),
                "metrics": {t: m["value"] for t, m in (rec.get("metrics") or {}).items()},
                "train_seconds": (rec.get("training") or {}).get("seconds"),
                "eval_seconds": (rec.get("evaluation") or {}).get("seconds"),
            }
        )
    return runs


def summarise(out: Path) -> dict[str, Any]:
    summary: dict[str, Any] = {"environment": _json(out / "environment.json"), "parts": _steps(out)}
    readers = {"efficiency": ("profile.json", _efficiency), "plan": ("plan.json", _plan), "vllm": ("vllm.json", _vllm)}
    for part, (name, read) in readers.items():
        doc = _json(out / name)
        summary[part] = read(doc) if doc and summary["parts"].get(part, {}).get("status") == "ok" else None
    summary["run"] = _runs(out)
    return summary


def _size(n: float | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _num(value: Any, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def markdown(s: dict[str, Any]) -> str:
    env = s["environment"] or {}
    where = env.get("gpu") or env.get("device", "?")
    lines = [
        "# cme-bench GPU check" + (" (dry run: CPU sizes)" if env.get("dry_run") else ""),
        "",
        f"{where}, {env.get('dtype', '?')}, torch {env.get('torch', '?')}",
        "",
        "| part | status | seconds | note |",
        "| --- | --- | ---: | --- |",
    ]
    for part, what in PARTS.items():
        p = s["parts"].get(part, {"status": "not run", "seconds": 0})
        lines.append(f"| {what} | {p['status']} | {p['seconds']} | {p.get('note') or ''} |")
    if s["efficiency"]:
        e = s["efficiency"]
        lines += ["", f"## Efficiency ({e['model']}, {e['device']}, {e['dtype']})", ""]
        lines += ["| adapter | k | form | train ms | decode ms/token |", "| --- | ---: | --- | ---: | ---: |"]
        for r in e["rows"]:
            train = (r["train_step_ms"] or {}).get("median")
            lines.append(
                f"| {r['adapter']} | {r['experts'] or '-'} | {r['form']} | {_num(train, '{:.1f}')} | "
                f"{_num(r['decode_ms_per_token'])} |"
            )
        lines += ["", "| ratio | k | form | train / LoRA(kr) | train / MoELoRA | decode / MoELoRA |"]
        lines += ["| --- | ---: | --- | ---: | ---: | ---: |"]
        for r in e["ratios"]:
            lines.append(
                f"| {r['adapter']} | {r['experts']} | {r['form']} | {_num(r['train_x_lora_same_rank'])} | "
                f"{_num(r['train_x_moelora'])} | {_num(r['decode_x_moelora'])} |"
            )
    if s["plan"]:
        p = s["plan"]
        r = p["request"]
        lines += ["", f"## Memory plan ({r['adapter']}, batch {r['batch_size']} x {r['max_seq_len']}, {r['dtype']})"]
        lines += ["", "| peak | predicted | measured | predicted / measured |", "| --- | ---: | ---: | ---: |"]
        for k, v in p["peaks"].items():
            lines.append(f"| {k} | {_size(v['predicted'])} | {_size(v['measured'])} | {_num(v['ratio'])} |")
    if s["vllm"]:
        v = s["vllm"]
        lines += ["", f"## Generation throughput ({v['model']}, batch {v['batch']}, {v['max_tokens']} new tokens)"]
        lines += ["", "| adapter | HF tok/s | vLLM tok/s | vLLM / HF |", "| --- | ---: | ---: | ---: |"]
        for m, r in v["rows"].items():
            ratio = r["vllm_tokens_per_s"] / r["hf_tokens_per_s"]
            lines.append(f"| {m} | {r['hf_tokens_per_s']:.1f} | {r['vllm_tokens_per_s']:.1f} | {ratio:.2f} |")
    if s["run"]:
        lines += ["", "## Runs", "", "| run | status | device | dtype | metrics | train s | eval s |"]
        lines += ["| --- | --- | --- | --- | --- | ---: | ---: |"]
        for r in s["run"]:
            metrics = ", ".join(f"{t} {v:.3f}" for t, v in r["metrics"].items())
            lines.append(
                f"| {r['run_id']} | {r['status']} | {r['device']} | {r['dtype']} | {metrics} | "
                f"{_num(r['train_seconds'], '{:.1f}')} | {_num(r['eval_seconds'], '{:.1f}')} |"
            )
    return "\n".join(lines) + "\n"


def main(out: Path) -> int:
    summary = summarise(out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    (out / "summary.md").write_text(markdown(summary), encoding="utf-8")
    print(markdown(summary))
    failed = [p for p, v in summary["parts"].items() if v["status"].startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
