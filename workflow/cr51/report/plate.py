"""The plate sections of the report, drawn inside each batch job (so an unchanged plate is not drawn again).

One collapsed ``<details class="plate">`` section per accepted plate: plate map, QC against its
limits, suppression curves, E:T titration and the plate's potency rows. Each comes as a
:class:`~cr51.report.section.Section`, which also holds what the collect job needs about the plate
(its lots; its curves figure, to write as a file), so that no one reads the HTML back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..figures import CurvePoints, JointCurve, lot_class, titration_svg
from ..points import plates_fit_points
from ..qc import is_untreated
from ..schema import FLAGS, POTENCY_JOINT
from ..settings import QC, Analysis
from ..tables import records
from .html import esc, fmt, plate_id, table, td
from .html import missing as _missing
from .html import truthy as _truthy
from .section import Figure, Section

ROWS, COLS = "ABCDEFGH", range(1, 13)
HEAT_STEPS = 8
ROLE_MARK = {"spontaneous": "S", "maximum": "M", "background": "B"}


@dataclass(frozen=True)
class Limits:
    """What a plate section compares against: QC limits and the potency test settings."""

    qc: QC
    alpha: float
    ci_level: float
    et_ratio: float | None

    @classmethod
    def from_settings(cls, settings: Analysis) -> Limits:
        """From the analysis settings."""
        return cls(settings.qc, settings.potency.alpha, settings.potency.ci_level, settings.fit.et_ratio)


def by_plate(rows: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records grouped by their ``plate``."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(str(r["plate"]), []).append(r)
    return out


def plate_sections(tables: Mapping[str, pd.DataFrame], settings: Analysis | Mapping[str, Any]) -> dict[str, Section]:
    """One section per accepted plate (qc.csv row) of ``tables``.

    The batch's tables are split by plate once, with plain Python rows: a plate costs about a
    millisecond, so that the report stays fast at thousands of plates.

    Parameters
    ----------
    tables
        The tables of one or more plates: ``wells``, ``lysis``, ``qc``, ``potency``, ``lots_differ``.
    settings
        The analysis settings (or a configuration mapping), see :class:`Limits`.

    Returns
    -------
    dict[str, Section]
        {plate: section}, in plate order (empty without a QC row).
    """
    qc = tables["qc"]
    if qc.empty:
        return {}
    limits = Limits.from_settings(Analysis.of(settings))
    wells = tables["wells"]
    pts, ets = plates_fit_points(wells, limits.et_ratio)
    points = by_plate(records(pts.assign(lot=pts["lot"].fillna(""))))
    unt = by_plate(
        {"plate": p, "et_ratio": et, "lysis_pct": y}
        for p, et, y, use in zip(wells["plate"].tolist(), wells["et_ratio"].tolist(), wells["lysis_pct"].tolist(),
                                 is_untreated(wells).tolist())
        if use
    )  # fmt: skip
    grouped = {name: by_plate(records(tables[name])) for name in ("wells", "potency", "lots_differ")}
    max_cv = _largest_by_plate(tables["lysis"]["plate"].tolist(), tables["lysis"]["cv_pct"].tolist())
    sections = {}
    for q in sorted(records(qc), key=lambda r: str(r["plate"])):
        plate = str(q["plate"])
        mine = points.get(plate, [])
        curve_points = CurvePoints(
            np.array([r["lot"] for r in mine], dtype=str), np.array([r["conc"] for r in mine], dtype=float),
            np.array([r["lysis"] for r in mine], dtype=float), ets.get(plate, math.nan),
        )  # fmt: skip
        titration = np.array([(r["et_ratio"], r["lysis_pct"]) for r in unt.get(plate, [])], dtype=float).reshape(-1, 2)
        differ = grouped["lots_differ"].get(plate, [None])[0]
        sections[plate] = plate_section(q, grouped["wells"][plate], curve_points, titration,
                                        grouped["potency"].get(plate, []), differ, max_cv.get(plate, math.nan),
                                        limits)  # fmt: skip
    return sections


def _largest_by_plate(plates: Sequence[object], values: Sequence[float]) -> dict[object, float]:
    """{plate: its largest value}, NaN skipped (a plate with none is left out), as pandas' groupby
    ``max`` gives it (the first of equal values kept)."""
    out: dict[object, float] = {}
    for plate, v in zip(plates, values):
        if v == v and (plate not in out or v > out[plate]):
            out[plate] = v
    return out


def plate_section(
    qc: Mapping[str, Any],
    wells: Sequence[Mapping[str, Any]],
    points: CurvePoints,
    titration: np.ndarray,
    potency: Sequence[Mapping[str, Any]],
    differ: Mapping[str, Any] | None,
    max_cv: float,
    limits: Limits,
) -> Section:
    """One plate's collapsed section.

    Parameters
    ----------
    qc
        The plate's qc.csv row.
    wells
        The plate's wells.csv rows.
    points
        The wells that enter the fits (:func:`cr51.points.plates_fit_points`).
    titration
        Rows of untreated E:T and % lysis.
    potency
        The plate's potency.csv rows (with the joint fit's columns).
    differ
        The plate's lots_differ.csv row (None without one).
    max_cv
        The largest replicate CV of the plate (lysis.csv), %.
    limits
        The QC limits and potency settings it is compared against.
    """
    plate = str(qc["plate"])
    ref = "" if _missing(qc["reference_lot"]) else str(qc["reference_lot"])
    lots = sorted({str(w["lot"]) for w in wells if not _missing(w["lot"])})
    status = str(qc["status"])
    flags = [f for f in str(qc["flags"]).split(";") if f and not _missing(qc["flags"])]
    meta = " · ".join(
        esc(v) for v in (qc.get("date"), f"donor {qc.get('donor')}", f"reference {ref}") if not _missing(v)
    )
    summary = (
        f'<summary><span class="pname">{esc(plate)}</span> <span class="badge {status}">QC {esc(status)}</span>'
        f' <span class="meta">{meta}</span>'
        + (f' <span class="flags">{esc(", ".join(flags))}</span>' if flags else "")
        + "</summary>"
    )
    figure = Figure.curves_of(points, _joint_curves(potency, ref), ref, f"Suppression curves, plate {plate}")
    curves = figure.svg()
    titr = titration_svg(
        titration[:, 0],
        titration[:, 1],
        float(qc["lu_a"]),
        float(qc["lu_k"]),
        f"Untreated E:T titration, plate {plate}",
    )
    html = (
        f'<details class="plate" open id="{plate_id(plate)}" data-plate="{esc(plate)}" data-lots="{esc("|".join(lots))}">'
        f'{summary}<div class="pbody">'
        f'<div class="row"><div><h4>Plate map (CPM)</h4>{plate_map(wells)}</div>'
        f"<div><h4>Quality control</h4>{qc_table(qc, max_cv, limits.qc)}{flag_list(flags)}</div></div>"
        f'<div class="row"><figure class="curves">{curves}<figcaption>Per-well % specific lysis at E:T {points.et_ratio:g}:1 '
        "and the joint parallel fit (shared slope, bottom and top; one IC50 per lot).</figcaption></figure>"
        f'<figure class="titr">{titr}<figcaption>Untreated wells; y = A(1 − e<sup>−k·E:T</sup>).</figcaption></figure></div>'
        f"<h4>Relative potency vs {esc(ref)}</h4>{plate_potency_table(potency, limits)}{differ_text(differ, limits)}"
        "</div></details>"
    )
    return Section(plate, tuple(lots), html, (figure,))


def _joint_curves(potency: Sequence[Mapping[str, Any]], ref: str) -> list[JointCurve]:
    """The joint parallel fit's curves of the plate (reference first) from potency.csv's joint columns."""
    rows = [r for r in potency if all(not _missing(r.get(c)) for c in (c.name for c in POTENCY_JOINT))]
    if not rows:
        return []
    shared = [float(rows[0][c]) for c in ("joint_slope", "joint_bottom", "joint_top", "joint_f")]
    out = [JointCurve(ref, *shared, float(rows[0]["joint_e_ref"]))]
    return out + [JointCurve(str(r["lot"]), *shared, float(r["joint_e"])) for r in rows]


def plate_map(wells: Sequence[Mapping[str, Any]]) -> str:
    """8 × 12 heat map of CPM: role marks, lot colours, excluded (hatched) and outlier (red) wells."""
    cells = {str(w["well"]): w for w in wells if isinstance(w["well"], str) and w["well"]}
    cpm = [float(w["cpm"]) for w in wells if not _missing(w["cpm"])]
    lo, hi = (min(cpm), max(cpm)) if cpm else (0.0, 1.0)
    rows = ["<tr><th></th>" + "".join(f"<th>{c}</th>" for c in COLS) + "</tr>"]
    for r in ROWS:
        tds = "".join(_well_cell(cells.get(f"{r}{c}"), f"{r}{c}", lo, hi) for c in COLS)
        rows.append(f"<tr><th>{r}</th>{tds}</tr>")
    return f'<table class="pm">{"".join(rows)}</table>'


def _well_cell(w: Mapping[str, Any] | None, well: str, lo: float, hi: float) -> str:
    if w is None:
        return '<td class="e"></td>'
    cpm = float(w["cpm"])
    step = min(int((cpm - lo) / (hi - lo) * HEAT_STEPS), HEAT_STEPS - 1) if math.isfinite(cpm) and hi > lo else 0
    classes = [f"h{step}"] + (["x"] if _truthy(w["excluded"]) else []) + (["o"] if _truthy(w["outlier"]) else [])
    role, lot = str(w["role"]), w["lot"]
    if not _missing(lot):
        mark = f'<b class="{lot_class(str(lot))}">{"V" if role == "vehicle" else "●"}</b>'
        what = f"{lot} {fmt(w['conc'])} mg/mL, E:T {fmt(w['et_ratio'])}" + (" (vehicle)" if role == "vehicle" else "")
    elif role == "sample":
        mark, what = "<b>U</b>", f"untreated, E:T {fmt(w['et_ratio'])}"
    else:
        mark, what = f"<b>{ROLE_MARK.get(role, '?')}</b>", role or "no role in the layout"
    reason = w["exclusion_reason"]
    note = f"; {reason}" if isinstance(reason, str) and reason else ""
    note += "; Dixon Q outlier" if "o" in classes else ""
    title = esc(f"{well}: {what}{note}")
    return f'<td class="{" ".join(classes)}" title="{title}">{mark}{fmt(cpm)}</td>'


def _verdict(ok: bool | None, bad: str = "flag") -> str:
    if ok is None:
        return "<td></td>"
    return '<td class="ok">ok</td>' if ok else f'<td class="bad">{bad}</td>'


def qc_table(qc: Mapping[str, Any], max_cv: float, limits: QC) -> str:
    """QC values of one plate against their limits."""
    spont, veh = float(qc["spontaneous_pct_of_max"]), float(qc["vehicle_suppression_pct"])

    def row(label: str, value: object, col: str, limit: str = "", ok: bool | None = None, bad: str = "flag") -> str:
        return f"<tr><th>{label}</th>{td(value, col)}<td>{limit}</td>{_verdict(ok, bad)}</tr>"

    rows = [
        row("Spontaneous release, % of maximum", spont, "spontaneous_pct_of_max",
            f"≤ {fmt(limits.max_spontaneous_pct_of_max)}", spont <= limits.max_spontaneous_pct_of_max, "FAIL"),
        row("Spontaneous release, mean CPM", qc["spontaneous_cpm"], "spontaneous_cpm"),
        row("Maximum release, mean CPM", qc["maximum_cpm"], "maximum_cpm"),
        *(row(f"{role.capitalize()} release replicate CV, %", qc.get(f"{role}_cv_pct"), f"{role}_cv_pct",
              f"≤ {fmt(limits.max_control_cv_pct)}", _within(qc.get(f"{role}_cv_pct"), limits.max_control_cv_pct), "FAIL")
          for role in ("spontaneous", "maximum")),
        row("Maximum / spontaneous release", qc.get("max_over_spontaneous"), "max_over_spontaneous",
            f"≥ {fmt(limits.min_max_over_spontaneous)}",
            None if _missing(qc.get("max_over_spontaneous"))
            else float(qc["max_over_spontaneous"]) >= limits.min_max_over_spontaneous, "FAIL"),
        row("Largest replicate CV, %", max_cv, "cv_pct", f"≤ {fmt(limits.max_cv_pct)}",
            None if math.isnan(max_cv) else max_cv <= limits.max_cv_pct),
        row("Untreated lysis at top E:T, %", qc["untreated_lysis_pct"], "untreated_lysis_pct"),
        row("LU20 per 10<sup>7</sup> effectors", qc["lu20_per_1e7"], "lu20_per_1e7"),
        row("Vehicle suppression, largest %", veh, "vehicle_suppression_pct",
            f"≤ {fmt(limits.max_vehicle_suppression_pct)}",
            None if math.isnan(veh) else veh <= limits.max_vehicle_suppression_pct),
    ]  # fmt: skip
    reason = qc.get("reason")
    why = f'<p class="reason bad">QC fail: {esc(reason)}</p>' if isinstance(reason, str) and reason else ""
    return f'<table class="qc"><thead><tr><th></th><th>value</th><th>limit</th><th></th></tr></thead><tbody>{"".join(rows)}</tbody></table>{why}'


def _within(value: object, limit: float) -> bool | None:
    """value <= limit, or None when there is no value."""
    return None if _missing(value) or math.isnan(float(value)) else float(value) <= limit  # type: ignore[arg-type]


def flag_list(flags: Sequence[str]) -> str:
    """The plate's QC flags in words."""
    if not flags:
        return '<p class="muted">No QC flags.</p>'
    items = "".join(f"<li><code>{esc(f)}</code> {esc(FLAGS.get(f, ''))}</li>" for f in flags)
    return f'<ul class="flaglist">{items}</ul>'


