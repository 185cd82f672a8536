"""A small simulated run's result tables for the lot page, campaign page and workbook tests.

Eleven plates against REF-001 (one failing QC), three plates of study S2 against REF-002 that also
measure LOT-A, through the package as the batch and collect jobs run them (fits, potency, combination,
campaign tables), and a plate_history with one superseded version (the numbers the plate gave before
a corrected re-export, here: its current numbers halved). Built once per test session.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CONFIG
from PIL import Image

from cr51.batch import process_batch
from cr51.campaign import analyse_run, products_of
from cr51.combination import combine_plates
from cr51.plate import PlateInput
from cr51.settings import Analysis
from cr51.simulate import simulate_plate, write_plate

SETTINGS = Analysis.from_config(CONFIG)
#: The plate whose earlier version is superseded in plate_history.
REEXPORTED = "p03"


@functools.cache
def run_tables() -> dict[str, pd.DataFrame]:
    """{table name: frame} of the simulated run (do not modify: shared by the tests)."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        sims = [
            simulate_plate(f"p{i:02d}", np.random.default_rng(100 + i), donor=f"D{i % 4}", high_spontaneous=i == 5)
            for i in range(11)
        ]
        lots2 = {"REF-002": 1.0, "LOT-A": 1.3, "LOT-Z": 0.7}
        sims += [
            simulate_plate(f"s2_{i}", np.random.default_rng(200 + i), lots=lots2, reference_lot="REF-002",
                           donor=f"E{i}", date=f"2026-0{i + 3}-1{i}")
            for i in range(3)
        ]  # fmt: skip
        plates = []
        for p in sims:
            write_plate(base, p, "well_list")
            if p.name.startswith("s2_"):
                toml = base / f"{p.name}.toml"
                toml.write_text(toml.read_text().replace("[expt]", '[expt]\nstudy = "S2"', 1))
            plates.append(PlateInput(p.name, str(base / f"{p.name}.toml"), str(base / p.export_name)))
        out = process_batch(plates, CONFIG)
    t = dict(out.tables)
    t["potency_combined"], t["potency_combined_inputs"] = combine_plates(t["potency"], t["qc"], CONFIG)
    t.update(analyse_run(t["potency"], t["qc"], SETTINGS, products_of([t["wells"]])))
    pot = t["potency"]
    current = pot[["plate", "lot", "rp", "rp_lo", "rp_hi", "status"]].assign(
        version=1, current=True, accepted_at="2026-11-01T10:00:00Z", replaced_at=""
    )
    old = current[current["plate"] == REEXPORTED].assign(
        version=1, current=False, replaced_at="2026-11-20T09:00:00Z",
        rp=lambda d: d["rp"] / 2, rp_lo=lambda d: d["rp_lo"] / 2, rp_hi=lambda d: d["rp_hi"] / 2,
    )  # fmt: skip
    current.loc[current["plate"] == REEXPORTED, "version"] = 2
    hist = pd.concat([old, current], ignore_index=True)
    for c in ("layout_sha256", "export_sha256", "templates_sha256", "admitted_at"):
        hist[c] = ""
    t["plate_history"] = hist
    return t


class Page(HTMLParser):
    """A page's numeric cells (``cells``: [(data-c, text, row attrs, table's data-table or else class)]),
    links (``hrefs``), resource references (``srcs``; both as ``refs``: [(tag, src or href)]), element ids
    (``ids``), headings (``headings``: [(tag, text)]) and the ``<text>`` of each SVG (``svgs``)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.cells: list[tuple[str, str, dict[str, str], str]] = []
        self.hrefs: list[str] = []
        self.srcs: list[str] = []
        self.refs: list[tuple[str, str]] = []
        self.ids: set[str] = set()
        self.headings: list[tuple[str, str]] = []
        self.svgs: list[list[str]] = []
        self._row: dict[str, str] = {}
        self._table = ""
        self._open: list[tuple[str, str]] = []
        self._text: list[str] = []
        self._heading: str | None = None
        self._svg_text = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.ids.add(a.get("id", ""))
        for key, found in (("src", self.srcs), ("href", self.hrefs)):
            if key in a:
                found.append(a[key])
                self.refs.append((tag, a[key]))
        if tag == "table":
            self._table = a.get("data-table", a.get("class", ""))
        if tag == "tr":
            self._row = a
        if tag in ("h1", "h2", "h3", "h4"):
            self._heading, self._text = tag, []
        if tag == "svg":
            self.svgs.append([])
        self._svg_text = tag == "text"
        if "data-c" in a:
            self._open.append((a["data-c"], tag))
            self._text = []

    def handle_endtag(self, tag):
        if self._open and self._open[-1][1] == tag:
            col, _ = self._open.pop()
            self.cells.append((col, "".join(self._text), dict(self._row), self._table))
        if tag == self._heading:
            self.headings.append((tag, "".join(self._text)))
            self._heading = None
        if tag == "text":
            self._svg_text = False

    def handle_data(self, data):
        self._text.append(data)
        if self._svg_text and self.svgs:
            self.svgs[-1].append(data)

    def column(self, table: str, col: str, key: str = "plate") -> dict[str, str]:
        """{row's data-<key>: text} of the cells of column ``col`` in the tables ``data-table=table``."""
        return {row.get(f"data-{key}", ""): text for c, text, row, t in self.cells if t == table and c == col}


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    """Run headless Chromium (skip the test when it is not installed)."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (tools/setup-system.sh installs it as root on Debian)")
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args], capture_output=True, text=True, timeout=120
    )


def pdf_pages(pdf: bytes) -> int:
    """The page count of a PDF Chromium wrote (its page objects: ``/Type /Page``, not ``/Pages``)."""
    return len(re.findall(rb"/Type\s*/Page(?![s\w])", pdf))


def screenshot_ink(png: Path) -> float:
    """The share of a screenshot's pixels that are not (nearly) white."""
    grey = np.asarray(Image.open(png).convert("L"))
    return float((grey < 200).mean())


def many_plates(n: int) -> dict[str, pd.DataFrame]:
    """The run with its REF-001 plates copied to about ``n`` plates (new names ``<plate>_<k>``, one assay date a
    day from 2020-01-01): a long history for the size checks. The combined and campaign tables stay the run's."""
    t = run_tables()
    base = [p for p in t["qc"]["plate"] if not str(p).startswith("s2_")]
    copies = -(-n // len(base))
    out = dict(t)
    for name in ("potency", "qc", "potency_combined_inputs", "campaign_inputs", "plate_history"):
        df = t[name]
        mine = df[df["plate"].isin(base)]
        parts = [df[~df["plate"].isin(base)]]
        for k in range(copies):
            d = mine.assign(plate=mine["plate"] + f"_{k:04d}")
            if name == "qc":
                start = pd.Timestamp("2020-01-01") + pd.Timedelta(days=k * len(base))
                d = d.assign(date=[(start + pd.Timedelta(days=i)).date().isoformat() for i in range(len(d))])
            parts.append(d)
        out[name] = pd.concat(parts, ignore_index=True)
    return out
