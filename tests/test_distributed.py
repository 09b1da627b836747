"""Multi-process evaluation: the document shards, and 2 gloo processes scoring exactly like one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from _helpers import free_port, run_dir

from cme_bench.distributed import shard

EVAL = ["eval", "--adapter", "none", "--tasks", "cme_mini_boolq,cme_mini_arc_easy"]
EVAL += ["--limit", "7", "--eval-batch-size", "4", "--no-report"]
RUN_ID = "chaotic-tiny-llama--none--cme-mini--s0"


def test_shards_split_documents_and_keep_a_document_whole():
    keys = ["a", "a", "b", "c", "c", "c", "d", "e"]
    parts = [shard(keys, r, 2) for r in range(2)]
    assert parts == [[0, 1, 3, 4, 5, 7], [2, 6]]
    assert sorted(parts[0] + parts[1]) == list(range(len(keys)))
    assert shard(keys, 0, 1) == list(range(len(keys)))
    assert shard(keys, 3, 4) == [6]  # d is the fourth document


def _chaotic_tiny_llama(folder: Path) -> Path:
    """tiny-llama with its weight matrices scaled up: at the built-in scale it answers every prompt alike, which
    would hide a shuffled answer; scaled, every document gets its own answer, sensitive to any numerical change."""
    import torch

    from cme_bench.models import build_tiny_llama, save_model_folder

    model, tokenizer = build_tiny_llama(seed=0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.mul_(25)
    return save_model_folder(model, tokenizer, folder)


def _eval(model: Path, out: Path, processes: int) -> subprocess.CompletedProcess:
    launch = [sys.executable, "-m", "cme_bench.cli"]
    if processes > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
                  "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "cme_bench.cli"]  # fmt: skip
    proc = subprocess.run(
        [*launch, *EVAL, "--model", str(model), "--output", str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_processes_evaluate_exactly_like_one(tmp_path: Path):
    one, two = tmp_path / "one", tmp_path / "two"
    model = _chaotic_tiny_llama(tmp_path / "chaotic-tiny-llama")
    _eval(model, one, 1)
    proc = _eval(model, two, 2)
    # Each rank generated for its own documents only (both tasks' 14 documents in one batch: 7 per rank).
    assert proc.stderr.count("rank 0 of 2 answers 7 of 14 requests") == 1
    assert proc.stderr.count("rank 1 of 2 answers 7 of 14 requests") == 1
    dir1, dir2 = run_dir(one, RUN_ID), run_dir(two, RUN_ID)
    rec1 = json.loads((dir1 / "run.json").read_text())
    rec2 = json.loads((dir2 / "run.json").read_text())
    assert rec2["evaluation"]["processes"] == 2 and rec1["evaluation"]["processes"] == 1
    # Wall time and the attempt id (each run is its own attempt) are the only fields allowed to differ.
    same = lambda row: {k: v for k, v in row.items() if k not in ("seconds", "attempt")}  # noqa: E731
    assert {t: same(r) for t, r in rec2["metrics"].items()} == {t: same(r) for t, r in rec1["metrics"].items()}
    assert rec2["evaluation"]["lm_eval"]["results"] == rec1["evaluation"]["lm_eval"]["results"]
    for task in ("cme_mini_boolq", "cme_mini_arc_easy"):
        rows1 = [same(json.loads(line)) for line in (dir1 / rec1["samples"][task]).read_text().splitlines()]
        rows2 = [same(json.loads(line)) for line in (dir2 / rec2["samples"][task]).read_text().splitlines()]
        assert rows2 == rows1
        predictions = [row["prediction"] for row in rows1]
        assert len(predictions) == 7 and len(set(predictions)) == 7  # all distinct: a misplaced one would show
