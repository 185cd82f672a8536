"""The drop folder is an inbox, the results folder keeps the record (issue: nothing a lab drops is lost).

Each scenario is a real Snakemake run (through ``cr51-batch``) on a private copy of the pipeline:
an unmounted share, a plate whose files are moved away, retraction in and out, a corrected re-export
with its history, a broken re-export, a new layout naming an accepted plate's export, stale and
ignored files, and results the lab group can read.
"""

from __future__ import annotations

import csv
import os
import shutil

import numpy as np
import pytest
from batchkit import LOTS, add_plate, audit_records, pipeline_copy, result_tables, run_batch

from cr51.simulate import render_export, simulate_plate

pytestmark = pytest.mark.slow


def files_csv(results) -> dict[str, dict[str, str]]:
    with open(results / "files.csv", encoding="utf-8", newline="") as fh:
        return {r["file"]: r for r in csv.DictReader(fh)}


def plates_in(results, table: str = "qc") -> set[str]:
    with open(results / f"{table}.csv", encoding="utf-8", newline="") as fh:
        return {r["plate"] for r in csv.DictReader(fh)}


def ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture()
def lab(tmp_path):
    """A pipeline copy and a drop folder with three accepted plates (one run done)."""
    work = pipeline_copy(tmp_path / "pipeline")
    raw, results = tmp_path / "raw", tmp_path / "results"
    for i, name in enumerate(("alpha", "beta", "gamma")):
        add_plate(raw, name, i + 1)
    ok(run_batch(work, raw, results))
    assert plates_in(results) == {"alpha", "beta", "gamma"}
    return work, raw, results


def test_an_empty_inbox_stops_the_run_and_changes_nothing(lab):
    work, raw, results = lab
    before = result_tables(results)
    report = (results / "report.html").read_bytes()
    moved = raw.parent / "elsewhere"
    shutil.move(raw, moved)
    raw.mkdir()  # an unmounted share: the mount point is there, empty
    proc = run_batch(work, raw, results)
    assert proc.returncode == 65, proc.stdout + proc.stderr
    assert "holds 0 of the 3 accepted plates" in proc.stdout and "confirm_cleanout" in proc.stdout
    assert result_tables(results) == before and (results / "report.html").read_bytes() == report
    last = audit_records(results)[-1]
    assert last["status"] == "refused" and "accepted plates" in last["note"]
    # a person confirms the clean-out: the plates stay, computed from the archive, their files "gone"
    ok(run_batch(work, raw, results, "confirm_cleanout=True"))
    assert plates_in(results) == {"alpha", "beta", "gamma"}
    assert {r["status"] for r in files_csv(results).values()} == {"gone"}
    assert result_tables(results)["wells.csv"] == before["wells.csv"]
    ok(run_batch(work, raw, results))  # confirmed once: the next run goes on without asking again


def test_a_plate_whose_files_leave_the_inbox_stays(lab):
    work, raw, results = lab
    wells_before = [ln for ln in (results / "wells.csv").read_text().splitlines() if ln.startswith("beta,")]
    for suffix in (".toml", ".csv"):
        (raw / f"beta{suffix}").rename(raw.parent / f"beta{suffix}")
    ok(run_batch(work, raw, results))
    assert plates_in(results) == {"alpha", "beta", "gamma"}
    files = files_csv(results)
    assert files["beta.csv"]["status"] == "gone" and files["beta.toml"]["status"] == "gone"
    assert "stays, computed from its archived version 1" in files["beta.csv"]["reason"]
    assert [ln for ln in (results / "wells.csv").read_text().splitlines() if ln.startswith("beta,")] == wells_before
    assert "gone" in (results / "report.html").read_text()
    # the files come back: ok again, same results
    for suffix in (".toml", ".csv"):
        (raw.parent / f"beta{suffix}").rename(raw / f"beta{suffix}")
    ok(run_batch(work, raw, results))
    assert files_csv(results)["beta.csv"]["status"] == "ok"


def test_retraction_in_and_out(lab):
    work, raw, results = lab
    before = result_tables(results)
    (raw / "gamma.retract").write_text("donor sample mislabelled (deviation DV-2026-17)\n")
    ok(run_batch(work, raw, results))
    for table in ("qc", "wells", "potency", "potency_combined_inputs"):
        assert "gamma" not in plates_in(results, table), table
    files = files_csv(results)
    assert files["gamma.retract"]["status"] == "retracted"
    assert (
        "deviation DV-2026-17" in files["gamma.retract"]["reason"]
        and "retracted on 20" in files["gamma.retract"]["reason"]
    )
    assert files["gamma.csv"]["status"] == "retracted" and files["gamma.toml"]["status"] == "retracted"
    assert "DV-2026-17" in (results / "report.html").read_text()
    assert any("DV-2026-17" in str(r.get("retractions")) for r in audit_records(results))
    (raw / "gamma.retract").unlink()
    ok(run_batch(work, raw, results))
    after = result_tables(results)
    assert after["wells.csv"] == before["wells.csv"] and after["potency.csv"] == before["potency.csv"]


