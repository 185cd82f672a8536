"""``results/results.xlsx``: the summary tables as sheets of one Excel workbook (collect job).

What analysts paste into lot records. One sheet per table (:data:`SHEETS`, after a ``README`` sheet
that says what each sheet is, the software version and the run time), columns in :mod:`cr51.schema`'s
order, each cell typed and formatted by its column's kind:

* ``float``: a number shown with 4 significant digits at the column's typical magnitude (the median
  of its non-zero absolute values, an estimate's ``_lo``/``_hi`` limits included: RP ``0.000``, IC50 in
  mg/mL ``0.0000``, CPM ``0``; scientific below 10^-3 and from 10^6 up) — the stored value has 16
  significant digits (openpyxl's ``%.16g``; Excel itself keeps 15); p-values (``p``, ``p_*``, ``*_p``)
  ``0.0000``, scientific below 10^-4; NaN and infinities as empty cells;
* ``int``: ``0``; ``bool``/``boolean``: Excel's TRUE/FALSE (an empty cell when the verdict does not exist);
* ``text``: a string cell with the text format ``@`` (ids such as ``007`` stay text); a ``date`` column
  holding ISO dates becomes date cells (``yyyy-mm-dd``), text that is not an ISO date stays text.

No cell is ever a formula: text is stored as a string (data type ``s``) whatever it starts with, and text
starting with ``=``, ``+``, ``-`` or ``@`` also gets Excel's quote prefix, so that editing the cell keeps it
text. The text is the table's own (the CSVs' leading apostrophe, :func:`cr51.tables.neutralise`, is not
needed in a typed cell). Characters that XML cannot hold (control characters) become U+FFFD.

Every sheet has a bold, frozen header row, an autofilter over its rows and column widths from its content.
The workbook is written in openpyxl's write-only mode (rows streamed, memory flat) to a temporary file
renamed into place.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter

from ..schema import TABLES
from ..tables import write_bytes_atomic

#: The sheets after ``README``, in order, and what each holds (the README sheet's text).
SHEETS: dict[str, str] = {
    "potency_combined": "Per lot and reference lot: the plates combined as Ph. Eur. 5.3 §6 (weighted, or "
    "semi-weighted when heterogeneous): combined RP and CI, homogeneity χ² and p (potency_combined.csv).",
    "potency_combined_inputs": "Every plate × lot: its RP and CI, whether it entered the lot's combination, "
    "and if not, why (potency_combined_inputs.csv).",
    "campaign_lots": "Per campaign × lot: campaign RP vs the reference lot from the fixed-block model with its CI "
    "and the compact letter group (campaign_lots.csv).",
    "campaign_pairs": "Per campaign × pair of lots: potency ratio with Tukey simultaneous interval and adjusted p "
    "(campaign_pairs.csv).",
    "campaign_tests": "Per campaign: do the lots differ (F, lots adjusted for plates) and, where products are "
    "given, do the products differ (campaign_tests.csv).",
    "campaign_similarity": "Per campaign × lot: slope ratio, bottom and top differences combined over plates "
    "with 90 % CIs, the margins and the USP <1032> verdict (campaign_similarity.csv).",
    "qc": "Per plate: controls, lytic units, vehicle suppression, QC status, flags and the fail reason, donor, "
    "date, reference lot (qc.csv).",
    "potency": "Per plate and lot vs the plate's reference lot: RP with Fieller CI, parallelism, equivalence, "
    "tests vs the reference, status and reason (potency.csv).",
    "lots_differ": "Per plate: within-plate F test of one common IC50 against lot-specific IC50s — not the "
    "campaign's answer (lots_differ.csv).",
}
#: Number formats.
INT_FORMAT = "0"
P_FORMAT = "[<0.0001]0.00E+00;0.0000"
SCIENTIFIC = "0.000E+00"
TEXT_FORMAT = "@"
DATE_FORMAT = "yyyy-mm-dd"
_FORMULA_START = ("=", "+", "-", "@")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_HEADER_FONT = Font(bold=True)
_HEADER_FILL = PatternFill("solid", fgColor="F1F3F4")
_WRAP = Alignment(wrap_text=True, vertical="top")


def is_p_column(name: str) -> bool:
    """Whether a float column holds p-values (``p``, ``p_adj``, ``p_holm``, ``parallel_f_p``, ``homogeneity_p``…)."""
    return name == "p" or name.startswith("p_") or name.endswith("_p")


def float_format(name: str, values: np.ndarray) -> str:
    """The number format of a float column: p-values, or 4 significant digits at the column's typical magnitude."""
    if is_p_column(name):
        return P_FORMAT
    finite = np.abs(values[np.isfinite(values)])
    finite = finite[finite > 0]
    if finite.size == 0:
        return "0.000"
    typical = float(np.median(finite))
    if typical < 1e-3 or typical >= 1e6:
        return SCIENTIFIC
    decimals = max(0, 3 - math.floor(math.log10(typical)))
    return "0." + "0" * decimals if decimals else "0"


