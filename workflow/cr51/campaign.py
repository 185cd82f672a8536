"""Lots compared across the plates of a campaign: which lots differ, by how much, and similarity.

A **campaign** is the set of plates that share a reference lot and, where the layouts' ``[expt]`` give
one, a ``study`` id (``campaign`` = ``<study>/<reference lot>``, or the reference lot alone). Every
analysis here is per campaign; no table row mixes campaigns.

Data (``campaign_inputs.csv``): one row per plate × lot, reference included, with
``y = ln IC50`` from the plate's final joint parallel fit (potency.csv ``joint_*``; for LL.3/LL.4
IC50 = e, for LL.5 IC50 = e (2^(1/f) - 1)^(1/b) with the shared b and f, so ln IC50 differences equal
ln e differences on a plate). A row enters (``included``) when the plate passed QC and the lot is in
the plate's final joint fit (a lot that fails the parallelism F test, or whose test cannot be computed,
is left out of the refit and out of here, with the reason; the rule is the same for every lot).

Model (the primary analysis): the plate (donor) is a fixed block, ``y_ij = mu + lot_i + plate_j + e_ij``,
ordinary least squares. This is the intra-block analysis: lots are compared only within plates, which
stays valid for incomplete blocks (a plate lacking a lot).

- ``lots_differ`` (campaign_tests.csv): F test of the lot effects **adjusted for plates** (type II; the
  extra sum of squares of ``lot`` after ``plate``). With complete blocks it equals the lot row of R's
  ``anova(lm(y ~ lot + plate))``; with incomplete blocks that sequential row is not adjusted for plates
  and the intra-block test is the lot row of ``anova(lm(y ~ plate + lot))`` (tests check both).
- pairs (campaign_pairs.csv): every lot_a - lot_b difference of ln IC50 with Tukey's studentized-range
  adjustment, as ``emmeans(lm(y ~ lot + plate), pairwise ~ lot, adjust = "tukey")``: p_adj =
  P(Q_{k,df} > sqrt(2) |t|), simultaneous 95 % interval ``est +/- q_{0.95,k,df}/sqrt(2) SE``; reported as
  the potency ratio a/b = IC50(b)/IC50(a) = exp(-(y_a - y_b)).
- letters (campaign_lots.csv ``group``): compact letter display (insert-absorb, Piepho 2004, as
  ``multcomp::cld``): lots sharing a letter are not significantly different at alpha.
- campaign potency vs the reference: exp(-(y_lot - y_ref)) with its (unadjusted) t interval at
  ``ci_level`` on the residual df.
- ``products_differ``, where every lot has a ``product`` and some product has two or more lots: lots are
  nested in products; the products' means of the lots' block-adjusted estimates are compared against the
  lot-to-lot variation within products (F on (P - 1, L - P) df), with ANOVA variance components. With
  complete, balanced blocks this equals ``lmer(y ~ product + (1 | lot) + (1 | plate))`` with
  Kenward-Roger df (``pbkrtest::KRmodcomp``).

Similarity (campaign_similarity.csv): per plate, the pairwise free model with a shared top
(:data:`cr51.potency.SHARED_TOP`) gives ln(b_lot/b_ref) and c_lot - c_ref with standard errors; the plates
that passed QC are combined by DerSimonian-Laird random effects and the 90 % (1 - 2 alpha) interval is
compared with the configured margins (USP <1032> two one-sided tests). The top difference is 0 by
construction (the untreated wells are every lot's dose 0).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import special

from .schema import CAMPAIGN_INPUTS, CAMPAIGN_LOTS, CAMPAIGN_PAIRS, CAMPAIGN_SIMILARITY, CAMPAIGN_TESTS
from .settings import Analysis

FloatArray = npt.NDArray[np.float64]


def _studentized_range() -> Any:
    """``scipy.stats.studentized_range``, imported when a campaign compares three or more lots:
    ``scipy.stats`` costs ~0.7 s to import, and every batch job imports this module (lot products)."""
    from scipy import stats

    return stats.studentized_range


@dataclass(frozen=True)
class CampaignTables:
    """The five campaign tables (columns as :mod:`cr51.schema` declares them)."""

    inputs: pd.DataFrame
    lots: pd.DataFrame
    pairs: pd.DataFrame
    tests: pd.DataFrame
    similarity: pd.DataFrame

    def named(self) -> dict[str, pd.DataFrame]:
        """{table name: frame}."""
        return {
            "campaign_inputs": self.inputs,
            "campaign_lots": self.lots,
            "campaign_pairs": self.pairs,
            "campaign_tests": self.tests,
            "campaign_similarity": self.similarity,
        }


def campaign_id(reference_lot: Any, study: Any = None) -> str:
    """``<study>/<reference lot>``, or the reference lot alone when no study is given."""
    ref = "" if _missing(reference_lot) else str(reference_lot)
    return ref if _missing(study) or str(study) == "" else f"{study}/{ref}"


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA  # not np.isnan: 10x slower on a float


def _float(v: Any) -> float:
    return np.nan if _missing(v) else float(v)


def log_ic50(e: float, b: float, f: float) -> float:
    """ln IC50 of an LL.3/4/5 curve: ``ln e + ln(2^(1/f) - 1) / b`` (``ln e`` for f = 1)."""
    f = 1.0 if not math.isfinite(f) else f
    if f == 1.0:
        return float(np.log(e))
    return float(np.log(e) + np.log(2.0 ** (1.0 / f) - 1.0) / b)


# --------------------------------------------------------------------------
# campaign_inputs.csv
# --------------------------------------------------------------------------


#: The columns of qc.csv and potency.csv that :func:`build_inputs` reads.
QC_USED = ("plate", "reference_lot", "study", "status")
POTENCY_USED = (
    "plate",
    "lot",
    "reference_lot",
    "joint_e",
    "joint_slope",
    "joint_f",
    "joint_e_ref",
    "in_joint",
    "reason",
)


def build_inputs(potency: pd.DataFrame, qc: pd.DataFrame, products: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Every plate × lot (reference included) of every campaign: the ln IC50 that enters, or why not."""
    products = products or {}
    rows = []
    qc_rows = {str(r["plate"]): r for r in _rows(qc, [c for c in QC_USED if c in qc.columns])}
    used = [c for c in POTENCY_USED if c in potency.columns]  # only these: potency.csv has ~40 columns
    ordered = _rows(potency[used].sort_values(["plate", "lot"], kind="stable"), used) if len(potency) else []
    for plate, group in itertools.groupby(ordered, key=lambda r: r["plate"]):  # one pass: no frame per plate
        grp = list(group)
        q = qc_rows.get(str(plate), {})
        ref = q.get("reference_lot", grp[0]["reference_lot"])
        study = q.get("study")
        camp = campaign_id(ref, study)
        status = q.get("status")
        qc_reason = "" if status == "pass" else ("plate failed QC" if status == "fail" else "plate has no QC result")
        kept = []
        for r in grp:
            e = _float(r.get("joint_e"))
            y = log_ic50(e, _float(r.get("joint_slope")), _float(r.get("joint_f"))) if e > 0 else np.nan
            in_joint = r.get("in_joint")
            if qc_reason:
                reason = qc_reason
            elif not math.isfinite(y):
                reason = f"not in the plate's joint parallel fit: {r.get('reason') or 'no fit'}"
            elif in_joint is not True and str(in_joint).lower() != "true":
                reason = "not parallel to the reference on this plate (or no parallelism test): left out of the refit"
            else:
                reason = ""
            if not reason:
                kept.append(r)
            rows.append([camp, str(plate), str(r["lot"]), y, reason == "", reason, ref, study])
        if kept:
            r = kept[0]
            y_ref = log_ic50(_float(r["joint_e_ref"]), _float(r["joint_slope"]), _float(r["joint_f"]))
            rows.append([camp, str(plate), str(ref), y_ref, True, "", ref, study])
        else:
            reason = qc_reason or "no other lot in the plate's joint parallel fit"
            rows.append([camp, str(plate), str(ref), np.nan, False, reason, ref, study])
    cols = ["campaign", "plate", "lot", "log_ic50", "included", "reason", "reference_lot", "study"]
    out = pd.DataFrame(rows, columns=cols)
    out["product"] = out["lot"].map(lambda lot: products.get(lot))
    out = out.sort_values(["campaign", "plate", "lot"], kind="stable").reset_index(drop=True)
    return out.reindex(columns=list(CAMPAIGN_INPUTS.names))


