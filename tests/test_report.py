"""The HTML report: structure, numbers equal to the tables, self-contained, figures, speed.

Simulated plates go through the package in-process (ingest → fits → potency → plate sections →
combination → report), as the batch and report jobs run them.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CONFIG
from pagekit import Page

from cr51.batch import process_batch
from cr51.combination import combine_plates
from cr51.plate import PlateInput
from cr51.report import ReportInputs, Section, build_report, fmt, plate_id, plate_sections, write_report
from cr51.report.names import plate_page
from cr51.report.plate_page import plate_files
from cr51.schema import FLAGS
from cr51.simulate import simulate_plate, write_plate
from cr51.svg import log_ticks, nice_ticks

LAYOUTS = Path(__file__).resolve().parents[1] / "config" / "layouts"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Five plates (one with vehicle wells and a suppressing vehicle, one failing QC, one outlier) + bad files."""
    raw = tmp_path_factory.mktemp("raw")
    plates = []
    kinds = [
        {},
        {"outlier_well": "G2", "outlier_factor": 2.5},
        {"layout": "vehicle", "vehicle_suppression": {"LOT-A": 0.25}},
        {"high_spontaneous": True},
        {"fmt": "plate_grid"},
    ]
    for i, kw in enumerate(kinds):
        fmt_ = kw.pop("fmt", "well_list")
        p = simulate_plate(f"run_{i:02d}", np.random.default_rng(10 + i), donor=f"D{i % 2}", fmt=fmt_, **kw)
        write_plate(raw, p, fmt_)
        plates.append(PlateInput(p.name, str(raw / f"{p.name}.toml"), str(raw / p.export_name)))
    (raw / "bad.toml").write_text('[meta]\npath = "bad.csv"\n[well.A1]\nrole = "spontaneous"\n')
    (raw / "bad.csv").write_text("Well,CPM\nA1,-5\n")
    plates.append(PlateInput("bad", str(raw / "bad.toml"), str(raw / "bad.csv")))
    pages_dir = tmp_path_factory.mktemp("results")
    out = process_batch(plates, CONFIG, results_dir=pages_dir)
    tables = dict(out.tables)
    pages = {plate: (pages_dir / plate_page(plate)).read_text(encoding="utf-8") for plate in out.files}
    figures = {plate: (pages_dir / plate_files(plate)[1]).read_text(encoding="utf-8") for plate in out.files}
    tables["files"] = pd.concat(
        [tables["files"], pd.DataFrame([{"file": "orphan.csv", "sha256": "ab" * 32, "bytes": 5, "status": "pending",
                                         "plate": "", "reason": "no layout names this export"}])],
        ignore_index=True,
    )  # fmt: skip
    tables["potency_combined"], tables["potency_combined_inputs"] = combine_plates(
        tables["potency"], tables["qc"], CONFIG
    )
    report = build_report(ReportInputs(tables, CONFIG, [str(LAYOUTS / "standard_96.toml")]))
    parser = Page(report.html)
    sections = plate_sections(tables, CONFIG)
    return tables, sections, report, parser, pages, figures


def values(parser: Page, table: str, key: str, col: str) -> dict[str, str]:
    """{row's data-<key>: cell text} of column ``col`` in the tables named ``table``."""
    return {row[f"data-{key}"]: text for c, text, row, t in parser.cells if t == table and c == col}


def test_fmt_rounds_to_four_significant_digits():
    assert fmt(1.152899974540516) == "1.153"
    assert fmt(3.61089972582961e-08) == "3.611e-08"
    assert fmt(5905.465) == "5905"
    assert fmt(11121.6) == "11122"
    assert fmt(float("nan")) == "–" and fmt(None) == "–"
    assert fmt(True) == "yes"


def test_ticks():
    assert nice_ticks(0, 50) == [0, 10, 20, 30, 40, 50]
    assert log_ticks(0.02, 15) == [0.03, 0.1, 0.3, 1, 3, 10]


def test_every_plate_has_a_page_linked_from_the_index(run):
    tables, sections, report, parser, pages, figures = run
    for plate in tables["qc"]["plate"]:
        assert ("a", plate_page(plate)) in parser.refs
        assert plate_id(plate) in pages[plate] and sections[plate].html in pages[plate]
        assert figures[plate].startswith("<svg")
    assert sorted(pages) == sorted(tables["qc"]["plate"])  # the rejected plate has no page


