"""The audit log: one JSON record per pipeline run, appended to ``<results_dir>/audit.jsonl``.

Standard library only (it runs in Snakemake's ``onsuccess``/``onerror`` handlers and in the
batch runner). A record holds the run's start and end, the software versions, the
configuration hash, how many drop-folder files ended in each status, the result files written
(path + sha256) and the input changes since the runs recorded before it:

* ``new``: files decided for the first time (``ok``, ``rejected`` or ``duplicate``);
* ``replaced``: files whose content changed under the same name (a corrected re-export), with
  the ``superseded_sha256`` the earlier results were computed from;
* ``removed``: decided files that left the drop folder.

Earlier records are never rewritten: each record is one ``write`` to a file opened with
``O_APPEND``. A line that is not a JSON object (a record cut short by a crash) is skipped
when the log is read.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import time
import uuid
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from .digests import file_digest
from .schema import FILE_STATUSES

AUDIT_NAME = "audit.jsonl"
#: Set by the batch runner so that it finds the record Snakemake's handler wrote for its run.
RUN_ID_ENV = "CR51_RUN_ID"
#: Set by the batch runner to a note for the record (e.g. a stale lock was cleared).
NOTE_ENV = "CR51_RUN_NOTE"
#: ``status`` of a run that ``cr51-batch`` refused before Snakemake started (its ``note`` says why).
REFUSED = "refused"
STATUSES = FILE_STATUSES
DECIDED = ("ok", "rejected", "duplicate")  # statuses whose content produced results

Record = dict[str, Any]


def read_records(results_dir: str | os.PathLike) -> list[Record]:
    """Every complete record of the audit log, oldest first (none if there is no log)."""
    path = Path(results_dir) / AUDIT_NAME
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                records.append(rec)
    return records


def decided_files(records: list[Record]) -> dict[str, Record]:
    """The decided files as the recorded runs left them: ``{file: {"plate", "sha256"}}``."""
    state: dict[str, Record] = {}
    for rec in records:
        for entry in rec.get("new", []) + rec.get("replaced", []):
            state[entry["file"]] = {"plate": entry["plate"], "sha256": entry["sha256"]}
        for entry in rec.get("removed", []):
            state.pop(entry["file"], None)
    return state


def files_rows(results_dir: str | os.PathLike) -> list[dict[str, str]] | None:
    """The rows of ``files.csv`` (``None`` if the run has not written one)."""
    path = Path(results_dir) / "files.csv"
    if not path.exists():
        return None
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def input_changes(before: dict[str, Record], rows: list[dict[str, str]]) -> Record:
    """``new``, ``replaced`` and ``removed`` files between ``before`` and ``files.csv`` rows."""
    now = {
        r["file"]: {"plate": r["plate"], "sha256": r["sha256"]} for r in rows if r["status"] in DECIDED and r["sha256"]
    }
    new, replaced = [], []
    for name, cur in sorted(now.items()):
        old = before.get(name)
        if old is None:
            new.append({"file": name, **cur})
        elif old["sha256"] != cur["sha256"]:
            replaced.append({"file": name, **cur, "superseded_sha256": old["sha256"]})
    removed = [
        {"file": name, "plate": old["plate"], "superseded_sha256": old["sha256"]}
        for name, old in sorted(before.items())
        if name not in now
    ]
    return {"new": new, "replaced": replaced, "removed": removed}


def written_outputs(results_dir: str | os.PathLike, since: float) -> list[Record]:
    """Result files (top level of ``results_dir``) modified at or after ``since``, with sha256."""
    out = []
    for entry in sorted(os.scandir(results_dir), key=lambda e: e.name):
        if (
            entry.is_file()
            and not entry.name.startswith(".")
            and entry.name != AUDIT_NAME
            and entry.stat().st_mtime >= since
        ):
            out.append({"path": os.path.abspath(entry.path), "sha256": file_digest(entry.path)[0]})
    return out


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def build_record(
    results_dir: str | os.PathLike,
    *,
    status: str,
    start: float,
    config_hash: str | None,
    invoked_by: str,
    logs: list[str] | None = None,
    note: str = "",
    exit_code: int | None = None,
) -> Record:
    """The record of a run that started at ``start`` (epoch seconds) and ends now.

    File counts and input changes come from ``files.csv`` and are only recorded for a run
    with ``status == "ok"`` (a failed run has not rewritten ``files.csv``). A run with status
    :data:`REFUSED` wrote nothing: its ``outputs`` stay empty (files another run wrote meanwhile
    are not its own). ``exit_code`` is ``cr51-batch``'s exit code (``None`` in Snakemake's handlers).
    """
    from . import __version__

    rows = files_rows(results_dir) if status == "ok" else None
    counts = None if rows is None else {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    changes = (
        {"new": [], "replaced": [], "removed": []}
        if rows is None
        else input_changes(decided_files(read_records(results_dir)), rows)
    )
    return {
        "run_id": os.environ.get(RUN_ID_ENV) or uuid.uuid4().hex,
        "start": _iso(start),
        "end": _iso(time.time()),
        "status": status,
        "invoked_by": invoked_by,
        "note": note,
        "cr51_version": __version__,
        "snakemake_version": _version("snakemake"),
        "python_version": platform.python_version(),
        "config_hash": config_hash,
        "results_dir": os.path.abspath(results_dir),
        "logs": logs or [],
        "files": counts,
        "exit_code": exit_code,
        "outputs": [] if status == REFUSED else written_outputs(results_dir, start),
        "retractions": [
            {"plate": r["plate"], "file": r["file"], "reason": r["reason"]}
            for r in rows or []
            if r["status"] == "retracted" and r["file"].endswith(".retract")
        ],
        **changes,
    }


def append_record(results_dir: str | os.PathLike, record: Record) -> None:
    """Append ``record`` as one line, in one ``write`` to a file opened with ``O_APPEND``.

    A line left without its newline by a crash is closed first, so it cannot swallow the record.
    """
    line = (json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
    path = Path(results_dir) / AUDIT_NAME
    if path.exists() and path.stat().st_size > 0:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                line = b"\n" + line
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, line)
        if written != len(line):
            raise OSError(f"audit log: only {written} of {len(line)} bytes written (disk full?)")
        os.fsync(fd)
    finally:
        os.close(fd)


def record_run(
    results_dir: str | os.PathLike,
    status: str,
    start: float,
    config_hash: str,
    log: str | list[str] | None,
) -> None:
    """Snakemake handler entry point: append the record of this Snakemake run.

    ``log`` is what Snakemake hands its handlers: the run's log file(s).
    """
    logs = [log] if isinstance(log, str) else list(log or [])
    invoked_by = "cr51-batch" if os.environ.get(RUN_ID_ENV) else "snakemake"
    Path(results_dir).mkdir(parents=True, exist_ok=True)
    append_record(
        results_dir,
        build_record(
            results_dir,
            status=status,
            start=start,
            config_hash=config_hash,
            invoked_by=invoked_by,
            note=os.environ.get(NOTE_ENV, ""),
            logs=[os.path.abspath(f) for f in logs],
        ),
    )
