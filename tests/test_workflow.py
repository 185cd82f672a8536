"""End to end: the Snakemake workflow on simulated plates, checked against the simulator's truth."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cr51.simulate import simulate_plate, write_plate
from cr51.tables import read_table

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"

pytestmark = pytest.mark.slow


def snakemake(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([str(SNAKEMAKE), "--cores", "2", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run over four good plates (three formats) and a few bad files."""
    base = tmp_path_factory.mktemp("e2e")
    raw, results = base / "raw", base / "results"
    raw.mkdir()
    truths = {}
    for i, fmt in enumerate(["well_list", "plate_grid", "wizard2", "well_list_semicolon"]):
        plate = simulate_plate(f"plate{i}", np.random.default_rng(100 + i), fmt=fmt, donor=f"D{i % 2}")
        write_plate(raw, plate, fmt)
        truths[plate.name] = plate
    hot = simulate_plate("hot", np.random.default_rng(7), high_spontaneous=True)
    write_plate(raw, hot, "well_list")
    (raw / "orphan.csv").write_text("Well,CPM\nA1,100\n")
    (raw / "broken.toml").write_text(
        '[meta]\npath = "broken.csv"\n[well.A1]\nrole = "spontaneous"\n[well.A2]\nrole = "maximum"\n'
    )
    (raw / "broken.csv").write_text("Well,CPM\nA1,-5\nA2,100\n")
    proc = snakemake("--config", f"raw_dir={raw}", f"results_dir={results}", "settle_seconds=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return raw, results, truths


def table(results: Path, name: str) -> pd.DataFrame:
    return read_table(results / f"{name}.csv")


def test_files_csv_lists_every_file_with_status(run):
    raw, results, _ = run
    files = table(results, "files").set_index("file")
    assert sorted(files.index) == sorted(p.name for p in raw.iterdir())
    assert files.loc["plate0.toml", "status"] == "ok"
    assert files.loc["orphan.csv", "status"] == "pending"
    assert files.loc["broken.csv", "status"] == "rejected"
    assert "negative" in files.loc["broken.csv", "reason"]
    assert files.loc["hot.csv", "status"] == "ok"  # accepted, but fails QC
    sha = files.loc["plate0.csv", "sha256"]
    import hashlib

    assert sha == hashlib.sha256((raw / "plate0.csv").read_bytes()).hexdigest()


def test_wells_and_lysis_match_the_counts(run):
    raw, results, truths = run
    wells = table(results, "wells")
    assert set(wells["plate"]) == {"plate0", "plate1", "plate2", "plate3", "hot"}
    w = wells[wells["plate"] == "plate1"].set_index("well")
    assert len(w) == 96
    truth = truths["plate1"]
    for well in ("A1", "G5", "H12"):
        assert w.loc[well, "cpm"] == pytest.approx(truth.cpm[well], abs=0.01)
    s = np.mean([truth.cpm[f"G{i}"] for i in range(1, 5)])
    m = np.mean([truth.cpm[f"G{i}"] for i in range(5, 9)])
    assert w.loc["A1", "lysis_pct"] == pytest.approx(100 * (truth.cpm["A1"] - s) / (m - s))
    lysis = table(results, "lysis")
    row = lysis[(lysis["plate"] == "plate1") & (lysis["lot"] == "REF-001") & (lysis["conc"] == 0.03)].iloc[0]
    expected = [100 * (truth.cpm[x] - s) / (m - s) for x in ("A1", "A7")]
    assert row["n"] == 2 and row["lysis_pct"] == pytest.approx(np.mean(expected))
    # tube export mapped through the layout's [expt] tubes = "rows"
    w2 = wells[wells["plate"] == "plate2"].set_index("well")
    assert w2.loc["B1", "cpm"] == pytest.approx(truths["plate2"].cpm["B1"], abs=0.01)
    assert (w2.loc["A1", "rack"], w2.loc["A1", "pos"]) == (1, 1)


def test_qc(run):
    _, results, _ = run
    qc = table(results, "qc").set_index("plate")
    assert qc.loc["hot", "status"] == "fail" and "SPONTANEOUS_HIGH" in qc.loc["hot", "flags"]
    assert (qc.drop(index="hot")["status"] == "pass").all()
    assert (qc["lu20_per_1e7"].drop(index="hot") > 0).all()


def test_potency_recovers_truth(run):
    _, results, truths = run
    pot = table(results, "potency")
    assert set(pot["plate"]) >= {"plate0", "plate1", "plate2", "plate3"}
    ok = pot[pot["status"] == "ok"]
    rp_true = dict(truths["plate0"].truth["rp"])
    covered = [(r.rp_lo <= rp_true[r.lot] <= r.rp_hi) for r in ok.itertuples()]
    assert np.mean(covered) >= 0.8
    comb = table(results, "potency_combined").set_index("lot")
    assert set(comb.index) == set(rp_true) - {"REF-001"}
    for lot, row in comb.iterrows():
        assert row["rp_lo"] <= rp_true[lot] * 1.15 and row["rp_hi"] >= rp_true[lot] / 1.15
    inputs = table(results, "potency_combined_inputs")
    hot = inputs[inputs["plate"] == "hot"]
    assert not hot["included"].any() and (hot["reason"] == "plate failed QC").all()


def test_collect_runs_with_the_garbage_collector_paused(run):
    _, results, _ = run  # cr51.jobs.run_job(gc_paused=True): ~1 s at 10,000 plates
    assert "cyclic garbage collector paused for this job" in (results / "logs" / "collect.log").read_text()


def test_nothing_new_does_nothing(run):
    raw, results, _ = run
    proc = snakemake("--config", f"raw_dir={raw}", f"results_dir={results}", "settle_seconds=0", "-n")
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_one_core_gives_the_same_results_as_two(tmp_path):
    """collect's parts run side by side with two cores (cr51.jobs.side_by_side), one after the other
    with one: the same files (in the same folders, so that the recorded configuration is the same)."""
    sys.path.insert(0, str(REPO / "tools"))
    from golden_run import digests

    raw, results = tmp_path / "raw", tmp_path / "results"
    for i in range(2):
        write_plate(raw, simulate_plate(f"plate{i}", np.random.default_rng(300 + i), donor=f"D{i}"), "well_list")
    (raw / "orphan.csv").write_text("Well,CPM\nA1,100\n")
    seen = {}
    for cores in ("1", "2"):
        proc = subprocess.run(
            [str(SNAKEMAKE), "--cores", cores, "--config", f"raw_dir={raw}", f"results_dir={results}", "settle_seconds=0"],
            cwd=REPO, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        log = (results / "logs" / "collect.log").read_text()
        assert ("side by side" in log) is (cores == "2"), log
        seen[cores] = digests(results)
        shutil.rmtree(results)
    assert len(seen["2"]) > 20 and seen["1"] == seen["2"]
