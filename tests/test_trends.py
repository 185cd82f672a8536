"""Trends and control rules (cr51.trends, docs/trends.md): Westgard rules on series whose answer is known,
the baseline's mean and SD against numpy and R, the table's decisions (date order, ties, QC-failed and undated
plates, implausible fits, provisional limits), trends.csv through the writer, a planted drift on simulated
plates, the Levey–Jennings chart and the report section (structure, links, size at 10,000 plates), and the
time at 10,000 plates."""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from conftest import CONFIG

from cr51 import trends
from cr51.figures import TrendSeries, levey_jennings_svg
from cr51.report.html import fmt
from cr51.report.names import plate_page
from cr51.report.trends_section import trends_section
from cr51.schema import TRENDS
from cr51.settings import ConfigError, Settings
from cr51.tables import read_table, write_table
from cr51.trends import rule_hits, trends_table

CFG = Settings.from_config({}).trends
ALL_RULES = replace(CFG, rules=trends.RULES)


def hits_at(z, rule, starts=None) -> list[int]:
    return np.flatnonzero(rule_hits(z, [rule], starts)[rule]).tolist()


# --------------------------------------------------------------------------
# The rules on hand-made z series: each fires exactly where it should
# --------------------------------------------------------------------------


def test_1_3s_fires_on_each_point_beyond_3_sd_only():
    z = [0.0, 2.99, 3.01, 0.0, -3.2, 3.0, -2.9]
    assert hits_at(z, "1-3s") == [2, 4]  # 3.0 exactly is not beyond


def test_2_2s_needs_two_consecutive_beyond_2_sd_on_the_same_side():
    z = [2.1, 2.2, 0.0, 2.1, -2.1, -2.5, -2.6, 2.5, 1.9, 2.4]
    # (0,1) high-high; (3,4) opposite sides: no; (4,5), (5,6) low-low; (7,8): 1.9 not beyond
    assert hits_at(z, "2-2s") == [1, 5, 6]


def test_r_4s_is_a_range_of_consecutive_points_above_4_sd():
    z = [2.1, -2.0, 0.0, 1.0, -3.1, 0.5, 4.4, 0.5]
    # |diffs|: 4.1, 2.0, 1.0, 4.1, 3.6, 3.9, 3.9
    assert hits_at(z, "R-4s") == [1, 4]


def test_4_1s_and_10_x_need_runs_on_one_side():
    z = [1.1, 1.2, 1.3, 1.4, 1.5, 0.5, -1.1, -1.2, -1.3, -1.4, -0.9, -1.5]
    assert hits_at(z, "4-1s") == [3, 4, 9]
    run = [0.1] * 9 + [0.2, 0.3, -0.1] + [0.1] * 9
    assert hits_at(run, "10-x") == [9, 10]  # the 10th and the 11th; the 9 after the break are not enough
    assert hits_at([0.5] * 5 + [0.0] + [0.5] * 9, "10-x") == []  # on the mean is on neither side
    assert hits_at([-0.5] * 10, "10-x") == [9]


def test_warning_1_2s_and_missing_values_interrupt_runs():
    z = [2.5, np.nan, 2.5, 2.5, -1.0, -2.01]
    assert hits_at(z, "1-2s") == [0, 2, 3, 5]
    assert hits_at(z, "2-2s") == [3]  # the NaN breaks the run between 0 and 2
    assert hits_at([3.0, np.nan, -3.0], "R-4s") == []


def test_runs_do_not_cross_from_one_series_to_the_next():
    z = np.array([0.5] * 6 + [0.5] * 6 + [2.5, -2.5])
    starts = np.zeros(z.size, bool)
    starts[[6, 12]] = True
    assert hits_at(z, "10-x", starts) == []
    assert hits_at(np.r_[[2.5, 2.5], [2.5, 2.5]], "2-2s", np.array([True, False, True, False])) == [1, 3]
    assert hits_at(z, "R-4s", starts) == [13]
    assert hits_at([3.0, -3.0], "R-4s") == [1] and hits_at([3.0, -3.0], "R-4s", np.array([True, True])) == []


# --------------------------------------------------------------------------
# The table: hand-made plates
# --------------------------------------------------------------------------