def _rows(df: pd.DataFrame, columns: Sequence[str]) -> Iterator[dict[str, Any]]:
    """The rows of ``df[columns]`` as dicts, the values :func:`cr51.tables.records` gives, read one
    column at a time (``to_numpy(dtype=object)`` of the mixed columns was most of the cost)."""
    for values in zip(*(df[c].tolist() for c in columns)):
        yield dict(zip(columns, values))


# --------------------------------------------------------------------------
# The fixed-block model
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockFit:
    """OLS fit of ``y ~ lot + plate`` (treatment coding; the first lot is the baseline)."""

    lots: tuple[str, ...]
    plates: tuple[str, ...]
    coef: FloatArray  # lot effects vs lots[0] (length k - 1)
    cov_unscaled: FloatArray  # (X'X)^-1 block of the lot effects
    rss: float
    df: int
    rss_plate_only: float  # y ~ plate
    rss_lot_only: float  # y ~ lot
    tss: float  # about the grand mean
    connected: bool

    @property
    def sigma2(self) -> float:
        """Residual variance."""
        return self.rss / self.df if self.df > 0 else np.nan

    def contrast(self, a: int, b: int) -> tuple[float, float]:
        """Estimate and SE of effect(lots[a]) - effect(lots[b])."""
        c = np.zeros(len(self.lots) - 1)
        if a > 0:
            c[a - 1] += 1.0
        if b > 0:
            c[b - 1] -= 1.0
        est = float(c @ self.coef)
        return est, float(np.sqrt(self.sigma2 * (c @ self.cov_unscaled @ c)))


