"""Incremental scheduled runs: a new plate reruns only its batch, done plates stay byte-identical,
a corrected re-export replaces its plate's results and the audit log keeps the superseded sha256."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from batchkit import BIN, LOTS, QUICK, add_plate, audit_records, pipeline_copy, run_batch

from cr51.scan import batch_of
from cr51.simulate import render_export, simulate_plate

pytestmark = pytest.mark.slow

TABLES = ("wells", "lysis", "qc", "fits", "potency")


def names_in_distinct_batches(n: int, batch_count: int = 4) -> list[str]:
    names, used = [], set()
    for i in range(100):
        name, b = f"plate{i}", batch_of(f"plate{i}", batch_count)
        if b not in used:
            names.append(name)
            used.add(b)
        if len(names) == n:
            return names
    raise AssertionError("not enough batches")


def rows_of(results: Path, plate: str) -> dict[str, list[str]]:
    """The CSV lines of one plate in each result table (plate is the first column)."""
    return {
        t: [ln for ln in (results / f"{t}.csv").read_text().splitlines() if ln.startswith(f"{plate},")] for t in TABLES
    }


def batch_mtimes(results: Path) -> dict[str, int]:
    return {p.stem: p.stat().st_mtime_ns for p in (results / "batches").glob("*.jsonl")}


def manifests(results: Path) -> dict[str, tuple[bytes, int]]:
    """Each batch's input manifest: (bytes, mtime)."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (results / "batches").glob("*.inputs.json")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run 1: two plates. Run 2: a third plate added. Run 3: the first plate re-exported."""
    base = tmp_path_factory.mktemp("incremental")
    work = pipeline_copy(base / "pipeline")
    raw, results = base / "raw", base / "results"
    first, second, new = names_in_distinct_batches(3)
    add_plate(raw, first, 1)
    add_plate(raw, second, 2)
    out = {"names": (first, second, new), "raw": raw, "results": results, "work": work}

    p1 = run_batch(work, raw, results)
    assert p1.returncode == 0, p1.stdout + p1.stderr
    out["run1"] = dict(
        proc=p1,
        rows={n: rows_of(results, n) for n in (first, second)},
        mtimes=batch_mtimes(results),
        manifests=manifests(results),
    )

    add_plate(raw, new, 3)
    p2 = run_batch(work, raw, results)
    assert p2.returncode == 0, p2.stdout + p2.stderr
    out["run2"] = dict(
        proc=p2,
        rows={n: rows_of(results, n) for n in (first, second, new)},
        mtimes=batch_mtimes(results),
        manifests=manifests(results),
    )

    old_sha = hashlib.sha256((raw / f"{first}.csv").read_bytes()).hexdigest()
    corrected = simulate_plate(first, np.random.default_rng(99), lots=LOTS, donor="D01")
    (raw / f"{first}.csv").write_bytes(render_export(corrected, "well_list"))
    p3 = run_batch(work, raw, results)
    assert p3.returncode == 0, p3.stdout + p3.stderr
    out["run3"] = dict(proc=p3, rows={n: rows_of(results, n) for n in (first, second, new)}, old_sha=old_sha)

    # run 4: the second plate re-exported with its old modification time kept (cp -p, rsync -t)
    export = raw / f"{second}.csv"
    st = export.stat()
    corrected = simulate_plate(second, np.random.default_rng(98), lots=LOTS, donor="D02")
    export.write_bytes(render_export(corrected, "well_list"))
    os.utime(export, ns=(st.st_atime_ns, st.st_mtime_ns))
    p4 = run_batch(work, raw, results)
    assert p4.returncode == 0, p4.stdout + p4.stderr
    out["run4"] = dict(proc=p4, rows={n: rows_of(results, n) for n in (first, second, new)})
    return out


def test_a_reexport_with_an_old_mtime_is_still_seen(runs):
    first, second, new = runs["names"]
    sha = hashlib.sha256((runs["raw"] / f"{second}.csv").read_bytes()).hexdigest()
    assert runs["run4"]["rows"][second]["wells"] != runs["run3"]["rows"][second]["wells"]
    assert all(sha in ln for ln in runs["run4"]["rows"][second]["wells"])
    assert runs["run4"]["rows"][first] == runs["run3"]["rows"][first]


def test_a_new_plate_reruns_only_its_batch(runs):
    first, second, new = runs["names"]
    before, after = runs["run1"]["mtimes"], runs["run2"]["mtimes"]
    assert set(after) - set(before) == {batch_of(new, 4)}
    assert all(after[b] == before[b] for b in before)
    assert "(1 new, 0 replaced)" in runs["run2"]["proc"].stdout


