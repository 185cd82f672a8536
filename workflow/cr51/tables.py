"""Reading and writing the pipeline's CSV tables (UTF-8, one header row, ``.`` as decimal).

Every text cell written is neutralised against spreadsheet formula injection: a cell that
starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return and is not a number gets a
leading apostrophe (OWASP's advice for CSV injection). Ids typed in layouts are already
refused when they start like that (see :mod:`cr51.layout`); this guards file names and
anything else that comes from outside.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pandas as pd

FILES_COLUMNS = ["file", "sha256", "bytes", "status", "plate", "reason"]
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def neutralise(text: object) -> object:
    """Prefix an apostrophe to text a spreadsheet would run as a formula."""
    if isinstance(text, str) and text.startswith(_FORMULA_START) and not _NUMBER.match(text):
        return "'" + text
    return text


def neutralised(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every formula-like text cell neutralised (``df`` itself when none is)."""
    out = df
    for col, dtype in zip(df.columns, df.dtypes):
        if not (dtype == object or isinstance(dtype, pd.StringDtype)):  # noqa: E721 - numpy dtype equality
            continue
        values = df[col].to_numpy().tolist()
        try:
            values = set(values)  # a plate's text columns repeat a few values
        except TypeError:  # an unhashable cell: look at every one
            pass
        if not any(isinstance(v, str) and v.startswith(_FORMULA_START) for v in values):
            continue  # the common case: nothing to change, no copy
        if out is df:
            out = df.copy()
        out[col] = df[col].map(neutralise)
    return out


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows of ``df`` as dicts of Python values, like ``DataFrame.to_dict("records")`` but
    several times faster (one ``tolist`` per column)."""
    cols = list(df.columns)
    return [dict(zip(cols, row)) for row in zip(*(s.tolist() for _, s in df.items()))] if len(df) else []


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


def _write_atomic(path: str | os.PathLike, write: Callable[[IO[str]], None]) -> None:
    """Write a text file through ``write(fh)`` into a temporary file, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_table(df: pd.DataFrame, path: str | os.PathLike, columns: list[str] | None = None) -> None:
    """Write ``df`` (optionally these columns, in this order) atomically as CSV, formula-like text
    neutralised."""
    if columns is not None:
        df = df.reindex(columns=columns)
    df = neutralised(df)
    _write_atomic(path, lambda fh: df.to_csv(fh, index=False, lineterminator="\n"))


@dataclass(frozen=True)
class Rows:
    """One plate's rows of a result table rendered as :func:`write_table` writes them, without
    the header, with the columns and dtypes they were rendered from.

    Rows of many plates concatenated under one header are byte for byte what :func:`write_table`
    writes for the concatenation of their tables *when every part has the same columns and
    dtypes* (a value's text depends only on its column's dtype); :func:`same_layout` checks that.
    """

    columns: tuple[str, ...]
    dtypes: tuple[Any, ...]
    text: str


def render_rows(df: pd.DataFrame, columns: list[str] | tuple[str, ...]) -> Rows | None:
    """``df``'s rows as :func:`write_table` would write them after :func:`concat_frames` with
    ``columns`` (``None`` for an empty table, which :func:`concat_frames` leaves out)."""
    if df.empty:
        return None
    if list(df.columns) != list(columns):
        df = concat_frames([df], columns)
    text = neutralised(df).to_csv(index=False, header=False, lineterminator="\n")
    return Rows(tuple(df.columns), tuple(df.dtypes), text)


def same_layout(parts: list[Rows]) -> bool:
    """Whether all parts have the same columns and dtypes (so their texts can be concatenated)."""
    return all(p.columns == parts[0].columns and p.dtypes == parts[0].dtypes for p in parts[1:])


def write_rows(path: str | os.PathLike, columns: list[str] | tuple[str, ...], parts: list[Rows]) -> None:
    """Write rendered rows under one header, atomically (``parts`` must pass :func:`same_layout`)."""
    header = pd.DataFrame(columns=list(parts[0].columns if parts else columns))

    def write(fh: IO[str]) -> None:
        header.to_csv(fh, index=False, lineterminator="\n")
        for part in parts:
            fh.write(part.text)

    _write_atomic(path, write)


#: Text columns that must never be parsed as numbers or NA (a lot may be called "NA" or "007").
TEXT_COLUMNS = (
    "file", "sha256", "status", "plate", "reason", "well", "role", "lot", "exclusion_reason",
    "source_file", "source_sha256", "product", "flags", "donor", "date", "reference_lot",
    "model", "message", "method",
)  # fmt: skip


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by :func:`write_table` (text columns stay text; empty = missing)."""
    header = pd.read_csv(path, nrows=0).columns
    dtypes = {c: "object" for c in header if c in TEXT_COLUMNS}
    return pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values=[""])
