"""The index and the plate pages of a real run: an unchanged plate's page is never rewritten (same
bytes, same mtime) when its batch reruns; every local link of every page resolves inside results/;
a retracted plate's page goes; the numbers on a plate page equal the CSVs (issue 17)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from batchkit import add_plate, pipeline_copy, run_batch

from cr51.report.names import plate_page
from cr51.tables import read_table

pytestmark = pytest.mark.slow


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        for key in ("href", "src"):
            if a.get(key):
                self.links.append(a[key])


def local_links(page: Path) -> tuple[list[str], set[str]]:
    parser = Links()
    parser.feed(page.read_text(encoding="utf-8"))
    data = re.search(r'<script type="application/json" id="plate-data"[^>]*>(.*?)</script>', page.read_text())
    if data:  # the index's plate rows: their page links
        import json

        parser.links += [row[1] for row in json.loads(data.group(1))]
    return parser.links, parser.ids


def broken_links(results: Path) -> list[str]:
    """Every href/src of every page that is not an existing file inside ``results`` (or an id of its page)."""
    bad = []
    root = results.resolve()
    pages = [results / "report.html"] + [
        p for d in ("plates", "lots", "campaigns") for p in sorted((results / d).glob("*.html"))
    ]
    assert len(pages) > 3
    for page in pages:
        links, ids = local_links(page)
        for link in links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc:
                bad.append(f"{page.name}: external {link}")
                continue
            if not parts.path:
                if unquote(parts.fragment) not in ids:
                    bad.append(f"{page.name}: no id {link}")
                continue
            target = (page.parent / unquote(parts.path)).resolve()
            if not target.is_file() or root not in target.parents:
                bad.append(f"{page.name}: {link}")
    return bad


def pages(results: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (results / "plates").glob("*.html")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("pages")
    work = pipeline_copy(base / "pipeline")
    raw, results = base / "raw", base / "results"
    add_plate(raw, "alpha", 1)
    add_plate(raw, "beta", 2)
    one = ("batch_count=1",)  # every plate in one batch: adding a plate reruns the batch of the others
    p1 = run_batch(work, raw, results, *one)
    assert p1.returncode == 0, p1.stdout + p1.stderr
    first = pages(results)
    add_plate(raw, "gamma", 3)
    p2 = run_batch(work, raw, results, *one)
    assert p2.returncode == 0, p2.stdout + p2.stderr
    second = pages(results)
    links = broken_links(results)
    (raw / "beta.retract").write_text("wrong donor", encoding="utf-8")
    p3 = run_batch(work, raw, results, *one)
    assert p3.returncode == 0, p3.stdout + p3.stderr
    lots = sorted(p.name for p in (results / "lots").glob("*.html"))
    return dict(results=results, first=first, second=second, links=links, third=pages(results), lots=lots)


def name(plate: str) -> str:
    return Path(plate_page(plate)).name


def test_an_unchanged_plates_page_keeps_its_bytes_and_mtime(runs):
    first, second = runs["first"], runs["second"]
    assert set(first) == {name("alpha"), name("beta")}
    assert set(second) == set(first) | {name("gamma")}
    for page in first:
        assert second[page] == first[page], f"{page} rewritten although its plate did not change"


def test_every_local_link_of_every_page_resolves(runs):
    assert runs["links"] == []


def test_a_retracted_plates_page_is_removed(runs):
    assert set(runs["third"]) == {name("alpha"), name("gamma")}
    assert runs["third"][name("alpha")] == runs["first"][name("alpha")]
    assert not (runs["results"] / "figures" / "plates" / name("beta").replace(".html", ".svg")).exists()


def test_a_plate_page_shows_the_numbers_of_the_csvs(runs):
    results = runs["results"]
    html = (results / plate_page("alpha")).read_text(encoding="utf-8")
    from cr51.report import fmt

    qc = read_table(results / "qc.csv").set_index("plate").loc["alpha"]
    for col in ("spontaneous_pct_of_max", "untreated_lysis_pct", "lu20_per_1e7"):
        assert re.search(rf'data-c="{col}"[^>]*>{re.escape(fmt(qc[col]))}<', html), col
    potency = read_table(results / "potency.csv")
    for r in potency[potency["plate"] == "alpha"].to_dict("records"):
        assert f">{fmt(r['rp'])}<" in html, r["lot"]
    files = read_table(results / "files.csv")
    for sha in files.loc[files["plate"] == "alpha", "sha256"]:
        assert sha in html


def test_every_lot_has_a_page_and_the_workbook_is_written(runs):
    from cr51.report.names import lot_page

    potency = read_table(runs["results"] / "potency.csv")
    lots = set(potency["lot"]) | set(read_table(runs["results"] / "qc.csv")["reference_lot"])
    assert runs["lots"] == sorted(Path(lot_page(lot)).name for lot in lots)
    from openpyxl import load_workbook

    wb = load_workbook(runs["results"] / "results.xlsx", read_only=True)
    assert "potency_combined" in wb.sheetnames and "campaign_pairs" in wb.sheetnames
