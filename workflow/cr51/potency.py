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
from .schema import FITS, LOTS_DIFFER, POTENCY_CI, POTENCY_JOINT, POTENCY_OWN, POTENCY_SIMILARITY
from .settings import Analysis

#: Column names of the tables this module builds (derived from the schema, which owns them).
FITS_COLUMNS = FITS.names
POTENCY_COLUMNS = tuple(c.name for c in POTENCY_OWN + POTENCY_CI)
LOTS_DIFFER_COLUMNS = LOTS_DIFFER.names
#: Per lot, the joint parallel fit's curve (shared slope/bottom/top/f, the lot's and the reference's e),
#: so that the report can draw the parallel curves; added to potency.csv after its other columns.
JOINT_COLUMNS = tuple(c.name for c in POTENCY_JOINT)
#: Per lot, the pairwise free fit's log slope ratio and bottom difference with their standard errors (for
#: the campaign's similarity) and whether the lot is in the final joint fit; after :data:`JOINT_COLUMNS`.
SIMILARITY_COLUMNS = tuple(c.name for c in POTENCY_SIMILARITY)
#: The free model of the parallelism test: own slope, bottom (and LL.5 asymmetry) and e per curve, one top
#: for all. The untreated wells are every lot's dose 0, so they belong to every curve: drc
#: ``pmodels = data.frame(lot, lot, 1, lot)``. The F test against the parallel model compares slope and bottom.
SHARED_TOP: frozenset[str] = frozenset({"b", "c", "e", "f"})
#: The free model when a pair's bottom is not determined (SHARED_TOP did not converge): own slope (and f)
#: and e, top and bottom shared; the F test then compares slopes only.
SLOPE_ONLY: frozenset[str] = frozenset({"b", "e", "f"})


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
    parallelism_gate : str
        ``potency.parallelism_gate``; unless ``"none"``, lots whose parallelism F test fails or
        cannot be computed are left out of the refitted joint parallel fit.
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
    parallelism_gate: str
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
            parallelism_gate=s.potency.parallelism_gate,
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
            {"lot": pd.Series(dtype=object)}
            | {c: pd.Series(dtype=float) for c in JOINT_COLUMNS}
            | {c: pd.Series(dtype=float) for c in SIMILARITY_COLUMNS[:4]}
            | {"similarity_df": pd.Series(dtype="Int64"), "in_joint": pd.Series(dtype="boolean")}
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


