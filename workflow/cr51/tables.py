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
from pathlib import Path

import pandas as pd

FILES_COLUMNS = ["file", "sha256", "bytes", "status", "plate", "reason"]
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def neutralise(text: object) -> object:
    """Prefix an apostrophe to text a spreadsheet would run as a formula."""
    if isinstance(text, str) and text.startswith(_FORMULA_START) and not _NUMBER.match(text):
        return "'" + text
    return text


def concat_frames(parts: list[pd.DataFrame], columns: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """Concatenate tables in order: ``columns`` first, any other columns after them; an empty
    list (or only empty tables) gives an empty table with ``columns``."""
    columns = list(columns)
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame(columns=columns)
    out = pd.concat(parts, ignore_index=True)
    return out.reindex(columns=list(dict.fromkeys(columns + list(out.columns))))


def write_table(
    df: pd.DataFrame,
    path: str | os.PathLike,
    columns: list[str] | None = None,
    *,
    safe: bool = True,
) -> None:
    """Write ``df`` (optionally these columns, in this order) atomically as CSV.

    ``safe`` neutralises formula-like text; the batch tables inside ``results/batches/`` are
    written with ``safe=False`` so that file and plate names survive exactly until the
    user-facing tables are written.
    """
    if columns is not None:
        df = df.reindex(columns=columns)
    df = df.copy()
    if safe:
        for col in df.columns:
            if df[col].dtype == object or pd.api.types.is_string_dtype(df[col]):
                df[col] = df[col].map(neutralise)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            df.to_csv(fh, index=False, lineterminator="\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
