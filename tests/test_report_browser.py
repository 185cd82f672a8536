"""A real headless Chromium renders the report from disk (no server, no network)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIG
from PIL import Image

from cr51.batch import process_batch
from cr51.combination import combine_plates
from cr51.plate import PlateInput
from cr51.report import ReportInputs, build_report, write_report
from cr51.report.names import plate_page
from cr51.settings import Settings
from cr51.simulate import simulate_plate, write_plate
from cr51.trends import trends_table

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
LAYOUTS = Path(__file__).resolve().parents[1] / "config" / "layouts"


@pytest.fixture(scope="module")
def report_file(tmp_path_factory) -> Path:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (tools/setup-system.sh installs it as root on Debian)")
    base = tmp_path_factory.mktemp("browser")
    plates = []
    for i in range(2):
        p = simulate_plate(f"plate{i}", np.random.default_rng(i), layout="vehicle" if i else "standard")
        write_plate(base, p, "well_list")
        plates.append(PlateInput(p.name, str(base / f"{p.name}.toml"), str(base / p.export_name)))
    out = process_batch(plates, CONFIG, results_dir=base)
    tables = dict(out.tables)
    tables["potency_combined"], tables["potency_combined_inputs"] = combine_plates(
        tables["potency"], tables["qc"], CONFIG
    )
    settings = Settings.from_config(CONFIG)
    tables["trends"] = trends_table(tables["qc"], tables["fits"], settings.trends, settings.analysis.fit.models[0])
    write_report(build_report(ReportInputs(tables, CONFIG)), base / "report.html", base / "figures")
    return base / "report.html"


def chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_rendered_dom_has_the_content_and_the_script_ran(report_file, tmp_path):
    proc = chromium("--dump-dom", report_file.as_uri(), tmp=tmp_path)
    dom = proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'id="summary"' in dom and "Run summary" in dom  # static content
    assert 'id="plate-filter"' in dom and 'id="plate-count"' in dom  # created by the inline script
    start = dom.index('id="plate-index"')
    index = dom[start : dom.index("</table>", start)]
    assert index.count('<tr data-plate="') == 2 and "plate0" in index  # the plate list drawn from its JSON rows
    assert 'id="trends"' in dom and "Levey" in dom
    assert "plate0" in dom and "<svg" in dom


def test_screenshot_is_not_blank(report_file, tmp_path):
    png = tmp_path / "report.png"
    proc = chromium(f"--screenshot={png}", "--window-size=1280,2000", report_file.as_uri(), tmp=tmp_path)
    assert png.exists(), proc.stderr[-2000:]
    grey = np.asarray(Image.open(png).convert("L"))
    assert grey.shape == (2000, 1280)
    ink = (grey < 200).mean()
    assert ink > 0.02, f"only {ink:.1%} of the page is not white: blank or broken page"


def test_plate_page_renders_its_map_and_figures(report_file, tmp_path):
    page = report_file.parent / plate_page("plate0")
    proc = chromium("--dump-dom", page.as_uri(), tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Plate plate0" in proc.stdout and proc.stdout.count("<svg") >= 2 and 'href="../report.html"' in proc.stdout
    png = tmp_path / "plate.png"
    chromium(f"--screenshot={png}", "--window-size=1280,1600", page.as_uri(), tmp=tmp_path)
    grey = np.asarray(Image.open(png).convert("L"))
    assert (grey < 200).mean() > 0.05, "plate page nearly blank"
