"""The workflow passes Snakemake's linter and snakefmt."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def test_snakemake_lint_is_clean(tmp_path):
    """Lints the workflow's code with a scratch drop folder and results folder: the checkout's own
    ``results/`` (from ``make demo``, whose drop folder is resources/example) must not decide the
    outcome — the parse-time scan rightly refuses ``raw/`` as an inbox that lost its accepted plates."""
    (tmp_path / "raw").mkdir()
    cmd = [str(BIN / "snakemake"), "--lint", "--config", f"raw_dir={tmp_path / 'raw'}", f"results_dir={tmp_path / 'r'}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Congratulations, your workflow is in a good condition!" in out, out


def test_snakefmt_check_is_clean():
    proc = subprocess.run(
        [str(BIN / "snakefmt"), "--check", "."], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_lint_is_clean():
    proc = subprocess.run([str(BIN / "ruff"), "check", "."], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_is_clean():
    proc = subprocess.run(
        [str(BIN / "ruff"), "format", "--check", "."], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
