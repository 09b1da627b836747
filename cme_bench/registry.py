"""A small name -> object registry with lazy ``"module:attr"`` targets.

Registries fail loudly: registering a name twice with a different target is an error, and a lookup miss names the
closest matches and every available name. Adapter methods, built-in models and report renderers all use it.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator
from typing import Generic, TypeVar

from cme_bench.errors import CmeError

T = TypeVar("T")


def suggest(name: str, choices: list[str], what: str) -> str:
    """A readable "unknown X" message with near matches and the full list of choices."""
    near = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
    return f"unknown {what} {name!r}.{hint} Available: {', '.join(sorted(choices)) or '(none)'}."


class Registry(Generic[T]):
    """Maps names to objects or to lazy ``"package.module:attr"`` strings resolved on first use."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, T | str] = {}

    def register(self, name: str, target: T | str) -> None:
        if name in self._items and self._items[name] != target:
            raise CmeError(f"{self.what} {name!r} is already registered to {self._items[name]!r}")
        self._items[name] = target

    def get(self, name: str) -> T:
        if name not in self._items:
            raise CmeError(suggest(name, list(self._items), self.what))
        target = self._items[name]
        if isinstance(target, str) and ":" in target:
            module, _, attr = target.partition(":")
            target = getattr(importlib.import_module(module), attr)
            self._items[name] = target
        return target  # type: ignore[return-value]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
