"""Plate QC rules: spontaneous release, CV, lytic units, vehicle suppression, flags."""

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from cr51.qc import fit_lytic_units, lytic_units_per_1e7, plate_qc, vehicle_suppression
from cr51.schema import QC
from cr51.settings import Analysis

QC_DEFAULTS = Analysis.from_config({}).qc


def wells_table(rows):
    df = pd.DataFrame(rows, columns=["well", "role", "lot", "conc", "et_ratio", "lysis_pct"])
    df["plate"] = "P"
    df["excluded"] = False
    df["exclusion_reason"] = ""
    df["outlier"] = False
    df["cpm"] = 1000.0
    return df


def titration(a=80.0, k=0.04):
    rows = []
    for et in (50, 25, 12.5, 6.25):
        y = a * (1 - math.exp(-k * et))
        rows += [(f"H{et}", "sample", None, 0.0, et, y)] * 3
    return rows


def summary(cv=5.0):
    return pd.DataFrame({"cv_pct": [cv, 3.0]})


def test_lytic_units_hand_computed():
    a, k = 80.0, 0.04
    et20 = -math.log(1 - 20 / a) / k
    assert lytic_units_per_1e7(a, k, 10_000) == pytest.approx(1e7 / (et20 * 10_000))
    assert lytic_units_per_1e7(a, k, 10_000) == pytest.approx(139.04, rel=1e-4)
    assert math.isnan(lytic_units_per_1e7(15.0, k, 10_000))  # plateau below 20 %
    w = wells_table(titration(a, k))
    fa, fk = fit_lytic_units(w["et_ratio"].to_numpy(), w["lysis_pct"].to_numpy())
    assert (fa, fk) == pytest.approx((a, k), rel=1e-6)
    assert fit_lytic_units(np.array([50.0, 50.0]), np.array([30.0, 31.0])) is None


def test_pass_and_values():
    w = wells_table(titration())
    row = plate_qc(w, summary(), {"targets_per_well": 10_000.0, "donor": "D1"}, 400.0, 4000.0, QC_DEFAULTS)
    assert tuple(row) == QC.names
    assert row["spontaneous_pct_of_max"] == pytest.approx(10.0)
    assert row["untreated_lysis_pct"] == pytest.approx(80 * (1 - math.exp(-2)))
    assert row["lu20_per_1e7"] == pytest.approx(139.04, rel=1e-4)
    assert row["status"] == "pass" and row["flags"] == ""


def test_high_spontaneous_fails_and_cv_flags():
    w = wells_table(titration())
    row = plate_qc(w, summary(cv=25.0), {}, 900.0, 4000.0, QC_DEFAULTS)
    assert row["spontaneous_pct_of_max"] == pytest.approx(22.5)
    assert row["status"] == "fail"
    flags = row["flags"].split(";")
    assert "SPONTANEOUS_HIGH" in flags and "CV_HIGH" in flags and "NO_TARGETS_PER_WELL" in flags
    assert math.isnan(row["lu20_per_1e7"])
    # the threshold is configurable: 25 % passes the same plate
    assert (
        plate_qc(w, summary(), {}, 900.0, 4000.0, replace(QC_DEFAULTS, max_spontaneous_pct_of_max=25))["status"]
        == "pass"
    )


def test_vehicle_suppression_per_lot_and_flag():
    rows = titration() + [
        ("E1", "vehicle", "L1", 10.0, 50, 0.85 * 80 * (1 - math.exp(-2))),
        ("E2", "vehicle", "L2", 10.0, 50, 0.98 * 80 * (1 - math.exp(-2))),
    ]
    w = wells_table(rows)
    v = vehicle_suppression(w).set_index("lot")
    assert v.loc["L1", "vehicle_suppression_pct"] == pytest.approx(15.0)
    assert v.loc["L2", "vehicle_suppression_pct"] == pytest.approx(2.0)
    row = plate_qc(w, summary(), {"targets_per_well": 1e4}, 400.0, 4000.0, QC_DEFAULTS)
    assert row["vehicle_suppression_pct"] == pytest.approx(15.0)
    assert "VEHICLE_SUPPRESSION" in row["flags"].split(";") and row["status"] == "pass"


