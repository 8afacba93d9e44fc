"""What every measurement shares: sizes, scratch and log folders, and where results go."""

from __future__ import annotations

import contextlib
import itertools
import os
from dataclasses import dataclass, field
from typing import Any

from bench.plan import Sizes
from bench.stats import Summary


@dataclass
class Row:
    """One line of a results table: a figure, its baseline, and the target it is held to."""

    measure: str
    target: str
    figure: str
    baseline: str
    passed: bool | None  # None: informational, no target


@dataclass
class Ctx:
    sizes: Sizes
    smoke: bool
    scratch: str
    logs: str
    rows: dict[str, list[Row]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)  # for plots and later measurements
    _names: itertools.count[int] = field(default_factory=itertools.count)

    def state(self, label: str) -> str:
        """A fresh state-file path in the scratch folder."""
        return os.path.join(self.scratch, f"{label}-{next(self._names)}.db")

    def add(self, section: str, row: Row) -> None:
        self.rows.setdefault(section, []).append(row)

    def note(self, section: str, text: str) -> None:
        self.notes.setdefault(section, []).append(text)

    def check(self, ok: bool) -> bool | None:
        """Smoke runs hold no thresholds."""
        return None if self.smoke else ok


def fmt(s: Summary, unit: str = "", digits: int = 0) -> str:
    """``median (low–high) unit`` with thousands separators."""

    def num(v: float) -> str:
        return f"{v:,.{digits}f}"

    text = f"{num(s.median)}{unit}"
    if s.n > 1:
        text += f" ({num(s.low)}–{num(s.high)})"
    return text


def drop_state(path: str) -> None:
    """Delete a state file and its companions (WAL, shared memory, lock)."""
    for suffix in ("", "-wal", "-shm", ".lock"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)
