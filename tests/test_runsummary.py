"""The one summary line every run ends with (cr51.runsummary, printed from rules/audit.smk)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from cr51.runsummary import summary_line


def write(path, rows, columns):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, columns)
        w.writeheader()
        w.writerows(rows)


def test_counts_plates_ok_pending_with_why_and_rejected(tmp_path):
    cols = ["file", "sha256", "bytes", "status", "plate", "reason"]
    settle = "'b.csv' was modified 3 s ago; it is left for a later run in case it is still being written (settle_seconds = 60)"
    rows = [
        dict(file="a.toml", status="ok", plate="a", reason=""), dict(file="a.csv", status="ok", plate="a", reason=""),
        dict(file="f.toml", status="ok", plate="f", reason=""), dict(file="f.csv", status="ok", plate="f", reason=""),
        dict(file="b.toml", status="pending", plate="b", reason=settle),
        dict(file="b.csv", status="pending", plate="b", reason=settle),
        dict(file="c.toml", status="pending", plate="c", reason="waiting for its export 'c.csv'"),
        dict(file="d.toml", status="rejected", plate="d", reason="layout: bad"),
        dict(file="d.csv", status="rejected", plate="d", reason="its layout was refused: bad"),
        dict(file="x\u0007.csv", status="rejected", plate="", reason="rename the file"),
        dict(file="o.csv", status="pending", plate="", reason="no layout names this file yet (...)"),
    ]  # fmt: skip
    write(tmp_path / "files.csv", rows, cols)
    write(tmp_path / "qc.csv", [dict(plate="a", status="pass"), dict(plate="f", status="fail")], ["plate", "status"])
    line = summary_line(tmp_path)
    assert line.startswith("cr51: 2 plates ok (1 failing QC), 3 pending (")
    assert "1 settling: settle_seconds" in line and "1 waiting for its export" in line
    assert "1 no layout names them" in line and ", 2 rejected;" in line
    assert f"reasons in {tmp_path / 'files.csv'}" in line and "report.html" in line


def test_no_results_yet(tmp_path):
    assert summary_line(tmp_path) == f"cr51: no files.csv yet; see {tmp_path / 'logs'}"
    assert summary_line(tmp_path, failed=True).startswith("cr51: the run failed")


@pytest.mark.slow
def test_every_plain_snakemake_run_prints_it_even_with_nothing_to_do(tmp_path):
    cmd = [str(Path(sys.executable).parent / "snakemake"), "--cores", "2", "--quiet", "all", "--config",
           f"raw_dir={REPO / 'resources' / 'example'}", f"results_dir={tmp_path}", "settle_seconds=0"]  # fmt: skip
    for _ in range(2):  # the second run has nothing to do: Snakemake calls no handler
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("cr51:")]
        assert lines == [f"cr51: 6 plates ok (0 failing QC), 0 pending, 0 rejected; reasons in {tmp_path / 'files.csv'}, "
                         f"QC in {tmp_path / 'qc.csv'}, report {tmp_path / 'report.html'}"]  # fmt: skip
    dry = subprocess.run([*cmd, "-n"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "cr51:" not in dry.stdout  # a dry run says nothing


def test_a_broken_audit_chain_is_named_in_the_line(tmp_path):
    problems = ["the log was cut or truncated: …", "the record on line 2 was changed (its checksum does not match)"]
    line = summary_line(tmp_path, audit_problems=problems)
    assert line.endswith(
        f"; AUDIT LOG DAMAGED: the log was cut or truncated: … and 1 more; recorded in {tmp_path / 'audit.jsonl'}, "
        "a new chain started"
    )
    assert "AUDIT" not in summary_line(tmp_path, audit_problems=[])


@pytest.mark.slow
def test_a_deleted_or_cut_audit_log_is_reported_and_no_file_is_new_again(tmp_path):
    from batchkit import add_plate, audit_records, pipeline_copy, run_batch

    work, raw, results = pipeline_copy(tmp_path / "pipeline"), tmp_path / "raw", tmp_path / "results"
    add_plate(raw, "plate0", 1)
    add_plate(raw, "plate1", 2)
    first = run_batch(work, raw, results).stdout
    assert "2 plates ok (2 new, 0 replaced)" in first and "AUDIT" not in first, first
    (results / "audit.jsonl").unlink()
    gone = run_batch(work, raw, results)  # nothing to do: the record is written by cr51-batch
    assert gone.returncode == 0 and "2 plates ok (0 new, 0 replaced)" in gone.stdout, gone.stdout
    assert "AUDIT LOG DAMAGED: the audit log audit.jsonl is missing" in gone.stdout
    broken, record = audit_records(results)
    assert broken["event"] == "chain_broken" and record["run_id"] == broken["run_id"] and record["new"] == []
    data = (results / "audit.jsonl").read_bytes()
    (results / "audit.jsonl").write_bytes(data[: len(data) - 100])  # cut inside the last record
    add_plate(raw, "plate2", 3)
    cut = run_batch(work, raw, results)  # a run with jobs: Snakemake's handler records it
    assert cut.returncode == 0 and "3 plates ok (1 new, 0 replaced)" in cut.stdout, cut.stdout
    assert "AUDIT LOG DAMAGED: line 2 is not a complete record" in cut.stdout
    assert [e["plate"] for e in audit_records_tail(results)["new"]] == ["plate2", "plate2"]
    clean = run_batch(work, raw, results)
    assert clean.returncode == 0 and "AUDIT" not in clean.stdout


def audit_records_tail(results: Path) -> dict:
    """The last complete record of the audit log (a cut line before it is not JSON)."""
    import json

    lines = (results / "audit.jsonl").read_text(encoding="utf-8").splitlines()
    return json.loads(lines[-1])
