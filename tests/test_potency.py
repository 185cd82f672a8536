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
    m = np.array([0.5, 0.0, -0.5])
    res = combination.combine_lot(m, *limits(m), [10, 10, 10])
    mbar = 37.5 / 525.0
    s2 = np.sum((m - mbar) ** 2) / 2 - (0.01 + 0.0025 + 0.04) / 3
    w_semi = 1.0 / (1.0 / WEIGHTS + s2)
    centre = np.sum(w_semi * m) / np.sum(w_semi)
    half = stats.t.ppf(0.975, 2) / np.sqrt(np.sum(w_semi))
    assert res.method == "semi-weighted" and res.p < 0.05
    assert res.rp == pytest.approx(np.exp(centre), rel=1e-10)
    assert (res.lo, res.hi) == pytest.approx((np.exp(centre - half), np.exp(centre + half)), rel=1e-10)


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
    free = fit.fit_joint(pair["conc"], pair["lysis"], pair["lot"].fillna("REF"), "LL.4", fit.FREE, ("REF", "T"))
    i, j = free.index("b", "T"), free.index("b", "REF")
    expected = fit.fieller_ratio(
        free.estimates[i], free.estimates[j], free.vcov[i, i], free.vcov[j, j], free.vcov[i, j], free.df, 0.90
    )
    assert (row["slope_ratio"], row["slope_ratio_lo"], row["slope_ratio_hi"]) == pytest.approx(
        (expected.ratio, expected.lo, expected.hi), rel=1e-6
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
