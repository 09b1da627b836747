"""Writing report files: a temporary file in the same folder, then a rename, so a reader (or a browser reload)
never sees half a page. No fsync: every report file can be regenerated, and a site has hundreds of them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_text_replace(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
