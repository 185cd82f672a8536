"""Read gamma-counter exports into a table of counts.

Supported formats, recognised from the content (never from the file name):

* ``well_list``  - delimited table with a well column and a CPM/counts column;
* ``plate_grid`` - one or more 8x12 blocks (header ``1..12``, rows ``A..H``);
* ``wizard2``    - PerkinElmer Wizard2 CSV (tubes identified by ``Rack`` + ``Pos``; the CPM column
  must be the configured nuclide's, ``<nuclide> CPM``; the tubes' ``<nuclide> Info`` flags and
  ``<nuclide> Error %`` are kept in :attr:`Export.counter`);
* ``xlsx/well_list`` / ``xlsx/plate_grid`` - the first two, on the first sheet of an
  ``.xlsx`` workbook that holds such a table.

Every problem with the file's content raises :class:`InputError`, whose message names the
file and, where it applies, the line (or sheet row) and the well or tube.

Bounds (hostile files): a workbook is checked before openpyxl reads it — its zip members' declared
sizes (together at most ``max_unzipped_bytes``, config ``max_xlsx_unzipped_bytes``; the zip reader never
unpacks more than a member declares), their compression ratio (:data:`MAX_ZIP_RATIO`) and their number
(:data:`MAX_ZIP_MEMBERS`); a sheet is read up to :data:`MAX_ROWS` rows and :data:`MAX_COLUMNS` columns,
and a cell (of a sheet or of a text export) longer than :data:`MAX_CELL_CHARS` refuses the file. Text a
reason quotes from the file is cut to a short excerpt (:func:`cr51.includes.excerpt`), and a reason is at
most :data:`MAX_REASON_CHARS` long. An OLE compound file (an encrypted workbook, or a legacy ``.xls``) and
formula cells without a cached value get reasons that say so.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import os
import re
import stat
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .includes import excerpt as _q

__all__ = ["InputError", "Export", "read_export"]

HEADER_SCAN_LINES = 50  # header rows of well lists / Wizard2 files are looked for in this many lines

WELL_HEADER = re.compile(r"^(?:well(?:[\s_-]*(?:id|pos|position|name))?|pos|position)$", re.I)
CPM_HEADER = re.compile(r"^(?:[\w-]+\s+)?c?cpm\s*\d*$", re.I)  # CPM, CCPM, CCPM1, CPM2, Cr-51 CPM
COUNTS_HEADER = re.compile(r"^(?:[\w-]+\s+)?(?:raw\s+)?counts?\s*\d*$", re.I)  # Counts, Count, Raw counts
WIZARD_CPM = re.compile(r"^(.+?)\s+CPM$", re.I)
NUCLIDE = re.compile(r"^([a-z]{1,2})-?(\d{1,3}m?)$|^(\d{1,3}m?)-?([a-z]{1,2})$", re.I)  # Cr-51, Cr51, 51Cr, 51-Cr
#: The nuclide a counter export must be counted for unless the configuration says otherwise.
DEFAULT_NUCLIDE = "Cr-51"
WELL_ID = re.compile(r"^([A-Ha-h])0*([1-9]|1[0-2])$")
WELL_LIKE = re.compile(r"^[A-Za-z]{1,2}\d{1,3}$")
PLAIN_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
GROUPED = {",": re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+$"), ".": re.compile(r"^[+-]?\d{1,3}(?:\.\d{3})+$")}
SPACES = re.compile(r"[\s\u00a0\u202f']")  # space-like thousands separators (and Swiss apostrophe)
CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
NON_FINITE = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}
GRID_COLS = [str(i) for i in range(1, 13)]
GRID_ROWS = "ABCDEFGH"
#: The default of ``max_unzipped_bytes`` (config ``max_xlsx_unzipped_bytes``, the schema's: tests hold them equal).
MAX_UNZIPPED_BYTES = 50_000_000
#: A workbook member unpacking to more than 1 MB at more than this ratio is refused (a zip bomb; a real
#: export's sheets compress 5-30:1).
MAX_ZIP_RATIO = 200
#: A workbook with more zip members than this is refused.
MAX_ZIP_MEMBERS = 500
#: A sheet is read up to this many rows and columns (an export is ~100 rows, 13-20 columns).
MAX_ROWS, MAX_COLUMNS = 10_000, 256
#: A cell longer than this refuses the export.
MAX_CELL_CHARS = 10_000
#: A reason is at most this long.
MAX_REASON_CHARS = 1_000
#: The first bytes of an OLE compound file: a password-protected (encrypted) workbook or a legacy .xls.
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


class InputError(Exception):
    """Problem with an input file; str(exc) is a reason a lab technician can act on (names the file's
    line/well/tube; at most :data:`MAX_REASON_CHARS` characters, whatever it quotes)."""

    def __init__(self, message: object = "") -> None:
        super().__init__(_q(message, MAX_REASON_CHARS))


@dataclass(frozen=True, eq=False)
class Export:
    """A parsed counter export.

    ``counts`` has one row per well or tube, in file order, with columns ``well`` (str such as
    ``"A1"``; None for tube exports), ``rack`` and ``pos`` (Int64; NA for well exports) and
    ``cpm`` (float64).

    ``counter`` (Wizard2 exports only, else None) has one row per row of ``counts``, in the same
    order, with the counter's own verdict on each tube: ``counter_info`` (str, the ``Info`` flags,
    ``""`` when none) and ``counter_error_pct`` (float64, the counting error ``Error %``; NaN
    when the export has no such column or the cell is empty).
    """

    format: str  # "well_list" | "plate_grid" | "wizard2" | "xlsx/well_list" | "xlsx/plate_grid"
    counts: pd.DataFrame
    notes: tuple[str, ...]
    counter: pd.DataFrame | None = None


Row = tuple[int, list[str]]  # (1-based line or sheet-row number, stripped cells)


class _Source:
    """Where rows come from, for messages: ``name: line 7`` or ``name (sheet 'S'): row 7``."""

    def __init__(self, name: str, sheet: str | None = None):
        self.name, self.sheet = name, sheet
        self.unit = "line" if sheet is None else "row"

    def check_width(self, cells: list[str], width: int, line: int, short: str, wide: str | None = None) -> None:
        """Refuse a row with fewer cells than ``width`` (``short``: truncated) or with text beyond
        them (``wide``, default ``short``: an unquoted ',' split a number)."""
        if len(cells) < width:
            raise self.err(f"{short}; the file looks truncated or damaged", line)
        if any(cells[width:]):
            raise self.err(
                f"{wide or short}; a number with an unquoted ',' (decimal comma or thousands separator)?", line
            )

    def err(self, msg: str, line: int | None = None) -> InputError:
        where = self.name if self.sheet is None else f"{self.name} (sheet '{_q(self.sheet)}')"
        if line is not None:
            where += f": {self.unit} {line}"
        return InputError(f"{where}: {msg}")


# --------------------------------------------------------------------------------------------
# entry point


def read_export(
    path: str | os.PathLike,
    *,
    max_bytes: int = 20_000_000,
    block: str | None = None,
    nuclide: str = DEFAULT_NUCLIDE,
    max_unzipped_bytes: int = MAX_UNZIPPED_BYTES,
) -> Export:
    """Parse a counter export; see the module docstring for the formats.

    ``block`` names the grid block to use in a plate-grid file with several blocks (ignored,
    with a note, for other formats). ``nuclide`` (config ``counter.nuclide``) is the nuclide
    the tubes must have been counted for: a Wizard2 export whose CPM column is another
    nuclide's is refused. ``max_unzipped_bytes`` bounds what a workbook may unpack to. Raises
    :class:`InputError` for any problem with the file; the file is parsed from the bytes read once.
    """
    name = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{name}: file not found") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot open the file ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{name}: not a regular file (a directory?)")
    if st.st_size == 0:
        raise InputError(f"{name}: file is empty (0 bytes); export it again")
    if st.st_size > max_bytes:
        raise InputError(
            f"{name}: file is {st.st_size:,} bytes, more than the limit of {max_bytes:,} bytes; "
            "is this really a counter export?"
        )
    try:
        with open(path, "rb") as fh:
            data = fh.read(min(st.st_size, max_bytes) + 1)  # bounded even if the file grew since stat()
    except OSError as exc:
        raise InputError(f"{name}: cannot read the file ({exc.strerror})") from None
    if len(data) > st.st_size:  # it grew since stat(): still being written
        raise InputError(f"{name}: the file grew while it was read (still being written?); it is read again next run")

    if data.startswith(OLE_MAGIC):
        raise InputError(
            f"{name}: encrypted or legacy .xls workbook (an OLE compound file, not an .xlsx): Excel stores a "
            "password-protected workbook this way. Save it without a password as an .xlsx workbook, or export CSV"
        )
    if data.startswith(b"PK\x03\x04"):
        _check_zip(data, name, max_unzipped_bytes)
        return _read_xlsx(data, name, block)
    src = _Source(name)
    text = _decode(data, src)
    delim = _sniff_delimiter(text)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    rows = [(i, _split(ln, delim)) for i, ln in enumerate(lines, 1)]
    for i, cells in rows:
        _check_cells(cells, src, i)
    if not any(any(cells) for _, cells in rows):
        raise src.err("file holds no data (only blank lines)")
    default_decimal = "," if delim == ";" else "."
    found = _parse_rows(rows, src, block, default_decimal, allow_wizard2=True, nuclide=nuclide)
    if found is None:
        raise src.err("unrecognised format: no well/CPM columns, no 8×12 grid, no Wizard2 columns found")
    return found


# --------------------------------------------------------------------------------------------
# bytes -> rows


def _decode(data: bytes, src: _Source) -> str:
    """Decode UTF-8 (BOM optional) or BOM-marked UTF-16; reject binary and other encodings."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError:
            raise src.err("not valid UTF-16 text (file truncated or corrupt)") from None
    else:
        if b"\x00" in data:
            raise src.err("binary content (NUL bytes), not a text export (UTF-16 needs a byte-order mark)")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise src.err(
                f"not UTF-8 text (byte 0x{data[exc.start]:02X} on line {line}); save or export the file as UTF-8 CSV"
            ) from None
    bad = CONTROL.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        raise src.err(f"binary content (control character 0x{ord(bad.group()):02X} on line {line}), not a text export")
    return text


