"""Per-plate potency tables and the Ph. Eur. 5.3 combination across plates.

:func:`analyse_plate` turns the per-well % specific lysis of one plate (one
E:T ratio) into three tables:

``fits``
    one row per lot and model: a separate curve per lot (untreated wells as dose 0).
``potency``
    one row per non-reference lot: relative potency RP = IC50(ref)/IC50(lot)
    from the joint parallel model with Fieller's CI, parallelism (F test and
    USP <1032> equivalence), and the Holm-adjusted comparison with the reference.
``lots_differ``
    one row: F test of a common IC50 against lot-specific IC50s.

The plates of each lot are combined in :mod:`cr51.combination` (Ph. Eur. 5.3, section 6).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import special

from cr51 import fit as fitting

from .points import design_problems
from .schema import FITS, LOTS_DIFFER, POTENCY_CI, POTENCY_JOINT, POTENCY_OWN
from .settings import Analysis

#: Column names of the tables this module builds (derived from the schema, which owns them).
FITS_COLUMNS = FITS.names
POTENCY_COLUMNS = tuple(c.name for c in POTENCY_OWN + POTENCY_CI)
LOTS_DIFFER_COLUMNS = LOTS_DIFFER.names
#: Per lot, the joint parallel fit's curve (shared slope/bottom/top/f, the lot's and the reference's e),
#: so that the report can draw the parallel curves; added to potency.csv after its other columns.
JOINT_COLUMNS = tuple(c.name for c in POTENCY_JOINT)


@dataclass(frozen=True)
class PotencyConfig:
    """What :func:`analyse_plate` reads, taken from the settings (:meth:`from_settings`; the
    defaults are the schema's, ``workflow/schemas/config.schema.yaml``).

    Attributes
    ----------
    model : str
        Model of the joint (parallel, free, common-e) fits: the first of ``fit.models``.
    models : tuple of str
        Models fitted per lot for ``fits.csv`` (``fit.models``).
    alpha : float
        F-test level and equivalence test size; the equivalence CIs are ``1 - 2 alpha`` (90 %)
        (``potency.alpha``).
    slope_ratio_margins : tuple of float
        Equivalence margins for b_lot / b_ref (``potency.equivalence.slope_ratio_lo``/``_hi``).
    upper_diff_margin : float
        Margin (percentage points of lysis) for top_lot - top_ref (``potency.equivalence``).
    lower_diff_margin : float
        Margin for bottom_lot - bottom_ref (``potency.equivalence``).
    ci_level : float
        Level of the IC50 and RP intervals (``potency.ci_level``).
    min_concentrations : int
        A lot needs at least this many distinct positive concentrations with
        finite lysis to enter the joint fits (``potency.min_concentrations``).
    plausible_lysis : tuple of float
        A lot's fitted bottom and top must lie in this range of % lysis
        (``fit.plausible_lysis_min``/``_max``; see :func:`plausibility`).
    max_ic50_extrapolation : float
        A lot's IC50 may lie at most this factor outside its tested concentrations
        (``fit.max_ic50_extrapolation``).
    """

    model: str
    models: tuple[str, ...]
    alpha: float
    slope_ratio_margins: tuple[float, float]
    upper_diff_margin: float
    lower_diff_margin: float
    ci_level: float
    min_concentrations: int
    plausible_lysis: tuple[float, float]
    max_ic50_extrapolation: float

    @classmethod
    def from_settings(cls, settings: Analysis | Mapping[str, Any]) -> PotencyConfig:
        """From the settings (or a configuration mapping, validated and completed with the defaults)."""
        s = Analysis.of(settings)
        eq = s.potency.equivalence
        return cls(
            model=s.fit.models[0],
            models=s.fit.models,
            alpha=s.potency.alpha,
            slope_ratio_margins=(eq.slope_ratio_lo, eq.slope_ratio_hi),
            upper_diff_margin=eq.upper_diff_margin,
            lower_diff_margin=eq.lower_diff_margin,
            ci_level=s.potency.ci_level,
            min_concentrations=s.potency.min_concentrations,
            plausible_lysis=(s.fit.plausible_lysis_min, s.fit.plausible_lysis_max),
            max_ic50_extrapolation=s.fit.max_ic50_extrapolation,
        )


@dataclass(frozen=True)
class PlateTables:
    """The three per-plate tables (columns as in the module constants) and the joint fit's curves.

    ``joint`` has a ``lot`` column and :data:`JOINT_COLUMNS`, one row per non-reference lot in a
    converged joint parallel fit (empty otherwise).
    """

    fits: pd.DataFrame
    potency: pd.DataFrame
    lots_differ: pd.DataFrame
    joint: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(
            {"lot": pd.Series(dtype=object)} | {c: pd.Series(dtype=float) for c in JOINT_COLUMNS}
        )
    )  # typed even when empty: a plate without a joint fit concatenates like any other


@dataclass(frozen=True)
class _Points:
    """Cleaned plate data: arrays, the lot of each point and which points are untreated wells.

    Untreated wells are marked by ``untreated``, never by a lot name: a lot may be called anything,
    ``untreated`` included.
    """

    conc: npt.NDArray[np.float64]
    lysis: npt.NDArray[np.float64]
    lot: npt.NDArray[np.str_]  # "" for untreated wells (see ``untreated``)
    untreated: npt.NDArray[np.bool_]

    def select(
        self, lots: Sequence[str], untreated_as: str
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.str_]]:
        """Points of ``lots`` plus the untreated wells labelled ``untreated_as``."""
        keep = (np.isin(self.lot, list(lots)) & ~self.untreated) | self.untreated
        group = np.where(self.untreated[keep], untreated_as, self.lot[keep])
        return self.conc[keep], self.lysis[keep], group


def _clean(points: pd.DataFrame) -> _Points:
    """Drop wells with missing/non-finite conc or lysis; label untreated wells."""
    conc = pd.to_numeric(points["conc"], errors="coerce").to_numpy(dtype=float)
    lysis = pd.to_numeric(points["lysis"], errors="coerce").to_numpy(dtype=float)
    untreated = points["lot"].isna().to_numpy(bool)
    lot = np.array(["" if u else str(v) for u, v in zip(untreated, points["lot"])], dtype=object).astype(str)
    ok = np.isfinite(conc) & np.isfinite(lysis)
    return _Points(conc[ok], lysis[ok], lot[ok], untreated[ok])


# --------------------------------------------------------------------------
# fits.csv
# --------------------------------------------------------------------------


def plausibility(result: fitting.FitResult, ic50: float, conc_range: tuple[float, float], cfg: PotencyConfig) -> str:
    """Why a converged fit is implausible ('' when it is plausible).

    A fit can converge to a curve the data never showed: a lot whose lysis barely falls over the
    tested range gets a bottom of -95,439 % and an IC50 28 x its top dose. The curve is implausible when
    its bottom or top lies outside ``cfg.plausible_lysis`` (% specific lysis lies in 0-100 up to
    counting noise), when its IC50 lies more than ``cfg.max_ic50_extrapolation`` times below the lowest
    or above the highest positive concentration, or when its slope is at the fit's bound.
    """
    lo, hi = cfg.plausible_lysis
    why = []
    for name, param in (("bottom", "c"), ("top", "d")):
        i = result.index(param)
        if i is None:
            continue
        v = float(result.estimates[i])
        if not lo <= v <= hi:
            why.append(f"{name} {v:.4g} % lysis outside {lo:g} to {hi:g} %")
    c_lo, c_hi = conc_range
    k = cfg.max_ic50_extrapolation
    if np.isfinite(ic50) and c_hi > 0 and not (c_lo / k <= ic50 <= c_hi * k):
        where = f"{ic50 / c_hi:.3g} x the top dose" if ic50 > c_hi else f"1/{c_lo / ic50:.3g} of the lowest dose"
        why.append(f"IC50 {ic50:.4g} mg/mL is {where} (more than {k:g} x outside the tested range)")
    b = result.value("b")
    if np.isfinite(b) and abs(b) >= 0.99 * fitting.B_BOUND:
        why.append(f"slope {b:.4g} at its bound")
    return "; ".join(why)


def _fit_row(
    plate: str,
    lot: str,
    model: str,
    result: fitting.FitResult,
    cfg: PotencyConfig,
    conc_range: tuple[float, float],
) -> dict[str, Any]:
    level = cfg.ci_level
    ic50 = result.ed(50, level=level) if result.converged else fitting.Estimate(np.nan, np.nan, np.nan, np.nan)
    why = plausibility(result, ic50.estimate, conc_range, cfg) if result.converged else ""
    return {
        "plate": plate,
        "lot": lot,
        "model": model,
        "slope": result.value("b"),
        "bottom": result.value("c"),
        "top": result.value("d"),
        "ic50": ic50.estimate,
        "ic50_se": ic50.se,
        "ic50_lo": ic50.lo,
        "ic50_hi": ic50.hi,
        "rss": result.rss,
        "df": result.df,
        "aicc": result.aicc,
        "converged": result.converged,
        "message": result.message,
        "plausible": (why == "") if result.converged else None,
        "plausibility": why,
    }


def _fits_table(
    plate: str, data: _Points, lots: Sequence[str], cfg: PotencyConfig, memo: fitting.FitMemo
) -> pd.DataFrame:
    rows = []
    for lot in lots:
        x, y, _ = data.select([lot], lot)
        pos = x[x > 0]
        rng = (float(pos.min()), float(pos.max())) if pos.size else (np.nan, np.nan)
        rows.extend(_fit_row(plate, lot, m, fitting.fit_curve(x, y, m, memo), cfg, rng) for m in cfg.models)
    frame = pd.DataFrame(rows, columns=list(FITS_COLUMNS))
    frame["plausible"] = frame["plausible"].astype("boolean")
    return frame


def _implausible(fits: pd.DataFrame, model: str) -> dict[str, str]:
    """{lot: reason} of the lots whose potency-model fit converged to an implausible curve."""
    bad = fits[(fits["model"] == model) & (fits["plausible"] == False)]  # noqa: E712 - NA stays out
    return {str(r.lot): f"implausible fit ({model}): {r.plausibility}" for r in bad.itertuples()}


# --------------------------------------------------------------------------
# Parallelism / similarity of one lot to the reference
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Similarity:
    """Parallelism of a lot to the reference (pairwise fits).

    ``equivalent`` is None when the fits failed (then ``problem`` says why).
    """

    parallel_f_p: float
    slope_ratio: fitting.RatioEstimate | None
    upper_diff: tuple[float, float]
    lower_diff: tuple[float, float]
    equivalent: bool | None
    problem: str


def _diff_ci(result: fitting.FitResult, param: str, lot: str, ref: str, t: float) -> tuple[float, float]:
    """CI ``est +/- t SE`` of param(lot) - param(ref); (0, 0) for a fixed parameter."""
    i, j = result.index(param, lot), result.index(param, ref)
    if i is None or j is None:
        return 0.0, 0.0
    est = result.estimates[i] - result.estimates[j]
    var = result.vcov[i, i] + result.vcov[j, j] - 2 * result.vcov[i, j]
    half = t * np.sqrt(var)
    return float(est - half), float(est + half)


def _similarity(
    data: _Points, lot: str, ref: str, cfg: PotencyConfig, joint: fitting.FitResult, memo: fitting.FitMemo
) -> Similarity:
    """Parallel-vs-free F test and USP <1032> equivalence of ``lot`` to ``ref``.

    Fits the reference, the lot and the untreated wells (in the reference
    group) with the parallel model (own e) and the free model (own b, c, d, e).
    Equivalence needs the ``1 - 2 alpha`` Fieller CI of b_lot/b_ref inside
    ``slope_ratio_margins`` and the ``1 - 2 alpha`` CIs (t on the free fit's
    residual df) of top and bottom differences inside +/- their margins.
    """
    x, y, g = data.select([ref, lot], ref)
    groups = (ref, lot)
    # the all-lots parallel fit is a close start for the pair's parallel fit (same optimum, fewer steps)
    start = {name: joint.estimates[i] for i, name in enumerate(joint.names) if name.partition(":")[2] in ("", ref, lot)}
    parallel = fitting.fit_joint(x, y, g, cfg.model, fitting.PARALLEL, groups, start)
    free = fitting.fit_joint(x, y, g, cfg.model, fitting.FREE, groups, memo=memo)
    nan2 = (np.nan, np.nan)
    if not free.converged:
        return Similarity(np.nan, None, nan2, nan2, None, f"free fit did not converge: {free.message}")
    level = 1.0 - 2.0 * cfg.alpha
    i, j = free.index("b", lot), free.index("b", ref)
    ratio = fitting.fieller_ratio(
        free.estimates[i], free.estimates[j], free.vcov[i, i], free.vcov[j, j], free.vcov[i, j], free.df, level
    )
    t = free.t_quantile(level)
    upper, lower = _diff_ci(free, "d", lot, ref, t), _diff_ci(free, "c", lot, ref, t)
    lo_m, hi_m = cfg.slope_ratio_margins
    equivalent = (
        ratio.bounded
        and lo_m <= ratio.lo and ratio.hi <= hi_m
        and -cfg.upper_diff_margin <= upper[0] and upper[1] <= cfg.upper_diff_margin
        and -cfg.lower_diff_margin <= lower[0] and lower[1] <= cfg.lower_diff_margin
    )  # fmt: skip
    f_p = fitting.compare_fits(parallel, free).p if parallel.converged else np.nan
    problem = "" if parallel.converged else f"parallel pair fit did not converge: {parallel.message}"
    return Similarity(f_p, ratio, upper, lower, bool(equivalent), problem)


# --------------------------------------------------------------------------
# Joint parallel model: RP, Wald test, Holm
# --------------------------------------------------------------------------


def holm(p: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Holm step-down adjusted p-values; NaN entries stay NaN and are not counted."""
    p_arr = np.asarray(p, dtype=float)
    out = np.full(p_arr.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p_arr))
    order = finite[np.argsort(p_arr[finite], kind="stable")]
    m = order.size
    scaled = (m - np.arange(m)) * p_arr[order]
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out


