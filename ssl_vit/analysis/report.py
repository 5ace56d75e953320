"""A readable Markdown report: a summary table, result tables, the figures embedded, and notes as prose.

Links to figures are relative to the report, so the folder can be moved, zipped or viewed on GitHub as is.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..files import atomic_write, make_dir


def format_value(value: Any) -> str:
    """Numbers to 4 significant digits (integers exactly), everything else as text, safe inside a table cell."""
    if isinstance(value, bool) or value is None:
        text = "—" if value is None else str(value).lower()
    elif isinstance(value, int):
        text = f"{value:,}"
    elif isinstance(value, float):
        text = "—" if math.isnan(value) else f"{value:.4g}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(
    rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]], columns: Sequence[str] | None = None
) -> str:
    """A GitHub-flavoured Markdown table from dict rows (columns: union of keys, first seen first) or list rows."""
    if columns is None:
        seen: dict[str, None] = {}
        for row in rows:
            if not isinstance(row, Mapping):
                raise ValueError("list rows need explicit columns")
            seen.update(dict.fromkeys(row))
        columns = list(seen)
    lines = ["| " + " | ".join(format_value(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [row.get(c) for c in columns] if isinstance(row, Mapping) else list(row)
        if len(cells) != len(columns):
            raise ValueError(f"row {cells!r} has {len(cells)} cells for {len(columns)} columns")
        lines.append("| " + " | ".join(format_value(v) for v in cells) + " |")
    return "\n".join(lines)


def _table_section(table: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> str:
    """A table given as `{"title", "rows", "columns"?, "caption"?}` or as a bare list of dict rows."""
    if not isinstance(table, Mapping):
        return markdown_table(table)
    parts = [f"### {table['title']}"] if table.get("title") else []
    parts.append(markdown_table(table["rows"], table.get("columns")))
    if table.get("caption"):
        parts.append(str(table["caption"]))
    return "\n\n".join(parts)


def write_report(
    out_dir: str | Path,
    *,
    title: str,
    summary: Mapping[str, Any] | None = None,
    figures: Mapping[str, str | Path] | None = None,
    tables: Sequence[Mapping[str, Any] | Sequence[Mapping[str, Any]]] = (),
    notes: Sequence[str] = (),
    filename: str = "report.md",
) -> Path:
    """Write `out_dir/filename` and return its path.

    summary: key → value, shown as a two-column table at the top;
    tables:  each `{"title": ..., "rows": [dict, ...]}` (or `"columns"` with list rows, optional `"caption"`);
    figures: name → PNG path, embedded with links relative to the report (a missing file is listed as such);
    notes:   paragraphs of prose, in order.
    """
    out_dir = Path(out_dir)
    make_dir(out_dir, "output directory")
    sections = [f"# {title}"]
    if summary:
        sections.append(markdown_table([{"": k, "value": v} for k, v in summary.items()], ["", "value"]))
    if tables:
        sections.append("## Results")
        sections.extend(_table_section(t) for t in tables)
    if figures:
        sections.append("## Figures")
        for name, path in figures.items():
            path = Path(path)
            link = Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()
            if path.is_file():
                sections.append(f"### {name}\n\n![{name}]({link})")
            else:
                sections.append(f"### {name}\n\n(figure not written: `{link}` is missing)")
    if notes:
        sections.append("## Notes")
        sections.extend(str(n).strip() for n in notes)
    path = out_dir / filename
    atomic_write(path, "\n\n".join(sections) + "\n")
    return path
