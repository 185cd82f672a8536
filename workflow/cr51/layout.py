"""Plate layouts: a wellmap TOML file → one row per well with its role and treatment.

Well fields (see ``config/README.md`` for the full contract):

``role``
    ``spontaneous`` (targets + medium), ``maximum`` (targets + detergent), ``sample``
    (effectors + targets, with or without IVIG), ``background`` (counter background, not used
    in lysis), ``vehicle`` (effectors + targets + a lot's formulation buffer alone).
``lot``
    IVIG lot id on treated sample and vehicle wells; absent on untreated sample wells.
``conc``
    IVIG concentration in mg/mL; 0 on untreated sample wells.
``et_ratio``
    effector:target ratio (50 for 50:1) on sample and vehicle wells.
``product`` (optional)
    brand name of the lot.
``exclude``, ``exclude_reason`` (optional)
    a technician's exclusion of a well (e.g. a bubble); listed in ``wells.csv``.
``rack``, ``pos`` (optional)
    explicit tube of a well for tube-counter exports.

Experiment fields (``[expt]``): ``reference_lot``, ``donor``, ``date``, ``targets_per_well``, an optional
``study`` id (plates of one study and reference lot form a campaign, :mod:`cr51.campaign`), and for
tube exports ``tubes`` (``"rows"`` or ``"columns"``) and ``rack_size`` (default 10).
"""

from __future__ import annotations

import itertools
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .includes import (
    MAX_LAYOUT_BYTES,
    IncludeError,
    LayoutFileError,
    Resolver,
    check_include_name,
    check_meta,
    excerpt,
    parse_toml,
    read_bytes,
)
from .scan import BIDI
from .schema import COLUMNS
from .tables import records

ROLES = ("spontaneous", "maximum", "sample", "background", "vehicle")
#: Ids typed by technicians (lots, donors): start with a letter or digit, so that a spreadsheet
#: cannot read them as a formula (=, +, -, @), and hold no control characters.
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._/#()-]{0,63}$")
PRODUCT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._/#%()+-]{0,63}$")
TUBE_ORDERS = ("rows", "columns")
ROWS = "ABCDEFGH"
#: Free text of a layout (``exclude_reason``, ``[expt] date``) longer than this refuses the layout: it is
#: copied into wells.csv and the report for every well it is on.
MAX_TEXT_CHARS = 200
#: The wells all of a layout's well tables cover together (a real layout: a few hundred) are at most this.
MAX_CELLS = 10_000
#: A reason is at most this long (a layout's values are quoted in excerpts; this is the last guard).
MAX_REASON_CHARS = 1_000


class LayoutError(ValueError):
    """A layout that cannot be used; ``str(exc)`` is a reason a technician can act on (at most
    :data:`MAX_REASON_CHARS` characters: whatever a message quotes, a reason stays short)."""

    def __init__(self, message: object = "") -> None:
        super().__init__(excerpt(message, MAX_REASON_CHARS))


@dataclass
class Layout:
    """A loaded, validated plate layout."""

    plate: str
    path: str
    export_name: str
    wells: pd.DataFrame  # well, row, col, role, lot, conc, et_ratio, product, exclude,
    #                      exclude_reason, rack, pos
    expt: dict[str, object] = field(default_factory=dict)
    includes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()  # the layout's own overlapping tables (:func:`overlaps`)

    @property
    def reference_lot(self) -> str | None:
        ref = self.expt.get("reference_lot")
        return None if ref is None else str(ref)


#: A RAM file system, where wellmap's private copy of a layout is staged when it can be (:func:`_staged`).
RAM_FOLDER = "/dev/shm"


def _stage_in(
    root: str | None, data: bytes, templates: dict[Path, bytes], export_name: str
) -> tempfile.TemporaryDirectory:
    """A new private folder in ``root`` (``None``: the default temporary folder) holding ``layout.toml``
    (``data``), the templates under their names and an empty file named like the export (wellmap checks
    that ``[meta] path`` exists); removed again if a file cannot be written."""
    tmp = tempfile.TemporaryDirectory(prefix="cr51-layout-", dir=root)
    try:
        tdir = Path(tmp.name)
        (tdir / "layout.toml").write_bytes(data)
        for inc, text in templates.items():
            (tdir / inc.name).write_bytes(text)
        if export_name:
            (tdir / export_name).touch()
    except BaseException:
        tmp.cleanup()
        raise
    return tmp


