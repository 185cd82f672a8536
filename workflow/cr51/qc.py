"""Plate quality control: control release, replicate CV, outliers, lytic units, vehicle effect.

Defaults and their sources (all configurable under ``qc:`` in ``config/config.yaml``):

* spontaneous release ≤ 20 % of maximum (bio-protocol 385420; common 51Cr acceptance criterion);
  above it the plate fails.
* replicate CV ≤ 20 % (a condition above it is flagged, the plate does not fail).
* the controls decide whether a plate can be read at all, because every % lysis is computed from
  their two means: the plate fails when the spontaneous or maximum replicates have a CV above
  ``qc.max_control_cv_pct`` (20 %: the precision limit of ligand-binding assays, FDA Bioanalytical
  Method Validation guidance 2018, ICH M10 2022; ``CONTROL_CV_HIGH``), when the mean maximum is less
  than ``qc.min_max_over_spontaneous`` times the mean spontaneous release (``RANGE_LOW``), or when a
  control well is an outlier that stays in its mean (``outliers.exclude`` false; ``CONTROL_OUTLIER``).
* lytic units LU20 per 10^7 effectors from the untreated E:T titration with
  y = A(1 − e^(−k·E:T)) (Bol et al. 1986; Bryant et al. 1992): the E:T giving 20 % lysis is
  −ln(1 − 20/A)/k, LU20 per 10^7 = 10^7 / (that E:T × targets per well).
* vehicle suppression ≤ 10 % (excipient-only suppression of untreated lysis, flagged above).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .schema import FAILING_FLAGS
from .settings import QC

LU_PCT = 20.0
CONTROLS = ("spontaneous", "maximum")


def is_untreated(wells: pd.DataFrame) -> np.ndarray:
    """Which wells are usable untreated sample wells (conc 0): not excluded, with a % lysis (one
    boolean per well, from the columns as arrays: no pandas mask per condition)."""
    role = wells["role"].to_numpy(dtype=object) == "sample"  # a missing role is no sample
    conc = wells["conc"].to_numpy(dtype=float, na_value=np.nan)
    return ~wells["excluded"].to_numpy(dtype=bool) & wells["lysis_pct"].notna().to_numpy() & role & (conc == 0)


def untreated(wells: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Usable untreated sample wells (:func:`is_untreated`), with only ``columns`` when given (a
    96-well frame's every column is not copied for the two or three that are read)."""
    rows = np.flatnonzero(is_untreated(wells))
    return (wells if columns is None else wells[list(columns)]).iloc[rows]


def counter_flagged(wells: pd.DataFrame) -> pd.Series:
    """Used wells (counted, not excluded, a role whose counts enter lysis: not ``background``) whose
    tube the counter flagged (a non-empty ``counter_info``, Wizard2 exports).

    Flagged (``COUNTER_INFO``), not failed: the counter's Info marks a count it doubts (``I`` on a
    near-empty tube, whose counting error is tens of %), and what such a count does to the plate is
    judged by the plate's own criteria (spontaneous % of maximum, replicate CV, outliers).
    """
    if "counter_info" not in wells:  # a wells table without the counter's columns
        return pd.Series(False, index=wells.index)
    info = wells["counter_info"]
    flagged = [  # the columns read once as Python values (a 96-well frame: no pandas mask per condition)
        not excluded and counted and role not in ("", "background") and not gap and str(text) != ""
        for excluded, counted, role, gap, text in zip(
            wells["excluded"].tolist(), wells["cpm"].notna().tolist(), wells["role"].tolist(),
            info.isna().tolist(), info.tolist(),
        )
    ]  # fmt: skip
    return pd.Series(flagged, index=wells.index, dtype=bool)


def fit_lytic_units(et: np.ndarray, lysis: np.ndarray) -> tuple[float, float] | None:
    """Fit y = A(1 − exp(−k·x)) to per-well lysis at E:T x; returns (A, k) or None.

    Needs at least three distinct E:T ratios.
    """
    from scipy.optimize import curve_fit

    et = np.asarray(et, float)
    lysis = np.asarray(lysis, float)
    if np.unique(et).size < 3:
        return None

    def model(x, a, k):
        return a * (1.0 - np.exp(-k * x))

    a0 = max(float(lysis.max()) * 1.2, 1.0)
    x_half = float(np.median(et))
    k0 = math.log(2) / x_half if x_half > 0 else 0.05
    try:
        (a, k), _ = curve_fit(model, et, lysis, p0=(a0, k0), bounds=([0.0, 1e-6], [200.0, 10.0]))
    except (RuntimeError, ValueError):
        return None
    if not (np.isfinite(a) and np.isfinite(k)):
        return None
    return float(a), float(k)


