"""Which plates enter a lot's combined potency, with the reason for every plate left out."""

import numpy as np
import pandas as pd
import pytest

from cr51.combination import combine_plates, exclusion_reason, select

SETTINGS = {"potency": {"parallelism_gate": "f_test", "alpha": 0.05, "ci_level": 0.95}}


def row(plate, rp=1.2, lo=0.9, hi=1.6, f_p=0.5, equivalent=True, status="ok", reason="", lot="L1"):
    return dict(plate=plate, lot=lot, reference_lot="R", rp=rp, rp_lo=lo, rp_hi=hi, parallel_f_p=f_p,
                equivalent=equivalent, status=status, reason=reason, df=60)  # fmt: skip


@pytest.mark.parametrize(
    "kwargs, qc, gate, expected",
    [
        ({}, "pass", "f_test", ""),
        ({}, "fail", "f_test", "plate failed QC"),
        ({}, None, "f_test", "plate has no QC result"),
        ({"status": "failed", "reason": "reference lot R missing on plate"}, "pass", "f_test",
         "no relative potency: reference lot R missing on plate"),
        ({"f_p": 0.01}, "pass", "f_test", "not parallel to the reference (F test p = 0.01 < 0.05)"),
        ({"f_p": np.nan}, "pass", "f_test", "parallelism F test not available"),
        ({"equivalent": False}, "pass", "f_test", ""),
        ({"equivalent": False}, "pass", "equivalence", "not equivalent to the reference within the margins (USP <1032>)"),
        ({"equivalent": False, "f_p": 0.01}, "pass", "none", ""),
        ({"equivalent": "True"}, "pass", "both", ""),
        ({"lo": -0.7, "hi": 5.8}, "pass", "f_test", "relative-potency interval not bounded above zero: too imprecise to combine"),
        ({"lo": np.nan}, "pass", "f_test", "relative-potency interval not bounded above zero: too imprecise to combine"),
    ],
)  # fmt: skip
def test_exclusion_reasons(kwargs, qc, gate, expected):
    assert exclusion_reason(row("P", **kwargs), qc, gate, 0.05) == expected


def test_every_plate_is_listed_and_only_good_ones_combined():
    potency = pd.DataFrame(
        [row("P1", rp=1.1, lo=0.8, hi=1.5), row("P2", rp=1.3, lo=1.0, hi=1.7), row("P3", lo=-0.5, hi=9.0),
         row("P4"), row("P5", f_p=0.001)]
    )  # fmt: skip
    qc = pd.DataFrame({"plate": ["P1", "P2", "P3", "P4", "P5"], "status": ["pass", "pass", "pass", "fail", "pass"]})
    inputs = select(potency, qc, "f_test", 0.05)
    assert list(inputs["plate"]) == ["P1", "P2", "P3", "P4", "P5"]
    assert list(inputs["included"]) == [True, True, False, False, False]
    combined, listed = combine_plates(potency, qc, SETTINGS)
    assert "df" not in listed.columns and len(listed) == 5
    c = combined.iloc[0]
    assert c["n_plates"] == 2 and c["method"] == "weighted"
    assert np.isfinite(c["rp"]) and c["rp_lo"] < c["rp"] < c["rp_hi"]
    # the weighted mean of the two log potencies lies between them
    assert 1.1 < c["rp"] < 1.3


def test_lot_without_usable_plates_is_reported_not_dropped():
    potency = pd.DataFrame([row("P1", status="failed", reason="joint parallel fit did not converge")])
    qc = pd.DataFrame({"plate": ["P1"], "status": ["pass"]})
    combined, _ = combine_plates(potency, qc, SETTINGS)
    assert combined.iloc[0]["n_plates"] == 0 and combined.iloc[0]["method"] == "no valid plates"