def _records_frame(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    """``pd.DataFrame(rows, columns=columns)`` for a list of row dicts, built column by column: the same
    frame (each column's dtype inferred from its values alike) in about half the time."""
    if not rows:
        return pd.DataFrame(list(rows), columns=list(columns))
    return pd.DataFrame({c: [r[c] for r in rows] for c in columns})


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
    frame = _records_frame(rows, FITS_COLUMNS)
    frame["plausible"] = frame["plausible"].astype("boolean")
    return frame


def _conc_range(data: _Points, lot: str) -> tuple[float, float]:
    """(lowest, highest) positive concentration of ``lot`` (NaN, NaN without one)."""
    pos = data.conc[(data.lot == lot) & ~data.untreated & (data.conc > 0)]
    return (float(pos.min()), float(pos.max())) if pos.size else (np.nan, np.nan)


_AT_BOUND = (
    f"IC50 at the fit's bound, {fitting.E_DECADES:g} decades outside the tested range (more than the allowed factor)"
)


def joint_plausibility(
    joint: fitting.FitResult, data: _Points, lots: Sequence[str], cfg: PotencyConfig
) -> tuple[str, dict[str, str]]:
    """Why the joint parallel fit's curves are implausible: (the shared curve's reason, {lot: reason}).

    The rule of :func:`plausibility`, applied to each lot's curve *in the joint parallel fit* (the shared
    slope, bottom and top with the lot's own e): the shared bottom, top and slope are judged once (a
    reason there concerns every lot), and each lot's IC50 against its own tested concentrations. A weak
    lot's separate four-parameter curve extrapolates its bottom and IC50 from its own doses and was found
    implausible far more often than a potent lot's (docs/campaign.md); in the joint fit its bottom is the
    one all lots share, so the rule is the same for weak and potent lots.
    """
    shared = plausibility(joint, np.nan, (np.nan, np.nan), cfg)
    level = cfg.ci_level
    own = {}
    for lot in lots:
        ic50 = joint.ed(50, lot, level).estimate
        c_lo, c_hi = _conc_range(data, lot)
        k = cfg.max_ic50_extrapolation
        if np.isfinite(ic50) and c_hi > 0 and not (c_lo / k <= ic50 <= c_hi * k):
            where = f"{ic50 / c_hi:.3g} x the top dose" if ic50 > c_hi else f"1/{c_lo / ic50:.3g} of the lowest dose"
            own[lot] = f"IC50 {ic50:.4g} mg/mL is {where} (more than {k:g} x outside the tested range)"
    return shared, own


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
    log_slope_ratio: tuple[float, float] = (np.nan, np.nan)  # ln(b_lot / b_ref) and its delta-method SE
    bottom_diff: tuple[float, float] = (np.nan, np.nan)  # c_lot - c_ref and its SE
    df: float = np.nan  # the free fit's residual df


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

    Fits the reference, the lot and the untreated wells with the parallel model (own e) and the
    free model :data:`SHARED_TOP` (own b, c, e and f, one top d). The untreated wells are dose 0 of
    every curve; with the top shared, the curve's value at dose 0 is d whichever group the untreated
    wells are labelled with (for a decreasing curve, b > 0), so both models are drc's
    (``pmodels = data.frame(lot, 1, 1, lot)`` and ``data.frame(lot, lot, 1, lot)``) and the F test
    compares slope and bottom on ``(df1, df2) = (2, n - 7)`` (LL.4). Giving dose 0 to the reference
    curve only (the earlier free model) left a weak lot's top to be extrapolated from its own
    doses: its free fit ran to a bound and its test was lost far more often than a potent lot's.

    When the shared-top free fit does not converge (the bottom is not determined by the pair's doses,
    typically for a lot whose curve does not reach it), the free model is :data:`SLOPE_ONLY` (top and
    bottom shared) and the test compares slopes only; the reason says so. The rule is the same for
    every lot.

    Equivalence needs the ``1 - 2 alpha`` Fieller CI of b_lot/b_ref inside ``slope_ratio_margins``
    and the ``1 - 2 alpha`` CI (t on the free fit's residual df) of the bottom difference inside
    +/- its margin; the top difference is 0 by construction (shared top), inside any margin.
    """
    x, y, g = data.select([ref, lot], ref)
    groups = (ref, lot)
    # the all-lots parallel fit is a close start for the pair's parallel fit (same optimum, fewer steps)
    start = {name: joint.estimates[i] for i, name in enumerate(joint.names) if name.partition(":")[2] in ("", ref, lot)}
    parallel = fitting.fit_joint(x, y, g, cfg.model, fitting.PARALLEL, groups, start)
    free_start = None
    if parallel.converged:  # the free model at the parallel optimum: a close start
        free_start = {}
        for i, name in enumerate(parallel.names):
            param, _, grp = name.partition(":")
            if grp or param == "d":
                free_start[name] = float(parallel.estimates[i])
            else:
                free_start.update({f"{param}:{k}": float(parallel.estimates[i]) for k in groups})
    free = fitting.fit_joint(x, y, g, cfg.model, SHARED_TOP, groups, free_start)
    nan2 = (np.nan, np.nan)
    if not free.converged and free_start is not None:  # from the data instead of the parallel optimum
        free = fitting.fit_joint(x, y, g, cfg.model, SHARED_TOP, groups)
    fallback = ""
    if not free.converged:
        # the bottom is not determined by this pair's doses (typically a weak lot whose curve does not
        # reach it): test the slope alone, with top and bottom shared (the same rule for every lot)
        first = free.message
        slope_start = None if free_start is None else {k: v for k, v in free_start.items() if not k.startswith("c:")}
        if slope_start is not None and parallel.converged:
            slope_start["c"] = float(parallel.value("c"))
        free = fitting.fit_joint(x, y, g, cfg.model, SLOPE_ONLY, groups, slope_start)
        if not free.converged:
            return Similarity(np.nan, None, nan2, nan2, None, f"free fit did not converge: {first}; {free.message}")
        fallback = f"bottom not determined ({first}): slope-only parallelism test (top and bottom shared)"
    level = 1.0 - 2.0 * cfg.alpha
    i, j = free.index("b", lot), free.index("b", ref)
    bi, bj, vii, vjj, vij = free.estimates[i], free.estimates[j], free.vcov[i, i], free.vcov[j, j], free.vcov[i, j]
    ratio = fitting.fieller_ratio(bi, bj, vii, vjj, vij, free.df, level)
    log_sr = (float(np.log(bi / bj)), float(np.sqrt(vii / bi**2 + vjj / bj**2 - 2 * vij / (bi * bj))))
    t = free.t_quantile(level)
    upper, lower = _diff_ci(free, "d", lot, ref, t), _diff_ci(free, "c", lot, ref, t)
    ci, cj = free.index("c", lot), free.index("c", ref)
    if fallback:  # no bottom difference was estimated: not shown equivalent
        bottom, lower = nan2, nan2
    elif ci is None or cj is None:  # LL.3: bottom fixed at 0
        bottom = (0.0, 0.0)
    else:
        var_c = free.vcov[ci, ci] + free.vcov[cj, cj] - 2 * free.vcov[ci, cj]
        bottom = (float(free.estimates[ci] - free.estimates[cj]), float(np.sqrt(var_c)))
    lo_m, hi_m = cfg.slope_ratio_margins
    equivalent = (
        ratio.bounded
        and lo_m <= ratio.lo and ratio.hi <= hi_m
        and -cfg.upper_diff_margin <= upper[0] and upper[1] <= cfg.upper_diff_margin
        and -cfg.lower_diff_margin <= lower[0] and lower[1] <= cfg.lower_diff_margin
    )  # fmt: skip
    f_p = fitting.compare_fits(parallel, free).p if parallel.converged else np.nan
    problems = [fallback] if fallback else []
    if not parallel.converged:
        problems.append(f"parallel pair fit did not converge: {parallel.message}")
    return Similarity(f_p, ratio, upper, lower, bool(equivalent), "; ".join(problems), log_sr, bottom, float(free.df))


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
    plate: str, lot: str, ref: str, joint: fitting.FitResult, sim: Similarity, cfg: PotencyConfig, note: str = ""
) -> dict[str, Any]:
    """Potency row of one lot given a converged joint parallel fit and the lot's similarity."""
    rp = fitting.ed_ratio(joint, 50, ref, lot, cfg.ci_level)
    notes = [sim.problem] if sim.problem else []
    if not rp.bounded:
        notes.insert(0, rp.reason)
    if note:
        notes.append(note)
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

    Plausibility is judged on the joint parallel fit (:func:`joint_plausibility`): a lot whose curve in
    it has its IC50 more than ``max_ic50_extrapolation`` times outside its tested concentrations leaves
    the fit (``status = failed``, reason "implausible joint parallel fit") and the rest are refitted; an
    implausible shared bottom, top or slope, or reference IC50, fails the plate's potency. The separate
    curves' ``plausible`` (fits.csv) is reported, not used: it fell on weak lots far more often.
    """
    cfg = config or PotencyConfig.from_settings({})
    data = _clean(points)
    ref = str(reference_lot)
    lots = sorted(set(data.lot[~data.untreated].tolist()))
    memo = fitting.FitMemo()  # the plate's single-curve fits (the reference recurs in every pair)
    fits = _fits_table(plate, data, lots, cfg, memo)
    others = [lot for lot in lots if lot != ref]
    design = design_problems(points, ref, cfg.min_concentrations)
    failed_rows = {
        lot: _row(plate, lot, ref, reason=f"fewer than {cfg.min_concentrations} concentrations with data")
        for lot in others if not _usable(data, lot, cfg)
    }  # fmt: skip
    usable = [lot for lot in others if lot not in failed_rows]
    problem = _plate_problem(data, ref, lots, usable, cfg)
    if problem is None:
        joint, problem = _plausible_joint(data, ref, usable, failed_rows, plate, cfg)
    if problem is not None:
        rows = [failed_rows.get(lot) or _row(plate, lot, ref, reason=problem) for lot in others]
        empty_differ = _differ_frame({"plate": plate, "f": np.nan, "df1": np.nan, "df2": np.nan, "p": np.nan})
        return PlateTables(fits, _potency_frame(rows, design), empty_differ)
    joint_lots = [ref, *usable]
    sims = {lot: _similarity(data, lot, ref, cfg, joint, memo) for lot in usable}
    final, kept = joint, list(usable)
    if cfg.parallelism_gate != "none":
        # lots that fail the F test, or whose test could not be computed, leave the joint fit: the
        # refit gives the parallel lots their RP without a non-parallel curve pulling the shared slope
        kept = [lot for lot in usable if sims[lot].parallel_f_p >= cfg.alpha]  # NaN compares False
        if kept and len(kept) < len(usable):
            xk, yk, gk = data.select([ref, *kept], ref)
            refit = fitting.fit_joint(xk, yk, gk, cfg.model, fitting.PARALLEL, (ref, *kept), _start_from(joint))
            final = refit if refit.converged else joint
            if not refit.converged:
                kept = list(usable)  # documented fallback: the all-lots fit stands
    left = (
        "not parallel to the reference (or no parallelism test): RP from the all-lots joint fit, left out of the refit"
    )
    rows = []
    for lot in others:
        if lot in failed_rows:
            rows.append(failed_rows[lot])
        elif lot in kept:
            rows.append(_lot_row(plate, lot, ref, final, sims[lot], cfg))
        else:
            rows.append(_lot_row(plate, lot, ref, joint, sims[lot], cfg, left))
    differ = _differ_frame(_lots_differ_row(plate, data, joint_lots, joint, cfg))
    curves = pd.concat(
        [_joint_curves(final, [lot for lot in usable if lot in kept], ref, sims, True),
         _joint_curves(joint, [lot for lot in usable if lot not in kept], ref, sims, False)],
        ignore_index=True,
    )  # fmt: skip
    return PlateTables(fits, _potency_frame(rows, design), differ, curves)


def _plausible_joint(
    data: _Points, ref: str, usable: list[str], failed_rows: dict[str, dict[str, Any]], plate: str, cfg: PotencyConfig
) -> tuple[fitting.FitResult, str | None]:
    """The joint parallel fit of the reference and ``usable``, without the lots whose curve in it is
    implausible (:func:`joint_plausibility`), refitted until every curve is plausible.

    Lots that leave get their row in ``failed_rows`` and leave ``usable`` (both changed in place).
    Returns the fit and the reason no RP can be computed on the plate (None when there is one): the fit
    did not converge, the shared curve or the reference's is implausible, or no other lot is left.
    """
    x, y, g = data.select([ref, *usable], ref)
    joint = fitting.fit_joint(x, y, g, cfg.model, fitting.PARALLEL, (ref, *usable))
    while True:
        if joint.converged:
            shared, own = joint_plausibility(joint, data, [ref, *usable], cfg)
        else:
            # a lot's e at its bound (3 decades outside the doses) is more than 10 x outside: the same rule
            shared, own = "", {name.partition(":")[2]: _AT_BOUND for name in joint.at_bound if name.startswith("e:")}
            if not own or set(joint.at_bound) != {f"e:{lot}" for lot in own}:
                return joint, f"joint parallel fit did not converge: {joint.message}"
        label = f"implausible joint parallel fit ({cfg.model})"
        if shared:
            return joint, f"{label}: {shared}"
        if ref in own:
            return joint, f"reference lot {ref}: {label}: {own[ref]}"
        if not own:
            return joint, None
        for lot, why in own.items():
            failed_rows[lot] = _row(plate, lot, ref, reason=f"{label}: {why}")
            usable.remove(lot)
        if not usable:
            return joint, "fewer than 2 lots with a plausible curve in the joint parallel fit"
        x, y, g = data.select([ref, *usable], ref)
        joint = fitting.fit_joint(x, y, g, cfg.model, fitting.PARALLEL, (ref, *usable), _start_from(joint))


def _differ_frame(row: dict[str, Any]) -> pd.DataFrame:
    """lots_differ.csv's row of a plate; df1/df2 whole numbers (missing without a test) whatever the plate.

    Built column by column with the dtypes given (``DataFrame([row]).astype(...)`` builds the same frame
    in about four times the time, ~1 ms a plate).
    """
    cols = {c: [row[c]] for c in LOTS_DIFFER_COLUMNS}
    for c in ("df1", "df2"):
        cols[c] = pd.array([None if pd.isna(v) else int(v) for v in cols[c]], dtype="Int64")
    return pd.DataFrame(cols)


def _start_from(joint: fitting.FitResult) -> dict[str, float]:
    """Starting values for a refit from a converged joint fit (its estimates by name)."""
    return {name: float(joint.estimates[i]) for i, name in enumerate(joint.names)}


def _joint_curves(
    joint: fitting.FitResult, lots: Sequence[str], ref: str, sims: Mapping[str, Similarity], in_joint: bool
) -> pd.DataFrame:
    """The joint parallel fit's curve parameters for each of ``lots`` (see :data:`JOINT_COLUMNS`) and the
    lots' similarity estimates (:data:`SIMILARITY_COLUMNS`)."""
    shared = [joint.value(p) for p in ("b", "c", "d", "f")]
    rows = [
        [lot, *shared, joint.value("e", lot), joint.value("e", ref), *sims[lot].log_slope_ratio,
         *sims[lot].bottom_diff, sims[lot].df, in_joint]
        for lot in lots
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["lot", *JOINT_COLUMNS, *SIMILARITY_COLUMNS])
    frame["in_joint"] = frame["in_joint"].astype("boolean")
    return frame


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
    frame = _records_frame(rows, POTENCY_COLUMNS)
    frame["p_holm"] = holm(frame["p_vs_reference"].to_numpy(dtype=float))
    frame["equivalent"] = frame["equivalent"].astype("boolean")
    frame["df"] = frame["df"].astype("Int64")  # whole numbers, missing on failed rows, whichever rows a plate has
    return frame