def fit_blocks(data: pd.DataFrame, lots: Sequence[str] | None = None) -> BlockFit:
    """Fit ``log_ic50 ~ lot + plate`` to rows with columns ``plate, lot, log_ic50``.

    ``lots`` orders the lot levels (default: sorted); the first is the baseline.

    The plates are absorbed (the intra-block analysis of an incomplete block design): with N the lot ×
    plate incidence, K the plate sizes, R the lot replications, T and B the lot and plate totals, the lot
    effects solve the reduced normal equations C τ = Q, C = R − N K⁻¹ Nᵀ, Q = T − N K⁻¹ B, and the residual
    SS is the within-plate SS less τᵀQ. Exactly what least squares on the dummy-coded design gives (R's
    ``lm``; tests/test_campaign_r.py), in memory and time that grow with the rows, not with rows × plates:
    a campaign of 10,000 plates is a 6 × 6 system, where the dummy design was 60,000 × 10,000.
    """
    lot_levels = tuple(lots) if lots is not None else tuple(sorted(data["lot"].astype(str).unique()))
    plate_levels = tuple(sorted(data["plate"].astype(str).unique()))
    y = data["log_ic50"].to_numpy(float)
    n, k, p = y.size, len(lot_levels), len(plate_levels)
    li = pd.Categorical(data["lot"].astype(str), categories=lot_levels).codes
    pj = pd.Categorical(data["plate"].astype(str), categories=plate_levels).codes
    if (li < 0).any():
        raise ValueError("a row's lot is not among the lot levels")
    N = np.zeros((k, p))
    np.add.at(N, (li, pj), 1.0)
    K = N.sum(axis=0)  # plate sizes (>= 1: every level has a row)
    R = N.sum(axis=1)  # lot replications
    T = np.bincount(li, weights=y, minlength=k)
    B = np.bincount(pj, weights=y, minlength=p)
    NK = N / K  # N K^-1
    C = np.diag(R) - NK @ N.T
    Q = T - NK @ B
    C1 = C[1:, 1:]
    rank_c = int(np.linalg.matrix_rank(C)) if k > 1 else 0
    connected = rank_c == k - 1
    cov = np.linalg.inv(C1) if connected and k > 1 else np.linalg.pinv(C1)
    coef = cov @ Q[1:]
    ss = float(y @ y)
    rss_p = ss - float(B @ (B / K))  # y ~ plate: the within-plate SS
    rss = rss_p - float(coef @ Q[1:])
    safe_r = np.where(R > 0, R, 1.0)
    rss_l = ss - float(T @ (T / safe_r))  # y ~ lot
    tss = float(np.sum((y - y.mean()) ** 2))
    df = n - p - rank_c
    return BlockFit(lot_levels, plate_levels, coef, cov, max(rss, 0.0), df, rss_p, rss_l, tss, connected)