def _sniff_delimiter(text: str) -> str:
    """Return the delimiter (tab, ';' or ',') found on most of the first non-blank lines; ties: tab > ';' > ','."""
    sample = [ln for ln in text[:100_000].splitlines()[:200] if ln.strip()][:HEADER_SCAN_LINES]
    return max(("\t", ";", ","), key=lambda d: (sum(d in ln for ln in sample), "\t;,".index(d) * -1))


def _split(line: str, delim: str) -> list[str]:
    """Cells of one line, stripped; quotes handled by the csv module (per line, so a stray quote
    in a preamble line cannot swallow the lines after it)."""
    if '"' not in line:
        return [c.strip() for c in line.split(delim)] if line.strip() else []
    return [c.strip() for c in next(csv.reader([line], delimiter=delim), [])]


def _check_cells(cells: list[str], src: _Source, line: int) -> None:
    """Refuse a row holding a cell longer than :data:`MAX_CELL_CHARS`."""
    for c in cells:
        if len(c) > MAX_CELL_CHARS:
            raise src.err(f"a cell of {len(c):,} characters, more than {MAX_CELL_CHARS:,} ('{_q(c, 40)}'): "
                          "not a counter export", line)  # fmt: skip


def _check_zip(data: bytes, name: str, max_unzipped: int) -> None:
    """Refuse a workbook whose zip members declare more than ``max_unzipped`` bytes together, unpack at a
    ratio above :data:`MAX_ZIP_RATIO`, or are too many — before anything is unpacked (a zip member is never
    unpacked beyond its declared size: the zip reader stops there and checks the CRC)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
    except Exception as exc:  # noqa: BLE001 - any damage: the file's reason
        raise InputError(f"{name}: not a readable .xlsx workbook ({type(exc).__name__}: {_q(exc)})") from None
    if len(infos) > MAX_ZIP_MEMBERS:
        raise InputError(
            f"{name}: the workbook holds {len(infos):,} files, more than {MAX_ZIP_MEMBERS}: not a counter export"
        )
    total = sum(i.file_size for i in infos)
    if total > max_unzipped:
        raise InputError(
            f"{name}: the workbook unpacks to {total:,} bytes, more than the limit of {max_unzipped:,} "
            "(config max_xlsx_unzipped_bytes): not a counter export (a zip bomb?)"
        )
    for i in infos:
        if i.file_size > 1_000_000 and i.file_size > MAX_ZIP_RATIO * max(i.compress_size, 1):
            raise InputError(
                f"{name}: the workbook's '{_q(i.filename)}' unpacks {i.file_size // max(i.compress_size, 1):,} "
                f"times its size (more than {MAX_ZIP_RATIO}): not a counter export (a zip bomb?)"
            )


def _read_xlsx(data: bytes, name: str, block: str | None) -> Export:
    """Parse the first sheet of a workbook (its bytes, checked by :func:`_check_zip`) that holds a well
    list or plate grid."""
    import openpyxl  # imported lazily: only workbook exports pay for it

    try:
        wb = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
        formulas = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=False)
    except Exception as exc:  # zipfile/openpyxl raise assorted types for damaged workbooks
        raise InputError(f"{name}: not a readable .xlsx workbook ({type(exc).__name__}: {_q(exc)})") from None
    try:
        for ws, wf in zip(wb.worksheets, formulas.worksheets):
            src = _Source(name, ws.title)
            try:
                cells = _sheet_cells(ws, wf, src)
            except InputError:
                raise
            except Exception as exc:  # noqa: BLE001 - a damaged sheet: the file's reason
                raise src.err(f"not a readable sheet ({type(exc).__name__}: {_q(exc)})") from None
            width = max(map(len, cells), default=0)  # pad: empty trailing cells are not truncation
            rows = [(i, c + [""] * (width - len(c))) for i, c in enumerate(cells, 1)]
            found = _parse_rows(rows, src, block, ".", allow_wizard2=False)
            if found is not None:
                notes = (f"sheet '{_q(ws.title)}'",) + found.notes
                return Export("xlsx/" + found.format, found.counts, notes)
        sheets = ", ".join(f"'{_q(ws.title)}'" for ws in wb.worksheets[:10])
    finally:
        wb.close()
        formulas.close()
    raise InputError(f"{name}: unrecognised format: no sheet ({sheets}) holds well/CPM columns or an 8×12 grid")


def _sheet_cells(ws, wf, src: _Source) -> list[list[str]]:
    """A sheet's cells as text, at most :data:`MAX_ROWS` × :data:`MAX_COLUMNS` (more refuses the file);
    ``wf`` is the same sheet read with its formulas: a formula cell without a cached value refuses it."""
    bound = {"max_row": MAX_ROWS + 1, "max_col": MAX_COLUMNS + 1, "values_only": True}
    out = []
    pairs = itertools.zip_longest(ws.iter_rows(**bound), wf.iter_rows(**bound), fillvalue=())
    for n, (values, written) in enumerate(pairs, 1):
        if n > MAX_ROWS and any(v is not None for v in values):
            raise src.err(f"more than {MAX_ROWS:,} rows: not a counter export", n)
        if len(values) > MAX_COLUMNS and values[MAX_COLUMNS] is not None:
            raise src.err(f"more than {MAX_COLUMNS} columns: not a counter export", n)
        row = []
        for k, (v, f) in enumerate(itertools.zip_longest(values[:MAX_COLUMNS], written[:MAX_COLUMNS])):
            if v is None and isinstance(f, str) and f.startswith("="):
                from openpyxl.utils import get_column_letter

                raise src.err(
                    f"cell {get_column_letter(k + 1)}{n}: formula without a cached value ('{_q(f, 40)}'): open and "
                    "save it in Excel (which stores the computed numbers) or export CSV",
                    n,
                )
            row.append(_cell_text(v))
        _check_cells(row, src, n)
        while row and not row[-1]:
            row.pop()
        out.append(row)
    while out and not out[-1]:
        out.pop()
    return out


def _cell_text(v: object) -> str:
    """Text of a workbook cell as a CSV export would show it (integral floats without '.0')."""
    if v is None:
        return ""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return str(v).strip()


# --------------------------------------------------------------------------------------------
# format detection


def _parse_rows(
    rows: list[Row],
    src: _Source,
    block: str | None,
    default_decimal: str,
    allow_wizard2: bool,
    nuclide: str = DEFAULT_NUCLIDE,
) -> Export | None:
    """Detect the format from the first header-like row and parse it; None if nothing is recognised.

    Within the first HEADER_SCAN_LINES rows the first row that is a Wizard2 header, a well-list
    header or a grid header decides the format; grid headers are also looked for further down.
    """
    for k, (_, cells) in enumerate(rows[:HEADER_SCAN_LINES]):
        if _wizard2_columns(cells):
            if not allow_wizard2:
                raise src.err("Wizard2 table in a workbook is not supported; use the counter's CSV export", rows[k][0])
            return _parse_wizard2(rows, k, src, default_decimal, block, nuclide)
        if _well_list_columns(cells):
            return _parse_well_list(rows, k, src, default_decimal, block)
        if _is_grid_header(cells):
            break
    if any(_is_grid_header(cells) for _, cells in rows):
        return _parse_grid(rows, src, default_decimal, block)
    return None


def _wizard2_columns(cells: list[str]) -> bool:
    lower = [c.lower() for c in cells]
    return "rack" in lower and "pos" in lower and any(WIZARD_CPM.match(c) for c in cells)


def _well_list_columns(cells: list[str]) -> tuple[int, int, list[str]] | None:
    """(well column, count column, notes) if the row is a well-list header, else None."""
    wells = [i for i, c in enumerate(cells) if WELL_HEADER.match(c)]
    cpms = [i for i, c in enumerate(cells) if CPM_HEADER.match(c)]
    raws = [i for i, c in enumerate(cells) if COUNTS_HEADER.match(c)]
    if not wells or not (cpms or raws):
        return None
    well = min(wells, key=lambda i: (not cells[i].lower().startswith("well"), i))  # 'Well…' before 'Pos…'
    count = cpms[0] if cpms else raws[0]
    others = [f"'{_q(cells[i])}'" for i in cpms + raws if i != count]
    note = (
        f"used CPM column '{_q(cells[count])}'"
        if cpms
        else f"used raw counts column '{_q(cells[count])}' (no CPM column)"
    )
    note += f"; ignored {', '.join(others)}" if others else ""
    return well, count, [note]


def _is_grid_header(cells: list[str]) -> bool:
    return len(cells) >= 13 and [c.lstrip("0") for c in cells[1:13]] == GRID_COLS


# --------------------------------------------------------------------------------------------
# the three table layouts


def _table_rows(rows: list[Row], header: int, src: _Source, notes: list[str]) -> list[Row]:
    """Data rows below the header, up to the first blank row; rows shorter than the header are an error."""
    hline, hcells = rows[header]
    width = max(i for i, c in enumerate(hcells) if c) + 1
    body: list[Row] = []
    for k in range(header + 1, len(rows)):
        line, cells = rows[k]
        if not any(cells):
            rest = sum(any(c) for _, c in rows[k + 1 :])
            if rest:
                notes.append(f"table ends at blank {src.unit} {line}; {rest} non-blank line(s) after it ignored")
            break
        src.check_width(
            cells, width, line, f"row has {len(cells)} cells but the header ({src.unit} {hline}) has {width}"
        )
        body.append((line, cells))
    if not body:
        raise src.err("no data rows below the header", hline)
    return body


def _parse_well_list(rows: list[Row], header: int, src: _Source, default_decimal: str, block: str | None) -> Export:
    wcol, ccol, notes = _well_list_columns(rows[header][1])  # type: ignore[misc]
    _note_block_ignored(block, notes)
    body = _table_rows(rows, header, src, notes)
    items = [(line, _well(cells[wcol], src, line), cells[ccol]) for line, cells in body]
    wells, cpm = _numbers(items, src, default_decimal, notes)
    return Export("well_list", _frame(wells=wells, cpm=cpm), tuple(notes))


def nuclide_key(name: str) -> str:
    """A nuclide's name compared up to spelling: ``Cr-51``, ``Cr51``, ``51Cr``, ``51-cr`` are one nuclide."""
    name = name.strip()
    m = NUCLIDE.match(name)
    if m is None:
        return name.lower()
    element, mass = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
    return f"{element.lower()}-{mass.lower()}"


