"""Realistic simulated 51Cr-release plates (layouts + counter exports) for examples, tests and benchmarks.

Plate layouts
-------------
``standard`` (96 wells)
    Rows A–F: one IVIG lot per row (``role="sample"``, ``lot``, optional ``product``, ``et_ratio=50``),
    concentrations 0.03, 0.1, 0.3, 1, 3, 10 mg/mL in columns 1–6, duplicated in columns 7–12.
    Row G: G1–G4 ``spontaneous``, G5–G8 ``maximum``, G9–G12 untreated samples (``conc=0``, ``et_ratio=50``,
    no lot). Row H: untreated E:T titration in triplicate, H1–H3 50, H4–H6 25, H7–H9 12.5, H10–H12 6.25.
``vehicle`` (96 wells)
    Rows A–D: four lots as above. Rows E–F: ``role="vehicle"`` wells (effectors + targets + the lot's
    excipient buffer at the dilution of that product concentration) carrying ``lot``, ``conc``,
    ``et_ratio=50``: row E holds lots 1 and 2, row F lots 3 and 4, each at 1, 3, 10 mg/mL in columns
    (1–3 | 4–6) and again in (7–9 | 10–12). Rows G/H as in ``standard``.

``[meta] path`` names the export file (same folder); ``[expt]`` carries ``reference_lot``, ``donor``,
``date`` (ISO string) and ``targets_per_well``; Wizard2 plates also carry ``tubes = "rows"`` and
``rack_size = 10`` (tube n = (rack − 1)·rack_size + pos is the n-th defined well in row order).

Model (all CPM are net of counter background)
---------------------------------------------
Per plate (label uptake varies):
    M ~ U(3000, 8000) maximum release; S = clip(f·M, 300, 900) with f ~ U(0.06, 0.15) spontaneous release
    (``high_spontaneous=True``: f ~ U(0.24, 0.32), no clipping, so S/M > 0.2 fails the usual 20 % QC).
Per donor (deterministic from the donor id, see :func:`donor_params`):
    A ~ U(55, 85) % plateau, L50 ~ U(35, min(70, A − 8)) % lysis at E:T 50, k = −ln(1 − L50/A)/50;
    IC50 of the reference lot e_ref ~ log-uniform(1, 3) mg/mL; Hill slope b ~ U(1.2, 2.0);
    bottom fraction ~ U(0.3, 0.5).
Per plate day-to-day variation of the donor: k × LN(0, 0.08), e_ref × LN(0, 0.10).
Untreated lysis at E:T x:        L(x) = A (1 − exp(−k x))                      (Bol et al. 1986)
IVIG at E:T 50 (drc LL.4):       lysis(conc) = c + (d − c) / (1 + exp(b (ln conc − ln e_lot)))
                                 d = L(50), c = bottom_frac · d, e_lot = e_ref · RP_ref / RP_lot,
                                 conc 0 → d.
Excipient (vehicle) effect:      lysis × (1 − v_lot · conc / 10), v_lot = fractional suppression at
                                 10 mg/mL; applied to the lot's vehicle *and* sample wells. By default it
                                 is only modelled on ``vehicle`` plates (the maltose-stabilised product,
                                 or else the first non-reference lot, v = 0.15; the others U(0, 0.03));
                                 ``standard`` plates use excipient-free products so the true RP is exactly
                                 what the parallel LL.4 fit should recover. Pass ``vehicle_suppression``
                                 to override.
Well CPM:                        E = S + lysis/100 · (M − S)  (spontaneous: lysis 0; maximum: 100)
Pipetting noise:                 E × LN(0, 0.04) (same for controls)
Outlier wells:                   E × ``outlier_factor`` (default 1.6) before noise
Counting:                        gross counts ~ Poisson((E + B) · T), B counter background ~ U(20, 60) CPM,
                                 T = ``count_minutes`` (default 1 min); the counter subtracts its own
                                 background estimate B̂ = Poisson(B · 10)/10 (a 10-min blank, one constant per
                                 plate, cancels in % lysis): reported CPM = (counts / T − B̂) · exp(λ t_i),
                                 decay-corrected to the start of the run (λ = ln 2 / 27.7 d, t_i the well's
                                 count start in row order at T + 13 s per well; ≤ 0.2 % over a plate),
                                 rounded to 0.01.

Exports (see :func:`render_export`): ``well_list`` / ``well_list_semicolon`` / ``plate_grid`` (``<name>.csv``),
``wizard2`` (``<name>_wizard2.csv``), ``xlsx_well_list`` / ``xlsx_plate_grid`` (``<name>.xlsx``); the layout is
``<name>.toml``. Every plate's random stream is ``numpy.random.default_rng([seed, index])`` in
:func:`write_plates`, so a plate does not depend on how many others are made.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import io
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "DEFAULT_LOTS",
    "DEFAULT_PRODUCTS",
    "CONCENTRATIONS",
    "ET_TITRATION",
    "FORMATS",
    "LAYOUTS",
    "SimulatedPlate",
    "donor_params",
    "export_filename",
    "layout_wells",
    "simulate_plate",
    "render_export",
    "write_plate",
    "write_plates",
    "truth_table",
    "write_example_set",
    "main",
]

DEFAULT_LOTS: dict[str, float] = {
    "REF-001": 1.0,
    "LOT-A": 1.0,
    "LOT-B": 1.5,
    "LOT-C": 0.7,
    "LOT-D": 2.0,
    "LOT-E": 0.5,
}
"""Lot id -> true relative potency against the reference lot."""

DEFAULT_PRODUCTS: dict[str, str] = {
    "REF-001": "Privigen",  # proline-stabilised
    "LOT-A": "Octagam",  # maltose-stabilised
    "LOT-B": "Gamunex-C",  # glycine
    "LOT-C": "Flebogamma DIF",  # sorbitol
    "LOT-D": "Kiovig",  # glycine
    "LOT-E": "Privigen",
}
"""Lot id -> brand name written as the optional ``product`` well field."""

MALTOSE_PRODUCTS = frozenset({"Octagam"})

CONCENTRATIONS: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)  # mg/mL, columns 1-6 and 7-12
VEHICLE_CONCENTRATIONS: tuple[float, ...] = (1.0, 3.0, 10.0)
ET_TITRATION: tuple[float, ...] = (50.0, 25.0, 12.5, 6.25)  # H1-3, H4-6, H7-9, H10-12
ET_SAMPLE = 50.0
ROWS = "ABCDEFGH"
LAYOUTS = ("standard", "vehicle")
FORMATS = ("well_list", "well_list_semicolon", "plate_grid", "wizard2", "xlsx_well_list", "xlsx_plate_grid")
DONORS: tuple[str, ...] = tuple(f"D{i:02d}" for i in range(1, 9))
DONOR_SEED = 51
RACK_SIZE = 10
WIZARD2_COLUMNS = (
    "Protocol ID",
    "Protocol name",
    "Measurement date & time",
    "Completion status",
    "Run ID",
    "Rack",
    "Det",
    "Pos",
    "Time",
    "Sample code",
    "Cr-51 Counts",
    "Cr-51 CPM",
    "Cr-51 Error %",
    "Cr-51 Info",
)
_LOT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_BASE_DATE = _dt.date(2026, 1, 5)
_CR51_LAMBDA_PER_MIN = math.log(2.0) / (27.7 * 24 * 60)  # 51Cr decay constant


@dataclass
class SimulatedPlate:
    """One simulated plate: its layout text, the net CPM per well and the true parameters.

    ``render`` holds presentation choices for the exports (well-name style, preamble, run id, background,
    gross counts, the layout's well order) so that :func:`render_export` is a pure function of the plate.
    """

    name: str
    layout_toml: str
    export_name: str
    cpm: dict[str, float]
    truth: dict[str, object]
    render: dict[str, object] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class _Well:
    well: str
    role: str
    lot: str | None
    conc: float | None
    et_ratio: float | None


def _fmt_num(x: float) -> str:
    """TOML number: integers without a decimal point (like the hand-written layouts), else repr."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_layout_lots(lots: Sequence[str], layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    cap = 6 if layout == "standard" else 4
    if not 1 <= len(lots) <= cap:
        raise ValueError(f"layout {layout!r} holds 1..{cap} lots, got {len(lots)}")
    for lot in lots:
        if not _LOT_RE.match(lot):
            raise ValueError(f"lot id {lot!r} does not match {_LOT_RE.pattern}")


@lru_cache(maxsize=64)
def layout_wells(layout: str, lots: tuple[str, ...]) -> tuple[_Well, ...]:
    """The wells a layout defines, in row order (A1, A2, …, A12, B1, …) — the Wizard2 tube order."""
    _check_layout_lots(lots, layout)
    by_well: dict[str, _Well] = {}
    for i, lot in enumerate(lots):  # lot rows
        r = ROWS[i]
        for j in range(12):
            w = f"{r}{j + 1}"
            by_well[w] = _Well(w, "sample", lot, CONCENTRATIONS[j % 6], ET_SAMPLE)
    if layout == "vehicle":
        for j in range(12):
            block = (j % 6) // 3  # 0: columns 1-3/7-9, 1: columns 4-6/10-12
            for r_i, r in enumerate("EF"):
                k = 2 * r_i + block
                if k < len(lots):
                    w = f"{r}{j + 1}"
                    by_well[w] = _Well(w, "vehicle", lots[k], VEHICLE_CONCENTRATIONS[j % 3], ET_SAMPLE)
    for j in range(12):
        w = f"G{j + 1}"
        if j < 4:
            by_well[w] = _Well(w, "spontaneous", None, None, None)
        elif j < 8:
            by_well[w] = _Well(w, "maximum", None, None, None)
        else:
            by_well[w] = _Well(w, "sample", None, 0.0, ET_SAMPLE)
        w = f"H{j + 1}"
        by_well[w] = _Well(w, "sample", None, 0.0, ET_TITRATION[j // 3])
    order = [f"{r}{c}" for r in ROWS for c in range(1, 13)]
    return tuple(by_well[w] for w in order if w in by_well)


def _layout_toml(
    *,
    layout: str,
    lots: tuple[str, ...],
    products: dict[str, str] | None,
    export_name: str,
    reference_lot: str,
    donor: str,
    date: str,
    targets_per_well: int,
    tubes: bool,
) -> str:
    out: list[str] = [
        f"# Simulated 51Cr-release plate ({layout} layout) written by cr51.simulate",
        "[meta]",
        f"path = {_toml_str(export_name)}",
        "",
        "[expt]",
        f"reference_lot = {_toml_str(reference_lot)}",
        f"donor = {_toml_str(donor)}",
        f"date = {_toml_str(date)}",
        f"targets_per_well = {int(targets_per_well)}",
    ]
    if tubes:
        out += ['tubes = "rows"', f"rack_size = {RACK_SIZE}"]
    n_lot_rows = len(lots)
    for i, lot in enumerate(lots):
        out += ["", f"[row.{ROWS[i]}]", 'role = "sample"', f"lot = {_toml_str(lot)}"]
        if products and lot in products:
            out.append(f"product = {_toml_str(products[lot])}")
        out.append(f"et_ratio = {_fmt_num(ET_SAMPLE)}")
    for j, conc in enumerate(CONCENTRATIONS):
        for col in (j + 1, j + 7):
            out += ["", f"[block.1x{n_lot_rows}.A{col}]", f"conc = {_fmt_num(conc)}"]
    if layout == "vehicle":
        for r_i, r in enumerate("EF"):
            if 2 * r_i >= n_lot_rows:
                continue
            out += ["", f"[row.{r}]", 'role = "vehicle"', f"et_ratio = {_fmt_num(ET_SAMPLE)}"]
            for block in (0, 1):
                k = 2 * r_i + block
                if k >= n_lot_rows:
                    continue
                for start in (1 + 3 * block, 7 + 3 * block):
                    out += ["", f"[block.3x1.{r}{start}]", f"lot = {_toml_str(lots[k])}"]
                    if products and lots[k] in products:
                        out.append(f"product = {_toml_str(products[lots[k]])}")
        height = 2 if n_lot_rows > 2 else 1
        for j in range(12):
            out += ["", f"[block.1x{height}.E{j + 1}]", f"conc = {_fmt_num(VEHICLE_CONCENTRATIONS[j % 3])}"]
    out += [
        "",
        "[block.4x1.G1]",
        'role = "spontaneous"',
        "",
        "[block.4x1.G5]",
        'role = "maximum"',
        "",
        "[block.4x1.G9]",
        'role = "sample"',
        "conc = 0",
        f"et_ratio = {_fmt_num(ET_SAMPLE)}",
    ]
    for i, et in enumerate(ET_TITRATION):
        out += ["", f"[block.3x1.H{1 + 3 * i}]", 'role = "sample"', "conc = 0", f"et_ratio = {_fmt_num(et)}"]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------- model
def donor_params(donor: str, donor_seed: int = DONOR_SEED) -> dict[str, float]:
    """The donor's NK activity and IVIG sensitivity, deterministic from the donor id.

    Returns A (plateau, %), k (per unit E:T), L50 (= L(50), %), e_ref (reference IC50, mg/mL),
    b (Hill slope), bottom_frac (c/d).
    """
    h = int.from_bytes(hashlib.sha256(donor.encode()).digest()[:8], "little")
    g = np.random.default_rng([donor_seed, h])
    A = float(g.uniform(55.0, 85.0))
    L50 = float(g.uniform(35.0, min(70.0, A - 8.0)))
    k = -math.log(1.0 - L50 / A) / 50.0
    e_ref = float(math.exp(g.uniform(math.log(1.0), math.log(3.0))))
    b = float(g.uniform(1.2, 2.0))
    bottom_frac = float(g.uniform(0.3, 0.5))
    return {"A": A, "k": k, "L50": L50, "e_ref": e_ref, "b": b, "bottom_frac": bottom_frac}


def _ll4(conc: np.ndarray, b: float, c: float, d: float, e: np.ndarray) -> np.ndarray:
    conc = np.asarray(conc, dtype=float)
    out = np.full(conc.shape, d, dtype=float)
    pos = conc > 0
    out[pos] = c + (d - c) / (1.0 + np.exp(b * (np.log(conc[pos]) - np.log(np.asarray(e)[pos]))))
    return out


def _as_list(x: str | Sequence[str] | None) -> list[str]:
    if x is None:
        return []
    if isinstance(x, str):
        return [x]
    return list(x)


def export_filename(name: str, fmt: str) -> str:
    """File name of a plate's export: ``<name>.csv``, ``<name>_wizard2.csv`` or ``<name>.xlsx``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {FORMATS}")
    if fmt == "wizard2":
        return f"{name}_wizard2.csv"
    if fmt.startswith("xlsx"):
        return f"{name}.xlsx"
    return f"{name}.csv"


def simulate_plate(
    name: str,
    rng: np.random.Generator,
    *,
    lots: dict[str, float] = DEFAULT_LOTS,
    reference_lot: str = "REF-001",
    layout: str = "standard",
    donor: str | None = None,
    fmt: str = "well_list",
    high_spontaneous: bool = False,
    outlier_well: str | Sequence[str] | None = None,
    outlier_factor: float = 1.6,
    missing_well: str | Sequence[str] | None = None,
    date: str | _dt.date | None = None,
    products: dict[str, str] | None = None,
    vehicle_suppression: dict[str, float] | None = None,
    pipette_cv: float = 0.04,
    count_minutes: float = 1.0,
    targets_per_well: int = 10000,
    donor_seed: int = DONOR_SEED,
) -> SimulatedPlate:
    """Simulate one plate (model in the module docstring).

    Parameters
    ----------
    name : plate name = layout file stem (``^[A-Za-z0-9][A-Za-z0-9._-]*$``).
    rng : the plate's random stream (everything random about the plate is drawn from it, in a fixed order).
    lots : lot id -> true RP. ``standard`` uses up to 6 lots (rows A–F, in dict order after the reference,
        which always goes in row A); ``vehicle`` up to 4 — with more, the reference and the next three lots.
    reference_lot : must be a key of ``lots``; RP are taken relative to it.
    layout : ``"standard"`` or ``"vehicle"``.
    donor : donor id (``None``: drawn from D01–D08).
    fmt : the export format the plate will be written in; ``"wizard2"`` adds ``tubes``/``rack_size`` to
        the layout and names the export ``<name>_wizard2.csv``.
    high_spontaneous : spontaneous release 24–32 % of maximum (fails the 20 % QC).
    outlier_well : well(s) whose expected CPM is multiplied by ``outlier_factor``.
    missing_well : well(s) left out of the export (Wizard2: the rack position is skipped).
    date : ISO date of the run (``None``: 2026-01-05 + U{0..364} days).
    products : lot -> brand name for the ``product`` field (``None``: :data:`DEFAULT_PRODUCTS` where known).
    vehicle_suppression : lot -> fraction of lysis suppressed by the excipient at 10 mg/mL
        (``None``: default described in the module docstring).
    pipette_cv : sd of the multiplicative lognormal pipetting noise.
    count_minutes : counting time per well (Poisson counts over this time).
    targets_per_well : written to ``[expt]`` (lytic units need it).
    donor_seed : seed of the donor population (:func:`donor_params`).
    """
    if not _NAME_RE.match(name):
        raise ValueError(f"plate name {name!r} must match {_NAME_RE.pattern}")
    if reference_lot not in lots:
        raise ValueError(f"reference lot {reference_lot!r} is not among the lots {list(lots)}")
    export_name = export_filename(name, fmt)
    cap = 6 if layout == "standard" else 4
    lot_ids = [reference_lot] + [x for x in lots if x != reference_lot]
    lot_ids = lot_ids[:cap] if layout == "vehicle" else lot_ids
    lot_t = tuple(lot_ids)
    wells = layout_wells(layout, lot_t)  # validates
    if products is None:
        products = {x: DEFAULT_PRODUCTS[x] for x in lot_ids if x in DEFAULT_PRODUCTS}
    well_names = [w.well for w in wells]
    defined = set(well_names)
    for w in _as_list(outlier_well) + _as_list(missing_well):
        if w not in defined:
            raise ValueError(f"well {w!r} is not defined by the {layout} layout")

    # --- plate-level draws (fixed order: keeps streams reproducible)
    donor_draw = DONORS[int(rng.integers(len(DONORS)))]  # drawn even when given: same stream either way
    day_draw = int(rng.integers(365))
    if donor is None:
        donor = donor_draw
    if date is None:
        date = (_BASE_DATE + _dt.timedelta(days=day_draw)).isoformat()
    elif isinstance(date, _dt.date):
        date = date.isoformat()
    M = float(rng.uniform(3000.0, 8000.0))
    if high_spontaneous:
        S = float(rng.uniform(0.24, 0.32)) * M
    else:
        S = float(np.clip(rng.uniform(0.06, 0.15) * M, 300.0, 900.0))
    dp = donor_params(donor, donor_seed)
    k = dp["k"] * float(rng.lognormal(0.0, 0.08))
    A = dp["A"]
    e_ref = dp["e_ref"] * float(rng.lognormal(0.0, 0.10))
    b = dp["b"]
    bottom_frac = dp["bottom_frac"]
    d = A * (1.0 - math.exp(-k * ET_SAMPLE))
    c = bottom_frac * d
    veh_draw = rng.uniform(0.0, 0.03, size=len(lot_ids))
    if vehicle_suppression is None:
        if layout == "vehicle":
            maltose = [x for x in lot_ids if products.get(x) in MALTOSE_PRODUCTS]
            strong = maltose[0] if maltose else (lot_ids[1] if len(lot_ids) > 1 else lot_ids[0])
            vehicle_suppression = {x: (0.15 if x == strong else float(v)) for x, v in zip(lot_ids, veh_draw)}
        else:
            vehicle_suppression = {x: 0.0 for x in lot_ids}
    veh = {x: float(vehicle_suppression.get(x, 0.0)) for x in lot_ids}
    rp_ref = float(lots[reference_lot])
    e_lot = {x: e_ref * rp_ref / float(lots[x]) for x in lot_ids}
    background = float(rng.uniform(20.0, 60.0))
    bkg_est = float(rng.poisson(background * 10.0)) / 10.0

    # --- expected lysis per well (vectorised)
    n = len(wells)
    lysis = np.zeros(n)
    conc = np.array([w.conc if w.conc is not None else 0.0 for w in wells])
    et = np.array([w.et_ratio if w.et_ratio is not None else 0.0 for w in wells])
    role = [w.role for w in wells]
    e_arr = np.array([e_lot[w.lot] if w.lot else 1.0 for w in wells])
    v_arr = np.array([veh[w.lot] if w.lot else 0.0 for w in wells])
    is_lot_sample = np.array([r == "sample" and w.lot is not None for r, w in zip(role, wells)])
    is_vehicle = np.array([r == "vehicle" for r in role])
    is_untreated = np.array([r == "sample" and w.lot is None for r, w in zip(role, wells)])
    is_max = np.array([r == "maximum" for r in role])
    lysis[is_lot_sample] = _ll4(conc[is_lot_sample], b, c, d, e_arr[is_lot_sample])
    lysis[is_vehicle] = d
    lysis[is_untreated] = A * (1.0 - np.exp(-k * et[is_untreated]))
    lysis[is_max] = 100.0
    lysis *= np.clip(1.0 - v_arr * conc / 10.0, 0.0, 1.0) * (is_lot_sample | is_vehicle) + ~(is_lot_sample | is_vehicle)
    expected = S + lysis / 100.0 * (M - S)
    outliers = _as_list(outlier_well)
    if outliers:
        idx = [well_names.index(w) for w in outliers]
        expected[idx] *= outlier_factor
    noisy = expected * rng.lognormal(0.0, pipette_cv, size=n)
    counts = rng.poisson((noisy + background) * count_minutes)
    # decay correction to the start of the count (51Cr t1/2 27.7 d; ~13 s tube change between wells)
    t_min = np.arange(n) * (count_minutes + 13.0 / 60.0)
    cpm_arr = np.round((counts / count_minutes - bkg_est) * np.exp(_CR51_LAMBDA_PER_MIN * t_min), 2)

    missing = set(_as_list(missing_well))
    cpm = {w: float(v) for w, v in zip(well_names, cpm_arr) if w not in missing}
    gross = {w: int(v) for w, v in zip(well_names, counts) if w not in missing}

    # --- presentation choices (drawn last so the model streams do not depend on them)
    style = {
        "zero_pad": bool(rng.integers(2)),
        "preamble_lines": int(rng.choice([0, 2, 3])),
        "counts_column": bool(rng.integers(2)),
        "grid_counts": ("none", "before", "after")[int(rng.integers(3))],
        "run_id": int(rng.integers(1000, 9999)),
        "protocol_id": int(rng.integers(1, 30)),
        "start_seconds": int(rng.integers(8 * 3600, 17 * 3600)),
        "time_jitter": rng.uniform(0.0, 0.06, size=n).round(2).tolist(),
    }
    render: dict[str, object] = {
        **style,
        "well_order": well_names,
        "gross_counts": gross,
        "background_est": bkg_est,
        "count_minutes": count_minutes,
        "date": date,
        "missing": sorted(missing),
    }
    toml = _layout_toml(
        layout=layout,
        lots=lot_t,
        products=products,
        export_name=export_name,
        reference_lot=reference_lot,
        donor=donor,
        date=date,
        targets_per_well=targets_per_well,
        tubes=(fmt == "wizard2"),
    )
    truth: dict[str, object] = {
        "plate": name,
        "layout": layout,
        "format": fmt,
        "export_name": export_name,
        "donor": donor,
        "date": date,
        "reference_lot": reference_lot,
        "targets_per_well": targets_per_well,
        "S": S,
        "M": M,
        "S_over_M": S / M,
        "A": A,
        "k": k,
        "b": b,
        "d": d,
        "c": c,
        "bottom_frac": bottom_frac,
        "e_ref": e_ref,
        "L": {et_: A * (1.0 - math.exp(-k * et_)) for et_ in ET_TITRATION},
        "rp": {x: float(lots[x]) / rp_ref for x in lot_ids},
        "e": e_lot,
        "vehicle_suppression_10": veh,
        "products": {x: products.get(x) for x in lot_ids},
        "background_cpm": background,
        "pipette_cv": pipette_cv,
        "count_minutes": count_minutes,
        "high_spontaneous": high_spontaneous,
        "outlier_wells": outliers,
        "outlier_factor": outlier_factor,
        "missing_wells": sorted(missing),
        "expected_lysis": dict(zip(well_names, lysis.tolist())),
        "expected_cpm": dict(zip(well_names, expected.tolist())),
    }
    return SimulatedPlate(name=name, layout_toml=toml, export_name=export_name, cpm=cpm, truth=truth, render=render)


# -------------------------------------------------------------------------------------------- exports
def _well_label(well: str, zero_pad: bool) -> str:
    return f"{well[0]}{int(well[1:]):02d}" if zero_pad else well


def _preamble(plate: SimulatedPlate, instrument: str) -> list[list[str]]:
    n = int(plate.render.get("preamble_lines", 0))
    lines = [["Instrument", instrument], ["Run", plate.name], ["Date", str(plate.render.get("date", ""))]]
    return lines[:n] if n else []


def _well_list_rows(plate: SimulatedPlate) -> tuple[list[list[str]], list[list[object]]]:
    """(preamble rows, table rows incl. header) of the well list; values as numbers."""
    r = plate.render
    zero_pad = bool(r.get("zero_pad", False))
    with_counts = bool(r.get("counts_column", False))
    gross = r.get("gross_counts", {})
    header: list[object] = ["Well", "Counts", "CPM"] if with_counts else ["Well", "CPM"]
    rows: list[list[object]] = [header]
    for w in r["well_order"]:
        if w not in plate.cpm:
            continue
        label = _well_label(w, zero_pad)
        rows.append([label, gross[w], plate.cpm[w]] if with_counts else [label, plate.cpm[w]])
    return _preamble(plate, "PerkinElmer MicroBeta2 2450"), rows


def _grid_blocks(plate: SimulatedPlate) -> list[list[list[object]]]:
    """The CPM grid (and optional Counts grid) as lists of rows; missing wells are None."""
    r = plate.render
    gross = r.get("gross_counts", {})

    def grid(title: str, values: dict[str, float]) -> list[list[object]]:
        rows: list[list[object]] = [[title] + list(range(1, 13))]
        for row in ROWS:
            rows.append([row] + [values.get(f"{row}{c}") for c in range(1, 13)])
        return rows

    blocks = [grid("CPM", plate.cpm)]
    where = r.get("grid_counts", "none")
    if where == "before":
        blocks.insert(0, grid("Counts", gross))
    elif where == "after":
        blocks.append(grid("Counts", gross))
    return blocks


def _num(v: object, decimal_comma: bool = False) -> str:
    if v is None:
        return ""
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    s = f"{float(v):.2f}"
    return s.replace(".", ",") if decimal_comma else s


def _csv(rows: list[list[object]], sep: str = ",", decimal_comma: bool = False) -> str:
    return "".join(
        sep.join(_num(x, decimal_comma) if not isinstance(x, str) else x for x in row) + "\r\n" for row in rows
    )


def _trim(x: float) -> str:
    """Wizard2 style number: at most 2 decimals, no trailing zeros (``1200.05``, ``1``, ``62.4``)."""
    s = f"{float(x):.2f}".rstrip("0").rstrip(".")
    return "0" if s in ("", "-0") else s


def _wizard2_rows(plate: SimulatedPlate) -> list[list[object]]:
    r = plate.render
    rack_size = RACK_SIZE
    minutes = float(r.get("count_minutes", 1.0))
    bkg = float(r.get("background_est", 0.0))
    jitter = r.get("time_jitter") or [0.0] * len(r["well_order"])
    t = _dt.datetime.fromisoformat(str(r.get("date", "2026-01-05"))) + _dt.timedelta(
        seconds=int(r.get("start_seconds", 9 * 3600))
    )
    rows: list[list[object]] = []
    for n, w in enumerate(r["well_order"]):
        rack, pos = n // rack_size + 1, n % rack_size + 1
        time_s = round(minutes * 60.0 + float(jitter[n]), 2)
        if w in plate.cpm:
            cpm = plate.cpm[w]
            counts = round(max(cpm + bkg, 0.0) * time_s / 60.0, 2)
            err = round(100.0 / math.sqrt(cpm), 2) if cpm > 0 else 0.0
            info = "I" if (cpm <= 0 or err > 5.0) else ""
            rows.append(
                [
                    r.get("protocol_id", 7),
                    "Cr-51 NK cytotoxicity",
                    t.strftime("%Y-%m-%d %H:%M:%S"),
                    0,
                    r.get("run_id", 4391),
                    rack,
                    1,
                    pos,
                    _trim(time_s),
                    "",
                    _trim(counts),
                    _trim(cpm),
                    _trim(err),
                    info,
                ]
            )
        t += _dt.timedelta(seconds=time_s + 13.0)  # empty positions are skipped quickly; keep it simple
    return rows


def _xlsx(rows: list[list[object]]) -> bytes:
    from openpyxl import Workbook

    wb = Workbook(write_only=True)
    ws = wb.create_sheet("Sheet1")
    for row in rows:
        ws.append([None if x is None else (float(x) if isinstance(x, (float, np.floating)) else x) for x in row])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def render_export(plate: SimulatedPlate, fmt: str) -> bytes:
    """The counter export of a plate in one of :data:`FORMATS`.

    - ``well_list``: optional 2–3 preamble lines (``Instrument,…``/``Run,…``/``Date,…``), header
      ``Well,CPM`` or ``Well,Counts,CPM`` (gross counts), one row per well (``A1`` or ``A01`` per plate).
    - ``well_list_semicolon``: the same, ``;``-delimited with decimal comma.
    - ``plate_grid``: corner cell ``CPM``, ``1..12`` across, ``A..H`` down; optionally a ``Counts`` grid
      before or after, separated by a blank line; missing wells are empty cells.
    - ``wizard2``: the PerkinElmer Wizard2 column set, one row per tube in layout row order, racks of 10
      (``Cr-51 Counts`` gross over ``Time`` seconds, ``Cr-51 CPM`` net, ``Cr-51 Error %`` = 100/√CPM,
      ``Cr-51 Info`` = ``I`` when that error exceeds 5 %); a missing well's rack position is skipped.
    - ``xlsx_well_list`` / ``xlsx_plate_grid``: the same tables in the first sheet of an .xlsx.
    Text formats are UTF-8 with CRLF line ends.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {FORMATS}")
    if fmt == "well_list":
        pre, rows = _well_list_rows(plate)
        return _csv(pre + rows).encode()
    if fmt == "well_list_semicolon":
        pre, rows = _well_list_rows(plate)
        return _csv(pre + rows, sep=";", decimal_comma=True).encode()
    if fmt == "plate_grid":
        blocks = _grid_blocks(plate)
        return "\r\n".join(_csv(b) for b in blocks).encode()
    if fmt == "wizard2":
        rows = [list(WIZARD2_COLUMNS)] + _wizard2_rows(plate)
        return "".join(",".join(str(x) for x in row) + "\r\n" for row in rows).encode()
    if fmt == "xlsx_well_list":
        pre, rows = _well_list_rows(plate)
        return _xlsx(pre + rows)
    # xlsx_plate_grid
    blocks = _grid_blocks(plate)
    rows_x: list[list[object]] = []
    for i, b in enumerate(blocks):
        if i:
            rows_x.append([])
        rows_x += b
    return _xlsx(rows_x)


def _fmt_of(plate: SimulatedPlate, fmt: str | None) -> str:
    fmt = fmt or str(plate.truth.get("format", "well_list"))
    if export_filename(plate.name, fmt) != plate.export_name:
        raise ValueError(
            f"plate {plate.name!r} was simulated for export {plate.export_name!r}; format {fmt!r} would be "
            f"written as {export_filename(plate.name, fmt)!r} (simulate it with fmt={fmt!r})"
        )
    if fmt == "wizard2" and 'tubes = "rows"' not in plate.layout_toml:
        raise ValueError(f"plate {plate.name!r} has no tube mapping; simulate it with fmt='wizard2'")
    return fmt


def write_plate(outdir: Path, plate: SimulatedPlate, fmt: str | None = None) -> list[Path]:
    """Write ``<name>.toml`` and the export named by its ``[meta] path``; return both paths.

    ``fmt`` must be compatible with the format the plate was simulated for (same export file name;
    Wizard2 needs the tube mapping in the layout). ``None`` uses that format.
    """
    fmt = _fmt_of(plate, fmt)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    toml_path = outdir / f"{plate.name}.toml"
    export_path = outdir / plate.export_name
    export_path.write_bytes(render_export(plate, fmt))
    toml_path.write_text(plate.layout_toml, encoding="utf-8")
    return [toml_path, export_path]


# ----------------------------------------------------------------------------------------- plate sets
def truth_table(plates: Sequence[SimulatedPlate]) -> pd.DataFrame:
    """One row per (plate, lot) with the plate-level truth repeated."""
    recs: list[dict[str, object]] = []
    for p in plates:
        t = p.truth
        base = {
            k: t[k]
            for k in (
                "plate",
                "layout",
                "format",
                "export_name",
                "donor",
                "date",
                "reference_lot",
                "S",
                "M",
                "S_over_M",
                "A",
                "k",
                "b",
                "d",
                "c",
                "bottom_frac",
                "e_ref",
                "background_cpm",
                "pipette_cv",
                "count_minutes",
                "high_spontaneous",
                "outlier_factor",
            )
        }
        base["L50"] = t["d"]
        base["outlier_wells"] = ";".join(t["outlier_wells"])  # type: ignore[arg-type]
        base["missing_wells"] = ";".join(t["missing_wells"])  # type: ignore[arg-type]
        rp: dict[str, float] = t["rp"]  # type: ignore[assignment]
        for lot in rp:
            recs.append(
                {
                    **base,
                    "lot": lot,
                    "product": t["products"].get(lot),  # type: ignore[union-attr]
                    "is_reference": lot == t["reference_lot"],
                    "rp": rp[lot],
                    "log_rp": math.log(rp[lot]),
                    "e": t["e"][lot],  # type: ignore[index]
                    "vehicle_suppression_10": t["vehicle_suppression_10"][lot],
                }
            )  # type: ignore[index]
    return pd.DataFrame.from_records(recs)


def write_plates(
    outdir: Path,
    n: int,
    seed: int,
    *,
    formats: Sequence[str] = ("well_list",),
    truth_path: Path | None = None,
    name_prefix: str = "plate",
    **kw: object,
) -> pd.DataFrame:
    """Simulate and write ``n`` plates ``<prefix>NNNN`` (formats rotate over the plates).

    Plate ``i`` uses ``numpy.random.default_rng([seed, i])``. Extra keyword arguments go to
    :func:`simulate_plate`. Returns the truth table (:func:`truth_table`); it is written as CSV only when
    ``truth_path`` is given (the pipeline lists every file in a raw folder, so nothing extra by default).
    """
    formats = list(formats)
    if not formats:
        raise ValueError("formats must not be empty")
    for f in formats:
        export_filename("x", f)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(n)))
    plates: list[SimulatedPlate] = []
    for i in range(n):
        fmt = formats[i % len(formats)]
        plate = simulate_plate(f"{name_prefix}{i + 1:0{width}d}", np.random.default_rng([seed, i]), fmt=fmt, **kw)  # type: ignore[arg-type]
        write_plate(outdir, plate, fmt)
        plates.append(plate)
    table = truth_table(plates)
    if truth_path is not None:
        Path(truth_path).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(truth_path, index=False)
    return table


EXAMPLE_PLAN: tuple[tuple[str, str, str, int], ...] = (
    # (donor, format, layout, day offset)
    ("D03", "well_list", "standard", 0),
    ("D03", "plate_grid", "standard", 7),
    ("D07", "wizard2", "standard", 9),
    ("D07", "xlsx_well_list", "standard", 16),
    ("D11", "well_list", "standard", 21),
    ("D11", "well_list", "vehicle", 23),
)


def write_example_set(outdir: Path, seed: int = 2026, truth_path: Path | None = None) -> None:
    """The shipped example plates: five standard plates from donors D03, D07, D11 in the formats
    well_list, plate_grid, wizard2, xlsx_well_list, well_list, plus one ``vehicle`` plate (well_list).

    Names are ``<date>_<donor>`` (``_veh`` for the vehicle plate). The truth table is written only
    when ``truth_path`` is given.
    """
    outdir = Path(outdir)
    start = _dt.date(2026, 3, 2)
    plates = []
    for i, (donor, fmt, layout, offset) in enumerate(EXAMPLE_PLAN):
        date = start + _dt.timedelta(days=offset)
        name = f"{date:%Y%m%d}_{donor}" + ("_veh" if layout == "vehicle" else "")
        plate = simulate_plate(name, np.random.default_rng([seed, i]), donor=donor, fmt=fmt, layout=layout, date=date)
        write_plate(outdir, plate, fmt)
        plates.append(plate)
    if truth_path is not None:
        truth_table(plates).to_csv(truth_path, index=False)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI ``cr51-simulate``: write simulated plates (layouts + exports) into a folder."""
    ap = argparse.ArgumentParser(prog="cr51-simulate", description=main.__doc__)
    ap.add_argument("--out", required=True, type=Path, help="output folder (created)")
    ap.add_argument("--plates", type=int, default=10, help="number of plates (default 10)")
    ap.add_argument("--seed", type=int, default=2026, help="random seed (default 2026)")
    ap.add_argument(
        "--format",
        dest="formats",
        action="append",
        choices=FORMATS,
        help="export format; repeat to rotate formats over plates (default well_list)",
    )
    ap.add_argument("--layout", choices=LAYOUTS, default="standard")
    ap.add_argument("--truth", type=Path, default=None, help="also write the truth table to this CSV")
    ap.add_argument("--example", action="store_true", help="write the shipped example set instead")
    args = ap.parse_args(argv)
    if args.plates < 0:
        ap.error("--plates must be >= 0")
    if args.example:
        write_example_set(args.out, seed=args.seed, truth_path=args.truth)
        print(f"wrote example set to {args.out}")
        return 0
    table = write_plates(
        args.out,
        args.plates,
        args.seed,
        formats=args.formats or ["well_list"],
        truth_path=args.truth,
        layout=args.layout,
    )
    print(
        f"wrote {args.plates} plates ({len(table)} plate×lot truth rows) to {args.out}"
        + (f"; truth in {args.truth}" if args.truth else "")
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