def test_every_lot_is_in_the_report(run):
    tables, _, report, parser, *_ = run
    for lot in tables["potency_combined"]["lot"]:
        assert f'data-lot="{lot}"' in report.html
        assert f">{lot}<" in report.figures["forest.svg"]
    assert "RP = 1: reference lot REF-001" in report.figures["forest.svg"]


def test_combined_potency_numbers_equal_the_table(run):
    tables, _, _, parser, *_ = run
    for col in ("n_plates", "rp", "rp_lo", "rp_hi", "homogeneity_chi2", "homogeneity_p"):
        shown = values(parser, "potency_combined", "lot", col)
        expected = {r["lot"]: fmt(r[col]) for r in tables["potency_combined"].to_dict("records")}
        assert shown == expected, col


def test_lots_differ_numbers_equal_the_table(run):
    tables, _, _, parser, *_ = run
    for col in ("f", "df1", "df2", "p"):
        shown = values(parser, "lots_differ", "plate", col)
        assert shown == {r["plate"]: fmt(r[col]) for r in tables["lots_differ"].to_dict("records")}


def test_plate_sections_show_qc_and_potency_numbers(run):
    tables, sections, *_ = run
    assert sorted(sections) == sorted(tables["qc"]["plate"])
    for q in tables["qc"].to_dict("records"):
        p = Page(sections[q["plate"]].html)
        qc_cells = {c: text for c, text, _, t in p.cells if t == "qc"}
        for col in ("spontaneous_pct_of_max", "spontaneous_cpm", "maximum_cpm", "untreated_lysis_pct",
                    "lu20_per_1e7", "vehicle_suppression_pct"):  # fmt: skip
            assert qc_cells[col] == fmt(q[col]), (q["plate"], col)
        pot = tables["potency"][tables["potency"]["plate"] == q["plate"]]
        for col in ("rp", "rp_lo", "rp_hi", "parallel_f_p", "slope_ratio", "p_holm", "vehicle_suppression_pct"):
            shown = values(p, "potency", "lot", col)
            assert shown == {r["lot"]: fmt(r[col]) for r in pot.to_dict("records")}, (q["plate"], col)


def test_flags_failures_and_rejected_files_are_explained(run):
    tables, sections, report, parser, *_ = run
    failed = tables["qc"].set_index("plate").loc["run_03"]
    assert failed["status"] == "fail"
    assert FLAGS["SPONTANEOUS_HIGH"] in report.html
    assert '<td class="bad">FAIL</td>' in sections["run_03"].html
    bad = tables["files"][tables["files"]["status"] != "ok"]
    for r in bad.to_dict("records"):
        assert f'data-file="{r["file"]}"' in report.html
    assert "negative" in report.html  # the rejected export's reason, in words
    assert "no layout names this export" in report.html
    assert FLAGS["OUTLIER"] in sections["run_01"].html
    assert 'class="h' in sections["run_01"].html and ' o"' in sections["run_01"].html  # outlier well marked on the map
    vehicle = values(parser, "vehicle", "plate", "vehicle_suppression_pct")
    assert "run_02" in vehicle and "VEHICLE_SUPPRESSION" in report.html


def test_parallel_curves_are_drawn_from_the_joint_fit(run):
    tables, sections, *_ = run
    pot = tables["potency"][tables["potency"]["plate"] == "run_00"]
    assert pot["joint_e"].notna().all() and pot["joint_slope"].nunique() == 1
    curves = sections["run_00"].figure("curves").svg()
    assert f'<figure class="curves">{curves}<figcaption>' in sections["run_00"].html
    assert curves.count("<polyline") == len(pot) + 1  # every lot and the reference
    assert "IVIG (mg/mL)" in curves and "% specific lysis" in curves and ">0<" in curves


def test_report_is_self_contained(run):
    _, _, report, parser, *_ = run
    assert not [r for r in parser.refs if re.match(r"(https?:)?//", r[1])], parser.refs
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", report.html)
    assert "@import" not in report.html and "url(" not in report.html
    assert "@media print" in report.html
    for svg_text in report.figures.values():
        assert svg_text.startswith("<svg") and "currentColor" not in svg_text


