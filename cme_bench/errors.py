"""User-facing errors.

``CmeError`` is the one exception type whose message the CLI prints as-is, without a traceback: raise it for anything
a user can fix (a bad path, a wrong name, an invalid value). Anything else is a bug and keeps its traceback.
``LoadError`` is the one error for a file that cannot be read as what it should be (model, GGUF, adapter, config,
task YAML, run record): it carries the path, and ``loading(path, what)`` turns any failure inside it into one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class CmeError(Exception):
    """An error caused by user input or environment, reported as one readable message."""


class ConfigError(CmeError):
    """One or more invalid configuration values; the message lists every problem found."""

    def __init__(self, problems: list[str] | str, where: str = "config") -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid {where}:\n{lines}")


class LoadError(CmeError):
    """A file or folder that cannot be loaded; ``path`` names it, the message says what is wrong with it."""

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = str(path)
        super().__init__(message if self.path in message else f"{self.path}: {message}")


def _reason(exc: BaseException) -> str:
    text = re.sub(r"\s+", " ", str(exc)).strip().rstrip(".") or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


@contextmanager
def loading(path: str | Path, what: str, hint: str = "") -> Iterator[None]:
    """Turn any failure while loading ``path`` into ``LoadError`` ("cannot load <what> <path>: <reason>. <hint>").

    A ``CmeError`` raised inside passes through unchanged (it already says what is wrong). The original exception is
    chained, so ``-v`` still shows its traceback.
    """
    try:
        yield
    except CmeError:
        raise
    except Exception as exc:
        message = f"cannot load {what} {str(path)!r}: {type(exc).__name__}: {_reason(exc)}"
        raise LoadError(path, message + (f". {hint}" if hint else "")) from exc
