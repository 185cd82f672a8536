"""Damage and failures are repaired by the next runs: a batch job that failed once does not leave
new plates out for good; damaged or missing result tables are rewritten; a small version of
tools/chaos.py (random corruptions and kill -9, each followed by reruns: the same tables); every job
computes with one BLAS thread."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from batchkit import LOTS, REPO, add_plate, audit_records, pipeline_copy, result_tables, run_batch
from conftest import BATCH_SETTINGS

from cr51 import batch, store
from cr51.batch import PlateCache, process_batch
from cr51.plate import PlateInput
from cr51.scan import batch_of
from cr51.simulate import simulate_plate, write_plate


def files_rows(results) -> list[str]:
    return (results / "files.csv").read_text(encoding="utf-8").splitlines()


@pytest.mark.slow
def test_a_batch_job_that_failed_once_does_not_keep_a_new_plate_out(tmp_path):
    work = pipeline_copy(tmp_path / "pipeline")
    raw, results = tmp_path / "raw", tmp_path / "results"
    add_plate(raw, "plate0", 1)
    assert run_batch(work, raw, results).returncode == 0
    # a new plate in the batch of an accepted one (a new batch would change the set of collect's inputs)
    new = next(f"new{i}" for i in range(100) if batch_of(f"new{i}", 4) == batch_of("plate0", 4))
    add_plate(raw, new, 2)
    # its batch job fails once: the batch's plate-cache folder cannot be created (a file is in the way)
    cache = results / "cache" / batch_of(new, 4)
    shutil.rmtree(cache, ignore_errors=True)
    cache.write_text("in the way")
    failed = run_batch(work, raw, results)
    assert failed.returncode == 70, failed.stdout + failed.stderr
    cache.unlink()
    again = run_batch(work, raw, results)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 plates ok (1 new, 0 replaced)" in again.stdout
    assert any(row.startswith(f"{new}.csv,") and f",ok,{new}," in row for row in files_rows(results))
    assert new in {e["plate"] for e in audit_records(results)[-1]["new"]}
    assert run_batch(work, raw, results).stdout.startswith("cr51 batch: 2 plates ok (0 new, 0 replaced)")


def python(code: str, **env: str) -> str:
    """Run ``code`` in a new interpreter (the package importable, ``env`` added); its stdout."""
    import os

    environ = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")} | env
    head = f"import sys; sys.path.insert(0, {str(REPO / 'workflow')!r})\n"
    proc = subprocess.run([sys.executable, "-c", head + textwrap.dedent(code)], capture_output=True, text=True,
                          env=environ, timeout=60, check=True)  # fmt: skip
    return proc.stdout


def test_jobs_compute_with_one_blas_thread(tmp_path):
    # set before numpy loads (as rules/common.smk does at parse time for every job process)
    assert python("""
        from cr51.jobs import pin_threads, blas_threads
        pin_threads()
        import numpy, scipy.linalg
        print(sorted(set(blas_threads().values())))
    """) == "[1]\n"  # fmt: skip
    # numpy loaded first: run_job sets the loaded libraries to one thread, and says so in the job's log
    log = tmp_path / "job.log"
    python(f"""
        import numpy, scipy.linalg
        from types import SimpleNamespace
        from cr51.jobs import run_job, blas_threads
        run_job(SimpleNamespace(log=[{str(log)!r}], rule="test"), lambda smk: print(blas_threads()))
    """)  # fmt: skip
    threads = [line.split("BLAS threads: ")[1] for line in log.read_text().splitlines() if "BLAS threads: " in line]
    assert len(threads) == 1 and threads[0].count(" 1") == 2 and "openblas" in threads[0], threads


def test_an_intact_file_copied_over_another_is_not_used(tmp_path):
    """A misdirected write: a cache entry with a valid header and checksum, under another plate's key."""
    raw = tmp_path / "raw"
    plates = []
    for i in range(2):
        write_plate(raw, simulate_plate(f"p{i}", np.random.default_rng(i), lots=LOTS), "well_list")
        plates.append(PlateInput(f"p{i}", str(raw / f"p{i}.toml"), str(raw / f"p{i}.csv")))
    cache = PlateCache(tmp_path / "cache", BATCH_SETTINGS)
    first = process_batch(plates, BATCH_SETTINGS, cache)
    a, b = (tmp_path / "cache" / f"{cache.key(p, BATCH_SETTINGS.max_export_bytes)}.jsonl" for p in plates)
    shutil.copyfile(b, a)  # p0's entry now holds p1's results
    with pytest.raises(store.StaleFile, match="holds the data of another file"):
        store.read(a, batch.PLATE_KIND, batch.STORE_FORMAT)
    again = process_batch(plates, BATCH_SETTINGS, PlateCache(tmp_path / "cache", BATCH_SETTINGS))
    for name in first.tables:
        assert again.tables[name].to_csv(index=False) == first.tables[name].to_csv(index=False), name


