"""cr51.potency: per-plate tables on simulated plates and the Ph. Eur. 5.3 combination."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cr51 import combination, fit, potency
from cr51.schema import POTENCY_COMBINED

CONCS = np.geomspace(0.05, 20.0, 7)  # mg/mL
TOP, BOTTOM, SLOPE, IC50_REF = 60.0, 15.0, 1.5, 1.0


def simulate_plate(
    rng: np.random.Generator,
    rps: dict[str, float],
    sd: float = 2.5,
    slopes: dict[str, float] | None = None,
    reps: int = 2,
    n_untreated: int = 12,
) -> pd.DataFrame:
    """LL.4 % lysis wells: IC50 of a lot = IC50_REF / RP; untreated wells at dose 0."""
    rows = []
    for lot, rp in rps.items():
        b = (slopes or {}).get(lot, SLOPE)
        mean = fit.curve(CONCS, b, BOTTOM, TOP, IC50_REF / rp)
        rows += [(lot, x, m + rng.normal(0, sd)) for x, m in zip(CONCS, mean) for _ in range(reps)]
    rows += [(None, 0.0, TOP + rng.normal(0, sd)) for _ in range(n_untreated)]
    return pd.DataFrame(rows, columns=["lot", "conc", "lysis"])


SIX_LOTS = {"REF": 1.0, "L1": 0.5, "L2": 0.8, "L3": 1.0, "L4": 1.5, "L5": 2.0}


@pytest.fixture(scope="module")
def six_lot_tables() -> potency.PlateTables:
    points = simulate_plate(np.random.default_rng(1), SIX_LOTS)
    assert len(points) == 96
    return potency.analyse_plate(points, "P1", "REF")


def test_column_lists_are_exact(six_lot_tables: potency.PlateTables) -> None:
    assert list(six_lot_tables.fits.columns) == [
        "plate", "lot", "model", "slope", "bottom", "top", "ic50", "ic50_se", "ic50_lo", "ic50_hi",
        "rss", "df", "aicc", "converged", "message", "plausible", "plausibility",
    ]  # fmt: skip
    assert list(six_lot_tables.potency.columns) == [
        "plate", "lot", "reference_lot", "rp", "rp_lo", "rp_hi", "parallel_f_p", "slope_ratio",
        "slope_ratio_lo", "slope_ratio_hi", "equivalent", "p_vs_reference", "p_holm", "status", "reason", "df",
        "ci", "slope_ratio_ci",
    ]  # fmt: skip
    assert list(six_lot_tables.lots_differ.columns) == ["plate", "f", "df1", "df2", "p"]


def test_rp_recovered_within_ci(six_lot_tables: potency.PlateTables) -> None:
    table = six_lot_tables.potency.set_index("lot")
    assert sorted(table.index) == ["L1", "L2", "L3", "L4", "L5"]
    assert (table["status"] == "ok").all()
    for lot, rp in SIX_LOTS.items():
        if lot != "REF":
            assert table.loc[lot, "rp_lo"] < rp < table.loc[lot, "rp_hi"]
            assert table.loc[lot, "rp"] == pytest.approx(rp, rel=0.3)
    assert (table["df"] == 96 - 9).all()  # 3 shared (b, c, d) + 6 IC50s


def test_rp_equals_ratio_of_joint_ic50s() -> None:
    points = simulate_plate(np.random.default_rng(2), {"REF": 1.0, "T": 2.0})
    row = potency.analyse_plate(points, "P", "REF").potency.iloc[0]
    group = points["lot"].fillna("REF")
    joint = fit.fit_joint(points["conc"], points["lysis"], group, "LL.4", fit.PARALLEL, ("REF", "T"))
    assert row["rp"] == pytest.approx(joint.value("e", "REF") / joint.value("e", "T"), rel=1e-6)


def test_fits_table(six_lot_tables: potency.PlateTables) -> None:
    fits = six_lot_tables.fits
    assert len(fits) == 6 and fits["converged"].all()
    ref = fits.set_index("lot").loc["REF"]
    assert ref["ic50_lo"] < IC50_REF < ref["ic50_hi"]
    assert ref["df"] == 14 + 12 - 4


def test_several_models_per_lot() -> None:
    points = simulate_plate(np.random.default_rng(3), {"REF": 1.0, "T": 1.3})
    fits = potency.analyse_plate(
        points, "P", "REF", potency.PotencyConfig.from_settings({"fit": {"models": ["LL.3", "LL.4", "LL.5"]}})
    ).fits
    assert list(fits["model"]) == ["LL.3", "LL.4", "LL.5"] * 2
    assert list(fits["df"]) == [23, 22, 21] * 2


def test_lots_differ(six_lot_tables: potency.PlateTables) -> None:
    row = six_lot_tables.lots_differ.iloc[0]
    assert (row["df1"], row["df2"]) == (5, 87) and row["p"] < 1e-6
    same = simulate_plate(np.random.default_rng(4), {"REF": 1.0, "A": 1.0, "B": 1.0})
    assert potency.analyse_plate(same, "P", "REF").lots_differ.iloc[0]["p"] > 0.05


def test_different_slope_fails_equivalence() -> None:
    points = simulate_plate(
        np.random.default_rng(5), {"REF": 1.0, "SAME": 1.2, "STEEP": 1.2}, sd=0.5, slopes={"STEEP": 3.0}
    )
    table = potency.analyse_plate(points, "P", "REF").potency.set_index("lot")
    assert bool(table.loc["SAME", "equivalent"]) is True
    assert bool(table.loc["STEEP", "equivalent"]) is False
    assert table.loc["STEEP", "slope_ratio_lo"] > 1.25
    assert table.loc["STEEP", "parallel_f_p"] < 0.001


def test_missing_reference_gives_failed_rows() -> None:
    points = simulate_plate(np.random.default_rng(6), {"A": 1.0, "B": 2.0})
    tables = potency.analyse_plate(points, "P", "REF")
    assert list(tables.potency["lot"]) == ["A", "B"]
    assert (tables.potency["status"] == "failed").all()
    assert tables.potency["reason"].str.contains("reference lot REF missing").all()
    assert tables.lots_differ["p"].isna().all()
    assert len(tables.fits) == 2


def test_single_lot_and_sparse_lot() -> None:
    only_ref = potency.analyse_plate(simulate_plate(np.random.default_rng(7), {"REF": 1.0}), "P", "REF")
    assert only_ref.potency.empty and list(only_ref.potency.columns) == list(potency.POTENCY_COLUMNS)
    points = simulate_plate(np.random.default_rng(8), {"REF": 1.0, "OK": 1.5, "SPARSE": 1.0})
    points = points[(points["lot"] != "SPARSE") | (points["conc"] < 0.2)]
    table = potency.analyse_plate(points, "P", "REF").potency.set_index("lot")
    assert table.loc["SPARSE", "status"] == "failed" and "concentrations" in table.loc["SPARSE", "reason"]
    assert table.loc["OK", "status"] == "ok"


def test_garbage_does_not_raise() -> None:
    points = pd.DataFrame(
        {"lot": ["REF", "T", None, "T"], "conc": [1.0, 1.0, 0.0, np.nan], "lysis": [5.0, 5.0, 5.0, 1.0]}
    )
    tables = potency.analyse_plate(points, "P", "REF")
    assert (tables.potency["status"] == "failed").all()
    assert not tables.fits["converged"].any()


def test_holm(six_lot_tables: potency.PlateTables) -> None:
    table = six_lot_tables.potency.sort_values("p_vs_reference")
    raw, adj = table["p_vs_reference"].to_numpy(), table["p_holm"].to_numpy()
    assert np.all(adj >= raw) and np.all(np.diff(adj) >= 0) and np.all(adj <= 1)
    assert potency.holm([0.01, 0.04, 0.03, np.nan]) == pytest.approx([0.03, 0.06, 0.06, np.nan], nan_ok=True)


def test_analyse_plate_time() -> None:
    points = simulate_plate(np.random.default_rng(9), SIX_LOTS)
    start = time.perf_counter()
    for _ in range(5):
        potency.analyse_plate(points, "P", "REF")
    per_plate = (time.perf_counter() - start) / 5
    print(f"analyse_plate, 6 lots, 96 wells: {per_plate * 1e3:.0f} ms")
    assert per_plate < 0.5


# ---------------------------------------------------------------- combination

T10 = stats.t.ppf(0.975, 10)
WEIGHTS = np.array([100.0, 400.0, 25.0])


def limits(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RP limits whose log length gives w = 4 t^2 / L^2 = WEIGHTS (df 10)."""
    half = T10 / np.sqrt(WEIGHTS)
    return np.exp(m - half), np.exp(m + half)