def test_a_corrected_reexport_replaces_the_plate_and_keeps_the_old_version(lab):
    work, raw, results = lab
    old_bytes = (raw / "alpha.csv").read_bytes()
    old_rp = {r["lot"]: r["rp"] for r in csv.DictReader(open(results / "potency.csv")) if r["plate"] == "alpha"}
    corrected = simulate_plate("alpha", np.random.default_rng(77), lots=LOTS, donor="D01")
    (raw / "alpha.csv").write_bytes(render_export(corrected, "well_list"))
    ok(run_batch(work, raw, results))
    with open(results / "plate_history.csv", encoding="utf-8", newline="") as fh:
        hist = [r for r in csv.DictReader(fh) if r["plate"] == "alpha"]
    versions = {r["version"]: r for r in hist}
    assert set(versions) == {"1", "2"}
    assert versions["1"]["current"] == "False" and versions["1"]["replaced_at"]
    assert versions["2"]["current"] == "True" and not versions["2"]["replaced_at"]
    assert {r["lot"]: r["rp"] for r in hist if r["version"] == "1" and r["lot"]} == old_rp
    old_sha = versions["1"]["export_sha256"]
    blob = results / "archive" / "blobs" / old_sha[:2] / old_sha
    assert blob.read_bytes() == old_bytes  # the superseded bytes stay retrievable
    assert "Re-exported plates" in (results / "report.html").read_text()


def test_a_broken_reexport_keeps_the_accepted_results(lab):
    work, raw, results = lab
    before = result_tables(results)
    (raw / "alpha.csv").write_text("Well,CPM\nA1,abc\n")
    ok(run_batch(work, raw, results))
    files = files_csv(results)
    assert files["alpha.csv"]["status"] == "rejected"
    assert "the plate keeps its accepted version 1" in files["alpha.csv"]["reason"]
    after = result_tables(results)
    assert after["wells.csv"] == before["wells.csv"] and after["potency.csv"] == before["potency.csv"]


def test_a_new_layout_naming_an_accepted_plates_export_is_refused_alone(lab):
    work, raw, results = lab
    text = (raw / "beta.toml").read_text()
    (raw / "delta.toml").write_text(text)  # copy-pasted, still names beta.csv
    ok(run_batch(work, raw, results))
    files = files_csv(results)
    assert files["delta.toml"]["status"] == "rejected"
    assert "already belongs to the accepted plate of layout 'beta.toml'" in files["delta.toml"]["reason"]
    assert files["beta.toml"]["status"] == "ok" and "beta" in plates_in(results)


def test_nothing_waits_or_vanishes_silently(lab):
    work, raw, results = lab
    add_plate(raw, "epsilon", 9)
    (raw / "epsilon.csv").rename(raw / "Epsilon.csv")  # the layout names epsilon.csv
    (raw / "sub").mkdir()
    (raw / "sub" / "zeta.toml").write_text("[meta]\n")
    os.mkfifo(raw / "pipe.csv")
    os.symlink(raw / "alpha.csv", raw / "link.csv")
    (raw / ".~lock.plate.xlsx#").write_text("x")
    old = os.stat(raw / "epsilon.toml").st_mtime - 3 * 86400
    os.utime(raw / "epsilon.toml", (old, old))
    ok(run_batch(work, raw, results, "stale_after_hours=48"))
    files = files_csv(results)
    assert files["epsilon.toml"]["status"] == "stale"
    assert "did you mean 'Epsilon.csv'?" in files["epsilon.toml"]["reason"]
    for name, why in (
        ("sub", "sub-folder"),
        ("pipe.csv", "FIFO"),
        ("link.csv", "symbolic link"),
        (".~lock.plate.xlsx#", "hidden"),
    ):
        assert files[name]["status"] == "ignored" and why in files[name]["reason"], name
    html = (results / "report.html").read_text()
    assert "Every file in the drop folder was accepted" not in html and "sub-folder" in html


@pytest.mark.parametrize("umask, mode", [(0o002, 0o664), (0o022, 0o644)])
def test_results_are_readable_by_the_lab_group(tmp_path, umask, mode):
    work = pipeline_copy(tmp_path / "pipeline")
    raw, results = tmp_path / "raw", tmp_path / "results"
    add_plate(raw, "alpha", 1)
    old = os.umask(umask)
    try:
        ok(run_batch(work, raw, results))
    finally:
        os.umask(old)
    for name in ("files.csv", "wells.csv", "potency.csv", "plate_history.csv", "report.html"):
        assert (results / name).stat().st_mode & 0o777 == mode, name


def test_a_reexport_still_settling_keeps_the_accepted_version(lab):
    work, raw, results = lab
    before = result_tables(results)
    corrected = simulate_plate("alpha", np.random.default_rng(78), lots=LOTS, donor="D01")
    (raw / "alpha.csv").write_bytes(render_export(corrected, "well_list"))
    ok(run_batch(work, raw, results, "settle_seconds=3600"))
    row = files_csv(results)["alpha.csv"]
    assert row["status"] == "pending" and "keeps its accepted version 1" in row["reason"]
    after = result_tables(results)
    assert after["wells.csv"] == before["wells.csv"] and after["potency.csv"] == before["potency.csv"]
