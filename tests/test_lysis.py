"""Joining counts to the layout, % specific lysis and the per-condition summary, on hand-computed cases."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from cr51.layout import load_layout
from cr51.lysis import (
    PlateError,
    _join_counts_outer,
    add_lysis,
    control_means,
    flag_outliers,
    join_counts,
    specific_lysis,
    summarise,
)
from cr51.schema import LYSIS, WELLS

LAYOUT = """
[meta]
path = "e.csv"
[expt]
reference_lot = "R"
[block.4x1.A1]
role = "spontaneous"
[block.4x1.A5]
role = "maximum"
[block.3x1.B1]
role = "sample"
lot = "R"
conc = 1
et_ratio = 50
[block.3x1.B4]
role = "sample"
conc = 0
et_ratio = 50
[well.B7]
role = "sample"
lot = "R"
conc = 3
et_ratio = 50
exclude = true
exclude_reason = "bubble"
"""
CPM = {
    "A1": 500, "A2": 520, "A3": 480, "A4": 500,
    "A5": 4500, "A6": 4400, "A7": 4600, "A8": 4500,
    "B1": 2500, "B2": 2700, "B3": 2300,
    "B4": 3300, "B5": 3300, "B6": 3300,
    "B7": 9999,
}  # fmt: skip


def export(counts):
    df = pd.DataFrame({"well": list(counts), "cpm": [float(v) for v in counts.values()]})
    df["rack"] = pd.array([pd.NA] * len(df), dtype="Int64")
    df["pos"] = pd.array([pd.NA] * len(df), dtype="Int64")
    return SimpleNamespace(format="well_list", counts=df, notes=())


@pytest.fixture
def layout(tmp_path, layouts_dir):
    (tmp_path / "e.csv").write_text("")
    (tmp_path / "p.toml").write_text(LAYOUT)
    return load_layout(tmp_path / "p.toml", layouts_dir=layouts_dir)


def wells_for(layout, counts=CPM):
    return join_counts(layout, export(counts), source_file="e.csv", source_sha256="ab" * 32)


def test_formula_hand_computed():
    assert specific_lysis(2500.0, 500.0, 4500.0) == pytest.approx(50.0)
    assert specific_lysis(500.0, 500.0, 4500.0) == 0.0
    assert specific_lysis(4500.0, 500.0, 4500.0) == 100.0
    assert specific_lysis(300.0, 500.0, 4500.0) == pytest.approx(-5.0)


def test_wells_lysis_and_summary(layout):
    w = wells_for(layout)
    assert tuple(w.columns) == WELLS.names
    s, m = control_means(w)
    assert (s, m) == (500.0, 4500.0)
    w = add_lysis(w, s, m).set_index("well")
    assert list(w.index) == [f"A{i}" for i in range(1, 9)] + [f"B{i}" for i in range(1, 8)]  # plate order
    assert w.loc["B1", "lysis_pct"] == pytest.approx(50.0)
    assert w.loc["B2", "lysis_pct"] == pytest.approx(55.0)
    assert bool(w.loc["B7", "excluded"]) and w.loc["B7", "exclusion_reason"] == "excluded in the layout: bubble"
    summary = summarise(w.reset_index())
    assert tuple(summary.columns) == LYSIS.names
    r = summary[(summary["role"] == "sample") & (summary["conc"] == 1)].iloc[0]
    assert r["n"] == 3 and r["cpm_mean"] == pytest.approx(2500.0)
    assert r["cpm_sd"] == pytest.approx(200.0)
    assert r["cv_pct"] == pytest.approx(8.0)
    assert r["lysis_pct"] == pytest.approx(50.0) and r["lysis_sd"] == pytest.approx(5.0)
    unt = summary[(summary["role"] == "sample") & (summary["conc"] == 0)].iloc[0]
    assert unt["lysis_pct"] == pytest.approx(70.0) and pd.isna(unt["lot"])
    # the excluded well (conc 3) has no condition row
    assert not ((summary["role"] == "sample") & (summary["conc"] == 3)).any()
    spont = summary[summary["role"] == "spontaneous"].iloc[0]
    assert spont["lysis_pct"] == pytest.approx(0.0) and spont["n"] == 4


def test_missing_and_extra_wells_are_reported(layout):
    counts = {k: v for k, v in CPM.items() if k != "B3"} | {"H12": 77.0}
    w = wells_for(layout, counts).set_index("well")
    assert bool(w.loc["B3", "excluded"]) and w.loc["B3", "exclusion_reason"] == "no count in the export"
    assert np.isnan(w.loc["B3", "cpm"])
    assert w.loc["H12", "role"] == "" and "without a role" in w.loc["H12", "exclusion_reason"]


def test_controls_missing_or_inverted_reject(layout):
    no_max = {k: v for k, v in CPM.items() if k not in ("A5", "A6", "A7", "A8")}
    with pytest.raises(PlateError, match="maximum"):
        control_means(wells_for(layout, no_max))
    inverted = CPM | {"A5": 100, "A6": 100, "A7": 100, "A8": 100}
    with pytest.raises(PlateError, match="not above spontaneous"):
        control_means(wells_for(layout, inverted))


def test_dixon_outlier_flagged_not_dropped_by_default(layout):
    counts = CPM | {"B1": 2500, "B2": 2510, "B3": 4000}
    w = flag_outliers(wells_for(layout, counts), exclude=False, tolerance_pct=20).set_index("well")
    assert bool(w.loc["B3", "outlier"]) and not bool(w.loc["B3", "excluded"])
    assert not w.loc[["B1", "B2"], "outlier"].any()
    w = flag_outliers(wells_for(layout, counts), exclude=True, tolerance_pct=20).set_index("well")
    assert bool(w.loc["B3", "excluded"]) and w.loc["B3", "exclusion_reason"].startswith("Dixon Q outlier")
    # ordinary scatter is not flagged
    w = flag_outliers(wells_for(layout), exclude=False, tolerance_pct=20)
    assert not w["outlier"].any()


def test_tube_export_needs_mapping(layout):
    tubes = pd.DataFrame({"well": [None], "rack": pd.array([1], "Int64"), "pos": pd.array([1], "Int64"), "cpm": [1.0]})
    with pytest.raises(PlateError, match="tubes"):
        join_counts(layout, SimpleNamespace(counts=tubes), source_file="x", source_sha256="y")


@pytest.mark.parametrize("drop", [(), ("B3",), ("A1", "B7")])
def test_direct_join_equals_outer_merge(layout, drop):
    """The direct join (every export row belongs to one layout well) gives exactly the outer
    merge's table: same rows, order, values and dtypes, for wells and for Rack/Pos tubes."""
    counts = {k: v for k, v in CPM.items() if k not in drop}
    exp = export(counts)
    args = dict(source_file="e.csv", source_sha256="ab" * 32)
    fast = join_counts(layout, exp, **args)
    pd.testing.assert_frame_equal(fast, _join_counts_outer(layout, exp, False, **args))
    # the same plate read from tubes: rack 1, positions in layout order
    lw = layout.wells.assign(rack=1.0, pos=np.arange(1.0, len(layout.wells) + 1))
    tubes_layout = SimpleNamespace(**{**layout.__dict__, "wells": lw})
    tube_of = dict(zip(lw["well"], lw["pos"]))
    tubes = pd.DataFrame(
        {
            "well": [None] * len(counts),
            "rack": pd.array([1] * len(counts), "Int64"),
            "pos": pd.array([int(tube_of[w]) for w in counts], "Int64"),
            "cpm": [float(v) for v in counts.values()],
        }
    )
    exp = SimpleNamespace(format="wizard2", counts=tubes, notes=())
    fast = join_counts(tubes_layout, exp, **args)
    pd.testing.assert_frame_equal(fast, _join_counts_outer(tubes_layout, exp, True, **args))
    assert fast["cpm"].notna().sum() == len(counts)
