"""Output modes of the ``duckdb-ft`` shell: DuckDB's box table, and csv, json, line, markdown, list.

A renderer takes the column names, their DuckDB types, and the rows as text (each value as DuckDB casts it to
VARCHAR, None for NULL), as an iterator, so a large result streams through csv or json without being held, and the
box keeps only the rows it shows. Nothing here runs a query.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Callable, TextIO

from rich.cells import cell_len

NULL = "NULL"
BOX_ROWS = 40           # rows a box shows: the first and last half of these, as DuckDB's shell does
MIN_COLUMN_WIDTH = 12   # a wide column is shrunk to no less than this before columns are left out
Rows = Iterable[Sequence["str | None"]]

_INTS = {"TINYINT": "int8", "SMALLINT": "int16", "INTEGER": "int32", "BIGINT": "int64", "HUGEINT": "int128",
         "UTINYINT": "uint8", "USMALLINT": "uint16", "UINTEGER": "uint32", "UBIGINT": "uint64",
         "UHUGEINT": "uint128"}
_NUMERIC = re.compile(r"^(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|UTINYINT|USMALLINT|UINTEGER|UBIGINT|UHUGEINT"
                      r"|FLOAT|DOUBLE|DECIMAL(\(\d+,\s*\d+\))?)$")


def is_numeric(type_name: str) -> bool:
    """Numbers are right-aligned in a box and unquoted in JSON."""
    return bool(_NUMERIC.match(type_name))


def box_type(type_name: str) -> str:
    """The type as DuckDB's box header writes it: ``INTEGER`` is ``int32``, ``VARCHAR[]`` is ``varchar[]``."""
    m = re.match(r"^([A-Z]+)((\[\d*\])*)$", type_name)
    if m and m.group(1) in _INTS:
        return _INTS[m.group(1)] + m.group(2).lower()
    return type_name.lower()


def _cell(value: str | None) -> str:
    if value is None:
        return NULL
    return value.replace("\r", "\\r").replace("\n", "\\n").replace("\t", " ")


def _fit(text: str, width: int) -> str:
    """Cut ``text`` to ``width`` terminal cells, ending with an ellipsis when cut."""
    if cell_len(text) <= width:
        return text
    out, used = [], 0
    for ch in text:
        w = cell_len(ch)
        if used + w > width - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