def _parse_wizard2(
    rows: list[Row], header: int, src: _Source, default_decimal: str, block: str | None, nuclide: str
) -> Export:
    hline, hcells = rows[header]
    cpm_cols = [i for i, c in enumerate(hcells) if WIZARD_CPM.match(c)]
    prefix = {i: WIZARD_CPM.match(hcells[i]).group(1) for i in cpm_cols}  # type: ignore[union-attr]
    ours = [i for i in cpm_cols if nuclide_key(prefix[i]) == nuclide_key(nuclide)]
    names = ", ".join(f"'{_q(hcells[i])}'" for i in cpm_cols)
    if len(cpm_cols) > 1 and len(ours) != 1:
        raise src.err(f"several nuclide CPM columns ({names}) and not exactly one for {nuclide}", hline)
    if not ours:
        raise src.err(
            f"the counts are for {prefix[cpm_cols[0]]} (column {names}), not for {nuclide}, the nuclide "
            "this pipeline is set up for (config counter.nuclide): counted with another nuclide's protocol? "
            "Count the plate again with the right protocol",
            hline,
        )
    ccol = ours[0]
    lower = [c.lower() for c in hcells]
    rcol, pcol = lower.index("rack"), lower.index("pos")
    icol, ecol = (_column(lower, f"{prefix[ccol]} {what}".lower()) for what in ("Info", "Error %"))
    notes = [f"used CPM column '{_q(hcells[ccol])}'"]
    _note_block_ignored(block, notes)
    items, info, error = [], [], []
    for line, cells in _table_rows(rows, header, src, notes):
        rack, pos = (_whole(cells[c], hcells[c], src, line) for c in (rcol, pcol))
        items.append((line, (rack, pos), cells[ccol]))
        info.append("" if icol is None else cells[icol])
        error.append((line, (rack, pos), "" if ecol is None else cells[ecol]))
    tubes, cpm = _numbers(items, src, default_decimal, notes)
    counter = pd.DataFrame(
        {"counter_info": pd.Series(info, dtype=object), "counter_error_pct": _percents(error, src, default_decimal)}
    )
    return Export("wizard2", _frame(tubes=tubes, cpm=cpm), tuple(notes), counter)