def _staged(data: bytes, templates: dict[Path, bytes], export_name: str) -> tempfile.TemporaryDirectory:
    """The staging folder of :func:`_stage_in`: in :data:`RAM_FOLDER` when it is a writable folder and
    takes the files, else in the default temporary folder. Writing, reading and removing these few small
    files costs ~4 ms a plate on a virtual machine's disk and ~0.2 ms in RAM."""
    if os.path.isdir(RAM_FOLDER) and os.access(RAM_FOLDER, os.W_OK | os.X_OK):
        try:
            return _stage_in(RAM_FOLDER, data, templates, export_name)
        except OSError:  # full, or refused: the default folder
            pass
    return _stage_in(None, data, templates, export_name)


def _load_wellmap(path: Path, data: bytes, templates: dict[Path, bytes], export_name: str) -> pd.DataFrame:
    """Load with wellmap from a private copy of the bytes that were checked (the layout's ``data`` and its
    templates', :func:`_staged`), so includes resolve only where we allow and nothing is read twice. Any
    failure of wellmap's (its own errors, ``RecursionError``, ``MemoryError``, a bug) is a
    :class:`LayoutError`, whose reason names the layout by its file name, never the staging folder."""
    import wellmap

    with _staged(data, templates, export_name) as tmp:
        tdir = Path(tmp).resolve()  # wellmap resolves the path it is given: its messages quote this one
        staged = tdir / "layout.toml"
        try:
            return wellmap.load(staged)
        except wellmap.LayoutError as err:
            msg = str(err).replace(str(staged), path.name).replace(f"{tdir}/", "").replace(f"{tmp}/", "")
            raise LayoutError(f"wellmap could not read the layout: {msg}") from None
        except Exception as err:  # noqa: BLE001 - whatever the layout does to wellmap is the layout's reason
            raise LayoutError(f"wellmap could not read the layout ({type(err).__name__})") from None


def _clean_id(value: object, what: str, pattern: re.Pattern[str] = ID_RE) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise LayoutError(f"{what} {excerpt(repr(value))} is not a text id")
    text = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    text = text.strip()
    if not pattern.match(text):
        raise LayoutError(
            f"{what} {excerpt(repr(text))} is not allowed: ids must start with a letter or digit and use "
            "only letters, digits, spaces and . _ / # ( ) - (so no spreadsheet can read them "
            "as a formula)"
        )
    return text


def _number(value: object, what: str, well: str) -> float:
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise LayoutError(f"well {well}: {what} {excerpt(repr(value))} is not a number") from None
    if not math.isfinite(x) and not math.isnan(x):
        raise LayoutError(f"well {well}: {what} {value!r} is not a finite number")
    return x


def _well_sort_key(well: str, order: str) -> tuple[int, int]:
    r, c = ROWS.index(well[0]), int(well[1:])
    return (r, c) if order == "rows" else (c, r)