def test_combination_by_hand_homogeneous() -> None:
    m = np.array([0.1, 0.0, 0.2])
    res = combination.combine_lot(m, *limits(m), [10, 10, 10])
    mbar = 15.0 / 525.0  # (100*0.1 + 400*0 + 25*0.2) / 525
    chi2 = 100 * (0.1 - mbar) ** 2 + 400 * mbar**2 + 25 * (0.2 - mbar) ** 2
    assert chi2 == pytest.approx(1.5714286, rel=1e-7)
    assert res.method == "weighted" and res.n == 3
    assert res.chi2 == pytest.approx(chi2, rel=1e-10)
    assert res.p == pytest.approx(np.exp(-chi2 / 2), rel=1e-10)  # chi2 tail on 2 df
    assert res.rp == pytest.approx(np.exp(mbar), rel=1e-10)
    half = stats.t.ppf(0.975, 30) / np.sqrt(525.0)
    assert (res.lo, res.hi) == pytest.approx((np.exp(mbar - half), np.exp(mbar + half)), rel=1e-10)


def test_combination_heterogeneous_is_semi_weighted() -> None:
    """Ph. Eur. 5.3 6.2.4 (4th-9th editions): s*2 about the unweighted mean, CI with t = 2."""
    m = np.array([0.5, 0.1, -0.5])
    res = combination.combine_lot(m, *limits(m), [10, 10, 10])
    mtilde = 0.1 / 3  # the unweighted mean (the weighted one is 47.5 / 525)
    s2 = np.sum((m - mtilde) ** 2) / 2 - (0.01 + 0.0025 + 0.04) / 3
    w_semi = 1.0 / (1.0 / WEIGHTS + s2)
    centre = np.sum(w_semi * m) / np.sum(w_semi)
    half = 2.0 / np.sqrt(np.sum(w_semi))
    assert res.method == "semi-weighted" and res.p < 0.05
    assert res.rp == pytest.approx(np.exp(centre), rel=1e-10)
    assert (res.lo, res.hi) == pytest.approx((np.exp(centre - half), np.exp(centre + half)), rel=1e-10)