def _column(lower: list[str], name: str) -> int | None:
    """The index of the (lower-case) header ``name``, if the header has it."""
    return lower.index(name) if name in lower else None


def _percents(items: list[tuple[int, object, str]], src: _Source, default_decimal: str) -> np.ndarray:
    """The counter's ``Error %`` cells as numbers (NaN where empty); InputError for text that is not one."""
    marks = [(line, key, SPACES.sub("_", text)) for line, key, text in items if text]
    decimal = _decimal_mark(marks, default_decimal, src, []) if marks else default_decimal
    out = np.full(len(items), np.nan)
    for k, (line, key, text) in enumerate(items):
        if not text:
            continue
        t = text.replace(decimal, ".") if decimal == "," else text
        if not PLAIN_NUMBER.match(t):
            rack, pos = key  # type: ignore[misc]
            raise src.err(f"rack {rack} pos {pos}: Error % '{_q(text)}' is not a number", line)
        out[k] = float(t)
    return out


def _parse_grid(rows: list[Row], src: _Source, default_decimal: str, block: str | None) -> Export:
    blocks = []  # (name, header index)
    k = 0
    while k < len(rows):
        cells = rows[k][1]
        if not _is_grid_header(cells):
            k += 1
            continue
        name = cells[0]
        above = [c for c in rows[k - 1][1] if c] if k > 0 else []
        if not name and len(above) == 1:
            name = above[0]  # a title line (one cell) right above the grid
        blocks.append((name, k))
        k += 1 + len(GRID_ROWS)  # a data row holding 1..12 is not the next header
    names = [n for n, _ in blocks]
    notes: list[str] = []
    if block is not None:
        chosen = [b for b in blocks if b[0].lower() == block.strip().lower()]
        if not chosen:
            raise src.err(f"no grid block named '{_q(block)}' (blocks: {', '.join(repr(_q(n)) for n in names)})")
    else:
        chosen = [b for b in blocks if "cpm" in b[0].lower()] or blocks
    name, header = chosen[0]
    if len(blocks) > 1:
        how = "named" if block is not None else ("name contains 'cpm'" if "cpm" in name.lower() else "first block")
        notes.append(f"{len(blocks)} blocks ({', '.join(repr(_q(n)) for n in names)}); used '{_q(name)}' ({how})")

    hline, hcells = rows[header]
    width = max(i for i, c in enumerate(hcells) if c) + 1
    label = f"grid '{_q(name)}'" if name else "grid"
    last = max(k for k, (_, cells) in enumerate(rows) if any(cells))  # index of the last non-blank row
    items = []
    for r, letter in enumerate(GRID_ROWS, 1):
        if header + r > last:
            raise src.err(
                f"{label} (header {src.unit} {hline}): row {letter} missing at the end of the file; "
                "the file looks truncated"
            )
        line, cells = rows[header + r]
        if not cells or cells[0].upper() != letter:
            found = f"'{_q(cells[0])}'" if cells and cells[0] else "a blank line"
            raise src.err(
                f"{label} (header {src.unit} {hline}): expected row {letter}, found {found}; the grid is incomplete",
                line,
            )
        src.check_width(
            cells, width, line,
            short=f"{label} row {letter} has {len(cells) - 1} of 12 columns",
            wide=f"{label} row {letter} has {len(cells) - 1} values for 12 columns",
        )  # fmt: skip
        items += [(line, f"{letter}{c}", cells[c]) for c in range(1, 13) if cells[c]]
    if not items:
        raise src.err(f"{label} (header {src.unit} {hline}) has no values")
    wells, cpm = _numbers(items, src, default_decimal, notes)
    return Export("plate_grid", _frame(wells=wells, cpm=cpm), tuple(notes))