def _kinds(name: str, df: pd.DataFrame) -> list[tuple[str, str]]:
    """(column, kind) in the schema's order, then any further columns of ``df`` (kind from the dtype)."""
    declared = TABLES[name].kinds if name in TABLES else {}
    cols = [c for c in declared if c in df.columns] + [c for c in df.columns if c not in declared]
    out = []
    for c in cols:
        kind = declared.get(c)
        if kind is None:
            dtype = df[c].dtype
            kind = (
                "float"
                if pd.api.types.is_float_dtype(dtype)
                else "int"
                if pd.api.types.is_integer_dtype(dtype)
                else "bool"
                if pd.api.types.is_bool_dtype(dtype)
                else "text"
            )
        out.append((str(c), kind))
    return out


def _floats(series: pd.Series) -> np.ndarray:
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _families(df: pd.DataFrame, kinds: Sequence[tuple[str, str]]) -> dict[str, np.ndarray]:
    """{float column: the values of it and its ``_lo``/``_hi`` siblings}, so that an estimate and its limits
    share one format (``rp``, ``rp_lo``, ``rp_hi``)."""
    groups: dict[str, list[str]] = {}
    for c, kind in kinds:
        if kind == "float":
            groups.setdefault(re.sub(r"_(lo|hi)$", "", c), []).append(c)
    return {c: np.concatenate([_floats(df[x]) for x in cols]) for cols in groups.values() for c in cols}


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _text(v: Any) -> str | None:
    if _missing(v):
        return None
    s = str(v)
    return ILLEGAL_CHARACTERS_RE.sub("\ufffd", s) if ILLEGAL_CHARACTERS_RE.search(s) else s


def _boolean(v: Any) -> bool | None:
    if _missing(v):
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    s = str(v).strip().lower()
    return True if s == "true" else False if s == "false" else None


def _date(v: str | None) -> _dt.date | str | None:
    if v is None or not _ISO_DATE.match(v):
        return v
    try:
        return _dt.date.fromisoformat(v)
    except ValueError:
        return v


class _Column:
    """One column's values as Python objects and the write-only cell that carries its format."""

    def __init__(self, ws: Any, name: str, kind: str, series: pd.Series, family: np.ndarray | None = None) -> None:
        self.name, self.kind = name, kind
        self.cell = WriteOnlyCell(ws)
        self.quoted = WriteOnlyCell(ws)  # text starting like a formula: quote prefix
        if kind == "float":
            arr = _floats(series)
            self.values: list[Any] = [v if math.isfinite(v) else None for v in arr.tolist()]
            self.cell.number_format = float_format(name, family if family is not None else arr)
        elif kind == "int":
            arr = _floats(series)
            self.values = [int(v) if math.isfinite(v) else None for v in arr.tolist()]
            self.cell.number_format = INT_FORMAT
        elif kind in ("bool", "boolean"):
            self.values = [_boolean(v) for v in series.tolist()]
        else:
            self.values = [_text(v) for v in series.tolist()]
            if name == "date":
                self.values = [_date(v) for v in self.values]
            self.cell.number_format = TEXT_FORMAT
            self.quoted.number_format = TEXT_FORMAT
            self.quoted.quotePrefix = True
        self.dated = WriteOnlyCell(ws)
        self.dated.number_format = DATE_FORMAT

    def width(self) -> float:
        """A column width (characters) from the header and the values' printed lengths."""
        longest = len(self.name)
        if self.kind == "float":
            longest = max(longest, 10)
        elif self.kind in ("bool", "boolean"):
            longest = max(longest, 5)
        else:
            sample = [v for v in self.values[:2000] if v is not None]
            longest = max([longest, *(len(str(v)) for v in sample)])
        return float(min(max(longest + 2, 8), 60))

    def cell_for(self, v: Any) -> Any:
        """What to append for the value ``v``: None (empty), a bool, or the column's formatted cell."""
        if v is None or isinstance(v, bool):
            return v
        if isinstance(v, _dt.date):
            self.dated.value = v
            return self.dated
        if isinstance(v, str):
            cell = self.quoted if v.startswith(_FORMULA_START) else self.cell
            cell.value = v
            cell.data_type = "s"  # never a formula, whatever the text starts with
            return cell
        self.cell.value = v
        return self.cell


