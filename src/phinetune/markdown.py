"""The one Markdown table writer (report.md, compare.md): cells escaped so any text stays inside its cell."""

from __future__ import annotations


def md_cell(value) -> str:
    """`|` escaped and line breaks as <br> (GitHub renders them inside a cell); None is an empty cell."""
    return ("" if value is None else str(value)).replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows])