def make_tables(values, *, start="2026-01-01", ref="REF-001", quantity_col="untreated_lysis_pct", names=None):
    """qc and fits with one plate per value (a day apart); ``values`` is put in ``quantity_col`` (qc) and
    the reference lot's fits are constant."""
    n = len(values)
    names = names or [f"P{i:03d}" for i in range(n)]
    dates = pd.date_range(start, periods=n, freq="D").strftime("%Y-%m-%d")
    qc = pd.DataFrame({
        "plate": names, "status": "pass", "date": dates, "reference_lot": ref, "donor": "D1",
        "untreated_lysis_pct": 50.0, "spontaneous_pct_of_max": 10.0, "lu20_per_1e7": 100.0,
    })  # fmt: skip
    qc[quantity_col] = np.asarray(values, float)
    fits = pd.DataFrame({
        "plate": np.repeat(names, 2), "lot": [ref, "LOT-A"] * n, "model": "LL.4", "ic50": 2.0, "slope": 1.5,
        "top": 60.0, "bottom": 20.0, "converged": True, "plausible": True,
    })  # fmt: skip
    return qc, fits


def series(t, quantity="untreated_lysis_pct"):
    return t[t["quantity"] == quantity].reset_index(drop=True)


def test_baseline_mean_and_sd_are_numpy_s_and_every_later_plate_is_judged_by_them():
    rng = np.random.default_rng(3)
    values = rng.normal(50, 4, 30)
    qc, fits = make_tables(values)
    s = series(trends_table(qc, fits, replace(CFG, baseline_plates=20)))
    base = values[:20]
    assert np.allclose(s["mean"], base.mean(), rtol=1e-12) and np.allclose(s["sd"], base.std(ddof=1), rtol=1e-12)
    assert s["baseline"].tolist() == [True] * 20 + [False] * 10
    assert (s["n_baseline"] == 20).all() and (s["limits"] == "fixed").all()
    assert np.allclose(s["z"], (values - base.mean()) / base.std(ddof=1))
    assert s["plate"].tolist() == qc["plate"].tolist()


