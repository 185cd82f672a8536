"""Tests of cr51.simulate: layouts, exports, the model, determinism, the plate-set writers and the CLI."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wellmap
from openpyxl import load_workbook

from cr51 import simulate as sim
from cr51.simulate import DEFAULT_LOTS, SimulatedPlate, render_export, simulate_plate, write_plate, write_plates

ROWS = "ABCDEFGH"
ALL_WELLS = [f"{r}{c}" for r in ROWS for c in range(1, 13)]


def plate(seed: int = 1, name: str = "p1", **kw) -> SimulatedPlate:
    return simulate_plate(name, np.random.default_rng(seed), **kw)


def load_layout(tmp_path: Path, p: SimulatedPlate, fmt: str | None = None) -> pd.DataFrame:
    write_plate(tmp_path, p, fmt)
    df = wellmap.load(tmp_path / f"{p.name}.toml")
    return df.set_index("well")


def norm_well(w: str) -> str:
    return f"{w[0].upper()}{int(w[1:])}"


# ------------------------------------------------------------------------- independent export readers
def read_export(data: bytes, fmt: str, p: SimulatedPlate) -> dict[str, float]:
    """Well -> CPM, read the way a parser would (by content), independent of the simulator's code."""
    if fmt.startswith("xlsx"):
        ws = load_workbook(io.BytesIO(data), read_only=True).worksheets[0]
        rows = [["" if v is None else v for v in r] for r in ws.iter_rows(values_only=True)]
        rows = [r + [""] * (13 - len(r)) for r in rows]  # xlsx drops trailing empty cells
    else:
        text = data.decode("utf-8")
        delim = ";" if fmt == "well_list_semicolon" else ","
        rows = list(csv.reader(io.StringIO(text), delimiter=delim))
    out: dict[str, float] = {}

    def num(v) -> float:
        return float(str(v).replace(",", ".")) if fmt == "well_list_semicolon" else float(v)

    if fmt in ("well_list", "well_list_semicolon", "xlsx_well_list"):
        start = next(i for i, r in enumerate(rows) if r and r[0] == "Well")
        header = rows[start]
        j = header.index("CPM")
        for r in rows[start + 1 :]:
            if not r or r[0] in ("", None):
                continue
            w = norm_well(str(r[0]))
            assert w not in out, f"duplicate well {w}"
            out[w] = num(r[j])
    elif fmt in ("plate_grid", "xlsx_plate_grid"):
        start = next(i for i, r in enumerate(rows) if r and r[0] == "CPM")
        assert [int(x) for x in rows[start][1:13]] == list(range(1, 13))
        for r in rows[start + 1 : start + 9]:
            for c in range(1, 13):
                if r[c] not in ("", None):
                    out[f"{r[0]}{c}"] = float(r[c])
    elif fmt == "wizard2":
        header = rows[0]
        assert tuple(header) == sim.WIZARD2_COLUMNS
        order = p.render["well_order"]
        for r in rows[1:]:
            rec = dict(zip(header, r))
            n = (int(rec["Rack"]) - 1) * 10 + int(rec["Pos"])
            out[order[n - 1]] = float(rec["Cr-51 CPM"])
    else:  # pragma: no cover
        raise AssertionError(fmt)
    return out


def lysis_from_cpm(cpm: dict[str, float], wells) -> float:
    s = np.mean([cpm[f"G{i}"] for i in range(1, 5)])
    m = np.mean([cpm[f"G{i}"] for i in range(5, 9)])
    e = np.mean([cpm[w] for w in wells])
    return 100.0 * (e - s) / (m - s)