def test_a_batch_job_has_one_input_its_manifest(runs):
    """Not the 2 x plates archived files (Snakemake stats and hashes every input of a job after it):
    the batch's manifest, which a new plate rewrites for its batch only."""
    first, second, new = runs["names"]
    before, after = runs["run1"]["manifests"], runs["run2"]["manifests"]
    assert set(after) - set(before) == {f"{batch_of(new, 4)}.inputs.json"}
    assert all(after[m] == before[m] for m in before)  # same bytes, same mtime
    records = [json.loads(p.read_text()) for p in (runs["work"] / ".snakemake" / "metadata").iterdir()]
    inputs = {tuple(r["input"]) for r in records if r.get("rule") == "process_batch"}
    batches = {batch_of(n, 4) for n in (first, second, new)}
    assert inputs == {(str(runs["results"] / "batches" / f"{b}.inputs.json"),) for b in batches}


def test_done_plates_stay_byte_identical(runs):
    first, second, new = runs["names"]
    for plate in (first, second):
        assert runs["run2"]["rows"][plate] == runs["run1"]["rows"][plate]
        assert all(runs["run1"]["rows"][plate][t] for t in ("wells", "lysis", "qc"))
    assert runs["run2"]["rows"][new]["wells"]
    assert runs["run3"]["rows"][second] == runs["run2"]["rows"][second]
    assert runs["run3"]["rows"][new] == runs["run2"]["rows"][new]


def test_a_corrected_reexport_replaces_the_plate_and_is_audited(runs):
    first = runs["names"][0]
    raw, results = runs["raw"], runs["results"]
    assert runs["run3"]["rows"][first]["wells"] != runs["run2"]["rows"][first]["wells"]
    new_sha = hashlib.sha256((raw / f"{first}.csv").read_bytes()).hexdigest()
    assert all(new_sha in ln for ln in runs["run3"]["rows"][first]["wells"])
    records = audit_records(results)
    assert len(records) == 4 and [r["status"] for r in records] == ["ok"] * 4
    run3 = records[2]
    assert run3["replaced"] == [
        {"file": f"{first}.csv", "plate": first, "sha256": new_sha, "superseded_sha256": runs["run3"]["old_sha"]}
    ]
    assert run3["new"] == [] and run3["removed"] == []
    assert "(0 new, 1 replaced)" in runs["run3"]["proc"].stdout
    assert "(0 new, 1 replaced)" in runs["run4"]["proc"].stdout
    written = {Path(o["path"]).name: o["sha256"] for o in records[-1]["outputs"]}
    assert written["wells.csv"] == hashlib.sha256((results / "wells.csv").read_bytes()).hexdigest()


def test_each_run_is_audited(runs):
    records = audit_records(runs["results"])
    assert [len({e["plate"] for e in r["new"]}) for r in records] == [2, 1, 0, 0]
    for r in records:
        assert r["invoked_by"] == "cr51-batch" and r["snakemake_version"] and r["cr51_version"]
        assert len(r["config_hash"]) == 64 and r["start"] <= r["end"]
        assert r["files"]["ok"] >= 4 and r["files"]["rejected"] == 0


def planned(runs, env: dict | None = None) -> dict[str, str]:
    """{rule: job count} of what a dry run would run now."""
    cmd = [str(BIN / "snakemake"), "-n", "--cores", "1", "--config", f"raw_dir={runs['raw']}",
           f"results_dir={runs['results']}", *QUICK]  # fmt: skip
    proc = subprocess.run(cmd, cwd=runs["work"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dict(re.findall(r"^(process_batch|collect)\s+(\d+)\s*$", proc.stdout, re.M))


@pytest.mark.parametrize("module", ["fit.py", "report/plate.py", "report/style.css"])
def test_a_software_change_reruns_every_batch(runs, module):
    """Snakemake's rerun triggers see a rule's script, not the package it imports: the software's
    digest is a parameter of the batch jobs, so changed software reprocesses every plate."""
    assert planned(runs) == {}  # up to date after the fixture's runs
    path = runs["work"] / "workflow" / "cr51" / module
    original = path.read_bytes()
    try:
        path.write_bytes(
            original + b"\n/* a software change */\n"
            if module.endswith(".css")
            else original + b"\n# a software change\n"
        )
        assert planned(runs) == {"process_batch": "3", "collect": "1"}  # the three plates' batches, then collect
    finally:
        path.write_bytes(original)
    assert planned(runs) == {}


def test_a_library_upgrade_reruns_every_batch(runs):
    """pip install -U openpyxl (or numpy, lmfit, ...): a newer openpyxl is seen first on the path (its
    metadata only; the import still finds the real one) and every batch reruns."""
    assert planned(runs) == {}
    fake = runs["work"] / "fake-site" / "openpyxl-99.0.dist-info"
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: openpyxl\nVersion: 99.0\n")
    try:
        assert planned(runs, {**os.environ, "PYTHONPATH": str(fake.parent)}) == {"process_batch": "3", "collect": "1"}
    finally:
        shutil.rmtree(fake.parent)
    assert planned(runs) == {}
