"""The lot pages (issue 17): one standalone page per lot, its potency record, built from the result tables."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from pagekit import REEXPORTED, SETTINGS, Page, chromium, many_plates, pdf_pages, run_tables, screenshot_ink
from PIL import Image

from cr51.figures import lot_class, lot_colours
from cr51.report import fmt
from cr51.report.lot_page import PLATE_ROWS, build_lot_page, build_lot_pages, css_string, write_pages
from cr51.report.names import campaign_page, lot_page, plate_page

GENERATED = "2026-12-02 09:00 UTC"


@pytest.fixture(scope="module")
def tables():
    return run_tables()


@pytest.fixture(scope="module")
def pages(tables):
    return build_lot_pages(tables, SETTINGS, generated=GENERATED)


def page_of(pages, lot):
    return Page(pages[lot_page(lot)])


def test_every_lot_and_reference_gets_a_page_under_its_name(tables, pages):
    lots = set(tables["potency"]["lot"]) | set(tables["qc"]["reference_lot"])
    assert set(pages) == {lot_page(x) for x in lots}
    assert {"LOT-A", "LOT-Z", "REF-001", "REF-002"} <= lots


def test_headings_product_and_one_block_per_campaign(pages):
    html = pages[lot_page("LOT-A")]
    p = Page(html)
    assert ("h1", "Lot LOT-A — potency record") in p.headings
    h2 = [text for tag, text in p.headings if tag == "h2"]
    assert h2[0] == "Estimates"
    assert [h for h in h2 if h.startswith("campaign ")] == [
        "campaign REF-001: against reference lot REF-001",
        "campaign S2/REF-002: against reference lot REF-002",
    ]
    assert "Superseded numbers" in h2
    assert "product Octagam" in html and GENERATED in html
    assert html.count('<section class="campaign-block"') == 2


def test_the_numbers_on_the_page_equal_the_tables(tables, pages):
    for lot in ("LOT-A", "LOT-C", "LOT-Z"):
        p = page_of(pages, lot)
        pot = tables["potency"][tables["potency"]["lot"] == lot]
        for col in ("rp", "rp_lo", "rp_hi", "parallel_f_p"):
            assert p.column("potency", col) == {r["plate"]: fmt(r[col]) for r in pot.to_dict("records")}, (lot, col)
        comb = tables["potency_combined"][tables["potency_combined"]["lot"] == lot]
        for col in ("n_plates", "rp", "rp_lo", "rp_hi", "homogeneity_chi2", "homogeneity_p"):
            want = {r["reference_lot"]: fmt(r[col]) for r in comb.to_dict("records")}
            assert p.column("potency_combined", col, "reference") == want, (lot, col)
        camp = tables["campaign_lots"][tables["campaign_lots"]["lot"] == lot]
        for col in ("rp", "rp_lo", "rp_hi", "n_plates"):
            want = {r["campaign"]: fmt(r[col]) for r in camp.to_dict("records")}
            assert p.column("campaign_lots", col, "campaign") == want, (lot, col)


def test_each_plate_row_shows_its_date_donor_and_whether_it_was_combined(tables, pages):
    html = pages[lot_page("LOT-B")]
    inputs = tables["potency_combined_inputs"].set_index(["plate", "lot"])
    for r in tables["qc"][~tables["qc"]["plate"].str.startswith("s2_")].to_dict("records"):
        row = re.search(rf'<tr data-plate="{r["plate"]}">(.*?)</tr>', html).group(1)
        assert f"<td>{r['date']}</td><td>{r['donor']}</td>" in row
        combined = bool(inputs.loc[(r["plate"], "LOT-B"), "included"])
        assert ('<td>yes</td><td class="reason">' in row) == combined
        if not combined:
            assert inputs.loc[(r["plate"], "LOT-B"), "reason"] in row  # e.g. the plate failed QC
    assert "plate failed QC" in html


def test_forests_never_put_two_campaigns_on_one_axis(pages):
    html = pages[lot_page("LOT-A")]
    forests = re.findall(r'<figure class="forest">(.*?)</figure>', html)
    assert len(forests) == 2
    first, second = (Page(f).svgs[0] for f in forests)
    assert any("reference lot REF-001" in s for s in first) and not any("REF-002" in s for s in first)
    assert any("reference lot REF-002" in s for s in second) and not any("REF-001" in s for s in second)
    assert {s for s in first if re.fullmatch(r"p\d\d.*", s)} and not any(s.startswith("s2_") for s in first)
    assert {s for s in second if s.startswith("s2_")} and not any(re.fullmatch(r"p\d\d.*", s) for s in second)
    # each forest has the campaign estimate and the combined estimate
    assert any(s.startswith("campaign, fixed blocks") for s in first)
    assert any(s.startswith("Ph. Eur. combined") for s in second)


def test_the_lot_over_time_plots_one_point_per_dated_plate(tables, pages):
    html = pages[lot_page("LOT-A")]
    times = re.findall(r'<figure class="time">(.*?)</figure>', html)
    assert len(times) == 2
    pot = tables["potency"][(tables["potency"]["lot"] == "LOT-A")]
    inc = tables["potency_combined_inputs"]
    inc = set(inc[(inc["lot"] == "LOT-A") & inc["included"]]["plate"])
    n_in = sum(1 for p in pot["plate"] if p in inc and not p.startswith("s2_"))
    n_out = sum(1 for p in pot["plate"] if p not in inc and not p.startswith("s2_"))
    svg = times[0]
    filled = re.findall(r'<path d="([^"]*)" stroke-width="6" stroke-linecap="round" class=', svg)
    assert len(filled) == 1 and filled[0].count("M") == n_in
    assert svg.count("<circle ") == n_out == 1


def test_links_are_relative_and_point_at_the_pages_names_gives(tables, pages):
    p = page_of(pages, "LOT-A")
    plates = set(tables["potency"][tables["potency"]["lot"] == "LOT-A"]["plate"])
    allowed = {"../report.html", "../" + campaign_page("REF-001"), "../" + campaign_page("S2/REF-002")}
    allowed |= {"../" + plate_page(x) for x in plates}
    assert set(p.hrefs) <= allowed
    assert {"../" + plate_page(x) for x in plates} <= set(p.hrefs)
    assert "../report.html" in p.hrefs and "../" + campaign_page("S2/REF-002") in p.hrefs
    assert p.srcs == []  # nothing loaded from anywhere: CSS and JS are inline
    for page in pages.values():
        for h in Page(page).hrefs:
            assert not re.match(r"^[a-z]+:|^/|^//", h), h


def test_superseded_numbers_come_from_plate_history(tables, pages):
    p = page_of(pages, "LOT-A")
    hist = tables["plate_history"]
    old = hist[(hist["plate"] == REEXPORTED) & (hist["lot"] == "LOT-A") & ~hist["current"]].iloc[0]
    assert p.column("plate_history", "rp") == {REEXPORTED: fmt(old["rp"])}
    assert p.column("plate_history", "rp_lo") == {REEXPORTED: fmt(old["rp_lo"])}
    current = tables["potency"][(tables["potency"]["plate"] == REEXPORTED) & (tables["potency"]["lot"] == "LOT-A")]
    assert p.column("potency", "rp")[REEXPORTED] == fmt(current["rp"].iloc[0]) != fmt(old["rp"])


def test_a_reference_lot_page_lists_the_plates_it_was_the_reference_of(tables, pages):
    html = pages[lot_page("REF-002")]
    assert "is the reference lot" in html
    plates = tables["qc"][tables["qc"]["reference_lot"] == "REF-002"]["plate"]
    assert {"../" + plate_page(x) for x in plates} <= set(Page(html).hrefs)
    assert "../" + campaign_page("S2/REF-002") in Page(html).hrefs


def test_a_hostile_lot_name_stays_text(tables):
    hostile = '=HYPERLINK("x")</style><script>alert(1)</script>"'
    t = {k: v.replace({"LOT-A": hostile}) if "lot" in v.columns else v for k, v in tables.items()}
    html = build_lot_page(hostile, t, SETTINGS, generated=GENERATED)
    assert "<script>alert(1)" not in html and html.count("</style>") == 1
    assert html.count("<script>") == 1  # the report's own script
    assert "&lt;script&gt;alert(1)" in html
    head = css_string(f"Lot {hostile} — potency record")  # the printed page header
    assert head in html and '"' not in head[1:-1] and "<" not in head


def test_a_thousand_plates_give_a_page_well_under_a_megabyte():
    t = many_plates(1000)
    html = build_lot_pages(t, SETTINGS, generated=GENERATED, lots=["LOT-B"])[lot_page("LOT-B")]
    n = int((t["potency"]["lot"] == "LOT-B").sum())
    assert n >= 1000
    assert len(html.encode()) < 400_000, len(html.encode())
    p = Page(html)
    assert len(p.column("potency", "rp")) == PLATE_ROWS  # the most recent plates are listed
    years = re.search(r'<table class="data" data-table="years">(.*?)</table>', html).group(1)
    counts = [int(x) for x in re.findall(r'<tr><td>\d{4}</td><td class="n">(\d+)</td>', years)]
    assert sum(counts) == n - PLATE_ROWS  # the older plates, summarised per year


def test_write_pages_leaves_unchanged_pages_alone(tmp_path, pages):
    some = dict(list(pages.items())[:2])
    assert sorted(write_pages(some, tmp_path)) == sorted(some)
    first = {rel: (tmp_path / rel).stat().st_mtime_ns for rel in some}
    assert write_pages(some, tmp_path) == []
    assert {rel: (tmp_path / rel).stat().st_mtime_ns for rel in some} == first
    rel = next(iter(some))
    assert write_pages({rel: some[rel] + " "}, tmp_path) == [rel]
    assert (tmp_path / rel).read_text(encoding="utf-8") == some[rel] + " "


@pytest.mark.browser
def test_browser_renders_the_lot_page(tmp_path, pages):
    write_pages(pages, tmp_path)
    page = tmp_path / lot_page("LOT-A")
    png = tmp_path / "lot.png"
    proc = chromium(f"--screenshot={png}", "--window-size=1280,1800", page.as_uri(), tmp=tmp_path)
    assert png.exists(), proc.stderr[-2000:]
    assert screenshot_ink(png) > 0.03
    dom = chromium("--dump-dom", page.as_uri(), tmp=tmp_path).stdout
    assert "Lot LOT-A — potency record" in dom and dom.count("<svg") == 4


@pytest.mark.browser
def test_the_lot_page_prints_on_at_most_three_a4_pages(tmp_path, tables, pages):
    write_pages(pages, tmp_path)
    n_plates = int((tables["potency"]["lot"] == "LOT-B").sum())
    assert 10 <= n_plates <= 12
    data = _print_to_pdf(tmp_path, "LOT-B").read_bytes()
    boxes = re.findall(rb"/MediaBox\s*\[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", data)
    assert boxes and all(abs(float(w) - 595.3) < 1 and abs(float(h) - 841.9) < 1 for w, h in boxes), boxes  # A4
    assert 1 <= pdf_pages(data) <= 3, pdf_pages(data)


def _print_to_pdf(folder, lot: str):
    """The lot's page in ``folder`` printed by headless Chromium (``--print-to-pdf``): the PDF's path."""
    pdf = folder / "lot.pdf"
    proc = chromium(f"--print-to-pdf={pdf}", "--no-pdf-header-footer", (folder / lot_page(lot)).as_uri(),
                    tmp=folder)  # fmt: skip
    assert pdf.exists(), proc.stderr[-2000:]
    return pdf


def _printed_pages(tables, tmp_path, lot: str) -> list[np.ndarray]:
    """The lot's page printed by Chromium (``--print-to-pdf``) and rendered by ``pdftoppm`` at 40 dpi: one
    ink mask (pixel darker than light grey) per page."""
    pdftoppm = shutil.which("pdftoppm")
    if pdftoppm is None:
        pytest.skip("pdftoppm is not installed (tools/setup-system.sh installs poppler-utils as root on Debian)")
    tmp_path.mkdir(parents=True, exist_ok=True)
    write_pages(build_lot_pages(tables, SETTINGS, generated=GENERATED), tmp_path)
    pdf = _print_to_pdf(tmp_path, lot)
    subprocess.run([pdftoppm, "-r", "40", "-png", str(pdf), str(tmp_path / "page")], check=True, timeout=120)
    pngs = sorted(tmp_path.glob("page-*.png"))
    assert len(pngs) == pdf_pages(pdf.read_bytes())
    return [np.asarray(Image.open(png).convert("L")) < 200 for png in pngs]


@pytest.mark.browser
def test_the_printed_potency_record_is_bounded_and_clean_page_by_page(tmp_path):
    """The lot page as a printer gets it (issue 17: checked with ``--print-to-pdf`` and ``pdftoppm``), for a
    lot in two campaigns with a long history and superseded versions: at most 5 A4 pages (about two per
    campaign and one of superseded numbers), as many at ~2,400 plates as at ~600 (the page lists the most
    recent plates and superseded rows and summarises the older ones per year: its print does not grow
    with the history); every page carries ink (no blank page) and nothing reaches into the left or right
    margin (12 mm of the 210 mm width: a table or figure wider than the paper would print there)."""
    short, long = many_plates(600), many_plates(2400)
    assert int((long["potency"]["lot"] == "LOT-A").sum()) >= 2000
    assert set(long["potency_combined"]["reference_lot"]) >= {"REF-001", "REF-002"}
    pages_short = _printed_pages(short, tmp_path / "short", "LOT-A")
    pages_long = _printed_pages(long, tmp_path / "long", "LOT-A")
    assert len(pages_short) == len(pages_long) <= 5, (len(pages_short), len(pages_long))
    for ink in pages_long:
        height, width = ink.shape
        assert abs(height / width - 297 / 210) < 0.02, (height, width)  # A4 portrait
        assert ink.mean() > 0.01
        columns = np.flatnonzero(ink.any(axis=0)) / width
        assert columns.min() > 10 / 210 and columns.max() < 200 / 210, (columns.min(), columns.max())


def test_a_lot_has_its_index_colour_on_its_page(tables, pages):
    refs = sorted(set(tables["qc"]["reference_lot"]))
    colours = lot_colours(set(tables["potency"]["lot"]) | set(refs), refs)
    assert len({colours[x] for x in ("LOT-A", "LOT-B", "LOT-C")}) == 3
    for lot in ("LOT-A", "LOT-B", "LOT-C"):
        assert f".{lot_class(lot)}{{color:{colours[lot]}}}" in pages[lot_page(lot)]