def test_semi_weighted_two_plates_is_not_t_on_one_df() -> None:
    """At two plates, t on n - 1 = 1 df (12.7) made the interval useless; the text's t = 2 does not."""
    m = np.array([0.3, -0.3])
    res = combination.combine_lot(m, np.exp(m - 0.05), np.exp(m + 0.05), [20, 20])
    assert res.method == "semi-weighted"
    w = 4 * stats.t.ppf(0.975, 20) ** 2 / 0.1**2
    s2 = np.sum(m**2) / 1 - 1 / w
    half = 2.0 * np.sqrt((1 / w + s2) / 2)
    assert (res.lo, res.hi) == pytest.approx((np.exp(-half), np.exp(half)), rel=1e-10)
    assert res.hi / res.lo < 5


def test_combine_table() -> None:
    rows = pd.DataFrame(
        {
            "lot": ["A", "A", "A", "B", "C"],
            "reference_lot": "R",
            "rp": [1.0, 1.2, 9.9, 0.5, np.nan],
            "rp_lo": [0.8, 1.0, np.nan, 0.4, np.nan],
            "rp_hi": [1.25, 1.44, np.nan, 0.6, np.nan],
            "df": [30, 30, 30, 30, np.nan],
            "status": ["ok", "ok", "failed", "ok", "failed"],
        }
    )
    out = combination.combine(rows).set_index("lot")
    assert list(out.reset_index().columns) == list(POTENCY_COMBINED.names)
    assert out.loc["A", "n_plates"] == 2 and 1.0 < out.loc["A", "rp"] < 1.2
    assert out.loc["B", "method"] == "single plate" and out.loc["B", "rp_lo"] == 0.4
    assert out.loc["C", "n_plates"] == 0 and out.loc["C", "method"] == "no valid plates"