def log_ed50_wald_p(joint: fitting.FitResult, lot: str, ref: str) -> float:
    """Two-sided Wald t test (residual df) of ln ED50(lot) - ln ED50(ref) = 0."""
    est, cov = joint.ed_vector(50, [lot, ref])
    grad = np.array([1.0 / est[0], -1.0 / est[1]])
    se = float(np.sqrt(grad @ cov @ grad))
    t = float(np.log(est[0] / est[1]) / se)
    return float(2.0 * special.stdtr(joint.df, -abs(t)))


def _usable(data: _Points, lot: str, cfg: PotencyConfig) -> bool:
    conc = data.conc[(data.lot == lot) & ~data.untreated & (data.conc > 0)]
    return np.unique(conc).size >= cfg.min_concentrations


def _row(plate: str, lot: str, ref: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {c: np.nan for c in POTENCY_COLUMNS}
    row.update(
        plate=plate, lot=lot, reference_lot=ref, equivalent=None, status="failed", reason="",
        ci="not computed", slope_ratio_ci="not computed",
    )  # fmt: skip
    row.update(values)
    return row


def _lot_row(
    plate: str,
    data: _Points,
    lot: str,
    ref: str,
    joint: fitting.FitResult,
    cfg: PotencyConfig,
    memo: fitting.FitMemo,
) -> dict[str, Any]:
    """Potency row of one lot given a converged joint parallel fit."""
    rp = fitting.ed_ratio(joint, 50, ref, lot, cfg.ci_level)
    sim = _similarity(data, lot, ref, cfg, joint, memo)
    notes = [sim.problem] if sim.problem else []
    if not rp.bounded:
        notes.insert(0, rp.reason)
    sr = sim.slope_ratio
    equivalent = sim.equivalent
    if sr is not None and not sr.bounded:
        # an unbounded slope-ratio set says nothing about equivalence: no verdict, with the reason
        equivalent = None
        notes.append(f"slope ratio: {sr.reason}; equivalence not assessed")
    return _row(
        plate, lot, ref,
        rp=rp.ratio, rp_lo=rp.lo, rp_hi=rp.hi, df=joint.df,
        parallel_f_p=sim.parallel_f_p,
        slope_ratio=sr.ratio if sr else np.nan,
        slope_ratio_lo=sr.lo if sr else np.nan,
        slope_ratio_hi=sr.hi if sr else np.nan,
        equivalent=equivalent,
        p_vs_reference=log_ed50_wald_p(joint, lot, ref),
        status="ok" if rp.bounded else "failed",
        reason="; ".join(notes),
        ci=ci_status(rp),
        slope_ratio_ci=ci_status(sr),
    )  # fmt: skip


def ci_status(ratio: fitting.RatioEstimate | None) -> str:
    """potency.csv ``ci`` / ``slope_ratio_ci`` of a Fieller interval (:data:`cr51.schema.CI_STATUSES`).

    ``unbounded`` when the denominator is not significantly different from 0 (Fieller's
    g = t^2 v22 / mu_b^2 >= 1) or the set is not an interval (negative discriminant): the limits are
    then empty, never two numbers.
    """
    if ratio is None or not np.isfinite(ratio.ratio):
        return "not computed"
    if ratio.bounded:
        return "bounded"
    return "unbounded" if "unbounded" in ratio.reason else "not computed"


def _lots_differ_row(
    plate: str, data: _Points, lots: Sequence[str], joint: fitting.FitResult, cfg: PotencyConfig
) -> dict[str, Any]:
    x, y, g = data.select(lots, lots[0])
    e_all = [joint.value("e", lot) for lot in lots]
    start = {name: joint.estimates[i] for i, name in enumerate(joint.names) if ":" not in name}
    start["e"] = float(np.exp(np.mean(np.log(e_all))))  # from the parallel fit: fewer steps
    common = fitting.fit_joint(x, y, g, cfg.model, fitting.COMMON_E, tuple(lots), start)
    test = fitting.compare_fits(common, joint) if common.converged and joint.converged else None
    if test is None:
        return {"plate": plate, "f": np.nan, "df1": np.nan, "df2": np.nan, "p": np.nan}
    return {"plate": plate, "f": test.f, "df1": test.df1, "df2": test.df2, "p": test.p}


def analyse_plate(
    points: pd.DataFrame, plate: str, reference_lot: str, config: PotencyConfig | None = None
) -> PlateTables:
    """Per-lot fits, relative potency and parallelism for one plate at one E:T ratio.

    Parameters
    ----------
    points : pandas.DataFrame
        Per-well points with columns ``lot`` (str; NaN/None for untreated
        wells), ``conc`` (mg/mL; 0 for untreated) and ``lysis`` (% specific
        lysis). Wells with missing or non-finite conc/lysis are dropped.
    plate : str
        Plate identifier written to every row.
    reference_lot : str
        Lot against which RP is computed.
    config : PotencyConfig, optional
        The settings it reads; by default the schema's defaults.

    Returns
    -------
    PlateTables
        ``fits`` (:data:`FITS_COLUMNS`), ``potency`` (:data:`POTENCY_COLUMNS`:
        the contract columns then ``df``, the joint fit's residual df used for
        the RP interval) and ``lots_differ`` (:data:`LOTS_DIFFER_COLUMNS`).
        Failures are reported in ``status``/``reason``; nothing is raised for bad data.

    Notes
    -----
    The joint parallel model (shared b, c, d; own e) is fitted to all usable
    lots with the untreated wells entered once, in the reference group. RP =
    ED50(ref)/ED50(lot) with Fieller's interval at ``ci_level`` (t on the
    joint residual df). ``p_vs_reference`` is a Wald t test of
    ln ED50(lot) - ln ED50(ref) from that fit; ``p_holm`` its Holm adjustment
    across the plate's lots.
    """
    cfg = config or PotencyConfig.from_settings({})
    data = _clean(points)
    ref = str(reference_lot)
    lots = sorted(set(data.lot[~data.untreated].tolist()))
    memo = fitting.FitMemo()  # the plate's single-curve fits (the reference recurs in every pair)
    fits = _fits_table(plate, data, lots, cfg, memo)
    others = [lot for lot in lots if lot != ref]
    implausible = _implausible(fits, cfg.model)
    design = design_problems(points, ref, cfg.min_concentrations)
    failed_rows = {
        lot: _row(plate, lot, ref, reason=f"fewer than {cfg.min_concentrations} concentrations with data")
        for lot in others if not _usable(data, lot, cfg)
    }  # fmt: skip
    failed_rows.update(
        {
            lot: _row(plate, lot, ref, reason=why)
            for lot, why in implausible.items()
            if lot in others and lot not in failed_rows
        }
    )
    usable = [lot for lot in others if lot not in failed_rows]
    empty_differ = _differ_frame({"plate": plate, "f": np.nan, "df1": np.nan, "df2": np.nan, "p": np.nan})
    problem = _plate_problem(data, ref, lots, usable, cfg)
    if problem is None and ref in implausible:
        problem = f"reference lot {ref}: {implausible[ref]}"
    if problem is not None:
        rows = [failed_rows.get(lot) or _row(plate, lot, ref, reason=problem) for lot in others]
        return PlateTables(fits, _potency_frame(rows, design), empty_differ)
    joint_lots = [ref, *usable]
    x, y, g = data.select(joint_lots, ref)
    joint = fitting.fit_joint(x, y, g, cfg.model, fitting.PARALLEL, tuple(joint_lots))
    if not joint.converged:
        reason = f"joint parallel fit did not converge: {joint.message}"
        rows = [failed_rows.get(lot) or _row(plate, lot, ref, reason=reason) for lot in others]
        return PlateTables(fits, _potency_frame(rows, design), empty_differ)
    rows = [failed_rows.get(lot) or _lot_row(plate, data, lot, ref, joint, cfg, memo) for lot in others]
    differ = _differ_frame(_lots_differ_row(plate, data, joint_lots, joint, cfg))
    return PlateTables(fits, _potency_frame(rows, design), differ, _joint_curves(joint, usable, ref))


def _differ_frame(row: dict[str, Any]) -> pd.DataFrame:
    """lots_differ.csv's row of a plate; df1/df2 whole numbers (missing without a test) whatever the plate."""
    frame = pd.DataFrame([row], columns=list(LOTS_DIFFER_COLUMNS))
    return frame.astype({"df1": "Int64", "df2": "Int64"})


def _joint_curves(joint: fitting.FitResult, lots: Sequence[str], ref: str) -> pd.DataFrame:
    """The joint parallel fit's curve parameters for each of ``lots`` (see :data:`JOINT_COLUMNS`)."""
    shared = [joint.value(p) for p in ("b", "c", "d", "f")]
    rows = [[lot, *shared, joint.value("e", lot), joint.value("e", ref)] for lot in lots]
    return pd.DataFrame(rows, columns=["lot", *JOINT_COLUMNS])


def _plate_problem(
    data: _Points, ref: str, lots: Sequence[str], usable: Sequence[str], cfg: PotencyConfig
) -> str | None:
    """Reason why no RP can be computed on this plate, or None."""
    if ref not in lots:
        return f"reference lot {ref} missing on plate"
    if not _usable(data, ref, cfg):
        return f"reference lot {ref} has fewer than {cfg.min_concentrations} concentrations with data"
    if not usable:
        return "fewer than 2 lots with usable data"
    return None


def _potency_frame(rows: list[dict[str, Any]], design: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Potency table with Holm-adjusted p-values and fixed column order.

    ``design`` ({lot: problem}, :func:`cr51.points.design_problems`) adds each lot's design problem
    (``DESIGN_MISMATCH``), or the reference's, to its reason.
    """
    for row in rows:
        notes = [row["reason"]] if row["reason"] else []
        for lot in (row["lot"], row["reference_lot"]):
            why = (design or {}).get(lot)
            if why and why not in " ".join(notes):
                notes.append(why if lot == row["lot"] else f"reference {why}")
        row["reason"] = "; ".join(notes)
    frame = pd.DataFrame(rows, columns=list(POTENCY_COLUMNS))
    frame["p_holm"] = holm(frame["p_vs_reference"].to_numpy(dtype=float))
    frame["equivalent"] = frame["equivalent"].astype("boolean")
    frame["df"] = frame["df"].astype("Int64")  # whole numbers, missing on failed rows, whichever rows a plate has
    return frame
