"""Reading and writing the pipeline's CSV tables (UTF-8, one header row, ``.`` as decimal).

Tables are written as :mod:`cr51.schema` declares them: its columns in its order, each column as
its kind (:func:`conform`), so a value's text depends only on its column's kind — which is what lets
``collect`` write a table by concatenating rows the plates rendered in different jobs.

Every text cell written is neutralised against spreadsheet formula injection: a cell that
starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return and is not a number gets a
leading apostrophe (OWASP's advice for CSV injection). Ids typed in layouts are already
refused when they start like that (see :mod:`cr51.layout`); this guards file names and
anything else that comes from outside.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from . import store
from .schema import TABLES, Table

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def neutralise(text: object) -> object:
    """Prefix an apostrophe to text a spreadsheet would run as a formula."""
    if isinstance(text, str) and text.startswith(_FORMULA_START) and not _NUMBER.match(text):
        return "'" + text
    return text


def _neutralised_cells(cells: list[object]) -> list[object]:
    """A text column's cells with formula-like text neutralised (``cells`` itself when none is: a
    plate's text columns repeat a few values, looked at once each)."""
    try:
        distinct: set[object] | list[object] = set(cells)
    except TypeError:  # an unhashable cell: look at every one
        distinct = cells
    if not any(isinstance(v, str) and v.startswith(_FORMULA_START) for v in distinct):
        return cells
    return [neutralise(v) for v in cells]


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows of ``df`` as dicts of Python values, like ``DataFrame.to_dict("records")`` but
    several times faster: the values each column's ``tolist`` gives (Python floats, ints, bools,
    text, ``pd.NA``), read in one ``to_numpy(dtype=object)`` rather than a Series per column."""
    cols = list(df.columns)
    if not len(df) or not cols:
        return []
    return [dict(zip(cols, row)) for row in df.to_numpy(dtype=object).tolist()]


def concat_frames(parts: list[pd.DataFrame], columns: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """Concatenate tables in order: ``columns`` first, any other columns after them; an empty
    list (or only empty tables) gives an empty table with ``columns``."""
    columns = list(columns)
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame(columns=columns)
    out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)
    order = list(dict.fromkeys(columns + list(out.columns)))
    return out if list(out.columns) == order else out.reindex(columns=order)


def _as_kind(values: pd.Series, kind: str) -> pd.Series:
    if kind == "text":
        return values.astype("str")  # missing stays missing
    if kind == "float":
        return values.astype("float64")
    if kind == "int":
        return values.astype("Int64")  # whole numbers; a missing value prints empty, never "3.0"
    if kind == "bool" and not values.isna().any():
        return values.astype("bool")
    return values.astype("boolean")  # "boolean", or a "bool" column with a gap: never NaN read as True


def _prints_as_kind(dtype: Any, kind: str) -> bool:
    """Whether a column of ``dtype`` already prints as ``kind`` does (then it is left as it is): text as
    ``object`` or a string dtype, float as ``float64``, int as ``int64`` or ``Int64``, bool and boolean as
    ``bool`` or ``boolean``. (Type checks, not ``dtype == "float64"``: comparing an extension dtype with a
    string parses the string, the largest cost of conforming a plate's rows.)"""
    if isinstance(dtype, np.dtype):
        if kind == "text":
            return dtype.kind == "O"
        if kind == "float":
            return dtype == np.float64
        if kind == "int":
            return dtype == np.int64
        return dtype.kind == "b"
    if kind == "text":
        return isinstance(dtype, pd.StringDtype)
    if kind == "float":
        return False
    if kind == "int":
        return isinstance(dtype, pd.Int64Dtype)
    return isinstance(dtype, pd.BooleanDtype)


def conform(df: pd.DataFrame, table: Table) -> pd.DataFrame:
    """``df`` as ``table`` declares it: exactly its columns (missing ones empty), in order, each
    printing as its kind (converted where its dtype would print otherwise, e.g. ints in a float
    column, or a gap in an int column). Raises ``ValueError``/``TypeError`` for a value its kind
    cannot hold (e.g. 2.5 as an int)."""
    if tuple(df.columns) != table.names:
        df = df.reindex(columns=list(table.names))
    changed = {
        c.name: _as_kind(df[c.name], c.kind) for c in table.columns if not _prints_as_kind(df.dtypes[c.name], c.kind)
    }
    return df.assign(**changed) if changed else df


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file through ``write(fh)`` (binary) into a temporary file beside it, then rename it into place.

    The file gets the mode an ordinary ``open`` would give (``0o666`` less the process umask: with
    umask 002 the lab group can read it), not ``mkstemp``'s owner-only ``0o600``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, write: Callable[[IO[str]], None]) -> None:
    """Write a UTF-8 text file through ``write(fh)`` atomically (:func:`write_bytes_atomic`)."""

    def binary(fh: IO[bytes]) -> None:
        text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
        write(text)
        text.flush()
        text.detach()  # the caller closes the file

    write_bytes_atomic(path, binary)


def write_if_changed(path: str | os.PathLike, text: str) -> bool:
    """Write ``text`` (UTF-8) at ``path`` atomically unless the file already holds exactly these bytes
    (then it is left alone: same bytes, same mtime). Whether it wrote (:func:`cr51.store.write_if_changed`)."""
    return store.write_if_changed(path, text.encode("utf-8"))


def write_table(df: pd.DataFrame, path: str | os.PathLike, table: Table) -> None:
    """Write ``df`` atomically as the CSV of ``table`` (:func:`conform`), formula-like text neutralised:
    the header, then :func:`render_rows` (byte for byte ``to_csv``'s text, made without it: the plate
    history and trends of 10,000 plates took ~1 s of ``to_csv`` in every ``collect``)."""
    rows = render_rows(df, table)
    text = ",".join(table.names) + "\n" + (rows.text if rows is not None else "")
    write_text_atomic(path, lambda fh: fh.write(text))


@dataclass(frozen=True)
class Rows:
    """One plate's rows of a result table rendered as :func:`write_table` writes them, without the
    header, as UTF-8 bytes (``text``: decoded). Rows of many plates concatenated under the table's
    header are byte for byte what :func:`write_table` writes for the concatenation of their tables
    (every part was conformed to the same declared kinds, and a value's text depends only on its kind).
    Kept as bytes — read from a batch file, a view into it (:func:`cr51.batch.batch_from_payload`) —
    because ``collect`` only concatenates them: 250 MB at 10,000 plates."""

    table: str
    data: bytes | memoryview

    @classmethod
    def of_text(cls, table: str, text: str) -> Rows:
        return cls(table, text.encode("utf-8"))

    @property
    def text(self) -> str:
        return str(self.data, "utf-8")


def _object_floats(values: list[object], kind: str) -> list[str] | None:
    """The cells of an ``object`` column holding only Python floats (a merge's columns) for a float or
    int kind: the text ``float64`` and ``Int64`` would print. ``None`` for any other column, and for a
    fraction or a huge number in an int column (:func:`_as_kind` refuses those)."""
    if kind not in ("float", "int") or not all(type(v) is float for v in values):
        return None
    floats: list[float] = values  # type: ignore[assignment]
    if kind == "float":
        return ["" if v != v else repr(v) for v in floats]
    if all(v != v or (v.is_integer() and abs(v) < 2.0**53) for v in floats):
        return ["" if v != v else str(int(v)) for v in floats]
    return None


def _csv_cells(values: pd.Series, kind: str) -> list[object]:
    """A column's cells as ``DataFrame.to_csv`` hands them to the csv writer once :func:`conform` has
    made the column print as ``kind``: a float64 as its ``repr`` (numpy's ``astype(str)``: the same
    text), a numpy int or bool as ``str``, any other value (text, ``Int64``, ``boolean``) as it is;
    missing values (NaN, ``None``, ``pd.NA``) as "".

    The column is converted (:func:`_as_kind`) only where its dtype would print otherwise (an
    ``object`` column of Python floats is read directly, :func:`_object_floats`)."""
    dtype = values.dtype
    if not _prints_as_kind(dtype, kind):
        if isinstance(dtype, np.dtype) and dtype.kind == "O":
            cells = _object_floats(values.tolist(), kind)
            if cells is not None:
                return cells
        values = _as_kind(values, kind)
        dtype = values.dtype
    if isinstance(dtype, np.dtype):
        if dtype == np.float64:
            return ["" if v != v else repr(v) for v in values.tolist()]
        if dtype.kind in "iub":  # never missing
            return [str(v) for v in values.tolist()]
    cells = values.to_numpy(dtype=object)
    missing = pd.isna(cells).tolist()
    cells = ["" if gap else v for v, gap in zip(cells.tolist(), missing)]
    if dtype == np.object_ or isinstance(dtype, pd.StringDtype):  # a text column: neutralised
        return _neutralised_cells(cells)
    return cells


def render_rows(df: pd.DataFrame, table: Table) -> Rows | None:
    """``df``'s rows as :func:`write_table` writes them (``None`` for an empty table).

    The same text as ``conform(df, table).to_csv(index=False, header=False)`` with every text cell
    :func:`neutralise`-d first (what
    :func:`write_table` writes under the header), made without ``to_csv``'s per-call set-up and
    without a pandas Series per column: every cell is read once as a Python value
    (``to_numpy(dtype=object)``: floats, ints, bools, text, missing values), missing ones made "", and
    a column that already prints as its kind written from those values (text ones
    :func:`neutralise`-d; the csv writer writes a float as its ``repr``, the text ``to_csv`` gives a
    float64, and an int or bool as ``str``); any other column as :func:`_csv_cells` makes it; a column
    ``df`` lacks is empty, whatever its kind. The rows are what the csv writer ``to_csv`` uses writes
    (the default dialect: ``QUOTE_MINIMAL``, ``"`` doubled), with newline line ends, joined by
    :func:`_csv_text`.
    """
    if df.empty:
        return None
    if not df.columns.is_unique:  # conform's reindex refuses it, as before
        df = conform(df, table)
    raw = df.to_numpy(dtype=object)
    cells = raw.copy()
    cells[pd.isna(raw)] = ""
    at = {name: j for j, name in enumerate(df.columns)}
    dtypes = list(df.dtypes)
    columns: list[list[object]] = []
    for col in table.columns:
        j = at.get(col.name)
        if j is None:  # a missing column: empty cells, whatever its kind
            columns.append([""] * len(df))
            continue
        dtype = dtypes[j]
        text = dtype == np.object_ or isinstance(dtype, pd.StringDtype)  # noqa: E721 - numpy dtype equality
        if _prints_as_kind(dtype, col.kind):
            values = cells[:, j].tolist()
            columns.append(_neutralised_cells(values) if text else values)
            continue
        floats = _object_floats(raw[:, j].tolist(), col.kind) if text and isinstance(dtype, np.dtype) else None
        columns.append(floats if floats is not None else _csv_cells(df.iloc[:, j], col.kind))
    return Rows.of_text(table.name, _csv_text(columns))


def _quoted_characters() -> str:
    """The characters that make the csv writer (``QUOTE_MINIMAL``, ``lineterminator="\\n"``) quote
    a cell, asked of this Python's ``csv`` (``\\r`` is one in some versions, not in 3.11)."""
    probe = io.StringIO()
    candidates = ",\"\r\n\t\x00 '\\;"
    csv.writer(probe, lineterminator="\n").writerow([f"a{c}b" for c in candidates])
    written = probe.getvalue()
    return "".join(c for c in candidates if f'"a{c}b' in written or f'"a{c}{c}b' in written)


#: A cell the csv writer quotes.
_NEEDS_QUOTES = re.compile("[" + re.escape(_quoted_characters()) + "]")


#: Cell types whose text never needs quoting (:func:`_cell_texts`).
_NUMBERS = frozenset({float, int, bool})


def _cell_texts(values: list[object]) -> list[str]:
    """A column's cells as the csv writer writes them in a row of several: anything not text as
    ``str`` (a float: its ``repr``); text holding a comma, a quote or a line end quoted (``"``
    doubled). Each distinct text is looked at once (a column repeats a few values); a column of
    numbers only is not looked at (no ``repr`` of a number holds such a character)."""
    kinds = set(map(type, values))
    if type(None) in kinds:
        texts = [v if type(v) is str else "" if v is None else str(v) for v in values]
    else:
        texts = list(map(str, values))  # str(v) of each, in one C loop (a float's str is its repr)
        if kinds <= _NUMBERS:
            return texts
    quoted = {v: '"' + v.replace('"', '""') + '"' for v in set(texts) if _NEEDS_QUOTES.search(v)}
    return [quoted.get(v, v) for v in texts] if quoted else texts


def _csv_text(columns: list[list[object]]) -> str:
    """The rows of ``columns`` as ``csv.writer(lineterminator="\\n").writerows`` writes them, joined
    column by column (about twice as fast: the plate history and trends of 10,000 plates are
    rendered in every ``collect``). A one-column table goes through the csv writer itself (it
    writes an empty cell alone on its row as ``""``)."""
    if len(columns) < 2 or not columns[0]:
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(zip(*columns))
        return out.getvalue()
    return "\n".join(map(",".join, zip(*map(_cell_texts, columns)))) + "\n"


def write_rows(path: str | os.PathLike, table: Table, parts: list[Rows]) -> None:
    """Write rendered rows of ``table`` under its header, atomically (bytes as they are: no re-encoding)."""
    wrong = {p.table for p in parts} - {table.name}
    if wrong:
        raise ValueError(f"rows of {sorted(wrong)} cannot be written as {table.name}.csv")

    def write(fh: IO[bytes]) -> None:
        fh.write((",".join(table.names) + "\n").encode("utf-8"))
        fh.flush()
        for i in range(0, len(parts), WRITEV_PARTS):  # one system call per 512 plates, not one each
            _write_all(fh.fileno(), [p.data for p in parts[i : i + WRITEV_PARTS]])

    write_bytes_atomic(path, write)


#: How many buffers one ``os.writev`` call gets (Linux allows 1,024).
WRITEV_PARTS = 512


def _write_all(fd: int, buffers: list[bytes | memoryview]) -> None:
    """Write every buffer to ``fd`` in order (``os.writev``, again for what a short write left)."""
    views = [memoryview(b) for b in buffers if len(b)]
    while views:
        done = os.writev(fd, views)
        while views and done >= len(views[0]):
            done -= len(views[0])
            views.pop(0)
        if views and done:
            views[0] = views[0][done:]


def read_table(path: str | os.PathLike | io.StringIO, table: Table | None = None) -> pd.DataFrame:
    """Read a table written by :func:`write_table` (``table``: by default the schema table named like
    the file): text columns stay text (``NA`` and ``007`` too; empty = missing), float columns are
    floats even when empty; other columns as pandas reads them."""
    if isinstance(path, io.StringIO):  # CSV text (cr51.batch.frame_of): the header from its first line
        text = path.getvalue()
        header = text[: text.find("\n")].split(",")
        path = io.StringIO(text)
    else:
        header = list(pd.read_csv(path, nrows=0).columns)
    table = table or TABLES.get(Path(path).stem)
    kinds = table.kinds if table else {c: "text" for t in TABLES.values() for c in t.text}
    dtypes = {c: {"text": "object", "float": "float64"}[kinds[c]] for c in header if kinds.get(c) in ("text", "float")}
    return pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values=[""])