@pytest.mark.slow
def test_damaged_or_missing_result_tables_and_batch_files_are_rewritten_by_the_next_run(tmp_path):
    work = pipeline_copy(tmp_path / "pipeline")
    raw, results = tmp_path / "raw", tmp_path / "results"
    for i in range(3):
        add_plate(raw, f"plate{i}", i)
    assert run_batch(work, raw, results).returncode == 0
    clean = result_tables(results)
    wells = results / "wells.csv"
    wells.write_bytes(wells.read_bytes()[:-500])  # truncated
    fits = bytearray((results / "fits.csv").read_bytes())
    fits[len(fits) // 2] ^= 0x11  # one byte changed
    (results / "fits.csv").write_bytes(bytes(fits))
    (results / "potency_combined_inputs.csv").unlink()
    batch = sorted((results / "batches").glob("b*.jsonl"))[0]
    batch.write_bytes(batch.read_bytes()[:-10])  # a truncated batch file: removed and recomputed
    proc = run_batch(work, raw, results)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result_tables(results) == clean
    assert store.verify(batch) is None
    again = run_batch(work, raw, results)  # nothing to do now
    assert again.returncode == 0 and result_tables(results) == clean
    assert "Nothing to be done" in log_of(again)


def log_of(proc: subprocess.CompletedProcess) -> str:
    """The Snakemake log of a cr51-batch run (its audit record names it)."""
    results = Path(proc.args[proc.args.index("--config") + 2].split("=", 1)[1])
    return Path(audit_records(results)[-1]["logs"][-1]).read_text()


@pytest.mark.slow
def test_chaos_small(tmp_path):
    """tools/chaos.py on 4 plates: 5 random corruptions and 1 kill -9, each followed by reruns."""
    sys.path.insert(0, str(REPO / "tools"))
    import chaos

    out = tmp_path / "chaos.json"
    args = ["--plates", "4", "--corruptions", "5", "--kills", "1", "--seed", "7", "--batch-count", "2"]
    assert chaos.main([*args, "--work", str(tmp_path / "work"), "--json", str(out)]) == 0
    import json

    trials = json.loads(out.read_text())["trials"]
    assert len(trials) == 6 and all(t["ok"] for t in trials), trials
    assert trials[-1]["kind"] == "kill -9" and trials[-1]["damage"].startswith("killed after"), trials[-1]
    logs = list((tmp_path / "work" / "results" / "logs" / "batches").glob("*.log"))
    assert logs and all("BLAS threads: " in p.read_text() for p in logs)
    assert all(line.count(" 1") >= 1 and " 2" not in line for p in logs for line in p.read_text().splitlines()
               if "BLAS threads: " in line)  # fmt: skip


@pytest.mark.parametrize("paused", [True, False])
def test_a_job_runs_with_the_garbage_collector_paused_when_asked_then_restored(tmp_path, paused):
    import gc
    from types import SimpleNamespace

    from cr51.jobs import run_job

    seen = []
    smk = SimpleNamespace(log=[str(tmp_path / "job.log")], rule="test")
    run_job(smk, lambda smk: seen.append(gc.isenabled()), gc_paused=paused)
    assert seen == [not paused] and gc.isenabled()
    with pytest.raises(RuntimeError):  # a failing job restores it too

        def fail(smk):
            raise RuntimeError("boom")

        run_job(smk, fail, gc_paused=paused)
    assert gc.isenabled()
    assert ("garbage collector paused" in (tmp_path / "job.log").read_text()) is paused


def test_side_by_side_runs_the_first_part_in_another_process_at_the_same_time(tmp_path):
    import os
    import time

    from cr51.jobs import side_by_side

    marks = tmp_path / "marks"

    def part(name):
        def run():
            with open(marks, "a") as fh:
                fh.write(f"{name} start {os.getpid()} {time.monotonic()}\n")
            time.sleep(0.5)
            with open(marks, "a") as fh:
                fh.write(f"{name} end {os.getpid()} {time.monotonic()}\n")

        return run

    side_by_side(part("first"), part("second"), parallel=True)
    seen = {
        (n, what): (int(pid), float(t)) for n, what, pid, t in (ln.split() for ln in marks.read_text().splitlines())
    }
    assert seen[("first", "start")][0] != os.getpid() == seen[("second", "start")][0]
    assert (
        seen[("first", "start")][1] < seen[("second", "end")][1]
        and seen[("second", "start")][1] < seen[("first", "end")][1]
    )
    marks.unlink()
    side_by_side(part("first"), part("second"), parallel=False)  # one after the other, here
    lines = [ln.split()[:3] for ln in marks.read_text().splitlines()]
    assert [ln[:2] for ln in lines] == [["second", "start"], ["second", "end"], ["first", "start"], ["first", "end"]]
    assert {int(ln[2]) for ln in lines} == {os.getpid()}


@pytest.mark.parametrize("failing", ["first", "second", "both"])
def test_side_by_side_raises_when_either_part_fails_after_both_ended(tmp_path, failing):
    import os

    from cr51.jobs import side_by_side

    done = tmp_path / "done"

    def part(name):
        def run():
            if failing in (name, "both"):
                raise ValueError(f"{name} failed")
            done.write_text(name)  # each part's own file

        return run

    with pytest.raises((RuntimeError, ValueError)) as err:
        side_by_side(part("first"), part("second"), parallel=True)
    if failing == "first":
        assert err.type is RuntimeError and done.read_text() == "second"
    else:
        assert err.type is ValueError and "second failed" in str(err.value)
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # the child was reaped: no process left behind