@pytest.mark.skipif(shutil.which("Rscript") is None, reason="Rscript not installed")
def test_baseline_mean_and_sd_equal_r():
    values = np.random.default_rng(8).lognormal(4.5, 0.3, 25)
    qc, fits = make_tables(values, quantity_col="lu20_per_1e7")
    s = series(trends_table(qc, fits, CFG), "lu20_per_1e7")
    text = ",".join(repr(float(v)) for v in values[:20])
    proc = subprocess.run(
        ["Rscript", "-e", f"x <- c({text}); cat(sprintf('%.17g %.17g', mean(x), sd(x)))"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    r_mean, r_sd = map(float, proc.stdout.split())
    assert s["mean"].iloc[0] == pytest.approx(r_mean, rel=1e-13)
    assert s["sd"].iloc[0] == pytest.approx(r_sd, rel=1e-13)


def test_a_baseline_plate_beyond_3_sd_is_flagged_and_leaves_the_baseline():
    values = np.array([50.0, 51, 49, 50, 52, 48, 50, 51, 49, 50, 50, 51, 49, 50, 52, 48, 50, 51, 49, 90, 50, 50])
    qc, fits = make_tables(values)
    s = series(trends_table(qc, fits, CFG))
    kept = np.r_[values[:19]]
    assert s.loc[19, "baseline"] == False and s["baseline"].sum() == 19  # noqa: E712
    assert (s["n_baseline"] == 19).all()
    assert s["mean"].iloc[0] == pytest.approx(kept.mean()) and s["sd"].iloc[0] == pytest.approx(kept.std(ddof=1))
    assert "1-3s" in s.loc[19, "rule"].split(";")
    others = s.drop(index=19)
    assert others.loc[others["rule"] != "", "rule"].to_dict() == {20: "R-4s"}  # the way back from 90


def test_fewer_plates_than_the_baseline_give_provisional_limits_and_no_rule():
    values = [50.0, 51, 49, 50, 52, 48, 50, 95]
    qc, fits = make_tables(values)
    s = series(trends_table(qc, fits, CFG))
    assert (s["limits"] == "provisional").all() and (s["rule"] == "").all() and (s["warning"] == "").all()
    assert s["n_baseline"].iloc[0] == 8 and s["mean"].iloc[0] == pytest.approx(np.mean(values))
    fixed = series(trends_table(qc, fits, replace(CFG, baseline_plates=7)))
    assert (fixed["limits"] == "fixed").all() and "1-3s" in fixed["rule"].iloc[-1]


def test_plates_are_in_date_order_ties_by_plate_name_and_only_accepted_dated_plates_count():
    values = [50.0] * 6
    qc, fits = make_tables(values, names=["b", "a", "c", "e", "d", "f"])
    qc["date"] = ["2026-02-01", "2026-02-01", "2026-01-15", "2026-03-01", "2026-03-01", "2026-03-02"]
    qc.loc[qc["plate"] == "f", "status"] = "fail"
    qc.loc[qc["plate"] == "e", "date"] = "23.04.2026"  # not ISO 8601: no place in time
    for given in (qc, qc.iloc[::-1], qc.sample(frac=1, random_state=1)):  # "b" before "a", and after it
        s = series(trends_table(given, fits, CFG))
        assert s["plate"].tolist() == ["c", "a", "b", "d"]
        assert s["date"].tolist() == ["2026-01-15", "2026-02-01", "2026-02-01", "2026-03-01"]


def test_reference_lot_values_come_from_its_converged_plausible_potency_model_fit():
    qc, fits = make_tables([50.0] * 4)
    fits.loc[(fits["plate"] == "P001") & (fits["lot"] == "REF-001"), "converged"] = False
    fits.loc[(fits["plate"] == "P002") & (fits["lot"] == "REF-001"), "plausible"] = False
    fits.loc[(fits["plate"] == "P003") & (fits["lot"] == "REF-001"), "ic50"] = 3.0
    ll5 = fits[fits["plate"] == "P000"].assign(model="LL.5", ic50=99.0)
    t = trends_table(qc, pd.concat([fits, ll5]), CFG)
    ic50 = series(t, "ref_log_ic50")
    assert ic50["plate"].tolist() == ["P000", "P003"]
    assert np.allclose(ic50["value"], np.log([2.0, 3.0])) and (ic50["series"] == "REF-001").all()
    assert (series(t)["series"] == "").all() and len(series(t)) == 4
    # read back from CSV (text True/False/empty) the same rows are kept
    back = fits.astype({"converged": str, "plausible": object})
    back.loc[back["plate"] == "P000", "plausible"] = np.nan
    assert series(trends_table(qc, back, CFG), "ref_log_ic50")["plate"].tolist() == ["P000", "P003"]


def test_reference_lots_are_separate_series():
    qc, fits = make_tables([50.0] * 6)
    qc.loc[3:, "reference_lot"] = "REF-002"
    fits["lot"] = np.where(fits["lot"] == "LOT-A", "LOT-A", np.repeat(qc["reference_lot"].to_numpy(), 2))
    fits.loc[fits["lot"] == "REF-002", "slope"] = 3.0
    s = series(trends_table(qc, fits, CFG), "ref_slope")
    assert s.groupby("series")["value"].agg(list).to_dict() == {"REF-001": [1.5] * 3, "REF-002": [3.0] * 3}
    assert (s.groupby("series")["n_baseline"].first() == 3).all()


def test_only_the_configured_rules_are_evaluated():
    values = [50.0, 51, 49, 50, 52, 48, 50, 51, 49, 50, 58, 58.5]
    qc, fits = make_tables(values)
    s = series(trends_table(qc, fits, replace(CFG, baseline_plates=10, rules=("2-2s",))))
    assert s["rule"].tolist() == [""] * 11 + ["2-2s"]
    none = series(trends_table(qc, fits, replace(CFG, baseline_plates=10, rules=())))
    assert (none["rule"] == "").all() and none["warning"].iloc[-1] == "1-2s"
    both = series(trends_table(qc, fits, replace(ALL_RULES, baseline_plates=10)))
    assert both["rule"].iloc[-1] == "1-3s;2-2s" and both["rule"].iloc[-2] == "1-3s;R-4s"


def test_a_new_plate_never_changes_an_older_plate_s_verdict():
    values = np.random.default_rng(11).normal(50, 3, 40)
    values[25:] += 6  # a shift: rules fire
    qc, fits = make_tables(values)
    full = trends_table(qc, fits, ALL_RULES)
    for k in (21, 30, 39):
        part = trends_table(qc.iloc[:k], fits, ALL_RULES)
        old = full[full["plate"].isin(part["plate"])].reset_index(drop=True)
        pd.testing.assert_frame_equal(part.reset_index(drop=True), old)
    assert (series(full)["rule"] != "").sum() > 0


def test_trends_csv_is_written_and_read_back_through_the_schema(tmp_path):
    values = np.r_[np.random.default_rng(2).normal(50, 3, 20), [70, 71, 50]]
    qc, fits = make_tables(values)
    t = trends_table(qc, fits, CFG)
    assert tuple(t.columns) == TRENDS.names
    assert TRENDS.names[:7] == ("plate", "date", "quantity", "value", "mean", "sd", "rule")
    path = tmp_path / "trends.csv"
    write_table(t, path, TRENDS)
    assert path.read_text().splitlines()[0] == ",".join(TRENDS.names)
    back = read_table(path)
    assert back["plate"].tolist() == t["plate"].tolist() and back["baseline"].tolist() == t["baseline"].tolist()
    assert np.allclose(back["value"], t["value"]) and np.allclose(back["z"], t["z"], equal_nan=True)
    assert back["rule"].fillna("").tolist() == t["rule"].tolist()
    assert back["n_baseline"].tolist() == t["n_baseline"].tolist()
    assert "1-3s;2-2s" in back["rule"].tolist()
    empty = trends_table(qc.iloc[:0], fits, CFG)
    write_table(empty, tmp_path / "empty.csv", TRENDS)
    assert (tmp_path / "empty.csv").read_text() == ",".join(TRENDS.names) + "\n"


def test_trends_settings_are_validated():
    s = Settings.from_config({"trends": {"rules": ["1-3s", "4-1s"], "baseline_plates": 30}})
    assert s.trends.rules == ("1-3s", "4-1s") and s.trends.baseline_plates == 30 and s.trends.chart_plates == 100
    assert CFG.rules == ("1-3s", "2-2s", "R-4s", "10-x") and CFG.baseline_plates == 20
    with pytest.raises(ConfigError, match="trends.rules"):
        Settings.from_config({"trends": {"rules": ["3-1s"]}})
    with pytest.raises(ConfigError, match="trends.baseline_plates"):
        Settings.from_config({"trends": {"baseline_plates": 2}})
    with pytest.raises(ConfigError, match="trends.rules"):
        Settings.from_config({"trends": {"rules": ["1-3s", "1-3s"]}})


# --------------------------------------------------------------------------
# Simulated plates with a planted drift (cr51.simulate through the plate pipeline)
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def drift_run(tmp_path_factory):
    """24 plates of donor D07, one a day; from plate 13 on the effectors lose 2.5 % of their lysis per
    plate (to 70 % at plate 24): the sample wells' counts above spontaneous release are scaled."""
    from cr51.batch import process_plate
    from cr51.plate import PlateInput
    from cr51.simulate import layout_wells, simulate_plate, write_plate

    raw = tmp_path_factory.mktemp("drift")
    lots = {"REF-001": 1.0, "LOT-A": 0.8}
    sample = {w.well for w in layout_wells("standard", tuple(lots)) if w.role == "sample"}
    qcs, fits = [], []
    for i in range(24):
        day = pd.Timestamp("2026-03-02") + pd.Timedelta(days=i)
        p = simulate_plate(f"d{i:02d}", np.random.default_rng([17, i]), lots=lots, donor="D07", date=day.date())
        keep = 1.0 - 0.025 * max(0, i - 11)
        s = float(p.truth["S"])
        for well in sample & set(p.cpm):
            p.cpm[well] = round(s + keep * (p.cpm[well] - s), 2)
        write_plate(raw, p)
        out = process_plate(PlateInput(p.name, str(raw / f"{p.name}.toml"), str(raw / p.export_name)), CONFIG)
        qcs.append(out.frame("qc"))
        fits.append(out.frame("fits"))
    qc, fit = pd.concat(qcs, ignore_index=True), pd.concat(fits, ignore_index=True)
    return qc, fit, trends_table(qc, fit, replace(CFG, baseline_plates=12))


def test_a_planted_drift_in_nk_activity_is_flagged_and_the_clean_plates_are_not(drift_run):
    qc, _, t = drift_run
    assert (qc["status"] == "pass").all()
    for quantity in ("untreated_lysis_pct", "lu20_per_1e7"):
        s = series(t, quantity)
        assert len(s) == 24 and (s["limits"] == "fixed").all()
        flagged = s.index[s["rule"] != ""].tolist()
        assert flagged and min(flagged) >= 12, (quantity, flagged)  # no clean plate flagged
        assert min(flagged) <= 19, (quantity, flagged)  # found within 8 plates of the drift's start
        assert s["z"].iloc[-1] < -3 and s["rule"].iloc[-1] != ""
    # the spontaneous release was not touched: no rule fires on it
    assert (series(t, "spontaneous_pct_of_max")["rule"] == "").all()


def test_the_drift_shows_first_in_the_section_and_links_the_plate_pages(drift_run):
    _, _, t = drift_run
    html = trends_section(t, CFG)
    first_flag = html.index('data-table="trends_flagged"')
    assert first_flag < html.index('data-table="trends_series"') < html.index("<svg")
    latest = t.loc[t["rule"] != ""].sort_values(["date", "plate"]).iloc[-1]
    assert f'<a href="{plate_page(latest["plate"])}">{latest["plate"]}</a>' in html
    assert html.count('<figure class="trend"') == t.groupby(["quantity", "series"]).ngroups


# --------------------------------------------------------------------------
# The Levey–Jennings chart and the section
# --------------------------------------------------------------------------


def lj(n=30, broken=(5, 20), warning=(5, 7), provisional=False, log=False):
    rng = np.random.default_rng(4)
    values = rng.normal(0.7, 0.1, n) if log else rng.normal(50, 3, n)
    return TrendSeries(
        label="untreated lysis (% lysis)",
        days=np.arange(20000, 20000 + n, dtype=float),
        values=values,
        plates=tuple(f"P<{i}>" for i in range(n)),
        broken=tuple("1-3s;R-4s" if i in broken else "" for i in range(n)),
        warning=np.isin(np.arange(n), warning),
        mean=0.7 if log else 50.0,
        sd=0.1 if log else 3.0,
        provisional=provisional,
        n_baseline=20,
        baseline_end=20019.0,
        log=log,
    )


def n_dots(svg: str, cls: str) -> int:
    m = re.search(rf'<path d="([^"]*)" stroke-width="[\d.]+" stroke-linecap="round" class="{cls}"', svg)
    return m.group(1).count("h0") if m else 0


def test_levey_jennings_chart_draws_every_point_once_with_its_class_and_the_limits():
    s = lj()
    svg = levey_jennings_svg(s, "LJ title & <more>", "a description")
    root = ET.fromstring(svg)  # well-formed
    ns = "{http://www.w3.org/2000/svg}"
    assert root.find(f"{ns}title").text == "LJ title & <more>" and root.find(f"{ns}desc").text == "a description"
    # plate 5 breaks a rule and is beyond 2 SD: drawn once, as broken
    assert n_dots(svg, "lj-ok") == 27 and n_dots(svg, "lj-warn") == 1 and svg.count('<g class="lj-broken">') == 2
    assert "<title>P&lt;5&gt;: 1-3s;R-4s</title>" in svg and "<title>P&lt;20&gt;: 1-3s;R-4s</title>" in svg
    for label in ("+3 SD 59", "−3 SD 41", "+2 SD 56", "−2 SD 44", "mean 50"):
        assert label in svg, label
    assert ">baseline<" in svg and "provisional" not in svg
    prov = levey_jennings_svg(lj(provisional=True), "t", "d")
    assert "provisional limits (20 plates): no rule evaluated" in prov and 'stroke-dasharray="1 3"' in prov


def test_levey_jennings_log_quantity_is_labelled_in_its_unit():
    svg = levey_jennings_svg(lj(log=True), "t", "d")
    assert f"mean {np.exp(0.7):.3g}" in svg and f"+3 SD {np.exp(1.0):.3g}" in svg


def test_section_lists_flagged_plates_first_with_links_and_the_csv_numbers():
    values = [48.0, 52.0] * 10 + [70, 71, 72]  # mean 50, SD 2.05: the last three break 1-3s (and 2-2s)
    names = [f"run#{i}" for i in range(20)] + ["odd <b>&", "run#21", "run#22"]
    qc, fits = make_tables(values, names=names)
    t = trends_table(qc, fits, CFG)
    html = trends_section(t, CFG)
    flagged = t[t["rule"] != ""]
    assert flagged["plate"].tolist() == ["odd <b>&", "run#21", "run#22"]
    table = html[html.index('data-table="trends_flagged"') :]
    assert table.index("run#22") < table.index("run#21") < table.index("odd &lt;b&gt;&amp;") < table.index("<svg")
    assert '<a href="plates/' in html and f'href="{plate_page("odd <b>&")}"' in html.replace("&amp;", "&")
    row = flagged[flagged["plate"] == "run#21"].iloc[0]
    assert f'<td class="n" data-c="value">{fmt(row["value"])}</td>' in html
    assert f'<td class="bad" data-c="rule">{row["rule"]}</td>' in html
    assert "odd <b>&" not in html  # escaped everywhere
    sub = trends_section(t, CFG, base="../")
    assert f'href="../{plate_page("run#21")}"' in sub and 'href="../trends.csv"' in sub
    assert trends_section(t.iloc[:0], CFG).count("nothing to monitor") == 1


def test_section_says_when_the_limits_are_provisional():
    qc, fits = make_tables([50.0, 51, 49, 95])
    html = trends_section(trends_table(qc, fits, CFG), CFG)
    assert "No plate breaks a control rule (no quantity has its full baseline yet" in html
    assert "provisional limits (4 plates): no rule evaluated" in html


def big_tables(n: int, seed: int = 0):
    """qc and fits of ``n`` plates, 4 a day, two reference lots, 6 lots per plate, 3 % failing QC."""
    rng = np.random.default_rng(seed)
    plates = [f"plate{i:05d}" for i in range(n)]
    dates = (pd.Timestamp("2020-01-01") + pd.to_timedelta(np.arange(n) // 4, "D")).strftime("%Y-%m-%d")
    ref = np.where(np.arange(n) % 3 == 0, "REF-002", "REF-001")
    qc = pd.DataFrame({
        "plate": plates, "status": np.where(rng.random(n) < 0.03, "fail", "pass"), "date": dates,
        "reference_lot": ref, "untreated_lysis_pct": rng.normal(50, 5, n),
        "spontaneous_pct_of_max": rng.normal(10, 2, n), "lu20_per_1e7": rng.lognormal(4.5, 0.3, n),
    })  # fmt: skip
    lots = ["REF-001", "REF-002", "A", "B", "C", "D"]
    fits = pd.DataFrame({
        "plate": np.repeat(plates, 6), "lot": np.tile(lots, n), "model": "LL.4",
        "ic50": rng.lognormal(0.5, 0.1, 6 * n), "slope": rng.normal(1.5, 0.1, 6 * n),
        "top": rng.normal(50, 3, 6 * n), "bottom": rng.normal(20, 3, 6 * n), "converged": True, "plausible": True,
    })  # fmt: skip
    return qc, fits


def test_10000_plates_give_a_small_section():
    """Size at 10,000 plates (the time, ~0.25 s, is measured by make bench, not here: no timed tests)."""
    qc, fits = big_tables(10_000)
    t = trends_table(qc, fits, CFG)
    assert len(t) > 9_000 * len(trends.QUANTITIES)
    html = trends_section(t, CFG)
    assert len(html.encode()) < 250_000  # the index page's whole budget is 2 MB
    charts = re.findall(r'<figure class="trend".*?</figure>', html)
    assert len(charts) == 11  # 4 quantities x 2 reference lots + 3 plate quantities
    for chart in charts:
        drawn = n_dots(chart, "lj-ok") + n_dots(chart, "lj-warn") + chart.count('<g class="lj-broken">')
        assert drawn == CFG.chart_plates
    assert html.count('data-c="rule"') == 200 and "more flagged values (older) in trends.csv" in html
