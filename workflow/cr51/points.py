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