def _header(ws: Any, names: Sequence[str]) -> list[Any]:
    row = []
    for n in names:
        c = WriteOnlyCell(ws, value=n)
        c.data_type = "s"
        c.font, c.fill = _HEADER_FONT, _HEADER_FILL
        row.append(c)
    return row


def _table_sheet(wb: Workbook, name: str, df: pd.DataFrame) -> int:
    """Write one table as a sheet; the number of data rows."""
    ws = wb.create_sheet(name)
    kinds = _kinds(name, df)
    family = _families(df, kinds)
    columns = [_Column(ws, c, kind, df[c], family.get(c)) for c, kind in kinds]
    for i, col in enumerate(columns, 1):
        ws.column_dimensions[get_column_letter(i)].width = col.width()
    ws.freeze_panes = "A2"
    n = len(df)
    if columns:
        ws.auto_filter.ref = f"A1:{get_column_letter(len(columns))}{n + 1}"
    ws.append(_header(ws, [c.name for c in columns]))
    for values in zip(*(c.values for c in columns)):
        ws.append([c.cell_for(v) for c, v in zip(columns, values)])
    return n


def _readme(ws: Any, tables: Mapping[str, pd.DataFrame], version: str, run_time: str) -> None:
    ws.column_dimensions["A"].width = 26
    ws.column_dimensions["B"].width = 10
    ws.column_dimensions["C"].width = 110
    bold = WriteOnlyCell(ws, value="cr51 results: the summary tables of one run")
    bold.font = Font(bold=True, size=13)
    ws.append([bold])
    for key, value in (("software", f"cr51 {version}"), ("run time", run_time)):
        ws.append([key, _string(ws, value)])
    ws.append([])
    ws.append(_header(ws, ["sheet", "rows", "what it is"]))
    for name, what in SHEETS.items():
        rows = len(tables[name]) if name in tables else None
        text = what if name in tables else what + " Not in this run."
        note = WriteOnlyCell(ws, value=text)
        note.alignment = _WRAP
        ws.append([name, rows, note])
    ws.append([])
    for line in (
        "Each sheet is its CSV in results/: the same columns in the same order; the CSVs are the record.",
        "Numbers are stored to 16 significant digits; the display shows 4 (p-values 4 decimals, "
        "scientific below 0.0001). Empty cell: no value (not computed, or no verdict).",
        "Text is stored as text, never as a formula, whatever it starts with.",
    ):
        ws.append([None, None, _string(ws, line)])


def _string(ws: Any, text: str) -> WriteOnlyCell:
    c = WriteOnlyCell(ws, value=_text(text))
    c.data_type = "s"
    return c


def build_workbook(tables: Mapping[str, pd.DataFrame], *, version: str, run_time: str) -> Workbook:
    """The workbook (write-only: save it once, e.g. with :func:`write_workbook`).

    Parameters
    ----------
    tables
        {table name: frame}; the tables of :data:`SHEETS` that are present become sheets (others are ignored).
    version
        The software version shown on the README sheet (``cr51.__version__``).
    run_time
        When the run was made, as the README sheet shows it (e.g. ``2026-12-02 09:14 UTC``).
    """
    wb = Workbook(write_only=True)
    _readme(wb.create_sheet("README"), tables, version, str(run_time))
    for name in SHEETS:
        if name in tables:
            _table_sheet(wb, name, tables[name])
    return wb


def write_workbook(tables: Mapping[str, pd.DataFrame], path: str | os.PathLike, *, version: str, run_time: str) -> None:
    """Write ``results/results.xlsx`` atomically (a temporary file beside it, renamed into place).

    The file gets the mode an ordinary ``open`` would give (0o666 less the umask). Arguments as
    :func:`build_workbook`.
    """
    wb = build_workbook(tables, version=version, run_time=run_time)
    write_bytes_atomic(path, wb.save)