def test_provenance_lists_versions_config_and_hashes(run):
    tables, _, report, *_ = run
    for r in tables["files"].to_dict("records"):
        if isinstance(r["sha256"], str) and r["sha256"]:
            assert r["sha256"] in report.html
    assert "standard_96.toml" in report.html
    assert "numpy" in report.html and "snakemake" in report.html
    assert "max_spontaneous_pct_of_max: 20" in report.html


def test_write_report_writes_html_and_figures(run, tmp_path):
    _, _, report, *_ = run
    write_report(report, tmp_path / "report.html", tmp_path / "figures")
    assert (tmp_path / "report.html").read_text(encoding="utf-8") == report.html
    assert (tmp_path / "figures" / "forest.svg").read_text(encoding="utf-8") == report.figures["forest.svg"]


def test_write_report_replaces_files_atomically(run, tmp_path):
    """A write that fails half-way leaves the earlier report and figures whole, and no temporary files."""
    _, _, report, *_ = run
    write_report(report, tmp_path / "report.html", tmp_path / "figures")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    broken = type(report)("<html>new</html>", {**report.figures, "forest.svg": None})  # not text: fails
    with pytest.raises(TypeError):
        write_report(broken, tmp_path / "report.html", tmp_path / "figures")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_an_empty_run_still_has_a_report():
    empty = {name: pd.DataFrame(columns=cols) for name, cols in {
        "files": ["file", "sha256", "bytes", "status", "plate", "reason"],
        "qc": ["plate", "status", "flags", "reference_lot", "date", "donor", "vehicle_suppression_pct"],
        "potency": ["plate", "lot", "status", "parallel_f_p", "equivalent", "vehicle_suppression_pct", "vehicle_flag"],
        "lots_differ": ["plate", "f", "df1", "df2", "p"],
        "potency_combined": ["lot"], "potency_combined_inputs": ["plate", "lot", "rp", "rp_lo", "rp_hi", "included"],
    }.items()}  # fmt: skip
    report = build_report(ReportInputs(empty, CONFIG))
    assert "Run summary" in report.html and list(report.figures) == ["forest.svg"]


