"""Which plates enter each lot's combined potency, and the combination itself (Ph. Eur. 5.3).

A plate's relative potency for a lot enters the combination only when the plate passed QC, the
potency estimate succeeded, and the lot passed the configured parallelism gate on that plate.
Every plate left out is listed with its reason in ``potency_combined_inputs.csv``.

The rule for a lot whose parallelism test cannot be computed (the pair's parallel or free fit did not
converge) is the same for every lot, weak or potent: under the ``f_test`` and ``both`` gates its plate
leaves that lot's combination, with the reason "parallelism F test not available" and the fit's
message. The free model shares the top (:data:`cr51.potency.SHARED_TOP`), so this no longer depends on
the lot's potency (docs/campaign.md has the simulation).

Edition followed: the Ph. Eur. 5.3 text of the 4th to 9th editions (chapter 5.3, 01/2008:50300,
section 6.2). Differences from that text: none in the formulas; the semi-weighted interval's "t
approximately 2" is taken as t = 2 exactly at ``ci_level`` 0.95 and as the normal quantile at any other
level, and a negative between-assay variance is set to 0. The 10th edition revised the heterogeneous
(semi-weighted) case; this module does not follow that revision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import special

from .schema import POTENCY_COMBINED, POTENCY_COMBINED_INPUTS
from .settings import Analysis

#: The potency.csv columns :func:`exclusion_reason` reads (and the plate).
EXCLUSION_USES = ("plate", "status", "reason", "rp_lo", "rp_hi", "parallel_f_p", "equivalent", "slope_ratio_ci")


def exclusion_reason(row: Mapping[str, Any], qc_status: str | None, gate: str, alpha: float) -> str:
    """Why a plate's potency row stays out of the combination ('' when it enters)."""
    if qc_status != "pass":
        return "plate failed QC" if qc_status == "fail" else "plate has no QC result"
    if row["status"] != "ok":
        return f"no relative potency: {row['reason']}"
    lo, hi = (float(row[k]) if pd.notna(row[k]) else np.nan for k in ("rp_lo", "rp_hi"))
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):  # math: np.isfinite is slow on a float
        # Ph. Eur. 5.3 combines log potencies: an interval reaching 0 has no log-scale width
        return "relative-potency interval not bounded above zero: too imprecise to combine"
    p = float(row["parallel_f_p"]) if pd.notna(row["parallel_f_p"]) else np.nan
    f_ok = bool(p >= alpha)
    eq_ok = bool(row["equivalent"] is True or str(row["equivalent"]).lower() == "true")
    if gate in ("f_test", "both") and not f_ok:
        if np.isfinite(p):
            return f"not parallel to the reference (F test p = {p:.3g} < {alpha:g})"
        why = str(row.get("reason") or "")
        return "parallelism F test not available" + (f" ({why})" if why else "")
    if gate in ("equivalence", "both") and not eq_ok:
        if row.get("slope_ratio_ci") == "unbounded":
            return "slope-ratio interval unbounded (denominator not significantly different from 0): no equivalence verdict"
        return "not equivalent to the reference within the margins (USP <1032>)"
    return ""


def select(potency: pd.DataFrame, qc: pd.DataFrame, gate: str, alpha: float) -> pd.DataFrame:
    """potency_combined_inputs.csv: every plate × lot with ``included`` and the reason."""
    status = dict(zip(qc["plate"], qc["status"]))
    out = potency.copy()
    used = [c for c in EXCLUSION_USES if c in potency.columns]  # potency.csv has ~30 columns
    rows = (dict(zip(used, values)) for values in zip(*(potency[c].tolist() for c in used)))  # one list a column
    out["reason"] = [exclusion_reason(r, status.get(r["plate"]), gate, alpha) for r in rows]
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


# --------------------------------------------------------------------------
# Combination of plates: Ph. Eur. 5.3, section 6
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Combined:
    """Combined relative potency of several independent assays."""

    n: int
    rp: float
    lo: float
    hi: float
    chi2: float
    p: float
    method: str


