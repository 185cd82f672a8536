"""Per-plate dose-response analysis of a batch: wells.csv + qc.csv → fits, potency, lots_differ.

For each accepted plate the sample wells (not excluded) at one E:T ratio are fitted: the lots'
wells against IVIG concentration and the untreated wells (conc 0) at that E:T as dose 0.
The E:T is ``fit.et_ratio`` or, when null, the highest E:T among the plate's lot wells.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from .potency import PotencyConfig, analyse_plate
from .qc import vehicle_suppression
from .schema import FITS, LOTS_DIFFER, POTENCY
from .settings import Analysis
from .tables import concat_frames

log = logging.getLogger(__name__)


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


def analyse_batch(wells: pd.DataFrame, qc: pd.DataFrame, settings: Analysis) -> dict[str, pd.DataFrame]:
    """fits, potency and lots_differ tables for every plate of a batch."""
    cfg = PotencyConfig.from_settings(settings)
    et_cfg = settings.fit.et_ratio
    veh_limit = settings.qc.max_vehicle_suppression_pct
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
