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

import math
import re
import shutil
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .includes import IncludeError, check_include_name, resolve_includes
from .tables import records

ROLES = ("spontaneous", "maximum", "sample", "background", "vehicle")
#: Ids typed by technicians (lots, donors): start with a letter or digit, so that a spreadsheet
#: cannot read them as a formula (=, +, -, @), and hold no control characters.
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._/#()-]{0,63}$")
PRODUCT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._/#%()+-]{0,63}$")
TUBE_ORDERS = ("rows", "columns")
ROWS = "ABCDEFGH"


class LayoutError(ValueError):
    """A layout that cannot be used; ``str(exc)`` is a reason a technician can act on."""


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


def _load_wellmap(path: Path, includes: list[Path], export_name: str) -> pd.DataFrame:
    """Load with wellmap from a private copy, so includes resolve only where we allow."""
    import wellmap

    with tempfile.TemporaryDirectory(prefix="cr51-layout-") as tmp:
        tdir = Path(tmp)
        staged = tdir / "layout.toml"
        shutil.copyfile(path, staged)
        for inc in includes:
            shutil.copyfile(inc, tdir / inc.name)
        if export_name:
            (tdir / export_name).touch()
        try:
            return wellmap.load(staged)
        except wellmap.LayoutError as err:
            msg = str(err).replace(str(staged), path.name).replace(tmp + "/", "")
            raise LayoutError(f"wellmap could not read the layout: {msg}") from None


def _clean_id(value: object, what: str, pattern: re.Pattern[str] = ID_RE) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise LayoutError(f"{what} {value!r} is not a text id")
    text = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    text = text.strip()
    if not pattern.match(text):
        raise LayoutError(
            f"{what} {text!r} is not allowed: ids must start with a letter or digit and use "
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
        raise LayoutError(f"well {well}: {what} {value!r} is not a number") from None
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
            raise LayoutError(f"well {well}: unknown role {role!r} (allowed: {', '.join(ROLES)})")
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


def _assign_tubes(wells: pd.DataFrame, expt: dict[str, object]) -> pd.DataFrame:
    explicit = wells["rack"].notna() | wells["pos"].notna()
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


def load_layout(path: str | Path, *, layouts_dir: str | Path) -> Layout:
    """Load and validate the layout at ``path``.

    Includes are bare file names looked up beside the layout, then in ``layouts_dir``.
    Raises :class:`LayoutError` with a technician-readable reason.
    """
    path = Path(path)
    plate = path.stem
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
        includes = resolve_includes(path, [path.parent, Path(layouts_dir)], meta=doc.get("meta", {}))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise LayoutError(f"layout is not valid TOML: {err}") from None
    except IncludeError as err:
        raise LayoutError(str(err)) from None
    meta = doc.get("meta", {})
    export_name = meta.get("path", "")
    if not isinstance(export_name, str):
        raise LayoutError("[meta] path must be the export's file name")
    if export_name:
        try:
            check_include_name(export_name)
        except IncludeError:
            raise LayoutError(f"[meta] path '{export_name}' must be a file name in the layout's folder") from None
    raw = _load_wellmap(path, includes, export_name)
    if raw.empty:
        raise LayoutError("the layout defines no wells")
    expt = {k: raw[k].iloc[0] for k in EXPT_KEYS if k in raw.columns}
    expt = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in expt.items()}
    for key in ("reference_lot", "donor", "study"):
        if expt.get(key) is not None:
            expt[key] = _clean_id(expt[key], f"[expt] {key}")
    if expt.get("date") is not None:
        expt["date"] = str(expt["date"])
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
