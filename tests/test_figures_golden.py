"""Golden figures: the SVGs of one fixed simulated plate, byte for byte as checked in.

One plate is simulated with a fixed seed, goes through the package as the batch and collect
jobs run it (ingest → fits → potency → plate section; combination → report), and its figures —
suppression curves and forest plot, inline (lot classes) and standalone (fixed colours), and the
E:T titration — are compared with the files in ``tests/data/golden/``. A figure that changes on
purpose (a stroke width, a label) is regenerated with

    CR51_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_figures_golden.py

and the new files are reviewed (open them in a browser) and committed with the change.

The figures print fitted values (coordinates to 0.1 px, labels to 4 significant digits), so a
change of the fits in the last digits moves them only when a value sits on a rounding boundary.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import BATCH_SETTINGS, CONFIG

from cr51.batch import process_plate
from cr51.combination import combine_plates
from cr51.figures import forest_svg, lot_colours, titration_svg
from cr51.plate import PlateInput, analyse_batch, ingest_batch
from cr51.qc import untreated
from cr51.report import ReportInputs, build_report, plate_sections
from cr51.report.plate_page import plate_files
from cr51.report.potency_section import combined_groups, forest_groups
from cr51.simulate import simulate_plate, write_plate

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
REGENERATE = os.environ.get("CR51_REGENERATE_GOLDEN") == "1"
LAYOUTS = Path(__file__).resolve().parents[1] / "config" / "layouts"
PLATE = "golden_01"


@pytest.fixture(scope="module")
def figures(tmp_path_factory) -> dict[str, str]:
    """{golden file name: svg} of the fixed plate, drawn as the report draws them."""
    raw = tmp_path_factory.mktemp("raw")
    p = simulate_plate(PLATE, np.random.default_rng(51), donor="D07", date="2026-03-02")
    write_plate(raw, p)
    plate = PlateInput(p.name, str(raw / f"{p.name}.toml"), str(raw / p.export_name))
    out = process_plate(plate, CONFIG)
    tables = ingest_batch([plate], BATCH_SETTINGS)
    tables.update(analyse_batch(tables["wells"], tables["qc"], BATCH_SETTINGS))
    tables["potency_combined"], tables["potency_combined_inputs"] = combine_plates(
        tables["potency"], tables["qc"], CONFIG
    )
    report = build_report(ReportInputs(tables, CONFIG))
    section = plate_sections(tables, BATCH_SETTINGS)[PLATE]
    page, standalone = plate_files(PLATE)
    qc = tables["qc"].iloc[0]
    unt = untreated(tables["wells"])
    refs = [str(qc["reference_lot"])]
    inline = {
        "curves.svg": section.figure("curves").svg(),
        "titration.svg": titration_svg(
            unt["et_ratio"].to_numpy(float),
            unt["lysis_pct"].to_numpy(float),
            float(qc["lu_a"]),
            float(qc["lu_k"]),
            f"Untreated E:T titration, plate {PLATE}",
        ),  # fmt: skip
        "forest.svg": forest_svg(
            forest_groups(tables["potency_combined_inputs"], tables["potency_combined"]), refs, 0.95
        ),
    }
    for name in ("curves.svg", "titration.svg"):
        assert inline[name] in section.html, f"{name}: not the figure the plate section shows"
    index_forest = forest_svg(combined_groups(tables["potency_combined"]), refs, 0.95)
    assert index_forest in report.html, "the index does not show the combined forest"
    assert section.html in out.files[page], "the plate page does not show the plate's section"
    assert section.figure("curves").svg(lot_colours(section.lots, refs)) == out.files[standalone]
    return {
        **inline,
        "curves-standalone.svg": out.files[standalone],
        "forest-standalone.svg": report.figures["forest.svg"],
    }


@pytest.mark.parametrize(
    "name", ["curves.svg", "curves-standalone.svg", "titration.svg", "forest.svg", "forest-standalone.svg"]
)
def test_figure_equals_its_golden_file(figures, name):
    path = GOLDEN / name
    if REGENERATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(figures[name], encoding="utf-8", newline="")
    assert path.exists(), f"{path} missing: CR51_REGENERATE_GOLDEN=1 pytest {Path(__file__).name} writes it"
    expected = path.read_text(encoding="utf-8")
    assert figures[name] == expected, (
        f"{name} differs from {path.relative_to(GOLDEN.parents[2])}; if the change is intended, regenerate "
        f"with CR51_REGENERATE_GOLDEN=1 pytest tests/{Path(__file__).name} and review the new file"
    )