# ------------------------------------------------------------------------------------------- layouts
def test_standard_layout_loads_with_wellmap_and_has_intended_wells(tmp_path):
    p = plate(3, donor="D07", date="2026-04-23")
    df = load_layout(tmp_path, p)
    assert len(df) == 96 and sorted(df.index) == sorted(ALL_WELLS)
    lots = list(DEFAULT_LOTS)
    concs = [0.03, 0.1, 0.3, 1, 3, 10]
    for i, r in enumerate("ABCDEF"):
        for c in range(1, 13):
            row = df.loc[f"{r}{c}"]
            assert row["role"] == "sample"
            assert row["lot"] == lots[i]
            assert row["conc"] == pytest.approx(concs[(c - 1) % 6])
            assert row["et_ratio"] == 50
    assert df.loc["A1", "conc"] == pytest.approx(0.03) and df.loc["A7", "conc"] == pytest.approx(0.03)
    assert df.loc["D4", "lot"] == "LOT-C" and df.loc["D4", "conc"] == 1
    assert df.loc["F12", "lot"] == "LOT-E" and df.loc["F12", "conc"] == 10
    assert df.loc["B1", "product"] == "Octagam"
    for c in range(1, 5):
        assert df.loc[f"G{c}", "role"] == "spontaneous" and pd.isna(df.loc[f"G{c}", "lot"])
        assert pd.isna(df.loc[f"G{c}", "conc"]) and pd.isna(df.loc[f"G{c}", "et_ratio"])
    for c in range(5, 9):
        assert df.loc[f"G{c}", "role"] == "maximum" and pd.isna(df.loc[f"G{c}", "lot"])
    for c in range(9, 13):
        row = df.loc[f"G{c}"]
        assert row["role"] == "sample" and row["conc"] == 0 and row["et_ratio"] == 50 and pd.isna(row["lot"])
    for c, et in zip(range(1, 13), [50] * 3 + [25] * 3 + [12.5] * 3 + [6.25] * 3):
        row = df.loc[f"H{c}"]
        assert row["role"] == "sample" and row["conc"] == 0 and row["et_ratio"] == et and pd.isna(row["lot"])
    assert (df["role"] == "sample").sum() == 88
    assert set(df["reference_lot"]) == {"REF-001"} and set(df["donor"]) == {"D07"}
    assert set(df["date"]) == {"2026-04-23"} and set(df["targets_per_well"]) == {10000}
    assert set(df["path"].map(lambda x: Path(x).name)) == {"p1.csv"} == {p.export_name}
    assert "tubes" not in df.columns


def test_wizard2_layout_has_tube_mapping(tmp_path):
    p = plate(3, fmt="wizard2")
    assert p.export_name == "p1_wizard2.csv"
    df = load_layout(tmp_path, p)
    assert set(df["tubes"]) == {"rows"} and set(df["rack_size"]) == {10}
    assert set(df["path"].map(lambda x: Path(x).name)) == {"p1_wizard2.csv"}


def test_vehicle_layout(tmp_path):
    p = plate(4, layout="vehicle")
    df = load_layout(tmp_path, p)
    assert len(df) == 96
    lots4 = list(DEFAULT_LOTS)[:4]
    for i, r in enumerate("ABCD"):
        assert set(df.loc[[f"{r}{c}" for c in range(1, 13)], "lot"]) == {lots4[i]}
        assert set(df.loc[[f"{r}{c}" for c in range(1, 13)], "role"]) == {"sample"}
    veh = df[df["role"] == "vehicle"]
    assert len(veh) == 24 and set(veh.index) == {f"{r}{c}" for r in "EF" for c in range(1, 13)}
    assert (veh["et_ratio"] == 50).all()
    counts = veh.groupby(["lot", "conc"]).size()
    assert len(counts) == 12 and (counts == 2).all()
    assert set(veh["lot"]) == set(lots4) and set(veh["conc"]) == {1, 3, 10}
    assert df.loc["E1", "lot"] == "REF-001" and df.loc["E1", "conc"] == 1
    assert df.loc["E6", "lot"] == "LOT-A" and df.loc["E6", "conc"] == 10
    assert df.loc["F9", "lot"] == "LOT-B" and df.loc["F9", "conc"] == 10
    assert df.loc["F11", "lot"] == "LOT-C" and df.loc["F11", "conc"] == 3
    assert df.loc["G1", "role"] == "spontaneous" and df.loc["H10", "et_ratio"] == 6.25


def test_layout_rejects_bad_input():
    with pytest.raises(ValueError):
        plate(lots={"REF-001": 1.0, "bad lot": 2.0})
    with pytest.raises(ValueError):
        plate(reference_lot="NOPE")
    with pytest.raises(ValueError):
        plate(lots={f"L{i}": 1.0 for i in range(7)}, reference_lot="L0")
    with pytest.raises(ValueError):
        plate(fmt="pdf")
    with pytest.raises(ValueError):
        plate(missing_well="Z99")


