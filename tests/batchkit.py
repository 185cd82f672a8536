"""Helpers for the tests of scheduled batch runs (cr51-batch): a private pipeline copy, plates, snapshots."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from cr51.simulate import simulate_plate, write_plate

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOTS = {"REF-001": 1.0, "LOT-A": 2.0}  # two lots keep the fits quick
RUN_TIMEOUT = 120
#: Small, quick runs: few batches, no settle time.
QUICK = ("batch_count=4", "settle_seconds=0")


def pipeline_copy(dest: Path) -> Path:
    """A private copy of the workflow (own .snakemake: locks, incomplete markers, metadata)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "Snakefile", dest / "Snakefile")
    shutil.copytree(REPO / "workflow", dest / "workflow", ignore=ignore)
    shutil.copytree(REPO / "config", dest / "config", ignore=ignore)
    return dest


def runner_cmd(raw: Path, results: Path, *config: str, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        str(BIN / "cr51-batch"),
        "--cores",
        "2",
        *extra,
        "--config",
        f"raw_dir={raw}",
        f"results_dir={results}",
        *QUICK,
        *config,
    ]


def run_batch(
    workdir: Path, raw: Path, results: Path, *config: str, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """Run cr51-batch in ``workdir`` (bounded by a timeout)."""
    return subprocess.run(
        runner_cmd(raw, results, *config, extra=extra),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


def add_plate(raw: Path, name: str, seed: int, fmt: str = "well_list") -> list[Path]:
    """Write a small simulated plate (layout + export) into ``raw``."""
    plate = simulate_plate(name, np.random.default_rng(seed), lots=LOTS, fmt=fmt, donor="D01")
    return write_plate(raw, plate, fmt)


def rename_plate(raw: Path, old: str, new: str | bytes) -> None:
    """Give plate ``old`` (well-list export) the name ``new``: both files, and the layout's [meta] path."""
    layout = (raw / f"{old}.toml").read_text(encoding="utf-8")
    export_old = raw / f"{old}.csv"
    if isinstance(new, bytes):  # a name that is not UTF-8: only the export can carry it
        os.rename(bytes(export_old), os.fsencode(raw) + b"/" + new + b".csv")
        return
    fixed = layout.replace(f'path = "{old}.csv"', "path = " + json.dumps(f"{new}.csv"))
    assert fixed != layout
    (raw / f"{old}.toml").unlink()
    (raw / f"{new}.toml").write_text(fixed, encoding="utf-8")
    export_old.rename(raw / f"{new}.csv")


def snapshot(folder: Path) -> dict[bytes, tuple[int, int, int, str]]:
    """Every file of ``folder``: name (bytes) -> size, mtime (ns), mode and sha256 of the content.

    Files over 1 MB (sparse test files) are hashed on their first MB only.
    """
    out = {}
    for entry in os.scandir(os.fsencode(folder)):
        st = entry.stat(follow_symlinks=False)
        with open(entry.path, "rb") as fh:
            digest = hashlib.sha256(fh.read(1 << 20)).hexdigest()
        out[entry.name] = (st.st_size, st.st_mtime_ns, st.st_mode, digest)
    return out


#: plate_history.csv columns that say when *this* results folder admitted, accepted or replaced a
#: version: they differ between two folders fed the same files at other times.
HISTORY_TIMES = ("admitted_at", "accepted_at", "replaced_at")


def result_tables(results: Path) -> dict[str, bytes]:
    """The bytes of every result table (top-level CSV) of a run; in plate_history.csv the times are
    reduced to whether they are set."""
    out = {p.name: p.read_bytes() for p in sorted(results.glob("*.csv"))}
    if "plate_history.csv" in out:
        rows = list(csv.reader(io.StringIO(out["plate_history.csv"].decode())))
        idx = [rows[0].index(c) for c in HISTORY_TIMES]
        for row in rows[1:]:
            for i in idx:
                row[i] = "set" if row[i] else ""
        out["plate_history.csv"] = "\n".join(",".join(r) for r in rows).encode()
    return out


def audit_records(results: Path) -> list[dict]:
    return [json.loads(line) for line in (results / "audit.jsonl").read_text().splitlines()]
