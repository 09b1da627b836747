"""Writing report files: a temporary file in the same folder, then a rename, so a reader (or a browser reload)
never sees half a page. No fsync: every report file can be regenerated, and a site has hundreds of them.
"""

from __future__ import annotations

from pathlib import Path

from cme_bench.results import write_text_atomic


def write_text_replace(path: Path, text: str) -> None:
    write_text_atomic(path, text, fsync=False)