def lytic_units_per_1e7(a: float, k: float, targets_per_well: float, pct: float = LU_PCT) -> float:
    """LU_pct per 10^7 effectors; NaN when the plateau A does not exceed ``pct``."""
    if not a > pct:
        return math.nan
    et_x = -math.log(1.0 - pct / a) / k
    return 1e7 / (et_x * targets_per_well)


def vehicle_suppression(wells: pd.DataFrame) -> pd.DataFrame:
    """Per lot and conc: % suppression of untreated lysis by the lot's vehicle alone.

    suppression = 100 · (1 − mean vehicle lysis / mean untreated lysis at the same E:T).
    """
    cols = ["plate", "lot", "conc", "et_ratio", "vehicle_suppression_pct"]
    if "vehicle" not in set(wells["role"].tolist()):  # most layouts: no vehicle wells, nothing to filter
        return pd.DataFrame(columns=cols)
    ok = ~wells["excluded"] & wells["lysis_pct"].notna()
    veh = wells[ok & (wells["role"] == "vehicle")]
    if veh.empty:
        return pd.DataFrame(columns=cols)
    top = untreated(wells, ["et_ratio", "lysis_pct"]).groupby("et_ratio")["lysis_pct"].mean()
    g = veh.groupby(["plate", "lot", "conc", "et_ratio"], as_index=False)["lysis_pct"].mean()
    ref = g["et_ratio"].map(top)
    g["vehicle_suppression_pct"] = 100.0 * (1.0 - g["lysis_pct"] / ref)
    return g[cols]