def test_combined_coverage() -> None:
    """40 lots x 5 simulated plates: the combined 95 % CI covers the true RP in ~95 %."""
    rng = np.random.default_rng(2024)
    true_rp = 1.6
    rows = []
    for group in range(40):
        for plate in range(5):
            points = simulate_plate(rng, {"REF": 1.0, "T": true_rp}, sd=3.0)
            row = potency.analyse_plate(points, f"P{plate}", "REF").potency.assign(lot=f"T{group}")
            rows.append(row)
    combined = combination.combine(pd.concat(rows, ignore_index=True))
    assert (combined["n_plates"] == 5).all()
    covered = ((combined["rp_lo"] < true_rp) & (true_rp < combined["rp_hi"])).mean()
    print(f"coverage of the combined 95 % CI: {covered:.3f}")
    assert 0.875 <= covered
    single = pd.concat(rows)
    assert (np.log(combined["rp_hi"] / combined["rp_lo"])).median() < np.log(single["rp_hi"] / single["rp_lo"]).median()


def test_slope_ratio_is_90_percent_fieller_from_free_pair_fit() -> None:
    points = simulate_plate(np.random.default_rng(10), {"REF": 1.0, "T": 1.4, "U": 0.7})
    row = potency.analyse_plate(points, "P", "REF").potency.set_index("lot").loc["T"]
    pair = points[points["lot"].isin(["REF", "T"]) | points["lot"].isna()]
    free = fit.fit_joint(
        pair["conc"], pair["lysis"], pair["lot"].fillna("REF"), "LL.4", potency.SHARED_TOP, ("REF", "T")
    )
    assert free.index("d", "T") == free.index("d", "REF") and free.index("c", "T") != free.index("c", "REF")
    i, j = free.index("b", "T"), free.index("b", "REF")
    expected = fit.fieller_ratio(
        free.estimates[i], free.estimates[j], free.vcov[i, i], free.vcov[j, j], free.vcov[i, j], free.df, 0.90
    )
    # the pipeline starts the free fit at the parallel optimum, this one from the data: the same optimum
    # within the optimiser's tolerance
    assert (row["slope_ratio"], row["slope_ratio_lo"], row["slope_ratio_hi"]) == pytest.approx(
        (expected.ratio, expected.lo, expected.hi), rel=1e-4
    )


def test_a_lot_named_untreated_is_a_lot_like_any_other(six_lot_tables: potency.PlateTables) -> None:
    """Untreated wells are those without a lot, never wells whose lot is called 'untreated'."""
    points = simulate_plate(np.random.default_rng(1), SIX_LOTS)
    renamed = points.assign(lot=points["lot"].replace({"L3": "untreated"}))
    tables = potency.analyse_plate(renamed, "P1", "REF")
    got = tables.potency.set_index("lot").loc["untreated"]
    want = six_lot_tables.potency.set_index("lot").loc["L3"]
    assert got["status"] == "ok"
    for col in ("rp", "rp_lo", "rp_hi", "parallel_f_p", "slope_ratio"):
        assert got[col] == pytest.approx(want[col], rel=1e-9), col
    fits = tables.fits.set_index("lot")
    assert fits.loc["untreated", "ic50"] == pytest.approx(six_lot_tables.fits.set_index("lot").loc["L3", "ic50"])