# ------------------------------------------------------------------------------------------- exports
@pytest.mark.parametrize("fmt", sim.FORMATS)
@pytest.mark.parametrize("layout", sim.LAYOUTS)
def test_export_has_one_value_per_layout_well(tmp_path, fmt, layout):
    p = plate(11, fmt=fmt, layout=layout)
    paths = write_plate(tmp_path, p, fmt)
    assert [x.name for x in paths] == ["p1.toml", p.export_name]
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted(["p1.toml", p.export_name])
    got = read_export(paths[1].read_bytes(), fmt, p)
    layout_df = wellmap.load(paths[0])
    assert set(got) == set(layout_df["well"]) == set(ALL_WELLS)
    assert got == pytest.approx(p.cpm, abs=0.006)


@pytest.mark.parametrize("fmt", sim.FORMATS)
def test_missing_well_is_absent_from_export(fmt):
    p = plate(12, fmt=fmt, missing_well=["B3", "H12"])
    assert "B3" not in p.cpm and "H12" not in p.cpm and len(p.cpm) == 94
    got = read_export(render_export(p, fmt), fmt, p)
    assert set(got) == set(ALL_WELLS) - {"B3", "H12"}
    assert got == pytest.approx(p.cpm, abs=0.006)


def test_wizard2_matches_real_export_conventions():
    p = plate(5, fmt="wizard2", missing_well="A5")
    rows = list(csv.reader(io.StringIO(render_export(p, "wizard2").decode())))
    assert rows[0] == list(sim.WIZARD2_COLUMNS)
    body = [dict(zip(rows[0], r)) for r in rows[1:]]
    assert len(body) == 95
    assert [(b["Rack"], b["Pos"]) for b in body[:5]] == [("1", "1"), ("1", "2"), ("1", "3"), ("1", "4"), ("1", "6")]
    assert (body[-1]["Rack"], body[-1]["Pos"]) == ("10", "6")  # 96 tubes in racks of 10
    assert {b["Pos"] for b in body} <= {str(i) for i in range(1, 11)}
    for b in body:
        cpm = float(b["Cr-51 CPM"])
        assert float(b["Cr-51 Error %"]) == pytest.approx(100 / math.sqrt(cpm), abs=0.006)
        assert b["Cr-51 Info"] == ("I" if 100 / math.sqrt(cpm) > 5 else "")
        assert float(b["Cr-51 Counts"]) > cpm * float(b["Time"]) / 60  # gross counts include background
    assert len({b["Run ID"] for b in body}) == 1


def test_semicolon_uses_decimal_comma():
    p = plate(6, fmt="well_list_semicolon")
    text = render_export(p, "well_list_semicolon").decode()
    line = next(x for x in text.splitlines() if x.startswith(("A1;", "A01;")))
    assert "," in line.split(";")[-1] and "." not in line


# --------------------------------------------------------------------------------------- determinism
def test_deterministic_for_a_seed(tmp_path):
    a = plate(42, fmt="wizard2", layout="vehicle")
    b = plate(42, fmt="wizard2", layout="vehicle")
    assert a.cpm == b.cpm and a.layout_toml == b.layout_toml and a.truth == b.truth
    for fmt in ("wizard2",):
        assert render_export(a, fmt) == render_export(b, fmt)
    c = plate(43, fmt="wizard2", layout="vehicle")
    assert c.cpm != a.cpm
    t1 = write_plates(tmp_path / "x", 4, 7, formats=("well_list", "plate_grid", "xlsx_plate_grid"))
    t2 = write_plates(tmp_path / "y", 4, 7, formats=("well_list", "plate_grid", "xlsx_plate_grid"))
    pd.testing.assert_frame_equal(t1, t2)
    for f in (tmp_path / "x").iterdir():
        if f.suffix != ".xlsx":
            assert f.read_bytes() == (tmp_path / "y" / f.name).read_bytes()
    # a plate does not depend on how many plates are made
    t3 = write_plates(tmp_path / "z", 2, 7, formats=("well_list", "plate_grid", "xlsx_plate_grid"))
    pd.testing.assert_frame_equal(t3, t1[t1["plate"].isin(t3["plate"])].reset_index(drop=True))


