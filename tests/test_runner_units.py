"""cr51-batch's pure parts: which processes run Snakemake, how config files layer (no Snakemake run)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from cr51 import runner


def test_which_command_lines_run_snakemake():
    assert runner.runs_snakemake(["/x/.venv/bin/python", "/x/.venv/bin/snakemake", "--cores", "2"])
    assert runner.runs_snakemake(["snakemake", "-n"])
    assert runner.runs_snakemake(["/usr/bin/python3", "-m", "snakemake", "--unlock"])
    assert not runner.runs_snakemake(["/x/.venv/bin/python", "/x/.venv/bin/cr51-batch", "--cores", "2"])
    assert not runner.runs_snakemake(["python", "/x/.snakemake/scripts/tmpab12.process_batch.py"])
    assert not runner.runs_snakemake(["vim", "notes", "snakemake"])


def test_a_live_snakemake_counts_only_in_its_own_working_folder(tmp_path):
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir(), elsewhere.mkdir()
    fake = here / "snakemake"  # a process whose command line runs "snakemake" and that just waits
    fake.write_text("import time\ntime.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, str(fake)], cwd=here)
    try:
        deadline = time.monotonic() + 10  # until the child has exec'd (its /proc cmdline is then its own)
        while proc.pid not in runner.live_snakemake(here) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.pid in runner.live_snakemake(here)
        assert proc.pid not in runner.live_snakemake(elsewhere)
        assert os.getpid() not in runner.live_snakemake(here)
    finally:
        proc.kill()
        proc.wait()
    assert proc.pid not in runner.live_snakemake(here)


def test_config_files_layer_like_snakemake():
    base = {"raw_dir": "raw", "qc": {"max_cv_pct": 20, "max_spontaneous_pct_of_max": 20}}
    site = {"raw_dir": "/lab/drop", "qc": {"max_cv_pct": 25}}
    assert runner.merge(base, site) == {
        "raw_dir": "/lab/drop",
        "qc": {"max_cv_pct": 25, "max_spontaneous_pct_of_max": 20},
    }
    assert base["qc"]["max_cv_pct"] == 20  # not changed in place