def _by_hand_rss(x, y, lot, shared_top: bool) -> tuple[float, int]:
    """RSS and residual df of the pair's free (shared top) or parallel LL.4 model, fitted here with
    scipy's least_squares on a model written out by hand: the untreated wells (dose 0) predict d, the
    shared top, whichever lot they are counted with."""
    from scipy.optimize import least_squares

    t = lot == "T"
    lx = np.where(x > 0, np.log(np.where(x > 0, x, 1.0)), -np.inf)

    def model(theta):
        if shared_top:  # b_R, b_T, c_R, c_T, d, ln e_R, ln e_T
            b = np.where(t, theta[1], theta[0])
            c = np.where(t, theta[3], theta[2])
            d, le = theta[4], np.where(t, theta[6], theta[5])
        else:  # b, c, d, ln e_R, ln e_T
            b, c, d = theta[0], theta[1], theta[2]
            le = np.where(t, theta[4], theta[3])
        u = np.where(np.isinf(lx), -np.inf, b * (lx - le))
        return c + (d - c) / (1.0 + np.exp(u))

    start = [1.5, 1.5, 15, 15, 60, 0.0, 0.0] if shared_top else [1.5, 15, 60, 0.0, 0.0]
    res = least_squares(lambda th: model(th) - y, start, xtol=1e-14, ftol=1e-14, gtol=1e-14, max_nfev=20000)
    return float(np.sum(res.fun**2)), x.size - len(start)


@pytest.mark.parametrize("rp", [0.35, 1.0, 2.8])
def test_free_model_shares_the_top_and_its_f_test_equals_hand_computation(rp: float) -> None:
    """drc pmodels = data.frame(lot, lot, 1, lot): the free model's RSS and the parallelism F test
    equal an independent least-squares fit of the model written out by hand, for weak and potent lots."""
    points = simulate_plate(np.random.default_rng(11), {"REF": 1.0, "T": rp})
    pair = points.assign(lot=points["lot"].fillna("REF"))
    x, y, lot = pair["conc"].to_numpy(float), pair["lysis"].to_numpy(float), pair["lot"].to_numpy(str)
    free = fit.fit_joint(x, y, lot, "LL.4", potency.SHARED_TOP, ("REF", "T"))
    rss_free, df_free = _by_hand_rss(x, y, lot, shared_top=True)
    rss_par, df_par = _by_hand_rss(x, y, lot, shared_top=False)
    assert free.converged and free.df == df_free == x.size - 7
    assert free.rss == pytest.approx(rss_free, rel=1e-7)
    f = ((rss_par - rss_free) / (df_par - df_free)) / (rss_free / df_free)
    p = stats.f.sf(f, df_par - df_free, df_free)
    row = potency.analyse_plate(points, "P", "REF").potency.set_index("lot").loc["T"]
    assert row["parallel_f_p"] == pytest.approx(p, rel=1e-5)


def test_non_parallel_lot_leaves_the_refitted_joint_fit() -> None:
    """A lot failing the parallelism F test keeps its row, but the joint fit is refitted without it: the
    parallel lots' RPs equal those of a plate without the non-parallel lot."""
    rng = np.random.default_rng(3)
    points = simulate_plate(rng, {"REF": 1.0, "T": 1.3, "BAD": 1.0}, slopes={"BAD": 6.0}, sd=1.0)
    tables = potency.analyse_plate(points, "P", "REF")
    pot = tables.potency.set_index("lot")
    assert pot.loc["BAD", "parallel_f_p"] < 0.05 and pot.loc["T", "parallel_f_p"] >= 0.05
    assert "left out of the refit" in pot.loc["BAD", "reason"]
    joint = tables.joint.set_index("lot")
    assert not joint.loc["BAD", "in_joint"] and joint.loc["T", "in_joint"]
    alone = potency.analyse_plate(points[points["lot"] != "BAD"], "P", "REF").potency.set_index("lot")
    assert pot.loc["T", "rp"] == pytest.approx(alone.loc["T", "rp"], rel=1e-6)
    assert pot.loc["T", "rp_lo"] == pytest.approx(alone.loc["T", "rp_lo"], rel=1e-5)


