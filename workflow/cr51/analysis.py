"""Per-plate dose-response analysis of a batch: wells.csv + qc.csv → fits, potency, lots_differ.

For each accepted plate the sample wells (not excluded) at one E:T ratio are fitted: the lots'
wells against IVIG concentration and the untreated wells (conc 0) at that E:T as dose 0.
The E:T is ``fit.et_ratio`` or, when null, the highest E:T among the plate's lot wells.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from .potency import analyse_plate
from .qc import vehicle_suppression
from .schema import FITS, LOTS_DIFFER, POTENCY
from .tables import concat_frames

log = logging.getLogger(__name__)


def potency_config(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Map the pipeline's ``fit``/``potency`` config keys to :func:`cr51.potency.analyse_plate`'s."""
    fit, pot = settings.get("fit", {}), settings.get("potency", {})
    eq = pot.get("equivalence", {})
    models = tuple(fit.get("models", ["LL.4"]))
    return {
        "model": models[0],
        "models": models,
        "alpha": pot.get("alpha", 0.05),
        "ci_level": pot.get("ci_level", 0.95),
        "slope_ratio_margins": (eq.get("slope_ratio_lo", 0.8), eq.get("slope_ratio_hi", 1.25)),
        "upper_diff_margin": eq.get("upper_diff_margin", 10.0),
        "lower_diff_margin": eq.get("lower_diff_margin", 10.0),
    }


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


def with_vehicle(potency: pd.DataFrame, wells: pd.DataFrame, limit_pct: float) -> pd.DataFrame:
    """Add each lot's largest vehicle-only suppression (%, over its concentrations) and a flag.

    ``vehicle_flag`` is ``VEHICLE_SUPPRESSION`` when that suppression exceeds ``limit_pct``
    (config ``qc.max_vehicle_suppression_pct``), else empty. Lots without vehicle wells get NaN.
    """
    veh = vehicle_suppression(wells)
    out = potency.copy()
    if veh.empty:  # no vehicle wells (most layouts)
        out["vehicle_suppression_pct"] = np.nan
    else:
        per_lot = veh.groupby("lot")["vehicle_suppression_pct"].max()
        out["vehicle_suppression_pct"] = out["lot"].map(per_lot).astype(float)
    out["vehicle_flag"] = (out["vehicle_suppression_pct"] > limit_pct).map({True: "VEHICLE_SUPPRESSION", False: ""})
    return out


def analyse_batch(wells: pd.DataFrame, qc: pd.DataFrame, settings: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """fits, potency and lots_differ tables for every plate of a batch."""
    cfg = potency_config(settings)
    et_cfg = settings.get("fit", {}).get("et_ratio")
    veh_limit = float(settings.get("qc", {}).get("max_vehicle_suppression_pct", 10.0))
    refs = dict(zip(qc["plate"], qc["reference_lot"]))
    fits, potency, differ = [], [], []
    for plate, grp in wells.groupby("plate", sort=True):
        points, _ = fit_points(grp, et_cfg)
        ref = refs.get(plate)
        if points["lot"].notna().sum() == 0:
            continue  # a plate without lot wells (e.g. an E:T titration only) has no curves
        tables = analyse_plate(points, str(plate), "" if pd.isna(ref) else str(ref), cfg)
        fits.append(tables.fits)
        potency.append(with_vehicle(tables.potency, grp, veh_limit).merge(tables.joint, on="lot", how="left"))
        differ.append(tables.lots_differ)

    return {
        "fits": concat_frames(fits, FITS.names),
        "potency": concat_frames(potency, POTENCY.names),
        "lots_differ": concat_frames(differ, LOTS_DIFFER.names),
    }