def test_no_untreated_wells_flagged():
    w = wells_table([("A1", "sample", "L", 1.0, 50, 30.0)])
    row = plate_qc(w, summary(), {}, 400.0, 4000.0, QC_DEFAULTS)
    assert "NO_UNTREATED" in row["flags"] and math.isnan(row["untreated_lysis_pct"])


#: CV columns a lysis table may bring: gaps (NaN, None, pd.NA), ties of signed zeros, a role with no
#: value, one with none at all.
CV_CASES = [
    ([("spontaneous", 4.0), ("spontaneous", np.nan), ("maximum", 7.5), ("spontaneous", 12.25), ("sample", 99.0)]),
    ([("spontaneous", np.nan), ("maximum", np.nan)]),
    ([("spontaneous", 0.0), ("spontaneous", -0.0), ("maximum", -0.0), ("maximum", 0.0)]),
    ([("maximum", 3.0), ("maximum", 3.0), ("sample", 1.0)]),
    ([("sample", 5.0)]),
]


@pytest.mark.parametrize("rows", CV_CASES)
@pytest.mark.parametrize("dtype", ["float64", "object", "Float64"])
def test_control_cv_is_pandas_largest_cv_of_the_role(rows, dtype):
    from cr51.qc import _control_cv

    lysis = pd.DataFrame(rows, columns=["role", "cv_pct"]).astype({"cv_pct": dtype})
    if dtype == "object":
        lysis.loc[lysis["cv_pct"].isna(), "cv_pct"] = None
    for role in ("spontaneous", "maximum"):
        cv = lysis.loc[lysis["role"] == role, "cv_pct"].astype(float)  # what qc.csv held before
        want = float(cv.max()) if cv.notna().any() else math.nan
        got = _control_cv(lysis, role)
        assert (math.isnan(got) and math.isnan(want)) or (
            got == want and math.copysign(1, got) == math.copysign(1, want)
        )
    assert math.isnan(_control_cv(lysis.drop(columns="role"), "maximum"))


def well_flags(changes: dict[int, dict]) -> tuple[list[str], str]:
    """plate_qc's flags and reason for the titration plate plus two controls, rows changed by ``changes``."""
    rows = titration() + [("G1", "spontaneous", None, 0.0, 0.0, math.nan), ("G5", "maximum", None, 0.0, 0.0, math.nan)]
    w = wells_table(rows).astype({"exclusion_reason": object})
    for i, values in changes.items():
        for col, v in values.items():
            w.loc[w.index[i], col] = v
    row = plate_qc(w, summary(), {"targets_per_well": 10_000.0}, 400.0, 4000.0, QC_DEFAULTS)
    return row["flags"].split(";"), row["reason"]


def test_well_flags_from_exclusions_roles_and_outliers():
    control_spont, control_max = len(titration()), len(titration()) + 1
    assert well_flags({}) == ([""], "")
    for reason in ("excluded in the layout: bubble", "Dixon Q outlier"):
        assert "EXCLUDED_WELLS" in well_flags({0: {"excluded": True, "exclusion_reason": reason}})[0]
    flags = well_flags({0: {"excluded": True, "exclusion_reason": "no count in the export"}})[0]
    assert "MISSING_WELLS" in flags and "EXCLUDED_WELLS" not in flags
    # a reason on a well that is not excluded, or a missing reason, is no exclusion
    assert well_flags(
        {0: {"exclusion_reason": "excluded in the layout"}, 1: {"excluded": True, "exclusion_reason": None}}
    ) == ([""], "")
    assert well_flags({2: {"role": ""}})[0] == ["EXTRA_WELLS"]
    flags, reason = well_flags({control_max: {"outlier": True, "cpm": 5123.4}, 3: {"outlier": True}})
    assert flags == ["CONTROL_OUTLIER", "OUTLIER"]
    assert (
        reason == "maximum well G5 (5123 CPM) is an outlier and stays in the control mean (outliers.exclude is false)"
    )
    flags, reason = well_flags(
        {control_spont: {"outlier": True, "excluded": True, "exclusion_reason": "Dixon Q outlier"}}
    )
    assert flags == ["OUTLIER", "EXCLUDED_WELLS"] and reason == ""  # an excluded outlier leaves the mean