def test_undetermined_bottom_falls_back_to_a_slope_only_test() -> None:
    """A lot whose curve does not reach its bottom within the doses (RP 0.04: IC50 above the top dose) keeps a
    parallelism test: the slope-only model (top and bottom shared), with the reason saying so."""
    points = simulate_plate(np.random.default_rng(7), {"REF": 1.0, "T": 0.04})
    row = potency.analyse_plate(points, "P", "REF").potency.set_index("lot").loc["T"]
    assert "slope-only parallelism test" in row["reason"]
    pair = points.assign(lot=points["lot"].fillna("REF"))
    args = (pair["conc"], pair["lysis"], pair["lot"], "LL.4")
    assert not fit.fit_joint(*args, potency.SHARED_TOP, ("REF", "T")).converged
    slope_only = fit.fit_joint(*args, potency.SLOPE_ONLY, ("REF", "T"))
    parallel = fit.fit_joint(*args, fit.PARALLEL, ("REF", "T"))
    assert row["parallel_f_p"] == pytest.approx(fit.compare_fits(parallel, slope_only).p, rel=1e-4)
    assert row["equivalent"] is False or not row["equivalent"]  # no bottom difference: not shown equivalent


def test_plausibility_is_judged_on_the_joint_fit_the_same_for_weak_and_potent_lots() -> None:
    """A lot whose IC50 in the joint parallel fit lies more than 10 x outside its doses leaves the fit,
    weak (IC50 ~17 x the top dose) or potent (~1/25 of the lowest dose) alike; the others are refitted."""
    rps = {"REF": 1.0, "L1": 1.3, "WEAK": 0.003, "POTENT": 500.0}
    points = simulate_plate(np.random.default_rng(7), rps)
    t = potency.analyse_plate(points, "P", "REF")
    pot = t.potency.set_index("lot")
    for lot, where in (("WEAK", "x the top dose"), ("POTENT", "bound")):
        assert pot.loc[lot, "status"] == "failed", lot
        assert pot.loc[lot, "reason"].startswith("implausible joint parallel fit (LL.4): IC50"), pot.loc[lot, "reason"]
        assert where in pot.loc[lot, "reason"]
    assert pot.loc["L1", "status"] == "ok" and pot.loc["L1", "rp_lo"] < pot.loc["L1", "rp"] < pot.loc["L1", "rp_hi"]
    # the joint fit the RP comes from is the refit without them: its curve equals a fit of REF and L1 alone
    assert list(t.joint["lot"]) == ["L1"]
    keep = points[points["lot"].isna() | points["lot"].isin(["REF", "L1"])]
    alone = potency.analyse_plate(keep, "P", "REF").potency.set_index("lot")
    assert pot.loc["L1", "rp"] == pytest.approx(alone.loc["L1", "rp"], rel=1e-5)  # the optimiser's tolerance
    # the shared curve is judged once, for every lot: a bottom outside -20 ... 120 % lysis
    import dataclasses

    x, y, g = potency._clean(keep).select(["REF", "L1"], "REF")
    joint = fit.fit_joint(x, y, g, "LL.4", fit.PARALLEL, ("REF", "L1"))
    cfg = potency.PotencyConfig.from_settings({})
    assert potency.joint_plausibility(joint, potency._clean(keep), ["REF", "L1"], cfg) == ("", {})
    est = joint.estimates.copy()
    est[joint.index("c")] = -50.0
    shared, own = potency.joint_plausibility(dataclasses.replace(joint, estimates=est), potency._clean(keep),
                                             ["REF", "L1"], cfg)  # fmt: skip
    assert shared.startswith("bottom -50 % lysis outside -20 to 120 %") and own == {}
