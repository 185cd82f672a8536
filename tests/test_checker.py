"""cr51-layout check: the pipeline's verdict on a layout before it is dropped, by the pipeline's own code."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import BATCH_SETTINGS, REPO

from cr51 import checker
from cr51.plate import PlateInput, ingest_batch
from cr51.tables import read_table

PLATES = Path(__file__).resolve().parent / "data" / "plates"
EXAMPLES = REPO / "resources" / "example"
CLI = Path(sys.executable).parent / "cr51-layout"


def pairs() -> list[tuple[Path, Path]]:
    """(layout, export) of every plate in the test data and the demo."""
    out = []
    for folder in (PLATES, EXAMPLES):
        for lay in sorted(folder.glob("*.toml")):
            export = next(p for p in folder.iterdir() if p.stem.startswith(lay.stem) and p.suffix != ".toml")
            out.append((lay, export))
    return out


def verdict_of(files: pd.DataFrame, qc: pd.DataFrame, plate: str) -> tuple:
    status = set(files.loc[files["plate"] == plate, "status"])
    row = qc[qc["plate"] == plate]
    if row.empty:
        return (status == {"ok"}, None, ())
    flags = row["flags"].fillna("").iloc[0]
    return (status == {"ok"}, str(row["status"].iloc[0]), tuple(f for f in flags.split(";") if f))


def test_verdict_equals_the_batch_functions_on_every_plate():
    for lay, export in pairs():
        v = checker.check(lay, export, BATCH_SETTINGS)
        t = ingest_batch([PlateInput(lay.stem, str(lay), str(export))], BATCH_SETTINGS)
        assert (v.accepted, v.qc_status, v.flags) == verdict_of(t["files"], t["qc"], lay.stem), lay.name


@pytest.mark.slow
def test_verdict_equals_a_real_pipeline_run(tmp_path):
    """Every plate of tests/data/plates and resources/example through snakemake: files.csv and qc.csv
    say what the checker says (status, QC status, flags) and the checker's exit status follows."""
    raw, results = tmp_path / "raw", tmp_path / "results"
    raw.mkdir()
    for lay, export in pairs():
        shutil.copy(lay, raw)
        shutil.copy(export, raw)
    cmd = [str(Path(sys.executable).parent / "snakemake"), "--cores", "2", "--quiet", "all", "--config",
           f"raw_dir={raw}", f"results_dir={results}", "settle_seconds=0"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files, qc = read_table(results / "files.csv"), read_table(results / "qc.csv")
    for lay, export in pairs():
        v = checker.check(raw / lay.name, raw / export.name, BATCH_SETTINGS)
        assert (v.accepted, v.qc_status, v.flags) == verdict_of(files, qc, lay.stem), lay.name
        layout_reason = files.loc[files["file"] == lay.name, "reason"].fillna("").iloc[0]
        assert ("LAYOUT_OVERLAP" in layout_reason) == ("LAYOUT_OVERLAP" in v.flags)
    assert "plates ok" in proc.stdout + proc.stderr  # the run's summary line


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), "check", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_cli_accepts_a_good_plate_and_writes_the_map(tmp_path):
    proc = run(str(PLATES / "triplicate_ok.toml"), str(PLATES / "triplicate_ok.csv"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "triplicate_ok: would be accepted, QC pass" in proc.stdout
    # the text map: the grid, the lots, every condition with its replicate count
    assert "lot 1: REF-001 (reference)" in proc.stdout
    assert "maximum" in proc.stdout and "3  G4, G5, G6" in proc.stdout
    assert "sample       REF-001           10     50   3  A4, A5, A6" in proc.stdout
    svg = (tmp_path / "triplicate_ok.map.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<circle") == 96 and "REF-001 (reference)" in svg
    html = tmp_path / "m.html"
    assert run(str(PLATES / "triplicate_ok.toml"), "--map", str(html), cwd=tmp_path).returncode == 0
    assert "<table" in html.read_text() and "<svg" in html.read_text()


def test_cli_refuses_a_plate_failing_qc_with_the_reason(tmp_path):
    proc = run(str(PLATES / "maximum_44904.toml"), str(PLATES / "maximum_44904.csv"), "--no-map", cwd=tmp_path)
    assert proc.returncode == 1
    assert "PROBLEM: QC fail: maximum release replicates have CV 125.7 %" in proc.stdout
    assert "would be accepted but QC fail" in proc.stdout
    assert not list(tmp_path.iterdir())  # --no-map: nothing written


def test_cli_warns_of_overlapping_blocks(tmp_path):
    proc = run(str(PLATES / "block_6x3.toml"), "--no-map", cwd=tmp_path)  # the layout alone
    assert proc.returncode == 0
    assert "warning: LAYOUT_OVERLAP: [block.3x6.A7] and [block.6x3.A4] both set role, lot, et_ratio" in proc.stdout
    assert "warning: DESIGN_MISMATCH: lot LOT-B" in proc.stdout
    assert "no export given" in proc.stdout


def test_cli_rejects_a_broken_layout_and_a_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[meta]\npath = "bad.csv"\ninclude = "../x.toml"\n')
    proc = run(str(bad), cwd=tmp_path)
    assert proc.returncode == 1 and "PROBLEM: layout: [meta] include '../x.toml' is not a bare file name" in proc.stdout
    bad.write_text('[meta]\npath = "bad.csv"\n[well.A1]\nrole = "spontaneous"\n')
    (tmp_path / "bad.csv").write_text("Well,CPM\nA1,-5\n")
    proc = run(str(bad), str(tmp_path / "bad.csv"), cwd=tmp_path)
    assert proc.returncode == 1 and "would be rejected" in proc.stdout and "negative" in proc.stdout
    assert run(str(tmp_path / "nope.toml"), cwd=tmp_path).returncode == 2
