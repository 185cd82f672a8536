"""HTML building blocks of the report: number formatting, escaping, table cells and tables, plate ids.

Every number the report prints goes through :func:`fmt`, so that it can be checked against the
CSVs rounded the same way; numeric table cells carry ``data-c="<csv column>"`` (:func:`td`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from html import escape
from typing import TypeVar

import numpy as np
import pandas as pd

from ..scan import BIDI

T = TypeVar("T")


def fmt(value: object) -> str:
    """A number as the report prints it.

    Parameters
    ----------
    value
        A number, a boolean, text or a missing value (None, NaN, ``pd.NA``).

    Returns
    -------
    str
        4 significant digits (whole numbers from 10 000 up to 10^6); missing values as an en
        dash, booleans as yes/no, text as itself.
    """
    if value is None or value is pd.NA:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    v = float(value)  # type: ignore[arg-type]
    if math.isnan(v):
        return "–"
    if 1e4 <= abs(v) < 1e6:
        return f"{v:.0f}"
    return f"{v:.4g}"


def esc(text: object) -> str:
    """HTML-escaped text (quotes too, so it may go in an attribute); missing values as an en dash.

    Invisible bidirectional controls (U+202A-U+202E, U+2066-U+2069, U+200E/F) are shown as their code
    (``\\u202e``): an escaped character reference would still reorder the text around it, so a plate or
    file name could display as another."""
    if text is None or (isinstance(text, float) and math.isnan(text)) or text is pd.NA:
        return "–"
    return escape(BIDI.sub(lambda m: f"\\u{ord(m.group()):04x}", str(text)), quote=True)


def missing(v: object) -> bool:
    """Whether a table value is missing (None, ``pd.NA`` or a float NaN)."""
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def truthy(v: object) -> bool:
    """Whether a table value means true (``True``, or the text ``true`` as read back from a CSV)."""
    return v is True or str(v).lower() == "true"


def td(value: object, col: str | None = None, cls: str = "") -> str:
    """A table cell.

    Parameters
    ----------
    value
        The cell's value: numbers are printed with :func:`fmt` and right-aligned (class ``n``).
    col
        The CSV column the value comes from (``data-c``), for checking the report against the CSVs.
    cls
        Further CSS classes of the cell.

    Returns
    -------
    str
        The ``<td>`` element.
    """
    numeric = not isinstance(value, str) and value is not None and not isinstance(value, (bool, np.bool_))
    klass = " ".join(c for c in (cls, "n" if numeric else "") if c)
    attrs = (f' class="{klass}"' if klass else "") + (f' data-c="{col}"' if col else "")
    return f"<td{attrs}>{esc(fmt(value)) if numeric or isinstance(value, (bool, np.bool_)) else esc(value)}</td>"


def table(headers: Sequence[str], rows: Iterable[str], attrs: str = "") -> str:
    """A data table.

    Parameters
    ----------
    headers
        Header texts (HTML: escape them where needed).
    rows
        Pre-rendered ``<tr>`` rows.
    attrs
        Further attributes of the ``<table>`` element, with a leading space (e.g. ``' data-table="qc"'``).
    """
    head = "".join(f"<th>{h}</th>" for h in headers)
    return f'<table class="data"{attrs}><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def plate_id(plate: str) -> str:
    """The HTML id of a plate's section: ``plate-`` + 10 hex digits of the name's sha1 (names may hold any character)."""
    return "plate-" + hashlib.sha1(plate.encode("utf-8")).hexdigest()[:10]


#: The most rows a table on the index shows; the CSV it comes from has them all.
INDEX_ROWS = 200


def capped(rows: list[str], csv: str, limit: int = INDEX_ROWS) -> tuple[list[str], str]:
    """The first ``limit`` rows and a note saying how many more ``csv`` holds ("" when none are left out)."""
    if len(rows) <= limit:
        return rows, ""
    return rows[:limit], more_rows(len(rows), csv, limit)


def more_rows(total: int, csv: str, limit: int = INDEX_ROWS) -> str:
    """The note under a table showing the first ``limit`` of ``total`` rows: how many more ``csv`` holds
    ("" when none are left out). For a table that renders only the rows it shows (:func:`capped` cuts
    rendered rows)."""
    return f'<p class="muted">{total - limit} more row(s) in <code>{esc(csv)}</code>.</p>' if total > limit else ""


def map_distinct(f: Callable[[object], T], values: Sequence[object]) -> list[T]:
    """``[f(v) for v in values]``, calling ``f`` once per distinct value (10,000 plates have a few
    hundred dates), for an ``f`` that gives equal values of one type equal results (a date's sort key, a cell's text).
    Values are told apart by type as well as by value (``1``, ``1.0`` and ``True`` are equal keys of a
    dict but not equal texts)."""
    seen: dict[tuple[type, object], T] = {}
    out = []
    for v in values:
        key = (type(v), v)
        if key not in seen:
            seen[key] = f(v)
        out.append(seen[key])
    return out