def lots_differ(fit: BlockFit) -> tuple[float, int, int, float]:
    """(F, df1, df2, p): lots adjusted for plates (the intra-block test)."""
    df1 = len(fit.lots) - 1
    if fit.df <= 0 or df1 < 1:
        return np.nan, df1, fit.df, np.nan
    f = ((fit.rss_plate_only - fit.rss) / df1) / fit.sigma2
    return float(f), df1, fit.df, float(special.fdtrc(df1, fit.df, f))


def tukey_pairs(fit: BlockFit, level: float = 0.95) -> pd.DataFrame:
    """emmeans-style pairwise differences lot_a - lot_b (a before b in level order), Tukey-adjusted."""
    k = len(fit.lots)
    rows = []
    q = _q_tukey(level, k, fit.df) if k >= 2 and fit.df > 0 else np.nan
    for a in range(k):
        for b in range(a + 1, k):
            est, se = fit.contrast(a, b)
            t = est / se
            p = float(_studentized_range().sf(np.sqrt(2.0) * abs(t), k, fit.df)) if k > 2 else _p2(t, fit.df)
            half = (q / np.sqrt(2.0)) * se
            rows.append([fit.lots[a], fit.lots[b], est, se, fit.df, t, p, est - half, est + half])
    cols = ["lot_a", "lot_b", "estimate", "se", "df", "t_ratio", "p_adj", "lo", "hi"]
    return pd.DataFrame(rows, columns=cols)


@lru_cache(maxsize=256)
def _q_tukey(level: float, k: int, df: int) -> float:
    """Studentized-range quantile (scipy integrates numerically: ~0.2 s, so kept per (level, k, df))."""
    return float(_studentized_range().ppf(level, k, df))


def _p2(t: float, df: int) -> float:
    """Two lots: Tukey's adjustment is the plain two-sided t test."""
    return float(2.0 * special.stdtr(df, -abs(t)))


def letters(lots: Sequence[str], pairs: pd.DataFrame, alpha: float, order: Sequence[float]) -> dict[str, str]:
    """Compact letter display by insert-absorb (Piepho 2004; ``multcomp::cld``).

    ``order`` (one value per lot, e.g. its mean ln IC50) decides which lots get the first letters.
    """
    idx = {lot: i for i, lot in enumerate(lots)}
    columns: list[set[int]] = [set(range(len(lots)))]
    for r in pairs.itertuples():
        if not (np.isfinite(r.p_adj) and r.p_adj < alpha):
            continue
        i, j = idx[r.lot_a], idx[r.lot_b]
        new: list[set[int]] = []
        for col in columns:
            if i in col and j in col:
                new.extend([col - {i}, col - {j}])
            else:
                new.append(col)
        # absorb: drop a column contained in another
        uniq = []
        for col in new:
            if col and col not in uniq:
                uniq.append(col)
        columns = [c for c in uniq if not any(c < other for other in uniq)]
    rank = np.argsort(np.argsort(np.asarray(order, dtype=float), kind="stable"), kind="stable")
    columns.sort(key=lambda col: min(rank[i] for i in col))
    out = {lot: "" for lot in lots}
    for n, col in enumerate(columns):
        for i in col:
            out[lots[i]] += _letter(n)
    return {lot: "".join(sorted(v)) for lot, v in out.items()}