# -------------------------------------------------------------------------------------------- model
def test_truth_follows_the_documented_model():
    p = plate(8)
    t = p.truth
    A, k, b, c, d, e_ref = (t[x] for x in ("A", "k", "b", "c", "d", "e_ref"))
    assert 300 <= t["S"] <= 900 and 3000 <= t["M"] <= 8000 and t["S"] / t["M"] < 0.2
    assert 55 <= A <= 85 and 35 * 0.7 < d < 70 * 1.3 and d == pytest.approx(A * (1 - math.exp(-50 * k)))
    assert 1.2 <= b <= 2.0 and 0.3 <= c / d <= 0.5 and 0.5 < e_ref < 6
    assert t["rp"] == DEFAULT_LOTS
    lots = list(DEFAULT_LOTS)
    concs = [0.03, 0.1, 0.3, 1, 3, 10]
    for i, r in enumerate("ABCDEF"):
        for col in range(1, 13):
            conc = concs[(col - 1) % 6]
            e = e_ref / DEFAULT_LOTS[lots[i]]
            want = c + (d - c) / (1 + math.exp(b * (math.log(conc) - math.log(e))))
            assert t["expected_lysis"][f"{r}{col}"] == pytest.approx(want)
            assert t["expected_cpm"][f"{r}{col}"] == pytest.approx(t["S"] + want / 100 * (t["M"] - t["S"]))
    for col, et in zip(range(1, 13), [50] * 3 + [25] * 3 + [12.5] * 3 + [6.25] * 3):
        assert t["expected_lysis"][f"H{col}"] == pytest.approx(A * (1 - math.exp(-k * et)))
    assert t["expected_lysis"]["G10"] == pytest.approx(d)
    assert t["expected_cpm"]["G2"] == pytest.approx(t["S"]) and t["expected_cpm"]["G6"] == pytest.approx(t["M"])


def test_same_donor_same_nk_activity_different_donors_differ():
    a, b = plate(1, donor="D03"), plate(2, donor="D03")
    assert a.truth["A"] == b.truth["A"] and a.truth["b"] == b.truth["b"]
    assert a.truth["d"] != b.truth["d"]  # day-to-day variation of k
    assert abs(math.log(a.truth["k"] / b.truth["k"])) < 0.5
    params = [sim.donor_params(f"D{i:02d}") for i in range(1, 30)]
    assert len({round(x["A"], 6) for x in params}) == 29
    for x in params:
        assert 55 <= x["A"] <= 85 and 35 <= x["L50"] <= 70 and 1 <= x["e_ref"] <= 3


def test_measured_untreated_lysis_matches_truth():
    errs50, errs_et = [], []
    for seed in range(30):
        p = plate(seed)
        l50 = lysis_from_cpm(p.cpm, ["G9", "G10", "G11", "G12", "H1", "H2", "H3"])
        errs50.append(l50 - p.truth["d"])
        for start, et in zip((1, 4, 7, 10), (50, 25, 12.5, 6.25)):
            got = lysis_from_cpm(p.cpm, [f"H{start + i}" for i in range(3)])
            errs_et.append(got - p.truth["L"][et])
    errs50, errs_et = np.array(errs50), np.array(errs_et)
    assert np.abs(errs50).max() < 5.0  # noise: a few lysis points per plate
    assert abs(errs50.mean()) < 1.0  # unbiased
    assert np.abs(errs_et).max() < 8.0 and abs(errs_et.mean()) < 1.0
    assert 1.0 < errs_et.std() < 5.0  # realistic, not noise-free


def test_replicate_noise_is_realistic():
    cvs = []
    for seed in range(20):
        p = plate(seed)
        for ws in (["G1", "G2", "G3", "G4"], ["G5", "G6", "G7", "G8"]):
            v = np.array([p.cpm[w] for w in ws])
            cvs.append(v.std(ddof=1) / v.mean())
    assert 0.025 < float(np.median(cvs)) < 0.08


