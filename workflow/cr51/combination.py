"""Which plates enter each lot's combined potency, and the combination itself (Ph. Eur. 5.3).

A plate's relative potency for a lot enters the combination only when the plate passed QC, the
potency estimate succeeded, and the lot passed the configured parallelism gate on that plate.
Every plate left out is listed with its reason in ``potency_combined_inputs.csv``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from .potency import combine
from .schema import POTENCY_COMBINED_INPUTS
from .settings import Analysis


def exclusion_reason(row: Mapping[str, Any], qc_status: str | None, gate: str, alpha: float) -> str:
    """Why a plate's potency row stays out of the combination ('' when it enters)."""
    if qc_status != "pass":
        return "plate failed QC" if qc_status == "fail" else "plate has no QC result"
    if row["status"] != "ok":
        return f"no relative potency: {row['reason']}"
    lo, hi = (float(row[k]) if pd.notna(row[k]) else np.nan for k in ("rp_lo", "rp_hi"))
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo < hi):
        # Ph. Eur. 5.3 combines log potencies: an interval reaching 0 has no log-scale width
        return "relative-potency interval not bounded above zero: too imprecise to combine"
    p = float(row["parallel_f_p"]) if pd.notna(row["parallel_f_p"]) else np.nan
    f_ok = bool(p >= alpha)
    eq_ok = bool(row["equivalent"] is True or str(row["equivalent"]).lower() == "true")
    if gate in ("f_test", "both") and not f_ok:
        return (
            f"not parallel to the reference (F test p = {p:.3g} < {alpha:g})"
            if np.isfinite(p)
            else "parallelism F test not available"
        )
    if gate in ("equivalence", "both") and not eq_ok:
        return "not equivalent to the reference within the margins (USP <1032>)"
    return ""


def select(potency: pd.DataFrame, qc: pd.DataFrame, gate: str, alpha: float) -> pd.DataFrame:
    """potency_combined_inputs.csv: every plate × lot with ``included`` and the reason."""
    status = dict(zip(qc["plate"], qc["status"]))
    out = potency.copy()
    out["reason"] = [exclusion_reason(r, status.get(r["plate"]), gate, alpha) for r in potency.to_dict("records")]
    out["included"] = out["reason"] == ""
    return out.reindex(columns=[*POTENCY_COMBINED_INPUTS.names, "df"])


def combine_plates(
    potency: pd.DataFrame, qc: pd.DataFrame, settings: Analysis | Mapping[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(potency_combined, potency_combined_inputs) for the whole run."""
    pot = Analysis.of(settings).potency
    inputs = select(potency, qc, pot.parallelism_gate, pot.alpha)
    rows = inputs.assign(status=np.where(inputs["included"], "ok", "excluded"))
    combined = combine(rows, level=pot.ci_level)
    return combined, inputs.drop(columns=["df"])