def _pad(text: str, width: int, align: str) -> str:
    gap = width - cell_len(text)
    if align == "right":
        return " " * gap + text
    if align == "center":
        return " " * (gap // 2) + text + " " * (gap - gap // 2)
    return text + " " * gap


def _layout(widths: list[int], max_width: int) -> tuple[list[int], list[int | None]]:
    """Shrink the widest columns, then leave out middle columns (an ``…`` column), until the table fits."""
    widths = list(widths)

    def total(ws: Sequence[int]) -> int:
        return sum(ws) + 3 * len(ws) + 1

    while total(widths) > max_width:
        widest = max(range(len(widths)), key=lambda i: widths[i])
        if widths[widest] <= MIN_COLUMN_WIDTH:
            break
        widths[widest] -= 1
    order: list[int | None] = list(range(len(widths)))
    while len(order) > 2 and total([1 if i is None else widths[i] for i in order]) > max_width:
        kept = [i for i in order if i is not None]
        drop = kept[len(kept) // 2]
        left = [i for i in kept if i < drop]
        right = [i for i in kept if i > drop]
        order = left + [None] + right
    return widths, order


def box(out: TextIO, columns: Sequence[str], types: Sequence[str], rows: Rows, *, max_width: int = 120,
        max_rows: int = BOX_ROWS) -> None:
    """DuckDB's box table: names and types on top, numbers right-aligned, NULL as NULL, long results cut."""
    half = max(1, max_rows // 2)
    head: list[list[str]] = []
    tail: deque[list[str]] = deque(maxlen=half)
    count = 0
    for row in rows:
        count += 1
        cells = [_cell(v) for v in row]
        if len(head) < half:
            head.append(cells)
        else:
            tail.append(cells)
    shown = head + list(tail)
    cut = count > len(shown)
    names = [_cell(c) for c in columns]
    tnames = [box_type(t) for t in types]
    natural = [max([cell_len(names[i]), cell_len(tnames[i])] + [cell_len(r[i]) for r in shown])
               for i in range(len(columns))]
    widths, order = _layout(natural, max_width)
    aligns = ["right" if is_numeric(t) else "left" for t in types]

    def line(left: str, mid: str, right: str) -> str:
        return left + mid.join("─" * ((1 if i is None else widths[i]) + 2) for i in order) + right

    def row_line(cells: Sequence[str], align: Callable[[int], str]) -> str:
        parts = [" " + ("…" if i is None else _pad(_fit(cells[i], widths[i]), widths[i], align(i))) + " "
                 for i in order]
        return "│" + "│".join(parts) + "│"

    lines = [line("┌", "┬", "┐"), row_line(names, lambda i: "center"), row_line(tnames, lambda i: "center"),
             line("├", "┼", "┤")]
    lines += [row_line(r, lambda i: aligns[i]) for r in head]
    if cut:
        dots = ["·"] * len(columns)
        lines += [row_line(dots, lambda i: aligns[i] if aligns[i] == "right" else "center")] * 3
        lines += [row_line(r, lambda i: aligns[i]) for r in tail]
    lines.append(line("└", "┴", "┘"))
    footer = []
    if count == 0 or cut:
        footer.append(f"{count} rows" + (f" ({len(shown)} shown)" if cut else ""))
    if None in order:
        visible = len([i for i in order if i is not None])
        footer.append(f"{len(columns)} columns ({visible} shown)")
    if footer:
        text = "  ".join(footer)
        lines.append(_pad(text, max(cell_len(lines[0]), cell_len(text)), "center").rstrip())
    out.write("\n".join(lines) + "\n")


def csv_mode(out: TextIO, columns: Sequence[str], types: Sequence[str], rows: Rows, **_: object) -> None:
    """A header line, then RFC 4180 rows; NULL is an empty field."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])


def _json_value(value: str | None, type_name: str) -> str:
    if value is None:
        return "null"
    if type_name == "BOOLEAN" or type_name == "JSON" or (is_numeric(type_name) and
                                                         value not in ("nan", "inf", "-inf")):
        return value
    return json.dumps(value, ensure_ascii=False)


def json_mode(out: TextIO, columns: Sequence[str], types: Sequence[str], rows: Rows, **_: object) -> None:
    """One JSON array of objects, a row a line, as DuckDB's ``.mode json``."""
    keys = [json.dumps(c, ensure_ascii=False) for c in columns]
    first = True
    for row in rows:
        obj = "{" + ",".join(f"{k}:{_json_value(v, t)}" for k, v, t in zip(keys, row, types)) + "}"
        out.write(("[" if first else ",\n") + obj)
        first = False
    out.write("[]\n" if first else "]\n")


def line_mode(out: TextIO, columns: Sequence[str], types: Sequence[str], rows: Rows, **_: object) -> None:
    """One ``name = value`` line a column, names right-aligned, a blank line between rows."""
    width = max((cell_len(c) for c in columns), default=0)
    for n, row in enumerate(rows):
        if n:
            out.write("\n")
        for c, v in zip(columns, row):
            out.write(f"{_pad(c, width, 'right')} = {NULL if v is None else v}\n")


def markdown_mode(out: TextIO, columns: Sequence[str], types: Sequence[str], rows: Rows, **_: object) -> None:
    """A GitHub-flavoured Markdown table; numbers right-aligned."""
    body = [[_cell(v).replace("|", "\\|") for v in row] for row in rows]
    names = [c.replace("|", "\\|") for c in columns]
    widths = [max([3, cell_len(names[i])] + [cell_len(r[i]) for r in body]) for i in range(len(columns))]
    right = [is_numeric(t) for t in types]

    def row_line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(_pad(c, widths[i], "right" if right[i] else "left")
                                 for i, c in enumerate(cells)) + " |"

    out.write(row_line(names) + "\n")
    out.write("|" + "|".join("-" * (w + 1) + ":" if r else "-" * (w + 2) for w, r in zip(widths, right)) + "|\n")
    for r in body:
        out.write(row_line(r) + "\n")


def list_mode(out: TextIO, columns: Sequence[str], types: Sequence[str], rows: Rows, **_: object) -> None:
    """Values separated by ``|``, a header line first."""
    out.write("|".join(columns) + "\n")
    for row in rows:
        out.write("|".join(NULL if v is None else v for v in row) + "\n")


#: Output modes by name (``.mode NAME``); ``duckbox`` is DuckDB's own name for the box.
MODES: dict[str, Callable[..., None]] = {
    "box": box, "duckbox": box, "csv": csv_mode, "json": json_mode, "line": line_mode,
    "markdown": markdown_mode, "list": list_mode,
}


def render(mode: str, columns: Sequence[str], types: Sequence[str], rows: Rows, **options: object) -> str:
    """Render to a string (for tests and callers that want text)."""
    buf = io.StringIO()
    MODES[mode](buf, columns, types, rows, **options)
    return buf.getvalue()