def plate_potency_table(potency: Sequence[Mapping[str, Any]], limits: Limits) -> str:
    """The plate's potency.csv rows: RP with CI, parallelism and equivalence verdicts, vehicle effect."""
    if not potency:
        return '<p class="muted">No lot other than the reference on this plate.</p>'
    rows = []
    for r in potency:
        parallel = r["parallel_f_p"] >= limits.alpha if not pd.isna(r["parallel_f_p"]) else None
        eq = None if pd.isna(r["equivalent"]) else _truthy(r["equivalent"])
        veh_flag = isinstance(r["vehicle_flag"], str) and r["vehicle_flag"] != ""
        unbounded = r.get("ci") == "unbounded"
        status = (
            esc(r["status"])
            + ('<div class="reason">relative-potency interval unbounded: no limits</div>' if unbounded else "")
            + (f'<div class="reason">{esc(r["reason"])}</div>' if isinstance(r["reason"], str) and r["reason"] else "")
        )
        usp = (
            '<td class="muted">slope-ratio CI unbounded: no verdict</td>'
            if r.get("slope_ratio_ci") == "unbounded"
            else _verdict(eq, "not equivalent")
        )
        rows.append(
            f'<tr data-lot="{esc(r["lot"])}"><td><b class="sw {lot_class(str(r["lot"]))}"></b>{esc(r["lot"])}</td>'
            f"{td(r['rp'], 'rp')}{td(r['rp_lo'], 'rp_lo')}{td(r['rp_hi'], 'rp_hi')}"
            f"{td(r['parallel_f_p'], 'parallel_f_p')}{_verdict(parallel, 'not parallel')}"
            f"{td(r['slope_ratio'], 'slope_ratio')}{td(r['slope_ratio_lo'], 'slope_ratio_lo')}{td(r['slope_ratio_hi'], 'slope_ratio_hi')}"
            f"{usp}{td(r['p_holm'], 'p_holm')}"
            f"{td(r['vehicle_suppression_pct'], 'vehicle_suppression_pct', 'bad' if veh_flag else '')}"
            f"<td>{status}</td></tr>"
        )
    level = f"{limits.ci_level:.0%}"
    headers = ["lot", "RP", f"{level} CI low", f"{level} CI high", "parallel F p", "F test", "slope ratio",
               "90 % CI low", "90 % CI high", "USP &lt;1032&gt;", "p vs ref (Holm)", "vehicle supp. %", "status"]  # fmt: skip
    return table(headers, rows, ' data-table="potency"')


def differ_text(differ: Mapping[str, Any] | None, limits: Limits) -> str:
    """One line: do the lots' IC50s differ on this plate (lots_differ.csv)?"""
    if differ is None or pd.isna(differ["p"]):
        return '<p class="muted">Lots differ: F test not available.</p>'
    verdict = "the lots' IC50s differ" if differ["p"] < limits.alpha else "no evidence that the lots' IC50s differ"
    return (
        f'<p>Lots differ within this plate (one common IC50 vs one per lot; a within-plate test): F = <span data-c="f">{fmt(differ["f"])}</span> '
        f'on <span data-c="df1">{fmt(differ["df1"])}</span> and <span data-c="df2">{fmt(differ["df2"])}</span> df, '
        f'p = <span data-c="p">{fmt(differ["p"])}</span>: {verdict}.</p>'
    )