def test_more_potent_lot_suppresses_more():
    diffs = []
    for seed in range(20):
        p = plate(seed)
        ref = lysis_from_cpm(p.cpm, ["A4", "A10"])  # REF-001, 1 mg/mL
        lot_d = lysis_from_cpm(p.cpm, ["E4", "E10"])  # LOT-D, RP 2
        lot_e = lysis_from_cpm(p.cpm, ["F4", "F10"])  # LOT-E, RP 0.5
        assert lot_d < ref  # RP 2 vs 1: the IC50 halves; the difference (~7 points) is well above noise
        diffs.append((ref - lot_d, lot_e - ref))
    diffs = np.array(diffs)
    assert diffs[:, 0].mean() > 4.0
    assert diffs[:, 1].mean() > 2.5 and (diffs[:, 1] > 0).mean() >= 0.8  # RP 0.5 suppresses less
    # suppression curve: high dose suppresses, low dose barely
    p = plate(3)
    assert lysis_from_cpm(p.cpm, ["A6", "A12"]) < lysis_from_cpm(p.cpm, ["A1", "A7"]) - 10


def test_high_spontaneous_fails_qc_and_normal_plates_pass():
    for seed in range(10):
        p = plate(seed, high_spontaneous=True)
        s = np.mean([p.cpm[f"G{i}"] for i in range(1, 5)])
        m = np.mean([p.cpm[f"G{i}"] for i in range(5, 9)])
        assert s / m > 0.2 and p.truth["high_spontaneous"] is True
    for seed in range(50):
        p = plate(seed)
        s = np.mean([p.cpm[f"G{i}"] for i in range(1, 5)])
        m = np.mean([p.cpm[f"G{i}"] for i in range(5, 9)])
        assert s / m < 0.2


def test_outlier_well():
    for seed in range(5):
        p = plate(seed, outlier_well="C3")
        assert p.cpm["C3"] / p.cpm["C9"] > 1.3  # its duplicate
        assert p.truth["outlier_wells"] == ["C3"]
        q = plate(seed)
        assert q.cpm["C9"] == p.cpm["C9"] and q.cpm["C3"] != p.cpm["C3"]


def test_vehicle_suppression_of_maltose_lot():
    supp = {lot: [] for lot in list(DEFAULT_LOTS)[:4]}
    for seed in range(15):
        p = plate(seed, layout="vehicle")
        assert p.truth["vehicle_suppression_10"]["LOT-A"] == 0.15
        untreated = lysis_from_cpm(p.cpm, ["G9", "G10", "G11", "G12", "H1", "H2", "H3"])
        for lot, wells in {
            "REF-001": ["E3", "E9"],
            "LOT-A": ["E6", "E12"],
            "LOT-B": ["F3", "F9"],
            "LOT-C": ["F6", "F12"],
        }.items():
            supp[lot].append(1 - lysis_from_cpm(p.cpm, wells) / untreated)
    assert 0.10 < np.mean(supp["LOT-A"]) < 0.20
    for lot in ("REF-001", "LOT-B", "LOT-C"):
        assert abs(np.mean(supp[lot])) < 0.06
    # the excipient also acts in the lot's sample wells
    p = plate(1, layout="vehicle")
    d, t = p.truth["d"], p.truth
    assert t["expected_lysis"]["E6"] == pytest.approx(d * 0.85)
    assert t["expected_lysis"]["E4"] == pytest.approx(d * (1 - 0.015))


# ------------------------------------------------------------------------------------ plate writers
def test_write_plates_files_and_truth(tmp_path):
    out = tmp_path / "raw"
    fmts = ("well_list", "plate_grid", "wizard2", "xlsx_well_list")
    table = write_plates(out, 6, 3, formats=fmts)
    names = sorted(x.name for x in out.iterdir())
    assert len(names) == 12 and "truth.csv" not in names
    assert "plate0003_wizard2.csv" in names and "plate0004.xlsx" in names and "plate0005.csv" in names
    assert len(table) == 6 * 6 and set(table["plate"]) == {f"plate{i:04d}" for i in range(1, 7)}
    assert list(table.drop_duplicates("plate")["format"]) == list(fmts) + list(fmts[:2])
    sub = table[table["plate"] == "plate0001"].set_index("lot")
    assert sub["rp"].to_dict() == DEFAULT_LOTS and sub.loc["REF-001", "is_reference"]
    for tml in out.glob("*.toml"):
        df = wellmap.load(tml)
        assert len(df) == 96
    tp = tmp_path / "truth.csv"
    t2 = write_plates(tmp_path / "raw2", 2, 3, truth_path=tp, high_spontaneous=True)
    assert tp.exists() and len(pd.read_csv(tp)) == len(t2) == 12 and t2["high_spontaneous"].all()