def _validate(wells: pd.DataFrame) -> pd.DataFrame:
    """Check and normalise the per-well fields; raise LayoutError naming the wells."""
    cols = wells.columns
    if "role" not in cols:
        raise LayoutError("no well has a role (spontaneous, maximum, sample, background, vehicle)")
    out = []
    for rec in records(wells):
        well = rec["well"]
        role = rec.get("role")
        if role is None or (isinstance(role, float) and math.isnan(role)):
            continue  # not an assay well (e.g. a template row this plate does not use)
        if role not in ROLES:
            raise LayoutError(f"well {well}: unknown role {excerpt(repr(role))} (allowed: {', '.join(ROLES)})")
        lot = _clean_id(rec.get("lot"), f"well {well}: lot")
        product = _clean_id(rec.get("product"), f"well {well}: product", PRODUCT_RE)
        conc = _number(rec.get("conc"), "conc", well)
        et = _number(rec.get("et_ratio"), "et_ratio", well)
        if role in ("sample", "vehicle"):
            if math.isnan(et) or et <= 0:
                raise LayoutError(f"well {well}: a {role} well needs et_ratio > 0")
            if math.isnan(conc):
                if role == "vehicle" or lot is not None:
                    raise LayoutError(f"well {well}: a {role} well with a lot needs conc (mg/mL)")
                conc = 0.0
            if conc < 0:
                raise LayoutError(f"well {well}: conc {conc:g} is negative")
            if role == "vehicle" and (lot is None or conc <= 0):
                raise LayoutError(f"well {well}: a vehicle well needs a lot and conc > 0")
            if role == "sample" and conc > 0 and lot is None:
                raise LayoutError(f"well {well}: a sample well with conc > 0 needs a lot")
            if role == "sample" and conc == 0:
                lot = None  # untreated: the dose-0 point of every lot's curve
        exclude = rec.get("exclude", False)
        if exclude is None or (isinstance(exclude, float) and math.isnan(exclude)):
            exclude = False
        if not isinstance(exclude, bool):
            raise LayoutError(f"well {well}: exclude must be true or false")
        reason = rec.get("exclude_reason")
        reason = "" if reason is None or (isinstance(reason, float) and math.isnan(reason)) else str(reason)
        reason = _free_text(reason, f"well {well}: exclude_reason")
        out.append(
            {
                "well": well,
                "row": well[0],
                "col": int(well[1:]),
                "role": role,
                "lot": lot,
                "conc": conc,
                "et_ratio": et,
                "product": product,
                "exclude": exclude,
                "exclude_reason": reason,
                "rack": _number(rec.get("rack"), "rack", well),
                "pos": _number(rec.get("pos"), "pos", well),
            }
        )
    if not out:
        raise LayoutError("no well has a role (spontaneous, maximum, sample, background, vehicle)")
    return pd.DataFrame(out)


def _free_text(text: str, what: str) -> str:
    """``text`` if it is at most :data:`MAX_TEXT_CHARS` characters and holds no bidirectional control."""
    if len(text) > MAX_TEXT_CHARS:
        raise LayoutError(
            f"{what} is {len(text):,} characters ('{excerpt(text, 40)}'), more than {MAX_TEXT_CHARS}: shorten it"
        )
    if m := BIDI.search(text):
        raise LayoutError(
            f"{what} holds an invisible bidirectional control character (U+{ord(m.group()):04X}), which can make "
            "text display as other text: remove it"
        )
    return text


