"""The table model: frozen dataclasses that every renderer reads and none of them builds.

A ``Table`` is columns plus rows of cells, HELM style (``stanford-crfm/helm:.../presentation/table.py``): a cell
holds a sortable ``value`` and a ready ``display`` string, optionally an ``interval`` (95% CI) and a ``stderr``; a
column says whether higher is better (``None`` for unordered columns such as names) and which ``group`` it belongs
to. Nothing here knows about HTML, Markdown or statistics, so renderers stay pure functions of a ``Table``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# Column groups, in display order. Renderers use them for header bands and the HTML domain filter.
GROUPS = ("info", "aggregate", "domain", "task", "efficiency", "cost")


@dataclass(frozen=True)
class Column:
    """One column: a stable ``key`` (``task:<name>``, ``domain:<name>``, ``cme_avg_domains``...) and how to read it."""

    key: str
    label: str
    group: str
    higher_is_better: bool | None = None  # None: not ordered (no "best", no win rate)
    description: str = ""
    domain: str | None = None  # task and domain columns: their domain, for filtering
    unit: str = ""  # e.g. "%" for scores shown x100, "s", "GiB"

    @property
    def ordered(self) -> bool:
        return self.higher_is_better is not None


@dataclass(frozen=True)
class Cell:
    """A sortable value plus how to show it. ``value`` is None for missing, failed or not applicable."""

    value: float | str | None = None
    display: str = "—"
    interval: tuple[float, float] | None = None  # 95% interval on the same scale as ``value``
    interval_display: str = ""
    stderr: float | None = None
    note: str = ""  # tooltip text: why a value is missing, what it averages over
    href: str | None = None  # link relative to the site root, for drill-down

    @property
    def is_number(self) -> bool:
        return isinstance(self.value, (int, float)) and not isinstance(self.value, bool)


EMPTY = Cell()


@dataclass(frozen=True)
class Row:
    """One run. ``meta`` carries filter keys (method, model, status) so renderers need not parse cells."""

    key: str
    cells: tuple[Cell, ...]
    status: str = "success"
    meta: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def ok(self) -> bool:
        return self.status == "success"


@dataclass(frozen=True)
class Table:
    title: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = ()
    # Columns whose best value is not statistically separable from the rest: no "best" is marked there.
    inseparable: frozenset[str] = frozenset()

    def index(self, key: str) -> int:
        for i, column in enumerate(self.columns):
            if column.key == key:
                return i
        raise KeyError(f"no column {key!r}; columns: {[c.key for c in self.columns]}")

    def column_values(self, key: str) -> list[float | str | None]:
        i = self.index(key)
        return [row.cells[i].value for row in self.rows]

    def cell(self, row_key: str, column_key: str) -> Cell:
        i = self.index(column_key)
        for row in self.rows:
            if row.key == row_key:
                return row.cells[i]
        raise KeyError(f"no row {row_key!r}")

    def best_rows(self, key: str) -> set[int]:
        """Index of the successful row holding the best value of an ordered numeric column; empty where several rows
        share that value or the builder found the best not separable from the others (``inseparable``)."""
        i = self.index(key)
        column = self.columns[i]
        if not column.ordered or key in self.inseparable:
            return set()
        values = {r: row.cells[i].value for r, row in enumerate(self.rows) if row.ok and row.cells[i].is_number}
        if len(values) < 2:  # a lone value is not "the best" of anything
            return set()
        best = max(values.values()) if column.higher_is_better else min(values.values())
        rows = {r for r, v in values.items() if v == best}
        return rows if len(rows) == 1 else set()
