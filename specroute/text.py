"""Text the reports and messages share: counts with their noun in the right number (:func:`plural`) and
markdown tables that no cell can break, the one helper for every table in a report.md (study and bench).

A literal ``|`` in a cell would end the cell and a newline the row; :func:`md_cell` escapes the first
(``\\|``, which GitHub-flavoured markdown renders as ``|``, inside code spans too) and turns line breaks
into spaces.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def md_cell(value: Any) -> str:
    """Text of one table cell: ``str(value)`` with ``|`` escaped and line breaks as spaces."""
    text = str(value).replace("\r\n", " ").replace("\r", " ").replace("\n", " ")
    return text.replace("\\|", "|").replace("|", "\\|")


def md_row(*cells: Any) -> str:
    """One table row, every cell through :func:`md_cell`."""
    return "| " + " | ".join(md_cell(c) for c in cells) + " |"


def md_table(header: Iterable[Any], rows: Iterable[Iterable[Any]]) -> list[str]:
    """The lines of a table: header, separator, one line per row. A row with fewer cells than the header is
    padded with empty cells; one with more raises ValueError (it would shift every later column)."""
    header = list(header)
    lines = [md_row(*header), "|" + "---|" * len(header)]
    for row in rows:
        row = list(row)
        if len(row) > len(header):
            raise ValueError(f"table row has {len(row)} cells, header {len(header)}: {row}")
        lines.append(md_row(*row, *([""] * (len(header) - len(row)))))
    return lines


def plural(n: int, noun: str, plural_form: str | None = None) -> str:
    """``plural(1, "run")`` -> ``"1 run"``, ``plural(3, "run")`` -> ``"3 runs"``; ``plural_form`` for an
    irregular noun."""
    return f"{n} {noun if n == 1 else plural_form or noun + 's'}"