def _assign_tubes(wells: pd.DataFrame, expt: dict[str, object]) -> pd.DataFrame:
    explicit = ~(np.isnan(wells["rack"].to_numpy(dtype=float)) & np.isnan(wells["pos"].to_numpy(dtype=float)))
    order = expt.get("tubes")
    if explicit.any():
        if not explicit.all():
            raise LayoutError("either every well or no well may give rack and pos")
        return wells
    if order is None:
        return wells
    if order not in TUBE_ORDERS:
        raise LayoutError(f'[expt] tubes must be "rows" or "columns", not {order!r}')
    rack_size = expt.get("rack_size", 10)
    if isinstance(rack_size, (bool, np.bool_)) or not isinstance(rack_size, (int, np.integer)) or rack_size < 1:
        raise LayoutError(f"[expt] rack_size must be a whole number ≥ 1, not {rack_size!r}")
    rack_size = int(rack_size)
    ordered = sorted(wells["well"], key=lambda w: _well_sort_key(w, str(order)))
    tube = {w: i for i, w in enumerate(ordered)}
    n = wells["well"].map(tube)
    wells = wells.copy()
    wells["rack"] = (n // rack_size + 1).astype(float)
    wells["pos"] = (n % rack_size + 1).astype(float)
    return wells


#: Table kinds of a wellmap layout whose keys name wells; two tables of one kind setting the same field
#: of a well override each other by wellmap's precedence, silently (see :func:`overlaps`).
WELL_TABLES = ("well", "block", "row", "col", "irow", "icol")


def _fields(table: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in table.items():
        if isinstance(value, dict):
            out.extend(_fields(value, f"{prefix}{key}."))
        else:
            out.append(prefix + key)
    return out


def _cells(kind: str, key: str, size: str = "") -> list[tuple[int, int]]:
    """(row index, column index) of every well a table ``[kind.key]`` covers (rows/columns: the index)."""
    from wellmap import util

    if kind == "block":
        w, _, h = size.partition("x")
        return [ij for tl in util.iter_well_indices(key) for ij in util.iter_ij_in_block(tl, int(w), int(h))]
    if kind == "well":
        return list(util.iter_well_indices(key))
    if kind in ("row", "irow"):
        return [(i, -1) for i in util.iter_row_indices(key)]
    return [(-1, j) for j in util.iter_col_indices(key)]


def _cell_name(kind: str, ij: tuple[int, int]) -> str:
    i, j = ij
    if kind in ("row", "irow"):
        return f"row {ROWS[i] if 0 <= i < len(ROWS) else i + 1}"
    if kind in ("col", "icol"):
        return f"column {j + 1}"
    return f"{ROWS[i] if 0 <= i < len(ROWS) else '?'}{j + 1}"


def overlaps(doc: dict) -> list[str]:
    """Warnings for fields of a well set by two tables of the same kind in one layout file.

    Two ``[block]`` tables, two ``[row]``, two ``[col]`` (or ``[well]``, ``[irow]``, ``[icol]``) tables
    setting the same field of the same well override each other by wellmap's precedence without a word
    (``[block.6x3.A4]`` typed for ``[block.3x6.A4]`` overwrote another lot's wells). Only the file's
    own tables are compared: a layout overriding an included template, or a block over a row, is
    wellmap's normal use. Each warning names the two tables, the field and the wells.
    """
    seen: dict[tuple[str, str, tuple[int, int]], str] = {}
    found: dict[tuple[str, str], dict[str, list[str]]] = {}  # (first, second table): {field: cells}
    for kind in WELL_TABLES:
        tables = doc.get(kind)
        if not isinstance(tables, dict):
            continue
        items = []
        if kind == "block":
            for size, sub in tables.items():
                if isinstance(sub, dict):
                    items += [(f"block.{size}.{key}", size, key, t) for key, t in sub.items() if isinstance(t, dict)]
        else:
            items = [(f"{kind}.{key}", "", key, t) for key, t in tables.items() if isinstance(t, dict)]
        for name, size, key, table in items:
            try:
                cells = _cells(kind, key, size)
            except Exception:  # noqa: BLE001 - wellmap reports a malformed key itself
                continue
            for fld in _fields(table):
                for ij in cells:
                    first = seen.setdefault((kind, fld, ij), name)
                    if first != name:
                        found.setdefault((first, name), {}).setdefault(fld, []).append(_cell_name(kind, ij))
    out = []
    for (a, b), by_field in found.items():
        cells = dict.fromkeys(c for cs in by_field.values() for c in cs)
        out.append(f"[{a}] and [{b}] both set {', '.join(by_field)} of {', '.join(cells)}")
    return out


EXPT_KEYS = ("reference_lot", "donor", "date", "targets_per_well", "tubes", "rack_size", "study")


def check_wells(doc: dict, what: str = "the layout") -> None:
    """Refuse well tables that reach outside the 96-well plate, or that together cover more than
    :data:`MAX_CELLS` wells, before wellmap expands them (``[block.100000x100000.A1]`` would fill memory).

    Every ``[well]``, ``[block]``, ``[row]``, ``[col]``, ``[irow]``, ``[icol]`` key (of the file and of its
    ``[plate]`` tables) is expanded lazily and stopped at the first well outside A1–H12."""
    from wellmap import util

    rows, cols = len(ROWS), len(COLUMNS)
    plates = doc.get("plate")
    docs = [doc, *(t for t in plates.values() if isinstance(t, dict))] if isinstance(plates, dict) else [doc]
    total = 0
    for sub in docs:
        for kind in WELL_TABLES:
            tables = sub.get(kind)
            if not isinstance(tables, dict):
                continue
            if kind == "block":
                keys = []
                for size, blocks in tables.items():
                    m = re.match(r"(\d+)x(\d+)", size)
                    if m and (int(m.group(1)) > cols or int(m.group(2)) > rows):
                        raise LayoutError(
                            f"[block.{excerpt(size, 20)}] is larger than the plate ({cols} columns × {rows} rows)"
                        )
                    if m and isinstance(blocks, dict):
                        keys += [(f"block.{size}.{k}", ("block", k, size)) for k in blocks]
            else:
                keys = [(f"{kind}.{k}", (kind, k, "")) for k in tables]
            for name, (k, key, size) in keys:
                try:
                    cells = _iter_cells(util, k, key, size)
                    for n, (i, j) in enumerate(itertools.islice(cells, rows * cols + 1)):
                        if n >= rows * cols or not (-1 <= i < rows and -1 <= j < cols):
                            raise LayoutError(
                                f"[{excerpt(name, 40)}] in {what} covers wells outside the plate (A1–H12)"
                            )
                        total += 1
                except LayoutError:
                    raise
                except Exception:  # noqa: BLE001 - a malformed key: wellmap reports it
                    continue
                if total > MAX_CELLS:
                    raise LayoutError(
                        f"the well tables of {what} cover more than {MAX_CELLS:,} wells: not a plate layout"
                    )


def _iter_cells(util, kind: str, key: str, size: str):
    """The (row, column) indices a table covers, lazily (-1: all of that dimension)."""
    if kind == "block":
        w, _, rest = size.partition("x")
        h = re.match(r"\d+", rest).group()  # type: ignore[union-attr]
        return (ij for tl in util.iter_well_indices(key) for ij in util.iter_ij_in_block(tl, int(w), int(h)))
    if kind == "well":
        return util.iter_well_indices(key)
    if kind in ("row", "irow"):
        return ((i, -1) for i in util.iter_row_indices(key))
    return ((-1, j) for j in util.iter_col_indices(key))


def load_layout(path: str | Path, *, layouts_dir: str | Path, max_bytes: int = MAX_LAYOUT_BYTES) -> Layout:
    """Load and validate the layout at ``path``.

    Includes are bare file names looked up beside the layout, then in ``layouts_dir``. The layout and its
    templates are read within the bounds of :mod:`cr51.includes` (at most ``max_bytes`` each: config
    ``max_layout_bytes``), their well tables checked by :func:`check_wells`, and wellmap parses exactly
    the bytes that were checked. Raises :class:`LayoutError` with a technician-readable reason, whatever
    the file does to the readers.
    """
    path = Path(path)
    plate = path.stem
    try:
        data = read_bytes(path, max_bytes, "the layout")
        doc = parse_toml(data, "the layout")
        meta = check_meta(doc.get("meta", {}))
        resolver = Resolver([path.parent, Path(layouts_dir)], max_bytes)
        includes = resolver.resolve(path, meta)
    except LayoutFileError as err:
        raise LayoutError(str(err)) from None
    check_wells(doc)
    for inc in includes:
        check_wells(resolver.docs[inc], f"the included template '{excerpt(inc.name)}'")
    export_name = meta.get("path", "")
    if not isinstance(export_name, str):
        raise LayoutError("[meta] path must be the export's file name")
    if export_name:
        try:
            check_include_name(export_name)
        except IncludeError:
            raise LayoutError(
                f"[meta] path '{excerpt(export_name)}' must be a file name in the layout's folder"
            ) from None
    raw = _load_wellmap(path, data, {inc: resolver.texts[inc] for inc in includes}, export_name)
    if raw.empty:
        raise LayoutError("the layout defines no wells")
    expt = {k: raw[k].iloc[0] for k in EXPT_KEYS if k in raw.columns}
    expt = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in expt.items()}
    for key in ("reference_lot", "donor", "study"):
        if expt.get(key) is not None:
            expt[key] = _clean_id(expt[key], f"[expt] {key}")
    if expt.get("date") is not None:
        expt["date"] = _free_text(str(expt["date"]), "[expt] date")
    tpw = expt.get("targets_per_well")
    if tpw is not None:
        tpw = _number(tpw, "targets_per_well", "[expt]")
        if not tpw > 0:
            raise LayoutError("[expt] targets_per_well must be > 0")
        expt["targets_per_well"] = tpw
    wells = _assign_tubes(_validate(raw), expt)
    return Layout(
        plate=plate,
        path=str(path),
        export_name=export_name,
        wells=wells,
        expt=expt,
        includes=tuple(str(p) for p in includes),
        warnings=tuple(overlaps(doc)),
    )