def _note_block_ignored(block: str | None, notes: list[str]) -> None:
    if block is not None:
        notes.append(f"block '{_q(block)}' ignored: not a plate-grid file")


# --------------------------------------------------------------------------------------------
# cell values


def _well(text: str, src: _Source, line: int) -> str:
    """Normalise a well id ('a01' -> 'A1'); InputError if it is not one of A1-H12."""
    m = WELL_ID.match(text)
    if m:
        return f"{m.group(1).upper()}{m.group(2)}"
    if WELL_LIKE.match(text):
        raise src.err(f"well '{_q(text)}' is outside the plate (A1–H12)", line)
    raise src.err(f"'{_q(text)}' is not a well id (expected A1–H12)" if text else "no well id in this row", line)


def _whole(text: str, column: str, src: _Source, line: int) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise src.err(f"{_q(column)} '{_q(text)}' is not a positive whole number", line)
    return int(text)


def _numbers(
    items: Iterable[tuple[int, object, str]], src: _Source, default_decimal: str, notes: list[str]
) -> tuple[list, list[float]]:
    """Parse count cells; (keys, values). items are (line, well or (rack, pos), text).

    Checks for duplicates, non-numeric, non-finite and negative values.
    """
    items = [(line, key, SPACES.sub("_", text)) for line, key, text in items]  # '_' = space-like separator
    decimal = _decimal_mark(items, default_decimal, src, notes)
    group = "," if decimal == "." else "."
    seen: dict[object, int] = {}
    keys, values = [], []
    for line, key, text in items:
        what = f"well {key}" if isinstance(key, str) else "rack {} pos {}".format(*key)  # type: ignore[misc]
        if key in seen:
            raise src.err(f"{what} appears twice (also on {src.unit} {seen[key]})", line)
        seen[key] = line
        shown = text.replace("_", " ")
        if not text:
            raise src.err(f"{what}: no count value", line)
        if text.lower() in NON_FINITE:
            raise src.err(f"{what}: count '{_q(shown)}' is not a finite number", line)
        t = text.replace("_", group)
        if group in t:
            int_part = t.split(decimal)[0]
            if not GROUPED[group].match(int_part):
                raise src.err(f"{what}: count '{_q(shown)}' is not a number", line)
            t = t.replace(group, "")
        t = t.replace(decimal, ".")
        if not PLAIN_NUMBER.match(t):
            raise src.err(f"{what}: count '{_q(shown)}' is not a number", line)
        value = float(t)
        if not math.isfinite(value):
            raise src.err(f"{what}: count '{_q(shown)}' is not a finite number", line)
        if value < 0:
            raise src.err(f"{what}: count '{_q(shown)}' is negative", line)
        keys.append(key)
        values.append(value)
    return keys, values


