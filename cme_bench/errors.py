"""User-facing errors.

``CmeError`` is the one exception type whose message the CLI prints as-is, without a traceback: raise it for anything
a user can fix (a bad path, a wrong name, an invalid value). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CmeError(Exception):
    """An error caused by user input or environment, reported as one readable message."""


class ConfigError(CmeError):
    """One or more invalid configuration values; the message lists every problem found."""

    def __init__(self, problems: list[str] | str, where: str = "config") -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid {where}:\n{lines}")