def combine_lot(
    log_rp: npt.ArrayLike,
    rp_lo: npt.ArrayLike,
    rp_hi: npt.ArrayLike,
    df: npt.ArrayLike,
    level: float = 0.95,
    homogeneity_alpha: float = 0.05,
) -> Combined:
    """Combine independent log potencies as in Ph. Eur. 5.3, section 6.2 (4th-9th editions' text).

    For assay i with log potency ``M_i = ln RP_i``, CI ``[rp_lo_i, rp_hi_i]``
    computed with ``t_i = t((1 + level)/2, df_i)``:

    - 6.2.1 weight ``w_i = 4 t_i^2 / L_i^2`` with ``L_i = ln rp_hi_i - ln rp_lo_i``;
    - 6.2.2 homogeneity ``chi2 = sum w_i (M_i - Mbar)^2`` on ``n - 1`` df,
      ``Mbar = sum w_i M_i / sum w_i``;
    - 6.2.3 if ``p >= homogeneity_alpha``: weighted mean ``Mbar`` with CI
      ``Mbar +/- t sqrt(1 / sum w_i)``, t on ``sum df_i``;
    - 6.2.4 otherwise semi-weighted: between-assay variance
      ``s*2 = sum (M_i - Mtilde)^2 / (n - 1) - sum(1/w_i) / n`` with ``Mtilde`` the **unweighted**
      mean of the ``M_i`` (truncated at 0), ``w'_i = 1 / (1/w_i + s*2)``, semi-weighted mean
      ``sum w'_i M_i / sum w'_i`` with CI ``+/- t sqrt(1 / sum w'_i)``, t "approximately 2" as the
      text says: 2 at ``level`` 0.95, the normal quantile ``z((1 + level)/2)`` at another level.

    Limits are back-transformed with ``exp``. One assay is returned unchanged
    (method ``"single plate"``).
    """
    m = np.asarray(log_rp, dtype=float)
    lo, hi, dfs = (np.asarray(a, dtype=float) for a in (rp_lo, rp_hi, df))
    if m.size == 1:
        return Combined(1, float(np.exp(m[0])), float(lo[0]), float(hi[0]), np.nan, np.nan, "single plate")
    t_i = special.stdtrit(dfs, 0.5 + level / 2.0)
    w = 4.0 * t_i**2 / (np.log(hi) - np.log(lo)) ** 2
    mbar = float(np.sum(w * m) / np.sum(w))
    chi2 = float(np.sum(w * (m - mbar) ** 2))
    p = float(special.chdtrc(m.size - 1, chi2))
    if p >= homogeneity_alpha:
        centre, weights, df_t, method = mbar, w, float(np.sum(dfs)), "weighted"
    else:
        s2 = max(float(np.sum((m - m.mean()) ** 2) / (m.size - 1) - np.mean(1.0 / w)), 0.0)
        weights = 1.0 / (1.0 / w + s2)
        centre, df_t, method = float(np.sum(weights * m) / np.sum(weights)), np.inf, "semi-weighted"
    if np.isinf(df_t):  # 6.2.4: t approximately 2
        t = 2.0 if abs(level - 0.95) < 1e-12 else float(special.ndtri(0.5 + level / 2.0))
    else:
        t = float(special.stdtrit(df_t, 0.5 + level / 2.0))
    half = t * np.sqrt(1.0 / np.sum(weights))
    return Combined(
        m.size, float(np.exp(centre)), float(np.exp(centre - half)), float(np.exp(centre + half)), chi2, p, method
    )


def combine(potency_rows: pd.DataFrame, level: float = 0.95, homogeneity_alpha: float = 0.05) -> pd.DataFrame:
    """Combine the ``status == "ok"`` potency rows of each (lot, reference_lot).

    Parameters
    ----------
    potency_rows : pandas.DataFrame
        Concatenated ``potency`` tables (needs ``lot, reference_lot, rp,
        rp_lo, rp_hi, df, status``); ``level`` must be the ``ci_level`` the
        plate intervals were computed with.
    level, homogeneity_alpha : float
        Combined CI level and the homogeneity test level.

    Returns
    -------
    pandas.DataFrame
        :data:`cr51.schema.POTENCY_COMBINED`; lots without a usable plate get
        ``n_plates = 0`` and method ``"no valid plates"``.
    """
    rows = []
    for (lot, ref), grp in potency_rows.groupby(["lot", "reference_lot"], sort=True):
        ok = grp[(grp["status"] == "ok") & np.isfinite(grp[["rp", "rp_lo", "rp_hi", "df"]].astype(float)).all(axis=1)]
        if ok.empty:
            res = Combined(0, np.nan, np.nan, np.nan, np.nan, np.nan, "no valid plates")
        else:
            res = combine_lot(
                np.log(ok["rp"].astype(float)), ok["rp_lo"], ok["rp_hi"], ok["df"], level, homogeneity_alpha
            )
        rows.append([lot, ref, res.n, res.rp, res.lo, res.hi, res.chi2, res.p, res.method])
    return pd.DataFrame(rows, columns=list(POTENCY_COMBINED.names))
