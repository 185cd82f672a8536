"""cr51-batch: the lock, folder checks, exit codes, and recovery after a hard kill."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from batchkit import RUN_TIMEOUT, add_plate, audit_records, pipeline_copy, result_tables, run_batch, runner_cmd

from cr51 import runner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("runner")
    work = pipeline_copy(base / "pipeline")
    raw = base / "raw"
    for i, fmt in enumerate(["well_list", "plate_grid", "well_list", "wizard2"]):
        add_plate(raw, f"p{i}", 40 + i, fmt=fmt)
    return base, work, raw


@pytest.fixture(scope="module")
def clean_run(setup):
    """Two runners started together on one results folder: one runs, the other exits at once."""
    base, work, raw = setup
    results = base / "clean"
    procs = [subprocess.Popen(runner_cmd(raw, results), cwd=work, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=RUN_TIMEOUT)[0] for p in procs]
    return results, [p.returncode for p in procs], outs


def test_two_runners_one_runs_the_other_exits_with_the_lock_code(clean_run):
    results, codes, outs = clean_run
    assert sorted(codes) == [runner.EXIT_OK, runner.EXIT_LOCKED], outs
    locked = outs[codes.index(runner.EXIT_LOCKED)]
    assert locked.count("\n") == 1 and "another run holds the lock" in locked
    done = outs[codes.index(runner.EXIT_OK)]
    assert done.startswith("cr51 batch: 4 plates ok (4 new, 0 replaced); files: 8 ok, 0 rejected")
    assert len(audit_records(results)) == 1
    assert len((results / "wells.csv").read_text().splitlines()) > 4 * 40


def test_kill_9_mid_run_then_the_next_run_recovers(setup, clean_run):
    base, work, raw = setup
    results = base / "killed"
    proc = subprocess.Popen(
        runner_cmd(raw, results), cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    incomplete = work / ".snakemake" / "incomplete"
    deadline = time.monotonic() + 60
    while not (incomplete.is_dir() and any(incomplete.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, "no batch job started"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert any((work / ".snakemake" / "locks").iterdir())  # the killed run left its lock behind

    again = run_batch(work, raw, results)
    assert again.returncode == runner.EXIT_OK, again.stdout
    assert result_tables(results) == result_tables(clean_run[0])
    record = audit_records(results)[-1]
    assert record["status"] == "ok" and "stale Snakemake lock" in record["note"]
    assert not any((work / ".snakemake" / "incomplete").iterdir())


def test_lock_held_exits_at_once(setup, tmp_path):
    base, work, raw = setup
    results = tmp_path / "results"
    results.mkdir()
    with open(results / runner.LOCK_NAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = run_batch(work, raw, results)
    assert proc.returncode == runner.EXIT_LOCKED
    assert proc.stdout == f"cr51 batch: another run holds the lock on {results}; nothing was done\n"
    assert sorted(p.name for p in results.iterdir()) == [runner.LOCK_NAME]


def test_results_folder_below_a_file_is_not_writable(setup, tmp_path):
    base, work, raw = setup
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder is expected")
    proc = run_batch(work, raw, blocker / "results")
    assert proc.returncode == runner.EXIT_NOT_WRITABLE
    assert (
        proc.stdout
        == f"cr51 batch: results folder {blocker / 'results'} is not writable (Not a directory); nothing was run\n"
    )


def test_disk_full_is_refused(setup, tmp_path):
    base, work, raw = setup
    proc = run_batch(work, raw, tmp_path / "results", extra=("--min-free-mb", "1e12"))
    assert proc.returncode == runner.EXIT_DISK_FULL
    assert proc.stdout.startswith("cr51 batch: disk full: ") and proc.stdout.count("\n") == 1
    assert not (tmp_path / "results" / "files.csv").exists()


def test_missing_drop_folder_does_not_empty_the_results(setup, tmp_path):
    base, work, raw = setup
    proc = run_batch(work, tmp_path / "not-mounted", tmp_path / "results")
    assert proc.returncode == runner.EXIT_NO_INPUT
    assert "drop folder" in proc.stdout and "not found" in proc.stdout


def test_pipeline_failure_has_its_own_code_and_is_audited(setup, tmp_path):
    base, work, raw = setup
    results = tmp_path / "results"
    proc = run_batch(work, raw, results, "batch_count=0")  # invalid: Snakemake stops at parse time
    assert proc.returncode == runner.EXIT_FAILED
    assert proc.stdout.startswith("cr51 batch: FAILED") and proc.stdout.count("\n") == 1
    log = Path(proc.stdout.split("see ")[1].split(";")[0])
    assert "batch_count" in log.read_text()
    [record] = audit_records(results)
    assert record["status"] == "failed" and record["invoked_by"] == "cr51-batch" and record["files"] is None
