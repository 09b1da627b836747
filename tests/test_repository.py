"""The repository is self-contained: no file points at notes outside it or at tracker items a reader cannot see.

What the code and docs need from outside sources lives in docs/ (CME.md, METHODS.md, VLLM.md) with primary
citations (paper title + arXiv id, public repository URLs). This test scans every tracked file (and every new file
git does not ignore) so such a reference cannot come back. Upstream bug reports cited by repository and number
("vLLM issue #49354") are fine: anyone can follow them.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Written so that this file's own source does not match: every pattern escapes or splits the text it looks for.
FORBIDDEN = re.compile(
    r"(?<![\w-])share[d]/"  # a path into a folder beside the checkout
    r"|\b(?:teamlora|baselines|ecosystem|style|newer_method[s])\.md\b"  # the reference notes' file names
    r"|\bnewer_method[s]\b"
    r"|\bhabi[t]\s+\d"  # numbered house-style habits
    r"|\bissues?\s+\d"  # a numbered item of our own tracker, invisible to a cloner
    r"|\bthe issue's\b",
    re.IGNORECASE,
)


def repository_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return sorted({ROOT / name for name in out.decode().split("\0") if name and (ROOT / name).is_file()})


def references(text: str) -> list[str]:
    return [m.group(0) for m in FORBIDDEN.finditer(text)]


@pytest.mark.parametrize(
    "text",
    [
        "see ../share" + "d/docs/x for details",
        "`share" + "d/data/train_example.json`",
        "teamlora" + ".md §10.4",
        "per baselines" + ".md, 'Serving consequences'",
        "ecosystem" + ".md (b)",
        "docs/style" + ".md habit" + " 7",
        "from newer" + "_methods",
        "habit" + " 7",
        "issue" + " 8 targets",
        "Issue" + " 8's targets",
        "the profiler of issues" + " 7 and 8",
        "the issue" + "'s baseline",
    ],
)
def test_pattern_catches_each_kind_of_reference(text: str) -> None:
    assert references(text)


@pytest.mark.parametrize(
    "text",
    [
        "docs/CME.md, 'Task sources'",
        "vLLM issue #49354 (LoRA without effect)",
        "https://github.com/Ablustrund/LoRAMoE/issues/13",
        "shared A, sliced experts; a shared_dir of your own",
        "docs/METHODS.md",
    ],
)
def test_pattern_leaves_self_contained_text_alone(text: str) -> None:
    assert not references(text)


def test_no_file_refers_outside_the_repository() -> None:
    files = repository_files()
    assert ROOT / "tests" / "test_repository.py" in files and ROOT / "README.md" in files
    found = []
    for path in files:
        data = path.read_bytes()
        if b"\0" in data:  # binary
            continue
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if hits := references(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {', '.join(hits)}")
    assert not found, "references a cloner cannot follow:\n" + "\n".join(found)
