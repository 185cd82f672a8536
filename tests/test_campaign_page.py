"""The campaign pages (issue 17): one standalone page per campaign, built from the campaign tables."""

from __future__ import annotations

import re
from html import unescape

import pytest
from pagekit import SETTINGS, Page, chromium, many_plates, run_tables, screenshot_ink

from cr51.report import fmt
from cr51.report.campaign_page import INPUT_ROWS, build_campaign_pages
from cr51.report.campaign_section import answer
from cr51.report.lot_page import write_pages
from cr51.report.names import campaign_page, lot_page, plate_page

GENERATED = "2026-12-02 09:00 UTC"
CAMPAIGNS = ("REF-001", "S2/REF-002")


@pytest.fixture(scope="module")
def tables():
    return run_tables()


@pytest.fixture(scope="module")
def pages(tables):
    return build_campaign_pages(tables, SETTINGS, generated=GENERATED)


def rows_of(df, camp):
    return df[df["campaign"] == camp]


def test_one_page_per_campaign_with_its_sections(tables, pages):
    assert set(pages) == {campaign_page(c) for c in CAMPAIGNS}
    for camp in CAMPAIGNS:
        html = pages[campaign_page(camp)]
        p = Page(html)
        assert ("h1", f"Campaign {camp}") in p.headings
        h2 = [text for tag, text in p.headings if tag == "h2"]
        assert h2 == [
            "Campaign: do the lots differ across donors?",
            "Campaign potency per lot (95 % CI)",
            "Tests",
            "Inputs: every plate × lot",
        ]
        sentence = answer(camp, tables["campaign_tests"], tables["campaign_pairs"], SETTINGS.potency.alpha)
        assert sentence in [unescape(x) for x in re.findall(r'<p class="answer">(.*?)</p>', html)]
        assert html.count('data-table="campaign_pairs"') == 1 and html.count('data-table="campaign_similarity"') == 1


def test_a_page_holds_its_campaign_only(tables, pages):
    s2 = pages[campaign_page("S2/REF-002")]
    first = pages[campaign_page("REF-001")]
    assert "LOT-Z" in s2 and "LOT-B" not in s2 and 'data-plate="p00"' not in s2
    assert "LOT-Z" not in first and "s2_0" not in first
    assert f"Campaign {CAMPAIGNS[1]}:" in s2 and f"Campaign {CAMPAIGNS[0]}:" not in s2


def test_the_numbers_on_the_page_equal_the_tables(tables, pages):
    for camp in CAMPAIGNS:
        html = pages[campaign_page(camp)]
        p = Page(html)
        lots = rows_of(tables["campaign_lots"], camp)
        for table in ("campaign_lots", "lot_links"):
            for col in ("rp", "rp_lo", "rp_hi"):
                want = {r["lot"]: fmt(r[col]) for r in lots.to_dict("records")}
                assert p.column(table, col, "lot") == want, (camp, table, col)
        tests = rows_of(tables["campaign_tests"], camp)
        for col in ("statistic", "df1", "df2", "p", "sigma2_residual"):
            want = {r["test"]: fmt(r[col]) for r in tests.to_dict("records")}
            assert p.column("campaign_tests", col, "test") == want, (camp, col)
        inputs = rows_of(tables["campaign_inputs"], camp)
        shown = {
            (plate, lot): text
            for plate, row in re.findall(r'<tr data-plate="([^"]+)">(.*?)</tr>', html.split('data-table="campaign_inputs"')[1])
            for lot, text in re.findall(r'<td data-lot="([^"]+)" class="n" data-c="log_ic50">([^<]*)</td>', row)
        }  # fmt: skip
        inc = inputs[inputs["included"]]
        assert shown == {(r["plate"], r["lot"]): fmt(r["log_ic50"]) for r in inc.to_dict("records")}


def test_every_input_left_out_shows_its_reason(tables, pages):
    html = pages[campaign_page("REF-001")]
    inputs = rows_of(tables["campaign_inputs"], "REF-001")
    out = inputs[~inputs["included"]]
    assert len(out) >= 6  # the plate failing QC: every lot of it
    legend = {k: unescape(v) for k, v in re.findall(r'<li value="(\d+)">([^<]*)</li>', html)}
    part = html.split('data-table="campaign_inputs"')[1]
    for r in out.to_dict("records"):
        row = re.search(rf'<tr data-plate="{r["plate"]}">(.*?)</tr>', part).group(1)
        k = re.search(rf'<td class="muted" data-lot="{r["lot"]}" data-excluded="(\d+)"', row).group(1)
        assert legend[k] == r["reason"]
    assert "plate failed QC" in legend.values()


def test_the_forest_has_one_block_per_lot_with_this_campaigns_plates(tables, pages):
    html = pages[campaign_page("REF-001")]
    svg = Page(re.search(r'<figure class="forest tall">(.*?)</figure>', html).group(1)).svgs[0]
    lots = [x for x in rows_of(tables["campaign_lots"], "REF-001")["lot"] if x != "REF-001"]
    assert [s for s in svg if s in lots] == lots
    assert "REF-001" not in svg and "combined: no valid plates" not in svg  # the reference is the RP = 1 line
    assert any("reference lot REF-001" in s for s in svg)
    assert not any(s.startswith("s2_") for s in svg)
    diamonds = [s for s in svg if s.startswith("campaign (")]
    assert len(diamonds) == len(lots)
    camp = rows_of(tables["campaign_lots"], "REF-001").set_index("lot")
    for lot in lots:
        r = camp.loc[lot]
        assert f"{r['rp']:.4g} ({r['rp_lo']:.4g}–{r['rp_hi']:.4g})" in svg


def test_links_go_to_the_lot_and_plate_pages_and_the_report(tables, pages):
    for camp in CAMPAIGNS:
        p = Page(pages[campaign_page(camp)])
        inputs = rows_of(tables["campaign_inputs"], camp)
        wanted = {"../report.html"} | {"../" + lot_page(x) for x in inputs["lot"]}
        wanted |= {"../" + plate_page(x) for x in inputs["plate"]}
        assert set(p.hrefs) == wanted
        assert p.srcs == []


def test_a_long_campaign_stays_small():
    t = many_plates(1000)
    html = build_campaign_pages(t, SETTINGS, generated=GENERATED, campaigns=["REF-001"])[campaign_page("REF-001")]
    assert len(html.encode()) < 600_000, len(html.encode())
    part = html.split('data-table="campaign_inputs"')[1]
    assert part.count("<tr data-plate=") == INPUT_ROWS
    assert f"The {INPUT_ROWS} most recent of" in html


@pytest.mark.browser
def test_browser_renders_the_campaign_page(tmp_path, pages):
    write_pages(pages, tmp_path)
    page = tmp_path / campaign_page("REF-001")
    png = tmp_path / "campaign.png"
    proc = chromium(f"--screenshot={png}", "--window-size=1280,1800", page.as_uri(), tmp=tmp_path)
    assert png.exists(), proc.stderr[-2000:]
    assert screenshot_ink(png) > 0.03
    dom = chromium("--dump-dom", page.as_uri(), tmp=tmp_path).stdout
    assert "Campaign REF-001" in dom and 'class="answer"' in dom and dom.count("<svg") == 1