def test_plate_sections_are_small(run):
    """Budget at scale: ~25 kB of section per plate (a plate page is ≤ 200 kB; speed: make bench)."""
    tables, *_ = run
    n = 60  # the same plates repeated under new names
    big = {
        name: pd.concat([tables[name].assign(plate=tables[name]["plate"] + f"#{k}") for k in range(n // 5)], ignore_index=True)
        for name in ("wells", "lysis", "qc", "potency", "lots_differ")
    }  # fmt: skip
    sections = plate_sections(big, CONFIG)
    assert len(sections) == n
    assert sum(len(s.html) for s in sections.values()) / n < 30_000


def test_plate_pages_are_under_200_kb(run):
    *_, pages, figures = run
    assert pages and all(len(p.encode()) < 200_000 for p in pages.values())


@pytest.mark.slow
def test_pipeline_writes_the_report_and_snakemake_report_works(tmp_path):
    """A run on the shipped example plates writes report.html and figures; ``snakemake --report`` succeeds."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    smk = [str(Path(sys.executable).parent / "snakemake"), "--cores", "2", "--config", "raw_dir=resources/example",
           f"results_dir={tmp_path / 'results'}", "settle_seconds=0"]  # fmt: skip
    proc = subprocess.run(smk, cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (tmp_path / "results" / "report.html").read_text(encoding="utf-8")
    assert "Run summary" in html and (tmp_path / "results" / "figures" / "forest.svg").exists()
    out = tmp_path / "smk-report.html"
    proc = subprocess.run([*smk, "--report", str(out)], cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.stat().st_size > 0


def test_sections_are_plain_data_that_round_trip_through_json(run):
    """Batch jobs hand collect plain data (str, int, float, tuples), not HTML to take apart."""
    _, sections, *_ = run

    def plain(v):
        if isinstance(v, tuple):
            return all(plain(x) for x in v)
        if dataclasses.is_dataclass(v):
            return all(plain(getattr(v, f.name)) for f in dataclasses.fields(v))
        return type(v) in (str, int, float)

    for plate, s in sections.items():
        assert s.plate == plate and plain(s)
        assert f'data-lots="{"|".join(s.lots)}"' in s.html  # the lots the page colours are the map's
        text = json.dumps(s.to_dict())
        back = Section.from_dict(json.loads(text))
        assert back == s and json.dumps(back.to_dict()) == text
        assert back.figure("curves").svg() in s.html


def test_standalone_figures_use_the_fixed_colours_of_the_plate_page(run):
    _, sections, _, _, pages, figures = run
    for plate in ("run_00", "run_02"):
        inline = sections[plate].figure("curves").svg()
        standalone = figures[plate]
        for cls in set(re.findall(r'class="(l[0-9a-f]{8})"', inline)):
            colour = re.search(rf"\.{cls}{{color:(#[0-9A-Fa-f]{{6}})}}", pages[plate]).group(1)
            assert f'stroke="{colour}"' in standalone
        assert "class=" not in standalone and "currentColor" not in standalone


def test_plates_breaking_a_control_rule_are_flagged_in_the_plate_list(run):
    tables, *_ = run
    plate = str(tables["qc"]["plate"].iloc[0])
    trends = pd.DataFrame([
        {"plate": plate, "date": "2026-01-01", "quantity": "untreated_lysis_pct", "value": 1.0, "mean": 50.0,
         "sd": 5.0, "rule": "1-3s", "series": "all", "z": -9.8, "warning": "1-2s", "baseline": False,
         "n_baseline": 20, "limits": "final"},
    ])  # fmt: skip
    html = build_report(ReportInputs({**tables, "trends": trends}, CONFIG)).html
    rows = json.loads(re.search(r'id="plate-data"[^>]*>(.*?)</script>', html).group(1))
    flags = {r[0]: r[6] for r in rows}
    assert "trend 1-3s" in flags[plate]
    assert all("trend" not in f for p, f in flags.items() if p != plate)
    assert 'id="trends"' in html


def test_a_damaged_audit_log_is_named_first_on_the_index(run):
    tables, *_ = run
    problem = "the log was cut or truncated: it no longer reaches its last recorded run"
    html = build_report(ReportInputs(tables, CONFIG, audit_problems=[problem])).html
    assert 'id="audit-damaged"' in html and problem in html
    assert html.index('id="audit-damaged"') < html.index('id="summary"')
    assert 'id="audit-damaged"' not in build_report(ReportInputs(tables, CONFIG)).html


def test_largest_cv_by_plate_is_pandas_groupby_max():
    from cr51.report.plate import _largest_by_plate

    lysis = pd.DataFrame(
        {
            "plate": ["a", "b", "a", "c", "a", "b", "d", "d"],
            "cv_pct": [3.5, np.nan, 9.25, np.nan, 1.0, -0.0, 0.0, -0.0],
        }
    )
    want = lysis.groupby("plate")["cv_pct"].max().to_dict()
    got = _largest_by_plate(lysis["plate"].tolist(), lysis["cv_pct"].tolist())
    assert {p: v for p, v in want.items() if not np.isnan(v)} == got and "c" not in got
    assert [np.copysign(1, got[p]) for p in ("b", "d")] == [np.copysign(1, want[p]) for p in ("b", "d")]


def test_plate_page_links_the_lots_with_a_lot_page():
    from cr51.report.names import lot_page
    from cr51.report.plate_page import plate_page
    from cr51.report.section import Section
    from cr51.settings import Analysis

    section = Section("P1", ("A", "B", "None", "REF", "nan"), "<details></details>")  # lots may be called so
    qc = pd.DataFrame({"plate": ["P0", "P1"], "reference_lot": ["X", "REF"]})
    potency = pd.DataFrame({"lot": pd.Series(["A", None, np.nan], dtype=object)})
    files = pd.DataFrame({"file": ["P1.toml"], "status": ["ok"], "bytes": [10], "sha256": ["0" * 64]})
    page = plate_page(section, qc, potency, files, 1, Analysis.from_config(CONFIG))
    nav = page[page.index("<nav>") : page.index("</nav>")]
    assert f'href="../{lot_page("A")}"' in nav and f'href="../{lot_page("REF")}"' in nav  # a potency row; the reference
    assert all(f'href="../{lot_page(lot)}"' not in nav for lot in ("B", "None", "nan", "X"))  # no potency row
    assert nav.count('<a href="../lots/') == 2