def _decimal_mark(items: list[tuple[int, object, str]], default: str, src: _Source, notes: list[str]) -> str:
    """The file's decimal mark, from the count cells.

    A cell with both '.' and ',' has its decimal mark last; a '.' or ',' that is not a
    thousands separator (groups of three digits) is a decimal mark. Otherwise ``default``
    (',' for ';'-delimited files, else '.') is used, with a note if a cell was ambiguous.
    """
    forced: dict[str, tuple[int, str]] = {}
    ambiguous = None
    for line, _, text in items:
        t = text.replace("_", "")
        if "," in t and "." in t:
            forced.setdefault("," if t.rfind(",") > t.rfind(".") else ".", (line, text.replace("_", " ")))
            continue
        for mark in ",.":
            if mark in t:
                if GROUPED[mark].match(t):
                    ambiguous = ambiguous or text.replace("_", " ")
                else:
                    forced.setdefault(mark, (line, text.replace("_", " ")))
    if len(forced) > 1:
        (l1, t1), (l2, t2) = forced["."], forced[","]
        raise src.err(f"counts mix decimal marks: '{_q(t1)}' ({src.unit} {l1}) and '{_q(t2)}' ({src.unit} {l2})")
    decimal = next(iter(forced), default)
    if ambiguous and not forced:
        notes.append(f"numbers such as '{_q(ambiguous)}' read with decimal mark '{decimal}'")
    return decimal


def _frame(
    *, cpm: list[float], wells: list[str] | None = None, tubes: list[tuple[int, int]] | None = None
) -> pd.DataFrame:
    """The ``counts`` table: well (str or None), rack, pos (Int64), cpm (float64)."""
    n = len(cpm)
    if tubes is not None:
        well = pd.Series([None] * n, dtype=object)
        rack = pd.array([r for r, _ in tubes], dtype="Int64")
        pos = pd.array([p for _, p in tubes], dtype="Int64")
    else:
        well = pd.Series(wells, dtype="str")
        rack = pos = pd.array([None] * n, dtype="Int64")
    return pd.DataFrame({"well": well, "rack": rack, "pos": pos, "cpm": np.asarray(cpm, dtype="float64")})
