"""Tables shared by every benchmark: a plain-text rendering and a Markdown one.

Every figure in a table is computed from measurements taken in the same run; nothing here
knows any number in advance.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import statistics
from collections.abc import Sequence


@dataclasses.dataclass
class Options:
    """Command-line choices passed to every benchmark."""

    quick: bool = False
    full: bool = False
    limit: int = 100


@dataclasses.dataclass
class Table:
    """One benchmark's result: a header, rows of already formatted cells, and notes."""

    name: str
    title: str
    columns: list[str] = dataclasses.field(default_factory=list)
    rows: list[list[str]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    skipped: str | None = None


def machine_line() -> str:
    """Date, platform, Python version, core count and 1-minute load, heading every table."""
    today = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    # Other work on the machine skews every figure; the load average shows whether there was any.
    load = f" | load {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    return (
        f"{today} | {platform.platform()} | Python {platform.python_version()} | "
        f"{os.cpu_count()} cores{load}"
    )


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def render_text(table: Table) -> str:
    lines = [f"=== {table.name}: {table.title}", f"    {machine_line()}"]
    if table.skipped is not None:
        lines.append(f"    SKIPPED: {table.skipped}")
        return "\n".join(lines)
    widths = [
        max(len(col), *(len(row[i]) for row in table.rows)) if table.rows else len(col)
        for i, col in enumerate(table.columns)
    ]

    def fmt(cells: Sequence[str]) -> str:
        # Left-align the first column (names), right-align the figures.
        parts = [cells[0].ljust(widths[0])]
        parts += [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "    " + "  ".join(parts)

    lines.append(fmt(table.columns))
    lines.append("    " + "  ".join("-" * w for w in widths))
    lines += [fmt(row) for row in table.rows]
    lines += [f"    {note}" for note in table.notes]
    return "\n".join(lines)


def render_markdown(tables: Sequence[Table]) -> str:
    out = [f"_{machine_line()}_", ""]
    for table in tables:
        out.append(f"#### {table.name}: {table.title}")
        out.append("")
        if table.skipped is not None:
            out += [f"Skipped: {table.skipped}", ""]
            continue
        out.append("| " + " | ".join(table.columns) + " |")
        out.append("|" + "|".join(["---"] + ["---:"] * (len(table.columns) - 1)) + "|")
        out += ["| " + " | ".join(row) + " |" for row in table.rows]
        out.append("")
        out += [f"{note}  " for note in table.notes]
        if table.notes:
            out.append("")
    return "\n".join(out).rstrip() + "\n"
