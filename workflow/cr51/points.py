"""Which wells enter a plate's dose-response fits.

For each accepted plate the sample wells (not excluded, with a lysis value) at one E:T ratio are
fitted: the lots' wells against IVIG concentration and the untreated wells (conc 0) at that E:T
as dose 0. The E:T is ``fit.et_ratio`` or, when null, the highest E:T among the plate's lot wells.
The fits (:mod:`cr51.potency`) and the report's curves (:mod:`cr51.report`) use the same points.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def plates_fit_points(wells: pd.DataFrame, et_ratio: float | None) -> tuple[pd.DataFrame, dict[str, float]]:
    """The points of every plate in ``wells`` that enter the fits (with ``plate``), and each plate's E:T.

    Plain arrays rather than pandas selections: this runs for every plate in the batch jobs.
    """
    codes, plates = pd.factorize(wells["plate"])
    et = wells["et_ratio"].to_numpy(float)
    lysis = wells["lysis_pct"].to_numpy(float)
    use = (wells["role"] == "sample").to_numpy(bool) & ~wells["excluded"].to_numpy(bool) & ~np.isnan(lysis)
    if et_ratio is None:
        top = np.full(len(plates), -np.inf)
        lot_wells = use & wells["lot"].notna().to_numpy(bool)
        np.maximum.at(top, codes[lot_wells], et[lot_wells])
        top[np.isneginf(top)] = math.nan
    else:
        top = np.full(len(plates), float(et_ratio))
    ets = {str(p): float(t) for p, t in zip(plates, top)}
    keep = np.flatnonzero(use & (et == top[codes]))
    pts = wells.iloc[keep][["plate", "lot", "conc", "lysis_pct"]].rename(columns={"lysis_pct": "lysis"})
    return pts, ets


def fit_points(wells: pd.DataFrame, et_ratio: float | None) -> tuple[pd.DataFrame, float]:
    """The points of one plate that enter the fits, and the E:T they are at."""
    pts, ets = plates_fit_points(wells, et_ratio)
    return pts[["lot", "conc", "lysis"]], next(iter(ets.values()), math.nan)


def _fmt_concs(concs: list[float]) -> str:
    return ", ".join(f"{c:g}" for c in concs) or "none"


def design_problems(points: pd.DataFrame, reference_lot: str | None, min_concentrations: int) -> dict[str, str]:
    """Each lot whose design cannot give a fair comparison with the reference, and why.

    ``points`` are a plate's fit points (:func:`fit_points`: ``lot``, ``conc``, ``lysis``). A lot is
    listed when it has fewer than ``min_concentrations`` distinct positive concentrations with a lysis
    value (``potency.min_concentrations``), or when its concentrations are not the reference's (the
    relative potency then compares curves measured over different ranges: typically a layout typo).
    """
    lots = points["lot"].to_numpy(object)
    conc = points["conc"].to_numpy(float)
    ok = pd.notna(lots) & np.isfinite(conc) & (conc > 0) & np.isfinite(points["lysis"].to_numpy(float))
    by_lot: dict[str, list[float]] = {}
    for lot, c in zip(lots[ok], conc[ok]):
        by_lot.setdefault(str(lot), []).append(round(float(c), 9))
    sets = {lot: sorted(set(cs)) for lot, cs in sorted(by_lot.items())}
    ref = sets.get(str(reference_lot)) if reference_lot is not None else None
    out = {}
    for lot, cs in sets.items():
        if len(cs) < min_concentrations:
            out[lot] = f"design mismatch: {len(cs)} distinct concentrations, fewer than {min_concentrations}"
        elif ref is not None and lot != reference_lot and cs != ref:
            out[lot] = (
                f"design mismatch: concentrations {_fmt_concs(cs)} mg/mL differ from the reference's "
                f"({_fmt_concs(ref)} mg/mL)"
            )
    return out