def hostile_wells() -> pd.DataFrame:
    """Wells of every kind the selections must tell apart: roles missing or empty, gaps in conc,
    lysis, CPM and the counter's Info, exclusions, a conc of -0.0."""
    roles = ["sample", "sample", "sample", "sample", None, "", "background", "maximum", "sample", "vehicle", "sample"]
    n = len(roles)
    return pd.DataFrame(
        {
            "plate": "P",
            "role": pd.Series(roles, dtype="str"),
            "conc": [0.0, -0.0, 0.1, np.nan, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            "et_ratio": [50.0] * n,
            "lysis_pct": [30.0, 31.0, 20.0, 25.0, 30.0, 30.0, 30.0, np.nan, np.nan, 28.0, 33.0],
            "excluded": [False, False, False, False, False, False, False, False, False, False, True],
            "cpm": [1000.0, np.nan, 900.0, 950.0, 1000.0, 1000.0, 10.0, 5000.0, 1000.0, 980.0, 1200.0],
            "counter_info": pd.Series(["I", "I", "", None, "I", "I", "I", "X", np.nan, 0, "I"], dtype=object),
        }
    )


def test_untreated_and_counter_flags_are_the_pandas_selections():
    from cr51.qc import counter_flagged, is_untreated, untreated

    w = hostile_wells().set_index(pd.Index(range(100, 111)))
    want = ~w["excluded"] & w["lysis_pct"].notna() & (w["role"] == "sample") & (w["conc"] == 0)
    assert is_untreated(w).tolist() == want.tolist() == [True, True] + [False] * 9
    pd.testing.assert_frame_equal(untreated(w), w[want])
    pd.testing.assert_frame_equal(untreated(w, ["et_ratio", "lysis_pct"]), w.loc[want, ["et_ratio", "lysis_pct"]])
    used = ~w["excluded"] & w["cpm"].notna() & ~w["role"].isin(["", "background"])
    flagged = used & (w["counter_info"].fillna("").astype(str) != "")
    pd.testing.assert_series_equal(counter_flagged(w), flagged)
    assert counter_flagged(w).tolist() == [True, False, False, False, True, False, False, True, False, True, False]


def test_with_vehicle_adds_each_lots_largest_vehicle_suppression_and_its_flag():
    from cr51.plate import with_vehicle

    def reference(potency, wells, limit_pct):  # the pandas formulation these columns were first made with
        veh = vehicle_suppression(wells)
        out = potency.copy()
        if veh.empty:
            out["vehicle_suppression_pct"] = np.nan
        else:
            per_lot = veh.groupby("lot")["vehicle_suppression_pct"].max()
            out["vehicle_suppression_pct"] = out["lot"].map(per_lot).astype(float)
        out["vehicle_flag"] = (out["vehicle_suppression_pct"] > limit_pct).map({True: "VEHICLE_SUPPRESSION", False: ""})
        return out

    y = 80 * (1 - math.exp(-2))
    vehicle = wells_table(
        titration()
        + [("E1", "vehicle", "L1", 10.0, 50, 0.85 * y), ("E2", "vehicle", "L1", 3.0, 50, 0.95 * y)]
        + [("E3", "vehicle", "L2", 10.0, 50, 0.98 * y)]
    )
    potency = pd.DataFrame({"lot": ["L1", "L2", "L3"], "rp": [1.1, 0.9, 1.0]}, index=[4, 5, 6])
    at_limit = float(vehicle_suppression(vehicle)["vehicle_suppression_pct"].max())  # not above it: no flag
    for wells in (vehicle, wells_table(titration())):
        for pot in (potency, potency.iloc[:0]):
            for limit in (10.0, at_limit):
                pd.testing.assert_frame_equal(
                    with_vehicle(pot, wells, limit), reference(pot, wells, limit), check_exact=True
                )
    assert with_vehicle(potency, vehicle, at_limit)["vehicle_flag"].tolist() == ["", "", ""]
    out = with_vehicle(potency, vehicle, 10.0)
    assert out["vehicle_suppression_pct"].tolist()[:2] == pytest.approx([15.0, 2.0])
    assert math.isnan(out["vehicle_suppression_pct"].iloc[2])
    assert out["vehicle_flag"].tolist() == ["VEHICLE_SUPPRESSION", "", ""]