def plate_qc(
    wells: pd.DataFrame,
    lysis: pd.DataFrame,
    expt: dict[str, object],
    s_mean: float,
    m_mean: float,
    cfg: QC,
    *,
    layout_warnings: Sequence[str] = (),
    design_problems: Mapping[str, str] | None = None,
) -> dict[str, object]:
    """One qc.csv row for a plate (``wells`` with per-well lysis, ``lysis`` its summary).

    ``layout_warnings`` are the layout's overlapping tables (:func:`cr51.layout.overlaps`: flag
    ``LAYOUT_OVERLAP``), ``design_problems`` each lot's design problem (:func:`cr51.points.design_problems`:
    flag ``DESIGN_MISMATCH``). ``status`` is ``fail`` when a flag of :data:`cr51.schema.FAILING_FLAGS`
    is set, and ``reason`` says why in words.
    """
    flags: list[str] = []
    why: list[str] = []
    plate = str(wells["plate"].iloc[0])
    spont_pct = 100.0 * s_mean / m_mean
    if spont_pct > cfg.max_spontaneous_pct_of_max:
        flags.append("SPONTANEOUS_HIGH")
        why.append(f"spontaneous release is {spont_pct:.1f} % of maximum (limit {cfg.max_spontaneous_pct_of_max:g} %)")
    control_cv = {role: _control_cv(lysis, role) for role in CONTROLS}
    high = [
        f"{role} release replicates have CV {cv:.1f} %"
        for role, cv in control_cv.items()
        if cv > cfg.max_control_cv_pct
    ]
    if high:
        flags.append("CONTROL_CV_HIGH")
        why.append(" and ".join(high) + f" (limit {cfg.max_control_cv_pct:g} %)")
    ratio = m_mean / s_mean if s_mean > 0 else math.inf
    if ratio < cfg.min_max_over_spontaneous:
        flags.append("RANGE_LOW")
        why.append(
            f"maximum release is only {ratio:.2f} × spontaneous (at least {cfg.min_max_over_spontaneous:g} × needed "
            "for a usable lysis range)"
        )
    # the flags below read a few columns once, as Python values (a 96-well frame: no pandas filtering)
    roles, outlier, excluded = wells["role"].tolist(), wells["outlier"].tolist(), wells["excluded"].tolist()
    bad = [i for i, (r, o, x) in enumerate(zip(roles, outlier, excluded)) if o and not x and r in CONTROLS]
    if bad:
        flags.append("CONTROL_OUTLIER")
        well, cpm = wells["well"].tolist(), wells["cpm"].tolist()
        wells_text = ", ".join(f"{roles[i]} well {well[i]} ({cpm[i]:.0f} CPM)" for i in bad)
        why.append(f"{wells_text} is an outlier and stays in the control mean (outliers.exclude is false)")
    if (lysis["cv_pct"].to_numpy(dtype=float) > cfg.max_cv_pct).any():
        flags.append("CV_HIGH")
    if any(outlier):
        flags.append("OUTLIER")
    reasons = [r for r, x in zip(wells["exclusion_reason"].tolist(), excluded) if x and isinstance(r, str)]
    if any(r.startswith(("excluded in the layout", "Dixon")) for r in reasons):
        flags.append("EXCLUDED_WELLS")
    if "no count in the export" in reasons:
        flags.append("MISSING_WELLS")
    if "" in roles:
        flags.append("EXTRA_WELLS")
    if counter_flagged(wells).any():
        flags.append("COUNTER_INFO")

    unt = untreated(wells, ["et_ratio", "lysis_pct"])
    untreated_pct = math.nan
    lu = math.nan
    a = k = math.nan
    if unt.empty:
        flags.append("NO_UNTREATED")
    else:
        top_et = unt["et_ratio"].max()
        untreated_pct = float(unt.loc[unt["et_ratio"] == top_et, "lysis_pct"].mean())
        tpw = expt.get("targets_per_well")
        fit = fit_lytic_units(unt["et_ratio"].to_numpy(), unt["lysis_pct"].to_numpy())
        if fit is not None:
            a, k = fit
        if tpw is None:
            flags.append("NO_TARGETS_PER_WELL")
        elif fit is None or not a > LU_PCT:
            flags.append("LU_NOT_ESTIMABLE")
        else:
            lu = lytic_units_per_1e7(a, k, float(tpw))  # type: ignore[arg-type]

    veh = vehicle_suppression(wells)
    veh_max = float(veh["vehicle_suppression_pct"].max()) if not veh.empty else math.nan
    if veh_max > cfg.max_vehicle_suppression_pct:
        flags.append("VEHICLE_SUPPRESSION")
    if layout_warnings:
        flags.append("LAYOUT_OVERLAP")
    if design_problems:
        flags.append("DESIGN_MISMATCH")

    return {
        "plate": plate,
        "spontaneous_cpm": s_mean,
        "maximum_cpm": m_mean,
        "spontaneous_pct_of_max": spont_pct,
        "untreated_lysis_pct": untreated_pct,
        "lu20_per_1e7": lu,
        "vehicle_suppression_pct": veh_max,
        "status": "fail" if any(f in FAILING_FLAGS for f in flags) else "pass",
        "flags": ";".join(flags),
        "donor": expt.get("donor"),
        "date": expt.get("date"),
        "reference_lot": expt.get("reference_lot"),
        "targets_per_well": expt.get("targets_per_well"),
        "lu_a": a,
        "lu_k": k,
        "study": expt.get("study"),
        "spontaneous_cv_pct": control_cv["spontaneous"],
        "maximum_cv_pct": control_cv["maximum"],
        "max_over_spontaneous": ratio,
        "reason": "; ".join(why),
    }


def _control_cv(lysis: pd.DataFrame, role: str) -> float:
    """The largest replicate CV (%) of a control's conditions (NaN with fewer than two wells): the
    role's CVs reduced as pandas' ``Series.max`` reduces them (NaN as -inf, numpy's ``max``), without
    filtering the frame."""
    if "role" not in lysis:
        return math.nan
    cvs = [cv for r, cv in zip(lysis["role"].tolist(), lysis["cv_pct"].tolist()) if r == role]
    values = np.array([math.nan if cv is None or cv is pd.NA else cv for cv in cvs], dtype=float)
    gaps = np.isnan(values)
    return math.nan if gaps.all() else float(np.where(gaps, -np.inf, values).max())
