"""cr51-batch: the locks, folder checks, exit codes, audit records of refused runs, --configfile, and
recovery after a hard kill; runs from one checkout never clear each other's (or a hand-started run's)
Snakemake lock."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from batchkit import (
    BIN,
    QUICK,
    RUN_TIMEOUT,
    add_plate,
    audit_records,
    pipeline_copy,
    result_tables,
    run_batch,
    runner_cmd,
)

from cr51 import audit, runner

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
    refused, done_record = sorted(audit_records(results), key=lambda r: r["status"] != "refused")
    assert refused["status"] == "refused" and refused["exit_code"] == runner.EXIT_LOCKED
    assert refused["note"] == locked.removeprefix("cr51 batch: ").rstrip("\n") and refused["outputs"] == []
    assert done_record["status"] == "ok" and len(done_record["new"]) == 8
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


def refusal(results: Path, code: int) -> dict:
    """The audit record of a refused run: the last record, with its status, exit code and reason."""
    record = audit_records(results)[-1]
    assert record["status"] == "refused" and record["exit_code"] == code and record["invoked_by"] == "cr51-batch"
    assert record["files"] is None and record["outputs"] == [] and record["new"] == []
    return record


def test_lock_held_exits_at_once(setup, tmp_path):
    base, work, raw = setup
    results = tmp_path / "results"
    results.mkdir()
    with open(results / runner.LOCK_NAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = run_batch(work, raw, results)
    assert proc.returncode == runner.EXIT_LOCKED
    assert proc.stdout == f"cr51 batch: another run holds the lock on {results}; nothing was done\n"
    assert sorted(p.name for p in results.iterdir()) == [audit.HEAD_NAME, runner.LOCK_NAME, "audit.jsonl"]
    assert refusal(results, runner.EXIT_LOCKED)["note"] == proc.stdout.removeprefix("cr51 batch: ").rstrip("\n")


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
    assert refusal(tmp_path / "results", runner.EXIT_DISK_FULL)["note"].startswith("disk full: ")


def test_missing_drop_folder_does_not_empty_the_results(setup, tmp_path):
    base, work, raw = setup
    proc = run_batch(work, tmp_path / "not-mounted", tmp_path / "results")
    assert proc.returncode == runner.EXIT_NO_INPUT
    assert "drop folder" in proc.stdout and "not found" in proc.stdout
    assert "not-mounted" in refusal(tmp_path / "results", runner.EXIT_NO_INPUT)["note"]


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


# --------------------------------------------------------------------------
# Runs from one checkout share Snakemake's .snakemake/: they never clear each other's lock
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_plate(tmp_path_factory):
    """A drop folder with one small plate (one batch job: quick runs)."""
    raw = tmp_path_factory.mktemp("one-plate")
    add_plate(raw, "q0", 60, fmt="wizard2")
    return raw


def complete(results: Path) -> bool:
    """Whether a run on :func:`one_plate` wrote every result: its two files ok, its wells, its potency."""
    tables = result_tables(results)
    files = tables["files.csv"].decode().splitlines()
    return (
        len(files) == 3
        and all(",ok,q0," in row for row in files[1:])
        and tables["wells.csv"].count(b"\nq0,") > 40
        and tables["potency.csv"].count(b"\nq0,") >= 1
    )


def wait_for_snakemake_lock(work: Path, proc: subprocess.Popen) -> None:
    """Wait until the run ``proc`` holds Snakemake's lock in ``work`` (its jobs have started)."""
    locks = work / ".snakemake" / "locks"
    deadline = time.monotonic() + RUN_TIMEOUT
    while not (locks.is_dir() and any(locks.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, "the first run never took Snakemake's lock"
        time.sleep(0.05)


def run_log(record: dict) -> str:
    return "".join(Path(p).read_text() for p in record["logs"])


def test_two_runners_on_different_results_folders_from_one_checkout_both_finish(one_plate, tmp_path):
    raw = one_plate
    work = pipeline_copy(tmp_path / "pipeline")
    first, second = tmp_path / "first", tmp_path / "second"
    one = subprocess.Popen(runner_cmd(raw, first), cwd=work, stdout=subprocess.PIPE, text=True)
    wait_for_snakemake_lock(work, one)  # the first run's Snakemake lock is live ...
    two = subprocess.Popen(runner_cmd(raw, second), cwd=work, stdout=subprocess.PIPE, text=True)  # ... now
    outs = [p.communicate(timeout=2 * RUN_TIMEOUT)[0] for p in (one, two)]
    assert [one.returncode, two.returncode] == [runner.EXIT_OK, runner.EXIT_OK], outs
    for results, out in zip((first, second), outs):
        assert out.startswith("cr51 batch: 1 plates ok (1 new, 0 replaced); files: 2 ok, 0 rejected"), out
        assert complete(results)
        [record] = audit_records(results)
        assert record["status"] == "ok" and "stale" not in record["note"]
        assert "--unlock" not in run_log(record)  # the second run waited: it never cleared the first's lock
    assert result_tables(first) == result_tables(second)


@pytest.fixture()
def slow_pipeline(tmp_path):
    """A private pipeline copy whose batch jobs first sleep CR51_TEST_SLEEP seconds (a slow run)."""
    work = pipeline_copy(tmp_path / "pipeline")
    script = work / "workflow" / "scripts" / "process_batch.py"
    sleep = 'import os, sys, time\ntime.sleep(float(os.environ.get("CR51_TEST_SLEEP", "0")))\n'
    script.write_text(script.read_text().replace("import sys\n", sleep, 1))
    return work


def test_a_runner_never_unlocks_a_hand_started_live_run(one_plate, slow_pipeline, tmp_path):
    raw = one_plate
    work = slow_pipeline
    hand_results = tmp_path / "hand"
    hand = subprocess.Popen(
        [str(BIN / "snakemake"), "--cores", "2", "--config", f"raw_dir={raw}", f"results_dir={hand_results}", *QUICK],
        cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "CR51_TEST_SLEEP": "8"},
    )  # fmt: skip
    wait_for_snakemake_lock(work, hand)
    locks = sorted((work / ".snakemake" / "locks").iterdir())
    # a runner that may wait 1 s gives up with the lock code and leaves the live run's lock alone
    impatient = run_batch(work, raw, tmp_path / "impatient", extra=("--lock-wait", "1"))
    assert impatient.returncode == runner.EXIT_LOCKED, impatient.stdout
    assert f"(pid {hand.pid})" in impatient.stdout and "never cleared" in impatient.stdout
    assert hand.poll() is None and sorted((work / ".snakemake" / "locks").iterdir()) == locks
    assert "Snakemake run not started by cr51-batch" in refusal(tmp_path / "impatient", runner.EXIT_LOCKED)["note"]
    # a runner that may wait runs once the hand-started run is done, without clearing any lock
    patient = subprocess.Popen(runner_cmd(raw, tmp_path / "patient"), cwd=work, stdout=subprocess.PIPE, text=True)
    assert hand.wait(timeout=2 * RUN_TIMEOUT) == 0, hand.stderr.read()
    out = patient.communicate(timeout=2 * RUN_TIMEOUT)[0]
    assert patient.returncode == runner.EXIT_OK, out
    assert complete(hand_results) and result_tables(hand_results) == result_tables(tmp_path / "patient")
    [record] = audit_records(tmp_path / "patient")
    assert "stale" not in record["note"] and "--unlock" not in run_log(record)
    assert audit_records(hand_results)[-1]["invoked_by"] == "snakemake"


def test_configfile_with_a_nested_site_file(setup, one_plate, tmp_path):
    base, work, _ = setup
    raw = one_plate
    results = tmp_path / "site-results"
    folders = tmp_path / "folders.yaml"
    folders.write_text(f"raw_dir: {raw}\nresults_dir: {results}\nbatch_count: 4\nsettle_seconds: 30\n")
    site = tmp_path / "site.yaml"
    site.write_text("qc:\n  max_spontaneous_pct_of_max: 1\n")  # a nested key: every plate fails QC
    proc = subprocess.run(
        [str(BIN / "cr51-batch"), "--cores", "2", "--configfile", str(folders), str(site),
         "--config", "settle_seconds=0"],
        cwd=work, capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )  # fmt: skip
    assert proc.returncode == runner.EXIT_OK, proc.stdout + proc.stderr
    assert proc.stdout.startswith("cr51 batch: 1 plates ok (1 new, 0 replaced)"), proc.stdout
    assert f"results in {results};" in proc.stdout
    qc = (results / "qc.csv").read_text().splitlines()
    assert len(qc) == 2 and ",fail,SPONTANEOUS_HIGH" in qc[1], qc
    assert "--configfile" in run_log(audit_records(results)[-1])


def test_a_configfile_that_cannot_be_read_is_a_usage_error(setup, tmp_path):
    base, work, raw = setup
    proc = run_batch(work, raw, tmp_path / "results", extra=("--configfile", str(tmp_path / "missing.yaml")))
    assert proc.returncode == 2 and "missing.yaml" in proc.stderr
    assert not (tmp_path / "results").exists()