def test_write_plate_refuses_incompatible_format(tmp_path):
    p = plate(1, fmt="well_list")
    with pytest.raises(ValueError):
        write_plate(tmp_path, p, "wizard2")


def test_example_set(tmp_path):
    sim.write_example_set(tmp_path)
    files = sorted(x.name for x in tmp_path.iterdir())
    tomls = [f for f in files if f.endswith(".toml")]
    assert len(tomls) == 6 and len(files) == 12
    donors, layouts, exports = set(), [], []
    for t in tomls:
        df = wellmap.load(tmp_path / t)
        assert len(df) == 96
        donors |= set(df["donor"])
        layouts.append("vehicle" if (df["role"] == "vehicle").any() else "standard")
        exports.append(Path(df["path"].iloc[0]).name)
    assert 2 <= len(donors) <= 3 and layouts.count("vehicle") == 1
    assert any(e.endswith("_wizard2.csv") for e in exports) and any(e.endswith(".xlsx") for e in exports)
    again = tmp_path / "again"
    sim.write_example_set(again)
    for f in files:
        if not f.endswith(".xlsx"):
            assert (tmp_path / f).read_bytes() == (again / f).read_bytes()


def test_cli(tmp_path, capsys):
    out = tmp_path / "o"
    rc = sim.main(
        [
            "--out",
            str(out),
            "--plates",
            "3",
            "--seed",
            "5",
            "--format",
            "well_list",
            "--format",
            "wizard2",
            "--truth",
            str(tmp_path / "t.csv"),
        ]
    )
    assert rc == 0
    assert sorted(x.name for x in out.iterdir()) == sorted(
        [
            "plate0001.toml",
            "plate0001.csv",
            "plate0002.toml",
            "plate0002_wizard2.csv",
            "plate0003.toml",
            "plate0003.csv",
        ]
    )
    assert len(pd.read_csv(tmp_path / "t.csv")) == 18
    assert sim.main(["--out", str(tmp_path / "ex"), "--example"]) == 0
    assert len(list((tmp_path / "ex").glob("*.toml"))) == 6


@pytest.mark.parametrize("layout", sim.LAYOUTS)
def test_simulated_wells_agree_with_the_written_layout(tmp_path, layout):
    """The simulator's own well table (which drives the CPM) must be exactly what wellmap reads."""
    p = plate(21, layout=layout)
    df = load_layout(tmp_path, p)
    t = p.truth
    wells = sim.layout_wells(layout, tuple(t["rp"]))
    assert [w.well for w in wells] == ALL_WELLS == p.render["well_order"]
    for w in wells:
        row = df.loc[w.well]
        assert row["role"] == w.role
        assert (pd.isna(row["lot"]) and w.lot is None) or row["lot"] == w.lot
        assert (pd.isna(row["conc"]) and w.conc is None) or row["conc"] == pytest.approx(w.conc)
        assert (pd.isna(row["et_ratio"]) and w.et_ratio is None) or row["et_ratio"] == w.et_ratio
        # and the expected lysis follows the layout's lot/conc
        lysis = t["expected_lysis"][w.well]
        if row["role"] == "vehicle":
            v = t["vehicle_suppression_10"][row["lot"]]
            assert lysis == pytest.approx(t["d"] * (1 - v * row["conc"] / 10))
        elif row["role"] == "sample" and isinstance(row["lot"], str):
            e = t["e"][row["lot"]]
            v = t["vehicle_suppression_10"][row["lot"]]
            ll4 = t["c"] + (t["d"] - t["c"]) / (1 + math.exp(t["b"] * (math.log(row["conc"]) - math.log(e))))
            assert lysis == pytest.approx(ll4 * (1 - v * row["conc"] / 10))