def _letter(n: int) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    return alphabet[n] if n < 26 else alphabet[n // 26 - 1] + alphabet[n % 26]


def products_differ(fit: BlockFit, products: Mapping[str, str]) -> tuple[float, int, int, float, float, float] | None:
    """(F, df1, df2, p, sigma2_lot, sigma2_residual) of products against lots within products, or None.

    The lots' block-adjusted means ``m_l`` (lot effect + a common constant) are grouped by product;
    F = [SS_products / (P - 1)] / [SS_lots within products / (L - P)]; sigma2_lot =
    MS_lots within - sigma2 v (v the mean variance factor of a lot mean, 1/n_plates when complete),
    truncated at 0.
    """
    lots = fit.lots
    prods = [products.get(lot) for lot in lots]
    if any(_missing(p) or p == "" for p in prods):
        return None
    names = sorted(set(prods))
    P, L = len(names), len(lots)
    if P < 2 or L - P < 1 or fit.df <= 0:
        return None
    m = np.concatenate([[0.0], fit.coef])
    grand = m.mean()
    ss_b = ss_w = 0.0
    for name in names:
        mi = m[[i for i, p in enumerate(prods) if p == name]]
        ss_b += mi.size * (mi.mean() - grand) ** 2
        ss_w += float(np.sum((mi - mi.mean()) ** 2))
    ms_b, ms_w = ss_b / (P - 1), ss_w / (L - P)
    f = ms_b / ms_w if ms_w > 0 else np.nan
    p = float(special.fdtrc(P - 1, L - P, f)) if np.isfinite(f) else np.nan
    # mean variance factor of a lot-mean contrast: var(m_l - mean m) averaged, from (X'X)^-1
    full = np.zeros((L, L))
    full[1:, 1:] = fit.cov_unscaled
    centre = np.eye(L) - 1.0 / L
    v = float(np.trace(centre @ full @ centre)) / (L - 1)
    sigma2_lot = max(ms_w - fit.sigma2 * v, 0.0)
    return float(f), P - 1, L - P, p, sigma2_lot, fit.sigma2


# --------------------------------------------------------------------------
# Similarity: random-effects combination of per-plate estimates
# --------------------------------------------------------------------------


def random_effects(est: npt.ArrayLike, se: npt.ArrayLike) -> tuple[float, float, float]:
    """DerSimonian-Laird: (pooled estimate, its SE, tau^2)."""
    y, s = np.asarray(est, float), np.asarray(se, float)
    w = 1.0 / s**2
    fixed = float(np.sum(w * y) / np.sum(w))
    q = float(np.sum(w * (y - fixed) ** 2))
    c = float(np.sum(w) - np.sum(w**2) / np.sum(w))
    tau2 = max((q - (y.size - 1)) / c, 0.0) if c > 0 else 0.0
    ws = 1.0 / (s**2 + tau2)
    return float(np.sum(ws * y) / np.sum(ws)), float(np.sqrt(1.0 / np.sum(ws))), tau2


#: The columns of potency.csv that :func:`similarity` reads.
SIMILARITY_USED = (
    "plate",
    "lot",
    "reference_lot",
    "log_slope_ratio",
    "log_slope_ratio_se",
    "bottom_diff",
    "bottom_diff_se",
)


def similarity(potency: pd.DataFrame, inputs: pd.DataFrame, settings: Analysis) -> pd.DataFrame:
    """campaign_similarity.csv: combined slope ratio and bottom/top differences with 90 % CIs and verdicts."""
    pot = settings.potency
    eq = pot.equivalence
    z = float(special.ndtri(1.0 - pot.alpha))
    qc_ok = inputs.drop_duplicates("plate").set_index("plate")
    ok_plates = set(inputs.loc[~inputs["reason"].isin(["plate failed QC", "plate has no QC result"]), "plate"])
    rows = []
    pot = potency[[c for c in SIMILARITY_USED if c in potency.columns]].copy()  # not all ~30 split per group
    pot["campaign"] = pot["plate"].map(qc_ok["campaign"])
    for (camp, lot), grp in pot.groupby(["campaign", "lot"], sort=True):
        grp = grp[grp["plate"].isin(ok_plates)]
        srs = grp[["log_slope_ratio", "log_slope_ratio_se"]].astype(float)
        srs = srs[np.isfinite(srs).all(axis=1) & (srs["log_slope_ratio_se"] > 0)]
        bot = grp[["bottom_diff", "bottom_diff_se"]].astype(float)
        bot = bot[np.isfinite(bot).all(axis=1) & (bot["bottom_diff_se"] > 0)]
        ref = str(grp["reference_lot"].iloc[0]) if len(grp) else ""
        if len(srs) < 2:
            rows.append([camp, ref, str(lot), len(srs), *[np.nan] * 6, 0.0, 0.0, 0.0,
                         eq.slope_ratio_lo, eq.slope_ratio_hi, eq.lower_diff_margin, eq.upper_diff_margin,
                         "not computable", "fewer than 2 plates with a free fit"])  # fmt: skip
            continue
        m, s, _ = random_effects(srs["log_slope_ratio"], srs["log_slope_ratio_se"])
        sr = (np.exp(m), np.exp(m - z * s), np.exp(m + z * s))
        if len(bot) >= 2:
            mb, sb, _ = random_effects(bot["bottom_diff"], bot["bottom_diff_se"])
            bd = (mb, mb - z * sb, mb + z * sb)
        else:
            bd = (np.nan, np.nan, np.nan)
        slope_ok = eq.slope_ratio_lo <= sr[1] and sr[2] <= eq.slope_ratio_hi
        bottom_ok = bool(np.isfinite(bd[1]) and -eq.lower_diff_margin <= bd[1] and bd[2] <= eq.lower_diff_margin)
        verdict = "equivalent" if slope_ok and bottom_ok else "not shown equivalent"
        rows.append([camp, ref, str(lot), len(srs), *sr, *bd, 0.0, 0.0, 0.0,
                     eq.slope_ratio_lo, eq.slope_ratio_hi, eq.lower_diff_margin, eq.upper_diff_margin,
                     verdict, "DerSimonian-Laird random effects over plates; top shared by the free model"])  # fmt: skip
    return pd.DataFrame(rows, columns=list(CAMPAIGN_SIMILARITY.names))


# --------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------


def analyse(
    potency: pd.DataFrame,
    qc: pd.DataFrame,
    settings: Analysis | Mapping[str, Any],
    products: Mapping[str, str] | None = None,
) -> CampaignTables:
    """The five campaign tables of a run from its potency.csv and qc.csv (and each lot's product).

    Parameters
    ----------
    potency, qc : pandas.DataFrame
        The run's potency.csv and qc.csv (qc: ``plate, status, reference_lot`` and optional ``study``).
    settings : Analysis or mapping
        ``potency.alpha`` (tests, letters, similarity 1 - 2 alpha), ``potency.ci_level`` (campaign
        potencies) and the equivalence margins.
    products : mapping, optional
        Lot -> product (brand), e.g. :func:`products_of` of the wells frames.
    """
    s = Analysis.of(settings)
    alpha, level = s.potency.alpha, s.potency.ci_level
    products = dict(products or {})
    inputs = build_inputs(potency, qc, products)
    lots_rows, pair_rows, test_rows = [], [], []
    for camp, grp in inputs.groupby("campaign", sort=True):
        inc = grp[grp["included"]]
        ref = str(grp["reference_lot"].iloc[0])
        all_lots = [ref, *sorted(set(grp["lot"]) - {ref})]
        entered = set(inc["lot"])
        lots = [lot for lot in all_lots if lot in entered]
        n_plates = inc.groupby("lot")["plate"].nunique().to_dict()
        fit = fit_blocks(inc, lots) if len(lots) >= 2 and ref in lots else None
        if fit is None or fit.df <= 0 or not fit.connected:
            why = (
                "fewer than 2 lots with the reference on some plate"
                if fit is None
                else ("no residual degrees of freedom (one plate?)" if fit.df <= 0 else "plates and lots not connected")
            )
            test_rows.append([camp, "lots_differ", np.nan, np.nan, np.nan, np.nan, f"not computable: {why}",
                              np.nan, np.nan])  # fmt: skip
            for lot in all_lots:
                lots_rows.append([camp, ref, lot, products.get(lot), n_plates.get(lot, 0),
                                  *([1.0, np.nan, np.nan] if lot == ref else [np.nan] * 3), "", np.nan, np.nan,
                                  np.nan])  # fmt: skip
            continue
        complete = len(inc) == len(fit.lots) * len(fit.plates)
        f, df1, df2, p = lots_differ(fit)
        note = (
            f"plate as fixed block, lot adjusted for plate (intra-block); "
            f"{'complete' if complete else 'incomplete'} blocks: {len(fit.plates)} plates, {len(fit.lots)} lots"
        )
        test_rows.append([camp, "lots_differ", f, df1, df2, p, note, np.nan, fit.sigma2])
        prod = products_differ(fit, products)
        if prod is not None:
            pf, pd1, pd2, pp, s2l, s2e = prod
            test_rows.append([camp, "products_differ", pf, pd1, pd2, pp,
                              "products vs the lot-to-lot variation within products (lots nested in products); "
                              "sigma2_between = between lots within products", s2l, s2e])  # fmt: skip
        pairs = tukey_pairs(fit, 0.95)
        for r in pairs.itertuples():
            pair_rows.append([camp, r.lot_a, r.lot_b, np.exp(-r.estimate), np.exp(-r.hi), np.exp(-r.lo), r.p_adj,
                              "Tukey (fixed plate blocks)", r.estimate, r.se, r.df, r.t_ratio])  # fmt: skip
        means = np.concatenate([[0.0], fit.coef])
        group = letters(fit.lots, pairs, alpha, means)
        t = float(special.stdtrit(fit.df, 0.5 + level / 2.0))
        for lot in all_lots:
            if lot not in fit.lots:
                lots_rows.append([camp, ref, lot, products.get(lot), 0, np.nan, np.nan, np.nan, "", np.nan,
                                  np.nan, np.nan])  # fmt: skip
                continue
            i = fit.lots.index(lot)
            est, se = fit.contrast(i, 0)
            if lot == ref:
                vals = [1.0, np.nan, np.nan]
            else:
                vals = [np.exp(-est), np.exp(-(est + t * se)), np.exp(-(est - t * se))]
            lots_rows.append([camp, ref, lot, products.get(lot), n_plates.get(lot, 0), *vals, group[lot],
                              est if lot != ref else 0.0, se if lot != ref else 0.0, fit.df])  # fmt: skip
    tables = CampaignTables(
        inputs,
        pd.DataFrame(lots_rows, columns=list(CAMPAIGN_LOTS.names)),
        pd.DataFrame(pair_rows, columns=list(CAMPAIGN_PAIRS.names)),
        pd.DataFrame(test_rows, columns=list(CAMPAIGN_TESTS.names)),
        similarity(potency, inputs, s) if not potency.empty else pd.DataFrame(columns=CAMPAIGN_SIMILARITY.names),
    )
    return tables


def products_of(wells: pd.DataFrame | Sequence[pd.DataFrame]) -> dict[str, str]:
    """Lot -> product from wells.csv, or from several wells frames (the first non-empty product of each lot).

    What the collect job hands :func:`analyse_run`; any frame with ``lot`` and ``product`` columns will do
    (e.g. one row per plate and lot).
    """
    frames = [wells] if isinstance(wells, pd.DataFrame) else list(wells)
    frames = [w[["lot", "product"]] for w in frames if "product" in w.columns and not w.empty]
    if not frames:
        return {}
    w = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    w = w[w["lot"].notna() & w["product"].notna()]
    w = w[w["product"].astype(str) != ""]
    return {str(k): str(v) for k, v in w.groupby("lot")["product"].first().items()}


def analyse_run(
    potency: pd.DataFrame,
    qc: pd.DataFrame,
    settings: Analysis | Mapping[str, Any],
    products: Mapping[str, str] | None = None,
) -> dict[str, pd.DataFrame]:
    """{campaign table name: frame} of a run (what the collect job writes).

    ``products`` maps lot -> product (brand), e.g. :func:`products_of` of the run's wells frames; lots
    without one have an empty ``product`` (and no ``products_differ`` test).
    """
    return analyse(potency, qc, settings, products).named()
